//! The sync engine's metrics for `/metrics`, beside the worker's (`ferry_worker::metrics`):
//! requests by route, method and status with latency histograms by route, changes pushed by
//! outcome and pulled, devices' open change streams, the store's connection pool and failures.
//!
//! Routes are the router's patterns (`/api/admin/devices/{device_id}`), never the paths
//! requested, so a client cannot grow the label set; a request no route matched counts as
//! `unmatched`. Latency is to the response's head: an event stream counts until it opens.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use ferry_proto::{Outcome, PushResult};
use ferry_store::PoolStatus;
use ferry_worker::metrics::{Histogram, escape, write_histograms};

use crate::AppState;

/// Marks a response whose error came from the store, with the failure's kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreFailure(pub(crate) &'static str);

/// What the engine counts. Shared by the middleware, the handlers and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ServerMetrics {
    /// Per route pattern: one lock and no allocation per request once the route was seen.
    routes: Mutex<BTreeMap<String, RouteStats>>,
    /// Pushed changes, by [`OUTCOMES`].
    pushed: [AtomicU64; OUTCOMES.len()],
    pulled: AtomicU64,
    store_errors: Mutex<BTreeMap<&'static str, u64>>,
    change_streams: AtomicI64,
    admin_streams: AtomicI64,
}

/// One route's answers: its latency, and how many of each method and status (a route takes a
/// method or two and answers a handful of statuses, so a list is all it needs).
#[derive(Debug, Default)]
struct RouteStats {
    latency: Histogram,
    answers: Vec<(Method, u16, u64)>,
}

/// The push outcomes, as labels, in [`ServerMetrics::pushed`]'s order.
const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Applied, "applied"),
    (Outcome::Duplicate, "duplicate"),
    (Outcome::Superseded, "superseded"),
    (Outcome::Rejected, "rejected"),
];

impl ServerMetrics {
    /// A push answered with `results`.
    pub(crate) fn pushed(&self, results: &[PushResult]) {
        let mut counts = [0_u64; OUTCOMES.len()];
        for result in results {
            let index = OUTCOMES
                .iter()
                .position(|(outcome, _)| *outcome == result.outcome)
                .unwrap_or_default();
            counts[index] += 1;
        }
        for (counter, count) in self.pushed.iter().zip(counts) {
            counter.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// A pull page of `changes` rows was served.
    pub(crate) fn pulled(&self, changes: u64) {
        self.pulled.fetch_add(changes, Ordering::Relaxed);
    }

    /// A device's change stream opened; the guard counts it closed when dropped.
    pub(crate) fn change_stream_opened(self: &std::sync::Arc<Self>) -> StreamGuard {
        StreamGuard::open(std::sync::Arc::clone(self), Stream::Device)
    }

    /// A console's event stream opened; the guard counts it closed when dropped.
    pub(crate) fn admin_stream_opened(self: &std::sync::Arc<Self>) -> StreamGuard {
        StreamGuard::open(std::sync::Arc::clone(self), Stream::Admin)
    }

    fn answered(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let mut routes = lock(&self.routes);
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteStats::default());
        }
        let stats = routes.get_mut(route).expect("inserted above");
        stats.latency.observe(seconds);
        match stats
            .answers
            .iter_mut()
            .find(|(m, s, _)| m == method && *s == status)
        {
            Some((_, _, count)) => *count += 1,
            None => stats.answers.push((method.clone(), status, 1)),
        }
    }

