//! The operator's commands against a real `ferry serve`, as a person without curl runs them:
//! `ferry tenant`, `ferry devices`, `ferry conflicts`, `ferry pin` and `ferry unpin`.

use std::path::{Path, PathBuf};

use ferry_proto::worker::SyncState;
use ferry_proto::{ConflictsResponse, DevicesResponse};
use serde_json::Value;

use super::support::{run, serve, stderr, stdout};

/// A pairing code for `tenant` of the store in `data`.
async fn pair_code(data: &str, tenant: &str) -> String {
    let output = run(&["pair-code", "--data", data, "--tenant", tenant]).await;
    assert!(output.status.success(), "{output:?}");
    stdout(&output).trim().to_owned()
}

/// A new app database `NAME.sqlite` in `dir`, paired into `tenant` as device `name`; its path
/// and device id.
async fn pair(url: &str, data: &str, tenant: &str, dir: &Path, name: &str) -> (PathBuf, String) {
    let db = dir.join(format!("{name}.sqlite"));
    let code = pair_code(data, tenant).await;
    let output = run(&[
        "agent",
        "pair",
        "--json",
        "--server",
        url,
        "--code",
        &code,
        "--db",
        db.to_str().unwrap(),
        "--name",
        name,
    ])
    .await;
    assert!(output.status.success(), "{output:?}");
    let paired: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(paired["tenant"], tenant);
    assert!(paired.get("token").is_none(), "{paired}");
    (db, paired["device_id"].as_str().unwrap().to_owned())
}

/// One forced cycle of `db`, which must succeed; its report.
async fn sync(db: &Path) -> Value {
    let output = run(&["agent", "sync", "--json", "--db", db.to_str().unwrap()]).await;
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs `ferry ARGS --server URL --data DATA`: a command as the admin of the default tenant.
async fn as_admin(args: &[&str], url: &str, data: &str) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--server", url, "--data", data]);
    run(&all).await
}

/// A viewer token of the default tenant of the store in `data`.
async fn viewer(data: &str) -> String {
    let minted = run(&["token", "create", "--role", "viewer", "--data", data]).await;
    assert!(minted.status.success(), "{minted:?}");
    stdout(&minted).trim().to_owned()
}

/// The tokens stored for `tenant` in the data directory `data`, device tokens included.
fn tokens_of(data: &str, tenant: &str) -> i64 {
    let path = Path::new(data).join(ferry_server::init::DATABASE_FILE);
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM tokens WHERE tenant = ?1",
            [tenant],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_tenant_is_created_with_its_admin_token_and_listed_with_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let (_served, url, _) = serve(&["--data", data]).await;

    let created = run(&["tenant", "create", "acme", "--data", data]).await;
    assert!(created.status.success(), "{created:?}");
    let printed = stdout(&created);
    assert_eq!(printed.lines().count(), 1, "the token alone: {printed:?}");
    let acme_admin = printed.trim().to_owned();
    assert!(
        stderr(&created).contains("Created tenant acme")
            && stderr(&created).contains("ferry pair-code --tenant acme"),
        "{created:?}"
    );

    // The token is acme's admin's: it sees acme's devices and no other tenant's.
    pair(&url, data, "default", dir.path(), "Till").await;
    let (_, kiosk) = pair(&url, data, "acme", dir.path(), "Kiosk").await;
    let listed = run(&[
        "devices",
        "--json",
        "--server",
        &url,
        "--token",
        &acme_admin,
    ])
    .await;
    assert!(listed.status.success(), "{listed:?}");
    let listed: DevicesResponse = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = listed
        .devices
        .iter()
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(ids, [kiosk.as_str()]);

    // Creating it again is refused and writes nothing: no second admin token.
    let tokens = tokens_of(data, "acme");
    let again = run(&["tenant", "create", "acme", "--data", data]).await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("has a tenant \"acme\" already; nothing was changed"),
        "{again:?}"
    );
    assert!(again.stdout.is_empty(), "{again:?}");
    assert_eq!(tokens_of(data, "acme"), tokens);

    // A name that is not one is a usage error, which says what a name may be.
    for bad in ["Acme", "acme corp", ""] {
        let refused = run(&["tenant", "create", bad, "--data", data]).await;
        assert_eq!(refused.status.code(), Some(2), "{bad:?}: {refused:?}");
        assert!(
            stderr(&refused).contains("use 1 to 64 of a-z, 0-9, _ and -"),
            "{refused:?}"
        );
    }

    let list = run(&["tenant", "list", "--json", "--data", data]).await;
    assert!(list.status.success(), "{list:?}");
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let tenants = list["tenants"].as_array().unwrap();
    let summary: Vec<(&str, u64)> = tenants
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["devices"].as_u64().unwrap()))
        .collect();
    assert_eq!(summary, [("default", 1), ("acme", 1)], "oldest first");
    assert!(tenants[1]["created_at"].as_str().unwrap().ends_with('Z'));

    let table = run(&["tenant", "list", "--data", data]).await;
    assert!(table.status.success(), "{table:?}");
    let table = stdout(&table);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TENANT   DEVICES  REVOKED  CREATED"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("acme     1        0        "),
        "{table}"
    );
}

