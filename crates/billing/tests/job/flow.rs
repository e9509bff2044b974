//! What a run does with sessions, mappings and subscriptions when nothing fails.

use ferry_billing::job::BillingOptions;
use ferry_store::billing::{ReviewAction, Reviewed, SessionState};
use ferry_worker::cadence::Tier;
use ferry_worker::job::FinalStatus;

use super::support::{DAY, HOUR, World, count, now};

#[tokio::test]
async fn a_finished_session_reaches_lago_once_and_a_second_run_changes_nothing() {
    let world = World::new().await;
    let id = world.charge("TAG", now() - 2 * HOUR, 12_345);
    let first = world.run().await;
    assert_eq!(first.status, FinalStatus::Succeeded, "{first:?}");
    assert_eq!(count(&first, "events_created"), 1);
    assert_eq!(count(&first, "transactions_processed"), 1);
    assert_eq!(world.lago_wh(id), 12_345);
    let events = world.lago.handle().events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].transaction_id, format!("steve-{id}"));
    assert_eq!(events[0].external_subscription_id.as_deref(), Some("sub"));
    assert_eq!(events[0].code, "ev_charging_kwh");
    let session = world.session(id).await;
    assert_eq!(session.state, SessionState::Billed);
    assert_eq!(session.billed_wh, 12_345);
    assert_eq!(Some(events[0].timestamp_ms), session.stopped_at_ms);

    let second = world.run().await;
    assert_eq!(second.status, FinalStatus::Succeeded);
    assert_eq!(count(&second, "events_created"), 0);
    assert_eq!(
        count(&second, "transactions_processed"),
        0,
        "a re-read window counts nothing"
    );
    assert_eq!(world.lago.handle().events().len(), 1);
}

#[tokio::test]
async fn a_session_longer_than_any_window_and_a_zombie_are_billed_when_they_stop() {
    let world = World::new().await;
    world.run().await;
    // Started before the sweep's 30 days and before any window: only the list of active
    // sessions shows them.
    let long = world.start("TAG", now() - 40 * DAY);
    let zombie = world.start("TAG", now() - 9 * DAY);
    let run = world.run().await;
    assert_eq!(run.activity, Some(Tier::Active), "sessions are charging");
    assert_eq!(world.state(long).await, SessionState::Active);
    assert_eq!(world.state(zombie).await, SessionState::Active);

    world.stop(long, now() - HOUR, 1000 + 250_000);
    // Stopped a week after it should have been.
    world.stop(zombie, now() - 2 * DAY, 1000 + 40_000);
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(count(&run, "events_created"), 2);
    assert_eq!(world.lago_wh(long), 250_000);
    assert_eq!(world.lago_wh(zombie), 40_000);
    assert_eq!(world.state(long).await, SessionState::Billed);
}

#[tokio::test]
async fn a_malformed_transaction_is_set_aside_with_a_reason_and_the_run_goes_on() {
    let world = World::new().await;
    let good = world.charge("TAG", now() - 3 * HOUR, 5000);
    let bad = i64::from(world.steve.handle().start_session(
        "CB-2",
        2,
        "TAG",
        now() - 3 * HOUR,
        None,
    ));
    world.stop(bad, now() - 2 * HOUR, 9000);
    let run = world.run().await;
    assert_eq!(run.status, FinalStatus::Succeeded, "{run:?}");
    assert_eq!(world.lago_wh(good), 5000);
    assert_eq!(world.lago_wh(bad), 0);
    let session = world.session(bad).await;
    assert_eq!(session.state, SessionState::NeedsReview);
    assert!(
        session.reason.as_deref().unwrap().contains("startValue"),
        "{session:?}"
    );
}

