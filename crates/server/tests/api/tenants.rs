use reqwest::Method;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn tenants_never_see_or_change_each_other_s_rows() {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    assert!(
        !server.store.create_tenant("acme").await.unwrap(),
        "already exists"
    );
    let ours = server.pair("Ours").await;
    let theirs = server.pair_in("acme", "Theirs").await;
    assert_eq!(
        (ours.tenant.as_str(), theirs.tenant.as_str()),
        (DEFAULT_TENANT, "acme")
    );

    server
        .push_ok(&ours, json!([product("p1", "Our cola", &v(1, "o"))]))
        .await;
    // The same key in another tenant is another row: applied, not superseded or conflicting.
    let outcomes = server
        .push_ok(
            &theirs,
            json!([
                product("p1", "Their cola", &v(0, "t")),
                product("p2", "Theirs only", &v(0, "t"))
            ]),
        )
        .await;
    assert_eq!(outcomes, ["applied", "applied"]);
    // Nor can a parent in another tenant satisfy a foreign key.
    server
        .push_ok(&ours, json!([sale("s1", None, &v(1, "o"))]))
        .await;
    let outcomes = server
        .push_ok(&theirs, json!([sale_item("i1", "s1", "p1", &v(1, "t"))]))
        .await;
    assert_eq!(outcomes, ["rejected:fk_violation"]);

    let ours_rows = server.snapshot(DEFAULT_TENANT).await;
    let theirs_rows = server.snapshot("acme").await;
    assert_eq!(ours_rows.len(), 2);
    assert!(ours_rows.iter().all(|r| !r.0.contains("p2")));
    assert_eq!(theirs_rows.len(), 2);
    // A pull from the beginning holds the device's own tenant's rows, its own included.
    let (changes, _) = server.pull_all(&ours, None).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes
            .iter()
            .all(|c| c["version"].as_str().unwrap().ends_with("-o")),
        "nothing of acme's: {changes:?}"
    );
    let (changes, _) = server.pull_all(&theirs, None).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes
            .iter()
            .all(|c| c["version"].as_str().unwrap().ends_with("-t")),
        "nothing of ours: {changes:?}"
    );

    // The conflict log and the admin API are scoped too.
    let (_, conflicts) = server
        .call(
            Method::GET,
            "/api/admin/conflicts",
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(conflicts["conflicts"], json!([]));
    let devices = server.devices().await;
    assert!(devices.iter().all(|d| d.device_id != theirs.id));
    let path = format!("/api/admin/devices/{}", theirs.id);
    let got = server
        .call(Method::DELETE, &path, Some(&server.admin), None)
        .await;
    assert_error(&got, 404, "not_found");
    assert_eq!(
        server.pull(&theirs, None, None).await.0,
        200,
        "still paired"
    );

    let acme_admin = server
        .store
        .create_operator_token("acme", ferry_store::Role::Admin, None)
        .await
        .unwrap();
    let (_, body) = server
        .call(Method::GET, "/api/admin/devices", Some(&acme_admin), None)
        .await;
    let listed: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&theirs.id.as_str()) && !listed.contains(&ours.id.as_str()));
    let (status, code) = server
        .call(
            Method::POST,
            "/api/admin/pairing-codes",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(code["tenant"], "acme");
}

/// Every cursor a device of the default tenant is handed over a fixed history of its tenant,
/// while tenant `acme` writes `theirs` rows between each of its tenant's writes; and what a
/// cursor a little past its tenant's last change gets.
async fn cursors_seen_beside(theirs: usize) -> (Vec<String>, (u16, serde_json::Value)) {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    let ours = server.pair("Ours").await;
    let observer = server.pair("Observer").await;
    let other = server.pair_in("acme", "Theirs").await;
    let mut cursors = Vec::new();
    let mut since: Option<String> = None;
    for step in 0..3_i64 {
        let batch: Vec<serde_json::Value> = (0..theirs)
            .map(|i| product(&format!("t{step}-{i}"), "Theirs", &v(step, "t")))
            .collect();
        if !batch.is_empty() {
            server.push_ok(&other, serde_json::Value::from(batch)).await;
        }
        let mine = [product(&format!("o{step}"), "Ours", &v(step, "o"))];
        server.push_ok(&ours, json!(mine)).await;
        // Their writes after ours too: the cursor of a page that ends the pull.
        if theirs > 0 {
            let late = [product(&format!("late{step}"), "Theirs", &v(step, "t"))];
            server.push_ok(&other, json!(late)).await;
        }
        let (changes, cursor) = server.pull_all(&observer, since.as_deref()).await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        cursors.push(cursor.clone());
        since = Some(cursor);
    }
    // A snapshot, a page per row: every page's cursor.
    let mut since: Option<String> = None;
    loop {
        let (status, body) = server.pull(&observer, since.as_deref(), Some(1)).await;
        assert_eq!(status, 200, "{body}");
        let cursor = body["cursor"].as_str().unwrap().to_owned();
        cursors.push(cursor.clone());
        since = Some(cursor);
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    // Five past our tenant's last change: within what acme wrote, unless the sequence is ours.
    let beyond = ferry_store::Cursor::from_seq(
        since.unwrap().parse::<ferry_store::Cursor>().unwrap().seq() + 5,
    );
    let probe = server
        .pull(&observer, Some(&beyond.to_string()), None)
        .await;
    (cursors, probe)
}

/// Guards issue 13: a tenant's pull cursors move with its own writes only, so they do not
/// tell how much other tenants write; nor does `invalid_cursor`.
#[tokio::test]
async fn a_tenant_s_cursors_do_not_tell_how_much_other_tenants_write() {
    let (alone, probe_alone) = cursors_seen_beside(0).await;
    let (beside, probe_beside) = cursors_seen_beside(40).await;
    assert_eq!(alone, beside);
    assert_error(&probe_alone, 400, "invalid_cursor");
    assert_error(&probe_beside, 400, "invalid_cursor");
}

#[tokio::test]
async fn the_store_lists_every_tenant_oldest_first_with_its_devices() {
    let server = Server::start().await;
    assert!(server.store.create_tenant("acme").await.unwrap());
    server.pair("Till").await;
    let gone = server.pair("Old till").await;
    assert!(
        server
            .store
            .revoke_device(DEFAULT_TENANT, &gone.id)
            .await
            .unwrap()
    );
    let listed = server.store.list_tenants().await.unwrap();
    let mut summary: Vec<(&str, u64, u64)> = listed
        .iter()
        .map(|t| (t.id.as_str(), t.devices, t.revoked_devices))
        .collect();
    summary.sort();
    assert_eq!(summary, [("acme", 0, 0), (DEFAULT_TENANT, 1, 1)]);
    for tenant in &listed {
        assert!(
            ferry_core::time::parse_ms(&tenant.created_at).is_some(),
            "{tenant:?}"
        );
    }
    // Oldest first; tenants made in the same millisecond by name.
    let order: Vec<(&str, &str)> = listed
        .iter()
        .map(|t| (t.created_at.as_str(), t.id.as_str()))
        .collect();
    assert!(order.is_sorted(), "{order:?}");
}