#[tokio::test]
async fn tenants_are_made_on_postgresql_too() {
    let database = ferry_testkit::TestDatabase::create().await;
    let store = ["--database", database.url.as_str()];
    let created = run(&[&["tenant", "create", "acme"][..], &store[..]].concat()).await;
    assert!(created.status.success(), "{created:?}");
    let again = run(&[&["tenant", "create", "acme"][..], &store[..]].concat()).await;
    assert!(stderr(&again).contains("already"), "{again:?}");
    let list = run(&[&["tenant", "list", "--json"][..], &store[..]].concat()).await;
    assert!(list.status.success(), "{list:?}");
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["tenants"][0]["id"], "acme");
    assert_eq!(list["tenants"][0]["devices"], 0);
    assert_eq!(list["tenants"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn devices_are_listed_and_revoked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let (_served, url, _) = serve(&["--data", data]).await;
    let (till_db, till) = pair(&url, data, "default", dir.path(), "Till").await;
    let (tablet_db, tablet) = pair(&url, data, "default", dir.path(), "Tablet").await;
    rusqlite::Connection::open(&till_db)
        .unwrap()
        .execute("INSERT INTO customers (id, name) VALUES ('c1', 'Ada')", [])
        .unwrap();
    assert_eq!(sync(&till_db).await["pushed"], 1);

    let listed = as_admin(&["devices", "--json"], &url, data).await;
    let listed: DevicesResponse = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.devices.len(), 2);
    assert!(listed.devices[0].last_push_at.is_some());
    let seen = listed.devices[0].last_seen_at.clone().unwrap();

    let shown = as_admin(&["devices"], &url, data).await;
    assert!(shown.status.success(), "{shown:?}");
    let shown = stdout(&shown);
    let lines: Vec<&str> = shown.lines().collect();
    let header: Vec<&str> = lines[0].split("  ").filter(|c| !c.is_empty()).collect();
    let header: Vec<&str> = header.iter().map(|c| c.trim()).collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DEVICE",
            "LAST SEEN",
            "LAST PUSH",
            "LAST PULL",
            "PENDING",
            "VERSION",
            "STATUS"
        ],
        "{shown}"
    );
    let till_line = lines.iter().find(|l| l.starts_with("Till ")).unwrap();
    // Last seen in words and exactly: "just now (2026-…Z)", "14 minutes ago (2026-…Z)".
    assert!(
        till_line.contains(&till)
            && till_line.contains(&format!("({seen})"))
            && till_line.ends_with("active"),
        "{shown}"
    );
    let tablet_line = lines.iter().find(|l| l.starts_with("Tablet ")).unwrap();
    assert!(tablet_line.contains(" never "), "{shown}");

    let revoked = as_admin(&["devices", "revoke", &tablet], &url, data).await;
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(
        stdout(&revoked).starts_with(&format!("Revoked device {tablet} (Tablet): ")),
        "{revoked:?}"
    );
    let listed = as_admin(&["devices", "--json"], &url, data).await;
    let listed: DevicesResponse = serde_json::from_slice(&listed.stdout).unwrap();
    let entry = listed.devices.iter().find(|d| d.device_id == tablet);
    assert!(entry.unwrap().revoked_at.is_some(), "{listed:?}");
    let refused = run(&["agent", "sync", "--db", tablet_db.to_str().unwrap()]).await;
    assert!(!refused.status.success(), "a revoked device cannot sync");
    let shown = stdout(&as_admin(&["devices"], &url, data).await);
    let tablet_line = shown.lines().find(|l| l.starts_with("Tablet ")).unwrap();
    assert!(tablet_line.contains(" revoked "), "{shown}");

    // An id the tenant does not have is an error that says where the ids are.
    let missing = as_admin(&["devices", "revoke", "dev_nope"], &url, data).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no device \"dev_nope\"")
            && stderr(&missing).contains("`ferry devices` lists"),
        "{missing:?}"
    );

    // A viewer reads the list but revokes nothing.
    let viewer = viewer(data).await;
    let read = run(&["devices", "--server", &url, "--token", &viewer]).await;
    assert!(read.status.success(), "{read:?}");
    let refused = run(&[
        "devices", "revoke", &till, "--server", &url, "--token", &viewer,
    ])
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("403 forbidden") && stderr(&refused).contains("admin role"),
        "{refused:?}"
    );
    assert_eq!(sync(&till_db).await["ok"], true, "the till still syncs");

    // The list's flags belong to the list.
    let mixed = run(&["devices", "--json", "revoke", &till]).await;
    assert_eq!(mixed.status.code(), Some(2), "{mixed:?}");
}

