//! Writes to the built-in point-of-sale schema, as an app would make them.

use rusqlite::{Connection, params};

pub fn insert_category(app: &Connection, id: &str, name: &str, parent: Option<&str>) {
    app.execute(
        "INSERT INTO categories (id, name, parent_id) VALUES (?1, ?2, ?3)",
        params![id, name, parent],
    )
    .expect("insert category");
}

pub fn insert_product(
    app: &Connection,
    id: &str,
    category: Option<&str>,
    name: &str,
    price_cents: i64,
) {
    app.execute(
        "INSERT INTO products (id, category_id, name, price_cents) VALUES (?1, ?2, ?3, ?4)",
        params![id, category, name, price_cents],
    )
    .expect("insert product");
}

pub fn set_price(app: &Connection, id: &str, price_cents: i64) {
    let n = app
        .execute(
            "UPDATE products SET price_cents = ?2 WHERE id = ?1",
            params![id, price_cents],
        )
        .expect("update product");
    assert_eq!(n, 1, "product {id} exists");
}

pub fn price(app: &Connection, id: &str) -> Option<i64> {
    app.query_row(
        "SELECT price_cents FROM products WHERE id = ?1",
        [id],
        |r| r.get(0),
    )
    .ok()
}

pub fn insert_customer(app: &Connection, id: &str, name: &str) {
    app.execute(
        "INSERT INTO customers (id, name) VALUES (?1, ?2)",
        params![id, name],
    )
    .expect("insert customer");
}

pub fn insert_sale(app: &Connection, id: &str, customer: Option<&str>, total_cents: i64) {
    app.execute(
        "INSERT INTO sales (id, customer_id, total_cents, created_at) VALUES (?1, ?2, ?3, '2026-11-21T12:00:00.000Z')",
        params![id, customer, total_cents],
    )
    .expect("insert sale");
}

pub fn insert_sale_item(
    app: &Connection,
    id: &str,
    sale: &str,
    product: &str,
    quantity: i64,
    unit_price_cents: i64,
) {
    app.execute(
        "INSERT INTO sale_items (id, sale_id, product_id, quantity, unit_price_cents) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, sale, product, quantity, unit_price_cents],
    )
    .expect("insert sale item");
}
