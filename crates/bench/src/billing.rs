//! The billing job's benchmarks: catching up a backlog of finished sessions into the Lago
//! emulator, beside a bare client posting the same batches (the physical reference), and a
//! run with nothing new while a thousand sessions charge.
//!
//! Both sides post to a fresh Lago emulator over loopback, with the same number of batches in
//! flight, and alternate round by round so that their medians come from the same stretch of
//! the machine's time. The job runs on the embedded SQLite store, as `ferry serve --billing`
//! does by default.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use ferry_billing::job::{BillingJob, BillingOptions, MAX_BATCH};
use ferry_billing::lago::{BatchOutcome, Event, LagoClient, LagoConfig};
use ferry_billing::plan::{event_id, kwh};
use ferry_billing::steve::{SteveClient, SteveConfig};
use ferry_emulators::lago::Lago;
use ferry_emulators::steve::{Steve, StopActor};
use ferry_emulators::{Running, lago, steve};
use ferry_store::billing::NewMapping;
use ferry_worker::cadence::Tier;
use ferry_worker::job::{FinalStatus, RunContext, RunTrigger, SyncJob};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::machine::cpu_seconds;
use crate::median;

/// Tags (and customers, one subscription each) the sessions are spread over.
const TAGS: usize = 100;
/// Rounds of each side of the catch-up.
const ROUNDS: usize = 3;
/// Runs with nothing new that are timed.
const IDLE_RUNS: usize = 21;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct BillingFigures {
    pub(crate) sessions: u64,
    /// Batches in flight, on both sides.
    pub(crate) concurrency: usize,
    /// One job run that bills the whole backlog, per round.
    pub(crate) catch_up_s: Vec<f64>,
    /// Its phases per round: reading StEvE, planning, writing the plan (the outbox sends and
    /// settles meanwhile).
    pub(crate) catch_up_phases_s: Vec<[f64; 3]>,
    /// The bare client posting the same events in the same batches, per round.
    pub(crate) bare_s: Vec<f64>,
    /// The bare client reading the sessions from StEvE, then posting their events: what any
    /// job must do at the least, with nothing durable, per round.
    #[serde(default)]
    pub(crate) bare_read_s: Vec<f64>,
    /// CPU seconds the process used (all threads, emulators included) during each catch-up,
    /// bare run and read-then-post run, per round.
    #[serde(default)]
    pub(crate) catch_up_cpu_s: Vec<f64>,
    #[serde(default)]
    pub(crate) bare_cpu_s: Vec<f64>,
    #[serde(default)]
    pub(crate) bare_read_cpu_s: Vec<f64>,
    pub(crate) active_sessions: u64,
    /// Runs with nothing new while `active_sessions` charge.
    pub(crate) idle_run_ms: Vec<f64>,
}

