//! `ferry schema infer` and `ferry schema check`.

use std::process::ExitCode;

use anyhow::Context;
use ferry_core::Schema;
use ferry_schema::SchemaError;
use serde::Serialize;

use crate::args::{CheckArgs, InferArgs};

/// Prints the DDL of an existing app database's tables, parents first. Tables Ferry cannot
/// sync are left out and named on stderr with the reason; the rest are printed all the same,
/// so an app with an audit table without a key still gets a schema it can serve.
pub(crate) fn infer(args: InferArgs) -> anyhow::Result<ExitCode> {
    if !args.database.is_file() {
        anyhow::bail!("{} is not a file", args.database.display());
    }
    let conn = rusqlite::Connection::open_with_flags(
        &args.database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", args.database.display()))?;
    let schema = ferry_schema::introspect(&conn)
        .with_context(|| format!("reading the schema of {}", args.database.display()))?;
    if schema.tables.is_empty() {
        anyhow::bail!("{} has no tables", args.database.display());
    }
    let (schema, left_out) = syncable(schema);
    for (table, why) in &left_out {
        eprintln!("Left out table {table}: {why}.");
    }
    if schema.tables.is_empty() {
        anyhow::bail!(
            "no table of {} can be synced (each is named above with the reason); give the \
             tables primary keys and run this again",
            args.database.display()
        );
    }
    ferry_schema::validate(&schema).map_err(explain)?;
    outln!(
        "-- Synced tables of {}, read by `ferry schema infer`.",
        args.database.display()
    );
    for (table, why) in &left_out {
        outln!("-- Left out {table}: {why}.");
    }
    outln!("-- Schema hash: {}", ferry_schema::hash(&schema));
    out!("{}", ferry_schema::to_ddl(&schema));
    Ok(ExitCode::SUCCESS)
}

/// The tables of `schema` that Ferry can sync, and each one it cannot with the reason: a table
/// without a primary key, and then any table whose foreign key points at a table that is left
/// out or missing (the server would refuse the schema for it).
fn syncable(mut schema: Schema) -> (Schema, Vec<(String, String)>) {
    let mut left_out = Vec::new();
    schema.tables.retain(|table| {
        let keyed = !table.primary_key.is_empty();
        if !keyed {
            left_out.push((
                table.name.clone(),
                "it has no primary key, and Ferry needs one to sync a row: it tells a row apart \
                 on every device by its key"
                    .to_owned(),
            ));
        }
        keyed
    });
    // Leaving a parent out can leave its children without it, and theirs in turn.
    loop {
        let orphan = schema.tables.iter().enumerate().find_map(|(i, table)| {
            let fk = table
                .foreign_keys
                .iter()
                .find(|fk| schema.table(&fk.parent).is_none())?;
            let parent = &fk.parent;
            let why = if left_out.iter().any(|(name, _)| name == parent) {
                format!(
                    "its foreign key ({}) references {parent}, which is left out",
                    fk.columns.join(", ")
                )
            } else {
                format!(
                    "its foreign key ({}) references {parent}, which is not in the database",
                    fk.columns.join(", ")
                )
            };
            Some((i, why))
        });
        let Some((i, why)) = orphan else {
            break;
        };
        let table = schema.tables.remove(i);
        left_out.push((table.name, why));
    }
    (schema, left_out)
}

/// Parses a DDL file the way `ferry serve --schema` does and describes it.
pub(crate) fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let ddl = std::fs::read_to_string(&args.ddl)
        .with_context(|| format!("reading {}", args.ddl.display()))?;
    let schema = ferry_schema::parse_ddl(&ddl).map_err(explain)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&Checked::of(&schema))?);
        return Ok(ExitCode::SUCCESS);
    }
    for i in schema.dependency_order() {
        let table = &schema.tables[i];
        outln!(
            "{} ({} columns), primary key ({})",
            table.name,
            table.columns.len(),
            table.primary_key.join(", ")
        );
        for fk in &table.foreign_keys {
            outln!(
                "  {} -> {} ({})",
                fk.columns.join(", "),
                fk.parent,
                fk.parent_columns.join(", ")
            );
        }
    }
    outln!("schema hash {}", ferry_schema::hash(&schema));
    Ok(ExitCode::SUCCESS)
}

/// `ferry schema check --json`: the tables, parents first, and the schema hash.
#[derive(Serialize)]
struct Checked<'a> {
    tables: Vec<CheckedTable<'a>>,
    schema_hash: String,
}

#[derive(Serialize)]
struct CheckedTable<'a> {
    name: &'a str,
    columns: Vec<&'a str>,
    primary_key: &'a [String],
    foreign_keys: Vec<CheckedForeignKey<'a>>,
}

#[derive(Serialize)]
struct CheckedForeignKey<'a> {
    columns: &'a [String],
    parent: &'a str,
    parent_columns: &'a [String],
}

impl<'a> Checked<'a> {
    fn of(schema: &'a Schema) -> Checked<'a> {
        let tables = schema
            .dependency_order()
            .into_iter()
            .map(|i| {
                let table = &schema.tables[i];
                CheckedTable {
                    name: &table.name,
                    columns: table.columns.iter().map(|c| c.name.as_str()).collect(),
                    primary_key: &table.primary_key,
                    foreign_keys: table
                        .foreign_keys
                        .iter()
                        .map(|fk| CheckedForeignKey {
                            columns: &fk.columns,
                            parent: &fk.parent,
                            parent_columns: &fk.parent_columns,
                        })
                        .collect(),
                }
            })
            .collect();
        Checked {
            tables,
            schema_hash: ferry_schema::hash(schema),
        }
    }
}

fn explain(e: SchemaError) -> anyhow::Error {
    anyhow::anyhow!(e)
}

#[cfg(test)]
mod tests {
    use super::syncable;

    fn left_out_of(ddl: &str) -> (Vec<String>, Vec<(String, String)>) {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(ddl).unwrap();
        let (kept, left_out) = syncable(ferry_schema::introspect(&conn).unwrap());
        (kept.tables.into_iter().map(|t| t.name).collect(), left_out)
    }

    #[test]
    fn keyless_tables_and_what_hangs_off_them_are_left_out_with_the_reason() {
        let (kept, left_out) = left_out_of(
            "CREATE TABLE items (id TEXT PRIMARY KEY);
             CREATE TABLE audit (code TEXT UNIQUE, msg TEXT);
             CREATE TABLE audit_notes (id TEXT PRIMARY KEY, code TEXT REFERENCES audit (code));
             CREATE TABLE note_tags (id TEXT PRIMARY KEY,
                                     note_id TEXT REFERENCES audit_notes (id));
             CREATE TABLE stray (id TEXT PRIMARY KEY, gone TEXT REFERENCES missing (id));",
        );
        assert_eq!(kept, ["items"]);
        let reasons: Vec<(&str, &str)> = left_out
            .iter()
            .map(|(t, why)| (t.as_str(), why.as_str()))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert_eq!(reasons[0].0, "audit");
        assert!(reasons[0].1.starts_with("it has no primary key"));
        assert!(reasons.contains(&(
            "audit_notes",
            "its foreign key (code) references audit, which is left out"
        )));
        assert!(reasons.contains(&(
            "note_tags",
            "its foreign key (note_id) references audit_notes, which is left out"
        )));
        assert!(reasons.contains(&(
            "stray",
            "its foreign key (gone) references missing, which is not in the database"
        )));
    }
}
