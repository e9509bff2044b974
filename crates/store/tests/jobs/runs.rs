//! Single-flight runs with heartbeated leases, and how a run ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_store::jobs::{CadenceRecord, FinishedRun, NewRun, RunQuery, StartedRun};
use tokio::task::JoinSet;

use super::support::{Fixture, LEASE, active_cadence, ids, new_run, start, succeed, within};

/// Regression: the system Ferry replaces raced on a "running" row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_of_one_job_give_exactly_one_run_even_across_instances() {
    const ROUNDS: usize = 10;
    const CONTENDERS: usize = 8;
    let fixture = Fixture::new().await;
    let instances = [Arc::clone(&fixture.store), fixture.another_instance().await];
    for round in 0..ROUNDS {
        fixture
            .store
            .create_trigger("billing", "api")
            .await
            .unwrap();
        let mut starts = JoinSet::new();
        for n in 0..CONTENDERS {
            let store = Arc::clone(&instances[n % instances.len()]);
            starts.spawn(async move {
                let worker = format!("w{n}");
                let answer = store.start_run(&new_run("billing", &worker)).await;
                (worker, answer.unwrap())
            });
        }
        let mut started = Vec::new();
        let mut busy = Vec::new();
        while let Some(answer) = within(starts.join_next()).await {
            match answer.unwrap() {
                (
                    worker,
                    StartedRun::Started {
                        run_id, triggers, ..
                    },
                ) => {
                    assert_eq!(triggers.len(), 1, "round {round}");
                    started.push((worker, run_id));
                }
                (_, StartedRun::Busy { running }) => busy.push(running),
                (_, StartedRun::NothingPending) => panic!("a plain start always runs"),
            }
        }
        assert_eq!(started.len(), 1, "round {round}: {started:?}");
        let (worker, run_id) = started.pop().unwrap();
        assert_eq!(busy, vec![run_id; CONTENDERS - 1], "round {round}");
        succeed(&*fixture.store, run_id, &worker).await;
    }
}

#[tokio::test]
async fn runs_of_different_jobs_do_not_exclude_each_other() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let billing = start(store, &new_run("billing", "w1")).await;
    let reports = start(store, &new_run("reports", "w1")).await;
    assert_ne!(billing.run_id, reports.run_id);
    assert_eq!(
        store.running("billing").await.unwrap().map(|run| run.id),
        Some(billing.run_id)
    );
    assert_eq!(
        store.running("reports").await.unwrap().map(|run| run.id),
        Some(reports.run_id)
    );
}

/// Regression: a worker killed mid-run left its job "running" forever.
#[tokio::test]
async fn a_run_whose_heartbeat_is_older_than_the_lease_is_abandoned_and_its_triggers_run_again() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let triggers = [
        store.create_trigger("billing", "api").await.unwrap(),
        store.create_trigger("billing", "cli").await.unwrap(),
    ];
    let dead = start(store, &new_run("billing", "killed")).await;
    assert_eq!(dead.triggers, triggers);
    let later = store.create_trigger("billing", "api").await.unwrap();
    fixture
        .backdate(dead.run_id, LEASE + Duration::from_secs(1))
        .await;

    let next = start(store, &new_run("billing", "w2")).await;
    assert_eq!(next.abandoned, [dead.run_id]);
    assert_eq!(
        ids(&next.triggers),
        [triggers[0].id, triggers[1].id, later.id]
    );
    let abandoned = store.run(dead.run_id).await.unwrap().unwrap();
    assert_eq!(abandoned.status, "abandoned");
    assert!(abandoned.finished_at.is_some());
    assert_eq!(abandoned.errors.len(), 1);
    assert!(
        abandoned.errors[0].contains("heartbeat"),
        "{:?}",
        abandoned.errors
    );
    assert_eq!(
        store.running("billing").await.unwrap().map(|run| run.id),
        Some(next.run_id)
    );

    // The killed worker, should it come back, owns nothing any more.
    assert!(!store.heartbeat(dead.run_id, "killed").await.unwrap());
    let counts = BTreeMap::from([("events_created".to_owned(), 3)]);
    let late_cadence = CadenceRecord {
        tier: "dormant".into(),
        ..active_cadence()
    };
    let finished = FinishedRun {
        status: "succeeded",
        counts: &counts,
        errors: &[],
        cadence: &late_cadence,
    };
    assert!(
        !store
            .finish_run(dead.run_id, "killed", &finished)
            .await
            .unwrap()
    );
    assert_eq!(store.run(dead.run_id).await.unwrap().unwrap(), abandoned);
    assert_eq!(store.cadence("billing").await.unwrap(), None);
}

