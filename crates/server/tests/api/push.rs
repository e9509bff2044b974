use reqwest::Method;
use serde_json::{Value, json};

use super::support::*;

#[tokio::test]
async fn outcomes_come_one_per_change_in_request_order() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let first = server
        .push_ok(
            &device,
            json!([
                product("p1", "Cola", &v(10, "a")),
                product("p2", "Tea", &v(10, "a"))
            ]),
        )
        .await;
    assert_eq!(first, ["applied", "applied"]);

    let (status, body) = server
        .push(
            &device,
            json!([
                product("p2", "Tea", &v(10, "a")),   // same version: duplicate
                json!({"table": "nope", "pk": {"id": "x"}, "version": v(1, "a"), "data": {"id": "x"}}),
                product("p1", "Old cola", &v(5, "a")), // older: superseded
                product("p3", "Water", &v(11, "a")),  // new: applied
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["table"].as_str().unwrap(),
                r["pk"]["id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("products", "p2", "duplicate"),
            ("nope", "x", "rejected"),
            ("products", "p1", "superseded"),
            ("products", "p3", "applied"),
        ]
    );
    assert_eq!(results[1]["code"], "unknown_table");
    assert!(results[1]["message"].as_str().unwrap().contains("nope"));
    assert!(results[0].get("code").is_none() && results[0].get("message").is_none());
    assert!(ferry_core::time::parse_ms(body["server_time"].as_str().unwrap()).is_some());

    // The superseded write did not replace the stored row.
    let snapshot = server.snapshot(DEFAULT_TENANT).await;
    let p1 = snapshot.iter().find(|r| r.0.contains("\"p1\"")).unwrap();
    assert_eq!(p1.1, v(10, "a"));
    assert_eq!(snapshot.len(), 3);
}

#[tokio::test]
async fn pushing_the_same_batch_twice_changes_nothing_the_second_time() {
    let server = Server::start().await;
    let a = server.pair("A").await;
    let b = server.pair("B").await;
    server
        .push_ok(&b, json!([product("p1", "B's cola", &v(20, "b"))]))
        .await;
    let batch = json!([
        customer("c1", &v(1, "a")),
        sale("s1", Some("c1"), &v(1, "a")),
        product("p1", "A's older cola", &v(10, "a")), // superseded by B's: logged once
        tombstone("products", "gone", &v(3, "a")),
    ]);
    let first = server.push_ok(&a, batch.clone()).await;
    assert_eq!(first, ["applied", "applied", "superseded", "applied"]);
    let rows_before = server.snapshot(DEFAULT_TENANT).await;
    let (_, conflicts_before) = server
        .call(
            Method::GET,
            "/api/admin/conflicts",
            Some(&server.admin),
            None,
        )
        .await;

    let second = server.push_ok(&a, batch).await;
    assert_eq!(
        second,
        ["duplicate", "duplicate", "superseded", "duplicate"]
    );
    assert_eq!(server.snapshot(DEFAULT_TENANT).await, rows_before);
    let (_, conflicts_after) = server
        .call(
            Method::GET,
            "/api/admin/conflicts",
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(conflicts_after, conflicts_before);
    assert_eq!(conflicts_after["conflicts"].as_array().unwrap().len(), 1);
    // B sees nothing new after A's re-push.
    let (_, cursor) = server.pull_all(&b, None).await;
    server
        .push_ok(&a, json!([sale("s1", Some("c1"), &v(1, "a"))]))
        .await;
    let (changes, _) = server.pull_all(&b, Some(&cursor)).await;
    assert!(changes.is_empty(), "{changes:?}");
}

#[tokio::test]
async fn children_sent_before_their_parents_apply_in_one_batch() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let outcomes = server
        .push_ok(
            &device,
            json!([
                sale_item("i1", "s1", "p1", &v(1, "a")),
                category("c3", Some("c2"), &v(1, "a")),
                product("p1", "Cola", &v(1, "a")).tap(|p| p["data"]["category_id"] = json!("c3")),
                sale("s1", Some("cu1"), &v(1, "a")),
                category("c2", Some("c1"), &v(1, "a")),
                customer("cu1", &v(1, "a")),
                category("c1", None, &v(1, "a")),
            ]),
        )
        .await;
    assert_eq!(outcomes, vec!["applied"; 7]);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await.len(), 7);
}

