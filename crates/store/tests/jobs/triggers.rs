//! Triggers are stored first and claimed by runs: none is lost, none runs twice.

use std::sync::Arc;

use ferry_store::jobs::StartedRun;
use tokio::task::JoinSet;

use super::support::{Fixture, ids, new_run, start, succeed, within};

#[tokio::test]
async fn a_trigger_stored_while_no_listener_exists_is_claimed_by_the_next_run() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let trigger = store.create_trigger("billing", "api").await.unwrap();
    assert_eq!(
        (trigger.job.as_str(), trigger.source.as_str()),
        ("billing", "api")
    );
    let clock = store.clock_ms().await.unwrap();
    assert!(
        (clock - trigger.created_at_ms).abs() < 60_000,
        "{clock} {trigger:?}"
    );
    assert_eq!(
        store.pending_triggers("billing").await.unwrap(),
        std::slice::from_ref(&trigger)
    );
    assert_eq!(store.pending_count("billing").await.unwrap(), 1);
    assert_eq!(store.pending_count("reports").await.unwrap(), 0);

    let started = start(store, &new_run("billing", "w1")).await;
    assert_eq!(started.triggers, [trigger]);
    assert!(started.abandoned.is_empty());
    assert!(store.pending_triggers("billing").await.unwrap().is_empty());
    assert_eq!(store.pending_count("billing").await.unwrap(), 0);
}

#[tokio::test]
async fn pending_triggers_are_oldest_first_and_a_run_claims_only_its_own_jobs() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let first = store.create_trigger("billing", "api").await.unwrap();
    let other = store.create_trigger("reports", "cli").await.unwrap();
    let second = store.create_trigger("billing", "cli").await.unwrap();
    assert!(first.id < other.id && other.id < second.id);
    assert_eq!(
        store.pending_triggers("billing").await.unwrap(),
        [first.clone(), second.clone()]
    );

    let started = start(store, &new_run("billing", "w1")).await;
    assert_eq!(started.triggers, [first, second]);
    assert_eq!(store.pending_triggers("reports").await.unwrap(), [other]);
}

/// Regression: the system Ferry replaces dropped triggers that arrived during a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_triggers_during_a_run_is_claimed_whole_by_one_next_run() {
    const STORM: usize = 1000;
    let fixture = Fixture::new().await;
    let store = Arc::clone(&fixture.store);
    let first = start(&*store, &new_run("billing", "w1")).await;
    assert!(first.triggers.is_empty());

    let mut storm = JoinSet::new();
    for n in 0..STORM {
        let store = Arc::clone(&store);
        storm.spawn(async move { store.create_trigger("billing", &format!("api-{n}")).await });
    }
    let mut created = Vec::with_capacity(STORM);
    while let Some(trigger) = within(storm.join_next()).await {
        created.push(trigger.unwrap().unwrap());
    }
    created.sort_by_key(|trigger| trigger.id);
    assert_eq!(store.pending_triggers("billing").await.unwrap(), created);

    // While the run lasts, starting again only says busy and claims nothing.
    let busy = store.start_run(&new_run("billing", "w2")).await.unwrap();
    assert_eq!(
        busy,
        StartedRun::Busy {
            running: first.run_id
        }
    );
    assert_eq!(
        store.pending_triggers("billing").await.unwrap().len(),
        STORM
    );

    succeed(&*store, first.run_id, "w1").await;
    let follow_up = start(&*store, &new_run("billing", "w1")).await;
    assert_eq!(ids(&follow_up.triggers), ids(&created));
    assert!(store.pending_triggers("billing").await.unwrap().is_empty());

    succeed(&*store, follow_up.run_id, "w1").await;
    let quiet = start(&*store, &new_run("billing", "w1")).await;
    assert!(quiet.triggers.is_empty());
}