#[tokio::test]
async fn a_run_with_a_live_heartbeat_is_not_abandoned() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let live = start(store, &new_run("billing", "w1")).await;
    // Older than the lease, but renewed since: the heartbeat counts, not the start.
    fixture.backdate(live.run_id, LEASE * 2).await;
    assert!(store.heartbeat(live.run_id, "w1").await.unwrap());

    let trigger = store.create_trigger("billing", "api").await.unwrap();
    let answer = store.start_run(&new_run("billing", "w2")).await.unwrap();
    assert_eq!(
        answer,
        StartedRun::Busy {
            running: live.run_id
        }
    );
    let run = store.run(live.run_id).await.unwrap().unwrap();
    assert_eq!((run.status.as_str(), run.finished_at), ("running", None));
    assert_eq!(store.pending_triggers("billing").await.unwrap(), [trigger]);
}

#[tokio::test]
async fn a_shorter_lease_decides_staleness_for_the_run_that_asks() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let first = start(store, &new_run("billing", "w1")).await;
    fixture
        .backdate(first.run_id, Duration::from_secs(10))
        .await;
    let patient = NewRun {
        lease: Duration::from_secs(30),
        ..new_run("billing", "w2")
    };
    assert!(matches!(
        store.start_run(&patient).await.unwrap(),
        StartedRun::Busy { .. }
    ));
    let impatient = NewRun {
        lease: Duration::from_secs(5),
        ..new_run("billing", "w2")
    };
    assert_eq!(start(store, &impatient).await.abandoned, [first.run_id]);
}

#[tokio::test]
async fn heartbeat_and_finish_by_another_worker_change_nothing() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let run = start(store, &new_run("billing", "w1")).await;
    let before = store.run(run.run_id).await.unwrap().unwrap();

    assert!(!store.heartbeat(run.run_id, "w2").await.unwrap());
    let counts = BTreeMap::from([("events_created".to_owned(), 1)]);
    let finished = FinishedRun {
        status: "failed",
        counts: &counts,
        errors: &["not mine".to_owned()],
        cadence: &active_cadence(),
    };
    assert!(!store.finish_run(run.run_id, "w2", &finished).await.unwrap());
    assert!(!store.heartbeat(run.run_id + 1000, "w1").await.unwrap());
    assert!(
        !store
            .finish_run(run.run_id + 1000, "w1", &finished)
            .await
            .unwrap()
    );

    // Nor does the owner finishing with a status a run cannot end in.
    let not_final = FinishedRun {
        status: "running",
        ..finished
    };
    assert!(
        store
            .finish_run(run.run_id, "w1", &not_final)
            .await
            .is_err()
    );
    assert_eq!(store.run(run.run_id).await.unwrap().unwrap(), before);
    assert_eq!(store.cadence("billing").await.unwrap(), None);
    assert!(store.heartbeat(run.run_id, "w1").await.unwrap());

    // A finished run is not running: it takes no more heartbeats and no second finish.
    succeed(store, run.run_id, "w1").await;
    assert!(!store.heartbeat(run.run_id, "w1").await.unwrap());
    assert!(!store.finish_run(run.run_id, "w1", &finished).await.unwrap());
    assert_eq!(
        store.run(run.run_id).await.unwrap().unwrap().status,
        "succeeded"
    );
}

