//! `GET /openapi.json`: an OpenAPI 3.1 description of the API, made from [`routes`] (so a route
//! cannot be served without being described, nor described without being served) and from the
//! answer of each route described here. `tests/it/openapi.rs` calls every route and validates the
//! real answers against this document's schemas.

use axum::extract::State;
use axum::http::Method;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::access::Rule;
use super::{AppState, Limits, routes};

/// What a route answers when it succeeds.
enum Answer {
    /// JSON of this schema (a name under `components.schemas`).
    Schema(&'static str),
    /// Any JSON value (a read model's value, a module's query answer).
    AnyJson,
    /// No body.
    NoContent,
    /// Bytes of this media type.
    Media(&'static str),
}

/// One route's description.
struct Doc {
    summary: &'static str,
    /// Query parameters: name and description.
    query: &'static [(&'static str, &'static str)],
    /// The request body: a schema name, or a media type of raw bytes.
    body: Option<Answer>,
    /// Successful statuses and what they carry.
    ok: &'static [(u16, Answer)],
}

const READ_PAGE: &[(&str, &str)] = &[
    (
        "raw",
        "true: the events as stored, not through the upcasters",
    ),
    (
        "from",
        "first revision (inclusive), or `snapshot`: the stream's snapshot and the events after it",
    ),
    ("direction", "forward (default) or backward"),
    (
        "limit",
        "at most this many events (default 100, capped at 10,000)",
    ),
];
const LOG_FILTER: &[(&str, &str)] = &[
    (
        "raw",
        "true: the events as stored, not through the upcasters",
    ),
    ("from", "first position (inclusive)"),
    ("limit", "at most this many events"),
    ("stream", "only this stream"),
    ("category", "only this category"),
    ("types", "only these event types (comma-separated)"),
];
const WAIT: &[(&str, &str)] = &[
    (
        "min_position",
        "wait until the read model reflects this position",
    ),
    ("wait_ms", "how long to wait (default 5000, at most 30000)"),
];

/// The description of `method path`; `None` for a route this file does not describe (a test
/// makes sure there is none).
fn doc(method: &Method, path: &str) -> Option<Doc> {
    use Answer::{AnyJson, Media, NoContent, Schema};
    let doc = |summary, query, body, ok| {
        Some(Doc {
            summary,
            query,
            body,
            ok,
        })
    };
    match (method.as_str(), path) {
        ("GET", "/health") => doc(
            "Liveness and problems",
            &[],
            None,
            &[(200, Schema("Health"))],
        ),
        ("GET", "/health/ready") => doc(
            "Readiness: 200 while this server should get traffic, 503 with the reasons while it should not (starting, degraded, a required projection behind)",
            &[],
            None,
            &[(200, Schema("Ready")), (503, Schema("Ready"))],
        ),
        ("GET", "/metrics") => doc(
            "Prometheus metrics (OpenMetrics text)",
            &[],
            None,
            &[(200, Media("application/openmetrics-text"))],
        ),
        ("GET", "/openapi.json") => doc("This document", &[], None, &[(200, Schema("OpenApi"))]),
        ("GET", "/ui") => doc(
            "Redirects to the dashboard, /ui/",
            &[],
            None,
            &[(308, NoContent)],
        ),
        ("GET", "/ui/") => doc(
            "The dashboard (a page; it calls this API with the token typed into it)",
            &[],
            None,
            &[(200, Media("text/html"))],
        ),
        ("GET", "/ui/{file}") => doc(
            "The dashboard's files (app.js, style.css, favicon.svg)",
            &[],
            None,
            &[(200, Media("*/*"))],
        ),
        ("GET", "/streams") => doc(
            "List streams by name (byte order), for browsing",
            &[
                ("prefix", "only names starting with this"),
                (
                    "after",
                    "only names after this one (the previous page's next)",
                ),
                (
                    "limit",
                    "at most this many streams (default 100, capped at 10,000)",
                ),
            ],
            None,
            &[(200, Schema("StreamList"))],
        ),
        ("POST", "/streams/{stream}") => doc(
            "Append events atomically",
            &[],
            Some(Schema("AppendRequest")),
            &[(200, Schema("Appended"))],
        ),
        ("GET", "/streams/{stream}") => doc(
            "Read one stream",
            READ_PAGE,
            None,
            &[(200, Schema("StreamPage"))],
        ),
        ("PUT", "/streams/{stream}/snapshot") => doc(
            "Save a snapshot of the stream at one of its revisions (kept unless a later one is stored)",
            &[],
            Some(Schema("SnapshotRequest")),
            &[(200, Schema("SnapshotSaved"))],
        ),
        ("GET", "/streams/{stream}/snapshot") => doc(
            "The stream's snapshot",
            &[],
            None,
            &[(200, Schema("Snapshot"))],
        ),
        ("GET", "/all") => doc(
            "Read the global log",
            LOG_FILTER,
            None,
            &[(200, Schema("LogPage"))],
        ),
        ("GET", "/subscribe") => doc(
            "Catch up, then follow live (Server-Sent Events, or NDJSON with Accept: application/x-ndjson)",
            LOG_FILTER,
            None,
            &[(200, Media("text/event-stream"))],
        ),
        ("GET", "/upcasters") => doc(
            "Every upcaster, in the order they run (by name)",
            &[],
            None,
            &[(200, Schema("UpcasterList"))],
        ),
        ("GET", "/upcasters/{name}") => doc(
            "One upcaster",
            &[],
            None,
            &[(200, Schema("UpcasterStatus"))],
        ),
        ("PUT", "/upcasters/{name}") => doc(
            "Deploy an upcaster (a component of the upcaster world); the projections it affects rebuild",
            &[],
            Some(Media("application/wasm")),
            &[
                (200, Schema("UpcasterDeployed")),
                (201, Schema("UpcasterDeployed")),
            ],
        ),
        ("DELETE", "/upcasters/{name}") => doc(
            "Delete an upcaster; the projections it affected rebuild",
            &[],
            None,
            &[(204, NoContent)],
        ),
        ("GET", "/projections") => doc(
            "Every projection's status",
            &[],
            None,
            &[(200, Schema("ProjectionList"))],
        ),
        ("GET", "/projections/{name}") => doc(
            "One projection's status",
            &[],
            None,
            &[(200, Schema("ProjectionStatus"))],
        ),
        ("PUT", "/projections/{name}") => doc(
            "Deploy a module (a new projection, or a live rebuild of a new version)",
            &[],
            Some(Media("application/wasm")),
            &[
                (200, Schema("Deployed")),
                (201, Schema("Deployed")),
                (202, Schema("Deployed")),
            ],
        ),
        ("DELETE", "/projections/{name}") => doc(
            "Delete a projection and its read model",
            &[],
            None,
            &[(204, NoContent)],
        ),
        ("POST", "/projections/{name}/rebuild") => doc(
            "Rebuild the current version beside it",
            &[],
            None,
            &[(202, Schema("Deployed"))],
        ),
        ("GET", "/projections/{name}/state") => doc(
            "A page of keys by prefix",
            &[
                ("prefix", "keys starting with this"),
                ("after", "keys strictly greater than this"),
                ("limit", "at most this many"),
                (
                    "min_position",
                    "wait until the read model reflects this position",
                ),
                ("wait_ms", "how long to wait (default 5000, at most 30000)"),
            ],
            None,
            &[(200, Schema("StatePage"))],
        ),
        ("GET", "/projections/{name}/state/{*key}") => {
            doc("The value under a key", WAIT, None, &[(200, AnyJson)])
        }
        ("GET", "/projections/{name}/query/{query}") => doc(
            "Run the module's query handler (other query parameters go to it)",
            WAIT,
            None,
            &[(200, AnyJson)],
        ),
        ("POST", "/tokens") => doc(
            "Create a token (its secret is shown only here)",
            &[],
            Some(Schema("TokenRequest")),
            &[(201, Schema("CreatedToken"))],
        ),
        ("GET", "/tokens") => doc("List the tokens", &[], None, &[(200, Schema("TokenList"))]),
        ("DELETE", "/tokens/{name}") => doc("Revoke a token", &[], None, &[(204, NoContent)]),
        ("GET", "/audit") => doc(
            "The audit trail of admin actions",
            &[
                ("after", "entries after this number"),
                ("limit", "at most this many"),
            ],
            None,
            &[(200, Schema("AuditPage"))],
        ),
        ("GET", "/backup") => doc(
            "An online backup (tar)",
            &[],
            None,
            &[(200, Media("application/x-tar"))],
        ),
        ("GET", "/replicate") => doc(
            "The replication stream (docs/replication.md)",
            &[("from", "first position")],
            None,
            &[(200, Media("application/x-lantern-log"))],
        ),
        ("GET", "/replicate/state") => doc(
            "What a follower copies besides the log",
            &[],
            None,
            &[(200, Schema("LeaderState"))],
        ),
        ("GET", "/replicate/snapshots") => doc(
            "Snapshots saved or replaced after a change number, in change order",
            &[
                (
                    "after",
                    "the last change number the follower holds (default 0)",
                ),
                (
                    "limit",
                    "at most this many (default 1,000, capped at 10,000)",
                ),
            ],
            None,
            &[(200, Schema("SnapshotChanges"))],
        ),
        ("GET", "/replicate/modules/{sha256}") => doc(
            "A deployed module's bytes",
            &[],
            None,
            &[(200, Media("application/wasm"))],
        ),
        _ => None,
    }
}

/// The OpenAPI path of an axum route template (`{*key}` -> `{key}`).
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn content(answer: &Answer) -> Option<Value> {
    match answer {
        Answer::Schema(name) => Some(
            json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}),
        ),
        Answer::AnyJson => Some(json!({"application/json": {"schema": {}}})),
        Answer::NoContent => None,
        Answer::Media(media) => {
            Some(json!({ *media: {"schema": {"type": "string", "format": "binary"}} }))
        }
    }
}

