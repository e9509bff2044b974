//! `ferry devices`, `ferry devices revoke` and `ferry conflicts`: a tenant's devices and its
//! conflict log, through the operator API (any role reads; revoking takes an admin token).

use std::process::ExitCode;

use anyhow::bail;
use ferry_core::time::{now_ms, parse_ms};
use ferry_proto::{Conflict, ConflictsResponse, DeviceInfo, DevicesResponse, Row};
use serde_json::Value;

use crate::api::{Api, Refused, path_segment};
use crate::args::{ApiArgs, ConflictsArgs, DevicesArgs, DevicesCommand, RevokeArgs};

pub(crate) async fn devices(args: DevicesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(DevicesCommand::Revoke(revoke_args)) => revoke(revoke_args).await,
        None => list(&args.api).await,
    }
}

async fn list(args: &ApiArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let answer: DevicesResponse = api
        .send(api.http.get(api.url("/api/admin/devices")))
        .await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.devices.is_empty() {
        outln!("No devices yet: pair one with a code from `ferry pair-code`.");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<[String; 8]> = answer
        .devices
        .iter()
        .map(|device| device_row(device, now))
        .collect();
    crate::output::table(
        [
            "NAME",
            "DEVICE",
            "LAST SEEN",
            "LAST PUSH",
            "LAST PULL",
            "PENDING",
            "VERSION",
            "STATUS",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// A device's row: when it was last seen in words and exactly (an operator asks "is it still
/// alive?" first), its last push and pull in words, what it still has to push, whether it is
/// revoked.
fn device_row(device: &DeviceInfo, now: i64) -> [String; 8] {
    let seen = match &device.last_seen_at {
        Some(at) => format!("{} ({at})", ago(at, now)),
        None => "never".to_owned(),
    };
    let words = |at: &Option<String>| match at {
        Some(at) => ago(at, now),
        None => "never".to_owned(),
    };
    let status = match &device.revoked_at {
        Some(at) => format!("revoked {}", ago(at, now)),
        None => "active".to_owned(),
    };
    [
        device.name.clone(),
        device.device_id.clone(),
        seen,
        words(&device.last_push_at),
        words(&device.last_pull_at),
        device.pending.to_string(),
        device.version.clone().unwrap_or_else(|| "-".to_owned()),
        status,
    ]
}

/// "just now", "1 minute ago", "14 minutes ago", "3 hours ago", "2 days ago", as the Devices
/// panel says it; a time that cannot be read as itself.
fn ago(at: &str, now: i64) -> String {
    let Some(then) = parse_ms(at) else {
        return at.to_owned();
    };
    let seconds = (now - then).max(0) / 1000;
    let (count, unit) = match seconds {
        0 => return "just now".to_owned(),
        1..=59 => (seconds, "second"),
        60..=3599 => (seconds / 60, "minute"),
        3600..=86_399 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} ago")
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let id = &args.id;
    let path = format!("/api/admin/devices/{}", path_segment(id));
    match api.send_no_content(api.http.delete(api.url(&path))).await {
        Err(error)
            if error
                .downcast_ref::<Refused>()
                .is_some_and(|r| r.status == 404) =>
        {
            bail!(
                "the token's tenant has no device {id:?}; `ferry devices` lists the ids of its devices"
            )
        }
        other => other?,
    }
    // The revocation is done; the list only names what was revoked.
    let listed: anyhow::Result<DevicesResponse> =
        api.send(api.http.get(api.url("/api/admin/devices"))).await;
    let device = listed
        .ok()
        .and_then(|l| l.devices.into_iter().find(|d| d.device_id == *id));
    if api.json {
        let body = match &device {
            Some(device) => serde_json::to_value(device)?,
            None => serde_json::json!({ "device_id": id }),
        };
        outln!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let named = match &device {
        Some(device) => format!("{id} ({})", device.name),
        None => id.clone(),
    };
    outln!(
        "Revoked device {named}: its token no longer works, so it cannot sync; its rows stay. \
         To bring the file back, pair it again with a new code (`ferry agent pair --force`)."
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn conflicts(args: ConflictsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut request = api
        .http
        .get(api.url("/api/admin/conflicts"))
        .query(&[("limit", args.limit.to_string())]);
    if let Some(table) = &args.table {
        request = request.query(&[("table", table)]);
    }
    if let Some(pk) = &args.pk {
        request = request.query(&[("pk", pk)]);
    }
    let answer: ConflictsResponse = api.send(request).await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.conflicts.is_empty() {
        if args.table.is_some() {
            outln!("No conflicts match.");
        } else {
            outln!("No conflicts: no write has lost to a newer version of its row.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    for conflict in &answer.conflicts {
        for line in conflict_lines(conflict, now) {
            outln!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A conflict in three lines: which row, when, whose write lost to whose; the losing version
/// and what it held; the winning version.
///
/// ```text
/// #3 customers id=c1, recorded 2 minutes ago: device dev_a lost to device dev_b
///   lost: 2026-11-21T12:00:00.123Z-0000-dev_a {"id":"c1","name":"Ada"}
///   won:  2026-11-21T12:00:01.456Z-0000-dev_b
/// ```
fn conflict_lines(conflict: &Conflict, now: i64) -> [String; 3] {
    let by = |device: &Option<String>| match device {
        Some(device) => format!("device {device}"),
        None => "a write of no device".to_owned(),
    };
    let head = format!(
        "#{} {} {}, recorded {}: {} lost to {}",
        conflict.id,
        conflict.table,
        key_text(&conflict.pk),
        ago(&conflict.recorded_at, now),
        by(&conflict.loser_device),
        by(&conflict.winner_device),
    );
    let held = match (&conflict.loser_data, conflict.loser_deleted) {
        (_, true) => " (a delete)".to_owned(),
        (Some(data), false) => format!(" {}", Value::Object(data.clone())),
        (None, false) => String::new(),
    };
    [
        head,
        format!("  lost: {}{held}", conflict.loser_version),
        format!("  won:  {}", conflict.winner_version),
    ]
}

/// `id=c1`, or `sale_id=s1, line=2`: text values bare, others as JSON.
fn key_text(pk: &Row) -> String {
    pk.iter()
        .map(|(column, value)| match value {
            Value::String(text) => format!("{column}={text}"),
            other => format!("{column}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_the_devices_panel_says_them() {
        let now = parse_ms("2026-11-21T12:00:00.000Z").unwrap();
        for (at, words) in [
            ("2026-11-21T12:00:00.500Z", "just now"),
            ("2026-11-21T11:59:59.000Z", "1 second ago"),
            ("2026-11-21T11:46:00.000Z", "14 minutes ago"),
            ("2026-11-21T11:00:00.000Z", "1 hour ago"),
            ("2026-11-19T12:00:00.000Z", "2 days ago"),
            ("yesterday", "yesterday"),
        ] {
            assert_eq!(ago(at, now), words, "{at}");
        }
    }

    #[test]
    fn keys_read_as_columns_and_values() {
        let pk: Row = serde_json::from_str(r#"{"sale_id": "s1", "line": 2}"#).unwrap();
        assert_eq!(key_text(&pk), "line=2, sale_id=s1");
    }
}