#[tokio::test]
async fn finish_saves_counts_errors_duration_and_the_cadence_together() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let run = start(store, &new_run("billing", "w1")).await;
    // The run started 1.5 s ago as far as the store knows, so its duration is at least that.
    fixture
        .backdate(run.run_id, Duration::from_millis(1500))
        .await;

    let counts = BTreeMap::from([
        ("events_created".to_owned(), 3),
        ("transactions_processed".to_owned(), 5),
    ]);
    let errors = ["one charger did not answer".to_owned()];
    let clock = store.clock_ms().await.unwrap();
    let cadence = CadenceRecord {
        tier: "idle".into(),
        demotion_toward: Some("dormant".into()),
        demotion_streak: 1,
        pinned_tier: Some("active".into()),
        pinned_until_ms: Some(clock + 3_600_000),
        next_run_at_ms: Some(clock + 900_000),
    };
    let finished = FinishedRun {
        status: "partial",
        counts: &counts,
        errors: &errors,
        cadence: &cadence,
    };
    assert!(store.finish_run(run.run_id, "w1", &finished).await.unwrap());

    let stored = store.run(run.run_id).await.unwrap().unwrap();
    assert_eq!(stored.status, "partial");
    assert_eq!(stored.counts, counts);
    assert_eq!(stored.errors, errors);
    let duration = stored.duration_ms.unwrap();
    assert!((1500..60_000).contains(&duration), "{duration}");
    let started = ferry_core::time::parse_ms(&stored.started_at).unwrap();
    let finished_at = ferry_core::time::parse_ms(stored.finished_at.as_deref().unwrap()).unwrap();
    assert_eq!(finished_at - started, duration);
    assert_eq!(started, run.started_at_ms - 1500);
    assert_eq!(store.cadence("billing").await.unwrap(), Some(cadence));
    assert_eq!(store.running("billing").await.unwrap(), None);
}

#[tokio::test]
async fn a_started_run_reads_back_as_running() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let run = start(store, &new_run("billing", "w1")).await;
    let clock = store.clock_ms().await.unwrap();
    assert!(run.started_at_ms <= clock && clock - run.started_at_ms < 60_000);

    let running = store.running("billing").await.unwrap().unwrap();
    assert_eq!(running.id, run.run_id);
    assert_eq!(
        (
            running.job.as_str(),
            running.trigger.as_str(),
            running.tier.as_str()
        ),
        ("billing", "manual", "active")
    );
    assert_eq!(running.status, "running");
    assert_eq!(
        running.started_at,
        ferry_core::time::format_ms(run.started_at_ms)
    );
    assert_eq!((running.finished_at, running.duration_ms), (None, None));
    assert!(running.counts.is_empty() && running.errors.is_empty());
    assert_eq!(running.log, None);
    assert_eq!(store.running("reports").await.unwrap(), None);
}

#[tokio::test]
async fn a_run_for_triggers_starts_only_when_one_is_pending_at_the_pinned_tier() {
    let fixture = Fixture::new().await;
    let store = fixture.store.as_ref();
    let for_triggers = NewRun {
        tier: "dormant",
        for_triggers: true,
        ..new_run("billing", "w1")
    };
    // Nothing pending: nothing started, nothing written.
    assert_eq!(
        store.start_run(&for_triggers).await.unwrap(),
        StartedRun::NothingPending
    );
    assert!(
        store
            .runs(&RunQuery {
                limit: 10,
                ..RunQuery::default()
            })
            .await
            .unwrap()
            .is_empty()
    );

    // Pending: started at the active tier (the given tier is ignored) with the trigger.
    let trigger = store.create_trigger("billing", "api").await.unwrap();
    let started = start(store, &for_triggers).await;
    assert_eq!(started.tier, "active");
    assert_eq!(started.triggers, [trigger]);
    succeed(store, started.run_id, "w1").await;

    // While a pin lasts, at the pinned tier.
    let now = store.clock_ms().await.unwrap();
    let pinned = CadenceRecord {
        pinned_tier: Some("idle".into()),
        pinned_until_ms: Some(now + 3_600_000),
        ..active_cadence()
    };
    store.save_cadence("billing", &pinned).await.unwrap();
    store.create_trigger("billing", "api").await.unwrap();
    assert_eq!(start(store, &for_triggers).await.tier, "idle");
}
