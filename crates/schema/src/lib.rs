//! The synced schema, read by SQLite itself.
//!
//! Ferry declares synced tables as SQLite DDL. Rather than parse SQL by hand, the DDL is run in
//! an in-memory SQLite database and the result is read back through `PRAGMA table_list`,
//! `table_info` and `foreign_key_list`: whatever SQLite accepts, Ferry understands the same way.
//! The same introspection reads a device's app database, so both sides compute the schema hash
//! from the same model.

use ferry_core::schema::{Affinity, Column, ForeignKey, Schema, Table};

pub mod evolve;
pub use evolve::{Additions, NotAdditive, additions};
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// The columns Ferry adds to each synced table on a device. They are not part of the schema.
pub const DIRTY_COLUMN: &str = "_isDirty";
pub const SYNCED_AT_COLUMN: &str = "_lastSyncedAt";
pub const VERSION_COLUMN: &str = "_ferryVersion";
pub const FERRY_COLUMNS: [&str; 3] = [DIRTY_COLUMN, SYNCED_AT_COLUMN, VERSION_COLUMN];

/// Tables whose names start with this prefix belong to Ferry and are never synced.
pub const INTERNAL_PREFIX: &str = "_ferry_";

/// The built-in point-of-sale schema `ferry serve` uses without `--schema`.
pub const POINT_OF_SALE: &str = include_str!("point_of_sale.sql");

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the schema DDL does not run in SQLite: {0}")]
    InvalidDdl(String),
    #[error("the schema declares no tables")]
    NoTables,
    #[error(
        "table {0} has no primary key; Ferry identifies rows across devices by primary key, so \
         every synced table needs one (add one, or leave the table out of the schema)"
    )]
    NoPrimaryKey(String),
    #[error("{0} is reserved for Ferry's own use")]
    Reserved(String),
    #[error("foreign key {table}({columns}) references table {parent}, which is not in the schema")]
    UnknownParent {
        table: String,
        columns: String,
        parent: String,
    },
    #[error("reading the database schema failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = SchemaError> = std::result::Result<T, E>;

/// Parses `CREATE TABLE` DDL into the synced schema. Other statements (indexes, views) are
/// accepted and ignored.
pub fn parse_ddl(ddl: &str) -> Result<Schema> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(ddl)
        .map_err(|e| SchemaError::InvalidDdl(e.to_string()))?;
    // Introspection leaves Ferry's columns out, so look for them in the DDL's tables first.
    let reserved: Option<(String, String)> = conn
        .query_row(
            "SELECT m.name, p.name FROM sqlite_schema AS m, pragma_table_info(m.name) AS p
             WHERE m.type = 'table' AND p.name IN (?1, ?2, ?3) LIMIT 1",
            FERRY_COLUMNS,
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((table, column)) = reserved {
        return Err(SchemaError::Reserved(format!("column {table}.{column}")));
    }
    let schema = introspect(&conn)?;
    if schema.tables.is_empty() {
        return Err(SchemaError::NoTables);
    }
    validate(&schema)?;
    Ok(schema)
}

/// Reads every user table of a database (Ferry's own tables and columns left out).
pub fn introspect(conn: &Connection) -> Result<Schema> {
    let names = table_names(conn)?;
    let tables = names
        .iter()
        .map(|n| read_table(conn, n))
        .collect::<Result<Vec<_>>>()?;
    Ok(Schema { tables })
}

