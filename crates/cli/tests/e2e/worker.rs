//! The sync worker's processes: `ferry worker` beside `ferry serve --no-worker` on PostgreSQL
//! (a worker killed mid-run, the worker's /metrics), and a new user's `ferry serve` with its
//! in-process worker on the embedded store, driven by `ferry trigger | runs | state | token`.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_server::init::StoreLocation;
use ferry_store::{JobStore, PgOptions};
use ferry_testkit::{TestDatabase, wait_for};
use ferry_worker::job::SyncJob;
use ferry_worker::probe::{ProbeConfig, ProbeJob};
use ferry_worker::runtime::{Worker, WorkerOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::support::{Api, Process, ferry, run, serve, stderr, stdout};

/// Runs `ferry COMMAND` against the server at `url` with the admin token saved in `data`.
async fn run_with_saved_token(command: &str, url: &str, data: &str) -> Output {
    run(&[command, "--server", url, "--data", data]).await
}

impl Api {
    async fn state(&self) -> Value {
        self.get("/api/admin/sync/state").await
    }

    /// The job's runs, newest first.
    async fn runs(&self) -> Vec<Value> {
        self.get("/api/admin/sync/runs").await["runs"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Stores a trigger for the default job; returns its id.
    async fn trigger(&self) -> i64 {
        self.trigger_job(None).await
    }
}

fn postgres(database: &TestDatabase) -> StoreLocation {
    StoreLocation::Postgres {
        url: database.url.clone(),
        options: PgOptions::default(),
    }
}

/// The probe job named `probe` that succeeds at once, as `ferry worker` runs by default.
fn instant_probe() -> Vec<Arc<dyn SyncJob>> {
    vec![Arc::new(ProbeJob::new(ProbeConfig::default()))]
}

/// How long the second worker takes a silent run's worker to be alive.
const LEASE: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_worker_killed_mid_run_is_taken_over_after_its_lease_and_its_trigger_runs_again() {
    use std::os::unix::process::ExitStatusExt;

    let database = TestDatabase::create().await;
    let (_served, url, admin) = serve(&["--database", &database.url, "--no-worker"]).await;
    let api = Api::new(&url, &admin.expect("a new database gets an admin token"));
    let store: Arc<dyn JobStore> = ferry_server::init::open_jobs(&postgres(&database))
        .await
        .unwrap();

    // The job has run before, so its next scheduled run is 15 minutes away: the schedule
    // cannot explain a run within this test.
    let seed = Worker::spawn(
        store.clone(),
        instant_probe(),
        WorkerOptions::default(),
        CancellationToken::new(),
    );
    wait_for("a first run", || async {
        api.state().await["last_run"]["status"] == "succeeded"
    })
    .await;
    seed.stop().await;

    // Stored while no worker runs: the worker that starts next claims it.
    api.trigger().await;
    let mut killed = Process::start(
        ferry(),
        &[
            "worker",
            "--database",
            &database.url,
            "--probe",
            "sleep=1h",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "Metrics: ",
    )
    .await;
    wait_for("the trigger's run to be running", || async {
        let state = api.state().await;
        state["in_flight"] == true && state["pending_triggers"] == 0
    })
    .await;
    let dead = api.runs().await[0].clone();
    assert_eq!(dead["status"], "running", "{dead}");
    assert_eq!(dead["trigger"], "manual", "{dead}");

    killed.child.start_kill().unwrap(); // SIGKILL: no chance to finish or let go of the run.
    let status = killed.child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");

    // Neither its safety poll nor the schedule can start a run here: only the lease lapsing.
    let successor = Worker::spawn(
        store.clone(),
        instant_probe(),
        WorkerOptions {
            worker_id: "successor".into(),
            lease: LEASE,
            heartbeat: Duration::from_millis(200),
            safety_poll: Duration::from_secs(3600),
            ..WorkerOptions::default()
        },
        CancellationToken::new(),
    );
    let since = Instant::now();
    wait_for("the successor to run the trigger again", || async {
        let state = api.state().await;
        state["in_flight"] == false
            && state["pending_triggers"] == 0
            && state["last_run"]["id"] != dead["id"]
    })
    .await;
    let waited = since.elapsed();
    assert!(
        waited < LEASE + Duration::from_secs(5),
        "the successor waited for the lease only: {waited:?}"
    );

    let runs = api.runs().await;
    assert_eq!(runs.len(), 3, "{runs:?}");
    let (rerun, abandoned, first) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(first["trigger"], "schedule");
    assert_eq!(abandoned["id"], dead["id"]);
    assert_eq!(abandoned["status"], "abandoned");
    assert_eq!(
        abandoned["errors"][0],
        "the worker stopped sending heartbeats; its triggers run again"
    );
    let abandoned_at = abandoned["finished_at"].as_str().unwrap();
    assert_eq!(rerun["status"], "succeeded", "{rerun}");
    assert_eq!(
        rerun["trigger"], "manual",
        "run again as what it was: {rerun}"
    );
    assert!(rerun["started_at"].as_str().unwrap() >= abandoned_at);
    let metrics = successor.metrics();
    assert_eq!(metrics.runs("probe", "succeeded"), 1);
    assert!(
        metrics
            .render()
            .contains("ferry_worker_trigger_latency_seconds_count{job=\"probe\"} 1"),
        "the rerun claimed the dead run's trigger:\n{}",
        metrics.render()
    );
    successor.stop().await;
}

#[tokio::test]
async fn a_worker_process_serves_its_metrics() {
    let database = TestDatabase::create().await;
    let worker = Process::start(
        ferry(),
        &[
            "worker",
            "--database",
            &database.url,
            "--probe",
            "sleep=0ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "Metrics: ",
    )
    .await;
    assert!(
        worker.banner[0].contains(" worker ") && worker.banner[0].contains(" running probe on "),
        "{:?}",
        worker.banner
    );
    let url = worker.banner_after("Metrics: ").unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{url}"
    );
    let http = reqwest::Client::new();
    let metrics = || async {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    // Connected first, so the trigger below arrives as a notification.
    wait_for("the listener to connect", || async {
        metrics()
            .await
            .contains("\nferry_worker_listener_connected 1\n")
    })
    .await;

    let store = ferry_server::init::open_jobs(&postgres(&database))
        .await
        .unwrap();
    store.create_trigger("probe", "test").await.unwrap();
    // The latency is recorded when the run starts, a run's status once it has finished (the
    // start-up run may have finished before).
    wait_for("the trigger's run, and a finished run", || async {
        let text = metrics().await;
        text.contains("ferry_worker_trigger_latency_seconds_count{job=\"probe\"} 1\n")
            && text.contains("ferry_worker_runs_total{job=\"probe\",status=\"succeeded\"} ")
    })
    .await;
    let text = metrics().await;
    for expected in [
        "# TYPE ferry_worker_runs_total counter\n",
        "ferry_worker_runs_total{job=\"probe\",status=\"succeeded\"} ",
        "ferry_worker_run_duration_seconds_count{job=\"probe\"} ",
        "ferry_worker_pending_triggers{job=\"probe\"} 0\n",
        "# TYPE ferry_worker_listener_reconnects_total counter\n",
        "ferry_worker_listener_reconnects_total 0\n",
        "ferry_worker_listener_connected 1\n",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    wait_for("the worker's log of the notification", || async {
        worker
            .log()
            .contains("Received sync trigger notification from test")
    })
    .await;
}

#[tokio::test]
async fn a_new_user_triggers_and_reads_runs_from_the_command_line_and_viewers_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ferry-data");
    let data = data.to_str().unwrap();
    let (served, url, admin) = serve(&["--data", data, "--probe", "sleep=0ms"]).await;
    assert!(admin.is_some());
    let as_admin = |command| run_with_saved_token(command, &url, data);
    let state_json = || async {
        let output = run(&["state", "--json", "--server", &url, "--data", data]).await;
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    // A new store's first run is its schedule's, at once; the trigger gets a run of its own.
    wait_for("the first run", || async {
        state_json().await["last_run"]["status"] == "succeeded"
    })
    .await;

    let triggered = as_admin("trigger").await;
    assert!(triggered.status.success(), "{triggered:?}");
    assert!(
        stdout(&triggered).starts_with("Sync trigger notification sent to worker (job probe, "),
        "{triggered:?}"
    );
    wait_for("the manual run", || async {
        let state = state_json().await;
        state["last_run"]["trigger"] == "manual" && state["last_run"]["status"] == "succeeded"
    })
    .await;

    let runs = as_admin("runs").await;
    assert!(runs.status.success(), "{runs:?}");
    let listed = stdout(&runs);
    let newest = listed.lines().next().unwrap();
    assert!(
        newest.contains(" probe manual active succeeded ") && newest.ends_with(" probes=1"),
        "{listed}"
    );
    // Filters: the server answers with only the runs that match.
    let filtered = async |filters: &[&str]| {
        let mut args = vec!["runs"];
        args.extend_from_slice(filters);
        args.extend_from_slice(&["--server", &url, "--data", data]);
        let output = run(&args).await;
        assert!(output.status.success(), "{args:?}: {output:?}");
        stdout(&output)
    };
    assert_eq!(
        filtered(&["--trigger", "manual"]).await,
        format!("{newest}\n")
    );
    assert_eq!(
        filtered(&["--trigger", "catchup"]).await,
        "No run matches.\n"
    );
    let started_at = newest.split(' ').nth(5).unwrap();
    assert_eq!(
        filtered(&["--status", "succeeded", "--since", started_at]).await,
        format!("{newest}\n")
    );
    let older = filtered(&["--until", started_at]).await;
    assert!(
        !older.contains(newest) && older.contains(" probe "),
        "{older}"
    );

    let state = as_admin("state").await;
    assert!(state.status.success(), "{state:?}");
    let shown = stdout(&state);
    assert!(
        shown.contains("Tier:         active (every 15 min)\n"),
        "{shown}"
    );
    assert!(shown.contains("Running now:  no\n"), "{shown}");
    assert!(shown.contains("Pending:      0 trigger(s)\n"), "{shown}");
    assert!(shown.contains("Listener:     connected"), "{shown}");
    assert!(
        shown.contains(&format!("Last run:     {newest}\n")),
        "{shown}"
    );

    let minted = run(&["token", "create", "--role", "viewer", "--data", data]).await;
    assert!(minted.status.success(), "{minted:?}");
    let viewer = stdout(&minted).lines().last().unwrap().trim().to_owned();
    let refused = run(&["trigger", "--server", &url, "--token", &viewer]).await;
    assert!(!refused.status.success(), "{refused:?}");
    assert!(stderr(&refused).contains("403 forbidden"), "{refused:?}");
    let read = run(&["runs", "--server", &url, "--token", &viewer]).await;
    assert!(read.status.success(), "{read:?}");
    assert_eq!(stdout(&read), listed, "the viewer sees the same history");
    assert_eq!(
        state_json().await["pending_triggers"],
        0,
        "the refused trigger stored nothing"
    );

    wait_for("the server's log of the trigger and its run", || async {
        let log = served.log();
        log.contains("Manual sync triggered via notification")
            && log.contains("Received sync trigger notification from api")
            && log.contains("Sync completed in ")
    })
    .await;
}

#[tokio::test]
async fn a_trigger_with_no_worker_listening_is_stored_and_says_so() {
    let database = TestDatabase::create().await;
    let (_served, url, admin) = serve(&["--database", &database.url, "--no-worker"]).await;
    let admin = admin.expect("a new database gets an admin token");
    let output = run(&["trigger", "--server", &url, "--token", &admin]).await;
    assert!(output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("trigger"), "{}", stdout(&output));
    let said = stderr(&output);
    assert!(
        said.contains("No worker is listening") && said.contains("runs when a worker starts"),
        "{said}"
    );
}

#[tokio::test]
async fn a_refused_or_missing_admin_token_says_how_to_make_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (_served, url, _) = serve(&["--data", data]).await;
    let refused = run(&["state", "--server", &url, "--token", "not-a-token"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("ferry token create --role admin"),
        "{}",
        stderr(&refused)
    );
    std::fs::remove_file(dir.path().join("data").join("admin.token")).unwrap();
    let missing = run_with_saved_token("state", &url, data).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("ferry token create --role admin"),
        "{}",
        stderr(&missing)
    );
}
