//! Serving the router on a socket: HTTP/1.1, in plain text or over TLS (rustls), with a cap on open
//! connections, a deadline for each TLS handshake and request head (so clients that send half a
//! request cannot hold connections for long), and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::{AppState, app};

/// A TLS acceptor (`--tls-cert`, `--tls-key`).
pub type Tls = tokio_rustls::TlsAcceptor;

/// Serves the API on `listener` in plain HTTP until `shutdown` completes; see [`run_with`].
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, state, None, shutdown).await
}

/// Serves the API on `listener`, over TLS when `tls` is given, until `shutdown` completes; then
/// ends subscriptions, closes idle connections and waits for requests in flight.
pub async fn run_with(
    listener: TcpListener,
    state: AppState,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    let end_subscriptions = state.shutdown.clone();
    let router = app(state);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            peer,
            header_timeout: limits.header_timeout,
            keep_alive: true,
        };
        let tls = tls.clone();
        let watcher = Some(graceful.watcher());
        tokio::spawn(async move {
            connection.serve(stream, tls, watcher).await;
            drop(permit);
        });
    }
    end_subscriptions.cancel();
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The next connection; an error (out of file descriptors, a connection reset before it was
/// accepted) is logged and waited out. Cancel-safe.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers on `listener` with `starting` (one request per connection) until `work` is done, and
/// returns its output: the server is reachable, and says it is starting, while it opens its store
/// and loads its projections.
pub async fn serve_while<T>(
    listener: &TcpListener,
    tls: Option<Tls>,
    header_timeout: Duration,
    starting: axum::Router,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        let (stream, peer) = tokio::select! {
            output = &mut work => return output,
            accepted = accept(listener) => accepted,
        };
        let connection = Connection {
            router: starting.clone(),
            peer,
            header_timeout,
            keep_alive: false,
        };
        // No graceful-shutdown watcher: it would close a connection accepted just before `work`
        // ends without answering its request. Each lasts one answer or one header timeout.
        let tls = tls.clone();
        tokio::spawn(async move { connection.serve(stream, tls, None).await });
    }
}

struct Connection {
    router: axum::Router,
    peer: SocketAddr,
    header_timeout: Duration,
    /// False while starting: one answer per connection, so clients come back to the real API.
    keep_alive: bool,
}

impl Connection {
    async fn serve(self, stream: TcpStream, tls: Option<Tls>, watcher: Option<Watcher>) {
        match tls {
            None => self.serve_http(stream, watcher).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => self.serve_http(stream, watcher).await,
                    Ok(Err(error)) => {
                        tracing::debug!(peer = %self.peer, %error, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_http<S>(self, stream: S, watcher: Option<Watcher>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            router,
            peer,
            header_timeout,
            keep_alive,
        } = self;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(keep_alive);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let served = match watcher {
            Some(watcher) => watcher.watch(connection).await,
            None => connection.await,
        };
        if let Err(error) = served {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}
