//! The SQLite store through the `Store` trait, on real files.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Schema;
use ferry_core::time::now_ms;
use ferry_proto::{Outcome, RejectCode, RowChange};
use ferry_store::{
    ConflictQuery, Cursor, DEFAULT_TENANT, DeviceKey, PageLimit, Principal, PushBatch, Role,
    SqliteStore, Store, StoreError,
};
use serde_json::{Value, json};

mod support;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    schema: Arc<Schema>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).unwrap());
        store.create_tenant(DEFAULT_TENANT).await.unwrap();
        let schema = Arc::new(ferry_schema::parse_ddl(ferry_schema::POINT_OF_SALE).unwrap());
        Fixture { dir, store, schema }
    }

    async fn device(&self, tenant: &str) -> DeviceKey {
        support::pair_device(self.store.as_ref(), tenant).await
    }

    async fn push(
        &self,
        device: &DeviceKey,
        changes: Vec<Value>,
    ) -> Vec<(Outcome, Option<RejectCode>)> {
        let batch = support::batch(&self.schema, changes);
        let results = self.store.push(device, batch).await.unwrap();
        results.into_iter().map(|r| (r.outcome, r.code)).collect()
    }

    async fn pull_all(&self, device: &DeviceKey, since: Cursor) -> (Vec<RowChange>, Cursor) {
        let (mut changes, mut cursor) = (Vec::new(), since);
        loop {
            let page = self
                .store
                .pull(device, cursor, PageLimit::rows(2))
                .await
                .unwrap();
            let parsed: Vec<RowChange> = serde_json::from_str(&page.changes_json).unwrap();
            assert_eq!(parsed.len(), page.count);
            assert!(page.cursor.seq() >= cursor.seq(), "cursors never go back");
            changes.extend(parsed);
            cursor = page.cursor;
            if !page.has_more {
                return (changes, cursor);
            }
        }
    }
}

fn v(step: i64) -> String {
    ferry_core::version::format(now_ms() / 3_600_000 * 3_600_000 - 3_600_000 + step, 0, "n")
}

fn product(id: &str, version: &str) -> Value {
    json!({"table": "products", "pk": {"id": id}, "version": version, "data": {"id": id, "name": id}})
}

#[tokio::test]
async fn data_survives_reopening_and_migrations_run_once() {
    let f = Fixture::new().await;
    let device = f.device(DEFAULT_TENANT).await;
    f.push(&device, vec![product("p1", &v(1))]).await;
    f.store
        .set_schema_ddl("CREATE TABLE t (id TEXT PRIMARY KEY);")
        .await
        .unwrap();
    let path = f.dir.path().join("s.sqlite");
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(
        reopened.schema_ddl().await.unwrap().as_deref(),
        Some("CREATE TABLE t (id TEXT PRIMARY KEY);")
    );
    assert!(!reopened.create_tenant(DEFAULT_TENANT).await.unwrap());
    let reader = f.device(DEFAULT_TENANT).await;
    let page = reopened
        .pull(&reader, Cursor::START, PageLimit::rows(10))
        .await
        .unwrap();
    assert_eq!(page.count, 1);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A file from a newer Ferry is refused rather than misread.
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Internal(_))
    ));
}

