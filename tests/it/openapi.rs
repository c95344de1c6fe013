//! `GET /openapi.json` against the real answers: every route of the document is called on a
//! server with data, every status it answers must be documented, and every JSON answer must
//! validate against the document's schema for it (with the `jsonschema` crate).

use std::collections::BTreeSet;

use lantern_tests::{TestServer, guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::projections::{deploy, wait_status};

/// One call: the documented path template, the method, the real path, and a body.
struct Call {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<(&'static str, Vec<u8>)>,
}

fn call(method: &'static str, template: &'static str, path: impl Into<String>) -> Call {
    Call {
        method,
        template,
        path: path.into(),
        body: None,
    }
}

fn with_json(mut call: Call, body: Value) -> Call {
    call.body = Some(("application/json", body.to_string().into_bytes()));
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_openapi_document_says() {
    let server = TestServer::start().await.unwrap();
    let url = server.url.clone();
    let document: Value = reqwest::get(format!("{url}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    // Data for the reads to find.
    let (status, _) = deploy(&url, "p", guest("order_totals")).await;
    assert_eq!(status, StatusCode::CREATED);
    for i in 0..5 {
        let (status, _) = super::append(
            &url,
            "order-1",
            json!({"events": [{"type": "OrderPlaced", "data": {"customer": format!("c-{i}"), "amount": i}}]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    wait_status(&url, "p", |s| s["position"] == 5).await;
    let module = guest("order_totals");
    let sha = lantern::projection::module_sha256(&module);

    // Every route, in an order that leaves each call something to find: the token calls come
    // last, since the first token ends open mode.
    let mut calls = vec![
        call("GET", "/health", "/health"),
        call("GET", "/health/ready", "/health/ready"),
        call("GET", "/metrics", "/metrics"),
        call("GET", "/openapi.json", "/openapi.json"),
        call("GET", "/ui", "/ui"),
        call("GET", "/ui/", "/ui/"),
        call("GET", "/ui/{file}", "/ui/app.js"),
        with_json(
            call("POST", "/streams/{stream}", "/streams/order-2"),
            json!({"events": [{"type": "OrderPlaced", "data": {"customer": "c-9", "amount": 9}, "metadata": {"m": 1}}]}),
        ),
        call("GET", "/streams", "/streams?prefix=order&limit=1"),
        call("GET", "/streams/{stream}", "/streams/order-1?limit=3"),
        with_json(
            call(
                "PUT",
                "/streams/{stream}/snapshot",
                "/streams/order-1/snapshot",
            ),
            json!({"revision": 2, "state": {"total": 3}}),
        ),
        call(
            "GET",
            "/streams/{stream}/snapshot",
            "/streams/order-1/snapshot",
        ),
        call("GET", "/streams/{stream}", "/streams/order-1?from=snapshot"),
        call("GET", "/all", "/all?limit=3"),
        call("GET", "/subscribe", "/subscribe?from=1"),
        call("GET", "/projections", "/projections"),
        call("GET", "/projections/{name}", "/projections/p"),
        Call {
            body: Some(("application/wasm", module.clone())),
            ..call("PUT", "/projections/{name}", "/projections/q")
        },
        call(
            "POST",
            "/projections/{name}/rebuild",
            "/projections/q/rebuild",
        ),
        call(
            "GET",
            "/projections/{name}/state",
            "/projections/p/state?prefix=customer:&limit=2",
        ),
        call(
            "GET",
            "/projections/{name}/state/{key}",
            "/projections/p/state/customer:c-1",
        ),
        call(
            "GET",
            "/projections/{name}/query/{query}",
            "/projections/p/query/top?n=2",
        ),
        call("DELETE", "/projections/{name}", "/projections/q"),
        Call {
            body: Some(("application/wasm", guest("bad_upcaster"))),
            ..call("PUT", "/upcasters/{name}", "/upcasters/u")
        },
        call("GET", "/upcasters", "/upcasters"),
        call("GET", "/upcasters/{name}", "/upcasters/u"),
        call("GET", "/all", "/all?raw=true&limit=2"),
        call("DELETE", "/upcasters/{name}", "/upcasters/u"),
        call("GET", "/audit", "/audit"),
        call("GET", "/backup", "/backup"),
        call("GET", "/replicate", "/replicate?from=1"),
        call("GET", "/replicate/state", "/replicate/state"),
        call(
            "GET",
            "/replicate/snapshots",
            "/replicate/snapshots?after=0",
        ),
        call(
            "GET",
            "/replicate/modules/{sha256}",
            format!("/replicate/modules/{sha}"),
        ),
        with_json(
            call("POST", "/tokens", "/tokens"),
            json!({"name": "t", "role": "admin"}),
        ),
        call("GET", "/tokens", "/tokens"),
        call("DELETE", "/tokens/{name}", "/tokens/t"),
    ];
    // Error answers are documented too: one of each kind of route.
    calls.push(call("GET", "/projections/{name}", "/projections/missing"));
    calls.push(call("GET", "/upcasters/{name}", "/upcasters/missing"));
    calls.push(call("GET", "/streams/{stream}", "/streams/nothing-here"));
    calls.push(call(
        "GET",
        "/streams/{stream}/snapshot",
        "/streams/order-2/snapshot",
    ));

    let mut token: Option<String> = None;
    let mut covered = BTreeSet::new();
    // Redirects are answers of their own route, documented there: not followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for call in calls {
        let mut request = http.request(call.method.parse().unwrap(), format!("{url}{}", call.path));
        if let Some(secret) = &token {
            request = request.bearer_auth(secret);
        }
        if let Some((content_type, body)) = call.body {
            request = request.header("content-type", content_type).body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let what = format!("{} {} -> {status}", call.method, call.path);
        let operation = &document["paths"][call.template][call.method.to_ascii_lowercase()];
        assert!(operation.is_object(), "{what}: not in the document");
        covered.insert((call.template, call.method));
        // The status's own entry, else (errors) the default one.
        let documented = match &operation["responses"][status.as_str()] {
            Value::Null => &operation["responses"]["default"],
            own => own,
        };
        assert!(
            documented.is_object(),
            "{what}: this status is not documented"
        );
        let Some(content) = documented["content"].as_object() else {
            assert!(
                status == StatusCode::NO_CONTENT || status.is_redirection(),
                "{what}: a body that is not documented"
            );
            continue;
        };
        let (media, media_doc) = content.iter().next().unwrap();
        assert!(
            media == "*/*" || content_type.starts_with(media.trim_end_matches('*')),
            "{what}: {content_type}, documented {media}"
        );
        if media != "application/json" {
            continue; // streams and files: the type is what the document promises
        }
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [media_doc["schema"]],
            "components": document["components"],
        });
        let validator =
            jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{what}: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\n{body}");
        if call.template == "/tokens" && call.method == "POST" {
            token = body["token"].as_str().map(str::to_owned);
        }
    }
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(|method| (path.clone(), method.to_ascii_uppercase()))
                .collect::<Vec<_>>()
        })
        .collect();
    let covered: BTreeSet<(String, String)> = covered
        .into_iter()
        .map(|(path, method)| (path.to_owned(), method.to_owned()))
        .collect();
    assert_eq!(documented, covered, "every documented route is called");
}
