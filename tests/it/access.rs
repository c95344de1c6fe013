//! Access control: the role matrix over every route, revocation, projection-limited tokens, open
//! mode, the audit trail, CORS and compression, and the subscriber cap.

use std::time::Duration;

use futures::StreamExt;
use lantern::access::Role;
use lantern::http::{Limits, Rule, routes};
use lantern::wasm::WasmConfig;
use lantern_tests::{TestServer, guest, shared_compile_cache};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::send;

/// A concrete path for a route template.
fn concrete(template: &str) -> String {
    template
        .replace("{stream}", "order-1")
        .replace("{name}", "p1")
        .replace("{*key}", "k")
        .replace("{query}", "q")
}

/// Who asks, in the matrix.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Nobody,
    UnknownToken,
    Reader,
    Writer,
    Admin,
    /// A reader limited to projection `p1` (the one in every concrete path).
    LimitedToP1,
    /// An admin limited to another projection.
    AdminLimitedToP2,
}

/// What the matrix expects: `None` for "let through" (any answer but 401 and 403).
fn expected(rule: Rule, caller: Caller) -> Option<StatusCode> {
    let role = match rule {
        Rule::Public => return None,
        Rule::Store(role) | Rule::Projection(role) => role,
    };
    let (held, limited_reaches_p1) = match caller {
        Caller::Nobody | Caller::UnknownToken => return Some(StatusCode::UNAUTHORIZED),
        Caller::Reader => (Role::Reader, None),
        Caller::Writer => (Role::Writer, None),
        Caller::Admin => (Role::Admin, None),
        Caller::LimitedToP1 => (Role::Reader, Some(true)),
        Caller::AdminLimitedToP2 => (Role::Admin, Some(false)),
    };
    if held < role {
        return Some(StatusCode::FORBIDDEN);
    }
    match (rule, limited_reaches_p1) {
        (_, None) => None,
        (Rule::Projection(_), Some(true)) => None,
        _ => Some(StatusCode::FORBIDDEN),
    }
}

