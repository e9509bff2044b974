//! Connections: the accept loop of [`crate::serve`], under the server's connection limits.
//!
//! At most [`Config::max_connections`] connections are open at once; at the limit the loop
//! stops accepting and new connections wait in the listen backlog, costing no file
//! descriptor, until one closes. Each connection is watched by its socket ([`Watched`]):
//!
//! - between requests it may wait [`Config::idle_timeout`] for the next one to begin, and once
//!   the first byte of a request's head has come, the whole head must come within
//!   [`Config::header_timeout`] (a client that sends half a head and stalls is cut off);
//! - while a request is being handled no read deadline applies (the body has its own,
//!   [`Config::body_timeout`], see `body.rs`), so a slow handler is never cut off;
//! - a response that cannot be written for [`Config::idle_timeout`], because the client stopped
//!   reading, ends the connection. A response that keeps being written, such as an event
//!   stream, is never cut off, however long it lasts.
//!
//! hyper's own header timeout starts when the connection begins to wait for a request, so it
//! would be the idle timeout as well; the watch here keeps the two apart.
//!
//! [`Config::max_connections`]: crate::Config::max_connections
//! [`Config::idle_timeout`]: crate::Config::idle_timeout
//! [`Config::header_timeout`]: crate::Config::header_timeout
//! [`Config::body_timeout`]: crate::Config::body_timeout

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::Config;

/// After a failed accept that is not one client's problem (out of file descriptors, say), the
/// loop waits this long before it accepts again, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The timeouts and the connection limit of [`accept`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_address: usize,
}

impl Limits {
    pub(crate) fn of(config: &Config) -> Limits {
        Limits {
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
        }
    }
}

/// Open connections per client address, so one client cannot take every slot.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// Counts a new connection from `address`, unless it holds `most` already.
    fn admit(self: &Arc<Self>, address: IpAddr, most: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(address).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: Arc::clone(self),
            address,
        })
    }
}

/// One connection's place in [`PerAddress`]; given back when the connection closes.
struct AddressSlot {
    counts: Arc<PerAddress>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// Accepts connections and serves `app` on them until `shutdown` is cancelled; then stops
/// accepting, lets every connection finish the request it is handling (idle ones close at
/// once), and returns when all have closed.
pub(crate) async fn accept(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    // No timer: the timeouts are kept by `Watched`.
    builder.header_read_timeout(None);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "The server holds as many connections as it allows; new ones wait until \
                     one closes."
                );
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => {
                        slot.expect("the connection slots are never closed")
                    }
                }
            }
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error, &shutdown).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = per_address.admit(peer.ip(), limits.max_connections_per_address)
        else {
            // Closed at once: the client holds as many connections as one address may.
            tracing::debug!(%peer, "A connection was refused: its address holds its share already.");
            drop(stream);
            continue;
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched::new(stream, activity.clone(), limits));
        let service = Service {
            app: app.clone(),
            peer,
            activity,
        };
        let connection = builder.serve_connection(io, service);
        let slots = (slot, address_slot);
        connections.spawn(serve_connection(connection, peer, slots, shutdown.clone()));
    }
    // New connections are refused from here on.
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn accept_failed(error: io::Error, shutdown: &CancellationToken) {
    // One client's connection that went away before it was accepted.
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(
        %error,
        "Accepting a connection failed; the server tries again shortly. If the process is out \
         of file descriptors, lower --max-connections or raise the limit (ulimit -n)."
    );
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
    }
}

async fn serve_connection(
    connection: http1::Connection<TokioIo<Watched>, Service>,
    peer: SocketAddr,
    _slots: (OwnedSemaphorePermit, AddressSlot),
    shutdown: CancellationToken,
) {
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "A connection ended with an error.");
    }
}

/// The service of one connection: the app, told the client's address, with each request
/// marked as being answered until its response has been handed over whole.
struct Service {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = hyper::Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        // The client's address reaches the handlers, which hold back a client that keeps
        // failing to pair or authenticate.
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let answering = Answering::start(self.activity.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = match app.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| Answer {
                body,
                _answering: answering,
            }))
        })
    }
}

/// What a connection is doing, as its socket and its requests tell.
#[derive(Debug)]
struct Activity(Mutex<Phase>);

#[derive(Debug)]
struct Phase {
    /// Requests of this connection being handled or answered.
    answering: usize,
    /// When the connection last had no request to answer.
    quiet_since: Instant,
    /// When the first byte of the next request's head came, if it has.
    head_started: Option<Instant>,
    /// The connection's task, when it waits to read without a deadline: woken when the last
    /// request is answered, so that the wait for the next one gets its deadline.
    reader: Option<Waker>,
}

