//! A store opened the way the server opens it, and its conflict log as comparable tuples.

use std::sync::Arc;

use ferry_core::Schema;
use ferry_proto::Outcome;
use ferry_server::init::{StoreLocation, open_store};
use ferry_store::{ConflictQuery, DeviceKey, Store};
use ferry_testkit::{Backend, TestStore};
use serde_json::{Value, json};

use super::shared;

/// The store this test binary runs on.
pub(crate) fn backend() -> Backend {
    Backend::of_binary(env!("CARGO_CRATE_NAME"))
}

/// A new store of this binary's backend, migrated, with the point-of-sale schema to push.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) storage: TestStore,
    schema: Arc<Schema>,
}

/// A conflict record as `(table, pk, loser version, loser device, winner version, winner
/// device)`.
pub(crate) type Logged = (
    String,
    Value,
    String,
    Option<String>,
    String,
    Option<String>,
);

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let storage = TestStore::new(backend()).await;
        let store = open(&storage.location).await;
        let schema = Arc::new(ferry_schema::parse_ddl(ferry_schema::POINT_OF_SALE).unwrap());
        Fixture {
            store,
            storage,
            schema,
        }
    }

    /// A new device of `tenant`, which is created if need be.
    pub(crate) async fn device(&self, tenant: &str) -> DeviceKey {
        self.store.create_tenant(tenant).await.unwrap();
        shared::pair_device(self.store.as_ref(), tenant).await
    }

    /// Pushes `changes` (wire JSON) as `device`; the outcomes in request order.
    pub(crate) async fn push(&self, device: &DeviceKey, changes: Vec<Value>) -> Vec<Outcome> {
        let batch = shared::batch(&self.schema, changes);
        let results = self.store.push(device, batch).await.unwrap();
        results.into_iter().map(|r| r.outcome).collect()
    }

    /// The tenant's conflict log, oldest first.
    pub(crate) async fn log(&self, tenant: &str) -> Vec<Logged> {
        logged(self.store.as_ref(), tenant).await
    }
}

/// Opens (and migrates) the store at `location` as the server does.
pub(crate) async fn open(location: &StoreLocation) -> Arc<dyn Store> {
    open_store(location).await.unwrap()
}

/// `tenant`'s conflict log in `store`, oldest first.
pub(crate) async fn logged(store: &dyn Store, tenant: &str) -> Vec<Logged> {
    let query = ConflictQuery {
        table: None,
        pk_key: None,
        limit: 1000,
    };
    let mut log: Vec<Logged> = store
        .conflicts(tenant, query)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.table,
                Value::Object(c.pk),
                c.loser_version,
                c.loser_device,
                c.winner_version,
                c.winner_device,
            )
        })
        .collect();
    // The query answers newest first.
    log.reverse();
    log
}

/// A version `step` milliseconds into the hour before this one (so never ahead of the clock),
/// of clock node `node`.
pub(crate) fn v(step: i64, node: &str) -> String {
    let hour = ferry_core::time::now_ms() / 3_600_000 * 3_600_000;
    ferry_core::version::format(hour - 3_600_000 + step, 0, node)
}

pub(crate) fn product(id: &str, name: &str, version: &str) -> Value {
    json!({"table": "products", "pk": {"id": id}, "version": version,
           "data": {"id": id, "name": name}})
}
