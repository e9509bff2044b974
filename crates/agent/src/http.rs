//! The device-local control API (`/local/*`), for the app on the same machine only, and the
//! pages built on it (see [`crate::panel`]).
//!
//! Two checks keep other machines and other web pages out. Every request must be addressed to
//! a loopback name (`Host`), so a page cannot reach the agent through DNS rebinding. And a
//! request that changes something (`POST /local/sync`, `POST /local/pull`) is refused when a
//! browser sent it from a page of another origin: a page the user visits may send a simple
//! POST to `http://127.0.0.1:7301` without asking (no CORS preflight), and `Origin` (or, without
//! it, `Sec-Fetch-Site`) is how a browser says so. Programs on the device send neither and
//! pass. No route sends CORS headers, so no other origin can read an answer.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_client::Error as ClientError;
use ferry_proto::local::LocalLog;
use ferry_proto::{ErrorBody, ErrorCode};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;

use crate::Agent;

/// How many cycles `GET /local/log` returns.
const LOG_LENGTH: usize = 20;

/// How often an open events stream looks at the pending count.
const PENDING_POLL: Duration = Duration::from_secs(1);

/// The `/local/*` routes and the Cloud Sync panel's pages. Requests whose `Host` is not a
/// loopback name are refused, and so are changes sent by a page of another origin.
pub fn router(agent: Agent) -> Router {
    Router::new()
        .route("/local/status", get(status))
        .route("/local/sync", post(sync))
        .route("/local/pull", post(pull))
        .route("/local/log", get(log))
        .route("/local/events", get(events))
        .route("/local/devices", get(devices))
        .merge(crate::panel::routes())
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error(
                ErrorCode::MethodNotAllowed,
                &format!("this endpoint does not accept {method} requests"),
            )
        })
        .layer(middleware::from_fn(same_origin_changes))
        .layer(middleware::from_fn(loopback_host_only))
        .with_state(agent)
}

async fn status(State(agent): State<Agent>) -> Response {
    match agent.status().await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error(
            ErrorCode::Internal,
            &format!("reading the sync status failed: {e}"),
        ),
    }
}

async fn sync(State(agent): State<Agent>) -> Response {
    match agent.sync_now().await {
        Some(report) => Json(report).into_response(),
        None => error(ErrorCode::Unavailable, "the agent is shutting down"),
    }
}

async fn pull(State(agent): State<Agent>) -> Response {
    match agent.force_pull().await {
        Some(report) => Json(report).into_response(),
        None => error(ErrorCode::Unavailable, "the agent is shutting down"),
    }
}

async fn log(State(agent): State<Agent>) -> Response {
    match agent.log(LOG_LENGTH).await {
        Ok(cycles) => Json(LocalLog { cycles }).into_response(),
        Err(e) => error(
            ErrorCode::Internal,
            &format!("reading the sync log failed: {e}"),
        ),
    }
}

/// The tenant's devices as the server lists them. The list lives on the server: while it
/// cannot be reached the answer is `503 unavailable`, saying so.
async fn devices(State(agent): State<Agent>) -> Response {
    match agent.devices().await {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => devices_error(&e),
    }
}

fn devices_error(e: &ClientError) -> Response {
    match e {
        ClientError::Offline { .. } => error(
            ErrorCode::Unavailable,
            &format!(
                "The devices list comes from the server, and {e}. It shows again once the \
                 device is back online; syncing resumes by itself."
            ),
        ),
        ClientError::Unauthorized { .. } => error(
            ErrorCode::Unauthorized,
            &format!("The server would not list the devices: {e}."),
        ),
        ClientError::Server { code, .. } if code == ErrorCode::Forbidden.as_str() => error(
            ErrorCode::Forbidden,
            &format!("The server would not list the devices: {e}."),
        ),
        // An older server without the list, or one that answered nonsense.
        _ => error(
            ErrorCode::Internal,
            &format!("The devices list could not be read from the server: {e}."),
        ),
    }
}

