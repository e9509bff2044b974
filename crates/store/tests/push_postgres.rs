//! How the PostgreSQL store writes a push: stored versions are replaced by address, every
//! written row gets the next sequence number, and nothing else of the tenant (or of another
//! tenant) moves. The contract's outcomes are the API suite's (`api_postgres` in the server).

use std::sync::Arc;

use ferry_core::Schema;
use ferry_core::time::now_ms;
use ferry_proto::Outcome;
use ferry_store::{DeviceKey, PgOptions, PgStore, Store};
use ferry_testkit::TestDatabase;
use serde_json::{Value, json};

mod support;

struct Fixture {
    database: TestDatabase,
    store: PgStore,
    schema: Arc<Schema>,
}

impl Fixture {
    async fn new() -> Fixture {
        let database = TestDatabase::create().await;
        let store = PgStore::connect(&database.url, &PgOptions::default())
            .await
            .unwrap();
        let schema = Arc::new(ferry_schema::parse_ddl(ferry_schema::POINT_OF_SALE).unwrap());
        Fixture {
            database,
            store,
            schema,
        }
    }

    /// A new device of `tenant`, which is created if need be.
    async fn device(&self, tenant: &str) -> DeviceKey {
        self.store.create_tenant(tenant).await.unwrap();
        support::pair_device(&self.store, tenant).await
    }

    async fn push(&self, device: &DeviceKey, changes: Vec<Value>) -> Vec<Outcome> {
        let batch = support::batch(&self.schema, changes);
        let results = self.store.push(device, batch).await.unwrap();
        results.into_iter().map(|r| r.outcome).collect()
    }

