//! `lantern serve`: opens the store, serves the HTTP API, and shuts both down cleanly.

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;

use std::time::Duration;

use axum::http::HeaderValue;

use crate::access::tokens::BOOTSTRAP_ADMIN;
use crate::access::{AccessControl, Action};
use crate::http::{self, AppState, Limits};
use crate::projection::Projections;
use crate::store::{Store, StoreOptions};
use crate::wasm::WasmConfig;

/// How to run the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Directory holding the log and its indexes.
    #[arg(long, env = "LANTERN_DATA", default_value = "lantern-data")]
    pub data: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "LANTERN_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Answer appends before their fsync. Faster, but a machine crash can lose answered appends.
    #[arg(long)]
    pub relaxed_durability: bool,
    /// Deploy every `*.wasm` file in this folder under its file stem, at start-up and whenever
    /// a file is added or changed (a live rebuild). Removing a file deletes nothing.
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    /// The secret of the admin token named `admin`, set (or replaced) at start-up. Prefer
    /// `--admin-token-file`: an environment variable can leak into process listings and logs.
    #[arg(
        long = "admin-token",
        env = "LANTERN_ADMIN_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub admin_token: Option<String>,
    /// A file holding the secret of the admin token named `admin` (set at start-up).
    #[arg(long, value_name = "FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// While no token exists, serve clients on other machines too, without any token.
    /// Without it, a server with no tokens refuses to listen on a non-loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Serve HTTPS only, with this certificate chain (PEM). Needs `--tls-key`.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Let browsers on this origin call the API (CORS), e.g. `https://app.example.com`
    /// (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Open connections at most; further clients wait until one closes.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Open subscriptions at most; further ones answer 503 `too_many_subscribers`.
    #[arg(long, default_value_t = Limits::default().max_subscribers)]
    pub max_subscribers: usize,
    /// Seconds a connection may take to send a request head (or a TLS handshake), counted from
    /// when it opened or got its last answer; slower connections are closed.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().header_timeout.as_secs())]
    pub header_timeout: u64,
    /// MiB of the index's page cache: the largest part of the server's memory besides the read
    /// models' caches (32 MiB each).
    #[arg(long, value_name = "MIB", default_value_t = StoreOptions::default().index_cache_bytes >> 20)]
    pub index_cache_mib: usize,
    /// `GET /health/ready` answers 503 while this projection is not running (behind the log,
    /// or faulted), so a load balancer sends no traffic that needs it (repeatable).
    #[arg(long = "require-projection", value_name = "NAME")]
    pub require_projections: Vec<String>,
    /// Run as a follower of the leader at this URL: copy its log, projections and tokens, answer
    /// reads, refuse writes with 421 and the leader's URL. Needs an admin token of the leader
    /// when it has tokens (the global `--token`).
    #[arg(long, value_name = "URL")]
    pub follow: Option<String>,
    /// The global `--token`, for `--follow`.
    #[arg(skip)]
    pub follow_token: Option<String>,
    /// The global `--ca-cert`, for `--follow`.
    #[arg(skip)]
    pub follow_ca_cert: Option<PathBuf>,
}

/// Without any token, anyone who reaches a non-loopback address could deploy code: refused unless
/// `--insecure`.
fn refuse_open_network(
    access: &AccessControl,
    address: std::net::SocketAddr,
    insecure: bool,
) -> anyhow::Result<()> {
    if access.tokens.is_empty() && !address.ip().is_loopback() && !insecure {
        anyhow::bail!(
            "refusing to listen on {address}: no access token exists, so anyone who reaches the port could deploy code and change data. \
             Start with an admin token (LANTERN_ADMIN_TOKEN=<secret of 16+ characters> or --admin-token-file FILE), \
             or create one on this machine first (`lantern serve` on 127.0.0.1, then `lantern token create NAME --role admin`), \
             or pass --insecure to serve every client without tokens"
        );
    }
    Ok(())
}