#[tokio::test]
async fn tokens_and_pairing_codes_are_stored_only_as_hashes() {
    let f = Fixture::new().await;
    let admin = f
        .store
        .create_operator_token(DEFAULT_TENANT, Role::Admin, None)
        .await
        .unwrap();
    assert!(admin.starts_with("fy_"));
    let code = f
        .store
        .create_pairing_code(DEFAULT_TENANT, Duration::from_secs(60))
        .await
        .unwrap();
    let paired = f
        .store
        .redeem_pairing_code(&code.code, "d", Some("linux"))
        .await
        .unwrap()
        .unwrap();
    let conn = rusqlite::Connection::open(f.dir.path().join("s.sqlite")).unwrap();
    let dump: Vec<String> = conn
        .prepare("SELECT hash FROM tokens UNION ALL SELECT hash FROM pairing_codes")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(dump.len(), 3);
    for secret in [
        &admin,
        &paired.token,
        &code.code,
        &code.code.replace('-', ""),
    ] {
        assert!(
            dump.iter().all(|h| h != secret && h.len() == 64),
            "{secret} stored in clear"
        );
    }
    assert_eq!(
        f.store.authenticate(&paired.token).await.unwrap(),
        Some(Principal::Device(DeviceKey {
            tenant: DEFAULT_TENANT.into(),
            device_id: paired.device_id.clone()
        }))
    );
    assert_eq!(
        f.store.authenticate(&admin).await.unwrap(),
        Some(Principal::Operator {
            tenant: DEFAULT_TENANT.into(),
            role: Role::Admin
        })
    );
    assert_eq!(
        f.store.authenticate(&format!("{admin}x")).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn authenticating_a_device_token_checks_the_device_in() {
    let f = Fixture::new().await;
    let paired = support::pair(f.store.as_ref(), DEFAULT_TENANT).await;
    let (token, device) = (
        paired.token,
        DeviceKey {
            tenant: paired.tenant,
            device_id: paired.device_id,
        },
    );
    let admin = f
        .store
        .create_operator_token(DEFAULT_TENANT, Role::Admin, None)
        .await
        .unwrap();
    assert_eq!(
        f.store
            .authenticate_and_check_in(&admin, Some("9.9.9"))
            .await
            .unwrap(),
        Some(Principal::Operator {
            tenant: DEFAULT_TENANT.into(),
            role: Role::Admin
        })
    );
    assert_eq!(
        f.store
            .authenticate_and_check_in("fy_unknown", Some("9.9.9"))
            .await
            .unwrap(),
        None
    );
    let listed = &f.store.list_devices(DEFAULT_TENANT).await.unwrap()[0];
    assert!(listed.last_seen_at.is_none() && listed.version.is_none());
    assert_eq!(
        f.store
            .authenticate_and_check_in(&token, Some("2.1.0"))
            .await
            .unwrap(),
        Some(Principal::Device(device))
    );
    let listed = &f.store.list_devices(DEFAULT_TENANT).await.unwrap()[0];
    assert!(listed.last_seen_at.is_some());
    assert_eq!(listed.version.as_deref(), Some("2.1.0"));
}

#[tokio::test]
async fn a_code_redeemed_from_many_threads_pairs_once() {
    let f = Fixture::new().await;
    let code = f
        .store
        .create_pairing_code(DEFAULT_TENANT, Duration::from_secs(60))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, code) = (f.store.clone(), code.code.clone());
            tokio::spawn(async move { store.redeem_pairing_code(&code, "d", None).await.unwrap() })
        })
        .collect();
    let mut paired = 0;
    for task in tasks {
        paired += usize::from(task.await.unwrap().is_some());
    }
    assert_eq!(paired, 1);
    assert_eq!(f.store.list_devices(DEFAULT_TENANT).await.unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_tenants_are_reported() {
    let f = Fixture::new().await;
    let error = f
        .store
        .create_pairing_code("nobody", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::UnknownTenant(t) if t == "nobody"));
    let error = f
        .store
        .create_operator_token("nobody", Role::Viewer, None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::UnknownTenant(_)));
}

#[tokio::test]
async fn the_cursor_passes_own_rows_and_stays_put_when_nothing_is_new() {
    let f = Fixture::new().await;
    let a = f.device(DEFAULT_TENANT).await;
    let b = f.device(DEFAULT_TENANT).await;
    f.push(&a, vec![product("a1", &v(1)), product("a2", &v(1))])
        .await;
    f.push(&b, vec![product("b1", &v(2))]).await;
    f.push(&a, vec![product("a3", &v(3))]).await;

    // Incremental from before everything: a's own rows are left out.
    let (changes, cursor) = f.pull_all(&a, Cursor::from_seq(0)).await;
    assert_eq!(ids(&changes), ["b1"]);
    assert_eq!(
        cursor,
        Cursor::from_seq(4),
        "past a3, the tenant's last write"
    );
    let page = f.store.pull(&a, cursor, PageLimit::rows(10)).await.unwrap();
    assert_eq!((page.count, page.cursor, page.has_more), (0, cursor, false));
    assert_eq!(page.changes_json, "[]");

    // A page of exactly `limit` rows with nothing after it has no more.
    let page = f
        .store
        .pull(&b, Cursor::from_seq(0), PageLimit::rows(3))
        .await
        .unwrap();
    assert_eq!((page.count, page.has_more), (3, false));
    let page = f
        .store
        .pull(&b, Cursor::from_seq(0), PageLimit::rows(2))
        .await
        .unwrap();
    assert_eq!(
        (page.count, page.has_more, page.cursor),
        (2, true, Cursor::from_seq(2))
    );
}

