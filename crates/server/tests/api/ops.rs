//! What an operator's tooling reads: `/metrics` for the sync engine, and the liveness and
//! readiness probes of a load balancer.

use std::sync::atomic::Ordering;

use reqwest::Method;
use serde_json::json;

use super::events::EventStream;
use super::support::*;

/// `/metrics` as the deployment's admin reads it.
async fn metrics(server: &Server) -> String {
    let response = server
        .request(Method::GET, "/metrics", Some(&server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

#[tokio::test]
async fn metrics_count_requests_changes_streams_and_store_failures() {
    let server = Server::start().await;
    let till = server.pair("Till").await;
    let tablet = server.pair("Tablet").await;
    server
        .push_ok(
            &till,
            json!([
                product("p1", "Cola", &v(2, &till.id)),
                product("p2", "Tea", &v(2, &till.id))
            ]),
        )
        .await;
    // A write older than the stored one loses.
    let lost = server
        .push_ok(
            &tablet,
            json!([product("p1", "Old cola", &v(1, &tablet.id))]),
        )
        .await;
    assert_eq!(lost, ["superseded"]);
    server.pull_all(&tablet, None).await;
    let _stream = EventStream::open(&server, "/api/sync/stream", &tablet.token).await;
    server.hooks.down.store(true, Ordering::SeqCst);
    assert_error(&server.pull(&tablet, None, None).await, 503, "unavailable");
    server.hooks.down.store(false, Ordering::SeqCst);

    let text = metrics(&server).await;
    let push = r#"ferry_http_requests_total{route="/api/sync/push",method="POST",status="200"}"#;
    assert_eq!(sample(&text, push), Some(2.0), "{text}");
    let pull_503 = r#"ferry_http_requests_total{route="/api/sync/pull",method="GET",status="503"}"#;
    assert_eq!(sample(&text, pull_503), Some(1.0), "{text}");
    let latency = r#"ferry_http_request_duration_seconds_count{route="/api/sync/push"}"#;
    assert_eq!(sample(&text, latency), Some(2.0), "{text}");
    let applied = r#"ferry_sync_push_changes_total{outcome="applied"}"#;
    assert_eq!(sample(&text, applied), Some(2.0), "{text}");
    let superseded = r#"ferry_sync_push_changes_total{outcome="superseded"}"#;
    assert_eq!(sample(&text, superseded), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "ferry_sync_pulled_changes_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ferry_devices_streaming"),
        Some(1.0),
        "{text}"
    );
    let failed = r#"ferry_store_errors_total{kind="unavailable"}"#;
    assert_eq!(sample(&text, failed), Some(1.0), "{text}");
    // Routes are patterns: a device id never becomes a label.
    assert!(!text.contains(&till.id), "{text}");
    // The pool only where there is one.
    let pool = r#"ferry_store_pool_connections{state="max"}"#;
    match backend() {
        ferry_testkit::Backend::Postgres => assert!(sample(&text, pool).unwrap() >= 1.0),
        ferry_testkit::Backend::Sqlite => assert_eq!(sample(&text, pool), None),
    }
}

#[tokio::test]
async fn liveness_asks_nothing_of_the_store_and_readiness_follows_it() {
    let server = Server::start().await;
    for path in ["/livez", "/readyz"] {
        let (status, body) = server.call(Method::GET, path, None, None).await;
        assert_eq!((status, body), (200, json!({"status": "ok"})), "{path}");
    }
    server.hooks.down.store(true, Ordering::SeqCst);
    let (status, _) = server.call(Method::GET, "/livez", None, None).await;
    assert_eq!(status, 200);
    let got = server.call(Method::GET, "/readyz", None, None).await;
    assert_error(&got, 503, "unavailable");
    server.hooks.down.store(false, Ordering::SeqCst);
    let (status, _) = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);
}
