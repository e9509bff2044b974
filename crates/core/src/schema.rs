//! The synced schema: tables with primary keys and foreign keys, as SQLite declares them.
//!
//! Values are JSON (`null`, numbers, strings, `{"$blob": "<base64>"}`). Keys are compared in a
//! canonical form that follows SQLite's type affinity, so `{"id": "5"}` and `{"id": 5}` name the
//! same row of a table whose `id` is `INTEGER`, exactly as they would in SQLite.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Number, Value};

/// SQLite column affinity, derived from the declared type by SQLite's own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// SQLite's rules (section 3.1 of its datatype documentation), applied in their order.
    pub fn of_declared_type(decl: &str) -> Affinity {
        let upper = decl.to_ascii_uppercase();
        if upper.contains("INT") {
            Affinity::Integer
        } else if ["CHAR", "CLOB", "TEXT"].iter().any(|k| upper.contains(k)) {
            Affinity::Text
        } else if upper.is_empty() || upper.contains("BLOB") {
            Affinity::Blob
        } else if ["REAL", "FLOA", "DOUB"].iter().any(|k| upper.contains(k)) {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The declared type as written (`TEXT`, `VARCHAR(20)`, or empty).
    pub decl_type: String,
    pub affinity: Affinity,
    pub not_null: bool,
    /// The default expression as written, if any.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// Child columns, in this table.
    pub columns: Vec<String>,
    pub parent: String,
    /// Parent columns; when the DDL names none, the parent's primary key.
    pub parent_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary-key column names in key order.
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
    /// The `CREATE TABLE` statement as written, when known.
    pub sql: Option<String>,
}

/// The whole synced schema, tables in declaration order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub tables: Vec<Table>,
}

/// Why a row's key or values do not fit its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    MissingKey {
        table: String,
        column: String,
    },
    UnknownColumn {
        table: String,
        column: String,
    },
    NullKey {
        table: String,
        column: String,
    },
    NotNull {
        table: String,
        column: String,
    },
    BadValue {
        table: String,
        column: String,
        reason: &'static str,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::MissingKey { table, column } => {
                write!(f, "primary-key column {table}.{column} has no value")
            }
            KeyError::UnknownColumn { table, column } => {
                write!(
                    f,
                    "column {table}.{column} does not exist in the server's schema"
                )
            }
            KeyError::NullKey { table, column } => {
                write!(f, "primary-key column {table}.{column} is null")
            }
            KeyError::NotNull { table, column } => {
                write!(
                    f,
                    "column {table}.{column} is NOT NULL but the value is null"
                )
            }
            KeyError::BadValue {
                table,
                column,
                reason,
            } => {
                write!(f, "value of {table}.{column} is invalid: {reason}")
            }
        }
    }
}

impl std::error::Error for KeyError {}