#[tokio::test]
async fn the_conflict_log_is_read_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let (_served, url, _) = serve(&["--data", data]).await;
    let (a_db, a) = pair(&url, data, "default", dir.path(), "A").await;
    let (b_db, b) = pair(&url, data, "default", dir.path(), "B").await;

    let none = as_admin(&["conflicts"], &url, data).await;
    assert!(none.status.success(), "{none:?}");
    assert!(stdout(&none).starts_with("No conflicts"), "{none:?}");

    // Both write the same customer before either has seen the other's write: one loses.
    for (db, name) in [(&a_db, "Ada"), (&b_db, "Bob")] {
        rusqlite::Connection::open(db)
            .unwrap()
            .execute("INSERT INTO customers (id, name) VALUES ('c1', ?1)", [name])
            .unwrap();
    }
    sync(&a_db).await;
    sync(&b_db).await;

    let logged = as_admin(&["conflicts", "--json"], &url, data).await;
    assert!(logged.status.success(), "{logged:?}");
    let logged: ConflictsResponse = serde_json::from_slice(&logged.stdout).unwrap();
    assert_eq!(logged.conflicts.len(), 1, "{logged:?}");
    let conflict = &logged.conflicts[0];
    assert_eq!(conflict.table, "customers");
    let mut devices = [
        conflict.loser_device.clone(),
        conflict.winner_device.clone(),
    ];
    devices.sort();
    let mut expected = [Some(a.clone()), Some(b.clone())];
    expected.sort();
    assert_eq!(devices, expected);

    let shown = as_admin(&["conflicts"], &url, data).await;
    let shown = stdout(&shown);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    let (loser, winner) = (
        conflict.loser_device.as_deref().unwrap(),
        conflict.winner_device.as_deref().unwrap(),
    );
    assert!(
        lines[0].starts_with(&format!("#{} customers id=c1, recorded ", conflict.id))
            && lines[0].ends_with(&format!(": device {loser} lost to device {winner}")),
        "{shown}"
    );
    let held = conflict.loser_data.as_ref().unwrap()["name"]
        .as_str()
        .unwrap();
    assert!(
        lines[1].starts_with(&format!("  lost: {} {{", conflict.loser_version))
            && lines[1].contains(held),
        "{shown}"
    );
    assert_eq!(lines[2], format!("  won:  {}", conflict.winner_version));

    let row = as_admin(
        &["conflicts", "--table", "customers", "--pk", "c1"],
        &url,
        data,
    )
    .await;
    assert_eq!(stdout(&row), shown, "{row:?}");
    let other = as_admin(
        &["conflicts", "--table", "customers", "--pk", "c2"],
        &url,
        data,
    )
    .await;
    assert_eq!(stdout(&other), "No conflicts match.\n", "{other:?}");

    let keyless = as_admin(&["conflicts", "--pk", "c1"], &url, data).await;
    assert_eq!(keyless.status.code(), Some(2), "--pk needs --table");
    let unknown = as_admin(&["conflicts", "--table", "nope", "--pk", "c1"], &url, data).await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("400 invalid_request")
            && stderr(&unknown).contains("not in the server's schema"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_job_is_pinned_and_unpinned_from_the_command_line_and_viewers_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let (_served, url, _) = serve(&["--data", data, "--probe", "sleep=0ms"]).await;
    let state = || async {
        let output = as_admin(&["state", "--json"], &url, data).await;
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<SyncState>(&output.stdout).unwrap()
    };

    let pinned = as_admin(&["pin", "--tier", "dormant", "--hours", "2"], &url, data).await;
    assert!(pinned.status.success(), "{pinned:?}");
    let until = state().await.pinned_until.expect("pinned");
    assert_eq!(
        stdout(&pinned).lines().next().unwrap(),
        format!("Pinned job probe to the dormant tier (every 7 d) until {until}.")
    );
    assert_eq!(state().await.tier, "dormant");

    let json = as_admin(
        &["pin", "--json", "--tier", "idle", "--hours", "90m"],
        &url,
        data,
    )
    .await;
    assert!(json.status.success(), "{json:?}");
    let answer: SyncState = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(answer.tier, "idle");
    let until_ms = ferry_core::time::parse_ms(answer.pinned_until.as_deref().unwrap()).unwrap();
    let left = until_ms - ferry_core::time::now_ms();
    assert!(
        (80 * 60_000..=90 * 60_000).contains(&left),
        "90 minutes: {left} ms"
    );

    let unpinned = as_admin(&["unpin"], &url, data).await;
    assert!(unpinned.status.success(), "{unpinned:?}");
    assert!(
        stdout(&unpinned).starts_with("Job probe is not pinned: it runs at its own tier, "),
        "{unpinned:?}"
    );
    assert_eq!(state().await.pinned_until, None);

    // Tiers and lengths that are not ones are usage errors, before the server is asked.
    let bad_tier = as_admin(&["pin", "--tier", "busy", "--hours", "1"], &url, data).await;
    assert_eq!(bad_tier.status.code(), Some(2), "{bad_tier:?}");
    assert!(
        stderr(&bad_tier).contains("[possible values: active, idle, dormant]"),
        "{bad_tier:?}"
    );
    let too_long = as_admin(&["pin", "--tier", "idle", "--hours", "400d"], &url, data).await;
    assert_eq!(too_long.status.code(), Some(2), "{too_long:?}");
    assert!(
        stderr(&too_long).contains("not between 0 and 366 days"),
        "{too_long:?}"
    );
    let no_job = as_admin(
        &["pin", "--tier", "idle", "--hours", "1", "--job", "nope"],
        &url,
        data,
    )
    .await;
    assert!(
        stderr(&no_job).contains("404 not_found") && stderr(&no_job).contains("\"nope\""),
        "{no_job:?}"
    );

    // A viewer reads the state but neither pins nor unpins.
    let viewer = viewer(data).await;
    for args in [
        vec!["pin", "--tier", "active", "--hours", "1"],
        vec!["unpin"],
    ] {
        let mut all = args.clone();
        all.extend(["--server", &url, "--token", &viewer]);
        let refused = run(&all).await;
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            stderr(&refused).contains("403 forbidden")
                && stderr(&refused).contains("needs the operator role"),
            "{refused:?}"
        );
    }
    assert_eq!(
        state().await.pinned_until,
        None,
        "the refused pin stored nothing"
    );
}
