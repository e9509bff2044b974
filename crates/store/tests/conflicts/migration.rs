//! The migration that keys the conflict log on the losing write (SQLite 5, PostgreSQL 8), on a
//! store that an earlier Ferry left with losing writes logged more than once.

use ferry_server::init::{DATABASE_FILE, StoreLocation, migrate};
use ferry_testkit::{Backend, TestStore};
use serde_json::json;

use super::support::{Fixture, Logged, backend, logged, open};

/// The migration's version on this binary's store.
fn migration() -> usize {
    match backend() {
        Backend::Sqlite => 5,
        Backend::Postgres => 8,
    }
}

/// Runs `sql` on the store's database directly (on PostgreSQL in Ferry's schema); the error's
/// text when it fails.
async fn execute(storage: &TestStore, sql: &str) -> Result<(), String> {
    match &storage.location {
        StoreLocation::DataDir(dir) => {
            let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
            conn.execute_batch(sql).map_err(|e| e.to_string())
        }
        StoreLocation::Postgres { .. } => {
            let client = storage.database.as_ref().unwrap().connect().await;
            let sql = format!("SET search_path TO ferry; {sql}");
            client.batch_execute(&sql).await.map_err(|e| {
                let db = e.as_db_error().map(|d| d.message().to_owned());
                db.unwrap_or_else(|| e.to_string())
            })
        }
    }
}

/// Turns the store back into what the version before the migration left: the index unique
/// per pair of versions, and the schema version one lower.
async fn undo_migration(storage: &TestStore) {
    let index = "DROP INDEX conflicts_once;
                 CREATE UNIQUE INDEX conflicts_once
                   ON conflicts (tenant, tbl, pk_key, loser_version, winner_version);";
    let version = match backend() {
        Backend::Sqlite => format!("PRAGMA user_version = {};", migration() - 1),
        Backend::Postgres => format!("DELETE FROM migrations WHERE version >= {};", migration()),
    };
    execute(storage, &format!("{index}\n{version}"))
        .await
        .unwrap();
}

/// A conflict record inserted as a store writes it.
fn insert(tenant: &str, key: &str, loser: (&str, Option<&str>), winner: (&str, &str)) -> String {
    let device = loser.1.map_or("NULL".to_owned(), |d| format!("'{d}'"));
    format!(
        "INSERT INTO conflicts (tenant, tbl, pk_key, pk, winner_version, winner_device,
                                loser_version, loser_device, loser_deleted, loser_data,
                                recorded_at)
         VALUES ('{tenant}', 'products', '[\"{key}\"]', '{{\"id\":\"{key}\"}}', '{}', '{}', '{}',
                 {device}, false, NULL, '2026-01-01T00:00:00.000Z');",
        winner.0, winner.1, loser.0
    )
}

/// Regression guard for the migration: the records an earlier version logged twice for one
/// losing write (pushed again after the row had moved on) go, the first of each stays, and a
/// write of no device (NULL) is one write too.
#[tokio::test]
async fn the_migration_keeps_the_first_record_of_each_losing_write() {
    let f = Fixture::new().await;
    for tenant in ["t", "u"] {
        f.store.create_tenant(tenant).await.unwrap();
    }
    undo_migration(&f.storage).await;
    let records = [
        insert("t", "p1", ("v2-a", Some("dev_a")), ("v3-b", "dev_b")),
        // A's write again, against newer winners: duplicates.
        insert("t", "p1", ("v2-a", Some("dev_a")), ("v4-c", "dev_c")),
        insert("t", "p1", ("v3-b", Some("dev_b")), ("v4-c", "dev_c")),
        insert("t", "p1", ("v2-a", Some("dev_a")), ("v5-d", "dev_d")),
        // A write of no device, twice.
        insert("t", "p2", ("v1-s", None), ("v2-a", "dev_a")),
        insert("t", "p2", ("v1-s", None), ("v5-d", "dev_d")),
        // The same losing write in another tenant is another write.
        insert("u", "p1", ("v2-a", Some("dev_a")), ("v4-c", "dev_c")),
    ];
    execute(&f.storage, &records.concat()).await.unwrap();
    assert_eq!(logged(f.store.as_ref(), "t").await.len(), 6);

    assert_eq!(migrate(&f.storage.location).await.unwrap(), [migration()]);
    let store = open(&f.storage.location).await;
    let record = |key: &str, loser: (&str, Option<&str>), winner: (&str, &str)| -> Logged {
        let table = "products".to_owned();
        let (loser_version, loser_device) = (loser.0.to_owned(), loser.1.map(str::to_owned));
        let (winner_version, winner_device) = (winner.0.to_owned(), Some(winner.1.to_owned()));
        let pk = json!({"id": key});
        (
            table,
            pk,
            loser_version,
            loser_device,
            winner_version,
            winner_device,
        )
    };
    assert_eq!(
        logged(store.as_ref(), "t").await,
        [
            record("p1", ("v2-a", Some("dev_a")), ("v3-b", "dev_b")),
            record("p1", ("v3-b", Some("dev_b")), ("v4-c", "dev_c")),
            record("p2", ("v1-s", None), ("v2-a", "dev_a")),
        ]
    );
    assert_eq!(
        logged(store.as_ref(), "u").await,
        [record("p1", ("v2-a", Some("dev_a")), ("v4-c", "dev_c"))]
    );

    // The new index holds a write of no device once, too.
    let again = insert("t", "p2", ("v1-s", None), ("v6-e", "dev_e"));
    let refused = execute(&f.storage, &again).await.unwrap_err();
    assert!(refused.to_lowercase().contains("unique"), "{refused}");
    assert_eq!(
        migrate(&f.storage.location).await.unwrap(),
        Vec::<usize>::new()
    );
}
