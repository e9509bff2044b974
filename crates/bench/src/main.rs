//! Ferry's benchmark harness. Runs every benchmark on this machine and writes the figures, with
//! the machine and the date, to `BENCHMARKS.md`.
//!
//! ```text
//! cargo run --release -p ferry-bench                 # full run (1,000,000-row snapshot)
//! cargo run --release -p ferry-bench -- --rows 100000 --out /tmp/b.md   # a quick look
//! cargo run --release -p ferry-bench -- --only worker --out /tmp/w.md    # trigger latency alone
//! cargo run --release -p ferry-bench -- --only push --out /tmp/p.md      # the 10k pushes alone
//! cargo run --release -p ferry-bench -- --only billing --out /tmp/b.md   # the billing job alone
//! ```
//!
//! The fresh-device snapshot runs in a child process (this binary again, `device-snapshot`), so
//! its peak RSS is the device's own and not the server's.
//!
//! The PostgreSQL benchmarks need the server of `FERRY_TEST_DATABASE_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/postgres`); every database they create is dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferry_testkit::{Backend, TestServer};
use serde::{Deserialize, Serialize};

use crate::copy::{CopyFigures, CopyReference};
use crate::scenarios::{HttpIngest, IngestRows};
use crate::trigger::TriggerFigures;

mod billing;
mod copy;
mod machine;
mod scenarios;
mod timed_store;
mod trigger;

/// mimalloc: a sync moves many small rows, and each is parsed into (and written from) short-lived
/// allocations; mimalloc serves those markedly faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one benchmark run measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Figures {
    pub(crate) rows: u64,
    /// The raw insert reference, rows per second, one per round.
    pub(crate) raw_insert_runs: Vec<f64>,
    /// Loading the snapshot server through its store, 10,000 rows a push.
    pub(crate) load_seconds: f64,
    /// Fresh-device snapshots: with the app idle (one per round), busy and writing now and
    /// then.
    pub(crate) snapshots: Vec<SnapshotFigures>,
    /// The server's share of a snapshot: every page straight from the store.
    pub(crate) store_pull_rows_per_s: f64,
    pub(crate) push_10k_ms: Vec<f64>,
    /// Push ingest over HTTP: 10,000 rows as 10 push requests, from one HTTP client; rows
    /// the server never held, then the same rows again (updates).
    pub(crate) ingest_new_ms: Vec<f64>,
    pub(crate) ingest_updated_ms: Vec<f64>,
    /// The server's share of the push: the same rows straight to the store.
    pub(crate) store_push_10k_ms: Vec<f64>,
    pub(crate) a_to_b_ms: Vec<f64>,
    pub(crate) pg: PgFigures,
    /// Whether the device sync benchmarks ran (all the fields above).
    pub(crate) device_sync: bool,
    /// The sync worker's trigger latency on PostgreSQL, when it ran.
    pub(crate) worker: Option<TriggerFigures>,
    /// The billing job's catch-up and idle runs, when they ran.
    pub(crate) billing: Option<billing::BillingFigures>,
    /// `/proc/loadavg` when the run started and when it ended: how busy the machine was.
    pub(crate) load_at_start: String,
    pub(crate) load_at_end: String,
}

/// The same benchmarks with the server on PostgreSQL, and their physical reference.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PgFigures {
    /// The PostgreSQL server's version and the settings that matter most here.
    pub(crate) server: String,
    pub(crate) push_10k_ms: Vec<f64>,
    /// Push ingest over HTTP: 10,000 rows as 10 push requests, from one HTTP client; rows
    /// the server never held, then the same rows again (updates).
    pub(crate) ingest_new_ms: Vec<f64>,
    pub(crate) ingest_updated_ms: Vec<f64>,
    /// The server's share of the push: the same rows straight to the store.
    pub(crate) store_push_10k_ms: Vec<f64>,
    /// COPY of the 10,000 rows one run of the push ingest of new rows stored.
    pub(crate) copy_10k: CopyFigures,
    /// Loading the snapshot server through its store, 10,000 rows a push.
    pub(crate) load_seconds: f64,
    /// Fresh-device snapshot, app idle.
    pub(crate) snapshot: Option<SnapshotFigures>,
    /// The server's share of a snapshot: every page straight from the store.
    pub(crate) store_pull_rows_per_s: f64,
    /// COPY of the rows the snapshot server holds.
    pub(crate) copy_all: CopyFigures,
}

/// Reported by the `device-snapshot` child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotFigures {
    pub(crate) rows: u64,
    pub(crate) seconds: f64,
    pub(crate) peak_rss_mb: f64,
    /// How often the app wrote during the snapshot (`None`: it did not).
    pub(crate) app_write_every_ms: Option<f64>,
    pub(crate) app_writes: u64,
    pub(crate) app_write_p50_ms: f64,
    pub(crate) app_write_p99_ms: f64,
    pub(crate) app_write_max_ms: f64,
}

