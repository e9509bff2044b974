//! The app: random writes to a device's own SQLite file, as a point-of-sale app makes them, each
//! recorded with the version Ferry's triggers gave it.
//!
//! Rows come from small pools of ids shared by every device, so devices insert, edit and
//! delete the same rows: conflicting edits, a delete against an edit, a row deleted and written
//! again. Foreign keys are off, as in many apps, but the app keeps its own file consistent the
//! way an app with `ON DELETE RESTRICT` would: it deletes only rows nothing references (a sale
//! with its items), references only rows it has, and points a reference at another row (or at
//! none) when it edits a row whose parent a pull took away. What another device does at the
//! same time it cannot see, so the server still meets children of deleted parents.
//!
//! The category tree references itself, and the app writes it in every order: a child before
//! its parent, two new categories that are each other's parent and three in a loop, written in
//! one transaction before one sync (these have ids of their own, outside the pools).

use std::sync::OnceLock;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Number, Value};

use super::model::{Data, RowId, Write};

/// The synced tables, parents first.
pub(crate) const TABLES: [&str; 5] = ["categories", "products", "customers", "sales", "sale_items"];

/// How many ids each table's pool has.
fn pool_size(table: &str) -> usize {
    match table {
        "categories" => 8,
        "products" => 10,
        "customers" => 5,
        "sales" => 6,
        _ => 10,
    }
}

/// A table of the schema as the app and the checks need it.
pub(crate) struct TableShape {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
    pub(crate) refs: Vec<Ref>,
}

/// A foreign key: a column of the table naming the `id` of a row of `parent`.
pub(crate) struct Ref {
    pub(crate) column: String,
    pub(crate) parent: String,
    pub(crate) nullable: bool,
}

/// The point-of-sale schema, read from its DDL.
pub(crate) fn shape(table: &str) -> &'static TableShape {
    static SHAPES: OnceLock<Vec<TableShape>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(|| {
        let schema =
            ferry_schema::parse_ddl(ferry_schema::POINT_OF_SALE).expect("the built-in schema");
        schema
            .tables
            .iter()
            .map(|t| TableShape {
                name: t.name.clone(),
                columns: t.columns.iter().map(|c| c.name.clone()).collect(),
                refs: t
                    .foreign_keys
                    .iter()
                    .map(|fk| {
                        assert_eq!(fk.columns.len(), 1, "single-column references only");
                        let column = fk.columns[0].clone();
                        let nullable = !t.columns.iter().any(|c| c.name == column && c.not_null);
                        Ref {
                            column,
                            parent: fk.parent.clone(),
                            nullable,
                        }
                    })
                    .collect(),
            })
            .collect()
    });
    shapes
        .iter()
        .find(|t| t.name == table)
        .unwrap_or_else(|| panic!("no table {table}"))
}

/// How the app of one device writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Device {
    pub(crate) index: usize,
    /// How far the device's clock runs ahead of the wall clock.
    pub(crate) clock_ahead_ms: i64,
}

/// Runs `transactions` app transactions of one to four writes each, a random moment apart when
/// `pause` is set (writes landing while a cycle runs), and returns the writes they made.
pub(crate) fn write(
    mut conn: Connection,
    seed: u64,
    device: Device,
    transactions: usize,
    pause: bool,
) -> Vec<(RowId, Write)> {
    conn.pragma_update(None, "foreign_keys", false)
        .expect("foreign keys off");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut writes = Vec::new();
    for _ in 0..transactions {
        if pause {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..4_000)));
        }
        let tx = begin(&mut conn, device);
        let mut app = App {
            tx: &tx,
            rng: &mut rng,
            device: device.index,
            writes: Vec::new(),
        };
        for _ in 0..app.rng.random_range(1..=4) {
            app.one_write();
        }
        let made = std::mem::take(&mut app.writes);
        tx.commit().expect("the app's transaction commits");
        writes.extend(made);
    }
    writes
}

