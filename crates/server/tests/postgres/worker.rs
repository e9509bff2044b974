//! The sync worker runtime on PostgreSQL: a killed LISTEN connection, and two workers (two
//! store instances, as two `ferry worker` processes would have) racing on one job.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_store::JobStore;
use ferry_worker::runtime::{Worker, WorkerOptions};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::support::*;

/// The backend pids of the trigger listener's connections to the client's database.
async fn listener_connections(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'ferry-listener'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn a_trigger_sent_after_the_listener_connection_is_killed_runs_once_it_reconnects() {
    let server = Server::start().await;
    let client = server.storage.database.as_ref().unwrap().connect().await;
    let job = GateJob::open_now(PROBE);
    // Neither the safety poll nor the schedule (15 min after the first run) can explain a run
    // within the test: only the listener can. Its reconnect waits long enough that the trigger
    // is usually stored while it is down, so the drain after the reconnect is what runs it.
    let options = WorkerOptions {
        safety_poll: Duration::from_secs(3600),
        reconnect_backoff: (Duration::from_millis(300), Duration::from_millis(300)),
        ..quick_worker()
    };
    let worker = server.worker(job.clone(), options);
    let metrics = worker.metrics();
    // A new job's first run is its schedule's, at once.
    assert_eq!(server.settled_after(1).await[0]["trigger"], "schedule");
    wait_for("the listener to connect", || async {
        listener_connections(&client).await.len() == 1
    })
    .await;
    let killed = listener_connections(&client).await[0];

    let terminated: bool = client
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&killed])
        .await
        .unwrap()
        .get(0);
    assert!(terminated, "the listener's backend ended");
    wait_for("the worker to notice", || async {
        metrics.reconnects() >= 1
            || metrics
                .render()
                .contains("ferry_worker_listener_connected 0")
    })
    .await;
    let sent = Instant::now();
    let (status, body) = server.trigger().await;
    assert_eq!(status, 202, "{body}");

    let runs = server.settled_after(2).await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the run started promptly: {:?}",
        sent.elapsed()
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["trigger"], "manual");
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(job.runs(), 2);
    assert!(metrics.reconnects() >= 1);
    let now = listener_connections(&client).await;
    assert_eq!(now.len(), 1, "one listener again: {now:?}");
    assert_ne!(now[0], killed, "on a new connection");
    assert_eq!(server.sync_state().await["listener"]["connected"], true);
    worker.stop().await;
}

/// Bursts of triggers, each sent while one run waits at the gate and racing its end.
const ROUNDS: usize = 12;
const BURST: usize = 25;

// A current-thread runtime, so that `GateJob::let_one_through` knows a counted run waits at the
// gate; the race is the database's: both workers' transactions are in flight at once.
#[tokio::test]
async fn two_workers_on_one_database_never_run_a_job_twice_at_once_and_lose_no_trigger() {
    let server = Server::start().await;
    let second: Arc<dyn JobStore> = ferry_server::init::open_jobs(&server.storage.location)
        .await
        .unwrap();
    let job = GateJob::closed(PROBE);
    let options = |id: &str| WorkerOptions {
        worker_id: id.to_owned(),
        ..quick_worker()
    };
    let one = server.worker(job.clone(), options("one"));
    let two = Worker::spawn(
        second.clone(),
        vec![job.clone()],
        options("two"),
        CancellationToken::new(),
    );
    // The first run (the schedule's) waits at the gate.
    wait_for("the first run to start", || async { job.runs() == 1 }).await;

    let stores = [server.jobs.clone(), second.clone()];
    for round in 0..ROUNDS {
        let started = job.runs();
        let mut burst = JoinSet::new();
        for n in 0..BURST {
            let store = stores[n % 2].clone();
            burst.spawn(async move { store.create_trigger(PROBE, "race").await.unwrap() });
        }
        // The run at the gate ends while the burst is being stored.
        job.let_one_through().await;
        while let Some(stored) = burst.join_next().await {
            stored.unwrap();
        }
        // Whatever the burst left pending starts exactly one follow-up, which waits at the gate.
        wait_for(&format!("round {round}'s follow-up run"), || async {
            job.runs() > started
        })
        .await;
        assert_eq!(job.runs(), started + 1, "round {round}");
    }
    job.open();
    server.settled_after(ROUNDS + 1).await;
    one.stop().await;
    two.stop().await;

    assert_eq!(job.most_at_once.load(Ordering::SeqCst), 1);
    assert!(
        server
            .jobs
            .pending_triggers(PROBE)
            .await
            .unwrap()
            .is_empty()
    );
    let client = server.storage.database.as_ref().unwrap().connect().await;
    let row = client
        .query_one(
            "SELECT count(*), count(run_id) FROM ferry.triggers WHERE source = 'race'",
            &[],
        )
        .await
        .unwrap();
    let (stored, claimed): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(stored, (ROUNDS * BURST) as i64);
    assert_eq!(claimed, stored, "every trigger was claimed by a run");
    let workers: Vec<String> = client
        .query(
            "SELECT DISTINCT worker FROM ferry.runs ORDER BY worker",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        workers,
        ["one", "two"],
        "both workers won runs: the race was real"
    );

    let (status, body) = server.admin_get("/api/admin/sync/runs?limit=500").await;
    assert_eq!(status, 200, "{body}");
    let mut runs: Vec<Value> = body["runs"].as_array().unwrap().clone();
    runs.reverse();
    assert_eq!(runs.len(), job.runs(), "{runs:?}");
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:?}");
    // Each run starts after the one before it finished, even when its start waited for that
    // finish to commit (the start is stamped after the wait).
    let at = |run: &Value, field: &str| {
        ferry_core::time::parse_ms(run[field].as_str().unwrap()).unwrap()
    };
    for pair in runs.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let lead = at(before, "finished_at") - at(after, "started_at");
        assert!(
            lead <= 0,
            "run {} started {lead} ms before run {} finished: {runs:?}",
            after["id"],
            before["id"]
        );
    }
}
