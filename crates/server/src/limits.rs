//! Pushback. On guessing: a client that keeps failing to pair or to authenticate is answered
//! `429 rate_limited` with `Retry-After` for a while, before its request reaches the store. On
//! load: past [`crate::Config::max_in_flight`] requests at once, the next is answered
//! `503 unavailable` with `Retry-After` ([`limit_in_flight`]).
//!
//! Failures are counted per client address in fixed windows. The count lives in this
//! process: behind a load balancer each instance counts what it sees, and behind a proxy that
//! hides client addresses every client shares one count (the limit is per address Ferry
//! sees). Memory is bounded: when the table is full, expired windows are dropped first, then
//! the table is cleared rather than grown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState, body};

/// Addresses tracked at most.
const MAX_TRACKED: usize = 100_000;

/// How many failures a client may have in a window before it is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    /// Failures allowed in one window; the next request waits for the window's end.
    pub failures: u32,
    pub window: Duration,
}

impl Default for FailureLimit {
    /// 20 failures a minute: a person mistyping a code or a token never meets it; a script
    /// guessing codes gets 20 guesses a minute instead of thousands a second.
    fn default() -> FailureLimit {
        FailureLimit {
            failures: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// Failure counts per client address.
#[derive(Debug)]
pub(crate) struct FailureCounter {
    limit: FailureLimit,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl FailureCounter {
    pub(crate) fn new(limit: FailureLimit) -> FailureCounter {
        FailureCounter {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `client` must wait before it may try again; `None` when it may now.
    pub(crate) fn held_back(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let windows = self.windows();
        let window = windows.get(&client)?;
        let ends = window.started + self.limit.window;
        (window.failures >= self.limit.failures && now < ends).then(|| ends - now)
    }

    /// Counts a failure of `client`.
    pub(crate) fn failed(&self, client: IpAddr, now: Instant) {
        let mut windows = self.windows();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&client) {
            let window = self.limit.window;
            windows.retain(|_, w| now.duration_since(w.started) < window);
            if windows.len() >= MAX_TRACKED {
                windows.clear();
            }
        }
        let entry = windows.entry(client).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(entry.started) >= self.limit.window {
            *entry = Window {
                started: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        // Only counts are kept under the lock; a panic cannot leave them half-written.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The address of the client a request came from, when the server knows it (a router served
/// without connection info, as in some tests, does not).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddress(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(ClientAddress(client_of(parts)))
    }
}

pub(crate) fn client_of(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

impl FailureCounter {
    /// `429 rate_limited` when `client` has failed too often lately; `what` names the attempt.
    pub(crate) fn check(&self, client: Option<IpAddr>, what: &str) -> Result<(), ApiError> {
        let Some(client) = client else {
            return Ok(());
        };
        match self.held_back(client, Instant::now()) {
            None => Ok(()),
            Some(wait) => Err(ApiError::rate_limited(
                format!(
                    "Too many failed {what} from this address; try again in {} s.",
                    wait.as_secs().max(1)
                ),
                wait,
            )),
        }
    }

    /// Counts a failed attempt of `client`, when its address is known.
    pub(crate) fn note(&self, client: Option<IpAddr>) {
        if let Some(client) = client {
            self.failed(client, Instant::now());
        }
    }
}

/// Middleware bounding the requests handled at once ([`crate::Config::max_in_flight`]): one
/// over the bound is answered `503 unavailable` with `Retry-After` at once, instead of
/// waiting with its body in memory. A request counts until its handler has answered; a
/// response body still being sent (a large pull page, an event stream) no longer does, as the
/// connection limit bounds those.
pub(crate) async fn limit_in_flight(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        let limit = state.config.max_in_flight;
        let error = ApiError::unavailable(
            format!(
                "The server is handling as many requests as it takes at once ({limit}); try \
                 again in a second."
            ),
            OVERLOADED_RETRY_AFTER,
        )
        .with_details(serde_json::json!({
            "retry_after_seconds": OVERLOADED_RETRY_AFTER.as_secs(),
            "max_in_flight": limit,
        }));
        let mut response = body::refuse(request, error).await;
        response.extensions_mut().insert(Overloaded);
        return response;
    };
    next.run(request).await
}

/// How long a client turned away by [`limit_in_flight`] is asked to wait: requests take
/// milliseconds, so a second later there is room again unless the load lasts.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Response extension of a request turned away by [`limit_in_flight`], so the request log
/// counts it as the load it is rather than as a failure of the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overloaded;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_client_is_held_back_after_its_failures_until_the_window_ends() {
        let counter = FailureCounter::new(FailureLimit {
            failures: 3,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for n in 0..3 {
            assert_eq!(counter.held_back(ip(1), t0), None, "after {n} failures");
            counter.failed(ip(1), t0);
        }
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            counter.held_back(ip(1), later),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            counter.held_back(ip(2), later),
            None,
            "others are not held back"
        );
        let over = t0 + Duration::from_secs(60);
        assert_eq!(counter.held_back(ip(1), over), None, "a new window");
        counter.failed(ip(1), over);
        assert_eq!(
            counter.held_back(ip(1), over),
            None,
            "one failure in the new window"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let counter = FailureCounter::new(FailureLimit::default());
        let t0 = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 10) {
            counter.failed(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert!(counter.windows().len() <= MAX_TRACKED);
    }
}
