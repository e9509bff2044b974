//! Lago and StEvE failing in every way the job must survive: each session's energy still
//! reaches Lago exactly once.

use std::time::Duration;

use ferry_store::billing::{ReviewAction, SessionState};
use ferry_worker::job::FinalStatus;

use super::support::{HOUR, World, count, now};

#[tokio::test]
async fn one_refused_event_does_not_hold_the_rest_of_its_batch_hostage() {
    let world = World::new().await;
    let ids: Vec<i64> = (0..5)
        .map(|i| world.charge("TAG", now() - 3 * HOUR, 100 + i))
        .collect();
    let bad = ids[2];
    world
        .lago
        .handle()
        .reject_transaction(&format!("steve-{bad}"), "properties", "invalid_value");
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Partial, "{run:?}");
    assert_eq!(count(&run, "events_created"), 4);
    assert_eq!(count(&run, "events_rejected"), 1);
    assert!(
        run.errors.iter().any(|e| e.contains("invalid_value")),
        "{run:?}"
    );
    for &id in &ids {
        let expected = if id == bad { 0 } else { 100 + (id - ids[0]) };
        assert_eq!(world.lago_wh(id), expected, "session {id}");
    }
    let session = world.session(bad).await;
    assert_eq!(session.state, SessionState::NeedsReview);
    assert!(session.reason.unwrap().contains("invalid_value"));
    let events = world.ledger.session_events(&[bad]).await.unwrap();
    assert_eq!(
        events[0]
            .error
            .as_deref()
            .map(|e| e.contains("invalid_value")),
        Some(true)
    );

    // Fixed on Lago's side, approved by an operator: the same event goes out again.
    world.lago.handle().clear_faults();
    world.ledger.review(bad, ReviewAction::Bill).await.unwrap();
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(world.lago_wh(bad), 102);
    assert_eq!(world.lago.handle().events().len(), 5);
}

#[tokio::test]
async fn an_answer_lost_after_lago_applied_the_batch_is_settled_as_a_duplicate() {
    let world = World::new().await;
    let ids: Vec<i64> = (0..3)
        .map(|_| world.charge("TAG", now() - 3 * HOUR, 1000))
        .collect();
    world.lago.handle().drop_next(1);
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(
        count(&run, "events_created"),
        0,
        "Lago created them for the lost answer"
    );
    assert_eq!(count(&run, "events_already_in_lago"), 3);
    assert_eq!(world.lago.handle().events().len(), 3, "applied once");
    assert_eq!(
        world.lago.handle().event_posts(),
        2,
        "the batch, then the same again"
    );
    for id in ids {
        assert_eq!(world.lago_wh(id), 1000);
        assert_eq!(world.session(id).await.billed_wh, 1000);
    }
}

#[tokio::test]
async fn a_stall_past_the_timeout_is_settled_by_sending_again() {
    let world = World::new().await;
    let id = world.charge("TAG", now() - 3 * HOUR, 4321);
    // The client gives up after 2 s; the emulator applies the post after its stall anyway.
    world.lago.handle().stall_next(1, Duration::from_secs(3));
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(world.lago_wh(id), 4321);
    world.run().await;
    assert_eq!(world.lago_wh(id), 4321);
    assert_eq!(world.lago.handle().events().len(), 1);
}

#[tokio::test]
async fn lago_down_leaves_events_pending_and_a_later_run_delivers_them() {
    let world = World::new().await;
    let id = world.charge("TAG", now() - 3 * HOUR, 900);
    world.lago.handle().fail_next(1000);
    let run = world.run().await;
    assert_ne!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(count(&run, "events_created"), 0);
    assert!(run.errors.iter().any(|e| e.contains("next run")), "{run:?}");
    let session = world.session(id).await;
    assert_eq!(session.state, SessionState::Billed, "planned, not parked");
    assert_eq!(session.billed_wh, 0);
    let pending = world.ledger.pending_events(None, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].attempts >= 1);

    world.lago.handle().clear_faults();
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(count(&run, "events_created"), 1);
    assert_eq!(world.lago_wh(id), 900);
}

#[tokio::test]
async fn lagos_rate_limit_is_waited_out_within_the_run() {
    let world = World::new().await;
    let id = world.charge("TAG", now() - 3 * HOUR, 321);
    world.lago.handle().rate_limit_next(1, 1);
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(world.lago_wh(id), 321);
    assert_eq!(world.lago.handle().event_posts(), 2);
}

#[tokio::test]
async fn steve_down_still_sends_what_is_pending() {
    let world = World::new().await;
    let id = world.charge("TAG", now() - 3 * HOUR, 77);
    world.lago.handle().fail_next(1000);
    world.run().await;
    assert_eq!(world.lago_wh(id), 0);
    world.lago.handle().clear_faults();
    world.steve.handle().fail_next(1000);
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Partial, "{run:?}");
    assert!(run.errors.iter().any(|e| e.contains("StEvE")), "{run:?}");
    assert_eq!(run.activity, None, "nothing learned about the chargers");
    assert_eq!(count(&run, "events_created"), 1);
    assert_eq!(world.lago_wh(id), 77);
}

#[tokio::test]
async fn two_jobs_racing_charge_every_session_once() {
    let world = World::new().await;
    let other = world.second_job().await;
    let mut ids = Vec::new();
    for round in 0..4 {
        for i in 0..30 {
            ids.push(world.charge("TAG", now() - 3 * HOUR, 10 * round + i + 1));
        }
        let (a, b) = tokio::join!(world.run(), world.run_job(&other));
        assert_ne!(a.status, FinalStatus::Failed, "{a:?}");
        assert_ne!(b.status, FinalStatus::Failed, "{b:?}");
    }
    world.run().await;
    let events = world.lago.handle().events();
    assert_eq!(events.len(), ids.len(), "one event per session");
    for (n, id) in ids.iter().enumerate() {
        let round = n as i64 / 30;
        let i = n as i64 % 30;
        assert_eq!(world.lago_wh(*id), 10 * round + i + 1, "session {id}");
    }
}

/// Regression guard: with Lago down, a plan of several chunks left the planner waiting on the
/// outbox drain, which had stopped taking its events: the run never ended.
#[tokio::test]
async fn lago_down_under_a_large_plan_ends_the_run_with_every_event_pending() {
    let world = World::with_options(ferry_billing::job::BillingOptions {
        attempts: 1,
        ..Default::default()
    })
    .await;
    for _ in 0..5000 {
        world.charge("TAG", now() - 3 * HOUR, 10);
    }
    world.lago.handle().fail_next(100_000);
    let run = tokio::time::timeout(Duration::from_secs(120), world.run())
        .await
        .expect("the run ends");
    assert_ne!(run.status, FinalStatus::Succeeded);
    assert_eq!(count(&run, "transactions_processed"), 5000, "{run:?}");
    let pending = world.ledger.pending_events(None, 10_000).await.unwrap();
    assert_eq!(pending.len(), 5000);
    world.lago.handle().clear_faults();
    world.run().await;
    assert_eq!(world.lago.handle().events().len(), 5000);
}
