//! Bad requests: each gets the contract's 4xx error JSON, and the server keeps working.

use lantern_tests::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{append, get};

#[tokio::test]
async fn malformed_requests_get_contract_errors() {
    let server = TestServer::start().await.unwrap();
    let url = &server.url;
    let long_name = "s".repeat(257);
    let long_type = "t".repeat(257);
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"type": "T", "data": 1}))
        .collect();
    let huge = format!(
        r#"{{"events": [{{"type": "T", "data": "{}"}}]}}"#,
        "x".repeat(17 << 20)
    );
    // (method, path, body, status, code)
    let cases: Vec<(Method, String, String, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/streams/a-1".into(),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"events": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"events": [{"data": 1}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"events": [{"type": 7}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"events": [{"type": ""}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            format!(r#"{{"events": [{{"type": "{long_type}"}}]}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"events": [{"type": "a\u0001b"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"events": [{"type": "T", "id": "not-a-uuid"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            r#"{"expected_revision": "sometimes", "events": [{"type": "T"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/%24system".into(),
            r#"{"events": [{"type": "T"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a%2Fb".into(),
            r#"{"events": [{"type": "T"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a%0Ab".into(),
            r#"{"events": [{"type": "T"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/streams/{long_name}"),
            r#"{"events": [{"type": "T"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            json!({"events": too_many}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/streams/a-1".into(),
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::GET,
            "/streams/a-1?limit=lots".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/streams/a-1?limit=0".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/streams/a-1?from=-1".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/streams/a-1?direction=sideways".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/streams/%24all".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/all?from=first".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/all?stream=%24x".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/subscribe?from=x".into(),
            String::new(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/nowhere".into(),
            String::new(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/streams/a-1".into(),
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/all".into(),
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    let client = reqwest::Client::new();
    for (method, path, body, status, code) in cases {
        let response = client
            .request(method.clone(), format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let got = response.status();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON: {e}"));
        let shown = &path[..path.len().min(60)];
        assert_eq!(got, status, "{method} {shown}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{method} {shown}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {shown}: {answer}"
        );
    }
    // Nothing was written, and the server still works.
    let (_, health) = get(url, "/health").await;
    assert_eq!(health["head"], 0);
    let (status, _) = append(url, "a-1", json!({"events": [{"type": "T", "data": 1}]})).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
