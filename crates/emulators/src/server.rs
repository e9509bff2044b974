//! The accept loop both emulators run on.
//!
//! It is our own rather than `axum::serve` for one fault: Lago's "dropped connection" applies a
//! request and then closes the socket without a byte of response. Each connection's task watches
//! a [`Hangup`] token that handlers reach through the request's extensions; cancelling it ends
//! the task, which drops the connection, and the handler with it, before anything is written.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// A running emulator on a local port; it stops when this value is dropped or [`stop`] is called.
///
/// [`stop`]: Running::stop
#[derive(Debug)]
pub struct Running<H> {
    handle: H,
    addr: SocketAddr,
    url: String,
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl<H> Running<H> {
    /// The base URL clients are configured with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The socket address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The emulator's handle: simulation and faults.
    pub fn handle(&self) -> &H {
        &self.handle
    }

    /// Stops accepting connections and waits for the open ones to finish their requests.
    pub async fn stop(self) {
        let Running { stop, task, .. } = self;
        drop(stop);
        // The task only ends by returning; a panic in it has nothing left to clean up.
        let _ = task.await;
    }
}

/// Binds `127.0.0.1:0` and serves `router` in a background task.
pub(crate) async fn spawn<H>(
    handle: H,
    router: Router,
    url_of: fn(SocketAddr) -> String,
) -> std::io::Result<Running<H>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router, shutdown.clone()));
    Ok(Running {
        handle,
        addr,
        url: url_of(addr),
        stop: shutdown.drop_guard(),
        task,
    })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets the connections in
/// flight finish their requests.
pub(crate) async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
            }
            // Errors here concern one connection (reset before accept, out of descriptors for a
            // moment); the listener itself is still good.
            Err(error) => tracing::warn!(%error, "An emulator could not accept a connection."),
        }
    }
    connections.close();
    connections.wait().await;
}

/// Lets a handler end its own connection without answering.
#[derive(Clone, Debug)]
pub(crate) struct Hangup(CancellationToken);

impl Hangup {
    /// Closes the connection; the calling handler is dropped before it can answer.
    pub(crate) async fn now(&self) -> ! {
        self.0.cancel();
        std::future::pending().await
    }
}

async fn serve_connection(stream: TcpStream, router: Router, shutdown: CancellationToken) {
    let hangup = CancellationToken::new();
    let service = {
        let hangup = Hangup(hangup.clone());
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(hangup.clone());
            tower::ServiceExt::oneshot(router.clone(), request)
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "An emulator connection ended with an error.");
                }
                return;
            }
            // Returning drops the connection: the socket closes with no response written.
            () = hangup.cancelled() => return,
            () = shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
