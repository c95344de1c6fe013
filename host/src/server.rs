//! `lantern serve`: opens the store, serves the HTTP API, and shuts both down cleanly.

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::http::{self, AppState};
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
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let store_options = StoreOptions {
        sync: !options.relaxed_durability,
        ..StoreOptions::default()
    };
    let data = options.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data, store_options))
        .await?
        .with_context(|| format!("opening the store in {}", options.data.display()))?;
    let projections = Projections::open(
        store.clone(),
        &options.data.join("projections"),
        WasmConfig::default(),
    )
    .await
    .context("loading the deployed projections")?;
    let stop_watching = tokio_util::sync::CancellationToken::new();
    let watcher = match &options.watch {
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
    let listener = TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data = %options.data.display(),
        head = store.head(),
        durable = !options.relaxed_durability,
        "lantern is serving"
    );
    http::run(
        listener,
        AppState::new(store.clone(), projections.clone()),
        shutdown_signal(),
    )
    .await?;
    stop_watching.cancel();
    if let Some(watcher) = watcher {
        watcher.await?;
    }
    tracing::info!("shutting down: committing the projections' last batches");
    projections.shutdown().await;
    tracing::info!("indexing the log's tail and closing it");
    tokio::task::spawn_blocking(move || store.close()).await?;
    tracing::info!("stopped cleanly");
    Ok(())
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
