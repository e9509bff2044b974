//! Helpers shared by the store's test binaries.

use std::time::Duration;

use ferry_store::{DeviceKey, Store};

/// Pairs a new device of `tenant` (which must exist) through a fresh pairing code.
pub(crate) async fn pair_device(store: &dyn Store, tenant: &str) -> DeviceKey {
    let code = store
        .create_pairing_code(tenant, Duration::from_secs(60))
        .await
        .unwrap();
    let paired = store
        .redeem_pairing_code(&code.code, "d", None)
        .await
        .unwrap()
        .unwrap();
    DeviceKey {
        tenant: paired.tenant,
        device_id: paired.device_id,
    }
}
