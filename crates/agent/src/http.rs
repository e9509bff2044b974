//! The device-local control API (`/local/*`), for the app on the same machine only.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::local::LocalLog;
use ferry_proto::{ErrorBody, ErrorCode};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;

use crate::Agent;

/// How many cycles `GET /local/log` returns.
const LOG_LENGTH: usize = 20;

/// How often an open events stream looks at the pending count.
const PENDING_POLL: Duration = Duration::from_secs(1);

/// The `/local/*` routes. Requests whose `Host` is not a loopback name are refused, so a web
/// page the user visits cannot reach the agent through DNS rebinding.
pub fn router(agent: Agent) -> Router {
    Router::new()
        .route("/local/status", get(status))
        .route("/local/sync", post(sync))
        .route("/local/pull", post(pull))
        .route("/local/log", get(log))
        .route("/local/events", get(events))
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint") })
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
                if let Ok(event) = event {
                    if tx.send(Ok(event)).await.is_err() {
                        return; // The client went away.
                    }
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

fn error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody::new(code, message, serde_json::json!({}));
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

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
