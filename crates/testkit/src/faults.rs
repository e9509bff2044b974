//! A fault proxy: a TCP proxy in front of a server that loses requests and answers, as a flaky
//! network does, with every choice taken from a seeded random generator.
//!
//! Each request gets a connection of its own: the proxy adds `Connection: close` to the request
//! head, so the server closes the connection after its answer and the client opens a new one for
//! its next request. A decision per connection is therefore a decision per request:
//!
//! - **forward**: the request reaches the server and the answer comes back;
//! - **drop the request**: the connection is closed once the request's head has arrived; the
//!   server never sees it;
//! - **drop the answer**: the request reaches the server, which handles it to the end, and then
//!   the client's connection is closed without the answer, half the time without a byte of it
//!   and otherwise part-way through it: the client cannot tell whether its request took effect.
//!
//! A request may also wait a random moment before it is forwarded, and requests to some paths
//! can be held back until the test lets them go ([`FaultProxy::hold`]). The server behind the proxy
//! may move ([`FaultProxy::set_upstream`]) or be down for a while (the client's connection is
//! then closed), while the URL that devices were paired with stays the same.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The longest request head the proxy reads; the server's own limit is lower.
const MAX_HEAD: usize = 64 * 1024;

/// How often the proxy loses what it carries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// The chance that a request is dropped before it reaches the server.
    pub drop_request: f64,
    /// The chance that a request reaches the server and its answer is dropped.
    pub drop_answer: f64,
    /// The longest random wait before a request is forwarded.
    pub max_delay: Duration,
}

impl Faults {
    /// Every request forwarded at once.
    pub const NONE: Faults = Faults {
        drop_request: 0.0,
        drop_answer: 0.0,
        max_delay: Duration::ZERO,
    };
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Requests whose head arrived.
    pub requests: u64,
    pub dropped_requests: u64,
    pub dropped_answers: u64,
    /// Requests that found no server to forward them to.
    pub refused: u64,
}

/// A fault proxy on 127.0.0.1 with a port of its own, stopped when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: the URL to pair devices with.
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    /// Requests whose head arrived, for a test that acts after the n-th request.
    seen: watch::Sender<u64>,
    /// The path prefix of requests to hold back, if any.
    hold: watch::Sender<Option<String>>,
    /// How many requests are being held back now.
    held: watch::Sender<u64>,
    dropped_requests: AtomicU64,
    dropped_answers: AtomicU64,
    refused: AtomicU64,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Forward,
    DropRequest,
    /// The answer is cut off after this share of its bytes (`0.0`: before the first).
    DropAnswer(f64),
}

impl FaultProxy {
    /// A proxy to `upstream` that forwards everything until [`FaultProxy::set_faults`]; its
    /// choices come from `seed`.
    pub async fn start(upstream: SocketAddr, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            faults: Mutex::new(Faults::NONE),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            seen: watch::Sender::new(0),
            hold: watch::Sender::new(None),
            held: watch::Sender::new(0),
            dropped_requests: AtomicU64::new(0),
            dropped_answers: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        FaultProxy {
            url: format!("http://{addr}"),
            addr,
            shared,
            task,
        }
    }

    /// From now on, requests meet these faults.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Forwards requests to `upstream` from now on (a server restarted on another port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// How many requests have arrived so far.
    pub fn requests(&self) -> u64 {
        *self.shared.seen.borrow()
    }

    /// Waits until `n` requests have arrived in all.
    pub async fn wait_for_requests(&self, n: u64) {
        let mut seen = self.shared.seen.subscribe();
        // The sender lives as long as `self`, so the wait ends only when the count is reached.
        let _ = seen.wait_for(|&count| count >= n).await;
    }

    /// Holds back requests whose path starts with `prefix` (those waiting and those to come)
    /// until [`FaultProxy::release`]: a stall at a chosen point of a cycle.
    pub fn hold(&self, prefix: &str) {
        self.shared.hold.send_replace(Some(prefix.to_owned()));
    }

