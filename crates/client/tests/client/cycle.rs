//! The HTTP cycle against a tiny fake server, for the offline, schema-mismatch and proxy paths
//! only (end-to-end cycles run against the real server in the integration tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use ferry_client::replica::Pairing;
use ferry_client::{Client, ClientOptions, CycleTrigger, OFFLINE_PREFIX, is_offline_error};
use serde_json::json;

use crate::support::*;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A replica paired with `server_url`, and a client for it.
fn paired(server_url: &str, options: ClientOptions) -> (Fixture, Client) {
    let mut f = Fixture::new();
    f.replica
        .save_pairing(&Pairing {
            server_url: server_url.to_string(),
            device_id: DEVICE.into(),
            tenant: "acme".into(),
            token: "secret-token".into(),
        })
        .unwrap();
    let client = Client::open(&f.path, options).unwrap();
    (f, client)
}

fn health_body(schema_hash: &str) -> serde_json::Value {
    json!({"status": "ok", "server_time": "2026-01-01T00:00:00.000Z", "version": "test",
           "schema_hash": schema_hash})
}

#[tokio::test]
async fn an_unreachable_server_makes_an_offline_report_that_is_logged() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener); // Nothing listens there any more: connections are refused.
    let (f, client) = paired(&url, ClientOptions::default());
    f.app
        .execute("INSERT INTO categories (id, name) VALUES ('c', 'x')", [])
        .unwrap();

    let report = client.sync(CycleTrigger::Manual, &|_| {}).await;
    assert!(!report.ok);
    assert!(is_offline_error(&report), "{report:?}");
    let error = report.error.clone().unwrap();
    assert!(
        error.starts_with(OFFLINE_PREFIX) && error.contains(&url),
        "{error}"
    );
    assert_eq!(report.trigger, CycleTrigger::Manual);
    assert_eq!(client.pending().unwrap(), 1, "nothing was lost or stamped");
    assert_eq!(client.last_synced_at().unwrap(), None);
    assert_eq!(client.log(20).unwrap(), [report]);
    assert_eq!(client.device_id(), DEVICE);
    assert_eq!(client.server_url(), url);
}

#[tokio::test]
async fn a_health_check_that_never_answers_times_out_as_offline() {
    let app = Router::new().route(
        "/api/sync/health",
        get(std::future::pending::<&'static str>),
    );
    let url = serve(app).await;
    let options = ClientOptions {
        health_timeout: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    let (_f, client) = paired(&url, options);
    let report = client.force_pull(&|_| {}).await;
    assert!(is_offline_error(&report), "{report:?}");
    assert_eq!(report.trigger, CycleTrigger::ForcePull);
    assert!(report.duration_ms < 5_000, "{}", report.duration_ms);
    assert!(report.error.unwrap().contains("timed out"));
}

#[tokio::test]
async fn an_unavailable_store_is_offline_too() {
    let app = Router::new().route(
        "/api/sync/health",
        get(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    json!({"error": {"code": "unavailable", "message": "the store is down"}}),
                ),
            )
        }),
    );
    let (_f, client) = paired(&serve(app).await, ClientOptions::default());
    let report = client.sync(CycleTrigger::Schedule, &|_| {}).await;
    assert!(is_offline_error(&report), "{report:?}");
}

/// What the fake server saw.
#[derive(Default)]
struct Seen {
    pushes: Vec<(HeaderMap, serde_json::Value)>,
    pulls: usize,
}

fn mismatch_server(health_hash: String, seen: Arc<Mutex<Seen>>) -> Router {
    let push_seen = Arc::clone(&seen);
    Router::new()
        .route(
            "/api/sync/health",
            get(move || {
                let hash = health_hash.clone();
                async move { axum::Json(health_body(&hash)) }
            }),
        )
        // A schema the device cannot grow into: its tables are not there.
        .route(
            "/api/sync/schema",
            get(|| async {
                axum::Json(json!({"schema_hash": "0".repeat(64),
                                  "ddl": "CREATE TABLE other (id TEXT PRIMARY KEY);"}))
            }),
        )
        .route(
            "/api/sync/push",
            post(
                move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                    push_seen.lock().unwrap().pushes.push((headers, body.0));
                    async {
                        (
                            StatusCode::CONFLICT,
                            axum::Json(json!({"error": {"code": "schema_mismatch",
                            "message": "the schema hash differs", "details": {}}})),
                        )
                    }
                },
            ),
        )
        .route(
            "/api/sync/pull",
            get(move || {
                seen.lock().unwrap().pulls += 1;
                async { StatusCode::INTERNAL_SERVER_ERROR }
            }),
        )
}

