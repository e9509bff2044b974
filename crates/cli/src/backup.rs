//! `ferry backup` and `ferry restore`: the embedded SQLite store, copied while it serves and
//! put back while no server runs on it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ferry_server::init::{DATABASE_FILE, StoreLocation};
use ferry_store::{BackupSummary, SqliteStore};

use crate::args::{BackupArgs, RestoreArgs};

pub(crate) async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir(&args.store.location())?;
    crate::serve::require_existing(&args.store.location())?;
    let database = dir.join(DATABASE_FILE);
    let out = args.out.clone();
    let summary = tokio::task::spawn_blocking(move || SqliteStore::backup(&database, &out))
        .await
        .context("the backup did not finish")?
        .with_context(|| format!("backing up {} into {}", dir.display(), args.out.display()))?;
    outln!(
        "Backed up {} into {}: {}.",
        dir.display(),
        args.out.display(),
        describe(&summary)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = data_dir(&args.store.location())?;
    let from = args.from.clone();
    let summary = tokio::task::spawn_blocking(move || SqliteStore::check_backup(&from))
        .await
        .context("checking the backup did not finish")?
        .with_context(|| format!("checking {}", args.from.display()))?;
    // Held while restoring: no server may run on the directory meanwhile.
    let _lock = crate::serve::lock_data_dir(&dir, "ferry restore")?;
    let database = dir.join(DATABASE_FILE);
    if database.exists() {
        if !args.force {
            anyhow::bail!(
                "{} holds a store already; restore with --force to replace it (the store there \
                 now is kept beside it, renamed)",
                dir.display()
            );
        }
        let kept = set_aside(&database)?;
        eprintln!("The store that was there is kept as {}.", kept.display());
    }
    // Copied beside the target, then renamed over it: a restore cut short leaves no half a
    // database in its place.
    let partial = dir.join(format!("{DATABASE_FILE}.restoring"));
    std::fs::copy(&args.from, &partial)
        .with_context(|| format!("copying {} into {}", args.from.display(), dir.display()))?;
    SqliteStore::prepare_restore(&partial).context("preparing the restored store")?;
    std::fs::rename(&partial, &database).with_context(|| {
        format!(
            "putting the restored store in place at {}",
            database.display()
        )
    })?;
    outln!(
        "Restored {} into {}: {}.",
        args.from.display(),
        dir.display(),
        describe(&summary)
    );
    eprintln!(
        "Start the server on it with `ferry serve --data {}`. Devices keep syncing from their \
         cursors; rows they pushed after the backup stay on those devices only.",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The data directory of `location`; a PostgreSQL store has its own tools.
fn data_dir(location: &StoreLocation) -> anyhow::Result<PathBuf> {
    match location {
        StoreLocation::DataDir(dir) => Ok(dir.clone()),
        StoreLocation::Postgres { .. } => anyhow::bail!(
            "ferry backup and ferry restore are for the embedded SQLite store; back up a \
             PostgreSQL store with pg_dump (its tables are in the `ferry` schema) and restore it \
             with pg_restore"
        ),
    }
}

/// Renames the database (and its `-wal` and `-shm` files, which belong to it) out of the way;
/// returns its new name.
fn set_aside(database: &Path) -> anyhow::Result<PathBuf> {
    let stamp = ferry_core::time::now().replace([':', '.'], "-");
    let kept = database.with_file_name(format!("{DATABASE_FILE}.before-restore-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", database.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", kept.display()));
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} aside", from.display()))?;
        }
    }
    Ok(kept)
}

fn describe(summary: &BackupSummary) -> String {
    format!(
        "{} tenant(s), {} device(s), {} row(s), schema version {}",
        summary.tenants, summary.devices, summary.rows, summary.version
    )
}
