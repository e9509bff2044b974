//! The database failing under the server: every failure is `503 unavailable`, nothing is
//! half-written, and service resumes by itself.

use std::time::Duration;

use ferry_server::init::StoreLocation;
use ferry_store::PgOptions;
use ferry_testkit::{Backend, TestDatabase, TestStore};
use reqwest::Method;
use serde_json::json;

use super::proxy::Proxy;
use super::{ROW_KEY, TENANT_ROWS, holding, stored_rows, wait_for};
use crate::api::support::*;

/// Options that let a fault show within a test's patience.
fn impatient() -> PgOptions {
    PgOptions {
        connect_timeout: Duration::from_secs(2),
        acquire_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    }
}

/// A server on a new database with these pool options.
async fn server_with(options: PgOptions) -> Server {
    let storage = TestStore::with_options(Backend::Postgres, options).await;
    Server::start_in(storage, None, |_| {}).await
}

/// Waits until health answers 200 again; every answer before that must be a 503.
async fn service_resumes(server: &Server) {
    wait_for("health to answer 200", || async {
        let (status, body) = server
            .call(Method::GET, "/api/sync/health", None, None)
            .await;
        assert!(status == 200 || status == 503, "{status} {body}");
        status == 200
    })
    .await;
}

#[tokio::test]
async fn a_killed_connection_fails_its_push_with_503_writing_nothing_and_service_resumes() {
    let server = Server::start().await;
    let database = server.storage.database.as_ref().unwrap();
    let (till, reader) = (server.pair("Till").await, server.pair("reader").await);
    let changes = json!([
        product("p1", "One", &v(1, "a")),
        product("p2", "Two", &v(1, "a"))
    ]);

    // Stop the push inside its transaction, while it writes its rows, then kill its
    // connection there.
    let mut blocker = database.connect().await;
    let hold = holding(&mut blocker, ROW_KEY, &[&"products", &r#"["p2"]"#]).await;
    let push = server.spawn_push(&till, changes.clone());
    database.lock_waiters(1).await;
    let killer = database.connect().await;
    killer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'ferry'
               AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap();
    let failed = push.await.unwrap();
    assert_error(&failed, 503, "unavailable");
    hold.rollback().await.unwrap();
    assert_eq!(stored_rows(database).await, 0, "the failed push left rows");
    let (pulled, _) = server.pull_all(&reader, None).await;
    assert!(pulled.is_empty(), "{pulled:?}");

    // Kill every connection Ferry has: the pool replaces them without a restart.
    killer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'ferry'",
            &[],
        )
        .await
        .unwrap();
    service_resumes(&server).await;
    assert_eq!(server.push_ok(&till, changes).await, ["applied", "applied"]);
    let (pulled, _) = server.pull_all(&reader, None).await;
    assert_eq!(pulled.len(), 2);
}

#[tokio::test]
async fn while_the_database_is_away_every_route_is_503_and_service_resumes_when_it_returns() {
    let database = TestDatabase::create().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let storage = TestStore {
        location: StoreLocation::Postgres {
            url: format!("postgres://postgres@{}/{}", proxy.addr, database.name),
            options: impatient(),
        },
        dir: tempfile::tempdir().unwrap(),
        database: Some(database),
    };
    let server = Server::start_in(storage, None, |_| {}).await;
    let till = server.pair("Till").await;
    let first = json!([product("p1", "One", &v(1, "a"))]);
    assert_eq!(server.push_ok(&till, first).await, ["applied"]);

    proxy.cut();
    let health = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_error(&health, 503, "unavailable");
    assert_eq!(health.1["status"], "unavailable");
    let pushed = server
        .push(&till, json!([product("p2", "Two", &v(2, "a"))]))
        .await;
    assert_error(&pushed, 503, "unavailable");
    assert_error(&server.pull(&till, None, None).await, 503, "unavailable");
    let code = server
        .call(
            Method::POST,
            "/api/admin/pairing-codes",
            Some(&server.admin),
            Some(json!({})),
        )
        .await;
    assert_error(&code, 503, "unavailable");

    proxy.restore();
    service_resumes(&server).await;
    let reader = server.pair("reader").await;
    let (pulled, _) = server.pull_all(&reader, None).await;
    let ids: Vec<&str> = pulled
        .iter()
        .map(|c| c["pk"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1"], "only the acknowledged push is stored");
}

#[tokio::test]
async fn a_statement_past_the_timeout_is_cut_off_with_503_and_writes_nothing() {
    let options = PgOptions {
        statement_timeout: Duration::from_millis(300),
        ..impatient()
    };
    let server = server_with(options).await;
    let database = server.storage.database.as_ref().unwrap();
    let till = server.pair("Till").await;
    // Holding the tenant's row makes the push wait for its sequence past the timeout.
    let mut blocker = database.connect().await;
    let hold = holding(&mut blocker, TENANT_ROWS, &[]).await;
    let changes = json!([product("p1", "One", &v(1, "a"))]);
    assert_error(
        &server.push(&till, changes.clone()).await,
        503,
        "unavailable",
    );
    hold.rollback().await.unwrap();
    assert_eq!(stored_rows(database).await, 0);
    assert_eq!(server.push_ok(&till, changes).await, ["applied"]);
}

#[tokio::test]
async fn with_every_pooled_connection_busy_a_request_gets_503_after_the_acquire_timeout() {
    let options = PgOptions {
        pool_size: 1,
        acquire_timeout: Duration::from_millis(300),
        ..impatient()
    };
    let server = server_with(options).await;
    let database = server.storage.database.as_ref().unwrap();
    let till = server.pair("Till").await;
    // A push that waits on a lock holds the pool's only connection.
    let mut blocker = database.connect().await;
    let hold = holding(&mut blocker, TENANT_ROWS, &[]).await;
    let push = server.spawn_push(&till, json!([product("p1", "One", &v(1, "a"))]));
    database.lock_waiters(1).await;
    let health = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_error(&health, 503, "unavailable");

    hold.rollback().await.unwrap();
    let (status, body) = push.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .call(Method::GET, "/api/sync/health", None, None)
        .await;
    assert_eq!(status, 200);
}
