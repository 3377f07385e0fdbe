//! The connections: accepting them, serving HTTP/1 on each (over TLS when configured) within a
//! bound on how long a client may take to send its headers, and closing them gracefully on
//! shutdown. A connection whose first request asks for an event stream is answered without
//! hyper (`event_streams`).

mod event_streams;

use axum::{
    Router,
    serve::{Listener, ListenerExt},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
    service::TowerToHyperService,
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Serves `router` on `listener` until `shutdown`; then accepts no more connections, closes the
/// idle ones and waits for the answers in flight (SSE streams end on the same token).
///
/// With `tls`, each connection is HTTPS: its handshake must end within `header_timeout` too.
/// A client that has not sent a request's headers within `header_timeout` of starting it (or,
/// on a kept-alive connection, of the previous answer) is disconnected. axum's own `serve`
/// cannot bound that, so the connections are served with hyper directly, HTTP/1 as before.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Events are small writes that must leave at once: no Nagle delay on any connection.
    let mut listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let mut http = http1::Builder::new();
    // No half-close: a read EOF means the client is gone, which is how an idle SSE stream learns
    // its client left (a client that shuts its sending side down gets no answer).
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    loop {
        // `accept` retries by itself on errors such as running out of file descriptors.
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        // A clone of the router shares its route table. The watcher is taken here, before the
        // task runs, so that a shutdown cannot slip between accepting and watching.
        let connection = Connection {
            http: http.clone(),
            router: router.clone(),
            watcher: graceful.watcher(),
            header_timeout,
        };
        match &tls {
            None => tokio::spawn(connection.serve(tcp)),
            // The handshake runs in the connection's own task: a slow client stalls only itself.
            Some(tls) => {
                let handshake = handshake(tls.clone(), tcp, peer, header_timeout, shutdown.clone());
                tokio::spawn(async move {
                    if let Some(stream) = handshake.await {
                        connection.serve(stream).await;
                    }
                })
            }
        };
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One accepted connection, before it is served.
struct Connection {
    http: Arc<http1::Builder>,
    router: Router,
    watcher: Watcher,
    header_timeout: Duration,
}

impl Connection {
    /// Serves HTTP/1 on `io` until the client leaves or a graceful shutdown closes it: an event
    /// stream asked for first here, anything else with hyper.
    async fn serve<I>(self, mut io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let first = tokio::time::timeout(self.header_timeout, event_streams::first_request(&mut io)).await;
        let read = match first {
            Ok(Some(event_streams::FirstRequest::EventStream(request))) => {
                // Held until the stream ends (it ends on shutdown), so a graceful shutdown
                // waits for it as for hyper's connections.
                let _watcher = self.watcher;
                return event_streams::answer(io, self.router, *request).await;
            }
            Ok(Some(event_streams::FirstRequest::Other(read))) => read,
            // Closed before a request, or too slow to send its headers.
            Ok(None) | Err(_) => return,
        };
        let io = event_streams::Replayed::new(read, io);
        let connection = self.http.serve_connection(TokioIo::new(io), TowerToHyperService::new(self.router));
        // Boxed: an event stream's connection, far more numerous, does not carry its size.
        if let Err(e) = Box::pin(self.watcher.watch(connection)).await {
            debug!(error = %e, "connection ended with an error");
        }
    }
}

/// The TLS handshake of a connection, or `None` if it fails, takes longer than `timeout`, or the
/// server shuts down meanwhile (a connection without a request has nothing to finish).
async fn handshake(
    tls: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    shutdown: CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    tokio::select! {
        handshake = tokio::time::timeout(timeout, tls.accept(tcp)) => match handshake {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                debug!(client.addr = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(client.addr = %peer, timeout_ms = timeout.as_millis(), "TLS handshake timed out");
                None
            }
        },
        () = shutdown.cancelled() => None,
    }
}
