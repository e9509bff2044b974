//! Schema changes that devices can adopt on their own: additions.
//!
//! A synced schema may grow while devices hold pending writes under the old one: new tables,
//! and new columns at the end of a table that SQLite's `ALTER TABLE ... ADD COLUMN` can add
//! (nullable, or `NOT NULL` with a constant default; neither a key nor unique). A device that
//! finds the server on such a superset of its schema adds the same tables and columns to its
//! file and goes on syncing; its dirty rows stay dirty and are pushed with the new columns
//! empty. Anything else (a table or column gone, a type or key changed, a column inserted in
//! the middle) is not an addition: devices could not follow, so the server refuses to start
//! with it unless told to replace the schema.

use std::fmt;

use ferry_core::{Column, Schema, Table};

/// What a new schema adds to an old one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Additions {
    /// New tables, in the new schema's order.
    pub tables: Vec<String>,
    /// New columns of existing tables: (table, column), in the new schema's order.
    pub columns: Vec<(String, String)>,
}

impl Additions {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.columns.is_empty()
    }
}

impl fmt::Display for Additions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.tables.is_empty() {
            parts.push(format!("new table(s) {}", self.tables.join(", ")));
        }
        if !self.columns.is_empty() {
            let columns: Vec<String> = self
                .columns
                .iter()
                .map(|(table, column)| format!("{table}.{column}"))
                .collect();
            parts.push(format!("new column(s) {}", columns.join(", ")));
        }
        if parts.is_empty() {
            parts.push("nothing".to_owned());
        }
        f.write_str(&parts.join("; "))
    }
}

/// Why a new schema is not an addition to the old one: every reason found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAdditive(pub Vec<String>);

impl fmt::Display for NotAdditive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for NotAdditive {}

/// What `new` adds to `old`, when it only adds.
pub fn additions(old: &Schema, new: &Schema) -> Result<Additions, NotAdditive> {
    let mut added = Additions::default();
    let mut reasons = Vec::new();
    for table in &old.tables {
        if new.table(&table.name).is_none() {
            reasons.push(format!("table {} is gone", table.name));
        }
    }
    for table in &new.tables {
        match old.table(&table.name) {
            None => added.tables.push(table.name.clone()),
            Some(before) => compare_table(before, table, &mut added, &mut reasons),
        }
    }
    if reasons.is_empty() {
        Ok(added)
    } else {
        Err(NotAdditive(reasons))
    }
}

fn compare_table(old: &Table, new: &Table, added: &mut Additions, reasons: &mut Vec<String>) {
    let name = &new.name;
    if old.primary_key != new.primary_key {
        reasons.push(format!(
            "the primary key of {name} changed from ({}) to ({})",
            old.primary_key.join(", "),
            new.primary_key.join(", ")
        ));
    }
    for (position, before) in old.columns.iter().enumerate() {
        match new.columns.get(position) {
            Some(after) if after.name == before.name => {
                if !same_column(before, after) {
                    reasons.push(format!("column {name}.{} changed", before.name));
                }
            }
            _ if new.columns.iter().any(|c| c.name == before.name) => reasons.push(format!(
                "column {name}.{} moved; new columns go after the existing ones, as ALTER TABLE \
                 adds them",
                before.name
            )),
            _ => reasons.push(format!("column {name}.{} is gone", before.name)),
        }
    }
    for column in new.columns.iter().skip(old.columns.len()) {
        if old.columns.iter().any(|c| c.name == column.name) {
            continue;
        }
        match addable(new, column) {
            Ok(()) => added.columns.push((name.clone(), column.name.clone())),
            Err(why) => reasons.push(format!("column {name}.{} {why}", column.name)),
        }
    }
    for fk in &old.foreign_keys {
        if !new.foreign_keys.contains(fk) {
            reasons.push(format!(
                "the foreign key of {name} ({}) changed or is gone",
                fk.columns.join(", ")
            ));
        }
    }
    for fk in &new.foreign_keys {
        let on_new_columns = fk
            .columns
            .iter()
            .all(|c| !old.columns.iter().any(|o| &o.name == c));
        if !old.foreign_keys.contains(fk) && !on_new_columns {
            reasons.push(format!(
                "{name} has a new foreign key on existing column(s) ({})",
                fk.columns.join(", ")
            ));
        }
    }
}

