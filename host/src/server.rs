//! `lantern serve`: opens the store, serves the HTTP API, and shuts both down cleanly.

use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::http::{self, AppState};
use crate::store::{Store, StoreOptions};

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
    http::run(listener, AppState::new(store.clone()), shutdown_signal()).await?;
    tracing::info!("shutting down: indexing the tail and closing the log");
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
