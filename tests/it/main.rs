//! Lantern's integration tests: one binary, a module per topic.

mod access;
mod append;
mod backup;
mod cli;
mod crash;
mod dashboard;
mod fuzz_corpus;
mod hostile_http;
mod maintenance;
mod malformed;
mod network;
mod openapi;
mod operability;
mod projections;
mod read;
mod readmodel;
mod rebuild;
mod replication;
mod sandbox;
mod scaffold;
mod snapshots;
mod storage_faults;
mod subscribe;
mod torture;
mod typescript;
mod upcasters;

use reqwest::StatusCode;
use serde_json::Value;

/// Sends a request and returns the status and the JSON body.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request reaches the server");
    let status = response.status();
    let body = response.json().await.expect("every answer is JSON");
    (status, body)
}

/// `POST {url}/streams/{stream}` with a JSON body.
async fn append(url: &str, stream: &str, body: Value) -> (StatusCode, Value) {
    send(
        reqwest::Client::new()
            .post(format!("{url}/streams/{stream}"))
            .json(&body),
    )
    .await
}

/// `GET {url}{path}`.
async fn get(url: &str, path: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().get(format!("{url}{path}"))).await
}
