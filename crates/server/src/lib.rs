//! Ferry's HTTP server: the device-sync API of `shared/PROTOCOL.md` on top of a [`Store`].
//!
//! [`app`] builds the router (handy with `tower::ServiceExt::oneshot` in tests); [`serve`] runs
//! it on a listener until a cancellation token fires, then drains requests in flight. [`init`]
//! opens the store (a data directory or PostgreSQL), the schema, the first-start tenant and
//! admin token.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::time::now_ms;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::get;
use axum::{Router, middleware};
use ferry_core::Schema;
use ferry_store::{BillingStore, JobStore, Store};
use ferry_worker::cadence::TierIntervals;
use ferry_worker::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tower_http::CompressionLevel;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

mod api;
mod auth;
mod body;
mod conn;
mod error;
pub mod init;
mod limits;
mod metrics;
mod observe;
mod openapi;
mod routes;

pub use error::ApiError;
pub use limits::FailureLimit;

use limits::FailureCounter;

/// How the server behaves; built once at startup and shared read-only.
#[derive(Debug, Clone)]
pub struct Config {
    /// The synced schema every push is validated against.
    pub schema: Arc<Schema>,
    /// Hex SHA-256 of the schema's canonical text; devices must send the same.
    pub schema_hash: String,
    /// The schema as DDL, served by `GET /api/sync/schema`.
    pub schema_ddl: String,
    /// How far ahead of the server's clock a pushed version may be.
    pub max_clock_skew: Duration,
    /// The largest request body accepted, after gzip decompression: decoding stops there.
    pub body_limit_bytes: usize,
    /// The largest request body accepted as it is sent (compressed, when it is gzip): reading
    /// stops there. A gzip stream can be long and decode to little.
    pub compressed_body_limit_bytes: usize,
    /// The most changes one push may carry; parsing stops at the first one over it.
    pub max_push_changes: usize,
    /// The most bytes of push bodies held and worked on at once, summed over every push in
    /// flight. A parsed push takes many times its body's size in memory (a JSON value per
    /// field), so this bounds what concurrent large pushes can take. A push beyond it waits
    /// for room up to [`Config::push_budget_wait`], then is answered `503` with
    /// `Retry-After`; one push larger than the whole budget still runs, alone.
    pub max_push_bytes_in_flight: usize,
    /// How long a push waits for room within [`Config::max_push_bytes_in_flight`].
    pub push_budget_wait: Duration,
    /// The longest request path and query accepted; a longer one is `414` with the contract's
    /// body. hyper's HTTP/1 connection refuses a request target over 65 534 bytes by itself,
    /// before the app sees it, with an empty `414`; a limit above that has no effect.
    pub max_uri_bytes: usize,
    /// The most bytes of request headers (names and values) accepted; more is `431` with the
    /// contract's body. hyper's HTTP/1 connection refuses a request head over about 400 KiB, or
    /// with more than 100 headers, by itself, before the app sees it, with an empty `431`.
    pub max_header_bytes: usize,
    /// Page size of a pull that names no `limit`.
    pub default_pull_limit: u32,
    /// The largest page a pull may ask for; larger limits are capped to it.
    pub max_pull_limit: u32,
    /// The most bytes of changes in one pull page; a change larger than this on its own still
    /// makes a page by itself.
    pub max_pull_bytes: usize,
    /// How long a pairing code made by `POST /api/admin/pairing-codes` stays valid.
    pub pairing_code_ttl: Duration,
    /// How long [`serve`] waits for requests in flight after shutdown begins before it stops
    /// anyway. A request cut off this way leaves nothing half-written: each store call is one
    /// transaction.
    pub shutdown_grace: Duration,
    /// The server-side sync jobs the sync worker API knows; the first is the default job.
    pub sync_jobs: Vec<String>,
    /// The cadence tiers' intervals, for the state and pin endpoints.
    pub tier_intervals: TierIntervals,
    /// Failed pairings and failed authentications a client address may have in a window
    /// before it is answered `429 rate_limited` until the window ends.
    pub failure_limit: FailureLimit,
    /// How long a client may take to send a request's head, from its first byte.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, from the end of its head.
    pub body_timeout: Duration,
    /// How long a connection may wait for its next request, and how long a response may wait
    /// for a client that stopped reading it, before the connection is closed.
    pub idle_timeout: Duration,
    /// The most connections [`serve`] keeps open; more wait in the listen backlog.
    pub max_connections: usize,
    /// The most requests handled at once; more are answered `503 unavailable` with
    /// `Retry-After`.
    pub max_in_flight: usize,
    /// The most connections open at once from one client address; more are closed at once,
    /// so one client cannot take every slot. Behind a proxy every connection comes from its
    /// address: set it to [`Config::max_connections`] there.
    pub max_connections_per_address: usize,
}