/// Edits `rows` (those of the five tables' kinds) in one app transaction: an update where the
/// row is here, an insert where it is not. Returns the writes it made.
pub(crate) fn edit(
    mut conn: Connection,
    seed: u64,
    device: Device,
    rows: &[RowId],
) -> Vec<(RowId, Write)> {
    conn.pragma_update(None, "foreign_keys", false)
        .expect("foreign keys off");
    let mut rng = StdRng::seed_from_u64(seed);
    let tx = begin(&mut conn, device);
    let mut app = App {
        tx: &tx,
        rng: &mut rng,
        device: device.index,
        writes: Vec::new(),
    };
    for (table, id) in rows {
        app.write_row(RowKind::of(table), id);
    }
    let made = std::mem::take(&mut app.writes);
    tx.commit().expect("the app's transaction commits");
    made
}

/// Begins an app transaction. A device whose clock runs ahead stamps its versions from a wall
/// clock that far ahead: Ferry's triggers read SQLite's own clock, so its clock row is moved
/// up to that time first, as the triggers' first tick would have.
fn begin(conn: &mut Connection, device: Device) -> Transaction<'_> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("the app's transaction begins");
    if device.clock_ahead_ms > 0 {
        // 'now' is one instant throughout a statement.
        tx.execute(
            "UPDATE _ferry_clock SET
               counter = CASE WHEN {NOW} + ?1 > ms THEN 0 ELSE counter END,
               ms = max(ms, {NOW} + ?1)
             WHERE id = 1"
                .replace("{NOW}", NOW_MS)
                .as_str(),
            [device.clock_ahead_ms],
        )
        .expect("move the clock ahead");
    }
    tx
}

/// The wall clock in milliseconds, in SQL, as Ferry's triggers read it.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The kinds of rows the app writes, one per table.
#[derive(Debug, Clone, Copy)]
enum RowKind {
    Category,
    Product,
    Customer,
    Sale,
    SaleItem,
}

impl RowKind {
    fn of(table: &str) -> RowKind {
        match table {
            "categories" => RowKind::Category,
            "products" => RowKind::Product,
            "customers" => RowKind::Customer,
            "sales" => RowKind::Sale,
            "sale_items" => RowKind::SaleItem,
            _ => panic!("no table {table}"),
        }
    }

    fn table(self) -> &'static str {
        match self {
            RowKind::Category => "categories",
            RowKind::Product => "products",
            RowKind::Customer => "customers",
            RowKind::Sale => "sales",
            RowKind::SaleItem => "sale_items",
        }
    }
}

/// One app transaction under way.
struct App<'t, 'c> {
    tx: &'t Transaction<'c>,
    rng: &'t mut StdRng,
    device: usize,
    writes: Vec<(RowId, Write)>,
}

impl App<'_, '_> {
    fn one_write(&mut self) {
        match self.rng.random_range(0..100) {
            0..12 => self.upsert(RowKind::Category),
            12..18 => self.category_loop(),
            18..23 => self.child_before_parent(),
            23..40 => self.upsert(RowKind::Product),
            40..50 => self.upsert(RowKind::Customer),
            50..62 => self.upsert(RowKind::Sale),
            62..75 => self.upsert(RowKind::SaleItem),
            _ => self.delete(),
        }
    }

    /// Inserts or edits a random row of the pool.
    fn upsert(&mut self, kind: RowKind) {
        let id = self.pick_id(kind.table());
        self.write_row(kind, &id);
    }

    /// Inserts or edits the row `id`.
    fn write_row(&mut self, kind: RowKind, id: &str) {
        match kind {
            RowKind::Category => self.category(id),
            RowKind::Product => self.product(id),
            RowKind::Customer => self.customer(id),
            RowKind::Sale => self.sale(id),
            RowKind::SaleItem => self.sale_item(id),
        }
    }