#[tokio::test]
async fn a_missing_parent_rejects_only_that_row() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    server
        .push_ok(&device, json!([product("p1", "Cola", &v(1, "a"))]))
        .await;
    let (status, body) = server
        .push(
            &device,
            json!([
                sale_item("orphan", "abc", "p1", &v(2, "a")),
                sale("s1", None, &v(2, "a")),
                sale_item("ok", "s1", "p1", &v(2, "a")),
                category("lost", Some("nowhere"), &v(2, "a")),
                category("self", Some("self"), &v(2, "a")),
            ]),
        )
        .await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["outcome"], "rejected");
    assert_eq!(results[0]["code"], "fk_violation");
    assert_eq!(
        results[0]["message"],
        "sale_items.sale_id 'abc' not found in sales"
    );
    assert_eq!(results[1]["outcome"], "applied");
    assert_eq!(results[2]["outcome"], "applied");
    assert_eq!(results[3]["code"], "fk_violation");
    assert_eq!(
        results[3]["message"],
        "categories.parent_id 'nowhere' not found in categories"
    );
    assert_eq!(
        results[4]["outcome"], "applied",
        "a row may reference itself"
    );
    let rows = server.snapshot(DEFAULT_TENANT).await;
    assert!(
        !rows
            .iter()
            .any(|r| r.0.contains("orphan") || r.0.contains("lost")),
        "{rows:?}"
    );
    assert_eq!(rows.len(), 4);
}

#[tokio::test]
async fn a_deleted_parent_does_not_satisfy_a_foreign_key() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    server
        .push_ok(
            &device,
            json!([
                product("p1", "Cola", &v(1, "a")),
                sale("s1", None, &v(1, "a"))
            ]),
        )
        .await;
    let outcomes = server
        .push_ok(
            &device,
            json!([
                tombstone("sales", "s1", &v(2, "a")),
                sale_item("i1", "s1", "p1", &v(2, "a"))
            ]),
        )
        .await;
    // Upserts apply before tombstones, so the item still found its parent in this batch.
    assert_eq!(outcomes, ["applied", "applied"]);
    let outcomes = server
        .push_ok(&device, json!([sale_item("i2", "s1", "p1", &v(3, "a"))]))
        .await;
    assert_eq!(outcomes, ["rejected:fk_violation"]);
}

/// Regression (issue 13): rows whose references form a cycle were rejected on every push.
#[tokio::test]
async fn rows_that_reference_each_other_apply_in_one_batch() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let outcomes = server
        .push_ok(
            &device,
            json!([
                product("p1", "Cola", &v(1, "a")).tap(|p| p["data"]["category_id"] = json!("c1")),
                category("c1", Some("c2"), &v(1, "a")),
                category("c2", Some("c1"), &v(1, "a")),
                // A longer cycle, and a row below it.
                category("c3", Some("c4"), &v(1, "a")),
                category("c4", Some("c5"), &v(1, "a")),
                category("c5", Some("c3"), &v(1, "a")),
                category("c6", Some("c5"), &v(1, "a")),
            ]),
        )
        .await;
    assert_eq!(outcomes, vec!["applied"; 7]);
    assert_eq!(server.snapshot(DEFAULT_TENANT).await.len(), 7);
}

#[tokio::test]
async fn a_cycle_with_an_invalid_member_is_rejected_whole() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let (status, body) = server
        .push(
            &device,
            json!([
                product("p1", "Cola", &v(1, "a")).tap(|p| p["data"]["category_id"] = json!("c1")),
                category("c1", Some("c2"), &v(1, "a")),
                // Invalid for a reason of its own: `name` is NOT NULL.
                category("c2", Some("c3"), &v(1, "a")).tap(|c| c["data"]["name"] = json!(null)),
                category("c3", Some("c1"), &v(1, "a")),
                customer("cu1", &v(1, "a")),
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results: Vec<(&str, &str)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap_or("-"),
                r["message"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            (
                "fk_violation",
                "products.category_id 'c1' not found in categories"
            ),
            (
                "fk_violation",
                "categories.parent_id 'c2' not found in categories"
            ),
            ("invalid_value", results[2].1),
            (
                "fk_violation",
                "categories.parent_id 'c1' not found in categories"
            ),
            ("-", "-"),
        ]
    );
    // Nothing of the cycle was written, nor logged.
    let rows = server.snapshot(DEFAULT_TENANT).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.starts_with("customers/"), "{rows:?}");
    let (_, conflicts) = server
        .call(
            Method::GET,
            "/api/admin/conflicts",
            Some(&server.admin),
            None,
        )
        .await;
    assert!(conflicts["conflicts"].as_array().unwrap().is_empty());

    // Once the invalid member is fixed, the whole cycle goes through.
    let outcomes = server
        .push_ok(
            &device,
            json!([
                category("c3", Some("c1"), &v(2, "a")),
                category("c1", Some("c2"), &v(2, "a")),
                category("c2", Some("c3"), &v(2, "a")),
                product("p1", "Cola", &v(2, "a")).tap(|p| p["data"]["category_id"] = json!("c1")),
            ]),
        )
        .await;
    assert_eq!(outcomes, vec!["applied"; 4]);
}

