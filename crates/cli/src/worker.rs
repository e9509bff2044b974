//! `ferry worker`, the sync worker commands (`trigger`, `runs`, `state`, `pin`, `unpin`) and
//! `ferry token`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use ferry_core::time::format_ms;
use ferry_proto::worker::{PinRequest, RunsResponse, SyncRun, SyncState, TriggerResponse};
use ferry_server::init::StoreLocation;
use ferry_store::{BillingStore, Role};
use ferry_worker::cadence::TierIntervals;
use ferry_worker::job::SyncJob;
use ferry_worker::probe::{ProbeConfig, ProbeJob};
use ferry_worker::runtime::{Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::args::{
    JobArgs, PinArgs, RoleArg, RunsArgs, StateArgs, TokenCreateArgs, TriggerArgs, UnpinArgs,
    WorkerArgs,
};
use crate::billing::BillingSetup;
use crate::serve::cancel_on_signal;

/// The jobs a process knows, checked from the flags before any store is opened.
pub(crate) struct PreparedJobs {
    /// The billing job's setup; `None` without `--billing`, or where no job runs here.
    billing: Option<BillingSetup>,
    probes: Vec<ProbeConfig>,
    /// Every job's name, the billing job first (the default job of the sync worker API).
    pub(crate) names: Vec<String>,
    pub(crate) options: WorkerOptions,
}

impl PreparedJobs {
    /// The jobs, the billing job given its ledger.
    pub(crate) fn build(self, billing: Arc<dyn BillingStore>) -> Vec<Arc<dyn SyncJob>> {
        let mut jobs: Vec<Arc<dyn SyncJob>> = Vec::new();
        if let Some(setup) = self.billing {
            jobs.push(Arc::new(setup.job(billing)));
        }
        for config in self.probes {
            jobs.push(Arc::new(ProbeJob::new(config)));
        }
        jobs
    }
}

impl JobArgs {
    /// The jobs to run and the worker's options: the billing job first when `--billing` is
    /// given, then each `--probe`; with neither, one default probe. With `runs_here` false
    /// (a server whose worker runs elsewhere) only the names matter, so the billing job's
    /// addresses and keys are not needed.
    pub(crate) fn prepare(&self, runs_here: bool) -> anyhow::Result<PreparedJobs> {
        let billing = if runs_here {
            self.billing.setup()?
        } else {
            None
        };
        let mut names: Vec<String> = Vec::new();
        if self.billing.billing {
            names.push(ferry_billing::job::JOB_NAME.to_owned());
        }
        let specs = if self.probes.is_empty() && names.is_empty() {
            vec![String::new()]
        } else {
            self.probes.clone()
        };
        let mut probes = Vec::new();
        for spec in &specs {
            let config = ProbeConfig::parse(spec)
                .with_context(|| format!("reading the probe job {spec:?}"))?;
            if names.contains(&config.name) {
                bail!(
                    "two jobs are named {:?}; give each probe its own name=",
                    config.name
                );
            }
            names.push(config.name.clone());
            probes.push(config);
        }
        let intervals = TierIntervals::new(
            self.active_interval,
            self.idle_interval,
            self.dormant_interval,
        )
        .context("reading the tier intervals")?;
        let options = WorkerOptions {
            intervals,
            retention: self.run_retention,
            lease: self.run_lease,
            // The default's ratio, 10 s in 60 s: several heartbeats may be lost before a live
            // run looks dead.
            heartbeat: self.run_lease / 6,
            ..WorkerOptions::default()
        };
        Ok(PreparedJobs {
            billing,
            probes,
            names,
            options,
        })
    }
}

pub(crate) async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location();
    if let StoreLocation::DataDir(_) = location {
        bail!(
            "on the embedded SQLite store the sync worker runs inside `ferry serve`; give \
             --database to run it as its own process"
        );
    }
    let prepared = args.jobs.prepare(true)?;
    let (store, billing) = ferry_server::init::open_worker(&location)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let options = prepared.options.clone();
    let jobs = prepared.build(billing);
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", args.metrics_listen))?;
    let names: Vec<&str> = jobs.iter().map(|job| job.name()).collect();
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    outln!(
        "Ferry {} worker {} running {} on {}",
        env!("CARGO_PKG_VERSION"),
        options.worker_id,
        names.join(", "),
        location.describe()
    );
    outln!("Metrics: http://{}/metrics", metrics_listener.local_addr()?);
    if !args.metrics_listen.ip().is_loopback() {
        tracing::warn!(
            addr = %args.metrics_listen,
            "The worker's /metrics asks for no token and listens beyond loopback; anyone who \
             reaches the address can read it."
        );
    }
    let worker = Worker::spawn(store, jobs, options, shutdown.clone());
    let metrics = ferry_server::metrics_app(worker.metrics());
    let served =
        tokio::spawn(async move { serve_metrics(metrics_listener, metrics, shutdown).await });
    worker.join().await;
    served.await.context("the metrics server")??;
    tracing::info!("Worker stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Serves the worker's `/metrics` under the API's connection limits.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ferry_server::serve_side(listener, app, shutdown).await;
    Ok(())
}

pub(crate) async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let body = serde_json::json!({ "job": args.job });
    let answer: TriggerResponse = api
        .send(
            api.http
                .post(api.url("/api/admin/sync/trigger"))
                .json(&body),
        )
        .await?;
    if args.api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        outln!(
            "{} (job {}, trigger {}).",
            answer.message,
            answer.job,
            answer.trigger_id
        );
    }
    // The trigger is stored either way; whether it runs now depends on a worker listening.
    let state: Result<SyncState, _> = api
        .send(
            api.http
                .get(api.url("/api/admin/sync/state"))
                .query(&[("job", &answer.job)]),
        )
        .await;
    match state {
        Ok(state) if !state.listener.connected => eprintln!(
            "No worker is listening for triggers right now: this one is stored and runs when a \
             worker starts (`ferry serve`, or `ferry worker --database <URL>`)."
        ),
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(%error, "The job's state could not be read after the trigger.")
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut request = api
        .http
        .get(api.url("/api/admin/sync/runs"))
        .query(&[("limit", args.limit.to_string())]);
    // The job first: without runs of the job, there are "no runs yet" rather than none that
    // match.
    let filters = [
        ("job", args.job.clone()),
        ("status", args.status.clone()),
        ("trigger", args.trigger.clone()),
        ("since", args.since.map(format_ms)),
        ("until", args.until.map(format_ms)),
    ];
    for (name, value) in &filters {
        if let Some(value) = value {
            request = request.query(&[(name, value)]);
        }
    }
    let answer: RunsResponse = api.send(request).await?;
    if args.api.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.runs.is_empty() {
        let filtered = filters[1..].iter().any(|(_, value)| value.is_some());
        let note = if filtered {
            "No run matches."
        } else {
            "No runs yet."
        };
        outln!("{note}");
    }
    for run in &answer.runs {
        outln!("{}", run_line(run));
    }
    Ok(ExitCode::SUCCESS)
}

