//! `ferry schema infer` and `ferry schema check`.

use std::process::ExitCode;

use anyhow::Context;
use ferry_schema::SchemaError;

use crate::args::{CheckArgs, InferArgs};

/// Prints the DDL of an existing app database's tables, parents first.
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
    let keyless: Vec<&str> = schema
        .tables
        .iter()
        .filter(|t| t.primary_key.is_empty())
        .map(|t| t.name.as_str())
        .collect();
    if !keyless.is_empty() {
        anyhow::bail!(
            "these tables have no primary key, so their rows cannot be identified across devices: {}; \
             give them one, or remove them from the printed DDL before serving it",
            keyless.join(", ")
        );
    }
    ferry_schema::validate(&schema).map_err(explain)?;
    outln!(
        "-- Synced tables of {}, read by `ferry schema infer`.",
        args.database.display()
    );
    outln!("-- Schema hash: {}", ferry_schema::hash(&schema));
    out!("{}", ferry_schema::to_ddl(&schema));
    Ok(ExitCode::SUCCESS)
}

/// Parses a DDL file the way `ferry serve --schema` does and describes it.
pub(crate) fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let ddl = std::fs::read_to_string(&args.ddl)
        .with_context(|| format!("reading {}", args.ddl.display()))?;
    let schema = ferry_schema::parse_ddl(&ddl).map_err(explain)?;
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

fn explain(e: SchemaError) -> anyhow::Error {
    anyhow::anyhow!(e)
}