    /// Lets held requests go on.
    pub fn release(&self) {
        self.shared.hold.send_replace(None);
    }

    /// Waits until a request is being held back.
    pub async fn wait_for_held(&self) {
        let mut held = self.shared.held.subscribe();
        let _ = held.wait_for(|&count| count > 0).await;
    }

    pub fn stats(&self) -> FaultStats {
        FaultStats {
            requests: self.requests(),
            dropped_requests: self.shared.dropped_requests.load(Ordering::Relaxed),
            dropped_answers: self.shared.dropped_answers.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(carry(client, shared.clone()));
    }
}

/// Carries one request and its answer, or loses one of them.
async fn carry(mut client: TcpStream, shared: Arc<Shared>) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return; // The client went away, or this is not HTTP/1.
    };
    let (fate, delay) = decide(&shared);
    shared.seen.send_modify(|count| *count += 1);
    if let Fate::DropRequest = fate {
        shared.dropped_requests.fetch_add(1, Ordering::Relaxed);
        return;
    }
    wait_while_held(&shared, &head).await;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let upstream = *lock(&shared.upstream);
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if server.write_all(&closing(&head)).await.is_err() || server.write_all(&rest).await.is_err() {
        return;
    }
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    // The rest of the body goes on to the server while its answer comes back; the server
    // closes the connection after the answer.
    let body = tokio::io::copy(&mut from_client, &mut to_server);
    let answer = async {
        match fate {
            Fate::DropAnswer(share) => {
                let mut answer = Vec::new();
                let _ = from_server.read_to_end(&mut answer).await;
                let relayed = (answer.len() as f64 * share) as usize;
                let _ = to_client.write_all(&answer[..relayed]).await;
                shared.dropped_answers.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                let _ = to_client.shutdown().await;
            }
        }
    };
    tokio::pin!(body, answer);
    tokio::select! {
        () = &mut answer => {}
        _ = &mut body => answer.await,
    }
}

/// Waits while the request's path is held back.
async fn wait_while_held(shared: &Shared, head: &[u8]) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let path = String::from_utf8_lossy(line)
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let holds = |hold: &Option<String>| hold.as_deref().is_some_and(|p| path.starts_with(p));
    let mut hold = shared.hold.subscribe();
    if !holds(&hold.borrow_and_update()) {
        return;
    }
    shared.held.send_modify(|count| *count += 1);
    let _ = hold.wait_for(|h| !holds(h)).await;
    shared.held.send_modify(|count| *count -= 1);
}

fn decide(shared: &Shared) -> (Fate, Duration) {
    let faults = *lock(&shared.faults);
    let mut rng = lock(&shared.rng);
    let roll: f64 = rng.random();
    let fate = if roll < faults.drop_request {
        Fate::DropRequest
    } else if roll < faults.drop_request + faults.drop_answer {
        Fate::DropAnswer(if rng.random_bool(0.5) {
            0.0
        } else {
            rng.random()
        })
    } else {
        Fate::Forward
    };
    let delay = if faults.max_delay.is_zero() {
        Duration::ZERO
    } else {
        rng.random_range(Duration::ZERO..=faults.max_delay)
    };
    (fate, delay)
}

/// Reads up to the end of the request head; returns the head (its blank line included) and
/// whatever of the body came with it.
async fn read_head(client: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        let searched_from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let end = searched_from + at + 4;
            let rest = buffer.split_off(end);
            return Some((buffer, rest));
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
    }
}

/// The request head with `Connection: close` in place of any connection header.
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + 19);
    for line in text.split("\r\n").filter(|line| !line.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::closing;

    #[test]
    fn the_head_asks_the_server_to_close_the_connection() {
        let head = b"POST /api/sync/push HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n";
        assert_eq!(
            String::from_utf8(closing(head)).unwrap(),
            "POST /api/sync/push HTTP/1.1\r\nhost: x\r\nConnection: close\r\n\r\n"
        );
    }
}
