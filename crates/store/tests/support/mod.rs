//! Helpers shared by the store's test binaries.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Schema;
use ferry_proto::PairResponse;
use ferry_store::{DeviceKey, PushBatch, Store};
use serde_json::Value;

/// Pairs a new device of `tenant` (which must exist) through a fresh pairing code.
pub(crate) async fn pair_device(store: &dyn Store, tenant: &str) -> DeviceKey {
    let paired = pair(store, tenant).await;
    DeviceKey {
        tenant: paired.tenant,
        device_id: paired.device_id,
    }
}

/// [`pair_device`], answered as the pairing answers: with the device's token too.
pub(crate) async fn pair(store: &dyn Store, tenant: &str) -> PairResponse {
    let code = store
        .create_pairing_code(tenant, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .redeem_pairing_code(&code.code, "d", None)
        .await
        .unwrap()
        .unwrap()
}

/// A push of `changes` (row changes as wire JSON) at the current time, with 5 minutes of
/// clock skew allowed.
pub(crate) fn batch(schema: &Arc<Schema>, changes: Vec<Value>) -> PushBatch {
    PushBatch {
        schema: schema.clone(),
        changes: changes
            .into_iter()
            .map(|c| serde_json::from_value(c).unwrap())
            .collect(),
        pending: 0,
        now_ms: ferry_core::time::now_ms(),
        max_clock_skew: Duration::from_secs(300),
    }
}