/// Reads the named tables of a database, in the order given; `None` for a table that is absent.
pub fn introspect_tables(conn: &Connection, names: &[&str]) -> Result<Vec<Option<Table>>> {
    let present = table_names(conn)?;
    names
        .iter()
        .map(|n| {
            if present.iter().any(|p| p == n) {
                read_table(conn, n).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect()
}

/// The schema hash: hex SHA-256 of the canonical text of the schema.
pub fn hash(schema: &Schema) -> String {
    let digest = Sha256::digest(schema.canonical_text().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks what Ferry needs beyond what SQLite accepts: a primary key on every table, no names
/// reserved for Ferry, foreign keys that point into the schema.
pub fn validate(schema: &Schema) -> Result<()> {
    for table in &schema.tables {
        if table.name.starts_with(INTERNAL_PREFIX) || table.name.starts_with("sqlite_") {
            return Err(SchemaError::Reserved(format!("table name {}", table.name)));
        }
        if table.primary_key.is_empty() {
            return Err(SchemaError::NoPrimaryKey(table.name.clone()));
        }
        for fk in &table.foreign_keys {
            if schema.table(&fk.parent).is_none() {
                return Err(SchemaError::UnknownParent {
                    table: table.name.clone(),
                    columns: fk.columns.join(", "),
                    parent: fk.parent.clone(),
                });
            }
        }
    }
    Ok(())
}

/// DDL that recreates the schema: each table's own `CREATE TABLE` statement when it is known
/// and carries no Ferry columns, otherwise one generated from the model. Parents come first.
pub fn to_ddl(schema: &Schema) -> String {
    let mut out = String::new();
    for i in schema.dependency_order() {
        let table = &schema.tables[i];
        match &table.sql {
            Some(sql) if !FERRY_COLUMNS.iter().any(|c| sql.contains(c)) => out.push_str(sql),
            _ => out.push_str(&generate_create_table(table)),
        }
        out.push_str(";\n\n");
    }
    out
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn generate_create_table(table: &Table) -> String {
    let mut lines: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let mut line = format!("  {}", quote_ident(&c.name));
            if !c.decl_type.is_empty() {
                line.push(' ');
                line.push_str(&c.decl_type);
            }
            if c.not_null {
                line.push_str(" NOT NULL");
            }
            if let Some(d) = &c.default {
                line.push_str(" DEFAULT ");
                line.push_str(d);
            }
            line
        })
        .collect();
    let quote_all = |cols: &[String]| {
        cols.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    lines.push(format!("  PRIMARY KEY ({})", quote_all(&table.primary_key)));
    for fk in &table.foreign_keys {
        lines.push(format!(
            "  FOREIGN KEY ({}) REFERENCES {} ({})",
            quote_all(&fk.columns),
            quote_ident(&fk.parent),
            quote_all(&fk.parent_columns)
        ));
    }
    format!(
        "CREATE TABLE {} (\n{}\n)",
        quote_ident(&table.name),
        lines.join(",\n")
    )
}

/// Ordinary tables (not virtual, shadow or internal ones), in creation order.
fn table_names(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT l.name FROM pragma_table_list AS l
         JOIN sqlite_schema AS s ON s.name = l.name AND s.type = 'table'
         WHERE l.schema = 'main' AND l.type = 'table'
           AND l.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND l.name NOT LIKE '\\_ferry\\_%' ESCAPE '\\'
         ORDER BY s.rowid",
    )?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

fn read_table(conn: &Connection, name: &str) -> Result<Table> {
    let sql: Option<String> = conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let mut columns = Vec::new();
    let mut keyed: Vec<(i64, String)> = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid",
    )?;
    let mut rows = stmt.query([name])?;
    while let Some(row) = rows.next()? {
        let col_name: String = row.get(0)?;
        if FERRY_COLUMNS.contains(&col_name.as_str()) {
            continue;
        }
        let decl_type: String = row.get(1)?;
        let pk: i64 = row.get(4)?;
        if pk > 0 {
            keyed.push((pk, col_name.clone()));
        }
        columns.push(Column {
            affinity: Affinity::of_declared_type(&decl_type),
            name: col_name,
            decl_type,
            not_null: row.get::<_, i64>(2)? != 0,
            default: row.get(3)?,
        });
    }
    keyed.sort();
    let primary_key: Vec<String> = keyed.into_iter().map(|(_, c)| c).collect();

    let mut fks: Vec<(i64, i64, String, String, Option<String>)> = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
    )?;
    let mut rows = stmt.query([name])?;
    while let Some(row) = rows.next()? {
        fks.push((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        ));
    }
    let mut foreign_keys: Vec<ForeignKey> = Vec::new();
    for group in fks.chunk_by(|a, b| a.0 == b.0) {
        let parent = group[0].2.clone();
        let columns = group.iter().map(|f| f.3.clone()).collect();
        let named: Option<Vec<String>> = group.iter().map(|f| f.4.clone()).collect();
        let parent_columns = match named {
            Some(cols) => cols,
            None => parent_primary_key(conn, &parent, name, &primary_key)?,
        };
        foreign_keys.push(ForeignKey {
            columns,
            parent,
            parent_columns,
        });
    }
    // `PRAGMA foreign_key_list` lists constraints in reverse declaration order.
    foreign_keys.reverse();
    Ok(Table {
        name: name.to_string(),
        columns,
        primary_key,
        foreign_keys,
        sql,
    })
}

/// `REFERENCES parent` without columns means the parent's primary key.
fn parent_primary_key(
    conn: &Connection,
    parent: &str,
    child: &str,
    child_key: &[String],
) -> Result<Vec<String>> {
    if parent == child {
        return Ok(child_key.to_vec());
    }
    let mut stmt =
        conn.prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?;
    let cols = stmt
        .query_map([parent], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_schema_parses_with_keys_and_a_self_reference() {
        let schema = parse_ddl(POINT_OF_SALE).unwrap();
        let names: Vec<&str> = schema.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["categories", "products", "customers", "sales", "sale_items"]
        );
        let categories = schema.table("categories").unwrap();
        assert_eq!(categories.foreign_keys[0].parent, "categories");
        let items = schema.table("sale_items").unwrap();
        assert_eq!(items.foreign_keys.len(), 2);
        assert_eq!(items.foreign_keys[0].parent, "sales");
        assert_eq!(hash(&schema).len(), 64);
    }

    #[test]
    fn integer_composite_and_implicit_parent_keys() {
        let schema = parse_ddl(
            "CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE b (x INT, y TEXT, a_id INTEGER REFERENCES a, PRIMARY KEY (y, x)) WITHOUT ROWID;
             CREATE TABLE c (id INTEGER PRIMARY KEY, bx INT, by TEXT, FOREIGN KEY (by, bx) REFERENCES b (y, x));
             CREATE INDEX a_name ON a(name);",
        )
        .unwrap();
        assert_eq!(schema.table("a").unwrap().primary_key, ["id"]);
        assert_eq!(schema.table("b").unwrap().primary_key, ["y", "x"]);
        assert_eq!(
            schema.table("b").unwrap().foreign_keys[0].parent_columns,
            ["id"]
        );
        assert_eq!(
            schema.table("c").unwrap().foreign_keys[0].parent_columns,
            ["y", "x"]
        );
    }

    #[test]
    fn a_table_without_a_primary_key_is_refused_by_name() {
        let err =
            parse_ddl("CREATE TABLE ok (id TEXT PRIMARY KEY); CREATE TABLE audit_log (msg TEXT);")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("table audit_log has no primary key"),
            "{err}"
        );
    }

    #[test]
    fn bad_ddl_and_reserved_names_are_refused() {
        assert!(matches!(
            parse_ddl("CREATE TABLE ("),
            Err(SchemaError::InvalidDdl(_))
        ));
        assert!(matches!(
            parse_ddl("CREATE INDEX i ON x(y)"),
            Err(SchemaError::InvalidDdl(_))
        ));
        assert!(matches!(
            parse_ddl("-- nothing"),
            Err(SchemaError::NoTables)
        ));
        assert!(matches!(
            parse_ddl("CREATE TABLE t (id TEXT PRIMARY KEY, _isDirty INT)"),
            Err(SchemaError::Reserved(_))
        ));
        assert!(matches!(
            parse_ddl("CREATE TABLE t (id TEXT PRIMARY KEY, p TEXT REFERENCES nowhere(id))"),
            Err(SchemaError::UnknownParent { .. })
        ));
    }

    #[test]
    fn hash_ignores_ferry_columns_and_defaults_but_not_types() {
        let base = parse_ddl("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 1)").unwrap();
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY, n integer DEFAULT 2);
             ALTER TABLE t ADD COLUMN _isDirty INTEGER NOT NULL DEFAULT 0;
             CREATE TABLE _ferry_state (k TEXT PRIMARY KEY);",
        )
        .unwrap();
        let device = introspect(&conn).unwrap();
        assert_eq!(hash(&base), hash(&device));
        let changed = parse_ddl("CREATE TABLE t (id TEXT PRIMARY KEY, n TEXT DEFAULT 1)").unwrap();
        assert_ne!(hash(&base), hash(&changed));
    }

    #[test]
    fn generated_ddl_round_trips_to_the_same_hash() {
        let mut schema = parse_ddl(POINT_OF_SALE).unwrap();
        for t in &mut schema.tables {
            t.sql = None;
        }
        let again = parse_ddl(&to_ddl(&schema)).unwrap();
        assert_eq!(hash(&schema), hash(&again));
    }

    #[test]
    fn virtual_tables_and_their_shadow_tables_are_left_out() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id TEXT PRIMARY KEY);
             CREATE VIRTUAL TABLE docs USING fts5(body);",
        )
        .unwrap();
        let schema = introspect(&conn).unwrap();
        assert_eq!(schema.tables.len(), 1);
    }
}