    /// The tenant's stored rows as `(key, seq, version, deleted)`, in sequence order.
    async fn rows(&self, tenant: &str) -> Vec<(String, i64, String, bool)> {
        self.database
            .connect()
            .await
            .query(
                "SELECT pk_key, seq, version, deleted FROM ferry.rows WHERE tenant = $1
                 ORDER BY seq",
                &[&tenant],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    async fn last_seq(&self, tenant: &str) -> i64 {
        self.database
            .connect()
            .await
            .query_one(
                "SELECT last_seq FROM ferry.tenants WHERE id = $1",
                &[&tenant],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// A version `step` milliseconds into the hour before this one (so never ahead of the clock).
fn v(step: i64) -> String {
    ferry_core::version::format(now_ms() / 3_600_000 * 3_600_000 - 3_600_000 + step, 0, "n")
}

fn product(id: &str, version: &str) -> Value {
    json!({"table": "products", "pk": {"id": id}, "version": version,
           "data": {"id": id, "name": id}})
}

fn tombstone(id: &str, version: &str) -> Value {
    json!({"table": "products", "pk": {"id": id}, "version": version, "deleted": true})
}

fn key(id: &str) -> String {
    format!("[\"{id}\"]")
}

#[tokio::test]
async fn a_push_that_inserts_and_replaces_rows_stores_each_once_at_its_new_sequence() {
    let f = Fixture::new().await;
    let till = f.device("t").await;
    let first: Vec<Value> = (1..=5).map(|i| product(&format!("p{i}"), &v(1))).collect();
    assert_eq!(f.push(&till, first).await, vec![Outcome::Applied; 5]);
    assert_eq!(f.last_seq("t").await, 5);

    // Newer versions of p1 (twice: the later one is stored) and p2, p3 as it is, a tombstone
    // for p4 and a new p6.
    let outcomes = f
        .push(
            &till,
            vec![
                product("p1", &v(2)),
                product("p2", &v(2)),
                product("p3", &v(1)),
                tombstone("p4", &v(2)),
                product("p6", &v(2)),
                product("p1", &v(3)),
            ],
        )
        .await;
    use Outcome::{Applied, Duplicate};
    assert_eq!(
        outcomes,
        [Applied, Applied, Duplicate, Applied, Applied, Applied]
    );
    // Rows as they are now, by key: the ones left alone keep their sequence numbers, the four
    // written take the next four (in the planner's order).
    let mut rows = f.rows("t").await;
    let mut written: Vec<i64> = rows.iter().map(|r| r.1).filter(|&seq| seq > 5).collect();
    written.sort_unstable();
    assert_eq!(written, [6, 7, 8, 9]);
    rows.sort();
    let by_key: Vec<(String, String, bool)> = rows
        .into_iter()
        .map(|(stored, seq, version, deleted)| {
            let kept = stored == key("p3") || stored == key("p5");
            assert_eq!(kept, seq <= 5, "{stored} at {seq}");
            (stored, version, deleted)
        })
        .collect();
    assert_eq!(
        by_key,
        [
            (key("p1"), v(3), false),
            (key("p2"), v(2), false),
            (key("p3"), v(1), false),
            (key("p4"), v(2), true),
            (key("p5"), v(1), false),
            (key("p6"), v(2), false),
        ]
    );
    assert_eq!(f.last_seq("t").await, 9);
}

#[tokio::test]
async fn pushing_the_same_rows_again_and_again_keeps_one_version_each_on_a_gapless_sequence() {
    let f = Fixture::new().await;
    let till = f.device("t").await;
    let ids: Vec<String> = (0..1_500).map(|i| format!("p{i:04}")).collect();
    for round in 1..=4 {
        // The client's batches: 1,000 rows, then the other 500.
        for chunk in ids.chunks(1_000) {
            let changes = chunk.iter().map(|id| product(id, &v(round))).collect();
            let outcomes = f.push(&till, changes).await;
            assert!(
                outcomes.iter().all(|o| *o == Outcome::Applied),
                "round {round}"
            );
        }
        let rows = f.rows("t").await;
        assert_eq!(rows.len(), ids.len(), "round {round}: one version per row");
        let last = f.last_seq("t").await;
        assert_eq!(last, 1_500 * round);
        let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let gapless: Vec<i64> = (last - 1_499..=last).collect();
        assert_eq!(seqs, gapless, "round {round}");
        assert!(rows.iter().all(|r| r.2 == v(round)), "round {round}");
    }
    // The same batch once more writes nothing.
    let again = ids[..1_000].iter().map(|id| product(id, &v(4))).collect();
    let outcomes = f.push(&till, again).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Duplicate));
    assert_eq!(f.last_seq("t").await, 6_000);
}

#[tokio::test]
async fn replacing_rows_leaves_the_same_keys_of_another_tenant_alone() {
    let f = Fixture::new().await;
    let (a, b) = (f.device("a").await, f.device("b").await);
    let batch = |step| vec![product("p1", &v(step)), product("p2", &v(step))];
    f.push(&a, batch(1)).await;
    f.push(&b, batch(1)).await;
    f.push(&b, batch(2)).await;
    f.push(&b, batch(3)).await;
    let versions = |rows: Vec<(String, i64, String, bool)>| -> Vec<(String, String)> {
        rows.into_iter().map(|r| (r.0, r.2)).collect()
    };
    assert_eq!(
        versions(f.rows("a").await),
        [(key("p1"), v(1)), (key("p2"), v(1))]
    );
    assert_eq!(
        versions(f.rows("b").await),
        [(key("p1"), v(3)), (key("p2"), v(3))]
    );
    assert_eq!((f.last_seq("a").await, f.last_seq("b").await), (2, 6));
}

/// Guards the count of replaced rows: should a stored row change behind a push's back (no
/// writer does that: all hold the tenant's row lock), the push fails and writes nothing.
#[tokio::test]
async fn a_push_whose_replaced_row_was_deleted_behind_its_back_fails_and_writes_nothing() {
    let f = Fixture::new().await;
    let till = f.device("t").await;
    f.push(&till, vec![product("p1", &v(1))]).await;

    // Another session holds p1's row, so the push stops at its delete, after its read.
    let mut other = f.database.connect().await;
    let intruder = other.transaction().await.unwrap();
    intruder
        .execute(
            "SELECT 1 FROM ferry.rows WHERE pk_key = $1 FOR UPDATE",
            &[&key("p1")],
        )
        .await
        .unwrap();
    let push = {
        let (store, schema, till) = (f.store.clone(), f.schema.clone(), till.clone());
        tokio::spawn(async move {
            let batch = support::batch(&schema, vec![product("p1", &v(2))]);
            store.push(&till, batch).await
        })
    };
    let watcher = f.database.connect().await;
    ferry_testkit::wait_for("the push to wait on the held row", || async {
        ferry_testkit::waiting_on_locks(&watcher).await > 0
    })
    .await;
    intruder
        .execute("DELETE FROM ferry.rows WHERE pk_key = $1", &[&key("p1")])
        .await
        .unwrap();
    intruder.commit().await.unwrap();

    let failed = push.await.unwrap();
    assert!(
        matches!(&failed, Err(ferry_store::StoreError::Internal(m)) if m.contains("0 of the 1")),
        "{failed:?}"
    );
    assert_eq!(f.rows("t").await, []);
    assert_eq!(f.last_seq("t").await, 1);
}