impl Config {
    /// The defaults of the contract: 5 min clock skew, pulls of 1000 rows capped at 10 000,
    /// pairing codes valid for 15 min; 30 s to drain at shutdown. URIs of up to 8 KiB and
    /// headers of up to 32 KiB, as common proxies accept: well within hyper's own limits, so
    /// an oversized request head gets the contract's body. Bodies of up to 16 MiB as sent and
    /// decoded, pushes of up to 10 000 changes (ten of the device client's batches), pull pages
    /// of up to 8 MiB; 10 s for a request head, 60 s for its body, 60 s idle; 512
    /// connections, 256 requests in flight.
    pub fn new(schema: Schema) -> Config {
        Config {
            schema_hash: ferry_schema::hash(&schema),
            schema_ddl: ferry_schema::to_ddl(&schema),
            schema: Arc::new(schema),
            max_clock_skew: Duration::from_secs(5 * 60),
            body_limit_bytes: 16 * 1024 * 1024,
            compressed_body_limit_bytes: 16 * 1024 * 1024,
            max_push_changes: 10_000,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            default_pull_limit: 1000,
            max_pull_limit: 10_000,
            max_pull_bytes: ferry_store::PageLimit::DEFAULT_BYTES,
            pairing_code_ttl: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(30),
            sync_jobs: Vec::new(),
            tier_intervals: TierIntervals::default(),
            failure_limit: FailureLimit::default(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_in_flight: 256,
            max_connections_per_address: 256,
            max_push_bytes_in_flight: 64 * 1024 * 1024,
            push_budget_wait: Duration::from_secs(10),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// The sync jobs' state; without it the sync worker API answers `404`.
    pub jobs: Option<Arc<dyn JobStore>>,
    /// The billing job's ledger; without it the billing API answers `404`.
    pub billing: Option<Arc<dyn BillingStore>>,
    /// The in-process sync worker's metrics, for `/metrics`.
    pub metrics: Option<Arc<Metrics>>,
    /// The sync engine's own metrics, for `/metrics`.
    pub(crate) server_metrics: Arc<metrics::ServerMetrics>,
    /// Failed pairings and authentications per client address, in this process.
    pub(crate) failures: Arc<FailureCounter>,
    /// Permits for the requests handled at once ([`Config::max_in_flight`]).
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// Push bodies held at once ([`Config::max_push_bytes_in_flight`]).
    pub(crate) push_budget: body::Budget,
    /// Cancelled when [`serve`] begins to shut down: responses that would never end on their
    /// own (event streams) end then, so the drain does not wait for them.
    pub(crate) shutdown: CancellationToken,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, config: Config) -> AppState {
        AppState {
            store,
            failures: Arc::new(FailureCounter::new(config.failure_limit)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            push_budget: body::Budget::of_bytes(config.max_push_bytes_in_flight),
            shutdown: CancellationToken::new(),
            config: Arc::new(config),
            jobs: None,
            billing: None,
            metrics: None,
            server_metrics: Arc::default(),
        }
    }

    /// Serves the sync worker API from `jobs`.
    pub fn with_jobs(mut self, jobs: Arc<dyn JobStore>) -> AppState {
        self.jobs = Some(jobs);
        self
    }

    /// Serves the billing API from `billing`.
    pub fn with_billing(mut self, billing: Arc<dyn BillingStore>) -> AppState {
        self.billing = Some(billing);
        self
    }

    /// Exposes an in-process worker's metrics at `/metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> AppState {
        self.metrics = Some(metrics);
        self
    }
}

/// Every route [`app`] serves: its method and the router's path pattern (`{name}` for a
/// segment, `{*name}` for the rest of the path). The list the router is built from, which
/// `GET /api/openapi.json` also documents.
pub fn routes() -> Vec<(axum::http::Method, &'static str)> {
    api::endpoints()
        .into_iter()
        .map(|endpoint| (endpoint.method, endpoint.path))
        .collect()
}

/// The whole HTTP API. Routes and their descriptions are listed in `api`, handlers live in
/// `routes`; every error is the contract's JSON body.
pub fn app(state: AppState) -> Router {
    api::endpoints()
        .into_iter()
        .fold(Router::new(), |router, endpoint| {
            router.route(endpoint.path, endpoint.handler)
        })
        // Inside the routes, where the matched route's pattern is known.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // gzip as the contract requires, and zstd for clients that offer it (Ferry's own does):
        // a full snapshot is hundreds of megabytes of JSON, which zstd compresses several times
        // faster than gzip for a similar size. The fastest level for the same reason.
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .zstd(true)
                .quality(CompressionLevel::Fastest),
        )
        // Outside everything but the request log, the body's limits and the bound on requests
        // in flight: an oversized request head is refused before any other layer or handler
        // looks at it.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::limit_request_head,
        ))
        // Over the bound, a request is answered `503` before anything else is done for it.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_in_flight,
        ))
        // Every body is read under the server's limits (size as sent, size decoded, time),
        // whoever reads it, refusals' drains included; gzip is decoded here.
        .layer(middleware::from_fn_with_state(state.clone(), body::decode))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<Body>| observe::request_span(request))
                .on_request(())
                .on_response(|response: &Response<_>, latency: Duration, span: &Span| {
                    observe::on_response(response, latency, span)
                })
                // Failures are logged once, by `on_response`, with their cause.
                .on_failure(()),
        )
        .with_state(state)
}