#[tokio::test]
async fn every_route_enforces_its_rule_for_every_kind_of_token() {
    let server = TestServer::start().await.unwrap();
    let tokens = &server.access.tokens;
    let secret = |name: &str, role, projections: Option<Vec<&str>>| {
        tokens
            .create(
                name,
                role,
                projections.map(|p| p.into_iter().map(String::from).collect()),
            )
            .unwrap()
            .1
    };
    let callers = [
        (Caller::Nobody, None),
        (Caller::UnknownToken, Some("lantern_not_a_token".to_owned())),
        (Caller::Reader, Some(secret("r", Role::Reader, None))),
        (Caller::Writer, Some(secret("w", Role::Writer, None))),
        (Caller::Admin, Some(secret("a", Role::Admin, None))),
        (
            Caller::LimitedToP1,
            Some(secret("lim", Role::Reader, Some(vec!["p1"]))),
        ),
        (
            Caller::AdminLimitedToP2,
            Some(secret("lim-admin", Role::Admin, Some(vec!["p2"]))),
        ),
    ];
    let client = reqwest::Client::new();
    let table = routes(&Limits::default());
    // Only `/health`, `/health/ready` (load balancers hold no token) and the dashboard's files (which hold no data: the page calls the API with
    // its user's token) are open to anyone: a route added later as public must be added here too.
    let public: Vec<String> = table
        .iter()
        .filter(|r| r.rule == Rule::Public)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        public,
        [
            "GET /health",
            "GET /health/ready",
            "GET /ui",
            "GET /ui/",
            "GET /ui/{file}"
        ]
    );
    let mut checked = 0;
    for route in &table {
        let url = format!("{}{}", server.url, concrete(route.path));
        for (caller, token) in &callers {
            let mut request = client
                .request(route.method.clone(), &url)
                .timeout(Duration::from_secs(10));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if route.method == Method::POST || route.method == Method::PUT {
                request = request.body("{}");
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let context = format!("{} {} as {caller:?}", route.method, route.path);
            match expected(route.rule, *caller) {
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{context}: {status}"
                ),
                Some(wanted) => {
                    assert_eq!(status, wanted, "{context}");
                    if wanted == StatusCode::UNAUTHORIZED {
                        assert_eq!(
                            response.headers()["www-authenticate"],
                            "Bearer",
                            "{context}"
                        );
                    }
                    let body: Value = response.json().await.unwrap();
                    let code = if wanted == StatusCode::UNAUTHORIZED {
                        "unauthenticated"
                    } else {
                        "forbidden"
                    };
                    assert_eq!(body["error"]["code"], code, "{context}: {body}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, table.len() * callers.len());
    server.stop().await;
}

#[tokio::test]
async fn revocation_refuses_the_next_request_and_ends_open_subscriptions() {
    let server = TestServer::start().await.unwrap();
    let (_, admin) = server
        .access
        .tokens
        .create("ops", Role::Admin, None)
        .unwrap();
    let client = reqwest::Client::new();
    let (status, created) = send(
        client
            .post(format!("{}/tokens", server.url))
            .bearer_auth(&admin)
            .json(&json!({"name": "tail", "role": "reader"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["role"], "reader");
    assert_eq!(created["projections"], Value::Null);
    let reader = created["token"].as_str().unwrap().to_owned();
    let (status, body) = send(
        client
            .post(format!("{}/tokens", server.url))
            .bearer_auth(&admin)
            .json(&json!({"name": "tail", "role": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "token_exists");

    let response = client
        .get(format!("{}/subscribe?from=1", server.url))
        .header("accept", "application/x-ndjson")
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let (status, _) = send(
        client
            .post(format!("{}/streams/order-1", server.url))
            .bearer_auth(&admin)
            .json(&json!({"events": [{"type": "OrderPlaced", "data": {}}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the event arrives")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("OrderPlaced"));

    let (status, listed) = send(
        client
            .get(format!("{}/tokens", server.url))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ops", "tail"]);
    assert!(
        !listed.to_string().contains(&reader),
        "secrets are never listed"
    );

    let revoked = client
        .delete(format!("{}/tokens/tail", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    // The open subscription ends: its body finishes.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the subscription of a revoked token ends");
    let (status, body) = send(
        client
            .get(format!("{}/all", server.url))
            .bearer_auth(&reader),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthenticated");
    let (status, body) = send(
        client
            .delete(format!("{}/tokens/tail", server.url))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_projection_limited_token_reaches_only_its_projections() {
    let server = TestServer::start().await.unwrap();
    let client = reqwest::Client::new();
    for name in ["order-totals", "other"] {
        let response = client
            .put(format!("{}/projections/{name}", server.url))
            .body(guest("order_totals"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let (_, writer) = server
        .access
        .tokens
        .create("w", Role::Writer, None)
        .unwrap();
    let (_, browser) = server
        .access
        .tokens
        .create(
            "browser",
            Role::Reader,
            Some(vec!["order-totals".to_owned()]),
        )
        .unwrap();
    let (status, appended) = send(
        client
            .post(format!("{}/streams/order-1", server.url))
            .bearer_auth(&writer)
            .json(&json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-1", "amount": 5}}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let position = appended["last_position"].as_u64().unwrap();
    let get = |path: String| {
        client
            .get(format!("{}{path}", server.url))
            .bearer_auth(&browser)
    };
    let (status, value) = send(get(format!(
        "/projections/order-totals/state/customer:c-1?min_position={position}"
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["total"], 5);
    let (status, _) = send(get("/projections/order-totals".into())).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(get(
        "/projections/order-totals/state?prefix=customer:".into()
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/projections/other",
        "/projections/other/state/customer:c-1",
        "/projections",
        "/all",
        "/streams/order-1",
        "/metrics",
    ] {
        let (status, body) = send(get(path.into())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, _) = send(
        client
            .delete(format!("{}/projections/order-totals", server.url))
            .bearer_auth(&browser),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reader cannot delete");
    server.stop().await;
}

#[tokio::test]
async fn admin_actions_are_in_the_audit_trail_with_who_and_which_module() {
    let server = TestServer::start().await.unwrap();
    let (_, admin) = server
        .access
        .tokens
        .create("release-bot", Role::Admin, None)
        .unwrap();
    let (_, reader) = server
        .access
        .tokens
        .create("r", Role::Reader, None)
        .unwrap();
    let client = reqwest::Client::new();
    let module = guest("order_totals");
    let sha = lantern::projection::module_sha256(&module);
    let as_admin = |request: reqwest::RequestBuilder| request.bearer_auth(&admin);
    let deployed = as_admin(client.put(format!("{}/projections/totals", server.url)))
        .body(module)
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), StatusCode::CREATED);
    let refused = as_admin(client.put(format!("{}/projections/broken", server.url)))
        .body("not wasm")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let rebuilt = as_admin(client.post(format!("{}/projections/totals/rebuild", server.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(rebuilt.status(), StatusCode::ACCEPTED);
    let created = as_admin(client.post(format!("{}/tokens", server.url)))
        .json(&json!({"name": "app", "role": "reader", "projections": ["totals"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let revoked = as_admin(client.delete(format!("{}/tokens/app", server.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let deleted = as_admin(client.delete(format!("{}/projections/totals", server.url)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let (status, page) = send(as_admin(client.get(format!("{}/audit", server.url)))).await;
    assert_eq!(status, StatusCode::OK);
    let entries = page["entries"].as_array().unwrap();
    let summary: Vec<(String, String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, u64)> = [
        ("deploy", "totals", 201),
        ("deploy", "broken", 400),
        ("rebuild", "totals", 202),
        ("token_create", "app", 201),
        ("token_revoke", "app", 204),
        ("delete", "totals", 204),
    ]
    .into_iter()
    .map(|(a, t, s)| ("release-bot".to_owned(), a.to_owned(), t.to_owned(), s))
    .collect();
    assert_eq!(summary, expected);
    assert_eq!(entries[0]["module_sha256"], sha.as_str());
    assert_eq!(entries[2]["module_sha256"], sha.as_str());
    assert_eq!(entries[5]["module_sha256"], sha.as_str());
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let (status, page) = send(as_admin(
        client.get(format!("{}/audit?after=4&limit=1", server.url)),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["entries"][0]["seq"], 5);
    assert_eq!(page["next"], 5);
    let (status, _) = send(
        client
            .get(format!("{}/audit", server.url))
            .bearer_auth(&reader),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn browsers_get_cors_for_allowed_origins_and_large_answers_compressed() {
    let server =
        TestServer::start_custom(shared_compile_cache(WasmConfig::default()), |mut state| {
            state.cors_origins = vec!["https://app.example".parse().unwrap()];
            state
        })
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                Method::OPTIONS,
                format!("{}/projections/p/state/k", server.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allow_headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allow_headers.contains("authorization"), "{allow_headers}");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let events: Vec<Value> = (0..200)
        .map(
            |i| json!({"type": "OrderPlaced", "data": {"customer": format!("c-{i}"), "amount": i}}),
        )
        .collect();
    let (status, _) = super::append(&server.url, "order-1", json!({"events": events})).await;
    assert_eq!(status, StatusCode::OK);
    let compressed = client
        .get(format!("{}/all?limit=200", server.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.headers()["content-encoding"], "gzip");
    let plain = client
        .get(format!("{}/all?limit=200", server.url))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["events"].as_array().unwrap().len(), 200);
    // Subscriptions are never compressed: each event must reach the client when committed.
    let stream = client
        .get(format!("{}/subscribe?from=1", server.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(stream.headers().get("content-encoding").is_none());
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_beyond_the_cap_get_503_and_a_freed_slot_is_reused() {
    let server = TestServer::start_custom(shared_compile_cache(WasmConfig::default()), |state| {
        state.with_limits(Limits {
            max_subscribers: 2,
            ..Limits::default()
        })
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let subscribe = || client.get(format!("{}/subscribe", server.url)).send();
    let first = subscribe().await.unwrap();
    let second = subscribe().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let (status, body) = send(client.get(format!("{}/subscribe", server.url))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "too_many_subscribers");
    drop(first);
    // The server notices the closed connection when it next writes (a heartbeat at the latest).
    let freed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let response = subscribe().await.unwrap();
            if response.status() == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "a closed subscription frees its slot");
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn open_mode_serves_loopback_clients_only_unless_insecure() {
    use axum::extract::ConnectInfo;
    use lantern::access::AccessControl;
    use lantern::http::{AppState, app};
    use tower::ServiceExt;

    let server = TestServer::start().await.unwrap();
    let call = |insecure: bool, peer: &str| {
        let mut access = AccessControl::in_memory();
        access.insecure = insecure;
        let state = AppState::new(server.store.clone(), server.projections.clone(), access);
        let mut request = axum::http::Request::get("/all")
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        app(state).oneshot(request)
    };
    for peer in ["127.0.0.1:5000", "[::1]:5000"] {
        let response = call(false, peer).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{peer}");
    }
    let refused = call(false, "192.0.2.7:5000").await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body = axum::body::to_bytes(refused.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lantern token create"),
        "{body}"
    );
    let insecure = call(true, "192.0.2.7:5000").await.unwrap();
    assert_eq!(insecure.status(), StatusCode::OK);
    server.stop().await;
}