/// A member of a cycle stored by an earlier push satisfies the others, even when this batch's
/// own write of it is rejected.
#[tokio::test]
async fn a_cycle_member_already_stored_satisfies_the_others() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    server
        .push_ok(&device, json!([category("c1", None, &v(1, "a"))]))
        .await;
    let outcomes = server
        .push_ok(
            &device,
            json!([
                category("c2", Some("c1"), &v(2, "a")),
                // Invalid, but its stored version stays, so c2 still has its parent.
                category("c1", Some("c2"), &v(2, "a")).tap(|c| c["data"]["name"] = json!(null)),
            ]),
        )
        .await;
    assert_eq!(outcomes, ["applied", "rejected:invalid_value"]);
}

#[tokio::test]
async fn versions_too_far_ahead_of_the_server_clock_are_rejected() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let now = now_ms();
    let ten_minutes_ahead = ferry_core::version::format(now + 10 * 60_000, 0, "fast");
    let one_minute_ahead = ferry_core::version::format(now + 60_000, 0, "fast");
    let (status, body) = server
        .push(
            &device,
            json!([
                product("p1", "Future", &ten_minutes_ahead),
                product("p2", "Soon", &one_minute_ahead)
            ]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["code"], "clock_skew");
    assert!(
        body["results"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ahead")
    );
    assert_eq!(body["results"][1]["outcome"], "applied");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await.len(), 1);
}

#[tokio::test]
async fn a_tighter_configured_skew_is_honoured() {
    let server = Server::start_with(None, |c| {
        c.max_clock_skew = std::time::Duration::from_secs(10)
    })
    .await;
    let device = server.pair("Till").await;
    let ahead = ferry_core::version::format(now_ms() + 60_000, 0, "fast");
    let outcomes = server
        .push_ok(&device, json!([product("p1", "Soon", &ahead)]))
        .await;
    assert_eq!(outcomes, ["rejected:clock_skew"]);
}

#[tokio::test]
async fn invalid_rows_are_rejected_with_their_reason() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": "yesterday", "data": {"id": "p", "name": "x"}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a")}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "p"}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "p", "name": null}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "p", "name": "x", "colour": "red"}}),
            "schema_mismatch",
        ),
        (
            json!({"table": "products", "pk": {}, "version": v(1, "a"), "data": {"name": "x"}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": null}, "version": v(1, "a"), "data": {"name": "x"}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"sku": "p"}, "version": v(1, "a"), "data": {"name": "x"}}),
            "schema_mismatch",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "q", "name": "x"}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "p", "name": true}}),
            "invalid_value",
        ),
        (
            json!({"table": "products", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "p", "name": [1]}}),
            "invalid_value",
        ),
        (
            json!({"table": "orders", "pk": {"id": "p"}, "version": v(1, "a"), "data": {"id": "p"}}),
            "unknown_table",
        ),
    ];
    let changes: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let (status, body) = server.push(&device, Value::from(changes)).await;
    assert_eq!(status, 200, "{body}");
    for (i, (change, code)) in cases.iter().enumerate() {
        let result = &body["results"][i];
        assert_eq!(result["outcome"], "rejected", "{change}: {result}");
        assert_eq!(result["code"], *code, "{change}: {result}");
        assert!(!result["message"].as_str().unwrap().is_empty());
    }
    assert!(server.snapshot(DEFAULT_TENANT).await.is_empty());
}

#[tokio::test]
async fn blobs_and_tombstones_without_data_are_accepted() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let blob = json!({"table": "customers", "pk": {"id": "c"}, "version": v(1, "a"),
                      "data": {"id": "c", "name": "Ann", "email": {"$blob": "AAEC"}}});
    let outcomes = server
        .push_ok(
            &device,
            json!([blob, tombstone("products", "never-existed", &v(1, "a"))]),
        )
        .await;
    assert_eq!(outcomes, ["applied", "applied"]);
    // A tombstone is kept, so a late older write of the same row loses.
    let outcomes = server
        .push_ok(
            &device,
            json!([product("never-existed", "Late", &v(0, "a"))]),
        )
        .await;
    assert_eq!(outcomes, ["superseded"]);
}

