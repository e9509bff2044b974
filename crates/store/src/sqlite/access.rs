//! Tenants, tokens, pairing codes, devices and settings.

use std::time::Duration;

use ferry_core::time::format_ms;
use ferry_proto::{DeviceInfo, PairResponse, PairingCode};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{DeviceKey, Principal, Result, Role, StoreError, TenantInfo, secret};

const SCHEMA_DDL_KEY: &str = "schema_ddl";

pub(super) fn create_tenant(conn: &Connection, tenant: &str, now_ms: i64) -> Result<bool> {
    let inserted = conn.execute(
        "INSERT INTO tenants (id, created_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
        params![tenant, format_ms(now_ms)],
    )?;
    Ok(inserted == 1)
}

pub(super) fn list_tenants(conn: &Connection) -> Result<Vec<TenantInfo>> {
    let mut stmt = conn.prepare_cached(TENANTS)?;
    let tenants = stmt
        .query_map([], |r| {
            Ok(TenantInfo {
                id: r.get(0)?,
                created_at: r.get(1)?,
                devices: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                revoked_devices: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tenants)
}

/// Every tenant with its live and revoked device counts, oldest first.
const TENANTS: &str = "
    SELECT t.id, t.created_at,
           count(CASE WHEN d.revoked_at IS NULL THEN d.device_id END),
           count(d.revoked_at)
    FROM tenants AS t LEFT JOIN devices AS d ON d.tenant = t.id
    GROUP BY t.id, t.created_at
    ORDER BY t.created_at, t.id";

fn require_tenant(conn: &Connection, tenant: &str) -> Result<()> {
    let exists = conn
        .query_row("SELECT 1 FROM tenants WHERE id = ?1", [tenant], |_| Ok(()))
        .optional()?;
    exists.ok_or_else(|| StoreError::UnknownTenant(tenant.to_owned()))
}

pub(super) fn create_operator_token(
    conn: &Connection,
    tenant: &str,
    role: Role,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<String> {
    require_tenant(conn, tenant)?;
    let token = secret::new_token();
    conn.execute(
        "INSERT INTO tokens (hash, tenant, kind, role, created_at, expires_at)
         VALUES (?1, ?2, 'operator', ?3, ?4, ?5)",
        params![
            secret::hash(&token),
            tenant,
            role.as_str(),
            format_ms(now_ms),
            expires_at_ms.map(format_ms)
        ],
    )?;
    Ok(token)
}

pub(super) fn authenticate(
    conn: &Connection,
    token: &str,
    now_ms: i64,
) -> Result<Option<Principal>> {
    // Timestamps are fixed-width RFC 3339, so comparing them as text compares them in time.
    let found: Option<(String, Option<String>, Option<String>)> = conn
        .prepare_cached(
            "SELECT t.tenant, t.device_id, t.role
             FROM tokens AS t LEFT JOIN devices AS d ON d.device_id = t.device_id
             WHERE t.hash = ?1 AND t.revoked_at IS NULL
               AND (t.expires_at IS NULL OR t.expires_at > ?2)
               AND d.revoked_at IS NULL",
        )?
        .query_row(params![secret::hash(token), format_ms(now_ms)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((tenant, device_id, role)) = found else {
        return Ok(None);
    };
    Principal::of_token(tenant, device_id, role.as_deref()).map(Some)
}

pub(super) fn revoke_token(conn: &Connection, token: &str, now_ms: i64) -> Result<bool> {
    let changed = conn.execute(
        "UPDATE tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
        params![secret::hash(token), format_ms(now_ms)],
    )?;
    Ok(changed == 1)
}

pub(super) fn create_pairing_code(
    conn: &Connection,
    tenant: &str,
    ttl: Duration,
    now_ms: i64,
) -> Result<PairingCode> {
    require_tenant(conn, tenant)?;
    let code = secret::new_pairing_code();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = format_ms(now_ms.saturating_add(ttl_ms));
    conn.execute(
        "INSERT INTO pairing_codes (hash, tenant, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            secret::hash(&secret::normalize_pairing_code(&code)),
            tenant,
            format_ms(now_ms),
            expires_at
        ],
    )?;
    Ok(PairingCode {
        code,
        tenant: tenant.to_owned(),
        expires_at,
    })
}

/// Must run in a write transaction: claiming the code and creating the device commit together,
/// and the claim's `used_at IS NULL` condition is what stops a second redemption.
pub(super) fn pairing_code_tenant(
    conn: &Connection,
    code: &str,
    now_ms: i64,
) -> Result<Option<String>> {
    let hash = secret::hash(&secret::normalize_pairing_code(code));
    Ok(conn
        .query_row(
            "SELECT tenant FROM pairing_codes
             WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2",
            params![hash, format_ms(now_ms)],
            |r| r.get(0),
        )
        .optional()?)
}

pub(super) fn redeem_pairing_code(
    conn: &Connection,
    code: &str,
    name: &str,
    platform: Option<&str>,
    now_ms: i64,
) -> Result<Option<PairResponse>> {
    let now = format_ms(now_ms);
    let hash = secret::hash(&secret::normalize_pairing_code(code));
    let device_id = secret::new_device_id();
    let tenant: Option<String> = conn
        .query_row(
            "UPDATE pairing_codes SET used_at = ?2, device_id = ?3
             WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2
             RETURNING tenant",
            params![hash, now, device_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    conn.execute(
        "INSERT INTO devices (device_id, tenant, name, platform, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device_id, tenant, name, platform, now],
    )?;
    let token = secret::new_token();
    conn.execute(
        "INSERT INTO tokens (hash, tenant, kind, device_id, created_at)
         VALUES (?1, ?2, 'device', ?3, ?4)",
        params![secret::hash(&token), tenant, device_id, now],
    )?;
    Ok(Some(PairResponse {
        device_id,
        tenant,
        token,
    }))
}

pub(super) fn check_in(
    conn: &Connection,
    device: &DeviceKey,
    client_version: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE devices SET last_seen_at = ?3, version = coalesce(?4, version)
         WHERE tenant = ?1 AND device_id = ?2",
    )?
    .execute(params![
        device.tenant,
        device.device_id,
        format_ms(now_ms),
        client_version
    ])?;
    Ok(())
}

pub(super) fn record_pull(conn: &Connection, device: &DeviceKey, now_ms: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE devices SET last_pull_at = ?3, last_seen_at = ?3
         WHERE tenant = ?1 AND device_id = ?2",
    )?
    .execute(params![device.tenant, device.device_id, format_ms(now_ms)])?;
    Ok(())
}

pub(super) fn record_push(
    conn: &Connection,
    device: &DeviceKey,
    pending: u64,
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE devices SET last_push_at = ?3, last_seen_at = ?3, pending = ?4
         WHERE tenant = ?1 AND device_id = ?2",
    )?
    .execute(params![
        device.tenant,
        device.device_id,
        format_ms(now_ms),
        i64::try_from(pending).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

pub(super) fn list_devices(conn: &Connection, tenant: &str) -> Result<Vec<DeviceInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_id, name, last_seen_at, last_push_at, last_pull_at, pending, version,
                revoked_at
         FROM devices WHERE tenant = ?1 ORDER BY created_at, device_id",
    )?;
    let devices = stmt
        .query_map([tenant], |r| {
            Ok(DeviceInfo {
                device_id: r.get(0)?,
                name: r.get(1)?,
                last_seen_at: r.get(2)?,
                last_push_at: r.get(3)?,
                last_pull_at: r.get(4)?,
                pending: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                version: r.get(6)?,
                revoked_at: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(devices)
}

pub(super) fn revoke_device(
    conn: &Connection,
    tenant: &str,
    device_id: &str,
    now_ms: i64,
) -> Result<bool> {
    let now = format_ms(now_ms);
    // The tenant condition is what keeps one tenant's admin away from another's devices.
    let found = conn.execute(
        "UPDATE devices SET revoked_at = coalesce(revoked_at, ?3)
         WHERE tenant = ?1 AND device_id = ?2",
        params![tenant, device_id, now],
    )?;
    if found == 0 {
        return Ok(false);
    }
    conn.execute(
        "UPDATE tokens SET revoked_at = ?3
         WHERE tenant = ?1 AND device_id = ?2 AND revoked_at IS NULL",
        params![tenant, device_id, now],
    )?;
    Ok(true)
}

pub(super) fn schema_ddl(conn: &Connection) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [SCHEMA_DDL_KEY],
            |r| r.get(0),
        )
        .optional()?)
}

pub(super) fn set_schema_ddl(conn: &Connection, ddl: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![SCHEMA_DDL_KEY, ddl],
    )?;
    Ok(())
}