#[tokio::test]
async fn a_409_on_push_aborts_the_cycle_with_a_schema_mismatch() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The server's health agrees with the device, but its push handler says otherwise.
    let device_hash = Fixture::new().replica.schema_hash().unwrap();
    let url = serve(mismatch_server(device_hash.clone(), Arc::clone(&seen))).await;
    let (f, client) = paired(&url, ClientOptions::default());
    f.app
        .execute_batch("INSERT INTO categories (id, name) VALUES ('a', 'A'), ('b', 'B')")
        .unwrap();

    let report = client.sync(CycleTrigger::Manual, &|_| {}).await;
    assert!(!report.ok && !is_offline_error(&report), "{report:?}");
    let error = report.error.clone().unwrap();
    assert!(
        error.contains("schema hash") && error.contains(&device_hash),
        "{error}"
    );
    assert_eq!(report.pushed, 0);
    assert_eq!(client.pending().unwrap(), 2, "rows stay dirty");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.pulls, 0, "the cycle stopped at push");
    assert_eq!(seen.pushes.len(), 1);
    let (headers, body) = &seen.pushes[0];
    assert_eq!(headers["authorization"], "Bearer secret-token");
    assert!(
        headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with(ferry_proto::CLIENT_AGENT_PREFIX)
    );
    assert_eq!(body["device_id"], DEVICE);
    assert_eq!(body["schema_hash"], device_hash.as_str());
    assert_eq!(body["changes"].as_array().unwrap().len(), 2);
    assert_eq!(body["pending"], 0);
    assert_eq!(client.log(20).unwrap()[0], report);
}

#[tokio::test]
async fn a_health_schema_hash_that_differs_stops_the_cycle_before_push() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = serve(mismatch_server("0".repeat(64), Arc::clone(&seen))).await;
    let (f, client) = paired(&url, ClientOptions::default());
    f.app
        .execute("INSERT INTO categories (id, name) VALUES ('a', 'A')", [])
        .unwrap();
    let report = client.sync(CycleTrigger::Manual, &|_| {}).await;
    let error = report.error.clone().unwrap();
    assert!(
        error.contains("does not only add to this device's")
            && error.contains("categories is gone"),
        "{error}"
    );
    assert!(!is_offline_error(&report));
    assert_eq!(client.pending().unwrap(), 1, "the row stays dirty");
    let seen = seen.lock().unwrap();
    assert_eq!((seen.pushes.len(), seen.pulls), (0, 0));
}

/// The agent shares one client between its loop and its HTTP handlers.
#[test]
fn the_client_is_cheap_to_share_between_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Client>();
}

/// A server error answer (a crashed handler, a proxy in front of a stopped server) is offline:
/// the device cannot sync for now, and nothing about it is wrong.
#[tokio::test]
async fn a_server_error_answer_is_offline() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device_hash = Fixture::new().replica.schema_hash().unwrap();
    // Nothing to push, so the cycle goes on to pull, which answers 500.
    let url = serve(mismatch_server(device_hash, Arc::clone(&seen))).await;
    let (_f, client) = paired(&url, ClientOptions::default());
    let report = client.sync(CycleTrigger::Manual, &|_| {}).await;
    assert!(is_offline_error(&report), "{report:?}");
    assert!(report.error.unwrap().contains("500"));
    assert_eq!(seen.lock().unwrap().pulls, 1);
}

/// What a proxy in front of the server saw of the pushes: each request's change ids, and
/// whether it refused it.
type Proxied = Arc<Mutex<Vec<(Vec<String>, bool)>>>;

