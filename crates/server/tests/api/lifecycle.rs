//! Store start-up and graceful shutdown.

use std::sync::atomic::Ordering;

use reqwest::Method;
use serde_json::json;

use ferry_server::init::StoreLocation;

use super::support::*;

#[tokio::test]
async fn first_start_makes_an_admin_token_and_later_starts_keep_the_schema() {
    let storage = test_store().await;
    let location = &storage.location;
    let ddl = "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);";
    let first = ferry_server::init::open(location, Some(ddl)).await.unwrap();
    let token = first.admin_token.clone().unwrap();
    // A data directory keeps the token in a file only its owner may read.
    if let StoreLocation::DataDir(dir) = location {
        let file = dir.join(ferry_server::init::ADMIN_TOKEN_FILE);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
    assert!(matches!(
        first.store.authenticate(&token).await.unwrap(),
        Some(ferry_store::Principal::Operator {
            role: ferry_store::Role::Admin,
            ..
        })
    ));
    drop(first);

    // Restarted without a schema: the one it was started with, and no new token.
    let second = ferry_server::init::open(location, None).await.unwrap();
    assert!(second.admin_token.is_none());
    assert_eq!(second.schema.tables.len(), 1);
    assert_eq!(second.schema.tables[0].name, "notes");
    assert_eq!(second.schema_ddl, ddl);
    assert!(second.store.authenticate(&token).await.unwrap().is_some());

    // Without any schema ever: the built-in point-of-sale one.
    let fresh = test_store().await;
    let opened = ferry_server::init::open(&fresh.location, None)
        .await
        .unwrap();
    assert!(opened.schema.table("sale_items").is_some());
    let keyless = ferry_server::init::open(&fresh.location, Some("CREATE TABLE x (a)")).await;
    assert!(keyless.is_err());
}

#[tokio::test]
async fn a_pairing_code_made_through_a_second_opening_works_on_the_running_server() {
    let server = Server::start().await;
    // What `ferry pair-code` does while the server runs.
    let cli = ferry_server::init::open(&server.storage.location, None)
        .await
        .unwrap();
    let code = ferry_server::init::create_pairing_code(
        &cli.store,
        DEFAULT_TENANT,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/devices/pair",
            None,
            Some(json!({"code": code.code, "name": "CLI"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn shutdown_waits_for_a_push_in_flight() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    server.hooks.hold_push.store(true, Ordering::SeqCst);
    let started = server.hooks.push_started.notified();
    let push = server.spawn_push(&device, json!([product("p1", "In flight", &v(1, "a"))]));
    started.await;
    // The push is inside the handler: shut down, then let it finish.
    let (store, _storage) = (server.store.clone(), server.storage.clone());
    let hooks = server.hooks.clone();
    let url = server.url.clone();
    let token = server.shutdown_token();
    token.cancel();
    hooks.release_push.notify_one();
    let (status, body) = push.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
    server.stop().await.unwrap();
    // Stopped: new connections are refused, and the write was kept.
    assert!(
        reqwest::get(format!("{url}/api/sync/health"))
            .await
            .is_err()
    );
    let other = store.redeem_pairing_code("nope", "x", None).await.unwrap();
    assert!(other.is_none());
    let devices = store.list_devices(DEFAULT_TENANT).await.unwrap();
    assert!(devices[0].last_push_at.is_some());
}

#[tokio::test]
async fn shutdown_stops_waiting_for_a_stuck_request_after_the_grace_period() {
    let server = Server::start_with(None, |config| {
        config.shutdown_grace = std::time::Duration::from_millis(200);
    })
    .await;
    let device = server.pair("Till").await;
    server.hooks.hold_push.store(true, Ordering::SeqCst);
    let started = server.hooks.push_started.notified();
    let push = server.spawn_push(&device, json!([product("p1", "Stuck", &v(1, "a"))]));
    started.await;
    // The push never finishes; the server stops anyway once the grace period is over.
    let (store, _storage) = (server.store.clone(), server.storage.clone());
    server.stop().await.unwrap();
    assert!(!push.is_finished());
    push.abort();
    let devices = store.list_devices(DEFAULT_TENANT).await.unwrap();
    assert!(
        devices[0].last_push_at.is_none(),
        "the stuck push wrote nothing"
    );
}