/// Server-Sent Events: the current status at once, then one `status` event per change of status
/// (a cycle started or ended) and per change of the pending count, which is looked at every
/// [`PENDING_POLL`] while the stream is open (the app's writes tell the agent nothing).
async fn events(State(agent): State<Agent>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(8);
    let mut changes = agent.changes();
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(PENDING_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        poll.reset(); // The first look is one interval after the first event.
        let mut sent_pending = None;
        loop {
            if let Ok(status) = agent.status().await {
                sent_pending = Some(status.pending);
                let event = Event::default().event("status").json_data(&status);
                if let Ok(event) = event
                    && tx.send(Ok(event)).await.is_err()
                {
                    return; // The client went away.
                }
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return, // The agent stopped.
                    },
                    _ = poll.tick() => {
                        let pending = agent.pending().await.ok();
                        if pending.is_some() && pending != sent_pending {
                            break;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        next.run(request).await
    } else {
        error(
            ErrorCode::Forbidden,
            "the control API answers only requests addressed to localhost",
        )
    }
}

/// Refuses a request that changes something (any method but `GET` and `HEAD`) when a browser
/// sent it from a page of another origin.
async fn same_origin_changes(request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match foreign_page(request.headers()) {
        None => next.run(request).await,
        Some(page) => error(
            ErrorCode::Forbidden,
            &format!(
                "the control API takes actions only from its own pages (the Cloud Sync panel at \
                 /) and from programs on this device, not from {page}"
            ),
        ),
    }
}

/// The page of another origin that a browser says sent the request, if it does: an `Origin`
/// other than the agent's own (`http://` and the request's `Host`), or, without `Origin`, a
/// `Sec-Fetch-Site` other than `same-origin` or `none` (typed in by the user).
fn foreign_page(headers: &HeaderMap) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)"))
    };
    if let Some(origin) = text(header::ORIGIN) {
        let own = format!("http://{}", text(header::HOST).unwrap_or(""));
        return (!origin.eq_ignore_ascii_case(&own)).then(|| format!("a page of {origin}"));
    }
    match text(header::HeaderName::from_static("sec-fetch-site")) {
        None | Some("same-origin" | "none") => None,
        Some(site) => Some(format!("a {site} page")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody::new(code, message, serde_json::json!({}));
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::{foreign_page, is_loopback_host};
    use axum::http::{HeaderMap, HeaderValue};

    /// A request's headers: its `Host` and one more header, if any.
    fn headers(host: &'static str, other: Option<(&'static str, &'static str)>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static(host));
        if let Some((name, value)) = other {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_the_agent_s_own_pages_and_programs_may_take_actions() {
        let agent = "127.0.0.1:7301";
        for allowed in [
            headers(agent, None),
            headers(agent, Some(("origin", "http://127.0.0.1:7301"))),
            headers("localhost:7301", Some(("origin", "http://LOCALHOST:7301"))),
            headers(agent, Some(("sec-fetch-site", "same-origin"))),
            headers(agent, Some(("sec-fetch-site", "none"))),
        ] {
            assert_eq!(foreign_page(&allowed), None, "{allowed:?}");
        }
        for refused in [
            headers(agent, Some(("origin", "https://evil.example"))),
            // Another port, or another name, of the same machine is another origin.
            headers(agent, Some(("origin", "http://127.0.0.1:8080"))),
            headers(agent, Some(("origin", "http://localhost:7301"))),
            // Sandboxed frames and local files.
            headers(agent, Some(("origin", "null"))),
            headers(agent, Some(("sec-fetch-site", "cross-site"))),
            headers(agent, Some(("sec-fetch-site", "same-site"))),
        ] {
            assert!(foreign_page(&refused).is_some(), "{refused:?}");
        }
    }

    #[test]
    fn only_loopback_hosts_pass() {
        for host in [
            "localhost",
            "localhost:7301",
            "127.0.0.1:7301",
            "[::1]:7301",
            "127.8.0.1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:7301",
            "10.0.0.1:7301",
            "[fe80::1]:80",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
