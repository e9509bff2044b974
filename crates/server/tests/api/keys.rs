//! Integer and composite primary keys, with a schema of the test's own.

use reqwest::Method;
use serde_json::{Value, json};

use super::support::*;

const DDL: &str = "
CREATE TABLE shops (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE stock (
  shop_id INTEGER NOT NULL REFERENCES shops (id),
  sku     TEXT NOT NULL,
  qty     INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (shop_id, sku)
);
CREATE TABLE moves (
  id      INTEGER PRIMARY KEY,
  shop_id INTEGER NOT NULL,
  sku     TEXT NOT NULL,
  delta   INTEGER NOT NULL,
  FOREIGN KEY (shop_id, sku) REFERENCES stock (shop_id, sku)
);
";

fn shop(id: Value, version: &str) -> Value {
    json!({"table": "shops", "pk": {"id": id}, "version": version, "data": {"id": id, "name": "Shop"}})
}

fn stock(shop_id: Value, sku: &str, qty: i64, version: &str) -> Value {
    json!({"table": "stock", "pk": {"sku": sku, "shop_id": shop_id}, "version": version,
           "data": {"shop_id": shop_id, "sku": sku, "qty": qty}})
}

fn movement(id: i64, shop_id: i64, sku: &str, version: &str) -> Value {
    json!({"table": "moves", "pk": {"id": id}, "version": version,
           "data": {"id": id, "shop_id": shop_id, "sku": sku, "delta": -1}})
}

#[tokio::test]
async fn integer_and_composite_keys_identify_rows_like_sqlite_does() {
    let server = Server::start_with(Some(DDL), |_| {}).await;
    let schema = ferry_schema::parse_ddl(DDL).unwrap();
    assert_eq!(server.schema_hash, ferry_schema::hash(&schema));
    let device = server.pair("Till").await;
    let outcomes = server
        .push_ok(
            &device,
            json!([
                movement(1, 7, "A-1", &v(1, "a")),
                stock(json!(7), "A-1", 5, &v(1, "a")),
                shop(json!(7), &v(1, "a")),
            ]),
        )
        .await;
    assert_eq!(outcomes, ["applied", "applied", "applied"]);
    // "7" and 7 name the same INTEGER key; key order in `pk` does not matter.
    let outcomes = server
        .push_ok(
            &device,
            json!([
                shop(json!("7"), &v(1, "a")),
                stock(json!("7"), "A-1", 5, &v(0, "a"))
            ]),
        )
        .await;
    assert_eq!(outcomes, ["duplicate", "superseded"]);
    let (status, body) = server
        .push(
            &device,
            json!([
                movement(2, 7, "B-2", &v(2, "a")),
                movement(3, 8, "A-1", &v(2, "a"))
            ]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["code"], "fk_violation");
    assert_eq!(
        body["results"][0]["message"],
        "moves.(shop_id, sku) (7, 'B-2') not found in stock"
    );
    assert_eq!(body["results"][1]["code"], "fk_violation");
    assert_eq!(server.snapshot(DEFAULT_TENANT).await.len(), 3);

    // A conflict on a composite key, looked up with the key as a JSON object.
    let other = server.pair("Other").await;
    server
        .push_ok(&other, json!([stock(json!(7), "A-1", 9, &v(5, "b"))]))
        .await;
    let (_, body) = send(
        server
            .request(Method::GET, "/api/admin/conflicts", Some(&server.admin))
            .query(&[
                ("table", "stock"),
                ("pk", r#"{"shop_id": "7", "sku": "A-1"}"#),
            ]),
    )
    .await;
    let conflicts = body["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{body}");
    assert_eq!(conflicts[0]["loser_device"], device.id.as_str());
    assert_eq!(conflicts[0]["loser_data"]["qty"], 5);
    let got = server
        .call(
            Method::GET,
            "/api/admin/conflicts?table=stock&pk=A-1",
            Some(&server.admin),
            None,
        )
        .await;
    assert_error(&got, 400, "invalid_request");
}
