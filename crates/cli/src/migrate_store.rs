//! `ferry migrate-store`: move a tenant from a data directory to PostgreSQL.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_server::init::DATABASE_FILE;
use ferry_store::transfer::{DEFAULT_BATCH, ImportStep, TransferSummary};
use ferry_store::{PgOptions, PgStore, SqliteStore, StoreError};

use crate::args::MigrateStoreArgs;

pub(crate) async fn run(args: MigrateStoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let source_path = args.from.join(DATABASE_FILE);
    // Held for the whole move, so no server starts on the source meanwhile; one that is
    // serving it now would keep taking writes the move leaves behind.
    let _source = if source_path.exists() {
        let lock = crate::lock::of_data_dir(&args.from);
        Some(crate::lock::take_or_say(
            &lock,
            "ferry migrate-store",
            |holder| {
                format!(
                    "{} is in use by {holder}; stop it first: writes it took after the move would \
                 stay behind",
                    args.from.display()
                )
            },
        )?)
    } else {
        None
    };
    let source = SqliteStore::open_read_only(&source_path)
        .with_context(|| format!("opening the data directory {}", args.from.display()))?;

    // One connection is all a move uses. No statement timeout: copying a million rows is one
    // statement, and the whole move one transaction.
    let options = PgOptions {
        pool_size: 1,
        statement_timeout: Duration::ZERO,
        ..PgOptions::default()
    };
    let target = PgStore::open(&args.to, &options).context("opening the target database")?;
    let applied = target
        .migrate()
        .await
        .with_context(|| format!("migrating the target database {}", target.target()))?;
    if !applied.is_empty() {
        outln!("Migrated the tables of {}.", target.target());
    }

    let export = match source.export_tenant(&args.tenant, DEFAULT_BATCH).await {
        Err(StoreError::UnknownTenant(tenant)) => anyhow::bail!(
            "the data directory {} has no tenant {tenant:?}",
            args.from.display()
        ),
        other => other.context("reading the data directory")?,
    };
    let header = export.header();
    outln!(
        "Moving tenant {} from {} to {}: {} rows, {} devices, {} conflicts.",
        args.tenant,
        args.from.display(),
        target.target(),
        thousands(header.rows),
        header.devices.len(),
        thousands(header.conflicts),
    );
    let mut shown = Shown::default();
    let summary = target
        .import_tenant(export, |step| shown.show(step))
        .await
        .with_context(|| format!("moving tenant {} to {}", args.tenant, target.target()))?;
    outln!("{}", summary_line(&summary, started.elapsed()));
    outln!(
        "Serve it with `ferry serve --database <the same URL>` on the address devices already \
         use; they keep syncing without pairing again. {} was left as it was.",
        args.from.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Progress lines on stderr: one per tenth of the rows, and when committing starts.
#[derive(Default)]
struct Shown {
    tenths: u64,
}

impl Shown {
    fn show(&mut self, step: ImportStep) {
        match step {
            ImportStep::Rows { done, total } => {
                let tenths = (done * 10).checked_div(total).unwrap_or(10);
                if tenths > self.tenths {
                    self.tenths = tenths;
                    eprintln!(
                        "rows: {} of {} ({}%)",
                        thousands(done),
                        thousands(total),
                        (done * 100).checked_div(total).unwrap_or(100)
                    );
                }
            }
            ImportStep::Conflicts { .. } => {}
            ImportStep::Committing => eprintln!("Committing."),
        }
    }
}

/// `Moved tenant default: 1,000,000 rows, 3 devices, 4 tokens, 12 conflicts in 8.1s`.
fn summary_line(summary: &TransferSummary, elapsed: Duration) -> String {
    let mut line = format!(
        "Moved tenant {}: {} rows, {} devices, {} tokens, {} conflicts",
        summary.tenant,
        thousands(summary.rows),
        thousands(summary.devices),
        thousands(summary.tokens),
        thousands(summary.conflicts),
    );
    if summary.pairing_codes > 0 {
        line.push_str(&format!(
            ", {} unused pairing codes",
            thousands(summary.pairing_codes)
        ));
    }
    line.push_str(&format!(" in {:.1}s", elapsed.as_secs_f64()));
    line
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
