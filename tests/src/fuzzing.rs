//! The checks behind the fuzz targets (`fuzz/`), shared with `cargo test`, which replays the
//! corpus kept in `fuzz/corpus/` so that CI guards against regressions.
//!
//! - [`log_recovery`]: any bytes as `events.log`: opening never panics; a store that opens serves
//!   every event up to its head, in order, without an error.
//! - [`wire_writes`]: any bytes as a module's write set: decoding never panics; what decodes
//!   encodes back to the same bytes.
//! - [`http_request`]: any request to `app()`: never a panic, never a 500, and every error is the
//!   contract's JSON.

use std::sync::OnceLock;

use lantern::access::AccessControl;
use lantern::http::{AppState, app};
use lantern::projection::Projections;
use lantern::store::{Filter, Store, StoreOptions};

/// Opens a store whose log is `bytes`; checks what it then serves.
pub fn log_recovery(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("events.log"), bytes).expect("writing the log");
    let options = StoreOptions {
        sync: false,
        ..StoreOptions::default()
    };
    let Ok(store) = Store::open(dir.path(), options) else {
        return; // refused (damage that a crash cannot explain): allowed, never a panic
    };
    let head = store.head();
    let mut from = 1;
    let mut seen = 0;
    loop {
        let slice = store
            .read_all(from, 1000, &Filter::default())
            .expect("a recovered log reads without error");
        if slice.events.is_empty() {
            break;
        }
        for event in &slice.events {
            seen += 1;
            assert_eq!(event.position, seen, "positions are consecutive from 1");
        }
        from = slice.next_from;
    }
    assert_eq!(seen, head, "every event up to the head is served");
    store.close();
}

/// Decodes `bytes` as a write set, as the host does with what a module hands back.
pub fn wire_writes(bytes: &[u8]) {
    let Ok(writes) = lantern_wire::decode_writes(bytes) else {
        return;
    };
    let mut encoder = lantern_wire::WritesEncoder::default();
    for write in &writes {
        encoder.push(*write);
    }
    let again = encoder.finish();
    let decoded = lantern_wire::decode_writes(&again).expect("what decoded encodes back");
    assert_eq!(decoded, writes);
}

struct Server {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    access: AccessControl,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let access = AccessControl::in_memory();
        let router = runtime.block_on(async {
            let store = Store::open(&dir.path().join("store"), crate::test_store_options(false))
                .expect("a store");
            let projections = Projections::open(
                store.clone(),
                &dir.path().join("projections"),
                crate::shared_compile_cache(lantern::wasm::WasmConfig::default()),
            )
            .await
            .expect("projections");
            projections
                .deploy("p", crate::guest("order_totals"))
                .await
                .expect("a deploy");
            app(AppState::new(store, projections, access.clone()))
        });
        Server {
            runtime,
            router,
            access,
            _dir: dir,
        }
    })
}

/// Turns `bytes` into a request (method, path and query, headers, body: lines) and sends it.
pub fn http_request(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n');
    let method = match lines.next().unwrap_or_default() {
        "P" => "POST",
        "U" => "PUT",
        "D" => "DELETE",
        "H" => "HEAD",
        "O" => "OPTIONS",
        _ => "GET",
    };
    let mut target = lines.next().unwrap_or("/").to_owned();
    // Read-your-writes waits are capped, so that each input stays quick.
    if target.contains("min_position") && !target.contains("wait_ms") {
        target.push_str("&wait_ms=1");
    }
    let mut request = axum::http::Request::builder().method(method).uri(target);
    let mut body = String::new();
    let mut in_body = false;
    for line in lines {
        if in_body {
            body.push_str(line);
            body.push('\n');
        } else if line.is_empty() {
            in_body = true;
        } else if let Some((name, value)) = line.split_once(':') {
            request = request.header(name.trim(), value.trim());
        }
    }
    // Queries that wait are capped by the server; a fuzzer's min_position waits at most this.
    let Ok(request) = request.body(axum::body::Body::from(body)) else {
        return; // not a request HTTP can carry
    };
    let server = server();
    // Open mode again for the next input (a POST /tokens may have ended it).
    for token in server.access.tokens.list() {
        let _ = server.access.tokens.revoke(&token.name);
    }
    let answer = server
        .runtime
        .block_on(answer_of(server.router.clone(), request));
    check_answer(method, &answer);
}

/// What the API answered: status, content type and, for an error, its body (a success may be an
/// endless stream, and is not read).
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: axum::http::StatusCode,
    /// The content type.
    pub content_type: String,
    /// The body of an error.
    pub body: Vec<u8>,
}

/// Sends `request` to `router`.
pub async fn answer_of(
    router: axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> Answer {
    use tower::ServiceExt;
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = if status.is_success() {
        Vec::new()
    } else {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("an error's body")
            .to_vec()
    };
    Answer {
        status,
        content_type,
        body,
    }
}

/// The contract for any request: never a 500, and every error is the contract's JSON.
pub fn check_answer(method: &str, answer: &Answer) {
    assert_ne!(
        answer.status.as_u16(),
        500,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    // A redirect (`/ui` -> `/ui/`) is an answer, not an error; every 4xx and 5xx is the JSON.
    let error = answer.status.is_client_error() || answer.status.is_server_error();
    if error && method != "HEAD" {
        assert_eq!(answer.content_type, "application/json");
        let error: serde_json::Value =
            serde_json::from_slice(&answer.body).expect("an error is JSON");
        assert!(error["error"]["code"].is_string(), "{error}");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
}