    fn category(&mut self, id: &str) {
        let name = self.name(id);
        let sort_order = self.rng.random_range(0..10_i64);
        if self.exists("categories", id) {
            let parent = self.kept_or_new_reference("categories", id, "parent_id");
            self.execute(
                "UPDATE categories SET name = ?2, parent_id = ?3, sort_order = ?4 WHERE id = ?1",
                params![id, name, parent, sort_order],
            );
        } else {
            let parent = self.reference("categories");
            self.execute(
                "INSERT INTO categories (id, name, parent_id, sort_order) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, parent, sort_order],
            );
        }
        self.record("categories", id);
    }

    /// Two new categories that are each other's parent (or three in a loop), written
    /// together: neither can reach the server before the other. Now and then the loop is
    /// closed through rows the app has already, each of which could go alone.
    fn category_loop(&mut self) {
        let size = if self.rng.random_bool(0.75) { 2 } else { 3 };
        let ids: Vec<String> = if self.rng.random_bool(0.75) {
            let loop_id: u32 = self.rng.random();
            (0..size)
                .map(|i| format!("loop{loop_id:08x}-{i}"))
                .collect()
        } else {
            let mut ids = pool("categories");
            ids.shuffle(self.rng);
            ids.truncate(size);
            ids
        };
        for (i, id) in ids.iter().enumerate() {
            let parent = &ids[(i + 1) % size];
            self.upsert_category(id, Some(parent));
        }
    }

    /// A child category written before its parent.
    fn child_before_parent(&mut self) {
        let mut absent: Vec<String> = pool("categories")
            .into_iter()
            .filter(|id| !self.exists("categories", id))
            .collect();
        if absent.len() < 2 {
            return self.category_loop();
        }
        absent.shuffle(self.rng);
        let (child, parent) = (absent[0].clone(), absent[1].clone());
        self.upsert_category(&child, Some(&parent));
        let grandparent = self.reference("categories");
        self.upsert_category(&parent, grandparent.as_deref());
    }

    fn upsert_category(&mut self, id: &str, parent: Option<&str>) {
        let name = self.name(id);
        if self.exists("categories", id) {
            self.execute(
                "UPDATE categories SET name = ?2, parent_id = ?3 WHERE id = ?1",
                params![id, name, parent],
            );
        } else {
            self.execute(
                "INSERT INTO categories (id, name, parent_id) VALUES (?1, ?2, ?3)",
                params![id, name, parent],
            );
        }
        self.record("categories", id);
    }

    fn product(&mut self, id: &str) {
        let price = self.rng.random_range(0..10_000_i64);
        if self.exists("products", id) {
            let category = self.kept_or_new_reference("products", id, "category_id");
            self.execute(
                "UPDATE products SET price_cents = ?2, category_id = ?3 WHERE id = ?1",
                params![id, price, category],
            );
        } else {
            let category = self.reference("categories");
            let name = self.name(id);
            let sku = self
                .rng
                .random_bool(0.5)
                .then(|| format!("SKU-{}", self.rng.random_range(0..1000)));
            let active = i64::from(self.rng.random_bool(0.8));
            self.execute(
                "INSERT INTO products (id, category_id, sku, name, price_cents, active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, category, sku, name, price, active],
            );
        }
        self.record("products", id);
    }

    fn customer(&mut self, id: &str) {
        let points = self.rng.random_range(0..500_i64);
        if self.exists("customers", id) {
            let email = format!("{id}-{}@example.com", self.rng.random_range(0..100));
            self.execute(
                "UPDATE customers SET loyalty_points = ?2, email = ?3 WHERE id = ?1",
                params![id, points, email],
            );
        } else {
            let name = self.name(id);
            self.execute(
                "INSERT INTO customers (id, name, loyalty_points) VALUES (?1, ?2, ?3)",
                params![id, name, points],
            );
        }
        self.record("customers", id);
    }

