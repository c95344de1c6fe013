//! The `lantern` command line: `serve` and `bench` run here; every other command is a client of a
//! running server over its HTTP API.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::access::{AuditPage, CreatedToken, NewToken, Role, TokenList};
use crate::bench::{self, BenchOptions};
use crate::logs;
use crate::server::{self, ServeOptions};

#[derive(Debug, Parser)]
#[command(
    name = "lantern",
    version,
    about = "Lantern: an event store with WebAssembly projections"
)]
struct Cli {
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "LANTERN_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    url: String,
    /// Print JSON for scripts instead of readable text.
    #[arg(long, global = true)]
    json: bool,
    /// The access token to send (`Authorization: Bearer`).
    #[arg(long, global = true, env = "LANTERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust the server's certificate if it is signed by this CA (PEM), instead of the system's
    /// roots: for a server with a private CA or a self-signed certificate.
    #[arg(long, global = true, env = "LANTERN_CA_CERT", value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
    /// How log lines (on stderr) are written: `text` for people, `json` (one object per line,
    /// with the request id and the projection in their fields) for log shippers.
    #[arg(
        long,
        global = true,
        env = "LANTERN_LOG_FORMAT",
        value_enum,
        default_value_t = logs::Style::Text
    )]
    log_format: logs::Style,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeOptions),
    /// Append events to a stream: one from the flags, or many as NDJSON on stdin
    /// (`{"type": ..., "data": ..., "metadata": ..., "id": ...}` per line).
    Append {
        /// The stream to append to.
        stream: String,
        /// The event type (omit it to read NDJSON events from stdin).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// The event's data, as JSON.
        #[arg(long, requires = "event_type")]
        data: Option<String>,
        /// The event's metadata, as JSON.
        #[arg(long, requires = "event_type")]
        metadata: Option<String>,
        /// The event's id (a UUID); the server makes one when omitted.
        #[arg(long, requires = "event_type")]
        id: Option<String>,
        /// `any`, `no_stream`, `exists` or the revision the stream must be at.
        #[arg(long, default_value = "any")]
        expected_revision: String,
    },
    /// Read one stream, or the whole log with `--all`.
    Read {
        /// The stream to read.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        stream: Option<String>,
        /// Read the global log instead of one stream.
        #[arg(long)]
        all: bool,
        /// Revision (stream) or position (`--all`) to start from, inclusive.
        #[arg(long)]
        from: Option<u64>,
        /// Newest first (streams only).
        #[arg(long, conflicts_with = "all")]
        backward: bool,
        /// Start with the stream's snapshot (printed first) and read the events after it.
        #[arg(long, conflicts_with_all = ["all", "from", "backward"])]
        from_snapshot: bool,
        /// The events as stored, not through the upcasters.
        #[arg(long)]
        raw: bool,
        /// Stop after this many events (default: read to the end).
        #[arg(long)]
        limit: Option<u64>,
        /// With `--all`: only this category.
        #[arg(long, requires = "all")]
        category: Option<String>,
        /// With `--all`: only these event types (comma-separated).
        #[arg(long, requires = "all")]
        types: Option<String>,
    },
    /// Follow the log: catch up from `--from`, then print new events as they are committed.
    Tail {
        /// Position to start from (default: only new events).
        #[arg(long)]
        from: Option<u64>,
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// Only these event types (comma-separated).
        #[arg(long)]
        types: Option<String>,
        /// The events as stored, not through the upcasters.
        #[arg(long)]
        raw: bool,
    },
    /// Deploy a projection module: a new projection catches up from the start; a new version of
    /// one rebuilds beside the current version and replaces it when caught up.
    Deploy {
        /// The projection's name.
        name: String,
        /// The `.wasm` file.
        file: std::path::PathBuf,
        /// Return at once instead of showing progress until the new version serves.
        #[arg(long)]
        no_wait: bool,
    },
    /// Rebuild a projection's read model from the start, beside the current one.
    Rebuild {
        /// The projection's name.
        name: String,
        /// Return at once instead of showing progress until the rebuild serves.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the deployed projections.
    Projections,
    /// Show one projection's status.
    Status {
        /// The projection's name.
        name: String,
    },
    /// Delete a projection and its read model.
    Delete {
        /// The projection's name.
        name: String,
    },
    /// Read a projection's read model: a key, a prefix, or one of the module's queries.
    Query {
        /// The projection's name.
        name: String,
        /// The key to read.
        #[arg(conflicts_with_all = ["prefix", "query"], required_unless_present_any = ["prefix", "query"])]
        key: Option<String>,
        /// List the keys starting with this prefix.
        #[arg(long, conflicts_with = "query")]
        prefix: Option<String>,
        /// Run the module's query handler of this name.
        #[arg(long)]
        query: Option<String>,
        /// A query parameter, `name=value` (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", requires = "query")]
        params: Vec<String>,
        /// Wait until the read model reflects this log position (read your writes).
        #[arg(long)]
        min_position: Option<u64>,
    },
    /// Read or save a stream's snapshot (an aggregate's state at one of its revisions).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Deploy, list and delete upcasters (admin).
    #[command(subcommand)]
    Upcaster(UpcasterCommand),
    /// Manage access tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Save an online backup of the server to FILE (a tar; admin): the log up to the position
    /// it prints, the tokens, the audit trail, the projections and their modules. Restore by
    /// unpacking it into an empty folder and `lantern serve --data` that folder.
    Backup {
        /// Where to write the archive.
        file: std::path::PathBuf,
    },
    /// Show the audit trail of admin actions (admin).
    Audit {
        /// Only entries after this number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many entries (default: all).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check a stopped server's data folder: the log (CRCs, positions, revisions, ids), the
    /// index against the log, the registry against the modules, each read model's checkpoint.
    /// Changes nothing; exits 0 only if all is well.
    Check {
        /// The data folder.
        #[arg(long, env = "LANTERN_DATA", default_value = "lantern-data")]
        data: std::path::PathBuf,
    },
    /// Discard the log from a position on (the only command that ever cuts acknowledged
    /// events): says what goes, and does it only with --yes. The server must be stopped.
    Repair {
        /// The data folder.
        #[arg(long, env = "LANTERN_DATA", default_value = "lantern-data")]
        data: std::path::PathBuf,
        /// The first position to discard (rounded down to the start of its append).
        #[arg(long, value_name = "POSITION")]
        truncate_at: u64,
        /// Do it (without it, only say what would be discarded).
        #[arg(long)]
        yes: bool,
    },
    /// Run the benchmark program and print its figures.
    Bench(BenchOptions),
    /// Rebuild a projection crate (or npm package) on every save and deploy it to the server
    /// (Ctrl-C to stop).
    Dev {
        /// The crate's or package's folder.
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        /// The projection's name (by default the crate's).
        #[arg(long)]
        name: Option<String>,
    },
    /// Make a new projection crate NAME (in its own folder, outside any workspace): a handler,
    /// a query, a native test and a README with the build and deploy commands.
    New {
        /// The projection's name (also the crate's): [a-z0-9][a-z0-9_-]*.
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// The SDK folder of a Lantern checkout, `guest-sdk` (`guest-sdk-js` with --ts; by
        /// default the one this binary was built from).
        #[arg(long, value_name = "PATH")]
        sdk: Option<std::path::PathBuf>,
        /// An npm package in TypeScript (`@lantern/sdk`) instead of a Rust crate.
        #[arg(long)]
        ts: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// Its name, unique in the store.
        name: String,
        /// `reader`, `writer` or `admin`.
        #[arg(long)]
        role: Role,
        /// Limit it to this projection (repeatable): it then reaches only those projections'
        /// status, state and queries.
        #[arg(long = "projection", value_name = "NAME")]
        projections: Vec<String>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token: refused from the next request on, its subscriptions end.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Runs the command line; returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logs::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The HTTP client of every command: the token as a default header, rustls for `https://`,
/// trusting `--ca-cert` alone when it is given.
pub(crate) fn http_client(
    token: Option<&str>,
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(token) = token {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("the token has characters a header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA certificate {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "{} holds no certificate",
            path.display()
        );
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().context("setting up the HTTP client")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(mut options) => {
            options.follow_token = cli.token.clone();
            options.follow_ca_cert = cli.ca_cert.clone();
            return server::serve(options).await;
        }
        Command::New { name, dir, sdk, ts } => {
            let language = if ts {
                crate::scaffold::Language::TypeScript
            } else {
                crate::scaffold::Language::Rust
            };
            let made = crate::scaffold::new_projection(&name, &dir, sdk.as_deref(), language)?;
            let first = if ts {
                "`npm install && npm test`"
            } else {
                "`cargo test`"
            };
            println!(
                "created {}: cd into it, then {first}; its README says how to build and deploy it",
                made.display()
            );
            return Ok(());
        }
        Command::Check { data } => {
            let healthy = crate::maintenance::check(&data, &mut std::io::stdout().lock())?;
            anyhow::ensure!(healthy, "the data folder {} has problems", data.display());
            return Ok(());
        }
        Command::Repair {
            data,
            truncate_at,
            yes,
        } => {
            return crate::maintenance::repair(
                &data,
                truncate_at,
                yes,
                &mut std::io::stdout().lock(),
            );
        }
        _ => {}
    }
    let client = Client {
        http: http_client(cli.token.as_deref(), cli.ca_cert.as_deref())?,
        url: cli.url.trim_end_matches('/').to_owned(),
        json: cli.json,
        raw: matches!(
            cli.command,
            Command::Read { raw: true, .. } | Command::Tail { raw: true, .. }
        ),
    };
    match cli.command {
        Command::Serve(_)
        | Command::Check { .. }
        | Command::Repair { .. }
        | Command::New { .. } => {
            unreachable!("run above")
        }
        Command::Token(command) => client.token(command).await,
        Command::Dev { dir, name } => client.dev(&dir, name).await,
        Command::Audit { after, limit } => client.audit(after, limit).await,
        Command::Backup { file } => client.backup(&file).await,
        Command::Bench(options) => bench::run(options).await,
        Command::Append {
            stream,
            event_type,
            data,
            metadata,
            id,
            expected_revision,
        } => {
            let events = match event_type {
                Some(event_type) => vec![event_from_flags(event_type, data, metadata, id)?],
                None => events_from_stdin()?,
            };
            client.append(&stream, &expected_revision, events).await
        }
        Command::Read {
            stream,
            all: _,
            from,
            backward,
            from_snapshot,
            raw: _,
            limit,
            category,
            types,
        } => match stream {
            Some(stream) if from_snapshot => client.read_from_snapshot(&stream, limit).await,
            Some(stream) => client.read_stream(&stream, from, backward, limit).await,
            None => client.read_all(from, limit, category, types).await,
        },
        Command::Tail {
            from,
            category,
            stream,
            types,
            raw: _,
        } => client.tail(from, category, stream, types).await,
        Command::Upcaster(command) => client.upcaster(command).await,
        Command::Deploy {
            name,
            file,
            no_wait,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let request = client
                .http
                .put(format!("{}/projections/{}", client.url, encode_path(&name)))
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(bytes);
            let answer: Value = client.send(request).await?.json().await?;
            client.follow_deploy(&name, answer, no_wait).await
        }
        Command::Rebuild { name, no_wait } => {
            let request = client.http.post(format!(
                "{}/projections/{}/rebuild",
                client.url,
                encode_path(&name)
            ));
            let answer: Value = client.send(request).await?.json().await?;
            client.follow_deploy(&name, answer, no_wait).await
        }
        Command::Snapshot(SnapshotCommand::Get { stream }) => {
            let snapshot = client
                .get_json(&format!("/streams/{}/snapshot", encode_path(&stream)), &[])
                .await?;
            client.print_snapshot(&stream, &snapshot);
            Ok(())
        }
        Command::Snapshot(SnapshotCommand::Save {
            stream,
            revision,
            state,
        }) => {
            let state = if state == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the state from stdin")?
            } else {
                state
            };
            let state: Value =
                serde_json::from_str(&state).map_err(|e| anyhow!("the state is not JSON: {e}"))?;
            let request = client
                .http
                .put(format!(
                    "{}/streams/{}/snapshot",
                    client.url,
                    encode_path(&stream)
                ))
                .json(&json!({"revision": revision, "state": state}));
            let answer: Value = client.send(request).await?.json().await?;
            if client.json {
                println!("{answer}");
            } else if answer["stored"] == true {
                println!("saved the snapshot of {stream} at revision {revision}");
            } else {
                println!(
                    "kept the stored snapshot of {stream}: it is of a later revision ({})",
                    answer["current_revision"]
                );
            }
            Ok(())
        }
        Command::Projections => {
            let list = client.get_json("/projections", &[]).await?;
            let projections = list["projections"].as_array().cloned().unwrap_or_default();
            if client.json {
                println!("{list}");
            } else if projections.is_empty() {
                println!("no projections deployed");
            } else {
                for status in &projections {
                    println!("{}", status_line(status));
                }
            }
            Ok(())
        }
        Command::Status { name } => {
            let status = client
                .get_json(&format!("/projections/{}", encode_path(&name)), &[])
                .await?;
            if client.json {
                println!("{status}");
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Delete { name } => {
            let request =
                client
                    .http
                    .delete(format!("{}/projections/{}", client.url, encode_path(&name)));
            client.send(request).await?;
            if !client.json {
                println!("deleted {name}");
            }
            Ok(())
        }
        Command::Query {
            name,
            key,
            prefix,
            query,
            params,
            min_position,
        } => {
            let mut pairs: Vec<(String, String)> = Vec::new();
            for param in params {
                let (k, v) = param
                    .split_once('=')
                    .with_context(|| format!("--param {param:?} is not NAME=VALUE"))?;
                pairs.push((k.to_owned(), v.to_owned()));
            }
            if let Some(position) = min_position {
                pairs.push(("min_position".into(), position.to_string()));
            }
            let base = format!("/projections/{}", encode_path(&name));
            let path = match (key, prefix, query) {
                (Some(key), _, _) => format!("{base}/state/{}", encode_path(&key)),
                (None, Some(prefix), _) => {
                    pairs.push(("prefix".into(), prefix));
                    pairs.push(("limit".into(), "10000".into()));
                    format!("{base}/state")
                }
                (None, None, Some(query)) => format!("{base}/query/{}", encode_path(&query)),
                (None, None, None) => bail!("give a KEY, --prefix or --query"),
            };
            let query: Vec<(&str, String)> =
                pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let answer = client.get_json(&path, &query).await?;
            if client.json {
                println!("{answer}");
            } else {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            }
            Ok(())
        }
    }
}

/// One line per projection: name, version, status, position/head.
fn status_line(status: &Value) -> String {
    let mut line = format!(
        "{:<24} v{:<3} {:<12} {}/{}",
        status["name"].as_str().unwrap_or_default(),
        status["version"],
        status["status"].as_str().unwrap_or_default(),
        status["position"],
        status["head"],
    );
    if let Some(rebuild) = status["rebuild"].as_object() {
        line.push_str(&format!(
            "  rebuilding v{} {}/{} ({})",
            rebuild["version"],
            rebuild["position"],
            rebuild["head"],
            rebuild["status"].as_str().unwrap_or_default()
        ));
    }
    if let Some(message) = status["error"]["message"].as_str() {
        line.push_str(&format!(
            "  error at {}: {message}",
            status["error"]["position"]
        ));
    }
    line
}

fn print_status(status: &Value) {
    println!("{}", status_line(status));
    println!(
        "  module      {}",
        status["module_sha256"].as_str().unwrap_or_default()
    );
    println!("  lag         {}", status["lag"]);
    println!("  events/s    {}", status["events_per_second"]);
    println!("  subscribes  {}", status["subscription"]);
    if let Some(message) = status["rebuild"]["error"]["message"].as_str() {
        println!("  rebuild failed: {message}");
    }
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--{what} is not valid JSON"))
}

fn event_from_flags(
    event_type: String,
    data: Option<String>,
    metadata: Option<String>,
    id: Option<String>,
) -> anyhow::Result<Value> {
    let mut event = json!({"type": event_type});
    event["data"] = match data {
        Some(data) => parse_json("data", &data)?,
        None => Value::Null,
    };
    if let Some(metadata) = metadata {
        event["metadata"] = parse_json("metadata", &metadata)?;
    }
    if let Some(id) = id {
        event["id"] = Value::from(id);
    }
    Ok(event)
}

fn events_from_stdin() -> anyhow::Result<Vec<Value>> {
    let mut events = Vec::new();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {} is not valid JSON", number + 1))?;
        if !event.is_object() {
            bail!("stdin line {} is not a JSON object", number + 1);
        }
        events.push(event);
    }
    if events.is_empty() {
        bail!("no events: give --type and --data, or NDJSON events on stdin");
    }
    Ok(events)
}

#[derive(Debug, Subcommand)]
enum UpcasterCommand {
    /// Deploy an upcaster module (`cargo build --release --target wasm32-wasip2`); the
    /// projections it affects rebuild, live.
    Deploy {
        /// The upcaster's name (upcasters run in name order).
        name: String,
        /// The `.wasm` file.
        file: std::path::PathBuf,
    },
    /// List the upcasters, in the order they run.
    List,
    /// Delete an upcaster; the projections it affected rebuild, live.
    Delete {
        /// The upcaster's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Print the stream's snapshot.
    Get {
        /// The stream.
        stream: String,
    },
    /// Save a snapshot of the stream at one of its revisions (writer); the server keeps it
    /// unless it holds one of a later revision.
    Save {
        /// The stream.
        stream: String,
        /// The revision whose state it is.
        #[arg(long)]
        revision: u64,
        /// The state, as JSON; `-` reads it from stdin.
        #[arg(long)]
        state: String,
    },
}

fn expected_revision_json(text: &str) -> Value {
    text.parse::<u64>()
        .map_or_else(|_| Value::from(text), Value::from)
}

struct Client {
    http: reqwest::Client,
    url: String,
    json: bool,
    /// Reads ask for the events as stored (`raw=true`).
    raw: bool,
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        match (error["message"].as_str(), error["code"].as_str()) {
            (Some(message), Some(code)) => Err(anyhow!("{message} ({code})")),
            _ => Err(anyhow!("the server answered {status}")),
        }
    }

    /// `raw=true` when the reader asked for the events as stored.
    fn raw_query(&self) -> Option<(&'static str, String)> {
        self.raw.then(|| ("raw", "true".to_owned()))
    }

    /// `lantern upcaster ...`
    async fn upcaster(&self, command: UpcasterCommand) -> anyhow::Result<()> {
        match command {
            UpcasterCommand::Deploy { name, file } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let request = self
                    .http
                    .put(format!("{}/upcasters/{}", self.url, encode_path(&name)))
                    .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                    .body(bytes);
                let answer: Value = self.send(request).await?.json().await?;
                if self.json {
                    println!("{answer}");
                    return Ok(());
                }
                let what = if answer["unchanged"] == true {
                    "unchanged".to_owned()
                } else {
                    format!("version {} deployed", answer["version"])
                };
                let rebuilding: Vec<&str> = answer["rebuilding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if rebuilding.is_empty() {
                    println!("upcaster {name}: {what}");
                } else {
                    println!(
                        "upcaster {name}: {what}; rebuilding {}",
                        rebuilding.join(", ")
                    );
                }
            }
            UpcasterCommand::List => {
                let list = self.get_json("/upcasters", &[]).await?;
                let upcasters = list["upcasters"].as_array().cloned().unwrap_or_default();
                if self.json {
                    println!("{list}");
                } else if upcasters.is_empty() {
                    println!("no upcasters deployed");
                }
                for u in upcasters.iter().filter(|_| !self.json) {
                    let names = |key: &str| {
                        u[key]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let fault = match &u["error"] {
                        Value::Null => String::new(),
                        e => format!(
                            "  FAULT at {}: {}",
                            e["position"],
                            e["message"].as_str().unwrap_or_default()
                        ),
                    };
                    println!(
                        "{:<24} v{:<4} takes {} gives {}  {} events{fault}",
                        u["name"].as_str().unwrap_or_default(),
                        u["version"],
                        names("takes"),
                        names("gives"),
                        u["events"],
                    );
                }
            }
            UpcasterCommand::Delete { name } => {
                let request =
                    self.http
                        .delete(format!("{}/upcasters/{}", self.url, encode_path(&name)));
                self.send(request).await?;
                if !self.json {
                    println!("upcaster {name} deleted; the projections it affected rebuild");
                }
            }
        }
        Ok(())
    }

    async fn get_json(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let response = self
            .send(self.http.get(format!("{}{path}", self.url)).query(query))
            .await?;
        Ok(response.json().await?)
    }

    async fn append(
        &self,
        stream: &str,
        expected_revision: &str,
        events: Vec<Value>,
    ) -> anyhow::Result<()> {
        let body = json!({
            "expected_revision": expected_revision_json(expected_revision),
            "events": events,
        });
        let response = self
            .send(
                self.http
                    .post(format!("{}/streams/{}", self.url, encode_path(stream)))
                    .json(&body),
            )
            .await?;
        let answer: Value = response.json().await?;
        if self.json {
            println!("{answer}");
        } else {
            let first = answer["first_position"].as_u64().unwrap_or_default();
            let last = answer["last_position"].as_u64().unwrap_or_default();
            println!(
                "appended {} event(s) to {stream}: revisions {}..={}, positions {first}..={last}",
                last + 1 - first,
                answer["first_revision"],
                answer["last_revision"],
            );
        }
        Ok(())
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        backward: bool,
        limit: Option<u64>,
    ) -> anyhow::Result<()> {
        let path = format!("/streams/{}", encode_path(stream));
        let mut next = from;
        let mut remaining = limit.unwrap_or(u64::MAX);
        while remaining > 0 {
            let mut query = vec![
                ("limit", remaining.min(1000).to_string()),
                (
                    "direction",
                    if backward { "backward" } else { "forward" }.to_owned(),
                ),
            ];
            if let Some(from) = next {
                query.push(("from", from.to_string()));
            }
            query.extend(self.raw_query());
            let page = self.get_json(&path, &query).await?;
            remaining -= self.print_events(&page["events"])?;
            match page["next"].as_u64() {
                Some(from) => next = Some(from),
                None => break,
            }
        }
        Ok(())
    }

    /// The snapshot (or a line saying there is none), then the events after it.
    async fn read_from_snapshot(&self, stream: &str, limit: Option<u64>) -> anyhow::Result<()> {
        let mut query = vec![
            ("from", "snapshot".to_owned()),
            ("limit", limit.unwrap_or(1000).clamp(1, 1000).to_string()),
        ];
        query.extend(self.raw_query());
        let page = self
            .get_json(&format!("/streams/{}", encode_path(stream)), &query)
            .await?;
        match &page["snapshot"] {
            Value::Null if !self.json => println!("(no snapshot: from revision 0)"),
            snapshot => self.print_snapshot(stream, snapshot),
        }
        let mut remaining = limit.unwrap_or(u64::MAX);
        remaining -= self.print_events(&page["events"])?;
        if let Some(from) = page["next"].as_u64().filter(|_| remaining > 0) {
            let rest = limit.map(|_| remaining);
            self.read_stream(stream, Some(from), false, rest).await?;
        }
        Ok(())
    }

    fn print_snapshot(&self, stream: &str, snapshot: &Value) {
        if self.json {
            println!("{snapshot}");
        } else {
            println!(
                "snapshot  {stream}@{}  {}  {}",
                snapshot["revision"],
                snapshot["recorded_at"].as_str().unwrap_or_default(),
                snapshot["state"]
            );
        }
    }

    async fn read_all(
        &self,
        from: Option<u64>,
        limit: Option<u64>,
        category: Option<String>,
        types: Option<String>,
    ) -> anyhow::Result<()> {
        let mut from = from.unwrap_or(1);
        let mut remaining = limit.unwrap_or(u64::MAX);
        while remaining > 0 {
            let mut query = vec![
                ("from", from.to_string()),
                ("limit", remaining.min(1000).to_string()),
            ];
            query.extend(category.clone().map(|c| ("category", c)));
            query.extend(types.clone().map(|t| ("types", t)));
            query.extend(self.raw_query());
            let page = self.get_json("/all", &query).await?;
            remaining -= self.print_events(&page["events"])?;
            match page["next"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(())
    }

    async fn tail(
        &self,
        from: Option<u64>,
        category: Option<String>,
        stream: Option<String>,
        types: Option<String>,
    ) -> anyhow::Result<()> {
        let mut query: Vec<(&str, String)> = Vec::new();
        query.extend(from.map(|f| ("from", f.to_string())));
        query.extend(category.map(|c| ("category", c)));
        query.extend(stream.map(|s| ("stream", s)));
        query.extend(types.map(|t| ("types", t)));
        query.extend(self.raw_query());
        let response = self
            .send(
                self.http
                    .get(format!("{}/subscribe", self.url))
                    .query(&query)
                    .header(reqwest::header::ACCEPT, "application/x-ndjson"),
            )
            .await?;
        let mut body = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk.context("the subscription broke off")?);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue; // heartbeat
                }
                let event: Value = serde_json::from_slice(&line)?;
                if let Some(error) = event.get("error") {
                    // The server ends a subscription it cannot go on with (an upcaster failed).
                    bail!(
                        "{} ({})",
                        error["message"]
                            .as_str()
                            .unwrap_or("the subscription failed"),
                        error["code"].as_str().unwrap_or("error")
                    );
                }
                self.print_events(&Value::Array(vec![event]))?;
            }
        }
        bail!("the server ended the subscription")
    }

    /// `lantern dev`: build and deploy, then again after every save under `src/` or to the
    /// manifest, printing how long each save took to serve.
    async fn dev(&self, dir: &std::path::Path, name: Option<String>) -> anyhow::Result<()> {
        use notify::{RecursiveMode, Watcher};
        let krate = crate::scaffold::DevProject::locate(dir)?;
        let name = name.unwrap_or_else(|| krate.package.clone());
        let (saved_tx, mut saved) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event
                    .is_ok_and(|e| e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove())
                {
                    let _ = saved_tx.send(());
                }
            })?;
        watcher.watch(&dir.join("src"), RecursiveMode::Recursive)?;
        watcher.watch(&krate.manifest, RecursiveMode::NonRecursive)?;
        println!(
            "watching {} for changes; deploying as {name} to {}",
            dir.display(),
            self.url
        );
        loop {
            let started = std::time::Instant::now();
            if krate.build().await? {
                let bytes = std::fs::read(&krate.module)
                    .with_context(|| format!("reading {}", krate.module.display()))?;
                let request = self
                    .http
                    .put(format!("{}/projections/{}", self.url, encode_path(&name)))
                    .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                    .body(bytes);
                let deployed = match self.send(request).await {
                    Ok(response) => {
                        let answer: Value = response.json().await?;
                        self.follow_deploy(&name, answer, false).await
                    }
                    Err(error) => Err(error),
                };
                match deployed {
                    Ok(()) => println!(
                        "serving {:.1} s after the change",
                        started.elapsed().as_secs_f64()
                    ),
                    Err(error) => eprintln!("error: {error:#}"),
                }
            } else {
                eprintln!("the build failed; waiting for the next save");
            }
            if saved.recv().await.is_none() {
                bail!("the file watcher stopped");
            }
            // One save often touches a file several times: wait for the burst to end.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            while saved.try_recv().is_ok() {}
        }
    }

    /// After a deploy or rebuild request: a progress bar until the new version serves (or fails),
    /// then a summary. With `no_wait`, just the server's answer.
    async fn follow_deploy(&self, name: &str, answer: Value, no_wait: bool) -> anyhow::Result<()> {
        let version = answer["version"].as_u64().unwrap_or_default();
        let phase = answer["status"].as_str().unwrap_or_default().to_owned();
        if self.json && no_wait {
            println!("{answer}");
            return Ok(());
        }
        if !self.json {
            println!("{name}: version {version} {}", phase.replace('_', " "));
        }
        if no_wait || (phase != "catching_up" && phase != "rebuilding") {
            return Ok(());
        }
        let path = format!("/projections/{}", encode_path(name));
        let bar = if self.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} events  {per_sec}  eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let started = std::time::Instant::now();
        let result = loop {
            let status = self.get_json(&path, &[]).await?;
            let building = if phase == "rebuilding" {
                &status["rebuild"]
            } else {
                &status
            };
            if phase == "rebuilding"
                && status["version"].as_u64() == Some(version)
                && status["rebuild"].is_null()
            {
                break Ok(status);
            }
            if building["status"] == "faulted" {
                break Err(anyhow!(
                    "version {version} faulted at position {}: {}",
                    building["error"]["position"],
                    building["error"]["message"]
                        .as_str()
                        .unwrap_or("unknown error")
                ));
            }
            if phase == "rebuilding" && building.is_null() {
                break Err(anyhow!(
                    "the rebuild of version {version} was replaced or abandoned"
                ));
            }
            let position = building["position"].as_u64().unwrap_or_default();
            bar.set_length(building["head"].as_u64().unwrap_or_default());
            bar.set_position(position);
            if phase == "catching_up" && status["status"] == "running" {
                break Ok(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        bar.finish_and_clear();
        let status = result?;
        let processed = status["position"].as_u64().unwrap_or_default();
        let elapsed = started.elapsed().as_secs_f64();
        if self.json {
            println!("{status}");
        } else {
            println!(
                "{name}: version {version} serves at position {processed}: {processed} events in {elapsed:.1} s ({:.0} events/s)",
                processed as f64 / elapsed.max(0.001)
            );
        }
        Ok(())
    }

    async fn token(&self, command: TokenCommand) -> anyhow::Result<()> {
        match command {
            TokenCommand::Create {
                name,
                role,
                projections,
            } => {
                let request = NewToken {
                    name,
                    role,
                    projections: (!projections.is_empty()).then_some(projections),
                };
                let response = self
                    .send(
                        self.http
                            .post(format!("{}/tokens", self.url))
                            .json(&request),
                    )
                    .await?;
                let created: CreatedToken = response.json().await?;
                if self.json {
                    println!("{}", serde_json::to_string(&created)?);
                } else {
                    println!(
                        "created token {:?} ({}{})",
                        created.info.name,
                        created.info.role,
                        limited_to(&created.info.projections)
                    );
                    println!("secret (shown only now; the server keeps only its hash):");
                    println!("{}", created.token);
                }
            }
            TokenCommand::List => {
                let list: TokenList = self
                    .send(self.http.get(format!("{}/tokens", self.url)))
                    .await?
                    .json()
                    .await?;
                if self.json {
                    println!("{}", serde_json::to_string(&list)?);
                } else if list.tokens.is_empty() {
                    println!("no tokens: the server is in open mode (loopback clients only)");
                } else {
                    for token in &list.tokens {
                        println!(
                            "{:<24} {:<7} {}{}",
                            token.name,
                            token.role.to_string(),
                            token.created_at,
                            limited_to(&token.projections)
                        );
                    }
                }
            }
            TokenCommand::Revoke { name } => {
                self.send(
                    self.http
                        .delete(format!("{}/tokens/{}", self.url, encode_path(&name))),
                )
                .await?;
                if !self.json {
                    println!("revoked {name}");
                }
            }
        }
        Ok(())
    }

    async fn backup(&self, file: &std::path::Path) -> anyhow::Result<()> {
        let response = self
            .send(self.http.get(format!("{}/backup", self.url)))
            .await?;
        let position: u64 = response
            .headers()
            .get("lantern-position")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("the server's answer has no Lantern-Position")?;
        // Written beside the target and renamed when complete: FILE is never a partial backup.
        let mut partial = file.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let written = async {
            let mut out = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut body = response.bytes_stream();
            let mut bytes = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("the backup stream broke off")?;
                bytes += chunk.len() as u64;
                tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await?;
            }
            out.sync_all().await?;
            anyhow::Ok(bytes)
        }
        .await;
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(error) => {
                // An incomplete archive is no backup: nothing is left behind.
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
        };
        tokio::fs::rename(&partial, file).await?;
        if self.json {
            println!(
                "{}",
                json!({"file": file, "position": position, "bytes": bytes})
            );
        } else {
            println!(
                "backup of the log up to position {position}: {bytes} bytes in {}",
                file.display()
            );
        }
        Ok(())
    }

    async fn audit(&self, mut after: u64, limit: Option<u64>) -> anyhow::Result<()> {
        let mut remaining = limit.unwrap_or(u64::MAX);
        while remaining > 0 {
            let query = [
                ("after", after.to_string()),
                ("limit", remaining.min(1000).to_string()),
            ];
            let page: AuditPage = self
                .send(self.http.get(format!("{}/audit", self.url)).query(&query))
                .await?
                .json()
                .await?;
            remaining -= page.entries.len() as u64;
            for entry in &page.entries {
                if self.json {
                    println!("{}", serde_json::to_string(entry)?);
                } else {
                    println!(
                        "{:>6}  {}  {:<16} {:<14} {:<24} {}{}",
                        entry.seq,
                        entry.at,
                        entry.actor,
                        entry.action,
                        entry.target,
                        entry.status,
                        entry
                            .module_sha256
                            .as_ref()
                            .map(|sha| format!("  module {sha}"))
                            .unwrap_or_default()
                    );
                }
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
        Ok(())
    }

    /// Prints events one per line; returns how many.
    fn print_events(&self, events: &Value) -> anyhow::Result<u64> {
        let events = events
            .as_array()
            .context("the server's answer has no events")?;
        let mut out = std::io::stdout().lock();
        for event in events {
            if self.json {
                writeln!(out, "{event}")?;
            } else {
                let metadata = match &event["metadata"] {
                    Value::Null => String::new(),
                    metadata => format!("  metadata={metadata}"),
                };
                writeln!(
                    out,
                    "{:>8}  {}@{}  {}  {}  {}{metadata}",
                    event["position"].as_u64().unwrap_or_default(),
                    event["stream"].as_str().unwrap_or_default(),
                    event["revision"],
                    event["recorded_at"].as_str().unwrap_or_default(),
                    event["type"].as_str().unwrap_or_default(),
                    event["data"],
                )?;
            }
        }
        out.flush()?;
        Ok(events.len() as u64)
    }
}

fn limited_to(projections: &Option<Vec<String>>) -> String {
    match projections {
        None => String::new(),
        Some(list) => format!(", limited to {}", list.join(", ")),
    }
}

/// Percent-encodes a path segment.
fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