/// Whether a column is the same in both: name, type and nullability (what the schema hash
/// covers), and its default.
fn same_column(old: &Column, new: &Column) -> bool {
    old.name == new.name
        && old.decl_type.eq_ignore_ascii_case(&new.decl_type)
        && old.not_null == new.not_null
        && old.default == new.default
}

/// Whether SQLite's `ALTER TABLE ADD COLUMN` can add `column` to `table`, and if not, why.
fn addable(table: &Table, column: &Column) -> Result<(), &'static str> {
    if table.primary_key.contains(&column.name) {
        return Err("is part of the primary key; a key cannot be added to a table");
    }
    if column.not_null && column.default.as_deref().is_none_or(is_null_literal) {
        return Err("is NOT NULL without a default; existing rows would have no value for it");
    }
    Ok(())
}

fn is_null_literal(default: &str) -> bool {
    default.trim().eq_ignore_ascii_case("null")
}

/// The column's definition for `ALTER TABLE ... ADD COLUMN`: name, declared type,
/// `NOT NULL`, default.
pub fn column_definition(column: &Column) -> String {
    let mut definition = crate::quote_ident(&column.name);
    if !column.decl_type.is_empty() {
        definition.push(' ');
        definition.push_str(&column.decl_type);
    }
    if column.not_null {
        definition.push_str(" NOT NULL");
    }
    if let Some(default) = &column.default {
        definition.push_str(" DEFAULT ");
        definition.push_str(default);
    }
    definition
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_ddl;

    const BASE: &str = "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL);
                        CREATE TABLE sales (id TEXT PRIMARY KEY,
                                            customer_id TEXT REFERENCES customers (id),
                                            total INTEGER NOT NULL DEFAULT 0);";

    fn change(to: &str) -> Result<Additions, NotAdditive> {
        additions(&parse_ddl(BASE).unwrap(), &parse_ddl(to).unwrap())
    }

    #[test]
    fn new_tables_and_new_columns_at_the_end_are_additions() {
        let added = change(
            "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT,
                                     points INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE sales (id TEXT PRIMARY KEY, customer_id TEXT REFERENCES customers (id),
                                 total INTEGER NOT NULL DEFAULT 0,
                                 loyalty_id TEXT REFERENCES loyalty (id));
             CREATE TABLE loyalty (id TEXT PRIMARY KEY, tier TEXT);",
        )
        .unwrap();
        assert_eq!(added.tables, ["loyalty"]);
        assert_eq!(
            added.columns,
            [
                ("customers".to_owned(), "email".to_owned()),
                ("customers".to_owned(), "points".to_owned()),
                ("sales".to_owned(), "loyalty_id".to_owned()),
            ]
        );
        assert_eq!(
            added.to_string(),
            "new table(s) loyalty; new column(s) customers.email, customers.points, sales.loyalty_id"
        );
        assert!(change(BASE).unwrap().is_empty());
    }

    #[test]
    fn anything_else_is_refused_with_every_reason() {
        let refused = change(
            "CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT, name TEXT NOT NULL,
                                     code TEXT NOT NULL);
             CREATE TABLE other (id TEXT PRIMARY KEY);",
        )
        .unwrap_err();
        let text = refused.to_string();
        for reason in [
            "table sales is gone",
            "column customers.name moved",
            "column customers.code is NOT NULL without a default",
        ] {
            assert!(text.contains(reason), "{reason} in {text}");
        }
        let retyped = change(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             CREATE TABLE sales (id TEXT PRIMARY KEY, customer_id TEXT, total INTEGER NOT NULL DEFAULT 0);",
        )
        .unwrap_err()
        .to_string();
        assert!(retyped.contains("column customers.id changed"), "{retyped}");
        assert!(
            retyped.contains("foreign key of sales (customer_id)"),
            "{retyped}"
        );
    }

    #[test]
    fn a_column_definition_is_what_alter_table_takes() {
        let schema = parse_ddl(
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0, note VARCHAR(20))",
        )
        .unwrap();
        let columns = &schema.tables[0].columns;
        assert_eq!(
            column_definition(&columns[1]),
            "\"n\" INTEGER NOT NULL DEFAULT 0"
        );
        assert_eq!(column_definition(&columns[2]), "\"note\" VARCHAR(20)");
    }
}
