//! The connections: accepting them, serving HTTP/1 on each within a bound on how long a client
//! may take to send its headers, and closing them gracefully on shutdown.

use axum::{
    Router,
    serve::{Listener, ListenerExt},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Serves `router` on `listener` until `shutdown`; then accepts no more connections, closes the
/// idle ones and waits for the answers in flight (SSE streams end on the same token).
///
/// A client that has not sent a request's headers within `header_timeout` of starting it (or,
/// on a kept-alive connection, of the previous answer) is disconnected. axum's own `serve`
/// cannot bound that, so the connections are served with hyper directly, HTTP/1 as before.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Events are small writes that must leave at once: no Nagle delay on any connection.
    let mut listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // No half-close: a read EOF means the client is gone, which is how an idle SSE stream learns
    // its client left (a client that shuts its sending side down gets no answer).
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        // `accept` retries by itself on errors such as running out of file descriptors.
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        // A clone of the router shares its route table.
        let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