#[tokio::test]
async fn unmapped_tags_park_until_mapped_and_a_parent_passes_its_mapping_down() {
    let world = World::new().await;
    world.steve.handle().add_tag("CHILD", Some("TAG")).unwrap();
    let child = world.charge("CHILD", now() - 3 * HOUR, 1500);
    let stranger = world.charge("STRANGER", now() - 3 * HOUR, 2500);
    let run = world.run().await;
    assert_eq!(
        world.lago_wh(child),
        1500,
        "billed through its parent's mapping"
    );
    assert_eq!(world.state(stranger).await, SessionState::Parked);
    assert_eq!(count(&run, "sessions_parked"), 1);
    assert!(
        world
            .session(stranger)
            .await
            .reason
            .unwrap()
            .contains("STRANGER")
    );

    let again = world.run().await;
    assert_eq!(
        count(&again, "sessions_parked"),
        0,
        "still parked is not parked again"
    );
    assert_eq!(world.lago_wh(stranger), 0);

    world.customer("other", "sub-other");
    world.map("STRANGER", "other", None).await;
    let run = world.run().await;
    assert_eq!(count(&run, "events_created"), 1);
    assert_eq!(world.lago_wh(stranger), 2500);
    let event = world
        .lago
        .handle()
        .events()
        .into_iter()
        .find(|e| e.transaction_id == format!("steve-{stranger}"))
        .unwrap();
    assert_eq!(event.external_subscription_id.as_deref(), Some("sub-other"));
}

#[tokio::test]
async fn a_customer_without_a_subscription_at_the_stop_parks_until_one_covers_it() {
    let world = World::new().await;
    world.lago.handle().add_customer("late", "late");
    world.map("LATE", "late", None).await;
    let id = world.charge("LATE", now() - 5 * HOUR, 700);
    world.run().await;
    let parked = world.session(id).await;
    assert_eq!(parked.state, SessionState::Parked);
    assert!(parked.reason.unwrap().contains("no active subscription"));
    // A subscription that starts after the stop does not cover it.
    world
        .lago
        .handle()
        .add_subscription("too-late", "late", "ev", now() - HOUR, None)
        .unwrap();
    world.run().await;
    assert_eq!(world.state(id).await, SessionState::Parked);
    world
        .lago
        .handle()
        .add_subscription(
            "covering",
            "late",
            "ev",
            now() - DAY,
            Some(now() - 2 * HOUR),
        )
        .unwrap();
    world.run().await;
    assert_eq!(world.state(id).await, SessionState::Billed);
    assert_eq!(world.lago_wh(id), 700);
    let event = &world.lago.handle().events()[0];
    assert_eq!(event.external_subscription_id.as_deref(), Some("covering"));
}

#[tokio::test]
async fn a_stop_value_revised_after_billing_sends_a_correction_for_the_difference() {
    // Revisions of sessions outside the window are found by the wide sweep; here every run
    // sweeps.
    let world = World::with_options(BillingOptions {
        sweep_every: std::time::Duration::ZERO,
        ..BillingOptions::default()
    })
    .await;
    let id = world.charge("TAG", now() - 90 * 60 * 1000, 10_000);
    world.run().await;
    assert_eq!(world.lago_wh(id), 10_000);
    world
        .steve
        .handle()
        .revise_stop_value(i32::try_from(id).unwrap(), "12000")
        .unwrap();
    let run = world.run().await;
    assert_eq!(count(&run, "corrections"), 1, "{run:?}");
    assert_eq!(count(&run, "events_created"), 1);
    assert_eq!(world.lago_wh(id), 11_000);
    assert_eq!(world.lago.handle().events().len(), 2);
    let again = world.run().await;
    assert_eq!(count(&again, "corrections"), 0);
    assert_eq!(world.lago_wh(id), 11_000);
}

