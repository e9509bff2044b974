//! The billing migration on a store that the Ferry before billing left behind.

use ferry_server::init::{DATABASE_FILE, StoreLocation, migrate, open_jobs};
use ferry_store::billing::{LedgerWrite, NewMapping, SessionState};

use super::support::{Fixture, event, new, open, session};

/// The billing tables, children first.
const TABLES: [&str; 4] = [
    "billing_events",
    "billing_sessions",
    "billing_mappings",
    "billing_cursor",
];

/// Turns the fixture's store back into what the version before billing left: the billing
/// tables gone, the later migrations undone too (on SQLite the per-tenant sequences; the
/// conflict log's index per pair of versions back on both), and the schema version one lower.
/// Returns the versions a migration brings back.
async fn undo_billing_migration(fixture: &Fixture) -> Vec<usize> {
    match &fixture.storage.location {
        StoreLocation::DataDir(dir) => {
            let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
            let version: usize = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(
                version, 5,
                "billing is SQLite migration 3, per-tenant sequences 4, conflicts per loser 5"
            );
            conn.execute_batch(
                "DROP INDEX conflicts_once;
                 CREATE UNIQUE INDEX conflicts_once
                   ON conflicts (tenant, tbl, pk_key, loser_version, winner_version);
                 ALTER TABLE tenants DROP COLUMN last_seq;
                 CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
                 INSERT INTO counters (name, value) VALUES ('seq', 0);",
            )
            .unwrap();
            for table in TABLES {
                conn.execute_batch(&format!("DROP TABLE {table}")).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            vec![3, 4, 5]
        }
        StoreLocation::Postgres { .. } => {
            let database = fixture.storage.database.as_ref().unwrap();
            let client = database.connect().await;
            let latest: i32 = client
                .query_one("SELECT max(version) FROM ferry.migrations", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                latest, 8,
                "billing is PostgreSQL migration 6, console events 7, conflicts per loser 8"
            );
            // Migrations 7 and 8 came after billing: 7's triggers go with their function, and
            // 8's index is the one before it.
            client
                .batch_execute(
                    "DROP FUNCTION ferry.notify_console() CASCADE;
                     DROP INDEX ferry.conflicts_once;
                     CREATE UNIQUE INDEX conflicts_once ON ferry.conflicts
                       (tenant, tbl, pk_key, loser_version, winner_version);",
                )
                .await
                .unwrap();
            for table in TABLES {
                client
                    .batch_execute(&format!("DROP TABLE ferry.{table}"))
                    .await
                    .unwrap();
            }
            client
                .execute("DELETE FROM ferry.migrations WHERE version >= 6", &[])
                .await
                .unwrap();
            vec![6, 7, 8]
        }
    }
}

#[tokio::test]
async fn a_store_from_before_billing_migrates_on_open_and_keeps_its_data() {
    let fixture = Fixture::new().await;
    let location = fixture.storage.location.clone();
    // Data the earlier version has too: a pending trigger of a sync job.
    let trigger = open_jobs(&location)
        .await
        .unwrap()
        .create_trigger("billing", "api")
        .await
        .unwrap();
    let versions = undo_billing_migration(&fixture).await;

    assert_eq!(migrate(&location).await.unwrap(), versions);
    assert_eq!(migrate(&location).await.unwrap(), Vec::<usize>::new());

    let billing = open(&location).await;
    billing
        .put_mapping(&NewMapping {
            id_tag: "TAG-1".into(),
            customer: "cust-1".into(),
            subscription: None,
        })
        .await
        .unwrap();
    let write = LedgerWrite {
        sessions: vec![new(session(1, "TAG-1", SessionState::Billed))],
        events: vec![event(1, 0, 10)],
        ..LedgerWrite::default()
    };
    let written = billing.write_ledger(None, &write).await.unwrap();
    assert_eq!(written.events_inserted, 1);
    assert_eq!(billing.pending_events(None, 10).await.unwrap().len(), 1);
    assert_eq!(billing.mappings().await.unwrap().len(), 1);

    let jobs = open_jobs(&location).await.unwrap();
    assert_eq!(jobs.pending_triggers("billing").await.unwrap(), [trigger]);
}