    /// Prometheus text exposition, with the store's pool as it is now.
    pub(crate) fn render(&self, pool: Option<PoolStatus>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferry_http_requests_total Requests answered, by route, method and status.\n\
             # TYPE ferry_http_requests_total counter"
        );
        let routes = lock(&self.routes);
        for (route, stats) in routes.iter() {
            let mut answers: Vec<_> = stats.answers.iter().collect();
            answers.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
            for (method, status, n) in answers {
                let _ = writeln!(
                    out,
                    "ferry_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    escape(route),
                    escape(method.as_str())
                );
            }
        }
        write_histograms(
            &mut out,
            "ferry_http_request_duration_seconds",
            "From a request's arrival to its response's head, by route.",
            "route",
            routes
                .iter()
                .map(|(route, stats)| (route.as_str(), &stats.latency)),
        );
        drop(routes);
        let _ = writeln!(
            out,
            "# HELP ferry_sync_push_changes_total Pushed changes, by outcome (superseded: the \
             device's write lost to a newer one).\n# TYPE ferry_sync_push_changes_total counter"
        );
        for ((_, outcome), counter) in OUTCOMES.iter().zip(&self.pushed) {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "ferry_sync_push_changes_total{{outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_sync_pulled_changes_total Changes served in pull pages.\n\
             # TYPE ferry_sync_pulled_changes_total counter\n\
             ferry_sync_pulled_changes_total {}\n\
             # HELP ferry_devices_streaming Devices with their change stream open.\n\
             # TYPE ferry_devices_streaming gauge\n\
             ferry_devices_streaming {}\n\
             # HELP ferry_console_streams Open admin event streams.\n\
             # TYPE ferry_console_streams gauge\n\
             ferry_console_streams {}",
            self.pulled.load(Ordering::Relaxed),
            self.change_streams.load(Ordering::Relaxed),
            self.admin_streams.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP ferry_store_errors_total Requests failed by the store, by kind.\n\
             # TYPE ferry_store_errors_total counter"
        );
        for (kind, n) in lock(&self.store_errors).iter() {
            let _ = writeln!(out, "ferry_store_errors_total{{kind=\"{kind}\"}} {n}");
        }
        if let Some(pool) = pool {
            let _ = writeln!(
                out,
                "# HELP ferry_store_pool_connections The store's connection pool, by state.\n\
                 # TYPE ferry_store_pool_connections gauge\n\
                 ferry_store_pool_connections{{state=\"max\"}} {}\n\
                 ferry_store_pool_connections{{state=\"open\"}} {}\n\
                 ferry_store_pool_connections{{state=\"idle\"}} {}\n\
                 # HELP ferry_store_pool_waiting Requests waiting for a connection.\n\
                 # TYPE ferry_store_pool_waiting gauge\n\
                 ferry_store_pool_waiting {}",
                pool.max, pool.open, pool.idle, pool.waiting
            );
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Device,
    Admin,
}

/// Counts one open stream for as long as it lives.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    metrics: std::sync::Arc<ServerMetrics>,
    stream: Stream,
}

impl StreamGuard {
    fn open(metrics: std::sync::Arc<ServerMetrics>, stream: Stream) -> StreamGuard {
        metrics.gauge(stream).fetch_add(1, Ordering::Relaxed);
        StreamGuard { metrics, stream }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.stream)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServerMetrics {
    fn gauge(&self, stream: Stream) -> &AtomicI64 {
        match stream {
            Stream::Device => &self.change_streams,
            Stream::Admin => &self.admin_streams,
        }
    }
}

/// Middleware counting every request by its route's pattern, method and status, with its
/// latency, and the store's failures by kind.
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Both are cheap to keep: the pattern is shared, a standard method is a constant.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let metrics = &state.server_metrics;
    if let Some(StoreFailure(kind)) = response.extensions().get::<StoreFailure>() {
        *lock(&metrics.store_errors).entry(kind).or_default() += 1;
    }
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.answered(route, &method, status, started.elapsed().as_secs_f64());
    response
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update leaves the maps whole, so a poisoned lock still guards good data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_changes_streams_and_the_pool() {
        let metrics = std::sync::Arc::new(ServerMetrics::default());
        metrics.answered("/api/sync/push", &Method::POST, 200, 0.003);
        metrics.answered("/api/sync/push", &Method::POST, 200, 0.2);
        let result = |outcome| PushResult {
            table: "t".into(),
            pk: Default::default(),
            outcome,
            code: None,
            message: None,
        };
        metrics.pushed(&[result(Outcome::Applied), result(Outcome::Superseded)]);
        metrics.pulled(7);
        let open = metrics.change_stream_opened();
        let closed = metrics.change_stream_opened();
        drop(closed);
        let pool = PoolStatus {
            max: 16,
            open: 3,
            idle: 2,
            waiting: 0,
        };
        let text = metrics.render(Some(pool));
        for line in [
            "ferry_http_requests_total{route=\"/api/sync/push\",method=\"POST\",status=\"200\"} 2",
            "ferry_http_request_duration_seconds_bucket{route=\"/api/sync/push\",le=\"0.005\"} 1",
            "ferry_http_request_duration_seconds_count{route=\"/api/sync/push\"} 2",
            "ferry_sync_push_changes_total{outcome=\"applied\"} 1",
            "ferry_sync_push_changes_total{outcome=\"superseded\"} 1",
            "ferry_sync_pulled_changes_total 7",
            "ferry_devices_streaming 1",
            "ferry_store_pool_connections{state=\"open\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop(open);
        assert!(metrics.render(None).contains("ferry_devices_streaming 0"));
    }
}
