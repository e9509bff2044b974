//! Run history: pages of runs, one run with its log, retention.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::time::format_ms;
use ferry_store::jobs::{FinishedRun, LogLine, RunQuery};

use super::support::{Fixture, active_cadence, new_run, start, succeed};

#[tokio::test]
async fn runs_are_listed_newest_first_in_pages_and_by_job() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let mut billing = Vec::new();
    let mut all = Vec::new();
    for n in 0..5 {
        let job = if n % 2 == 0 { "billing" } else { "reports" };
        let run = start(store, &new_run(job, "w1")).await;
        succeed(store, run.run_id, "w1").await;
        if job == "billing" {
            billing.push(run.run_id);
        }
        all.push(run.run_id);
    }
    // The running run is listed too.
    let running = start(store, &new_run("billing", "w1")).await;
    billing.push(running.run_id);
    all.push(running.run_id);
    all.reverse();
    billing.reverse();

    let page = |job: Option<&str>, before: Option<i64>, limit: u32| RunQuery {
        job: job.map(str::to_owned),
        before,
        limit,
    };
    let listed = |runs: Vec<ferry_proto::worker::SyncRun>| -> Vec<i64> {
        assert!(runs.iter().all(|run| run.log.is_none()));
        runs.iter().map(|run| run.id).collect()
    };
    assert_eq!(
        listed(store.runs(&page(None, None, 100)).await.unwrap()),
        all
    );
    let first = listed(store.runs(&page(None, None, 4)).await.unwrap());
    assert_eq!(first, all[..4]);
    let second = listed(
        store
            .runs(&page(None, first.last().copied(), 4))
            .await
            .unwrap(),
    );
    assert_eq!(second, all[4..]);
    assert_eq!(
        listed(store.runs(&page(Some("billing"), None, 100)).await.unwrap()),
        billing
    );
    assert_eq!(
        listed(
            store
                .runs(&page(Some("billing"), Some(billing[0]), 1))
                .await
                .unwrap()
        ),
        billing[1..2]
    );
    assert!(
        store
            .runs(&page(Some("nothing"), None, 10))
            .await
            .unwrap()
            .is_empty()
    );

    let runs = store.runs(&page(None, None, 1)).await.unwrap();
    assert_eq!(runs[0].status, "running");
    assert_eq!(runs[0].job, "billing");
}

#[tokio::test]
async fn a_run_reads_with_its_log_lines_in_order() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let run = start(store, &new_run("billing", "w1")).await;
    let other = start(store, &new_run("reports", "w1")).await;
    let at = run.started_at_ms;
    let line = |offset: i64, level: &str, message: &str| LogLine {
        at_ms: at + offset,
        level: level.into(),
        message: message.into(),
    };
    store
        .append_log(
            run.run_id,
            &[
                line(0, "info", "Received sync trigger notification from api"),
                // Same instant, and an earlier one: order is the order appended, not time.
                line(0, "debug", "Fetched 5 transactions"),
                line(-5, "warn", "One charger did not answer"),
            ],
        )
        .await
        .unwrap();
    store
        .append_log(other.run_id, &[line(1, "info", "another run")])
        .await
        .unwrap();
    store.append_log(run.run_id, &[]).await.unwrap();
    store
        .append_log(
            run.run_id,
            &[line(
                1420,
                "info",
                "Sync completed in 1.42s: 3 events created, 5 transactions processed",
            )],
        )
        .await
        .unwrap();

    let read = store.run(run.run_id).await.unwrap().unwrap();
    let log = read.log.unwrap();
    let lines: Vec<(String, &str, &str)> = log
        .iter()
        .map(|l| (l.at.clone(), l.level.as_str(), l.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        [
            (
                format_ms(at),
                "info",
                "Received sync trigger notification from api"
            ),
            (format_ms(at), "debug", "Fetched 5 transactions"),
            (format_ms(at - 5), "warn", "One charger did not answer"),
            (
                format_ms(at + 1420),
                "info",
                "Sync completed in 1.42s: 3 events created, 5 transactions processed"
            ),
        ]
    );
    let without_lines = start(store, &new_run("third", "w1")).await;
    assert_eq!(
        store.run(without_lines.run_id).await.unwrap().unwrap().log,
        Some(Vec::new())
    );
    assert_eq!(store.run(run.run_id + 1000).await.unwrap(), None);
}

#[tokio::test]
async fn pruning_deletes_old_finished_runs_with_their_log_and_keeps_recent_and_running_ones() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let day = Duration::from_secs(86_400);

    let ran = store.create_trigger("billing", "api").await.unwrap();
    let old = start(store, &new_run("billing", "w1")).await;
    assert_eq!(old.triggers, [ran]);
    let log = [LogLine {
        at_ms: old.started_at_ms,
        level: "info".into(),
        message: "old".into(),
    }];
    store.append_log(old.run_id, &log).await.unwrap();
    let counts = BTreeMap::new();
    let failed = FinishedRun {
        status: "failed",
        counts: &counts,
        errors: &["boom".to_owned()],
        cadence: &active_cadence(),
    };
    assert!(store.finish_run(old.run_id, "w1", &failed).await.unwrap());
    fixture.backdate(old.run_id, day * 100).await;

    let recent = start(store, &new_run("billing", "w1")).await;
    succeed(store, recent.run_id, "w1").await;
    fixture.backdate(recent.run_id, day * 10).await;

    // A run still running (with a fresh heartbeat) that started long ago stays.
    let long = start(store, &new_run("reports", "w1")).await;
    fixture.backdate(long.run_id, day * 100).await;
    assert!(store.heartbeat(long.run_id, "w1").await.unwrap());

    // A pending trigger belongs to no run and stays too.
    let pending = store.create_trigger("billing", "api").await.unwrap();

    // The old run has a log line and a trigger: foreign keys would refuse to delete it
    // unless both went with it.
    let clock = store.clock_ms().await.unwrap();
    let cutoff = clock - 90 * 86_400_000;
    assert_eq!(store.prune_runs(cutoff).await.unwrap(), 1);
    assert_eq!(store.run(old.run_id).await.unwrap(), None);
    assert!(store.run(recent.run_id).await.unwrap().is_some());
    assert_eq!(
        store.running("reports").await.unwrap().map(|run| run.id),
        Some(long.run_id)
    );
    assert_eq!(store.pending_triggers("billing").await.unwrap(), [pending]);
    assert_eq!(store.prune_runs(cutoff).await.unwrap(), 0);
}
