//! `ferry agent ...`: pair a device, run the agent, force a cycle, show the status.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ferry_agent::{Agent, AgentOptions, Settled};
use ferry_client::{Client, ClientOptions};
use ferry_proto::local::{CycleReport, CycleTrigger, LocalStatus, SyncState};
use tokio_util::sync::CancellationToken;

use crate::args::{CycleArgs, PairArgs, RunArgs, StatusArgs};
use crate::{lock, progress};

pub(crate) async fn pair(args: PairArgs) -> anyhow::Result<ExitCode> {
    let (server, code, db) = (&args.server, &args.code, args.db.as_path());
    let (name, platform, options) = (&args.name, &args.platform, ClientOptions::default());
    let paired = if args.force {
        ferry_client::pair_again(server, code, db, name, platform, options).await
    } else {
        ferry_client::pair(server, code, db, name, platform, options).await
    };
    let paired =
        paired.with_context(|| format!("pairing {} with {}", args.db.display(), args.server))?;
    if args.json {
        // Never the token: it stays in the database, where the agent reads it.
        let body = serde_json::json!({
            "device_id": paired.device_id,
            "tenant": paired.tenant,
            "server": args.server,
            "db": args.db,
        });
        outln!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Paired {} as device {} of tenant {}.",
        args.db.display(),
        paired.device_id,
        paired.tenant
    );
    outln!(
        "Start syncing with: ferry agent run --db {}",
        args.db.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "the control API must listen on a loopback address (127.0.0.1 or ::1), not {}",
            args.listen
        );
    }
    // Before the address: a second agent on the same file would otherwise be told only that
    // the first one's address is taken.
    let doing = |address| format!("ferry agent run (control API http://{address})");
    let mut device_lock = lock_device(&args.db, &doing(args.listen))?;
    let client = open(&args.db)?;
    let device = client.device_id().to_string();
    let server = client.server_url().to_string();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shutdown = CancellationToken::new();
    let options = AgentOptions {
        interval: args.interval,
        follow_changes: !args.no_change_stream,
    };
    let (agent, agent_task) = Agent::start(
        client,
        options,
        progress::reporter(args.progress),
        shutdown.clone(),
    );
    let local_url = format!("http://{}", listener.local_addr()?);
    device_lock.doing(&doing(listener.local_addr()?));
    tracing::info!(
        device = %device,
        server = %server,
        control_api = %local_url,
        interval_s = args.interval.as_secs(),
        change_stream = !args.no_change_stream,
        "Agent started."
    );
    crate::serve::cancel_on_signal(shutdown.clone());
    outln!("Cloud Sync panel: {local_url}/");
    let app = ferry_agent::router(agent.clone());
    ferry_server::serve_side(listener, app, shutdown.clone()).await;
    // The cycle in progress, if any, finishes before the agent exits.
    agent_task.await.context("waiting for the sync loop")?;
    if let Some(why) = agent.replaced() {
        anyhow::bail!("{why}");
    }
    tracing::info!("Agent stopped.");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn sync(args: CycleArgs) -> anyhow::Result<ExitCode> {
    let _device = lock_device(&args.db, "ferry agent sync")?;
    let client = open(&args.db)?;
    let progress = progress::reporter(args.progress).unwrap_or_else(|| std::sync::Arc::new(|_| {}));
    let report = client.sync(CycleTrigger::Manual, &*progress).await;
    print_report(&report, args.json)
}

pub(crate) async fn pull(args: CycleArgs) -> anyhow::Result<ExitCode> {
    let _device = lock_device(&args.db, "ferry agent pull")?;
    let client = open(&args.db)?;
    let progress = progress::reporter(args.progress).unwrap_or_else(|| std::sync::Arc::new(|_| {}));
    let report = client.force_pull(&*progress).await;
    print_report(&report, args.json)
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = open(&args.db)?;
    let cycles = client.log(20)?;
    // The newest cycle report decides, as it does in a running agent.
    let settled = Settled::after(cycles.first());
    let status = LocalStatus {
        state: settled.state,
        last_synced_at: client.last_synced_at()?,
        last_error: settled.last_error,
        pending: client.pending()?,
        next_auto_sync_at: None,
    };
    if args.json {
        let body = serde_json::json!({ "status": status, "cycles": cycles });
        outln!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Device {} syncing with {}",
        client.device_id(),
        client.server_url()
    );
    outln!("{}", status_line(&status));
    outln!("Pending: {} rows", status.pending);
    if !cycles.is_empty() {
        outln!("Last cycles (newest first):");
        for c in &cycles {
            outln!("  {}", report_line(c));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "Synced 12s ago", "Offline · <why> · last sync 3m ago", "Error · <why> · last sync 3m ago".
fn status_line(status: &LocalStatus) -> String {
    let last = status
        .last_synced_at
        .as_deref()
        .map(ago)
        .unwrap_or_else(|| "never".into());
    let label = match status.state {
        SyncState::Synced => return format!("Synced {last}"),
        SyncState::Syncing => "Syncing",
        SyncState::Offline => "Offline",
        SyncState::Error => "Error",
    };
    match &status.last_error {
        Some(error) => format!(
            "{label} · {} · last sync {last}",
            error.trim_end_matches('.')
        ),
        None => format!("{label} · last sync {last}"),
    }
}

/// Takes the device database's lock for `doing`: one process syncs a file at a time. A
/// running agent is asked for cycles through its control API instead.
fn lock_device(db: &Path, doing: &str) -> anyhow::Result<lock::Held> {
    lock::take_or_say(&lock::of_device_db(db), doing, |holder| {
        format!(
            "{} is being synced by {holder}; one process syncs a database at a time. Ask a \
             running agent for a cycle through its control API (POST /local/sync, or \"Force \
             sync now\" on its panel), or stop it first",
            db.display()
        )
    })
}

fn open(db: &Path) -> anyhow::Result<Client> {
    Client::open(db, ClientOptions::default()).with_context(|| {
        format!(
            "opening {} (pair it first with `ferry agent pair`)",
            db.display()
        )
    })
}

fn print_report(report: &CycleReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
    } else {
        outln!("{}", report_line(report));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn report_line(c: &CycleReport) -> String {
    let outcome = match (&c.error, c.ok) {
        (_, true) => "ok".to_string(),
        (Some(e), false) => format!("failed: {e}"),
        (None, false) => "failed".to_string(),
    };
    format!(
        "{} {:<10} pushed {} pulled {} rejected {} conflicts {} in {} ms: {}",
        c.started_at,
        c.trigger.as_str(),
        c.pushed,
        c.pulled,
        c.rejected,
        c.conflicts,
        c.duration_ms,
        outcome
    )
}

/// "12s ago", "3h ago" for an RFC 3339 time.
fn ago(at: &str) -> String {
    let Some(then) = ferry_core::time::parse_ms(at) else {
        return at.to_string();
    };
    let secs = (ferry_core::time::now_ms() - then).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}