impl Activity {
    fn new() -> Activity {
        Activity(Mutex::new(Phase {
            answering: 0,
            quiet_since: Instant::now(),
            head_started: None,
            reader: None,
        }))
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // Only plain values are kept under the lock; a panic cannot leave them half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when a read may wait: none while a request is being answered (`cx` is then woken
    /// once it has been).
    fn read_deadline(&self, limits: &Limits, cx: &Context<'_>) -> Option<Instant> {
        let mut phase = self.phase();
        if phase.answering > 0 {
            phase.reader = Some(cx.waker().clone());
            return None;
        }
        Some(match phase.head_started {
            Some(started) => started + limits.header_timeout,
            None => phase.quiet_since + limits.idle_timeout,
        })
    }

    /// Bytes came from the client.
    fn received(&self) {
        let mut phase = self.phase();
        if phase.answering == 0 && phase.head_started.is_none() {
            phase.head_started = Some(Instant::now());
        }
    }
}

/// A request of the connection being answered, from its whole head until its response has
/// been handed over (or dropped).
struct Answering(Arc<Activity>);

impl Answering {
    fn start(activity: Arc<Activity>) -> Answering {
        {
            let mut phase = activity.phase();
            phase.answering += 1;
            phase.head_started = None;
        }
        Answering(activity)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let reader = {
            let mut phase = self.0.phase();
            phase.answering = phase.answering.saturating_sub(1);
            if phase.answering > 0 {
                return;
            }
            phase.quiet_since = Instant::now();
            phase.head_started = None;
            phase.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

/// A response body that marks its request answered once hyper is done with it.
pub(crate) struct Answer {
    body: Body,
    _answering: Answering,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, which fails a read or a write that waited longer than the
/// connection's phase allows (see the module's documentation); hyper then closes the
/// connection.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    limits: Limits,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// When a write first found the socket full, if the last one did.
    write_blocked_since: Option<Instant>,
}

impl Watched {
    fn new(stream: TcpStream, activity: Arc<Activity>, limits: Limits) -> Watched {
        Watched {
            stream,
            activity,
            limits,
            read_timer: None,
            write_timer: None,
            write_blocked_since: None,
        }
    }

    /// A write's outcome, watched: one that has found the socket full for longer than the
    /// idle timeout fails; any progress starts the clock again.
    fn watch_write(
        &mut self,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if written.is_pending() {
            let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
            if expired(&mut self.write_timer, since + self.limits.idle_timeout, cx) {
                return Poll::Ready(Err(timed_out("stopped reading the response")));
            }
        } else {
            self.write_blocked_since = None;
        }
        written
    }
}

/// Whether `deadline` has passed; if not, `cx` is woken when it does.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("the client {what}"))
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => {
                let Some(deadline) = this.activity.read_deadline(&this.limits, cx) else {
                    return Poll::Pending;
                };
                if expired(&mut this.read_timer, deadline, cx) {
                    return Poll::Ready(Err(timed_out("sent no request in time")));
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.received();
                }
                Poll::Ready(Ok(()))
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch_write(written, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch_write(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    fn limits(idle_timeout: Duration, max_connections: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout,
            max_connections,
            max_connections_per_address: max_connections,
        }
    }

    /// A body that sends `left` pieces, one every `every`: an event stream's shape.
    struct Ticking {
        left: usize,
        every: Duration,
        next: Pin<Box<Sleep>>,
    }

    impl HttpBody for Ticking {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            std::task::ready!(self.next.as_mut().poll(cx));
            self.left -= 1;
            let next = Instant::now() + self.every;
            self.next.as_mut().reset(next);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": tick\n")))))
        }
    }

    fn router() -> Router {
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "done"
                }),
            )
            .route(
                "/ticking",
                get(|| async {
                    let every = Duration::from_millis(60);
                    Body::new(Ticking {
                        left: 12,
                        every,
                        next: Box::pin(tokio::time::sleep(every)),
                    })
                }),
            )
            .route("/big", get(|| async { vec![b'x'; 32 * 1024 * 1024] }))
    }

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(accept(listener, router(), limits, shutdown.clone()));
        (addr, shutdown)
    }

    async fn send(stream: &mut TcpStream, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
    }

    /// Everything the server sends until it closes the connection (or resets it).
    async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
            .await
            .expect("the server closes the connection");
        got
    }

    async fn get_text(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        send(&mut stream, path).await;
        String::from_utf8(read_all(&mut stream).await).unwrap()
    }

    #[tokio::test]
    async fn a_response_that_keeps_coming_outlives_the_idle_timeout() {
        let (addr, _shutdown) = start(limits(Duration::from_millis(200), 8)).await;
        let answer = get_text(addr, "/ticking").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(answer.matches(": tick\n").count(), 12, "{answer}");
    }

    #[tokio::test]
    async fn a_slow_handler_outlives_the_idle_timeout() {
        let (addr, _shutdown) = start(limits(Duration::from_millis(200), 8)).await;
        let answer = get_text(addr, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_loses_its_connection_and_frees_its_slot() {
        let (addr, _shutdown) = start(limits(Duration::from_millis(200), 1)).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stalled = socket.connect(addr).await.unwrap();
        send(&mut stalled, "/big").await;
        // The only connection slot is the stalled reader's until the server gives up on it;
        // then the next client is served.
        let answer = get_text(addr, "/ok").await;
        assert!(answer.ends_with("ok"), "{answer}");
        let got = read_all(&mut stalled).await;
        assert!(got.len() < 32 * 1024 * 1024, "the whole answer came");
    }

    #[tokio::test]
    async fn at_the_connection_limit_new_connections_wait_for_a_free_slot() {
        let (addr, _shutdown) = start(limits(Duration::from_secs(30), 1)).await;
        // Connected first, so accepted first: it takes the only slot, and sends nothing.
        let holder = TcpStream::connect(addr).await.unwrap();
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        send(&mut waiting, "/ok").await;
        let mut byte = [0_u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut byte)).await;
        assert!(early.is_err(), "answered while the only slot was taken");
        drop(holder);
        let answer = String::from_utf8(read_all(&mut waiting).await).unwrap();
        assert!(answer.ends_with("ok"), "{byte:?}{answer}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_accepting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(accept(
            listener,
            router(),
            limits(Duration::from_secs(30), 8),
            shutdown.clone(),
        ));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // Served once, so the connection is surely accepted.
        idle.write_all(b"GET /ok HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0_u8; 1024];
        let n = idle.read(&mut buffer).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        shutdown.cancel();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server stops")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
