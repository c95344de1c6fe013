//! The server's log lines: their format, and the id of the request that caused them.
//!
//! Every line a request causes names it, as if it happened in a span `request{id=...}`: in the
//! JSON format `{"name": "request", "id": ...}` first in `spans`, in the text format
//! `request{id=...}:` before the other spans. It is not a tracing span: a span per request costs
//! about 7% of single appends (a registry entry made and freed per request, entered and left on
//! every poll; docs/performance-history.md). The id lives in a task-local for the request's
//! future instead (a poll swaps a thread-local, nothing is allocated), and the formatter adds it
//! to the lines written inside. Like a span, it does not follow work the request hands to another
//! task or thread.

use std::fmt;
use std::future::Future;
use std::io::IsTerminal;

use axum::http::HeaderValue;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// Runs `work` as the request `id`: the lines it logs carry the id.
pub async fn in_request<F: Future>(id: HeaderValue, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request being handled on this task, if any.
fn request_id() -> Option<HeaderValue> {
    REQUEST_ID.try_with(HeaderValue::clone).ok()
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Style {
    /// For people: a line of text, in colour on a terminal.
    Text,
    /// For log shippers: one JSON object per line.
    Json,
}

/// Installs the global logger: `RUST_LOG` levels (default `info`), to stderr, in `style`.
pub fn init(style: Style) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match style {
        Style::Text => {
            let ansi = std::io::stderr().is_terminal();
            logs.with_ansi(ansi)
                .event_format(WithRequest {
                    inner: format::format().with_ansi(ansi),
                    style,
                })
                .init()
        }
        // The event's fields at the top level, and the fields of the spans it happened in
        // (`request`: id; `projection`: name, version).
        Style::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(WithRequest {
                inner: format::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true),
                style,
            })
            .init(),
    }
}

/// A line format that adds the request's id to the lines `inner` writes.
struct WithRequest<F> {
    inner: F,
    style: Style,
}

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(id) = request_id() else {
            return self.inner.format_event(context, writer, event);
        };
        let id = id.to_str().unwrap_or_default();
        let mut line = String::new();
        self.inner
            .format_event(context, Writer::new(&mut line), event)?;
        let line = match self.style {
            Style::Text => with_request_text(
                &line,
                id,
                event.metadata().level(),
                context.event_scope().is_some(),
            ),
            Style::Json => with_request_json(&line, id),
        };
        writer.write_str(&line)
    }
}

/// `line` (`<time> <level> <spans>: <target>: <fields>`) with `request{id=...}:` first among
/// its spans; `in_spans` says whether it has others.
fn with_request_text(line: &str, id: &str, level: &Level, in_spans: bool) -> String {
    // The spans start after the space that ends the level (its colour codes included); the
    // timestamp before it holds no level's name.
    let at = line
        .find(level.as_str())
        .and_then(|start| line[start..].find(' ').map(|space| start + space + 1))
        .unwrap_or(0);
    let space = if in_spans { "" } else { " " };
    format!("{}request{{id={id}}}:{space}{}", &line[..at], &line[at..])
}

/// `line`, one JSON object, with `{"name":"request","id":...}` first in its `spans` (made if it
/// had none).
fn with_request_json(line: &str, id: &str) -> String {
    let id = serde_json::Value::from(id);
    let request = format!(r#"{{"name":"request","id":{id}}}"#);
    // A key is the only place an unescaped `"spans":[` can be: in a string it is `\"spans\":[`.
    const SPANS: &str = r#""spans":["#;
    if let Some(at) = line.find(SPANS) {
        let at = at + SPANS.len();
        format!("{}{request},{}", &line[..at], &line[at..])
    } else if let Some(end) = line.rfind('}') {
        format!(r#"{},"spans":[{request}]{}"#, &line[..end], &line[end..])
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_get_the_request_first_in_their_spans() {
        let plain = "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"a \\\"spans\\\":[ b\",\"target\":\"x\"}\n";
        let added = with_request_json(plain, "r-1");
        let object: serde_json::Value = serde_json::from_str(&added).unwrap();
        assert_eq!(
            object["spans"],
            serde_json::json!([{"name": "request", "id": "r-1"}])
        );
        assert_eq!(object["message"], "a \"spans\":[ b");
        assert!(added.ends_with("}\n"), "{added:?}");
        let nested = "{\"message\":\"m\",\"spans\":[{\"name\":\"projection\",\"version\":1}]}\n";
        let object: serde_json::Value =
            serde_json::from_str(&with_request_json(nested, "r-2")).unwrap();
        assert_eq!(
            object["spans"],
            serde_json::json!([{"name": "request", "id": "r-2"}, {"name": "projection", "version": 1}])
        );
    }

    #[test]
    fn text_lines_get_the_request_before_their_spans() {
        let plain = "2026-12-06T01:10:54.123456Z  INFO lantern::http: refused\n";
        assert_eq!(
            with_request_text(plain, "r-1", &Level::INFO, false),
            "2026-12-06T01:10:54.123456Z  INFO request{id=r-1}: lantern::http: refused\n"
        );
        let nested = "2026-12-06T01:10:54.123456Z ERROR projection{version=1}: lantern: x\n";
        assert_eq!(
            with_request_text(nested, "r-2", &Level::ERROR, true),
            "2026-12-06T01:10:54.123456Z ERROR request{id=r-2}:projection{version=1}: lantern: x\n"
        );
        // In colour: after the code that ends the level's colour.
        let coloured =
            "\x1b[2m2026-12-06T01:10:54Z\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2mlantern:\x1b[0m w\n";
        assert_eq!(
            with_request_text(coloured, "r-3", &Level::WARN, false),
            "\x1b[2m2026-12-06T01:10:54Z\x1b[0m \x1b[33m WARN\x1b[0m request{id=r-3}: \x1b[2mlantern:\x1b[0m w\n"
        );
    }
}