/// A router with only `/metrics`, for a `ferry worker` process. It asks for no token (the
/// worker serves no API to check one against), so it belongs on a loopback or private
/// address: `ferry worker --metrics-listen` is loopback unless told otherwise. The main API's
/// `/metrics` asks for a token of the deployment's own tenant.
pub fn metrics_app(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || std::future::ready(metrics.render())),
    )
}

/// Connections a side service ([`serve_side`]) holds at once.
const SIDE_CONNECTIONS: usize = 64;

/// Serves a small side router (a `ferry worker`'s `/metrics`, an agent's control API) on
/// `listener` until `shutdown` is cancelled, under the API's connection timeouts (a request's
/// head within 10 s, an idle connection closed after 60 s, a streaming answer never cut) and
/// at most 64 connections at once, so a stuck or greedy client cannot hold it.
pub async fn serve_side(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) {
    let config = Config::new(ferry_core::Schema::default());
    let limits = conn::Limits {
        max_connections: SIDE_CONNECTIONS,
        max_connections_per_address: SIDE_CONNECTIONS,
        ..conn::Limits::of(&config)
    };
    conn::accept(listener, router, limits, shutdown).await;
}

/// Serves [`app`] on `listener` until `shutdown` is cancelled, then stops accepting
/// connections and waits for requests in flight to finish, for at most
/// [`Config::shutdown_grace`]. Connections are kept under the limits of [`Config`]: their
/// number, and the timeouts of a request's head, its body and an idle connection (see
/// `conn.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let mut state = state;
    state.shutdown = shutdown.child_token();
    let grace = state.config.shutdown_grace;
    let limits = conn::Limits::of(&state.config);
    tracing::info!(%addr, "The server is listening.");
    let server = conn::accept(listener, app(state), limits, shutdown.clone());
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = server => {}
        () = grace_over => tracing::warn!(
            %addr,
            grace_seconds = grace.as_secs_f64(),
            "Requests were still in flight when the shutdown grace period ended; they were cut off."
        ),
    }
    tracing::info!(%addr, "The server has stopped.");
    Ok(())
}