pub(crate) async fn run(sessions: u64) -> anyhow::Result<BillingFigures> {
    let options = BillingOptions::default();
    let mut figures = BillingFigures {
        sessions,
        concurrency: options.concurrency,
        active_sessions: 1000,
        ..BillingFigures::default()
    };
    eprintln!("billing: seeding StEvE with {sessions} finished sessions...");
    let steve = steve::spawn(steve::Config::default()).await?;
    let now = ferry_core::time::now_ms();
    for n in 0..sessions {
        let start = now - 30 * 24 * HOUR_MS + (n as i64) * 20_000;
        let id = steve.handle().start_session(
            &format!("CB-{}", n % 50),
            1 + (n % 2) as i32,
            &tag(n as usize % TAGS),
            start,
            Some("1000"),
        );
        steve.handle().stop_session(
            id,
            start + HOUR_MS,
            &(1000 + 5_000 + (n % 40_000) as i64).to_string(),
            None,
            StopActor::Station,
        )?;
    }
    let events = bare_events(&steve, &options).await?;
    eprintln!(
        "billing: a backlog of {sessions} sessions into Lago, the job and a bare client \
         alternating, {ROUNDS} rounds each..."
    );
    for _ in 0..ROUNDS {
        let cpu = cpu_seconds();
        let (seconds, phases) = catch_up(&steve, &options).await?;
        figures.catch_up_cpu_s.push(cpu_seconds() - cpu);
        figures.catch_up_phases_s.push(phases);
        eprintln!(
            "  job: {:.2} s ({:.0} sessions/s)",
            seconds,
            sessions as f64 / seconds
        );
        figures.catch_up_s.push(seconds);
        let cpu = cpu_seconds();
        let seconds = bare(&events, options.concurrency).await?;
        figures.bare_cpu_s.push(cpu_seconds() - cpu);
        if std::env::var_os("FERRY_BENCH_VERBOSE").is_some() {
            let one = bare(&events, 1).await?;
            eprintln!("  bare client, one batch at a time: {one:.2} s");
        }
        eprintln!(
            "  bare client: {:.2} s ({:.0} events/s)",
            seconds,
            sessions as f64 / seconds
        );
        figures.bare_s.push(seconds);
        let cpu = cpu_seconds();
        let seconds = bare_read_and_post(&steve, &options).await?;
        figures.bare_read_cpu_s.push(cpu_seconds() - cpu);
        eprintln!(
            "  bare client reading StEvE, then posting: {:.2} s ({:.0} sessions/s)",
            seconds,
            sessions as f64 / seconds
        );
        figures.bare_read_s.push(seconds);
    }
    drop(steve);
    eprintln!("billing: runs with nothing new while 1,000 sessions charge...");
    figures.idle_run_ms = idle_runs(figures.active_sessions).await?;
    eprintln!("  median {:.1} ms", median(&figures.idle_run_ms));
    Ok(figures)
}

fn tag(n: usize) -> String {
    format!("TAG-{n:03}")
}

/// A Lago emulator with one customer and subscription per tag.
async fn lago_with_customers() -> anyhow::Result<Running<Lago>> {
    let lago = lago::spawn(lago::Config::default()).await?;
    let since = ferry_core::time::now_ms() - 400 * 24 * HOUR_MS;
    for n in 0..TAGS {
        lago.handle().add_customer(&tag(n), &tag(n));
        lago.handle()
            .add_subscription(&format!("sub-{}", tag(n)), &tag(n), "ev", since, None)?;
    }
    Ok(lago)
}

fn job(
    steve: &Running<Steve>,
    lago: &Running<Lago>,
    ledger: Arc<dyn ferry_store::BillingStore>,
    options: &BillingOptions,
) -> anyhow::Result<BillingJob> {
    let config = steve.handle().config();
    let steve_client = SteveClient::new(SteveConfig::new(steve.url(), config.api_key.clone()))?;
    let lago_client = lago_client(lago)?;
    Ok(BillingJob::new(
        steve_client,
        lago_client,
        ledger,
        options.clone(),
    ))
}

fn lago_client(lago: &Running<Lago>) -> anyhow::Result<LagoClient> {
    Ok(LagoClient::new(LagoConfig::new(
        lago.url(),
        lago.handle().config().api_key.clone(),
    ))?)
}

async fn map_tags(ledger: &dyn ferry_store::BillingStore) -> anyhow::Result<()> {
    let mappings: Vec<NewMapping> = (0..TAGS)
        .map(|n| NewMapping {
            id_tag: tag(n),
            customer: tag(n),
            subscription: None,
        })
        .collect();
    ledger.import_mappings(&mappings).await?;
    Ok(())
}

/// One run of `job`, which must succeed; the lines it logged.
async fn one_run(job: &BillingJob, run_id: i64) -> anyhow::Result<Vec<String>> {
    let ctx = RunContext::new(
        run_id,
        RunTrigger::Manual,
        Tier::Active,
        CancellationToken::new(),
    );
    let outcome = job.run(&ctx).await;
    let lines = ctx.take_lines();
    if std::env::var_os("FERRY_BENCH_VERBOSE").is_some() {
        for line in &lines {
            eprintln!("    {:.3}s {}", line.elapsed.as_secs_f64(), line.text);
        }
    }
    ensure!(
        outcome.status == FinalStatus::Succeeded,
        "the billing run did not succeed: {outcome:?}"
    );
    Ok(lines.into_iter().map(|line| line.text).collect())
}