/// The whole document.
pub fn document(limits: &Limits) -> Value {
    let mut paths = Map::new();
    for route in routes(limits) {
        let doc = doc(&route.method, route.path).unwrap_or(Doc {
            summary: "(not described)",
            query: &[],
            body: None,
            ok: &[],
        });
        let path = openapi_path(route.path);
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(doc.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
        }));
        let mut responses = Map::new();
        for (status, answer) in doc.ok {
            let mut response = json!({"description": "success"});
            if let Some(content) = content(answer) {
                response["content"] = content;
            }
            responses.insert(status.to_string(), response);
        }
        responses.insert(
            "default".into(),
            json!({"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        let mut operation = json!({
            "summary": doc.summary,
            "operationId": format!("{} {}", route.method, path),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = &doc.body {
            operation["requestBody"] = json!({"required": true, "content": content(body)});
        }
        operation["security"] = match route.rule {
            Rule::Public => json!([]),
            _ => json!([{"bearer": []}]),
        };
        let item = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Lantern",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An event store whose read models are built by WebAssembly projections.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

/// `GET /openapi.json`
pub(super) async fn openapi(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(document(&state.limits))
}

/// The shapes of the answers, as JSON Schema (2020-12, which OpenAPI 3.1 uses).
fn schemas() -> Value {
    let int = json!({"type": "integer", "minimum": 0});
    let string = json!({"type": "string"});
    let nullable_int = json!({"type": ["integer", "null"], "minimum": 0});
    let fault = json!({
        "type": ["object", "null"],
        "required": ["message", "position", "at", "cause"],
        "properties": {
            "message": string, "position": int, "at": string,
            "cause": {"enum": ["module", "storage", "upcaster"]},
        },
    });
    let phase = json!({"enum": ["catching_up", "running", "faulted"]});
    let mut all = json!({
        "Ready": {
            "type": "object",
            "required": ["ready", "reasons"],
            "properties": {
                "ready": {"type": "boolean"},
                "reasons": {"type": "array", "items": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": string, "message": string, "projection": string},
                    "additionalProperties": false,
                }},
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"const": "not_ready"}, "message": string},
                },
            },
            "additionalProperties": false,
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": string, "message": string},
            }},
        },
        "Event": {
            "type": "object",
            "required": ["position", "stream", "revision", "id", "type", "data", "metadata", "recorded_at"],
            "properties": {
                "position": int, "stream": string, "revision": int,
                "id": {"type": "string", "format": "uuid"},
                "type": string, "data": {}, "metadata": {},
                "recorded_at": {"type": "string", "format": "date-time"},
            },
            "additionalProperties": false,
        },
        "AppendRequest": {
            "type": "object",
            "required": ["events"],
            "properties": {
                "expected_revision": {"oneOf": [{"enum": ["any", "no_stream", "exists"]}, int]},
                "events": {"type": "array", "items": {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {"type": string, "data": {}, "metadata": {}, "id": {"type": "string", "format": "uuid"}},
                }},
            },
        },
        "Appended": {
            "type": "object",
            "required": ["stream", "first_revision", "last_revision", "first_position", "last_position"],
            "properties": {
                "stream": string, "first_revision": int, "last_revision": int,
                "first_position": int, "last_position": int,
            },
            "additionalProperties": false,
        },
        "StreamList": {
            "type": "object",
            "required": ["streams", "next"],
            "properties": {
                "streams": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "last_revision", "last_position"],
                    "properties": {"name": string, "last_revision": int, "last_position": int},
                    "additionalProperties": false,
                }},
                "next": {"type": ["string", "null"]},
            },
            "additionalProperties": false,
        },
        "StreamPage": {
            "type": "object",
            "required": ["events", "next"],
            "properties": {
                "snapshot": {"oneOf": [{"$ref": "#/components/schemas/Snapshot"}, {"type": "null"}]},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                "next": nullable_int,
            },
            "additionalProperties": false,
        },
        "LogPage": {
            "type": "object",
            "required": ["events", "next", "head"],
            "properties": {
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                "next": nullable_int, "head": int,
            },
            "additionalProperties": false,
        },
        "Health": {
            "type": "object",
            "required": ["status", "head", "version", "problems", "role"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "head": int, "version": string,
                "problems": {"type": "array", "items": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": string, "message": string},
                }},
                "role": {"enum": ["leader", "follower"]},
                "leader": string, "lag": int,
            },
            "additionalProperties": false,
        },
        "ProjectionStatus": {
            "type": "object",
            "required": ["name", "version", "module_sha256", "status", "position", "head", "lag",
                         "events_per_second", "subscription", "error", "rebuild"],
            "properties": {
                "name": string, "version": int, "module_sha256": string, "status": phase,
                "position": int, "head": int, "lag": int,
                "events_per_second": {"type": "number", "minimum": 0},
                "subscription": {
                    "type": "object",
                    "required": ["categories", "streams", "types"],
                    "properties": {
                        "categories": {"type": "array", "items": string},
                        "streams": {"type": "array", "items": string},
                        "types": {"type": "array", "items": string},
                    },
                },
                "upcasters": {"type": "array", "items": string},
                "error": fault,
                "rebuild": {
                    "type": ["object", "null"],
                    "required": ["version", "reason", "position", "head", "progress", "status", "events_per_second", "eta_seconds", "error"],
                    "properties": {
                        "version": int, "reason": {"type": ["string", "null"]},
                        "position": int, "head": int,
                        "progress": {"type": "number", "minimum": 0, "maximum": 1},
                        "status": phase,
                        "events_per_second": {"type": "number", "minimum": 0},
                        "eta_seconds": {"type": ["number", "null"], "minimum": 0},
                        "error": fault,
                    },
                },
            },
            "additionalProperties": false,
        },
        "ProjectionList": {
            "type": "object",
            "required": ["projections"],
            "properties": {"projections": {"type": "array", "items": {"$ref": "#/components/schemas/ProjectionStatus"}}},
            "additionalProperties": false,
        },
        "Deployed": {
            "type": "object",
            "required": ["name", "version", "status"],
            "properties": {
                "name": string, "version": int,
                "status": {"enum": ["catching_up", "running", "faulted", "rebuilding"]},
            },
            "additionalProperties": false,
        },
        "StatePage": {
            "type": "object",
            "required": ["items", "next", "position"],
            "properties": {
                "items": {"type": "array", "items": {
                    "type": "object", "required": ["key", "value"],
                    "properties": {"key": string, "value": {}},
                }},
                "next": {"type": ["string", "null"]},
                "position": int,
            },
            "additionalProperties": false,
        },
        "TokenRequest": {
            "type": "object",
            "required": ["name", "role"],
            "properties": {
                "name": string,
                "role": {"enum": ["reader", "writer", "admin"]},
                "projections": {"type": ["array", "null"], "items": string},
            },
        },
        "TokenInfo": {
            "type": "object",
            "required": ["name", "role", "projections", "created_at"],
            "properties": {
                "name": string,
                "role": {"enum": ["reader", "writer", "admin"]},
                "projections": {"type": ["array", "null"], "items": string},
                "created_at": {"type": "string", "format": "date-time"},
            },
            "additionalProperties": false,
        },
        "CreatedToken": {
            "type": "object",
            "required": ["name", "role", "projections", "token"],
            "properties": {
                "name": string,
                "role": {"enum": ["reader", "writer", "admin"]},
                "projections": {"type": ["array", "null"], "items": string},
                "created_at": {"type": "string", "format": "date-time"},
                "token": string,
            },
            "additionalProperties": false,
        },
        "TokenList": {
            "type": "object",
            "required": ["tokens"],
            "properties": {"tokens": {"type": "array", "items": {"$ref": "#/components/schemas/TokenInfo"}}},
            "additionalProperties": false,
        },
        "AuditPage": {
            "type": "object",
            "required": ["entries", "next"],
            "properties": {
                "entries": {"type": "array", "items": {
                    "type": "object",
                    "required": ["seq", "at", "actor", "action", "target", "status"],
                    "properties": {
                        "seq": int, "at": string, "actor": string, "action": string,
                        "target": string, "module_sha256": string, "status": int,
                    },
                    "additionalProperties": false,
                }},
                "next": nullable_int,
            },
            "additionalProperties": false,
        },
        "LeaderState": {
            "type": "object",
            "required": ["store_id", "head", "projections", "tokens"],
            "properties": {
                "store_id": {"type": "string", "format": "uuid"},
                "head": int,
                "projections": {"type": "object", "additionalProperties": {
                    "type": "object",
                    "required": ["version", "generation", "module_sha256"],
                    "properties": {"version": int, "generation": int, "module_sha256": string, "upcasters": {"type": "array", "items": string}},
                }},
                "tokens": {"type": "object"},
                "snapshot_change": int,
                "upcasters": {"type": "object", "additionalProperties": string},
            },
            "additionalProperties": false,
        },
        "OpenApi": {
            "type": "object",
            "required": ["openapi", "info", "paths", "components"],
        },
    });
    let extra = v2_schemas(&int, &string);
    if let (Some(all), Value::Object(extra)) = (all.as_object_mut(), extra) {
        all.extend(extra);
    }
    all
}