#[tokio::test]
async fn implausible_energy_waits_for_review_and_an_operator_bills_or_ignores_it() {
    let mut options = BillingOptions::default();
    options.rules.max_session_wh = 100_000;
    let world = World::with_options(options).await;
    let negative = world.charge("TAG", now() - 3 * HOUR, -400);
    let huge = world.charge("TAG", now() - 3 * HOUR, 150_000);
    world.run().await;
    assert_eq!(world.state(negative).await, SessionState::NeedsReview);
    assert!(
        world
            .session(huge)
            .await
            .reason
            .unwrap()
            .contains("ceiling")
    );
    assert!(world.lago.handle().events().is_empty());

    let reviewed = world.ledger.review(huge, ReviewAction::Bill).await.unwrap();
    assert!(matches!(reviewed, Reviewed::Done(_)));
    world
        .ledger
        .review(negative, ReviewAction::Ignore)
        .await
        .unwrap();
    let run = world.run().await;
    assert_eq!(count(&run, "events_created"), 1);
    assert_eq!(world.lago_wh(huge), 150_000);
    assert_eq!(world.state(negative).await, SessionState::Ignored);
    assert_eq!(world.lago_wh(negative), 0);
    world.run().await;
    assert_eq!(world.lago.handle().events().len(), 1);
}

#[tokio::test]
async fn deleting_a_tag_in_steve_ignores_its_sessions_that_were_not_billed() {
    let world = World::new().await;
    world.steve.handle().add_tag("GONE", None).unwrap();
    let id = world.start("GONE", now() - HOUR);
    world.run().await;
    assert_eq!(world.state(id).await, SessionState::Active);
    world.steve.handle().delete_tag("GONE").unwrap();
    let run = world.run().await;
    let session = world.session(id).await;
    assert_eq!(session.state, SessionState::Ignored, "{run:?}");
    assert!(session.reason.unwrap().contains("no longer has"));
}

#[tokio::test]
async fn the_tier_follows_the_chargers() {
    let world = World::new().await;
    let old = world.charge("TAG", now() - 30 * DAY, 100);
    let first = world.run().await;
    assert_eq!(
        first.activity,
        Some(Tier::Dormant),
        "only a month-old session"
    );
    assert_eq!(world.lago_wh(old), 100, "the first run reads everything");
    let id = world.start("TAG", now() - HOUR);
    assert_eq!(
        world.run().await.activity,
        Some(Tier::Active),
        "a session charges"
    );
    world.stop(id, now(), 2000);
    assert_eq!(
        world.run().await.activity,
        Some(Tier::Active),
        "a session stopped since the last run"
    );
    assert_eq!(
        world.run().await.activity,
        Some(Tier::Idle),
        "activity within the day"
    );
}

/// Regression guard: after a first run that found StEvE empty, a session recorded late (a
/// start before the window) was left to the daily sweep.
#[tokio::test]
async fn a_session_recorded_late_is_billed_by_the_next_run_even_after_an_empty_start() {
    let world = World::new().await;
    world.run().await;
    let late = world.charge("TAG", now() - 5 * HOUR, 3300);
    let run = world.run().await;
    assert_eq!(count(&run, "events_created"), 1, "{run:?}");
    assert_eq!(world.lago_wh(late), 3300);
    // And once more with ids already known.
    let later = world.charge("TAG", now() - 6 * HOUR, 4400);
    world.run().await;
    assert_eq!(world.lago_wh(later), 4400);
}

#[tokio::test]
async fn billing_since_leaves_earlier_sessions_alone() {
    let world = World::with_options(BillingOptions {
        since_ms: Some(now() - DAY),
        ..BillingOptions::default()
    })
    .await;
    let old = world.charge("TAG", now() - 3 * DAY, 100);
    let new = world.charge("TAG", now() - 3 * HOUR, 200);
    world.run().await;
    // Recorded late, with a start before `since`.
    let late_old = world.charge("TAG", now() - 2 * DAY, 300);
    world.run().await;
    assert_eq!(world.lago_wh(new), 200);
    assert_eq!(world.lago_wh(old), 0);
    assert_eq!(world.lago_wh(late_old), 0);
    assert!(
        world
            .ledger
            .sessions(&[old, late_old])
            .await
            .unwrap()
            .is_empty()
    );
}