    /// A sale; a new one comes with its items, written after it.
    fn sale(&mut self, id: &str) {
        let total = self.rng.random_range(0..50_000_i64);
        if self.exists("sales", id) {
            let customer = self.kept_or_new_reference("sales", id, "customer_id");
            let status = *["open", "paid", "void"].choose(self.rng).expect("a status");
            self.execute(
                "UPDATE sales SET total_cents = ?2, status = ?3, customer_id = ?4 WHERE id = ?1",
                params![id, total, status, customer],
            );
            self.record("sales", id);
            return;
        }
        let customer = self.reference("customers");
        self.execute(
            "INSERT INTO sales (id, customer_id, total_cents, created_at)
             VALUES (?1, ?2, ?3, '2026-11-21T12:00:00.000Z')",
            params![id, customer, total],
        );
        self.record("sales", id);
        for _ in 0..self.rng.random_range(0..=2) {
            let item = self.pick_id("sale_items");
            if !self.exists("sale_items", &item) {
                self.insert_item(&item, id);
            }
        }
    }

    fn sale_item(&mut self, id: &str) {
        if !self.exists("sale_items", id) {
            if let Some(sale) = self.pick_live("sales") {
                self.insert_item(id, &sale);
            }
            return;
        }
        // Its sale or product went with a pull: the app drops the item, as it cannot point
        // a required reference elsewhere.
        let orphan = shape("sale_items")
            .refs
            .iter()
            .any(|r| !self.reference_is_live("sale_items", id, r));
        if orphan {
            self.delete_row("sale_items", id);
            return;
        }
        let quantity = self.rng.random_range(1..10_i64);
        self.execute(
            "UPDATE sale_items SET quantity = ?2 WHERE id = ?1",
            params![id, quantity],
        );
        self.record("sale_items", id);
    }

    fn insert_item(&mut self, id: &str, sale: &str) {
        let Some(product) = self.pick_live("products") else {
            return;
        };
        let quantity = self.rng.random_range(1..10_i64);
        let price = self.rng.random_range(0..10_000_i64);
        self.execute(
            "INSERT INTO sale_items (id, sale_id, product_id, quantity, unit_price_cents)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, sale, product, quantity, price],
        );
        self.record("sale_items", id);
    }

    /// Deletes a row nothing references; a sale goes with its items.
    fn delete(&mut self) {
        let table = *TABLES.choose(self.rng).expect("a table");
        let Some(id) = self.pick_live(table) else {
            return;
        };
        if table == "sales" {
            let items: Vec<String> = self.ids_where("sale_items", "sale_id", &id);
            for item in items {
                self.delete_row("sale_items", &item);
            }
        } else if self.referenced(table, &id) {
            return;
        }
        self.delete_row(table, &id);
    }

    fn delete_row(&mut self, table: &str, id: &str) {
        self.execute(&format!("DELETE FROM {table} WHERE id = ?1"), params![id]);
        let version: String = self
            .tx
            .query_row(
                "SELECT version FROM _ferry_tombstones WHERE tbl = ?1 AND pk = quote(?2)",
                params![table, id],
                |r| r.get(0),
            )
            .expect("a delete leaves a tombstone");
        self.push(
            table,
            id,
            Write {
                device: self.device,
                version,
                data: None,
            },
        );
    }

    /// Reads the row back with its version, inside the write's own transaction.
    fn record(&mut self, table: &str, id: &str) {
        let shape = shape(table);
        let sql = format!(
            "SELECT {}, _ferryVersion FROM {table} WHERE id = ?1",
            shape.columns.join(", ")
        );
        let (data, version) = self
            .tx
            .query_row(&sql, [id], |r| {
                let mut data = Data::new();
                for (i, column) in shape.columns.iter().enumerate() {
                    data.insert(column.clone(), to_json(r.get_ref(i)?));
                }
                Ok((data, r.get::<_, String>(shape.columns.len())?))
            })
            .expect("the written row has a version");
        self.push(
            table,
            id,
            Write {
                device: self.device,
                version,
                data: Some(data),
            },
        );
    }

    fn push(&mut self, table: &str, id: &str, write: Write) {
        self.writes.push(((table.to_owned(), id.to_owned()), write));
    }

