//! Tenants, tokens, pairing codes, devices and settings on PostgreSQL.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::{Client, GenericClient};
use ferry_core::time::format_ms;
use ferry_proto::{DeviceInfo, PairResponse, PairingCode};
use tokio_postgres::types::ToSql;

use super::{at, text_of};
use crate::{DeviceKey, Principal, Result, Role, StoreError, TenantInfo, secret};

pub(super) const SCHEMA_DDL_KEY: &str = "schema_ddl";

pub(super) async fn create_tenant(
    client: &impl GenericClient,
    tenant: &str,
    now_ms: i64,
) -> Result<bool> {
    let inserted = client
        .execute(
            "INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&tenant, &at(now_ms)],
        )
        .await?;
    Ok(inserted == 1)
}

pub(super) async fn list_tenants(client: &Client) -> Result<Vec<TenantInfo>> {
    let rows = client
        .query(
            "SELECT t.id, t.created_at,
                    count(d.device_id) FILTER (WHERE d.revoked_at IS NULL),
                    count(d.revoked_at)
             FROM tenants AS t LEFT JOIN devices AS d ON d.tenant = t.id
             GROUP BY t.id, t.created_at
             ORDER BY t.created_at, t.id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TenantInfo {
            id: r.get(0),
            created_at: text_of(r.get(1)).unwrap_or_default(),
            devices: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            revoked_devices: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
        })
        .collect())
}

async fn require_tenant(client: &impl GenericClient, tenant: &str) -> Result<()> {
    let found = client
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant])
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::UnknownTenant(tenant.to_owned()))
}

pub(super) async fn create_operator_token(
    client: &Client,
    tenant: &str,
    role: Role,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<String> {
    require_tenant(client, tenant).await?;
    let token = secret::new_token();
    client
        .execute(
            "INSERT INTO tokens (hash, tenant, kind, role, created_at, expires_at)
             VALUES ($1, $2, 'operator', $3, $4, $5)",
            &[
                &secret::hash(&token),
                &tenant,
                &role.as_str(),
                &at(now_ms),
                &expires_at_ms.map(at),
            ],
        )
        .await?;
    Ok(token)
}

/// A token's live principal (tenant, device, role), or no row: `$1` is the token's hash, `$2`
/// the time now.
const PRINCIPAL_OF_TOKEN: &str = "
    SELECT t.tenant, t.device_id, t.role
    FROM tokens AS t LEFT JOIN devices AS d ON d.device_id = t.device_id
    WHERE t.hash = $1 AND t.revoked_at IS NULL
      AND (t.expires_at IS NULL OR t.expires_at > $2)
      AND d.revoked_at IS NULL";

pub(super) async fn authenticate(
    client: &Client,
    token: &str,
    now_ms: i64,
) -> Result<Option<Principal>> {
    principal(
        client,
        PRINCIPAL_OF_TOKEN,
        &[&secret::hash(token), &at(now_ms)],
    )
    .await
}

/// [`authenticate`] and, for a device token, [`check_in`], in one statement. The check-in's
/// commit does not wait for the WAL flush, as [`check_in`] explains; the token is only read.
pub(super) async fn authenticate_and_check_in(
    client: &Client,
    token: &str,
    client_version: Option<&str>,
    now_ms: i64,
) -> Result<Option<Principal>> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH principal AS ({PRINCIPAL_OF_TOKEN}),
             relaxed AS (
               SELECT set_config('synchronous_commit', 'off', true)
               FROM principal WHERE principal.device_id IS NOT NULL
             ),
             checked_in AS (
               UPDATE devices SET last_seen_at = $2, version = coalesce($3, version)
               FROM principal, relaxed
               WHERE devices.tenant = principal.tenant
                 AND devices.device_id = principal.device_id
             )
             SELECT tenant, device_id, role FROM principal"
        )
    });
    principal(
        client,
        &STATEMENT,
        &[&secret::hash(token), &at(now_ms), &client_version],
    )
    .await
}