impl Schema {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }

    /// Table indices with every parent before its children (self-references ignored; a cycle
    /// between tables is broken at its first table in declaration order).
    pub fn dependency_order(&self) -> Vec<usize> {
        let index: HashMap<&str, usize> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut state = vec![0_u8; self.tables.len()]; // 0 new, 1 visiting, 2 done
        let mut out = Vec::with_capacity(self.tables.len());
        fn visit(
            i: usize,
            schema: &Schema,
            index: &HashMap<&str, usize>,
            state: &mut [u8],
            out: &mut Vec<usize>,
        ) {
            if state[i] != 0 {
                return;
            }
            state[i] = 1;
            for fk in &schema.tables[i].foreign_keys {
                if let Some(&p) = index.get(fk.parent.as_str())
                    && p != i
                {
                    visit(p, schema, index, state, out);
                }
            }
            state[i] = 2;
            out.push(i);
        }
        for i in 0..self.tables.len() {
            visit(i, self, &index, &mut state, &mut out);
        }
        out
    }

    /// A stable text of everything that must agree between devices and the server: table and
    /// column names, declared types, NOT NULL, key and foreign-key structure. Hash it to get the
    /// schema hash.
    pub fn canonical_text(&self) -> String {
        let mut tables: Vec<&Table> = self.tables.iter().collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        for t in tables {
            out.push_str("table ");
            out.push_str(&t.name);
            out.push('\n');
            for c in &t.columns {
                out.push_str(&format!(
                    "  column {} {:?} {}\n",
                    c.name,
                    c.decl_type.to_ascii_uppercase(),
                    if c.not_null { "not null" } else { "null" }
                ));
            }
            out.push_str(&format!("  primary key ({})\n", t.primary_key.join(", ")));
            let mut fks: Vec<String> = t
                .foreign_keys
                .iter()
                .map(|fk| {
                    format!(
                        "  foreign key ({}) references {} ({})\n",
                        fk.columns.join(", "),
                        fk.parent,
                        fk.parent_columns.join(", ")
                    )
                })
                .collect();
            fks.sort();
            out.extend(fks);
        }
        out
    }
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The canonical key text of a row: a JSON array of the primary-key values, normalized by
    /// column affinity, in key order. Two pk objects name the same row exactly when their key
    /// texts are equal.
    pub fn key_of(&self, pk: &Map<String, Value>) -> Result<String, KeyError> {
        for name in pk.keys() {
            if !self.primary_key.contains(name) {
                return Err(KeyError::UnknownColumn {
                    table: self.name.clone(),
                    column: name.clone(),
                });
            }
        }
        let mut values = Vec::with_capacity(self.primary_key.len());
        for name in &self.primary_key {
            let value = pk.get(name).ok_or_else(|| KeyError::MissingKey {
                table: self.name.clone(),
                column: name.clone(),
            })?;
            values.push((self.key_column(name), value));
        }
        self.key_text(values)
    }

    /// The key text of the parent row a foreign key points at, or `None` when any child column
    /// is null (SQL does not check such a reference).
    pub fn parent_key_of(
        &self,
        fk: &ForeignKey,
        parent: &Table,
        data: &Map<String, Value>,
    ) -> Result<Option<String>, KeyError> {
        // Parent columns in parent-key order, with the matching child value.
        let mut values = Vec::with_capacity(parent.primary_key.len());
        for pk_col in &parent.primary_key {
            let Some(pos) = fk.parent_columns.iter().position(|c| c == pk_col) else {
                return Ok(None); // The reference is not to the parent's key; not checked.
            };
            let value = data.get(&fk.columns[pos]).unwrap_or(&Value::Null);
            if value.is_null() {
                return Ok(None);
            }
            values.push((parent.key_column(pk_col), value));
        }
        parent.key_text(values).map(Some)
    }

    /// Checks a row's data against the table: known columns, NOT NULL, representable values,
    /// and that the key columns of `data` agree with `key` (the key text of its `pk`).
    pub fn check_data(&self, key: &str, data: &Map<String, Value>) -> Result<(), KeyError> {
        for (name, value) in data {
            let column = self.column(name).ok_or_else(|| KeyError::UnknownColumn {
                table: self.name.clone(),
                column: name.clone(),
            })?;
            check_value(&self.name, &column.name, value)?;
            if value.is_null() && column.not_null && column.default.is_none() {
                return Err(KeyError::NotNull {
                    table: self.name.clone(),
                    column: name.clone(),
                });
            }
        }
        for column in &self.columns {
            if column.not_null && column.default.is_none() && !data.contains_key(&column.name) {
                // An INTEGER PRIMARY KEY is filled in by SQLite itself only on insert without a
                // value; a synced row always carries its key, so a missing NOT NULL is an error.
                return Err(KeyError::NotNull {
                    table: self.name.clone(),
                    column: column.name.clone(),
                });
            }
        }
        let in_data: Option<Vec<(&Column, &Value)>> = self
            .primary_key
            .iter()
            .map(|name| Some((self.key_column(name), data.get(name)?)))
            .collect();
        if let Some(values) = in_data
            && self.key_text(values)? != key
        {
            return Err(KeyError::BadValue {
                table: self.name.clone(),
                column: self.primary_key.join(","),
                reason: "the key columns in `data` differ from `pk`",
            });
        }
        Ok(())
    }

    fn key_column(&self, name: &str) -> &Column {
        self.column(name).expect("primary-key columns exist")
    }

    /// The key text of `values`, this table's primary-key columns in key order with their
    /// values: a JSON array of the values, each normalized by its column's affinity, written
    /// without copying them.
    fn key_text(&self, values: Vec<(&Column, &Value)>) -> Result<String, KeyError> {
        let mut text = Vec::with_capacity(2 + 40 * values.len());
        text.push(b'[');
        for (i, (column, value)) in values.into_iter().enumerate() {
            if value.is_null() {
                return Err(KeyError::NullKey {
                    table: self.name.clone(),
                    column: column.name.clone(),
                });
            }
            if i > 0 {
                text.push(b',');
            }
            let value = self.normalize(column, value)?;
            serde_json::to_writer(&mut text, &*value).expect("a JSON value serializes");
        }
        text.push(b']');
        Ok(String::from_utf8(text).expect("serialized JSON is UTF-8"))
    }

    /// Applies SQLite's affinity conversion to a key value, so equal keys compare equal.
    fn normalize<'v>(&self, column: &Column, value: &'v Value) -> Result<Cow<'v, Value>, KeyError> {
        check_value(&self.name, &column.name, value)?;
        Ok(match (column.affinity, value) {
            (Affinity::Integer | Affinity::Numeric, Value::String(s)) => {
                numeric_from_text(s).map_or(Cow::Borrowed(value), Cow::Owned)
            }
            (Affinity::Integer | Affinity::Numeric, Value::Number(n)) => Cow::Owned(integral(n)),
            (Affinity::Real, Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Cow::Owned(float(f)),
                _ => Cow::Borrowed(value),
            },
            (Affinity::Real, Value::Number(n)) => Cow::Owned(float(n.as_f64().unwrap_or(0.0))),
            (Affinity::Text, Value::Number(n)) => Cow::Owned(Value::String(n.to_string())),
            _ => Cow::Borrowed(value),
        })
    }
}