/// A server behind a proxy that refuses bodies over `limit` bytes with a `413` page of its own
/// (no contract body, so no limit named); the server applies whatever reaches it.
fn proxied_server(health_hash: String, limit: usize, seen: Proxied) -> Router {
    Router::new()
        .route(
            "/api/sync/health",
            get(move || {
                let hash = health_hash.clone();
                async move { axum::Json(health_body(&hash)) }
            }),
        )
        .route(
            "/api/sync/push",
            post(move |body: axum::body::Bytes| {
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let changes = request["changes"].as_array().unwrap();
                let ids = changes.iter().map(|c| c["pk"]["id"].to_string()).collect();
                let refused = body.len() > limit;
                seen.lock().unwrap().push((ids, refused));
                let results: Vec<_> = changes
                    .iter()
                    .map(|c| json!({"table": c["table"], "pk": c["pk"], "outcome": "applied"}))
                    .collect();
                async move {
                    if refused {
                        let page = "<html><body>413 Request Entity Too Large</body></html>";
                        return (StatusCode::PAYLOAD_TOO_LARGE, page).into_response();
                    }
                    let answer = json!({"results": results,
                                        "server_time": "2026-01-01T00:00:00.000Z"});
                    axum::Json(answer).into_response()
                }
            }),
        )
        .route(
            "/api/sync/pull",
            get(|| async {
                axum::Json(json!({"changes": [], "cursor": "v1:0", "has_more": false,
                                  "server_time": "2026-01-01T00:00:00.000Z"}))
            }),
        )
}

/// A proxy's `413` names no limit: the client halves what it refused until the pieces pass,
/// sends the rest of the cycle no larger than what passed, and a row refused even alone is
/// sent alone once, reported and kept dirty.
#[tokio::test]
async fn a_proxy_refusing_large_pushes_gets_them_in_pieces() {
    let seen = Proxied::default();
    let device_hash = Fixture::new().replica.schema_hash().unwrap();
    let url = serve(proxied_server(device_hash, 10_000, Arc::clone(&seen))).await;
    let (f, client) = paired(&url, ClientOptions::default());
    let insert = |id: &str, size: usize| {
        f.app
            .execute(
                "INSERT INTO categories (id, name) VALUES (?1, ?2)",
                (id, "x".repeat(size)),
            )
            .unwrap();
    };
    // 40 rows of about 1.1 KB: 44 KB, 22, 11 refused, 5.5 KB passes.
    for i in 0..40 {
        insert(&format!("c{i:02}"), 1000);
    }
    let report = client.sync(CycleTrigger::Manual, &|_| {}).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.pushed, 40);
    assert_eq!(client.pending().unwrap(), 0);
    let pushes = std::mem::take(&mut *seen.lock().unwrap());
    let refused: Vec<usize> = pushes
        .iter()
        .filter(|(_, refused)| *refused)
        .map(|(ids, _)| ids.len())
        .collect();
    assert_eq!(refused, [40, 20, 10], "{pushes:?}");
    let passed: Vec<&Vec<String>> = pushes.iter().filter(|p| !p.1).map(|p| &p.0).collect();
    assert!(passed.iter().all(|ids| ids.len() == 5), "{pushes:?}");
    let mut delivered: Vec<&String> = passed.into_iter().flatten().collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 40, "each row once");

    // A row over the proxy's limit alone, among small ones.
    for id in ["d1", "d2", "d3"] {
        insert(id, 10);
    }
    insert("zz", 20_000);
    let report = client.sync(CycleTrigger::Manual, &|_| {}).await;
    assert_eq!((report.pushed, report.rejected), (3, 1), "{report:?}");
    let error = report.error.unwrap();
    assert!(
        error.contains(r#"categories {"id":"zz"}: payload_too_large"#)
            && error.contains("over the server's limit per push request"),
        "{error}"
    );
    assert_eq!(client.pending().unwrap(), 1);
    let pushes = std::mem::take(&mut *seen.lock().unwrap());
    let alone: Vec<&(Vec<String>, bool)> = pushes
        .iter()
        .filter(|(ids, _)| ids == &[r#""zz""#])
        .collect();
    assert_eq!(alone, [&(vec![r#""zz""#.to_owned()], true)], "{pushes:?}");
}
