//! Installing tracking into an app's file: idempotent, adopting, and refusing a different schema.

use ferry_client::replica::{Replica, ReplicaOptions};
use ferry_client::{Client, ClientOptions, Error};

use crate::support::*;

fn triggers_and_indexes(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare(
        "SELECT type || ' ' || name FROM sqlite_schema
         WHERE type IN ('trigger', 'index') AND name LIKE '\\_ferry\\_%' ESCAPE '\\'
         ORDER BY 1",
    )
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[test]
fn install_is_idempotent_and_adopts_existing_rows_as_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    // The app already has two of the tables, with rows, before it is ever paired.
    let app = app_connection(&path);
    app.execute_batch(
        "CREATE TABLE categories (
           id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL,
           parent_id TEXT REFERENCES categories (id));
         CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL,
           category_id TEXT REFERENCES categories (id));
         INSERT INTO categories (id, name) VALUES ('c1', 'Drinks'), ('c2', 'Food');
         INSERT INTO items (id, name, category_id) VALUES (1, 'Cola', 'c1');",
    )
    .unwrap();

    let replica = Replica::install(&path, DDL, DEVICE, ReplicaOptions::default()).unwrap();
    assert_eq!(
        replica.pending().unwrap(),
        3,
        "existing rows are adopted as dirty"
    );
    let versions = |conn: &rusqlite::Connection| -> Vec<(String, i64)> {
        conn.prepare("SELECT _ferryVersion, _isDirty FROM categories ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let first = versions(&app);
    assert!(
        first
            .iter()
            .all(|(v, dirty)| v.ends_with(DEVICE) && *dirty == 1)
    );
    // Missing tables are created from the server's DDL.
    let tables: i64 = app
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('files', 'stock')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 2);
    let mode: String = app
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let installed = triggers_and_indexes(&app);
    assert_eq!(
        installed
            .iter()
            .filter(|n| n.starts_with("trigger"))
            .count(),
        16
    );
    assert!(installed.contains(&"index _ferry_items_dirty".to_string()));
    drop(replica);

    // Again: nothing changes, nothing is added twice, adopted rows keep their versions.
    let replica = Replica::install(&path, DDL, DEVICE, ReplicaOptions::default()).unwrap();
    assert_eq!(versions(&app), first);
    assert_eq!(triggers_and_indexes(&app), installed);
    assert_eq!(replica.pending().unwrap(), 3);
    let columns: i64 = app
        .query_row(
            "SELECT count(*) FROM pragma_table_info('categories')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(columns, 6, "three data columns and Ferry's three");

    // Rows the app wrote while tracking was off (say, before an upgrade) are adopted too.
    app.execute_batch(
        "INSERT INTO categories (id, name, _isDirty) VALUES ('c3', 'Untracked', 0);
         UPDATE categories SET _ferryVersion = NULL, _isDirty = 0 WHERE id = 'c3';",
    )
    .unwrap();
    drop(replica);
    let replica = Replica::install(&path, DDL, DEVICE, ReplicaOptions::default()).unwrap();
    assert_eq!(replica.pending().unwrap(), 4);
}

#[test]
fn install_refuses_an_existing_table_whose_schema_differs_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let app = app_connection(&path);
    app.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL,
           category_id TEXT, discontinued INTEGER);
         CREATE TABLE stock (store TEXT, sku TEXT, qty INTEGER, PRIMARY KEY (store, sku));",
    )
    .unwrap();
    let err = Replica::install(&path, DDL, DEVICE, ReplicaOptions::default()).unwrap_err();
    match &err {
        Error::TablesDiffer { tables } => assert_eq!(tables, "items, stock"),
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("items, stock"), "{err}");
    let ferry_tables: i64 = app
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_ferry%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ferry_tables, 0);
}

#[test]
fn the_schema_hash_is_the_servers_and_follows_app_migrations() {
    let f = Fixture::new();
    let server = ferry_schema::hash(&ferry_schema::parse_ddl(DDL).unwrap());
    assert_eq!(f.replica.schema_hash().unwrap(), server);
    f.app
        .execute("ALTER TABLE items ADD COLUMN barcode TEXT", [])
        .unwrap();
    assert_ne!(f.replica.schema_hash().unwrap(), server);
}

#[test]
fn a_device_id_that_cannot_be_a_clock_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Replica::install(
        &dir.path().join("app.db"),
        DDL,
        "dev 1",
        ReplicaOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidDeviceId(_)), "{err}");
}

#[test]
fn opening_a_file_that_was_never_paired_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let err = Client::open(&missing, ClientOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotPaired(_)), "{err}");
    assert!(!missing.exists(), "opening must not create the file");

    let plain = dir.path().join("plain.db");
    app_connection(&plain)
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    assert!(matches!(
        Client::open(&plain, ClientOptions::default()),
        Err(Error::NotPaired(_))
    ));

    // Installed but without credentials is not paired either.
    let f = Fixture::new();
    let err = Client::open(&f.path, ClientOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not paired"), "{err}");
}

/// The support schema grown: a new column on `items` and a new table.
fn grown_ddl() -> String {
    DDL.replace(
        "  category_id TEXT REFERENCES categories (id)\n);",
        "  category_id TEXT REFERENCES categories (id),\n  barcode TEXT\n);",
    ) + "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);"
}

#[test]
fn a_grown_schema_is_adopted_keeping_pending_changes_and_tracking_the_new_parts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut replica = Replica::install(&path, DDL, DEVICE, ReplicaOptions::default()).unwrap();
    let app = app_connection(&path);
    app.execute("INSERT INTO items (id, name) VALUES (1, 'Cola')", [])
        .unwrap();
    assert_eq!(replica.pending().unwrap(), 1);
    // The app's own update added the new table before Ferry heard of it, with a row.
    app.execute_batch(
        "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);
         INSERT INTO notes (id, body) VALUES ('n1', 'Open at 9');",
    )
    .unwrap();

    let added = replica.adopt_schema(&grown_ddl()).unwrap();
    assert_eq!(
        added.to_string(),
        "new table(s) notes; new column(s) items.barcode"
    );
    assert_eq!(
        replica.schema_hash().unwrap(),
        ferry_schema::hash(&ferry_schema::parse_ddl(&grown_ddl()).unwrap())
    );
    // The pending item, and the note the app wrote before tracking, wait to be pushed.
    assert_eq!(replica.pending().unwrap(), 2);
    // Writes to the new column and the new table are tracked from now on.
    app.execute("UPDATE items SET barcode = '4006' WHERE id = 1", [])
        .unwrap();
    app.execute(
        "INSERT INTO notes (id, body) VALUES ('n2', 'Closed Sunday')",
        [],
    )
    .unwrap();
    assert_eq!(replica.pending().unwrap(), 3);
    // The file remembers the schema: reopened, it is the grown one.
    drop(replica);
    let reopened = Replica::open(&path, ReplicaOptions::default()).unwrap();
    assert!(reopened.schema().table("notes").is_some());
}

#[test]
fn a_schema_that_does_more_than_add_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut replica = Replica::install(&path, DDL, DEVICE, ReplicaOptions::default()).unwrap();
    let before = replica.schema_hash().unwrap();
    let shrunk = DDL.replace("  price       REAL,\n", "");
    let refused = replica.adopt_schema(&shrunk).unwrap_err();
    assert!(
        matches!(refused, Error::SchemaNotAdditive { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("items.price"), "{refused}");
    assert_eq!(replica.schema_hash().unwrap(), before);
}
