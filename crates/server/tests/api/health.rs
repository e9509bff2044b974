use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::Request;
use reqwest::Method;
use tower::ServiceExt;

use super::support::*;

#[tokio::test]
async fn health_needs_no_token_and_reports_version_and_schema_hash() {
    let server = Server::start().await;
    let (status, body) = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["schema_hash"], server.schema_hash.as_str());
    let server_time = body["server_time"].as_str().unwrap();
    let ms = ferry_core::time::parse_ms(server_time).unwrap();
    assert!((ms - now_ms()).abs() < 60_000, "{server_time}");
    assert_eq!(
        server_time.len(),
        24,
        "RFC 3339 with milliseconds: {server_time}"
    );
}

#[tokio::test]
async fn health_is_503_unavailable_while_the_store_is_down_and_recovers() {
    let server = Server::start().await;
    server.hooks.down.store(true, Ordering::SeqCst);
    let (status, body) = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        !body.to_string().contains("unable to open database file"),
        "internal details leak: {body}"
    );
    server.hooks.down.store(false, Ordering::SeqCst);
    let (status, _) = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_store_outage_on_an_authenticated_route_is_503_unavailable() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    server.hooks.down.store(true, Ordering::SeqCst);
    let got = server.pull(&device, None, None).await;
    assert_error(&got, 503, "unavailable");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors_through_oneshot() {
    let storage = test_store().await;
    let opened = ferry_server::init::open(&storage.location, None)
        .await
        .unwrap();
    let app = ferry_server::app(ferry_server::AppState::new(
        opened.store,
        ferry_server::Config::new(opened.schema),
    ));
    for (method, path, status, code) in [
        ("GET", "/api/nope", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("DELETE", "/api/sync/health", 405, "method_not_allowed"),
        ("GET", "/api/sync/push", 405, "method_not_allowed"),
        ("POST", "/api/admin/devices", 405, "method_not_allowed"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn responses_are_gzip_compressed_when_the_client_accepts_it() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let changes: Vec<_> = (0..200)
        .map(|i| {
            product(
                &format!("p{i}"),
                "A product with a long enough name",
                &v(i, "n"),
            )
        })
        .collect();
    server
        .push_ok(&device, serde_json::Value::from(changes))
        .await;
    let other = server.pair("Tablet").await;
    // A client without automatic decompression, to see the encoding on the wire.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let response = raw
        .get(format!("{}/api/sync/pull", server.url))
        .bearer_auth(&other.token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.bytes().await.unwrap();
    let mut plain = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut plain,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(body["changes"].as_array().unwrap().len(), 200);
    assert!(compressed.len() < plain.len() / 3);
}