/// A value must be null, a number, a string or `{"$blob": "<base64>"}`.
fn check_value(table: &str, column: &str, value: &Value) -> Result<(), KeyError> {
    let bad = |reason| {
        Err(KeyError::BadValue {
            table: table.to_string(),
            column: column.to_string(),
            reason,
        })
    };
    match value {
        Value::Null | Value::Number(_) | Value::String(_) => Ok(()),
        Value::Bool(_) => bad("booleans are not SQLite values; send 0 or 1"),
        Value::Array(_) => bad("arrays are not SQLite values"),
        Value::Object(o) => match (o.len(), o.get("$blob")) {
            (1, Some(Value::String(b))) if is_base64(b) => Ok(()),
            (1, Some(Value::String(_))) => bad("$blob is not valid base64"),
            _ => bad("objects are not SQLite values (BLOBs are {\"$blob\": \"<base64>\"})"),
        },
    }
}

fn is_base64(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    text.len() - body.len() <= 2
        && text.len().is_multiple_of(4)
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// SQLite turns text that looks like a number into that number under NUMERIC affinity.
fn numeric_from_text(s: &str) -> Option<Value> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::Number(i.into()));
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() && t.bytes().any(|c| c.is_ascii_digit()) => Some(integral_f64(f)),
        _ => None,
    }
}

fn integral(n: &Number) -> Value {
    if n.is_i64() || n.is_u64() {
        return Value::Number(n.clone());
    }
    integral_f64(n.as_f64().unwrap_or(0.0))
}