struct Args {
    rows: u64,
    billing_sessions: u64,
    triggers: usize,
    out: PathBuf,
    only: Option<Section>,
}

/// A part of the report that can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Snapshots, pushes and A → B on both stores.
    Sync,
    /// Of `Sync`, the SQLite store's snapshots (with the raw insert reference) alone.
    Snapshot,
    /// Of `Sync`, the 10,000-row pushes on both stores (with the `COPY` reference) alone.
    Push,
    /// The sync worker's trigger latency.
    Worker,
    /// The billing job: a backlog's catch-up and idle runs.
    Billing,
}

impl Section {
    /// Whether running `only` (everything when `None`) includes this section.
    fn runs_in(self, only: Option<Section>) -> bool {
        match only {
            None => true,
            Some(only) => {
                only == self
                    || (only == Section::Sync && matches!(self, Section::Snapshot | Section::Push))
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.next().as_deref() {
        Some("device-snapshot") => {
            let db = PathBuf::from(
                args.next()
                    .context("device-snapshot needs the database path")?,
            );
            let every_us: u64 = args
                .next()
                .context("device-snapshot needs the app write interval")?
                .parse()?;
            let every = (every_us > 0).then(|| Duration::from_micros(every_us));
            let figures = runtime.block_on(scenarios::device_snapshot(&db, every))?;
            println!("{}", serde_json::to_string(&figures)?);
            Ok(())
        }
        first => {
            let parsed = parse_args(first.map(String::from).into_iter().chain(args))?;
            runtime.block_on(run_all(parsed))
        }
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        rows: 1_000_000,
        billing_sessions: 100_000,
        triggers: 1_000,
        out: PathBuf::from("BENCHMARKS.md"),
        only: None,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => parsed.rows = args.next().context("--rows needs a number")?.parse()?,
            "--out" => parsed.out = PathBuf::from(args.next().context("--out needs a path")?),
            "--billing-sessions" => {
                parsed.billing_sessions = args
                    .next()
                    .context("--billing-sessions needs a number")?
                    .parse()?
            }
            "--triggers" => {
                parsed.triggers = args.next().context("--triggers needs a number")?.parse()?
            }
            "--only" => {
                parsed.only = Some(match args.next().as_deref() {
                    Some("sync") => Section::Sync,
                    Some("snapshot") => Section::Snapshot,
                    Some("push") => Section::Push,
                    Some("worker") => Section::Worker,
                    Some("billing") => Section::Billing,
                    other => {
                        bail!("--only takes sync, snapshot, push, worker or billing, not {other:?}")
                    }
                })
            }
            "-h" | "--help" => {
                println!(
                    "usage: ferry-bench [--rows N] [--triggers N] [--billing-sessions N] [--only sync|snapshot|push|worker|billing] [--out FILE]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(parsed)
}

async fn run_all(args: Args) -> anyhow::Result<()> {
    let mut figures = Figures {
        rows: args.rows,
        load_at_start: machine::load_average(),
        ..Figures::default()
    };
    // The trigger latency first: it is a matter of a few milliseconds a commit, and the device
    // benchmarks leave PostgreSQL with gigabytes of WAL to checkpoint.
    if Section::Worker.runs_in(args.only) {
        figures.worker = Some(run_worker(args.triggers).await?);
    }
    if Section::Billing.runs_in(args.only) {
        figures.billing = Some(billing::run(args.billing_sessions).await?);
    }
    if Section::Sync.runs_in(args.only)
        || Section::Snapshot.runs_in(args.only)
        || Section::Push.runs_in(args.only)
    {
        run_device_sync(&args, &mut figures).await?;
    }
    figures.load_at_end = machine::load_average();

    let report = render(&figures, &machine::describe());
    write_report(&args.out, &report)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

async fn run_device_sync(args: &Args, figures: &mut Figures) -> anyhow::Result<()> {
    figures.device_sync = true;
    let exe = std::env::current_exe()?;
    if Section::Snapshot.runs_in(args.only) {
        sqlite_snapshots(args.rows, &exe, figures).await?;
    }
    if Section::Push.runs_in(args.only) {
        sqlite_push(figures).await?;
    }
    if Section::Sync.runs_in(args.only) {
        eprintln!("one-row edit from device A to device B...");
        figures.a_to_b_ms = scenarios::a_to_b(300).await?;
        eprintln!("  p50 {:.2} ms", percentile(&figures.a_to_b_ms, 50.0));
    }
    if Section::Push.runs_in(args.only) {
        postgres_push(&mut figures.pg).await?;
    }
    if Section::Sync.runs_in(args.only) {
        postgres_snapshot(args.rows, &exe, &mut figures.pg).await?;
    }
    Ok(())
}

/// How many times each push measure runs; the report gives their medians.
const PUSH_RUNS: usize = 5;

/// How many times the raw insert and the idle fresh-device snapshot each run; the report
/// gives their medians.
const SNAPSHOT_ROUNDS: usize = 3;

/// The raw insert reference and the SQLite store's fresh-device snapshots. The raw insert and
/// the idle snapshot alternate, [`SNAPSHOT_ROUNDS`] times, so that both medians come from the
/// same stretch of the machine's time; then the snapshots with a writing app.
async fn sqlite_snapshots(rows: u64, exe: &Path, figures: &mut Figures) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let (server, load_seconds) = scenarios::seeded_server(Backend::Sqlite, rows).await?;
    figures.load_seconds = load_seconds;
    eprintln!(
        "raw SQLite bulk insert and a fresh device's snapshot of {rows} rows (app idle), \
         {SNAPSHOT_ROUNDS} times each..."
    );
    for round in 0..SNAPSHOT_ROUNDS {
        let path = work.path().join(format!("raw-{round}.sqlite"));
        let raw = scenarios::raw_insert(&path, rows)?;
        std::fs::remove_file(&path)?;
        figures.raw_insert_runs.push(raw);
        let idle = scenarios::snapshots(&server, rows, exe, &[None]).await?;
        for s in &idle {
            eprintln!(
                "  raw insert {raw:.0} rows/s; snapshot {:.0} rows/s, peak RSS {:.0} MB",
                s.rows as f64 / s.seconds,
                s.peak_rss_mb
            );
        }
        figures.snapshots.extend(idle);
    }
    eprintln!("fresh-device snapshots of {rows} rows (app busy, occasional)...");
    let intervals = [
        Some(Duration::from_millis(2)),
        Some(Duration::from_millis(50)),
    ];
    let busy = scenarios::snapshots(&server, rows, exe, &intervals).await?;
    for s in &busy {
        eprintln!(
            "  {:.0} rows/s, peak RSS {:.0} MB, app write p99 {:.2} ms",
            s.rows as f64 / s.seconds,
            s.peak_rss_mb,
            s.app_write_p99_ms
        );
    }
    figures.snapshots.extend(busy);
    figures.store_pull_rows_per_s = scenarios::store_pull_all(&server, rows).await?;
    drop(server);
    eprintln!(
        "  the store alone: {:.0} rows/s",
        figures.store_pull_rows_per_s
    );
    Ok(())
}

/// The SQLite store's 10,000-row pushes: full cycles, push ingest over HTTP, then the
/// server's share alone.
async fn sqlite_push(figures: &mut Figures) -> anyhow::Result<()> {
    eprintln!("push of 10,000 dirty rows...");
    let server = TestServer::start().await;
    figures.push_10k_ms = scenarios::push_10k(&server, PUSH_RUNS).await?;
    eprintln!("  median {:.1} ms", median(&figures.push_10k_ms));
    for (rows, timings) in [
        (IngestRows::New, &mut figures.ingest_new_ms),
        (IngestRows::Updated, &mut figures.ingest_updated_ms),
    ] {
        eprintln!("push ingest over HTTP, 10 requests of 1,000 rows ({rows:?} rows)...");
        *timings = scenarios::http_push_10k(&server, rows, PUSH_RUNS).await?;
        report_runs(timings);
    }
    eprintln!("the same rows straight to the store...");
    figures.store_push_10k_ms = scenarios::store_push_10k(&server, PUSH_RUNS).await?;
    drop(server);
    eprintln!("  median {:.1} ms", median(&figures.store_push_10k_ms));
    Ok(())
}

async fn run_worker(triggers: usize) -> anyhow::Result<TriggerFigures> {
    eprintln!(
        "PostgreSQL: {triggers} manual triggers through the API, and {triggers} raw notifications..."
    );
    let figures = trigger::trigger_latency(triggers).await?;
    let accepted = &figures.accepted_to_start_ms;
    let raw = &figures.raw_notify_ms;
    eprintln!(
        "  trigger → run: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; raw NOTIFY: p50 {:.3} ms, p99 {:.3} ms",
        percentile(accepted, 50.0),
        percentile(accepted, 99.0),
        max(accepted),
        percentile(raw, 50.0),
        percentile(raw, 99.0)
    );
    for (step, values) in &figures.steps {
        eprintln!(
            "    {step}: median {:.3} ms, p99 {:.3} ms",
            median(values),
            percentile(values, 99.0)
        );
    }
    Ok(figures)
}

/// The PostgreSQL store's 10,000-row pushes, and `COPY` of the rows one run of the push
/// ingest of new rows stored.
async fn postgres_push(pg: &mut PgFigures) -> anyhow::Result<()> {
    eprintln!("PostgreSQL: push of 10,000 dirty rows...");
    let server = TestServer::start_on(Backend::Postgres, None).await;
    pg.server = copy::describe_server(&server).await?;
    pg.push_10k_ms = scenarios::push_10k(&server, PUSH_RUNS).await?;
    eprintln!("  median {:.1} ms", median(&pg.push_10k_ms));
    eprintln!(
        "PostgreSQL: push ingest over HTTP, 10 requests of 1,000 new rows, alternating with \
         COPY of the rows of its first run..."
    );
    let mut ingest = HttpIngest::start(&server, IngestRows::New).await?;
    pg.ingest_new_ms.push(ingest.run().await?);
    // The reference copies what one run stored: the first run's 10,000 rows.
    let pushed = copy::stored_rows(&server, Some(ingest.device_id())).await?;
    ensure!(
        pushed.len() == 10_000,
        "the first run stored {} rows",
        pushed.len()
    );
    let mut reference = CopyReference::create(&pushed).await?;
    for _ in 1..PUSH_RUNS {
        reference.round().await?;
        pg.ingest_new_ms.push(ingest.run().await?);
    }
    reference.round().await?;
    pg.copy_10k = reference.finish().await?;
    drop(pushed);
    report_runs(&pg.ingest_new_ms);
    report_copy(&pg.copy_10k);
    eprintln!("PostgreSQL: push ingest over HTTP, the same 10,000 rows again (updates)...");
    pg.ingest_updated_ms =
        scenarios::http_push_10k(&server, IngestRows::Updated, PUSH_RUNS).await?;
    report_runs(&pg.ingest_updated_ms);
    eprintln!("PostgreSQL: the same rows straight to the store...");
    pg.store_push_10k_ms = scenarios::store_push_10k(&server, PUSH_RUNS).await?;
    eprintln!("  median {:.1} ms", median(&pg.store_push_10k_ms));
    Ok(())
}

/// The PostgreSQL store's fresh-device snapshot, and `COPY` of the same rows.
async fn postgres_snapshot(rows: u64, exe: &Path, pg: &mut PgFigures) -> anyhow::Result<()> {
    if pg.server.is_empty() {
        let server = TestServer::start_on(Backend::Postgres, None).await;
        pg.server = copy::describe_server(&server).await?;
    }
    eprintln!("PostgreSQL: fresh-device snapshot of {rows} rows (app idle)...");
    let (server, load_seconds) = scenarios::seeded_server(Backend::Postgres, rows).await?;
    pg.load_seconds = load_seconds;
    eprintln!("  loaded at {:.0} rows/s", rows as f64 / load_seconds);
    let snapshot = scenarios::snapshots(&server, rows, exe, &[None]).await?;
    pg.snapshot = snapshot.into_iter().next();
    if let Some(s) = &pg.snapshot {
        eprintln!("  {:.0} rows/s", s.rows as f64 / s.seconds);
    }
    pg.store_pull_rows_per_s = scenarios::store_pull_all(&server, rows).await?;
    eprintln!("  the store alone: {:.0} rows/s", pg.store_pull_rows_per_s);
    let stored = copy::stored_rows(&server, None).await?;
    drop(server);
    eprintln!("PostgreSQL: COPY of the {} stored rows...", stored.len());
    pg.copy_all = copy::copy_rates(&stored, 1).await?;
    report_copy(&pg.copy_all);
    Ok(())
}

/// The median of runs in milliseconds, and every run in the order they ran.
fn report_runs(timings: &[f64]) {
    let runs: Vec<String> = timings.iter().map(|ms| format!("{ms:.1}")).collect();
    eprintln!(
        "  median {:.1} ms (runs: {} ms)",
        median(timings),
        runs.join(", ")
    );
}

fn report_copy(figures: &CopyFigures) {
    eprintln!(
        "  binary {:.0} rows/s, text {:.0} rows/s (medians)",
        median(&figures.binary_rows_per_s),
        median(&figures.text_rows_per_s)
    );
}

fn write_report(path: &Path, report: &str) -> anyhow::Result<()> {
    std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Nearest-rank percentile.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn since_ms(start: Instant) -> f64 {
    ms(start.elapsed())
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn rows_per_s(rows: u64, ms: f64) -> f64 {
    rows as f64 * 1000.0 / ms
}

fn render(f: &Figures, machine: &str) -> String {
    let mut out = String::new();
    out.push_str("# Ferry benchmarks\n\n");
    out.push_str(
        "Written by `cargo run --release -p ferry-bench` (the harness in `crates/bench`); ",
    );
    out.push_str("every figure below comes from one run of it.\n\n");
    out.push_str(machine);
    out.push_str(&format!(
        "- **Load average** (1, 5, 15 min) at the start: {}; at the end: {}\n",
        f.load_at_start, f.load_at_end
    ));
    let pg_server = match &f.worker {
        Some(w) if f.pg.server.is_empty() => &w.server,
        _ => &f.pg.server,
    };
    if !pg_server.is_empty() {
        out.push_str(&format!("- **PostgreSQL**: {pg_server}\n"));
    }
    if f.device_sync {
        render_device_sync(f, &mut out);
    }
    if let Some(worker) = &f.worker {
        render_worker(worker, &mut out);
    }
    if let Some(billing) = &f.billing {
        billing::render(billing, &mut out);
    }
    out
}

fn render_device_sync(f: &Figures, out: &mut String) {
    out.push_str("\n## Device sync\n\n");
    out.push_str(
        "The device is always SQLite; *store* is the server's: the embedded SQLite store or \
         PostgreSQL.\n\n",
    );
    out.push_str("| benchmark | store | result | target | |\n|---|---|---|---|---|\n");
    let mut row = |benchmark: &str, store: &str, result: &str, target: &str, ok: Option<bool>| {
        out.push_str(&format!(
            "| {benchmark} | {store} | {result} | {target} | {} |\n",
            ok.map_or("", verdict)
        ));
    };
    const SQLITE: &str = "SQLite";
    const PG: &str = "PostgreSQL";

    // Snapshots: medians of the rounds, each run listed.
    let runs = |values: &[f64]| {
        let listed: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
        format!("median of {}: {}", values.len(), listed.join(", "))
    };
    let raw = median(&f.raw_insert_runs);
    if !f.raw_insert_runs.is_empty() {
        row(
            &format!(
                "raw SQLite bulk insert, {} rows (physical reference; {} rows/s)",
                f.rows,
                runs(&f.raw_insert_runs)
            ),
            SQLITE,
            &format!("{raw:.0} rows/s"),
            "",
            None,
        );
    }
    let idle: Vec<f64> = f
        .snapshots
        .iter()
        .filter(|s| s.app_write_every_ms.is_none())
        .map(|s| s.rows as f64 / s.seconds)
        .collect();
    if !idle.is_empty() {
        let rate = median(&idle);
        row(
            &format!(
                "fresh-device snapshot, {} rows, end to end (app idle; {} rows/s)",
                f.rows,
                runs(&idle)
            ),
            SQLITE,
            &format!("{rate:.0} rows/s ({:.2} s)", f.rows as f64 / rate),
            "≥ 300,000 rows/s",
            Some(rate >= 300_000.0),
        );
        if raw > 0.0 {
            row(
                "snapshot rate / raw insert rate (medians)",
                SQLITE,
                &format!("{:.0}%", 100.0 * rate / raw),
                "≥ 50%",
                Some(rate >= 0.5 * raw),
            );
        }
    }
    store_pull_row(&mut row, SQLITE, f.rows, f.store_pull_rows_per_s);
    for (store, seconds) in [(SQLITE, f.load_seconds), (PG, f.pg.load_seconds)] {
        if seconds > 0.0 {
            row(
                &format!(
                    "loading the snapshot server through its store, {} rows in pushes of 10,000",
                    f.rows
                ),
                store,
                &format!("{:.0} rows/s ({seconds:.2} s)", f.rows as f64 / seconds),
                "",
                None,
            );
        }
    }
    let copy_all = &f.pg.copy_all;
    if copy_all.runs() > 0 {
        let (format, rate) = copy_all.best();
        row(
            &format!(
                "raw `COPY` of the stored rows, {} rows, {} format (physical reference; {})",
                copy_all.rows,
                format.name(),
                copy_comparison(copy_all)
            ),
            PG,
            &format!("{rate:.0} rows/s"),
            "",
            None,
        );
    }
    if let Some(s) = &f.pg.snapshot {
        let rate = s.rows as f64 / s.seconds;
        row(
            &format!(
                "fresh-device snapshot, {} rows, end to end (app idle)",
                s.rows
            ),
            PG,
            &format!("{rate:.0} rows/s ({:.2} s)", s.seconds),
            "≥ 200,000 rows/s",
            Some(rate >= 200_000.0),
        );
    }
    store_pull_row(&mut row, PG, f.rows, f.pg.store_pull_rows_per_s);
    let all_snapshots: Vec<&SnapshotFigures> =
        f.snapshots.iter().chain(f.pg.snapshot.as_ref()).collect();
    let peak = all_snapshots
        .iter()
        .map(|s| s.peak_rss_mb)
        .fold(0.0, f64::max);
    if !all_snapshots.is_empty() {
        row(
            &format!(
                "device peak RSS during a snapshot (highest of {} runs)",
                all_snapshots.len()
            ),
            if f.pg.snapshot.is_some() {
                "both"
            } else {
                SQLITE
            },
            &format!("{peak:.0} MB"),
            "< 300 MB",
            Some(peak < 300.0),
        );
    }
    for s in f.snapshots.iter().filter(|s| s.app_writes > 0) {
        row(
            &format!(
                "app writes during a snapshot, one every {:.0} ms ({} writes; snapshot at {:.0} rows/s)",
                s.app_write_every_ms.unwrap_or(0.0),
                s.app_writes,
                s.rows as f64 / s.seconds
            ),
            SQLITE,
            &format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                s.app_write_p50_ms, s.app_write_p99_ms, s.app_write_max_ms
            ),
            "p99 < 20 ms",
            Some(s.app_write_p99_ms < 20.0),
        );
    }

    // Pushes: each measure's median, and for the measures whose first run inserts and whose
    // other runs update, that first run too.
    for (store, cycles, ingest_new, ingest_updated, server_side) in [
        (
            SQLITE,
            &f.push_10k_ms,
            &f.ingest_new_ms,
            &f.ingest_updated_ms,
            &f.store_push_10k_ms,
        ),
        (
            PG,
            &f.pg.push_10k_ms,
            &f.pg.ingest_new_ms,
            &f.pg.ingest_updated_ms,
            &f.pg.store_push_10k_ms,
        ),
    ] {
        let sqlite = store == SQLITE;
        for (what, timings, first_inserts, target) in [
            (
                "push of 10,000 dirty rows (full forced cycle, median of {}; the first cycle \
                 inserts, the others update)",
                cycles,
                true,
                sqlite.then_some(150.0),
            ),
            (
                "push ingest over HTTP, new rows: 10,000 rows as 10 `POST /api/sync/push` of \
                 1,000 from one client, each run rows the server never held (median of {})",
                ingest_new,
                false,
                None,
            ),
            (
                "push ingest over HTTP, updates: the same, each run the same 10,000 rows at a \
                 newer version (median of {})",
                ingest_updated,
                false,
                None,
            ),
            (
                "the server's share: 10,000 rows straight to the store, 10 batches of 1,000 \
                 (median of {}; the first run inserts, the others update)",
                server_side,
                true,
                None,
            ),
        ] {
            let Some(&first) = timings.first() else {
                continue;
            };
            let push = median(timings);
            let mut result = format!("{push:.1} ms ({:.0} rows/s)", rows_per_s(10_000, push));
            if first_inserts {
                result.push_str(&format!(
                    "; first, inserting: {first:.1} ms ({:.0} rows/s)",
                    rows_per_s(10_000, first)
                ));
            }
            row(
                &what.replace("{}", &timings.len().to_string()),
                store,
                &result,
                &target.map_or(String::new(), |limit| format!("< {limit:.0} ms")),
                target.map(|limit| push < limit),
            );
        }
    }
    let copy_10k = &f.pg.copy_10k;
    if copy_10k.runs() > 0 {
        let (format, copy_rate) = copy_10k.best();
        row(
            &format!(
                "raw `COPY` of the {} rows one run of the push ingest of new rows stored, {} \
                 format (physical reference, median of {}; {})",
                copy_10k.rows,
                format.name(),
                copy_10k.runs(),
                copy_comparison(copy_10k)
            ),
            PG,
            &format!("{copy_rate:.0} rows/s"),
            "",
            None,
        );
        // Each measure of a push as a share of the COPY rate (its median run).
        let share = |timings: &[f64]| 100.0 * rows_per_s(10_000, median(timings)) / copy_rate;
        for (what, timings, target) in [
            (
                "push ingest rate over HTTP, new rows (like the `COPY`)",
                &f.pg.ingest_new_ms,
                Some(30.0),
            ),
            (
                "push ingest rate over HTTP, updates (each also retires the stored version)",
                &f.pg.ingest_updated_ms,
                None,
            ),
            ("full forced cycle rate", &f.pg.push_10k_ms, None),
            (
                "the server's share, straight to the store",
                &f.pg.store_push_10k_ms,
                None,
            ),
        ] {
            if timings.is_empty() {
                continue;
            }
            let share = share(timings);
            row(
                &format!("{what}, median / raw `COPY` rate"),
                PG,
                &format!("{share:.0}%"),
                &target.map_or(String::new(), |t| format!("≥ {t:.0}%")),
                target.map(|t| share >= t),
            );
        }
    }

    if !f.a_to_b_ms.is_empty() {
        let p50 = percentile(&f.a_to_b_ms, 50.0);
        row(
            &format!(
                "one-row edit A → B by forced cycles ({} edits)",
                f.a_to_b_ms.len()
            ),
            SQLITE,
            &format!(
                "p50 {p50:.2} ms, p99 {:.2} ms",
                percentile(&f.a_to_b_ms, 99.0)
            ),
            "< 10 ms",
            Some(p50 < 10.0),
        );
    }
    out.push_str("\n### Method\n\n");
    out.push_str(
        "- **Raw insert**: the same rows into the same `products` table of a fresh SQLite file \
         (WAL, `synchronous=NORMAL`), one transaction, one prepared statement: the physical \
         ceiling of writing these rows. It runs three times, each run just before one of the \
         idle snapshots, and the reference is the median.\n\
         - **Snapshot**: a server on 127.0.0.1 holds the rows; a freshly paired device runs one \
         forced cycle (health, push, pull every page, apply, stamp) in a child process; peak RSS \
         is that process's `VmHWM`. The SQLite server serves five fresh devices: three whose app \
         is idle (the throughput figure is their median), and two whose app thread writes one row per \
         transaction through its own connection every 2 ms (a busy till) or every 50 ms, and \
         times each write. The engine paces itself by what it sees of the app: transactions of \
         at most 2.5 ms with 4 ms left free after each while the app has committed within the \
         last second, 16 ms with 2 ms free otherwise. The PostgreSQL server serves one fresh device, app \
         idle. Both servers are loaded through their store (`Store::push`, 10,000 rows a \
         push, one seeding device; the *loading* rows), not through HTTP.\n\
         - **Push**: a device with 10,000 dirty rows runs one forced cycle (health, push in \
         batches of 1,000, an empty pull, stamping); the server is a separate in-process server \
         on a store of its own. The first cycle inserts the rows on the server, the other four \
         update every one of them. *The server's share* pushes 10,000 rows of another device \
         straight to the store (`Store::push`, changes made before the clock starts), in the \
         same batches, with no HTTP and no client; likewise a snapshot's share pages through \
         every row with `Store::pull`.\n\
         - **Push ingest** is the server taking in pushed rows: 10,000 rows of one paired \
         device as 10 `POST /api/sync/push` requests of 1,000 changes (the device client's \
         batch), sent one after another from one HTTP client over one kept-alive connection, \
         with the device's token and the headers the device client sends (a JSON body; \
         compressed answers accepted). The request bodies are serialized before the clock \
         starts; the clock runs from sending the first request to receiving the whole answer to \
         the last, so it holds authentication, parsing, resolving, writing and committing every \
         request and answering it, and nothing of the device's own SQLite work. The answers are \
         checked (every row applied) after the clock stops. Two measures, five runs each, on \
         the same server as the cycles, each with a device and products of its own: *new rows* \
         pushes 10,000 rows the server never held in every run, so it only inserts, as the \
         `COPY` reference does, and its ratio to the raw `COPY` rate carries the target; \
         *updates* pushes the same 10,000 rows at a newer version in every run (after an \
         untimed first push), so each row also retires its stored version, which `COPY` never \
         does. The full cycle and the server's share are given as ratios to the same `COPY` \
         rate too.\n\
         - **Raw `COPY`**: the rows exactly as the PostgreSQL store holds them (read back from \
         `ferry.rows`: the 10,000 rows the first run of the push ingest of new rows wrote, or \
         every row after the load) copied \
         with tokio-postgres `copy_in` into a fresh plain table with `ferry.rows`' columns, \
         primary key and unique `(tenant, seq)` index, in a database of its own; timed from `BEGIN` to `COMMIT` (one transaction), encoding \
         included. Binary and text format alternate; the faster is the reference. For the push \
         ingest, a round of both formats follows each of its runs of new rows, so that the \
         two medians come from the same stretch of the machine's time.\n\
         - **A → B**: device A updates one row and runs a forced cycle, then device B runs a \
         forced cycle and has the new value; timed from A's write to B's cycle end.\n\
         - References: PowerSync publishes 27.6k rows/s for a first sync; PouchDB took 2.6 s \
         for a fresh device's 10k rows on this kind of machine.\n",
    );
}

/// The server's share of a snapshot, when it was measured.
fn store_pull_row(
    row: &mut impl FnMut(&str, &str, &str, &str, Option<bool>),
    store: &str,
    rows: u64,
    rows_per_s: f64,
) {
    if rows_per_s > 0.0 {
        row(
            &format!(
                "the server's share: a fresh device's {rows} rows straight from the store, pages of 10,000"
            ),
            store,
            &format!("{rows_per_s:.0} rows/s"),
            "",
            None,
        );
    }
}

/// Both formats' median rates, for the reader to compare.
fn copy_comparison(figures: &CopyFigures) -> String {
    format!(
        "binary {:.0}, text {:.0} rows/s",
        median(&figures.binary_rows_per_s),
        median(&figures.text_rows_per_s)
    )
}

fn render_worker(w: &TriggerFigures, out: &mut String) {
    let triggers = w.accepted_to_start_ms.len();
    let spread = |values: &[f64]| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(values, 50.0),
            percentile(values, 99.0),
            max(values)
        )
    };
    out.push_str("\n## Sync worker\n\n");
    out.push_str("| benchmark | store | result | target | |\n|---|---|---|---|---|\n");
    let mut row = |benchmark: &str, result: &str, target: &str, ok: Option<bool>| {
        out.push_str(&format!(
            "| {benchmark} | PostgreSQL | {result} | {target} | {} |\n",
            ok.map_or("", verdict)
        ));
    };
    let raw_p50 = percentile(&w.raw_notify_ms, 50.0);
    row(
        &format!(
            "raw `pg_notify` → `LISTEN`, {} notifications one after another (physical reference; \
             the sender's answer: p50 {:.2} ms)",
            w.raw_notify_ms.len(),
            percentile(&w.raw_notify_answer_ms, 50.0)
        ),
        &spread(&w.raw_notify_ms),
        "",
        None,
    );
    let p50 = percentile(&w.accepted_to_start_ms, 50.0);
    row(
        &format!(
            "manual trigger latency: the API's `202` → the job's run starting, {triggers} triggers one after another"
        ),
        &spread(&w.accepted_to_start_ms),
        "p50 ≤ 2 ms",
        Some(p50 <= 2.0),
    );
    row(
        "trigger latency p50 / raw `NOTIFY` p50",
        &format!("{:.1}×", p50 / raw_p50),
        "≤ 3×",
        Some(p50 <= 3.0 * raw_p50),
    );
    row(
        &format!(
            "the same from the moment the POST was sent (an upper bound; the POST alone: p50 {:.2} ms)",
            percentile(&w.post_ms, 50.0)
        ),
        &spread(&w.sent_to_start_ms),
        "",
        None,
    );
    row(
        "the same by the database clock: the trigger's `created_at` → the run's `started_at` \
         (what `/metrics` records; whole milliseconds)",
        &spread(&w.db_clock_ms),
        "",
        None,
    );

    let told = w.steps.first().map_or(0, |(_, values)| values.len());
    let left_out = if told < triggers {
        format!(
            "; {} triggers whose calls could not all be told apart are left out",
            triggers - told
        )
    } else {
        String::new()
    };
    out.push_str(&format!(
        "\nWhere a trigger's time goes, from the `202` to the run ({told} triggers{left_out}). \
         Each step runs from the end of the one before, so the steps add up to the latency; \
         the store calls are the worker's own (`crates/worker/src/runtime.rs`), one round \
         trip each.\n\n"
    ));
    out.push_str("| step (PostgreSQL) | median | p99 |\n|---|---|---|\n");
    for (step, values) in &w.steps {
        out.push_str(&format!(
            "| {step} | {:.3} ms | {:.3} ms |\n",
            median(values),
            percentile(values, 99.0)
        ));
    }

    out.push_str("\n### Method\n\n");
    out.push_str(
        "- **Trigger latency**: a server with the sync worker API and the sync worker in the \
         same process, both on one PostgreSQL store (one pool), as `ferry serve` runs them; \
         the worker runs one job whose run notes the moment it starts and returns at once. A \
         client on 127.0.0.1 sends `POST /api/admin/sync/trigger` with an admin token, one \
         trigger at a time; the next one only after the previous run is recorded finished and \
         the job's loop has gone back to waiting, so every trigger gets a run of its own \
         (checked: each trigger is claimed by the run that reported it, alone) and no latency \
         includes queueing behind a run. **The latency is from the client receiving the `202`** \
         (by then the API has stored the trigger and committed, which sends the notification) \
         **to the job's run starting**, both read from one monotonic clock (`Instant`) in this \
         process. The database's own stamps (`created_at`, `started_at`) are whole \
         milliseconds and are taken before each commit, so they serve as a cross-check, not as \
         the measure. The steps are timed by a wrapper around the worker's `JobStore` and its \
         trigger listener, in the benchmark. No tracing subscriber is installed, so the \
         worker's log lines cost nothing here.\n\
         - **Raw `NOTIFY`**: one connection `LISTEN`s, a second runs a prepared \
         `SELECT pg_notify('bench', $1)`, each after the previous notification arrived; timed \
         from sending the query to the moment the listening connection yields the \
         notification. Blocks of 100 notifications and 100 triggers alternate, so both see the \
         same conditions.\n\
         - References: graphile-worker measured a p50 of 3.1 ms from adding a job to its start \
         on this kind of machine, with a raw `NOTIFY` p50 of 0.33 ms.\n",
    );
}
