//! What only the PostgreSQL store has: a dedicated LISTEN connection, which can be killed,
//! and `pg_notify` payloads that other tools may read.

use ferry_store::StoreError;
use ferry_store::jobs::TRIGGER_CHANNEL;
use ferry_testkit::TestDatabase;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::jobs::support::{Fixture, new_run, start, within};

/// The test's own connection to the fixture's database.
async fn connect(fixture: &Fixture) -> tokio_postgres::Client {
    database(fixture).connect().await
}

fn database(fixture: &Fixture) -> &TestDatabase {
    fixture
        .storage
        .database
        .as_ref()
        .expect("the PostgreSQL suite has a database")
}

/// Terminates the store's listener connections; returns how many there were.
async fn terminate_listeners(client: &tokio_postgres::Client) -> usize {
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'ferry-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .len()
}

/// Regression: the system Ferry replaces went deaf after its LISTEN connection dropped.
#[tokio::test]
async fn a_terminated_listener_connection_reports_unavailable_and_no_trigger_is_lost() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let admin = connect(&fixture).await;
    let mut listener = store.listen().await.unwrap();
    assert_eq!(terminate_listeners(&admin).await, 1);

    let error = within(listener.next()).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(matches!(
        within(listener.ping()).await,
        Err(StoreError::Unavailable(_))
    ));
    // Nobody listens now; the trigger waits in its table.
    let missed = store.create_trigger("billing", "api").await.unwrap();

    let mut reopened = store.listen().await.unwrap();
    reopened.ping().await.unwrap();
    let next = store.create_trigger("billing", "cli").await.unwrap();
    assert_eq!(within(reopened.next()).await.unwrap().trigger_id, next.id);
    let run = start(store, &new_run("billing", "w1")).await;
    assert_eq!(run.triggers, [missed, next]);
}

#[tokio::test]
async fn the_listener_has_its_own_connection_outside_the_pool() {
    let fixture = Fixture::new().await;
    let admin = connect(&fixture).await;
    assert_eq!(listener_connections(&admin).await, 0);
    let listener = fixture.store.listen().await.unwrap();
    assert_eq!(listener_connections(&admin).await, 1);
    drop(listener);
    // The connection closes when the listener goes; wait for the server to see it.
    within(async {
        while listener_connections(&admin).await != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

async fn listener_connections(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'ferry-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Other tools (the benchmark's raw NOTIFY measurement, `psql`) read the same payload.
#[tokio::test]
async fn a_trigger_notifies_its_id_job_and_source_as_json() {
    let fixture = Fixture::new().await;
    let (client, mut notifications) = raw_listener(database(&fixture)).await;
    client
        .batch_execute(&format!("LISTEN {TRIGGER_CHANNEL}"))
        .await
        .unwrap();
    let trigger = fixture
        .store
        .create_trigger("billing", "api")
        .await
        .unwrap();
    let payload = within(notifications.recv()).await.unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload,
        json!({"trigger_id": trigger.id, "job": "billing", "source": "api"})
    );
}

#[tokio::test]
async fn a_notification_that_is_not_a_trigger_is_skipped() {
    let fixture = Fixture::new().await;
    let admin = connect(&fixture).await;
    let mut listener = fixture.store.listen().await.unwrap();
    admin
        .execute("SELECT pg_notify($1, 'not a trigger')", &[&TRIGGER_CHANNEL])
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_notify($1, '{\"job\": \"billing\"}')",
            &[&TRIGGER_CHANNEL],
        )
        .await
        .unwrap();
    let trigger = fixture
        .store
        .create_trigger("billing", "api")
        .await
        .unwrap();
    assert_eq!(
        within(listener.next()).await.unwrap().trigger_id,
        trigger.id
    );
}

/// Regression guard for the single-flight index: a start that must wait for another one's
/// uncommitted run answers busy once that run commits.
#[tokio::test]
async fn a_start_waiting_on_an_uncommitted_run_answers_busy_after_it_commits() {
    let fixture = Fixture::new().await;
    let mut admin = connect(&fixture).await;
    let admin_check = connect(&fixture).await;
    let tx = admin.transaction().await.unwrap();
    let id: i64 = tx
        .query_one(
            "INSERT INTO ferry.runs (job, trigger, tier, status, worker, started_at, heartbeat_at)
             VALUES ('billing', 'manual', 'active', 'running', 'other', now(), now())
             RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let store = std::sync::Arc::clone(&fixture.store);
    let waiting = tokio::spawn(async move { store.start_run(&new_run("billing", "w1")).await });
    // Commit only once the start is blocked on the uncommitted row.
    within(async {
        loop {
            let blocked: i64 = admin_check
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if blocked == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(!waiting.is_finished());
    tx.commit().await.unwrap();
    let answer = within(waiting).await.unwrap().unwrap();
    assert_eq!(answer, ferry_store::jobs::StartedRun::Busy { running: id });
}

/// A plain connection that has its notifications' payloads forwarded.
async fn raw_listener(
    database: &TestDatabase,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message {
                let _ = sender.send(notification.payload().to_owned());
            }
        }
    });
    (client, receiver)
}