/// The schemas of the contract's v2 additions (one `json!` of all schemas outgrows the
/// macro's recursion limit).
fn v2_schemas(int: &Value, string: &Value) -> Value {
    json!({
        "Snapshot": {
            "type": "object",
            "required": ["revision", "state", "recorded_at"],
            "properties": {
                "revision": int, "state": {},
                "recorded_at": {"type": "string", "format": "date-time"},
            },
            "additionalProperties": false,
        },
        "SnapshotRequest": {
            "type": "object",
            "required": ["revision", "state"],
            "properties": {"revision": int, "state": {}},
        },
        "SnapshotSaved": {
            "type": "object",
            "required": ["stream", "revision", "stored", "current_revision"],
            "properties": {
                "stream": string, "revision": int, "stored": {"type": "boolean"},
                "current_revision": int,
            },
            "additionalProperties": false,
        },
        "SnapshotChanges": {
            "type": "object",
            "required": ["snapshots"],
            "properties": {"snapshots": {"type": "array", "items": {
                "type": "object",
                "required": ["stream", "revision", "position", "recorded_at_micros", "change", "state"],
                "properties": {
                    "stream": string, "revision": int, "position": int,
                    "recorded_at_micros": int, "change": int, "state": {},
                },
                "additionalProperties": false,
            }}},
            "additionalProperties": false,
        },
        "UpcasterStatus": {
            "type": "object",
            "required": ["name", "version", "module_sha256", "takes", "gives", "events", "faults", "error"],
            "properties": {
                "name": string, "version": int, "module_sha256": string,
                "takes": {"type": "array", "items": string},
                "gives": {"type": "array", "items": string},
                "events": int, "faults": int,
                "error": {
                    "type": ["object", "null"],
                    "required": ["message", "position", "at"],
                    "properties": {"message": string, "position": int, "at": {"type": ["string", "null"]}},
                },
            },
            "additionalProperties": false,
        },
        "UpcasterList": {
            "type": "object",
            "required": ["upcasters"],
            "properties": {"upcasters": {"type": "array", "items": {"$ref": "#/components/schemas/UpcasterStatus"}}},
            "additionalProperties": false,
        },
        "UpcasterDeployed": {
            "type": "object",
            "required": ["name", "version", "unchanged", "rebuilding"],
            "properties": {
                "name": string, "version": int, "unchanged": {"type": "boolean"},
                "rebuilding": {"type": "array", "items": string},
            },
            "additionalProperties": false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        for route in routes(&Limits::default()) {
            let doc = doc(&route.method, route.path);
            assert!(
                doc.is_some(),
                "{} {} has no description",
                route.method,
                route.path
            );
            assert!(!doc.unwrap().ok.is_empty());
        }
    }
}