/// Runs `query`, which answers a token's tenant, device and role in one row, or no row.
async fn principal(
    client: &Client,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Principal>> {
    let statement = client.prepare_cached(query).await?;
    let Some(row) = client.query_opt(&statement, params).await? else {
        return Ok(None);
    };
    Principal::of_token(
        row.get(0),
        row.get(1),
        row.get::<_, Option<String>>(2).as_deref(),
    )
    .map(Some)
}

pub(super) async fn revoke_token(client: &Client, token: &str, now_ms: i64) -> Result<bool> {
    let changed = client
        .execute(
            "UPDATE tokens SET revoked_at = $2 WHERE hash = $1 AND revoked_at IS NULL",
            &[&secret::hash(token), &at(now_ms)],
        )
        .await?;
    Ok(changed == 1)
}

pub(super) async fn create_pairing_code(
    client: &Client,
    tenant: &str,
    ttl: Duration,
    now_ms: i64,
) -> Result<PairingCode> {
    require_tenant(client, tenant).await?;
    let code = secret::new_pairing_code();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_ms = now_ms.saturating_add(ttl_ms);
    client
        .execute(
            "INSERT INTO pairing_codes (hash, tenant, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
            &[
                &secret::hash(&secret::normalize_pairing_code(&code)),
                &tenant,
                &at(now_ms),
                &at(expires_ms),
            ],
        )
        .await?;
    Ok(PairingCode {
        code,
        tenant: tenant.to_owned(),
        expires_at: format_ms(expires_ms),
    })
}

/// Claiming the code and creating the device commit together. The claim's `used_at IS NULL`
/// condition stops a second redemption: a concurrent claim waits for the first one's row lock
/// and then finds the code used.
pub(super) async fn pairing_code_tenant(
    client: &Client,
    code: &str,
    now_ms: i64,
) -> Result<Option<String>> {
    let hash = secret::hash(&secret::normalize_pairing_code(code));
    let row = client
        .query_opt(
            "SELECT tenant FROM pairing_codes
             WHERE hash = $1 AND used_at IS NULL AND expires_at > $2",
            &[&hash, &at(now_ms)],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

pub(super) async fn redeem_pairing_code(
    client: &mut Client,
    code: &str,
    name: &str,
    platform: Option<&str>,
    now_ms: i64,
) -> Result<Option<PairResponse>> {
    let now = at(now_ms);
    let hash = secret::hash(&secret::normalize_pairing_code(code));
    let device_id = secret::new_device_id();
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "UPDATE pairing_codes SET used_at = $2, device_id = $3
             WHERE hash = $1 AND used_at IS NULL AND expires_at > $2
             RETURNING tenant",
            &[&hash, &now, &device_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let tenant: String = row.get(0);
    tx.execute(
        "INSERT INTO devices (device_id, tenant, name, platform, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[&device_id, &tenant, &name, &platform, &now],
    )
    .await?;
    let token = secret::new_token();
    tx.execute(
        "INSERT INTO tokens (hash, tenant, kind, device_id, created_at)
         VALUES ($1, $2, 'device', $3, $4)",
        &[&secret::hash(&token), &tenant, &device_id, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(PairResponse {
        device_id,
        tenant,
        token,
    }))
}

pub(super) async fn check_in(
    client: &Client,
    device: &DeviceKey,
    client_version: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let statement = client
        .prepare_cached(
            // Every device request checks in, so its commit does not wait for the WAL flush
            // (`synchronous_commit` off for this statement's transaction alone): a database
            // crash in that moment loses a last-seen time and a client version, which the
            // device's next request sets again; nothing else is written here.
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE devices SET last_seen_at = $3, version = coalesce($4, version)
             FROM relaxed WHERE tenant = $1 AND device_id = $2",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &device.tenant,
                &device.device_id,
                &at(now_ms),
                &client_version,
            ],
        )
        .await?;
    Ok(())
}

pub(super) async fn record_pull(client: &Client, device: &DeviceKey, now_ms: i64) -> Result<()> {
    let statement = client
        .prepare_cached(
            // Like a check-in, and once per pulled page (a snapshot pulls hundreds): its commit
            // does not wait for the WAL flush; a crash in that moment loses a last-pull time,
            // which the device's next pull sets again.
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE devices SET last_pull_at = $3, last_seen_at = $3
             FROM relaxed WHERE tenant = $1 AND device_id = $2",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&device.tenant, &device.device_id, &at(now_ms)],
        )
        .await?;
    Ok(())
}

pub(super) async fn record_push(
    client: &impl GenericClient,
    device: &DeviceKey,
    pending: u64,
    now_ms: i64,
) -> Result<()> {
    let statement = client
        .prepare_cached(
            "UPDATE devices SET last_push_at = $3, last_seen_at = $3, pending = $4
             WHERE tenant = $1 AND device_id = $2",
        )
        .await?;
    let pending = i64::try_from(pending).unwrap_or(i64::MAX);
    client
        .execute(
            &statement,
            &[&device.tenant, &device.device_id, &at(now_ms), &pending],
        )
        .await?;
    Ok(())
}

pub(super) async fn list_devices(client: &Client, tenant: &str) -> Result<Vec<DeviceInfo>> {
    let rows = client
        .query(
            "SELECT device_id, name, last_seen_at, last_push_at, last_pull_at, pending, version,
                    revoked_at
             FROM devices WHERE tenant = $1 ORDER BY created_at, device_id",
            &[&tenant],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeviceInfo {
            device_id: r.get(0),
            name: r.get(1),
            last_seen_at: text_of(r.get(2)),
            last_push_at: text_of(r.get(3)),
            last_pull_at: text_of(r.get(4)),
            pending: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
            version: r.get(6),
            revoked_at: text_of(r.get(7)),
        })
        .collect())
}

pub(super) async fn revoke_device(
    client: &mut Client,
    tenant: &str,
    device_id: &str,
    now_ms: i64,
) -> Result<bool> {
    let now = at(now_ms);
    let tx = client.transaction().await?;
    // The tenant condition is what keeps one tenant's admin away from another's devices.
    let found = tx
        .execute(
            "UPDATE devices SET revoked_at = coalesce(revoked_at, $3)
             WHERE tenant = $1 AND device_id = $2",
            &[&tenant, &device_id, &now],
        )
        .await?;
    if found == 0 {
        return Ok(false);
    }
    tx.execute(
        "UPDATE tokens SET revoked_at = $3
         WHERE tenant = $1 AND device_id = $2 AND revoked_at IS NULL",
        &[&tenant, &device_id, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn schema_ddl(client: &Client) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT value FROM settings WHERE key = $1",
            &[&SCHEMA_DDL_KEY],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn set_schema_ddl(client: &Client, ddl: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO settings (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&SCHEMA_DDL_KEY, &ddl],
        )
        .await?;
    Ok(())
}
