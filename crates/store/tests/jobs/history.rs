//! Run history: pages of runs, one run with its log, retention.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::time::{format_ms, parse_ms};
use ferry_store::jobs::{FinishedRun, JobStore, LogLine, NewRun, RunQuery};

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
        ..RunQuery::default()
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
async fn runs_are_filtered_by_status_trigger_and_start_time_and_page_under_filters() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let hour = Duration::from_secs(3600);
    // Oldest first, so ids grow as start times do: (job, trigger, how it ends, hours ago).
    let plan = [
        ("billing", "schedule", "succeeded", 50),
        ("billing", "manual", "failed", 40),
        ("reports", "catchup", "succeeded", 30),
        ("billing", "schedule", "partial", 20),
        ("billing", "catchup", "abandoned", 10),
        ("billing", "manual", "succeeded", 5),
        ("reports", "schedule", "running", 1),
    ];
    let mut ids = Vec::new();
    // A run left running with a stale heartbeat, which the next start finds dead.
    let mut stale = None;
    for (job, trigger, status, hours_ago) in plan {
        let run = NewRun {
            trigger,
            ..new_run(job, "w1")
        };
        let started = start(store, &run).await;
        assert_eq!(started.abandoned, Vec::from_iter(stale.take()));
        match status {
            "running" => {}
            "abandoned" => stale = Some(started.run_id),
            _ => finish(store, started.run_id, status).await,
        }
        fixture.backdate(started.run_id, hour * hours_ago).await;
        ids.push(started.run_id);
    }
    let [
        schedule_50,
        failed_40,
        catchup_30,
        partial_20,
        abandoned_10,
        manual_5,
        running_1,
    ] = ids[..]
    else {
        unreachable!()
    };
    let listed = async |query: RunQuery| -> Vec<i64> {
        let runs = store.runs(&query).await.unwrap();
        runs.iter().map(|run| run.id).collect()
    };
    let all = || RunQuery {
        limit: 100,
        ..RunQuery::default()
    };
    let status = |status: &str| RunQuery {
        status: Some(status.into()),
        ..all()
    };
    let trigger = |trigger: &str| RunQuery {
        trigger: Some(trigger.into()),
        ..all()
    };

    assert_eq!(
        listed(status("succeeded")).await,
        [manual_5, catchup_30, schedule_50]
    );
    assert_eq!(listed(status("failed")).await, [failed_40]);
    assert_eq!(listed(status("partial")).await, [partial_20]);
    assert_eq!(listed(status("abandoned")).await, [abandoned_10]);
    assert_eq!(listed(status("running")).await, [running_1]);
    assert_eq!(
        listed(trigger("schedule")).await,
        [running_1, partial_20, schedule_50]
    );
    assert_eq!(listed(trigger("manual")).await, [manual_5, failed_40]);
    assert_eq!(listed(trigger("catchup")).await, [abandoned_10, catchup_30]);

    // Filters combine, with each other and with the job.
    let billing = |query: RunQuery| RunQuery {
        job: Some("billing".into()),
        ..query
    };
    assert_eq!(
        listed(billing(trigger("schedule"))).await,
        [partial_20, schedule_50]
    );
    assert_eq!(listed(billing(trigger("catchup"))).await, [abandoned_10]);
    assert_eq!(
        listed(RunQuery {
            trigger: Some("manual".into()),
            ..billing(status("succeeded"))
        })
        .await,
        [manual_5]
    );
    assert!(
        listed(RunQuery {
            trigger: Some("catchup".into()),
            ..status("failed")
        })
        .await
        .is_empty()
    );

    // Start times: at or after `since`, before `until`.
    let now = store.clock_ms().await.unwrap();
    let hours_ago = |hours: i64| now - hours * 3_600_000;
    let between = |since: Option<i64>, until: Option<i64>| RunQuery {
        since_ms: since,
        until_ms: until,
        ..all()
    };
    assert_eq!(
        listed(between(Some(hours_ago(25)), None)).await,
        [running_1, manual_5, abandoned_10, partial_20]
    );
    assert_eq!(
        listed(between(None, Some(hours_ago(25)))).await,
        [catchup_30, failed_40, schedule_50]
    );
    assert_eq!(
        listed(between(Some(hours_ago(45)), Some(hours_ago(15)))).await,
        [partial_20, catchup_30, failed_40]
    );
    assert_eq!(
        listed(RunQuery {
            job: Some("reports".into()),
            ..between(Some(hours_ago(45)), Some(hours_ago(15)))
        })
        .await,
        [catchup_30]
    );
    assert!(
        listed(between(Some(hours_ago(15)), Some(hours_ago(45))))
            .await
            .is_empty()
    );
    // The bounds are exact to the millisecond: `since` takes in a run that started at it,
    // `until` leaves it out.
    let started_at = store.run(partial_20).await.unwrap().unwrap().started_at;
    let at = parse_ms(&started_at).unwrap();
    assert_eq!(listed(between(Some(at), Some(at + 1))).await, [partial_20]);
    assert!(listed(between(Some(at), Some(at))).await.is_empty());
    assert_eq!(
        listed(between(Some(at + 1), None)).await,
        [running_1, manual_5, abandoned_10]
    );
    // Bounds far outside every run's time.
    assert_eq!(listed(between(Some(i64::MIN / 4), None)).await.len(), 7);
    assert!(listed(between(None, Some(-86_400_000))).await.is_empty());

    // Paging under a filter: `before` is the previous page's last id.
    let succeeded = |before: Option<i64>| RunQuery {
        before,
        limit: 2,
        ..status("succeeded")
    };
    let first = listed(succeeded(None)).await;
    assert_eq!(first, [manual_5, catchup_30]);
    let second = listed(succeeded(first.last().copied())).await;
    assert_eq!(second, [schedule_50]);
    assert!(listed(succeeded(Some(schedule_50))).await.is_empty());
    let recent = |before: Option<i64>| RunQuery {
        before,
        limit: 1,
        ..billing(between(Some(hours_ago(45)), None))
    };
    assert_eq!(listed(recent(None)).await, [manual_5]);
    assert_eq!(listed(recent(Some(manual_5))).await, [abandoned_10]);
    assert_eq!(listed(recent(Some(abandoned_10))).await, [partial_20]);
    assert_eq!(listed(recent(Some(partial_20))).await, [failed_40]);
    assert!(listed(recent(Some(failed_40))).await.is_empty());
}

/// Finishes a run of worker `w1` as `status`.
async fn finish(store: &dyn JobStore, run_id: i64, status: &str) {
    let counts = BTreeMap::new();
    let finished = FinishedRun {
        status,
        counts: &counts,
        errors: &[],
        cadence: &active_cadence(),
    };
    assert!(store.finish_run(run_id, "w1", &finished).await.unwrap());
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