/// Guards issue 13: a pull from the start holds the device's own rows on every page.
#[tokio::test]
async fn a_snapshot_holds_own_rows_on_every_page_and_ends_incremental() {
    let f = Fixture::new().await;
    let a = f.device(DEFAULT_TENANT).await;
    let b = f.device(DEFAULT_TENANT).await;
    f.push(&a, vec![product("a1", &v(1)), product("a2", &v(1))])
        .await;
    f.push(&b, vec![product("b1", &v(2))]).await;
    f.push(&a, vec![product("a3", &v(3))]).await;

    let first = f
        .store
        .pull(&a, Cursor::START, PageLimit::rows(2))
        .await
        .unwrap();
    assert_eq!((first.count, first.has_more), (2, true));
    assert!(
        first.cursor.is_snapshot(),
        "a snapshot's next page is one too"
    );
    let (changes, cursor) = f.pull_all(&a, Cursor::START).await;
    assert_eq!(ids(&changes), ["a1", "a2", "b1", "a3"]);
    assert_eq!(
        cursor,
        Cursor::from_seq(4),
        "the last page's cursor is incremental"
    );
    // So the device's next cycle leaves its own rows out again.
    f.push(&a, vec![product("a4", &v(4))]).await;
    f.push(&b, vec![product("b2", &v(5))]).await;
    let (changes, _) = f.pull_all(&a, cursor).await;
    assert_eq!(ids(&changes), ["b2"]);
}

