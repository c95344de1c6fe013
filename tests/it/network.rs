//! A server on a network, as a real process: TLS (with `/subscribe` and the CLI), tokens that
//! survive a restart, the open-mode refusal, half-sent requests, and the CLI's token commands.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lantern_tests::{ServerProcess, guest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::send;

fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lantern-under-test"))
}

/// Runs the real CLI against `url`; returns (success, stdout, stderr).
fn lantern(url: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let output = std::process::Command::new(server_binary())
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("LANTERN_TOKEN")
        .env_remove("LANTERN_CA_CERT")
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the CLI runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

const ADMIN_SECRET: &str = "an-admin-secret-for-tests-0123456789";

/// A private CA and a server certificate for `localhost` and 127.0.0.1, written as PEM files.
struct Certificates {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn make_certificates(dir: &Path) -> Certificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Lantern test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let certificates = Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&certificates.ca, ca_cert.pem()).unwrap();
    std::fs::write(&certificates.cert, server_cert.pem()).unwrap();
    std::fs::write(&certificates.key, server_key.serialize_pem()).unwrap();
    certificates
}

#[tokio::test]
async fn tls_serves_the_api_subscriptions_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = make_certificates(dir.path());
    let server = ServerProcess::start_with(
        server_binary(),
        &dir.path().join("data"),
        &[
            "--tls-cert",
            certificates.cert.to_str().unwrap(),
            "--tls-key",
            certificates.key.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certificates.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let (status, health) = send(client.get(format!("{url}/health"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");

    let response = client
        .get(format!("{url}/subscribe?from=1"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let (status, _) = send(
        client
            .post(format!("{url}/streams/order-9"))
            .json(&json!({"events": [{"type": "OrderPlaced", "data": {"amount": 3}}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the event arrives over TLS")
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_slice(chunk.trim_ascii()).unwrap();
    assert_eq!(event["stream"], "order-9");

    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
    // Without the CA, the certificate is not trusted.
    let untrusted = reqwest::Client::new()
        .get(format!("{url}/health"))
        .send()
        .await;
    assert!(untrusted.is_err());

    let ca_path = certificates.ca.to_str().unwrap();
    let (ok, out, err) = lantern(&url, &["--ca-cert", ca_path, "read", "order-9"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("OrderPlaced"), "{out}");
    let (ok, out, err) = lantern(&url, &["read", "order-9"], &[("LANTERN_CA_CERT", ca_path)]);
    assert!(ok, "{err}");
    assert!(out.contains("OrderPlaced"), "{out}");
    let (ok, _, err) = lantern(&url, &["read", "order-9"], &[]);
    assert!(!ok, "the CLI refuses an untrusted certificate");
    assert!(err.contains("cannot reach the server"), "{err}");
}

#[tokio::test]
async fn tokens_and_the_audit_trail_survive_a_restart_and_the_cli_manages_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin_env = [("LANTERN_ADMIN_TOKEN", ADMIN_SECRET)];
    let server = ServerProcess::start_with(server_binary(), &data, &[], &admin_env).unwrap();
    let url = server.url.clone();
    let as_admin = [("LANTERN_TOKEN", ADMIN_SECRET)];

    // Without a token the CLI gets a plain message and exit 1.
    let (ok, _, err) = lantern(&url, &["projections"], &[]);
    assert!(!ok);
    assert!(err.contains("unauthenticated"), "{err}");
    let (ok, out, err) = lantern(
        &url,
        &[
            "token",
            "create",
            "app",
            "--role",
            "reader",
            "--projection",
            "totals",
        ],
        &as_admin,
    );
    assert!(ok, "{err}");
    let app_secret = out
        .lines()
        .find(|line| line.starts_with("lantern_"))
        .expect("the secret is printed")
        .to_owned();
    let (ok, out, err) = lantern(
        &url,
        &["--json", "token", "create", "writer", "--role", "writer"],
        &as_admin,
    );
    assert!(ok, "{err}");
    let writer: Value = serde_json::from_str(&out).unwrap();
    let writer_secret = writer["token"].as_str().unwrap().to_owned();
    let (ok, _, err) = lantern(
        &url,
        &["token", "create", "bad", "--role", "owner"],
        &as_admin,
    );
    assert!(!ok);
    assert!(err.contains("unknown role"), "{err}");

    let module = dir.path().join("totals.wasm");
    std::fs::write(&module, guest("order_totals")).unwrap();
    let (ok, _, err) = lantern(
        &url,
        &["deploy", "totals", module.to_str().unwrap(), "--no-wait"],
        &as_admin,
    );
    assert!(ok, "{err}");
    // A small file: the refusal comes before the body is read, and a large upload could still be
    // on its way when the server answers and closes.
    let small = dir.path().join("small.wasm");
    std::fs::write(&small, b"\0asm").unwrap();
    let (ok, _, err) = lantern(
        &url,
        &["deploy", "totals", small.to_str().unwrap()],
        &[("LANTERN_TOKEN", &writer_secret)],
    );
    assert!(!ok, "a writer cannot deploy");
    assert!(err.contains("forbidden"), "{err}");
    server.terminate().unwrap();

    let server = ServerProcess::start(server_binary(), &data).unwrap();
    let url = server.url.clone();
    let tokens_file = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    for secret in [ADMIN_SECRET, &app_secret, &writer_secret] {
        assert!(!tokens_file.contains(secret), "only hashes are stored");
    }
    let (ok, out, err) = lantern(&url, &["token", "list"], &as_admin);
    assert!(ok, "{err}");
    assert!(
        out.contains("app") && out.contains("limited to totals"),
        "{out}"
    );
    assert!(
        out.contains("writer") && !out.contains(&writer_secret),
        "{out}"
    );
    let (ok, out, err) = lantern(
        &url,
        &["query", "totals", "customer:nobody"],
        &[("LANTERN_TOKEN", &app_secret)],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("key_not_found"),
        "the limited token still reaches totals: {err}"
    );
    let (ok, out, err) = lantern(&url, &["audit"], &as_admin);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // The writer's deploy was refused before it reached the action: only admin actions are here.
    assert_eq!(lines.len(), 4, "{out}");
    for (line, action) in
        lines
            .iter()
            .zip(["token_bootstrap", "token_create", "token_create", "deploy"])
    {
        assert!(line.contains(action), "{line}");
    }
    assert!(
        lines[1].contains("admin") && lines[1].contains(" app "),
        "{out}"
    );
    assert!(
        lines[3].contains("admin") && lines[3].contains("201"),
        "{out}"
    );
    assert!(lines[3].contains(&lantern::projection::module_sha256(&guest("order_totals"))));
    let (ok, _, err) = lantern(&url, &["token", "revoke", "app"], &as_admin);
    assert!(ok, "{err}");
    let (ok, _, err) = lantern(
        &url,
        &["query", "totals", "customer:nobody"],
        &[("LANTERN_TOKEN", &app_secret)],
    );
    assert!(!ok);
    assert!(err.contains("unauthenticated"), "{err}");
}

#[test]
fn a_server_without_tokens_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(server_binary())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .env_remove("LANTERN_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");
    assert!(stderr.contains("lantern token create"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");

    // With an admin token, or with --insecure on purpose, it serves.
    for (args, envs) in [
        (
            vec!["--listen", "0.0.0.0:0"],
            vec![("LANTERN_ADMIN_TOKEN", ADMIN_SECRET)],
        ),
        (vec!["--listen", "0.0.0.0:0", "--insecure"], vec![]),
    ] {
        let server =
            ServerProcess::start_with(server_binary(), &dir.path().join("other"), &args, &envs);
        let server = server.unwrap_or_else(|e| panic!("{args:?}: {e}"));
        server.terminate().unwrap();
        let _ = std::fs::remove_dir_all(dir.path().join("other"));
    }
}

#[test]
fn half_sent_requests_neither_slow_others_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with(server_binary(), dir.path(), &["--header-timeout", "2"], &[])
            .unwrap();
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: lantern\r\nX-Half: ")
                .unwrap();
            stream
        })
        .collect();
    // A normal request is answered while they hang.
    let mut normal = TcpStream::connect(&address).unwrap();
    normal
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    normal
        .write_all(b"GET /health HTTP/1.1\r\nHost: lantern\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    normal.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Every half-sent request is closed by the server soon after the header timeout.
    let started = Instant::now();
    for stream in &mut stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buffer = [0u8; 256];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(_) => continue, // a 408 answer before the close is fine
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(error) => panic!("a half-sent request stayed open: {error}"),
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rebuilding_a_projection_whose_module_is_gone_answers_and_keeps_the_api_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(server_binary(), &data).unwrap();
    let client = reqwest::Client::new();
    let response = client
        .put(format!("{}/projections/totals", server.url))
        .body(guest("order_totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    server.terminate().unwrap();
    for module in std::fs::read_dir(data.join("projections/modules")).unwrap() {
        std::fs::remove_file(module.unwrap().path()).unwrap();
    }
    let server = ServerProcess::start(server_binary(), &data).unwrap();
    let url = &server.url;
    let (status, body) = send(client.post(format!("{url}/projections/totals/rebuild"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "projection_unavailable");
    // The projection API still answers, the projection shows as faulted, and a deploy mends it.
    for _ in 0..2 {
        let (status, list) = send(client.get(format!("{url}/projections"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["projections"][0]["status"], "faulted");
    }
    let (status, body) = send(client.get(format!("{url}/projections/totals/state/k"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let response = client
        .put(format!("{url}/projections/totals"))
        .body(guest("order_totals"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let (status, body) = send(client.get(format!("{url}/projections/totals"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(body["status"], "faulted", "{body}");
    // And a rebuild of a loaded projection works as before.
    let (status, body) = send(client.post(format!("{url}/projections/totals/rebuild"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}