#[tokio::test]
async fn the_conflict_log_keeps_overwritten_and_rejected_losing_versions() {
    let server = Server::start().await;
    let a = server.pair("A").await;
    let b = server.pair("B").await;
    server
        .push_ok(&a, json!([product("p1", "A1", &v(1, "a"))]))
        .await;
    // A editing its own row is not a conflict.
    server
        .push_ok(&a, json!([product("p1", "A2", &v(2, "a"))]))
        .await;
    // B overwrites A's write: A's version lost.
    server
        .push_ok(&b, json!([product("p1", "B3", &v(3, "b"))]))
        .await;
    // A's late, older write loses against B's.
    server
        .push_ok(&a, json!([tombstone("products", "p1", &v(2, "z"))]))
        .await;
    server
        .push_ok(&a, json!([product("p2", "Other", &v(1, "a"))]))
        .await;

    let (status, body) = server
        .call(
            Method::GET,
            "/api/admin/conflicts?table=products&pk=p1",
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let conflicts = body["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{body}");
    // Newest first.
    let late = &conflicts[0];
    assert_eq!(late["winner_version"], v(3, "b"));
    assert_eq!(late["winner_device"], b.id.as_str());
    assert_eq!(late["loser_device"], a.id.as_str());
    assert_eq!(late["loser_deleted"], true);
    assert!(late["loser_data"].is_null());
    let overwritten = &conflicts[1];
    assert_eq!(overwritten["table"], "products");
    assert_eq!(overwritten["pk"], json!({"id": "p1"}));
    assert_eq!(overwritten["loser_version"], v(2, "a"));
    assert_eq!(overwritten["loser_device"], a.id.as_str());
    assert_eq!(overwritten["loser_data"]["name"], "A2");
    assert_eq!(overwritten["loser_deleted"], false);
    assert_eq!(overwritten["winner_version"], v(3, "b"));
    assert!(late["id"].as_i64() > overwritten["id"].as_i64());
    // Both side by side: the winner's values while it is the row's current version.
    assert_eq!(late["winner_data"]["name"], "B3", "{body}");
    assert_eq!(overwritten["winner_data"]["name"], "B3", "{body}");

    // The same row named by a JSON key object; other filters; viewers may read.
    let viewer = server
        .store
        .create_operator_token(DEFAULT_TENANT, ferry_store::Role::Viewer, None)
        .await
        .unwrap();
    let (_, by_object) = send(
        server
            .request(Method::GET, "/api/admin/conflicts", Some(&viewer))
            .query(&[("table", "products"), ("pk", r#"{"id":"p1"}"#)]),
    )
    .await;
    assert_eq!(by_object, body);

    // Once a newer write replaced the winner, its values are no longer shown as the winner's.
    server
        .push_ok(&b, json!([product("p1", "B4", &v(4, "b"))]))
        .await;
    let (_, later) = server
        .call(
            Method::GET,
            "/api/admin/conflicts?table=products&pk=p1",
            Some(&viewer),
            None,
        )
        .await;
    assert!(later["conflicts"][0]["winner_data"].is_null(), "{later}");
    let (_, none) = server
        .call(
            Method::GET,
            "/api/admin/conflicts?table=products&pk=p2",
            Some(&viewer),
            None,
        )
        .await;
    assert!(none["conflicts"].as_array().unwrap().is_empty());
    let (_, other_table) = server
        .call(
            Method::GET,
            "/api/admin/conflicts?table=sales",
            Some(&viewer),
            None,
        )
        .await;
    assert!(other_table["conflicts"].as_array().unwrap().is_empty());
    let got = server
        .call(
            Method::GET,
            "/api/admin/conflicts?pk=p1",
            Some(&viewer),
            None,
        )
        .await;
    assert_error(&got, 400, "invalid_request");
    let got = server
        .call(Method::GET, "/api/admin/conflicts", Some(&a.token), None)
        .await;
    assert_error(&got, 403, "forbidden");
}

trait Tap {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Value)) -> Value {
        f(&mut self);
        self
    }
}

/// Regression guard: on PostgreSQL a key of about 2.7 KB failed the whole push with a `500`
/// (b-tree entry size), so the device could never sync again.
#[tokio::test]
async fn an_over_long_key_is_rejected_on_its_own_row_on_every_store() {
    let server = Server::start().await;
    let device = server.pair("Till").await;
    let long = "k".repeat(1990);
    let too_long = "k".repeat(3000);
    let (status, body) = server
        .push(
            &device,
            json!([
                product(&too_long, "Too long", &v(1, "a")),
                product(&long, "Long", &v(1, "a")),
                product("p1", "Cola", &v(1, "a")),
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["outcome"], "rejected");
    assert_eq!(results[0]["code"], "invalid_value");
    assert!(
        results[0]["message"]
            .as_str()
            .unwrap()
            .contains(&ferry_store::MAX_KEY_BYTES.to_string()),
        "{body}"
    );
    assert_eq!(results[1]["outcome"], "applied", "{body}");
    assert_eq!(results[2]["outcome"], "applied");
    let rows = server.snapshot(DEFAULT_TENANT).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
}