/// Opens the store (recovering what the index does not hold yet) and loads the projections.
async fn open(options: &ServeOptions) -> anyhow::Result<(Store, Projections)> {
    let store_options = StoreOptions {
        sync: !options.relaxed_durability,
        index_cache_bytes: options.index_cache_mib << 20,
        replica: options.follow.is_some(),
        ..StoreOptions::default()
    };
    let data = options.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data, store_options))
        .await?
        .with_context(|| format!("opening the store in {}", options.data.display()))?;
    let projections = Projections::open(
        store.clone(),
        &options.data.join(crate::backup::PROJECTIONS_DIR),
        WasmConfig::default(),
    )
    .await
    .context("loading the deployed projections")?;
    Ok((store, projections))
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let access = open_access(&options)?;
    let tls = options
        .tls_cert
        .as_deref()
        .zip(options.tls_key.as_deref())
        .map(|(cert, key)| tls::acceptor(cert, key))
        .transpose()?;
    let listener = TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let address = listener.local_addr()?;
    if options.follow.is_none() {
        refuse_open_network(&access, address, options.insecure)?;
    }
    // Reachable at once: while the store opens (recovering the log's unindexed tail can take a
    // while) and the modules load, the server answers that it is starting.
    tracing::info!(%address, "starting: opening the store and loading the projections");
    let (store, projections) = http::serve_while(
        &listener,
        tls.clone(),
        Duration::from_secs(options.header_timeout.max(1)),
        http::starting_app(options.follow.is_some()),
        open(&options),
    )
    .await?;
    let stop_watching = tokio_util::sync::CancellationToken::new();
    if options.follow.is_some() && options.watch.is_some() {
        tracing::warn!("--watch is ignored on a follower: its projections are its leader's");
    }
    let watcher = match options.watch.as_ref().filter(|_| options.follow.is_none()) {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the modules folder {}", dir.display()))?;
            let watching =
                crate::watcher::watch(projections.clone(), dir.clone(), stop_watching.clone());
            Some(tokio::spawn(async move {
                if let Err(error) = watching.await {
                    tracing::error!(%error, "the modules folder watcher stopped");
                }
            }))
        }
        None => None,
    };
    let follower = match &options.follow {
        Some(leader) => {
            let http = crate::cli::http_client(
                options.follow_token.as_deref(),
                options.follow_ca_cert.as_deref(),
            )?;
            let follower = crate::replication::Follower::new(
                crate::replication::FollowerOptions {
                    leader: leader.clone(),
                    http,
                },
                store.clone(),
                projections.clone(),
                access.clone(),
            );
            let tasks = follower.start(stop_watching.clone());
            Some((follower, tasks))
        }
        None => None,
    };
    if follower.is_some() && !address.ip().is_loopback() {
        // The leader's tokens decide who may read here: give them a moment to arrive.
        for _ in 0..50 {
            if !access.tokens.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if follower.is_some() {
        refuse_open_network(&access, address, options.insecure)?;
    }
    let limits = Limits {
        max_connections: options.max_connections.max(1),
        max_subscribers: options.max_subscribers,
        header_timeout: Duration::from_secs(options.header_timeout.max(1)),
        ..Limits::default()
    };
    let mut state =
        AppState::new(store.clone(), projections.clone(), access.clone()).with_limits(limits);
    state.follower = follower.as_ref().map(|(follower, _)| follower.clone());
    state.required_projections = std::sync::Arc::new(options.require_projections.clone());
    state.cors_origins = options
        .cors_origins
        .iter()
        .map(|origin| {
            HeaderValue::from_str(origin.trim_end_matches('/'))
                .with_context(|| format!("--cors-origin {origin:?} is not a valid origin"))
        })
        .collect::<anyhow::Result<_>>()?;
    tracing::info!(
        listen = %address,
        data = %options.data.display(),
        head = store.head(),
        durable = !options.relaxed_durability,
        tls = tls.is_some(),
        tokens = access.tokens.list().len(),
        follows = options.follow.as_deref().unwrap_or("(none: this is a leader)"),
        "lantern is serving"
    );
    http::run_with(listener, state, tls, shutdown_signal()).await?;
    stop_watching.cancel();
    if let Some(watcher) = watcher {
        watcher.await?;
    }
    if let Some((_, tasks)) = follower {
        tasks.await?;
    }
    tracing::info!("shutting down: committing the projections' last batches");
    projections.shutdown().await;
    tracing::info!("indexing the log's tail and closing it");
    tokio::task::spawn_blocking(move || store.close()).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Loads the tokens and the audit trail, and sets the bootstrap admin token if one is given.
fn open_access(options: &ServeOptions) -> anyhow::Result<AccessControl> {
    let mut access = AccessControl::open(&options.data).context("loading the access tokens")?;
    access.insecure = options.insecure;
    let secret = match (&options.admin_token, &options.admin_token_file) {
        (Some(secret), _) => Some(secret.clone()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the admin token file {}", file.display()))?,
        ),
        (None, None) => None,
    };
    if let Some(secret) = secret {
        let changed = access
            .tokens
            .bootstrap_admin(&secret)
            .context("setting the admin token")?;
        if changed {
            access.audit.record(Action {
                actor: "(start-up)".into(),
                action: "token_bootstrap",
                target: BOOTSTRAP_ADMIN.into(),
                module_sha256: None,
                status: 201,
            })?;
            tracing::info!("the admin token {BOOTSTRAP_ADMIN:?} was set from the environment");
        }
    }
    Ok(access)
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminate = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        () = terminate => {},
    }
}

mod tls {
    //! The server's TLS configuration: rustls with the ring provider, TLS 1.2 and 1.3 only.

    use std::path::Path;
    use std::sync::Arc;

    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// An acceptor for the certificate chain in `cert` and the private key in `key` (PEM files).
    pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading the certificate {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing the certificate {}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading the private key {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the certificate and the key do not make a TLS identity")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}
