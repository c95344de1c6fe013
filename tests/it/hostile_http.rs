//! Whatever a client sends, the answer is a success or the contract's error JSON: never a 500, never
//! a panic. A property test throws random methods, paths, query strings, headers and bodies at
//! `app()`; the Last-Event-ID edge gets its own test.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use lantern::access::AccessControl;
use lantern::http::{AppState, Limits, app, routes};
use lantern::projection::Projections;
use lantern::store::Store;
use lantern::wasm::WasmConfig;
use lantern_tests::fuzzing::{answer_of, check_answer};
use lantern_tests::{TestServer, guest, shared_compile_cache, test_store_options};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One random request.
#[derive(Debug, Clone)]
struct Wild {
    method: &'static str,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("order-1".to_owned()),
        Just("p".to_owned()),
        Just("$all".to_owned()),
        Just("..".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%00".to_owned()),
        Just("a".repeat(300)),
        "[a-z0-9_-]{0,12}",
        any::<String>().prop_map(|s| percent_encode(&s)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let templates = prop::sample::select(vec![
        "/streams/{}",
        "/all",
        "/subscribe",
        "/health",
        "/metrics",
        "/projections",
        "/projections/{}",
        "/projections/{}/rebuild",
        "/projections/{}/state",
        "/projections/{}/state/{}",
        "/projections/{}/query/{}",
        "/tokens",
        "/tokens/{}",
        "/audit",
        "/{}",
        "/{}/{}/{}",
    ]);
    (templates, segment(), segment())
        .prop_map(|(template, a, b)| template.replacen("{}", &a, 1).replacen("{}", &b, 1))
}

fn number_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("1e3".to_owned()),
        Just(String::new()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<String>(),
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop::sample::select(vec![
        "from",
        "limit",
        "direction",
        "stream",
        "category",
        "types",
        "prefix",
        "after",
        "min_position",
        "wait_ms",
        "raw",
        "q",
    ]);
    prop::collection::vec(
        (
            key,
            prop_oneof![
                number_ish(),
                Just("backward".to_owned()),
                Just("forward".to_owned())
            ],
        ),
        0..4,
    )
    .prop_map(|pairs| {
        let mut pairs: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(k, _)| *k != "wait_ms")
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        // A read-your-writes wait is capped so that each case stays quick.
        if pairs.iter().any(|(k, _)| k == "min_position") {
            pairs.push(("wait_ms".into(), "5".into()));
        }
        pairs
    })
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let header = prop_oneof![
        3 => number_ish().prop_map(|v| ("last-event-id", v)),
        1 => prop_oneof![
            Just("application/x-ndjson".to_owned()),
            Just("text/event-stream".to_owned()),
            any::<String>()
        ]
        .prop_map(|v| ("accept", v)),
        1 => any::<String>().prop_map(|v| ("authorization", format!("Bearer {v}"))),
        1 => any::<String>().prop_map(|v| ("authorization", v)),
        1 => prop_oneof![
            Just("application/json".to_owned()),
            Just("application/wasm".to_owned()),
            any::<String>()
        ]
        .prop_map(|v| ("content-type", v)),
        1 => any::<String>().prop_map(|v| ("origin", v)),
    ];
    prop::collection::vec(header, 0..3)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let json_like = prop_oneof![
        Just(
            r#"{"events":[{"type":"OrderPlaced","data":{"customer":"c","amount":1}}]}"#.to_owned()
        ),
        number_ish().prop_map(|x| format!(
            r#"{{"expected_revision":{x},"events":[{{"type":"T","data":null,"id":"{x}"}}]}}"#
        )),
        any::<String>().prop_map(|t| format!(
            r#"{{"events":[{{"type":{},"data":{{}},"metadata":[1]}}]}}"#,
            serde_json::to_string(&t).unwrap()
        )),
        Just(r#"{"name":"n","role":"reader","projections":[]}"#.to_owned()),
        Just(r#"{"name":"$bad","role":"root"}"#.to_owned()),
        Just(format!("{}1{}", "[".repeat(5000), "]".repeat(5000))),
        Just(r#"{"events":[]}"#.to_owned()),
    ];
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..200),
        json_like.prop_map(String::into_bytes),
    ]
}

/// The route table's own (method, template) pairs, so every route is exercised with its methods.
fn route_pairs() -> Vec<(&'static str, String)> {
    routes(&Limits::default())
        .iter()
        .map(|route| {
            let method: &'static str = match route.method.as_str() {
                "GET" => "GET",
                "POST" => "POST",
                "PUT" => "PUT",
                "DELETE" => "DELETE",
                other => panic!("a route with method {other}"),
            };
            let template = route
                .path
                .split('/')
                .map(|part| if part.starts_with('{') { "{}" } else { part })
                .collect::<Vec<_>>()
                .join("/");
            (method, template)
        })
        .collect()
}

fn wild() -> impl Strategy<Value = Wild> {
    let any_method = prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
    ]);
    let known = (prop::sample::select(route_pairs()), segment(), segment()).prop_map(
        |((method, template), a, b)| (method, template.replacen("{}", &a, 1).replacen("{}", &b, 1)),
    );
    let random = (any_method, path());
    let target = prop_oneof![3 => known, 1 => random];
    (target, query(), headers(), body()).prop_map(|((method, path), query, headers, body)| Wild {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn build(wild: &Wild) -> Option<Request<Body>> {
    let mut uri = wild.path.clone();
    if !wild.query.is_empty() {
        let pairs: Vec<String> = wild
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        uri = format!("{uri}?{}", pairs.join("&"));
    }
    let mut request = Request::builder().method(wild.method).uri(uri);
    for (name, value) in &wild.headers {
        request = request.header(*name, value.as_str());
    }
    // A URI or header value that HTTP cannot carry never reaches a server.
    request.body(Body::from(wild.body.clone())).ok()
}

#[test]
fn random_requests_get_a_success_or_the_contract_error_never_a_500() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (router, state) = runtime.block_on(async {
        let store = Store::open(&dir.path().join("store"), test_store_options(false)).unwrap();
        let projections = Projections::open(
            store.clone(),
            &dir.path().join("projections"),
            shared_compile_cache(WasmConfig::default()),
        )
        .await
        .unwrap();
        projections
            .deploy("p", guest("order_totals"))
            .await
            .unwrap();
        let state = AppState::new(store, projections, AccessControl::in_memory());
        (app(state.clone()), state)
    });
    let mut runner = TestRunner::new(Config {
        cases: 2500,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&wild(), |wild| {
            let Some(request) = build(&wild) else {
                return Ok(());
            };
            let answer = runtime.block_on(answer_of(router.clone(), request));
            check_answer(wild.method, &answer);
            // Put the world back for the next case: open mode, the projection deployed.
            runtime.block_on(async {
                for token in state.access.tokens.list() {
                    state.access.tokens.revoke(&token.name).unwrap();
                }
                if state.projections.status("p").is_err() {
                    state
                        .projections
                        .deploy("p", guest("order_totals"))
                        .await
                        .unwrap();
                }
            });
            Ok(())
        })
        .unwrap();
    runtime.block_on(state.projections.shutdown());
}

#[tokio::test]
async fn the_largest_last_event_id_does_not_wrap_around_into_a_replay() {
    let server = TestServer::start().await.unwrap();
    let events =
        serde_json::json!({"events": [{"type": "A", "data": 1}, {"type": "B", "data": 2}]});
    let (status, _) = super::append(&server.url, "s-1", events).await;
    assert_eq!(status, StatusCode::OK);
    let response = reqwest::Client::new()
        .get(format!("{}/subscribe?from=1", server.url))
        .header("accept", "application/x-ndjson")
        .header("last-event-id", u64::MAX.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(2), body.next()).await;
    match first {
        Err(_) => {} // nothing sent: nothing comes after the last position
        Ok(Some(Ok(chunk))) => assert!(
            chunk.iter().all(u8::is_ascii_whitespace),
            "a replay: {}",
            String::from_utf8_lossy(&chunk)
        ),
        Ok(other) => panic!("the subscription broke: {other:?}"),
    }
    server.stop().await;
}