fn ids(changes: &[RowChange]) -> Vec<&str> {
    changes
        .iter()
        .map(|c| c.pk["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn tombstones_are_stored_without_data_and_win_over_older_writes() {
    let f = Fixture::new().await;
    let a = f.device(DEFAULT_TENANT).await;
    let b = f.device(DEFAULT_TENANT).await;
    let tombstone = json!({"table": "products", "pk": {"id": "p"}, "version": v(5), "deleted": true,
                           "data": {"id": "p", "name": "ignored"}});
    assert_eq!(
        f.push(&a, vec![tombstone]).await,
        [(Outcome::Applied, None)]
    );
    assert_eq!(
        f.push(&b, vec![product("p", &v(4))]).await,
        [(Outcome::Superseded, None)]
    );
    let (changes, _) = f.pull_all(&b, Cursor::START).await;
    assert_eq!(changes.len(), 1);
    assert!(changes[0].deleted && changes[0].data.is_none());
    // A newer write brings the row back.
    assert_eq!(
        f.push(&b, vec![product("p", &v(6))]).await,
        [(Outcome::Applied, None)]
    );
    let conflicts = f
        .store
        .conflicts(
            DEFAULT_TENANT,
            ConflictQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(conflicts.len(), 2);
    assert!(
        conflicts[0].loser_deleted,
        "the tombstone lost to b's newer write"
    );
    assert_eq!(conflicts[1].loser_version, v(4));
}

#[tokio::test]
async fn a_push_records_pending_and_times_on_the_device() {
    let f = Fixture::new().await;
    let a = f.device(DEFAULT_TENANT).await;
    let batch = PushBatch {
        schema: f.schema.clone(),
        changes: vec![],
        pending: 42,
        now_ms: now_ms(),
        max_clock_skew: Duration::from_secs(300),
    };
    assert!(f.store.push(&a, batch).await.unwrap().is_empty());
    f.store.check_in(&a, Some("2.0.0")).await.unwrap();
    f.store.check_in(&a, None).await.unwrap();
    let device = &f.store.list_devices(DEFAULT_TENANT).await.unwrap()[0];
    assert_eq!(device.pending, 42);
    assert!(device.last_push_at.is_some() && device.last_seen_at.is_some());
    assert_eq!(device.version.as_deref(), Some("2.0.0"));
    assert!(
        f.store
            .revoke_device(DEFAULT_TENANT, &a.device_id)
            .await
            .unwrap()
    );
    assert!(!f.store.revoke_device("other", &a.device_id).await.unwrap());
}

/// Guards issue 13: the upgrade from one global sequence to a sequence per tenant keeps every
/// device's saved cursor meaning what it meant (no row missed, no device reset), and from then
/// on a tenant's cursors move with its own writes only.
#[tokio::test]
async fn the_upgrade_to_sequences_per_tenant_keeps_saved_cursors() {
    let f = Fixture::new().await;
    f.store.create_tenant("acme").await.unwrap();
    let ours = f.device(DEFAULT_TENANT).await;
    let reader = f.device(DEFAULT_TENANT).await;
    let theirs = f.device("acme").await;
    let acme_reader = f.device("acme").await;
    f.push(&ours, vec![product("o1", &v(1)), product("o2", &v(1))])
        .await;
    let acme_rows = ["t1", "t2", "t3", "t4"].map(|id| product(id, &v(1)));
    f.push(&theirs, acme_rows.to_vec()).await;
    // Back to what the Ferry before sequences per tenant left: rows numbered by one global
    // sequence in commit order (o1, t1, t2, t3, o2, t4), the counter at 6, schema version 3.
    let path = f.dir.path().join("s.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE rows SET seq = -seq;
         UPDATE rows SET seq = CASE json_extract(change, '$.pk.id')
           WHEN 'o1' THEN 1 WHEN 't1' THEN 2 WHEN 't2' THEN 3 WHEN 't3' THEN 4
           WHEN 'o2' THEN 5 WHEN 't4' THEN 6 END;
         ALTER TABLE tenants DROP COLUMN last_seq;
         CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
         INSERT INTO counters (name, value) VALUES ('seq', 6);
         PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);

    let upgraded: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    // Cursors saved before the upgrade: after o1 (then the tenant's last change), after o2,
    // and acme's after t4.
    let page = upgraded
        .pull(&reader, Cursor::from_seq(1), PageLimit::rows(10))
        .await
        .unwrap();
    let changes: Vec<RowChange> = serde_json::from_str(&page.changes_json).unwrap();
    assert_eq!(ids(&changes), ["o2"], "nothing missed, nothing again");
    let after_upgrade = page.cursor;
    assert_eq!(
        after_upgrade,
        Cursor::from_seq(6),
        "each tenant's sequence goes on from the global one"
    );
    let page = upgraded
        .pull(&reader, Cursor::from_seq(5), PageLimit::rows(10))
        .await
        .unwrap();
    assert_eq!((page.count, page.cursor), (0, after_upgrade));
    let page = upgraded
        .pull(&acme_reader, Cursor::from_seq(6), PageLimit::rows(10))
        .await
        .unwrap();
    assert_eq!(page.count, 0);

    // Acme writes a lot; our cursors stay put, and move by one for our one write.
    let many: Vec<Value> = (0..50).map(|i| product(&format!("n{i}"), &v(2))).collect();
    let batch = support::batch(&f.schema, many);
    upgraded.push(&theirs, batch).await.unwrap();
    let page = upgraded
        .pull(&reader, after_upgrade, PageLimit::rows(10))
        .await
        .unwrap();
    assert_eq!((page.count, page.cursor), (0, after_upgrade));
    let beyond = Cursor::from_seq(after_upgrade.seq() + 1);
    assert!(matches!(
        upgraded.pull(&reader, beyond, PageLimit::rows(10)).await,
        Err(StoreError::CursorAhead)
    ));
    let batch = support::batch(&f.schema, vec![product("o3", &v(3))]);
    upgraded.push(&ours, batch).await.unwrap();
    let page = upgraded
        .pull(&reader, after_upgrade, PageLimit::rows(10))
        .await
        .unwrap();
    let changes: Vec<RowChange> = serde_json::from_str(&page.changes_json).unwrap();
    assert_eq!(ids(&changes), ["o3"]);
    assert_eq!(page.cursor, Cursor::from_seq(after_upgrade.seq() + 1));
    let page = upgraded
        .pull(&acme_reader, Cursor::from_seq(6), PageLimit::rows(100))
        .await
        .unwrap();
    assert_eq!(page.count, 50, "acme's own sequence holds its writes");

    // A tenant created after the upgrade starts its own sequence at the beginning.
    upgraded.create_tenant("late").await.unwrap();
    let late = support::pair_device(upgraded.as_ref(), "late").await;
    let batch = support::batch(&f.schema, vec![product("l1", &v(4))]);
    upgraded.push(&late, batch).await.unwrap();
    let page = upgraded
        .pull(&late, Cursor::START, PageLimit::rows(10))
        .await
        .unwrap();
    assert_eq!((page.count, page.cursor), (1, Cursor::from_seq(1)));
}