fn integral_f64(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number((f as i64).into())
    } else {
        float(f)
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(name: &str, decl: &str) -> Column {
        Column {
            name: name.into(),
            decl_type: decl.into(),
            affinity: Affinity::of_declared_type(decl),
            not_null: false,
            default: None,
        }
    }

    fn table(name: &str, cols: &[(&str, &str)], pk: &[&str]) -> Table {
        Table {
            name: name.into(),
            columns: cols.iter().map(|(n, d)| col(n, d)).collect(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            foreign_keys: vec![],
            sql: None,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn affinity_follows_sqlite_rules() {
        use Affinity::*;
        for (decl, want) in [
            ("INTEGER", Integer),
            ("BIGINT", Integer),
            ("VARCHAR(20)", Text),
            ("CHARINT", Integer), // INT is checked first, as in SQLite
            ("", Blob),
            ("BLOB", Blob),
            ("DOUBLE PRECISION", Real),
            ("DECIMAL(10,2)", Numeric),
            ("BOOLEAN", Numeric),
        ] {
            assert_eq!(Affinity::of_declared_type(decl), want, "{decl}");
        }
    }

    #[test]
    fn keys_are_normalized_by_affinity() {
        let t = table("t", &[("id", "INTEGER")], &["id"]);
        let a = t.key_of(&obj(json!({"id": 5}))).unwrap();
        assert_eq!(a, "[5]");
        assert_eq!(t.key_of(&obj(json!({"id": "5"}))).unwrap(), a);
        assert_eq!(t.key_of(&obj(json!({"id": 5.0}))).unwrap(), a);
        assert_eq!(t.key_of(&obj(json!({"id": "abc"}))).unwrap(), "[\"abc\"]");
        let s = table("s", &[("id", "TEXT")], &["id"]);
        assert_eq!(s.key_of(&obj(json!({"id": 5}))).unwrap(), "[\"5\"]");
    }

    #[test]
    fn composite_keys_follow_key_order_not_object_order() {
        let t = table("t", &[("a", "TEXT"), ("b", "INTEGER")], &["b", "a"]);
        let k1 = t.key_of(&obj(json!({"a": "x", "b": 1}))).unwrap();
        let k2 = t.key_of(&obj(json!({"b": 1, "a": "x"}))).unwrap();
        assert_eq!(k1, "[1,\"x\"]");
        assert_eq!(k1, k2);
    }

    #[test]
    fn key_errors_name_the_column() {
        let t = table("t", &[("a", "TEXT"), ("b", "INTEGER")], &["a", "b"]);
        let e = t.key_of(&obj(json!({"a": "x"}))).unwrap_err();
        assert_eq!(e.to_string(), "primary-key column t.b has no value");
        assert!(matches!(
            t.key_of(&obj(json!({"a": "x", "b": null}))),
            Err(KeyError::NullKey { .. })
        ));
        assert!(matches!(
            t.key_of(&obj(json!({"a": "x", "b": 1, "c": 2}))),
            Err(KeyError::UnknownColumn { .. })
        ));
        assert!(matches!(
            t.key_of(&obj(json!({"a": true, "b": 1}))),
            Err(KeyError::BadValue { .. })
        ));
    }

    #[test]
    fn data_checks_columns_values_and_key_agreement() {
        let mut t = table(
            "t",
            &[("id", "TEXT"), ("n", "INTEGER"), ("b", "BLOB")],
            &["id"],
        );
        t.columns[1].not_null = true;
        let key = t.key_of(&obj(json!({"id": "k"}))).unwrap();
        assert!(
            t.check_data(
                &key,
                &obj(json!({"id": "k", "n": 1, "b": {"$blob": "AAE="}}))
            )
            .is_ok()
        );
        assert!(
            t.check_data(&key, &obj(json!({"id": "k", "n": null})))
                .is_err()
        );
        assert!(t.check_data(&key, &obj(json!({"id": "k"}))).is_err());
        assert!(
            t.check_data(&key, &obj(json!({"id": "k", "n": 1, "zz": 1})))
                .is_err()
        );
        assert!(
            t.check_data(&key, &obj(json!({"id": "other", "n": 1})))
                .is_err()
        );
        assert!(
            t.check_data(&key, &obj(json!({"id": "k", "n": 1, "b": {"$blob": "!!"}})))
                .is_err()
        );
    }

    #[test]
    fn dependency_order_puts_parents_first_and_survives_cycles() {
        let mut schema = Schema {
            tables: vec![
                table("items", &[("id", "TEXT")], &["id"]),
                table("sales", &[("id", "TEXT")], &["id"]),
                table("customers", &[("id", "TEXT")], &["id"]),
            ],
        };
        let fk = |parent: &str| ForeignKey {
            columns: vec!["x".into()],
            parent: parent.into(),
            parent_columns: vec!["id".into()],
        };
        schema.tables[0].foreign_keys = vec![fk("sales"), fk("items")];
        schema.tables[1].foreign_keys = vec![fk("customers")];
        assert_eq!(schema.dependency_order(), vec![2, 1, 0]);
        schema.tables[2].foreign_keys = vec![fk("items")]; // a cycle
        let order = schema.dependency_order();
        assert_eq!(order.len(), 3);
    }
}