    fn execute(&self, sql: &str, params: impl rusqlite::Params) {
        let changed = self.tx.execute(sql, params).expect("the app's write");
        assert_eq!(changed, 1, "{sql}");
    }

    fn pick_id(&mut self, table: &str) -> String {
        format!(
            "{}{}",
            prefix(table),
            self.rng.random_range(0..pool_size(table))
        )
    }

    fn pick_live(&mut self, table: &str) -> Option<String> {
        let live = self.ids(table);
        live.choose(self.rng).cloned()
    }

    fn name(&mut self, id: &str) -> String {
        format!("{id} #{}", self.rng.random_range(0..1000))
    }

    /// A reference to a live row of `parent`, or none now and then.
    fn reference(&mut self, parent: &str) -> Option<String> {
        if self.rng.random_bool(0.25) {
            return None;
        }
        self.pick_live(parent)
    }

    /// The row's reference through `column`: kept mostly, moved now and then, and moved for
    /// sure when it names a row the app no longer has.
    fn kept_or_new_reference(&mut self, table: &str, id: &str, column: &str) -> Option<String> {
        let r = shape(table)
            .refs
            .iter()
            .find(|r| r.column == column)
            .expect("a reference column");
        if self.rng.random_bool(0.7) && self.reference_is_live(table, id, r) {
            return self.value_of(table, id, column);
        }
        self.reference(&r.parent)
    }

    fn reference_is_live(&self, table: &str, id: &str, r: &Ref) -> bool {
        match self.value_of(table, id, &r.column) {
            Some(parent) => self.exists(&r.parent, &parent),
            None => r.nullable,
        }
    }

    fn value_of(&self, table: &str, id: &str, column: &str) -> Option<String> {
        self.tx
            .query_row(
                &format!("SELECT {column} FROM {table} WHERE id = ?1"),
                [id],
                |r| r.get(0),
            )
            .optional()
            .expect("read a reference")
            .flatten()
    }

    fn exists(&self, table: &str, id: &str) -> bool {
        self.tx
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE id = ?1)"),
                [id],
                |r| r.get(0),
            )
            .expect("look a row up")
    }

    fn ids(&self, table: &str) -> Vec<String> {
        let mut stmt = self
            .tx
            .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
            .expect("list ids");
        stmt.query_map([], |r| r.get(0))
            .expect("list ids")
            .collect::<Result<_, _>>()
            .expect("list ids")
    }

    fn ids_where(&self, table: &str, column: &str, value: &str) -> Vec<String> {
        let mut stmt = self
            .tx
            .prepare(&format!(
                "SELECT id FROM {table} WHERE {column} = ?1 ORDER BY id"
            ))
            .expect("list ids");
        stmt.query_map([value], |r| r.get(0))
            .expect("list ids")
            .collect::<Result<_, _>>()
            .expect("list ids")
    }

    /// Whether another row references this one.
    fn referenced(&self, table: &str, id: &str) -> bool {
        TABLES.iter().any(|&child| {
            shape(child)
                .refs
                .iter()
                .filter(|r| r.parent == table)
                .any(|r| {
                    self.ids_where(child, &r.column, id)
                        .iter()
                        .any(|child_id| child != table || child_id != id)
                })
        })
    }
}

/// The pool of ids of a table.
fn pool(table: &str) -> Vec<String> {
    (0..pool_size(table))
        .map(|n| format!("{}{n}", prefix(table)))
        .collect()
}

fn prefix(table: &str) -> &'static str {
    match table {
        "categories" => "cat",
        "products" => "prod",
        "customers" => "cust",
        "sales" => "sale",
        _ => "item",
    }
}

/// A SQLite value as JSON, as Ferry puts it on the wire (the schema has no BLOBs).
pub(crate) fn to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::from(n),
        ValueRef::Real(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
        ValueRef::Text(text) => Value::from(String::from_utf8_lossy(text).into_owned()),
        ValueRef::Blob(_) => panic!("the point-of-sale schema has no BLOBs"),
    }
}