/// The seconds a phase line of the run's log names: `... in 0.42s.`
fn phase_seconds(lines: &[String], starts: &str) -> f64 {
    lines
        .iter()
        .find(|line| line.starts_with(starts))
        .and_then(|line| line.rsplit_once(" in "))
        .and_then(|(_, rest)| {
            rest.trim_end_matches('.')
                .trim_end_matches('s')
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

/// One job run over the whole backlog, on a new store and a new Lago: seconds, and the
/// seconds of its phases (reading StEvE, planning, writing the plan while the outbox sends).
async fn catch_up(
    steve: &Running<Steve>,
    options: &BillingOptions,
) -> anyhow::Result<(f64, [f64; 3])> {
    let dir = tempfile::tempdir()?;
    let location = ferry_server::init::StoreLocation::DataDir(dir.path().join("data"));
    let ledger = ferry_server::init::open_billing(&location).await?;
    map_tags(&*ledger).await?;
    let lago = lago_with_customers().await?;
    let job = job(steve, &lago, ledger, options)?;
    let started = Instant::now();
    let lines = one_run(&job, 1).await?;
    let seconds = started.elapsed().as_secs_f64();
    let stored = lago.handle().events_stored();
    let expected = steve.handle().snapshot().sessions.len();
    ensure!(
        stored == expected,
        "Lago holds {stored} events, not {expected}"
    );
    let phases = [
        phase_seconds(&lines, "Read "),
        phase_seconds(&lines, "Planned "),
        phase_seconds(&lines, "Wrote the plan"),
    ];
    Ok((seconds, phases))
}

/// The bare client reading every session from StEvE, then posting its event, with no
/// ledger; seconds.
async fn bare_read_and_post(
    steve: &Running<Steve>,
    options: &BillingOptions,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let events = bare_events(steve, options).await?;
    let reading = started.elapsed().as_secs_f64();
    // `bare` times the posting alone, after setting up its Lago emulator.
    Ok(reading + bare(&events, options.concurrency).await?)
}

/// The events the job sends, built once, as the bare client posts them.
async fn bare_events(
    steve: &Running<Steve>,
    options: &BillingOptions,
) -> anyhow::Result<Vec<Event>> {
    let client = SteveClient::new(SteveConfig::new(
        steve.url(),
        steve.handle().config().api_key.clone(),
    ))?;
    let transactions = client
        .transactions(&ferry_billing::steve::TransactionQuery::all())
        .await?;
    transactions
        .iter()
        .map(|t| {
            let observed = ferry_billing::job::observe(t);
            let wh = observed
                .energy_wh()
                .context("a seeded session has its energy")?;
            let mut properties = serde_json::Map::new();
            properties.insert(options.rules.energy_property.clone(), kwh(wh));
            properties.insert(
                "charge_box_id".into(),
                serde_json::Value::String(observed.charge_box_id.clone()),
            );
            properties.insert(
                "id_tag".into(),
                serde_json::Value::String(observed.id_tag.clone()),
            );
            Ok(Event {
                transaction_id: event_id(observed.id),
                external_subscription_id: format!("sub-{}", observed.id_tag),
                code: options.rules.metric_code.clone(),
                timestamp_ms: observed.stopped_at_ms.context("seeded sessions stopped")?,
                properties,
            })
        })
        .collect()
}

/// The bare client: the same events in batches of 100, `concurrency` in flight, to a new
/// Lago; seconds.
async fn bare(events: &[Event], concurrency: usize) -> anyhow::Result<f64> {
    let lago = lago_with_customers().await?;
    let client = lago_client(&lago)?;
    let batches: Vec<Vec<Event>> = events.chunks(MAX_BATCH).map(<[Event]>::to_vec).collect();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut batches = batches.into_iter();
    loop {
        while tasks.len() < concurrency {
            let Some(batch) = batches.next() else { break };
            let client = client.clone();
            tasks.spawn(async move { client.post_batch(&batch).await });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let outcome = joined??;
        ensure!(
            outcome == BatchOutcome::Accepted,
            "a bare batch was refused: {outcome:?}"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        lago.handle().events_stored() == events.len(),
        "the bare client lost events"
    );
    Ok(seconds)
}

/// Runs with nothing new while `active` sessions charge (and as many finished ones are in
/// the ledger): milliseconds each.
async fn idle_runs(active: u64) -> anyhow::Result<Vec<f64>> {
    let steve = steve::spawn(steve::Config::default()).await?;
    let now = ferry_core::time::now_ms();
    for n in 0..active {
        let tag = tag(n as usize % TAGS);
        let id = steve
            .handle()
            .start_session("CB-IDLE", 1, &tag, now - 2 * HOUR_MS, Some("1000"));
        steve
            .handle()
            .stop_session(id, now - HOUR_MS, "2000", None, StopActor::Station)?;
        steve
            .handle()
            .start_session("CB-IDLE", 2, &tag, now - HOUR_MS + 1000, Some("2000"));
    }
    let dir = tempfile::tempdir()?;
    let location = ferry_server::init::StoreLocation::DataDir(dir.path().join("data"));
    let ledger = ferry_server::init::open_billing(&location).await?;
    map_tags(&*ledger).await?;
    let lago = lago_with_customers().await?;
    let job = job(&steve, &lago, ledger, &BillingOptions::default())?;
    // The first run records everything and bills the finished half.
    one_run(&job, 1).await?;
    let mut timings = Vec::with_capacity(IDLE_RUNS);
    for run in 0..IDLE_RUNS {
        let started = Instant::now();
        one_run(&job, 2 + run as i64).await?;
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ensure!(
        lago.handle().events_stored() as u64 == active,
        "idle runs sent events"
    );
    Ok(timings)
}

pub(crate) fn render(f: &BillingFigures, out: &mut String) {
    out.push_str("\n## Billing (StEvE → Lago)\n\n");
    out.push_str(&format!(
        "The job on the embedded SQLite store, StEvE and Lago emulators over loopback, {} \
         batches of at most 100 events in flight on both sides. The bare client posts the \
         same events in the same batches to a new Lago emulator, with no ledger: the physical \
         reference. They alternate, {} rounds each; medians.\n\n",
        f.concurrency,
        f.catch_up_s.len()
    ));
    out.push_str("| benchmark | result | target | |\n|---|---|---|---|\n");
    let list = |values: &[f64], unit: &str, scale: f64| {
        let listed: Vec<String> = values.iter().map(|v| format!("{:.0}", v * scale)).collect();
        format!("{} {unit}", listed.join(", "))
    };
    let sessions = f.sessions as f64;
    let rates = |seconds: &[f64]| seconds.iter().map(|s| sessions / s).collect::<Vec<_>>();
    let bare = median(&rates(&f.bare_s));
    let job = median(&rates(&f.catch_up_s));
    out.push_str(&format!(
        "| bare client posting {} events (physical reference; runs: {}) | {bare:.0} events/s | | |\n",
        f.sessions,
        list(&rates(&f.bare_s), "events/s", 1.0)
    ));
    out.push_str(&format!(
        "| catch-up of {} finished sessions in one run: read StEvE, plan into the ledger, send, \
         settle (runs: {}) | {job:.0} sessions/s | | |\n",
        f.sessions,
        list(&rates(&f.catch_up_s), "sessions/s", 1.0)
    ));
    let ratio = job / bare;
    out.push_str(&format!(
        "| catch-up rate / bare client rate (medians) | {:.0}% | ≥ 70% | {} |\n",
        100.0 * ratio,
        crate::verdict(ratio >= 0.7)
    ));
    if !f.bare_read_s.is_empty() {
        let read_and_post = median(&rates(&f.bare_read_s));
        out.push_str(&format!(
            "| the floor: a bare client reading the sessions from StEvE, then posting them, \
             nothing durable (runs: {}) | {read_and_post:.0} sessions/s, {:.0}% of the bare \
             client | | |\n",
            list(&rates(&f.bare_read_s), "sessions/s", 1.0),
            100.0 * read_and_post / bare
        ));
        out.push_str(&format!(
            "| catch-up rate / the floor's rate (medians) | {:.0}% | | |\n",
            100.0 * job / read_and_post
        ));
    }
    if !f.catch_up_phases_s.is_empty() {
        let phase =
            |i: usize| median(&f.catch_up_phases_s.iter().map(|p| p[i]).collect::<Vec<_>>());
        let total = median(&f.catch_up_s);
        let (read, plan, write) = (phase(0), phase(1), phase(2));
        out.push_str(&format!(
            "| where a catch-up's time goes (medians): reading StEvE {read:.2} s, planning \
             {plan:.2} s, writing the plan to the ledger {write:.2} s while the outbox sends \
             and settles beside it, the last answers {:.2} s after; of {total:.2} s | | | |\n",
            (total - read - plan - write).max(0.0)
        ));
    }
    if !f.bare_cpu_s.is_empty() {
        // Cores kept busy: CPU seconds over wall seconds, each a median of the rounds.
        let busy = |cpu: &[f64], wall: &[f64]| median(cpu) / median(wall);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        out.push_str(&format!(
            "| CPU the process used, emulators included (medians): bare client {:.2} CPU-s \
             ({:.1} of {cores} cores busy), floor {:.2} CPU-s ({:.1} cores), catch-up {:.2} \
             CPU-s ({:.1} cores) | | | |\n",
            median(&f.bare_cpu_s),
            busy(&f.bare_cpu_s, &f.bare_s),
            median(&f.bare_read_cpu_s),
            busy(&f.bare_read_cpu_s, &f.bare_read_s),
            median(&f.catch_up_cpu_s),
            busy(&f.catch_up_cpu_s, &f.catch_up_s),
        ));
        // A job needs at least the floor's CPU (read StEvE, post to Lago) and cannot finish
        // sooner than that CPU spread over every core.
        let fastest = median(&f.bare_read_cpu_s) / cores as f64;
        let ceiling = median(&f.bare_s) / fastest;
        let budget_us =
            (median(&f.bare_s) / 0.7 * cores as f64 - median(&f.bare_read_cpu_s)) / sessions * 1e6;
        out.push_str(&format!(
            "| the ceiling on this machine: a job that only reads and posts, on every core at \
             once, with no ledger at all | {:.0}% of the bare client | | |\n\
             | CPU left at 70% of the bare client's rate for the ledger's durable writes (the \
             outbox the exactly-once promise rests on) | {budget_us:.1} µs per session; the \
             catch-up's ledger and planning use {:.1} µs | | |\n",
            100.0 * ceiling,
            (median(&f.catch_up_cpu_s) - median(&f.bare_read_cpu_s)) / sessions * 1e6,
        ));
    }
    let idle = median(&f.idle_run_ms);
    let idle_row = format!(
        "| a run with nothing new while {} sessions charge (median of {}; max {:.1} ms) | \
         {idle:.1} ms | ≤ 50 ms | {} |\n",
        f.active_sessions,
        f.idle_run_ms.len(),
        crate::max(&f.idle_run_ms),
        crate::verdict(idle <= 50.0)
    );
    out.push_str(&idle_row);
    out.push_str(
        "\nThe bare client only posts. The job also reads every session from StEvE, records \
         the session and its event in the ledger before it sends the event, and records \
         Lago's answer after (on SQLite, 64 rows to a statement). Sending overlaps the \
         writing, so the job's time is reading, planning and the ledger's writes. The floor \
         shows what reading StEvE costs: its API has no paging, so a window's sessions come \
         in one answer, and a job that reads before it sends, durable or not, is at most as \
         fast as the floor. The emulators share the machine with the job: where the bare \
         client alone keeps nearly every core busy, a rate is bounded by CPU, and the last \
         rows give the bound: what any job that reads StEvE and posts to Lago can reach here, \
         and what a target of 70% of the bare client leaves for writing each session durably \
         before its event is sent.\n",
    );
}