/// `#12 probe manual active succeeded 2026-11-21T12:00:00.000Z 1.42s probes=1`
fn run_line(run: &SyncRun) -> String {
    let duration = run
        .duration_ms
        .map(|ms| format!("{:.2}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".to_owned());
    let counts: Vec<String> = run.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut line = format!(
        "#{} {} {} {} {} {} {} {}",
        run.id,
        run.job,
        run.trigger,
        run.tier,
        run.status,
        run.started_at,
        duration,
        counts.join(" ")
    );
    if let Some(error) = run.errors.first() {
        line.push_str(&format!(" error: {error}"));
    }
    line.trim_end().to_owned()
}

pub(crate) async fn state(args: StateArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut request = api.http.get(api.url("/api/admin/sync/state"));
    if let Some(job) = &args.job {
        request = request.query(&[("job", job)]);
    }
    let state: SyncState = api.send(request).await?;
    if args.api.json {
        outln!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("Job:          {}", state.job);
    outln!(
        "Tier:         {} (every {})",
        state.tier,
        every(state.interval_seconds)
    );
    outln!(
        "Next run:     {}",
        state
            .next_run_at
            .as_deref()
            .unwrap_or("as soon as a worker runs")
    );
    if let Some(until) = &state.pinned_until {
        outln!("Pinned until: {until}");
    }
    outln!(
        "Running now:  {}",
        if state.in_flight { "yes" } else { "no" }
    );
    outln!("Pending:      {} trigger(s)", state.pending_triggers);
    outln!(
        "Listener:     {}{}",
        if state.listener.connected {
            "connected"
        } else {
            "not connected"
        },
        state
            .listener
            .last_ping_at
            .as_deref()
            .map(|at| format!(", last ping {at}"))
            .unwrap_or_default()
    );
    if let Some(run) = &state.last_run {
        outln!("Last run:     {}", run_line(run));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let body = PinRequest {
        job: args.job,
        tier: args.tier.as_str().to_owned(),
        hours: args.hours,
    };
    let state: SyncState = api
        .send(api.http.post(api.url("/api/admin/sync/pin")).json(&body))
        .await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Pinned job {} to the {} tier (every {}) until {}.",
        state.job,
        state.tier,
        every(state.interval_seconds),
        state.pinned_until.as_deref().unwrap_or("?")
    );
    outln!("{}", next_run(&state));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn unpin(args: UnpinArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut request = api.http.delete(api.url("/api/admin/sync/pin"));
    if let Some(job) = &args.job {
        request = request.query(&[("job", job)]);
    }
    let state: SyncState = api.send(request).await?;
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Job {} is not pinned: it runs at its own tier, {} (every {}).",
        state.job,
        state.tier,
        every(state.interval_seconds)
    );
    outln!("{}", next_run(&state));
    Ok(ExitCode::SUCCESS)
}

/// `Next run: 2026-11-21T12:15:00.000Z.`
fn next_run(state: &SyncState) -> String {
    match &state.next_run_at {
        Some(at) => format!("Next run: {at}."),
        None => "Next run: as soon as a worker runs.".to_owned(),
    }
}

fn every(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

pub(crate) async fn create_token(args: TokenCreateArgs) -> anyhow::Result<ExitCode> {
    let location = args.store.location();
    crate::serve::require_existing(&location)?;
    let store = ferry_server::init::open_store(&location)
        .await
        .with_context(|| format!("opening the store {}", location.describe()))?;
    let role = match args.role {
        RoleArg::Viewer => Role::Viewer,
        RoleArg::Operator => Role::Operator,
        RoleArg::Admin => Role::Admin,
    };
    let expires_at_ms = args.expires_in.map(|d| {
        ferry_core::time::now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    });
    let token = store
        .create_operator_token(&args.tenant, role, expires_at_ms)
        .await
        .context("creating the token")?;
    // The token alone on stdout, so `FERRY_TOKEN=$(ferry token create ...)` works.
    match expires_at_ms {
        Some(ms) => eprintln!(
            "A {} token for tenant {} (shown once, expires {}):",
            role.as_str(),
            args.tenant,
            ferry_core::time::format_ms(ms)
        ),
        None => eprintln!(
            "A {} token for tenant {} (shown once):",
            role.as_str(),
            args.tenant
        ),
    }
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}
