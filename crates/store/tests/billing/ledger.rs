//! Ledger writes: sessions only at the revision the planner read, events once, resends, the
//! cursor, and all of it in one transaction.

use std::slice;
use std::sync::Arc;

use ferry_store::billing::{
    BillingCursor, EventOutcome, EventStatus, LedgerWrite, SessionRecord, SessionState,
};
use tokio::task::JoinSet;

use super::support::{Fixture, T0, event, new, session, update};

#[tokio::test]
async fn a_new_session_is_inserted_at_revision_one_and_reads_back_as_written() {
    let fixture = Fixture::new().await;
    let mut given = session(41, "TAG-1", SessionState::Billed);
    given.planned_wh = 12_345;
    given.reason = Some("Billed in run 3.".into());
    given.approved = true;
    // Ignored by the store: only settling events changes what Lago has.
    given.billed_wh = 999;
    given.revision = 17;
    let written = fixture.write(Some(3), vec![new(given.clone())], &[]).await;
    assert_eq!(written.stale, Vec::<i64>::new());
    assert_eq!(written.events_inserted, 0);

    let stored = fixture.session(41).await;
    assert!(stored.updated_at_ms > 0);
    let expected = SessionRecord {
        billed_wh: 0,
        revision: 1,
        updated_at_ms: stored.updated_at_ms,
        ..given
    };
    assert_eq!(stored, expected);

    // A session without times or meter values (StEvE may have none) reads back as such.
    let mut bare = session(42, "TAG-1", SessionState::Active);
    (bare.stopped_at_ms, bare.start_mwh, bare.stop_mwh) = (None, None, None);
    fixture.insert(&[bare.clone()], &[]).await;
    let stored = fixture.session(42).await;
    assert_eq!(
        (stored.stopped_at_ms, stored.start_mwh, stored.stop_mwh),
        (None, None, None)
    );
    assert_eq!(stored.started_at_ms, bare.started_at_ms);
}

#[tokio::test]
async fn a_session_is_written_only_at_the_revision_the_planner_read() {
    let fixture = Fixture::new().await;
    let original = session(1, "TAG-1", SessionState::Active);
    fixture.insert(slice::from_ref(&original), &[]).await;

    // Inserting it again: it exists, so the write is stale and changes nothing.
    let mut other = original.clone();
    other.charge_box_id = "CB-OTHER".into();
    let written = fixture.write(None, vec![new(other)], &[]).await;
    assert_eq!(written.stale, [1]);
    assert_eq!(fixture.session(1).await.charge_box_id, "CB-7");
    assert_eq!(fixture.session(1).await.revision, 1);

    // At the revision read: written, revision bumped.
    let mut parked = original.clone();
    parked.state = SessionState::Parked;
    parked.reason = Some("No mapping for tag TAG-1.".into());
    parked.planned_wh = 5;
    let written = fixture
        .write(None, vec![update(parked.clone(), 1)], &[])
        .await;
    assert_eq!(written.stale, Vec::<i64>::new());
    let stored = fixture.session(1).await;
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.state, SessionState::Parked);
    assert_eq!(stored.reason, parked.reason);
    assert_eq!(stored.planned_wh, 5);

    // Another planner that read revision 1 too is late.
    let mut late = original.clone();
    late.state = SessionState::Ignored;
    let written = fixture.write(None, vec![update(late, 1)], &[]).await;
    assert_eq!(written.stale, [1]);
    let unchanged = fixture.session(1).await;
    assert_eq!(unchanged, stored);

    // An update of a session the store does not have creates nothing.
    let written = fixture
        .write(
            None,
            vec![update(session(9, "TAG-1", SessionState::Active), 1)],
            &[],
        )
        .await;
    assert_eq!(written.stale, [9]);
    assert_eq!(fixture.store.sessions(&[9]).await.unwrap(), []);
}

#[tokio::test]
async fn an_update_keeps_what_settling_delivered() {
    let fixture = Fixture::new().await;
    let mut billed = session(1, "TAG-1", SessionState::Billed);
    billed.planned_wh = 40;
    let first = event(1, 0, 40);
    fixture
        .insert(slice::from_ref(&billed), slice::from_ref(&first))
        .await;
    fixture
        .settle(1, &[(&first, EventOutcome::Delivered)])
        .await;
    assert_eq!(fixture.session(1).await.billed_wh, 40);

    billed.billed_wh = 0;
    billed.planned_wh = 55;
    let written = fixture
        .write(None, vec![update(billed, 1)], &[event(1, 1, 15)])
        .await;
    assert_eq!(written.stale, Vec::<i64>::new());
    let stored = fixture.session(1).await;
    assert_eq!((stored.billed_wh, stored.planned_wh), (40, 55));
}

#[tokio::test]
async fn a_stale_sessions_events_and_resends_are_not_written_and_the_rest_is() {
    let fixture = Fixture::new().await;
    // Session 3 has an event Lago rejected.
    let rejected = event(3, 0, 30);
    fixture
        .insert(
            &[session(3, "TAG-3", SessionState::Billed)],
            slice::from_ref(&rejected),
        )
        .await;
    fixture
        .settle(
            1,
            &[(&rejected, EventOutcome::Rejected("no such customer".into()))],
        )
        .await;
    fixture
        .insert(&[session(2, "TAG-2", SessionState::Active)], &[])
        .await;
    let revision_of_3 = fixture.session(3).await.revision;

    let cursor = BillingCursor {
        window_end_ms: Some(T0 + 3_600_000),
        last_sweep_ms: Some(T0),
        last_activity_ms: Some(T0 + 180_000),
        max_id: Some(3),
    };
    let write = LedgerWrite {
        sessions: vec![
            new(session(1, "TAG-1", SessionState::Billed)),
            // Another writer inserted it meanwhile.
            new(session(2, "TAG-2", SessionState::Billed)),
            // Another writer moved it on meanwhile.
            update(session(3, "TAG-3", SessionState::Billed), revision_of_3 - 1),
        ],
        events: vec![event(1, 0, 10), event(2, 0, 20), event(3, 1, 30)],
        resend: vec![rejected.transaction_id.clone()],
        cursor: Some(cursor),
    };
    let written = fixture.store.write_ledger(Some(4), &write).await.unwrap();
    assert_eq!(written.stale, [2, 3]);
    assert_eq!(written.events_inserted, 1);

    let events = fixture.store.session_events(&[1, 2, 3]).await.unwrap();
    let summary: Vec<(&str, EventStatus)> = events
        .iter()
        .map(|e| (e.event.transaction_id.as_str(), e.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("ferry-1-0", EventStatus::Pending),
            ("ferry-3-0", EventStatus::Rejected)
        ]
    );
    assert_eq!(events[0].event, event(1, 0, 10));
    assert_eq!(events[0].created_run, Some(4));
    assert_eq!(fixture.session(2).await.state, SessionState::Active);
    // The cursor covers what was read, stale sessions included: they are someone else's.
    assert_eq!(fixture.store.cursor().await.unwrap(), cursor);
}

#[tokio::test]
async fn an_event_is_inserted_once_and_keeps_its_first_version() {
    let fixture = Fixture::new().await;
    let mut first = event(1, 0, 10);
    let mut twin = first.clone();
    twin.wh = 11;
    let written = fixture
        .write(
            Some(1),
            vec![new(session(1, "TAG-1", SessionState::Billed))],
            &[first.clone(), twin],
        )
        .await;
    assert_eq!(written.events_inserted, 1);

    // Planned again by a later run (say after a crash before the first run finished).
    let mut again = first.clone();
    again.wh = 20;
    again.properties = r#"{"wh":20}"#.into();
    let written = fixture
        .write(
            Some(2),
            vec![update(session(1, "TAG-1", SessionState::Billed), 1)],
            &[again, event(1, 1, 5)],
        )
        .await;
    assert_eq!(written.events_inserted, 1);
    let stored = fixture.event(&first).await;
    first.wh = 10;
    assert_eq!(stored.event, first);
    assert_eq!(stored.created_run, Some(1));
    assert_eq!(stored.status, EventStatus::Pending);
    assert_eq!(stored.attempts, 0);
    assert_eq!(
        fixture.store.session_events(&[1]).await.unwrap().len(),
        2,
        "the correction was inserted"
    );
}

#[tokio::test]
async fn a_resend_puts_a_rejected_event_back_to_pending_and_leaves_others_alone() {
    let fixture = Fixture::new().await;
    let (rejected, delivered) = (event(1, 0, 10), event(2, 0, 20));
    fixture
        .insert(
            &[
                session(1, "TAG-1", SessionState::Billed),
                session(2, "TAG-2", SessionState::Billed),
            ],
            &[rejected.clone(), delivered.clone()],
        )
        .await;
    fixture
        .settle(
            7,
            &[
                (&rejected, EventOutcome::Rejected("bad code".into())),
                (&delivered, EventOutcome::Delivered),
            ],
        )
        .await;

    let write = LedgerWrite {
        resend: vec![
            rejected.transaction_id.clone(),
            delivered.transaction_id.clone(),
            "ferry-unknown".into(),
        ],
        ..LedgerWrite::default()
    };
    let written = fixture.store.write_ledger(Some(8), &write).await.unwrap();
    assert_eq!(written.events_inserted, 0);

    let resent = fixture.event(&rejected).await;
    assert_eq!(resent.status, EventStatus::Pending);
    assert_eq!(
        (resent.error, resent.settled_run, resent.settled_at_ms),
        (None, None, None)
    );
    let pending = fixture.store.pending_events(None, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event, rejected);

    let kept = fixture.event(&delivered).await;
    assert_eq!(kept.status, EventStatus::Delivered);
    assert_eq!(kept.settled_run, Some(7));
}

#[tokio::test]
async fn a_ledger_write_is_one_transaction() {
    let fixture = Fixture::new().await;
    let mut broken = event(2, 0, 5);
    broken.properties = "{not json".into();
    let write = LedgerWrite {
        sessions: vec![
            new(session(1, "TAG-1", SessionState::Billed)),
            new(session(2, "TAG-2", SessionState::Billed)),
        ],
        events: vec![event(1, 0, 10), broken],
        resend: Vec::new(),
        cursor: Some(BillingCursor {
            window_end_ms: Some(T0),
            ..BillingCursor::default()
        }),
    };
    assert!(fixture.store.write_ledger(None, &write).await.is_err());
    assert_eq!(fixture.store.sessions(&[1, 2]).await.unwrap(), []);
    assert_eq!(fixture.store.pending_events(None, 10).await.unwrap(), []);
    assert_eq!(
        fixture.store.cursor().await.unwrap(),
        BillingCursor::default()
    );

    // A write naming one session twice is a planner's bug, refused whole.
    let twice = LedgerWrite {
        sessions: vec![
            new(session(1, "TAG-1", SessionState::Active)),
            new(session(1, "TAG-1", SessionState::Billed)),
        ],
        ..LedgerWrite::default()
    };
    assert!(fixture.store.write_ledger(None, &twice).await.is_err());
    assert_eq!(fixture.store.sessions(&[1]).await.unwrap(), []);
}

#[tokio::test]
async fn the_cursor_reads_back_as_saved_and_stays_when_a_write_has_none() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    assert_eq!(store.cursor().await.unwrap(), BillingCursor::default());

    let cursor = BillingCursor {
        window_end_ms: Some(T0 + 1),
        last_sweep_ms: Some(T0 - 86_400_000),
        last_activity_ms: Some(T0 + 999),
        max_id: Some(1_234_567_890_123),
    };
    let with_cursor = LedgerWrite {
        cursor: Some(cursor),
        ..LedgerWrite::default()
    };
    store.write_ledger(None, &with_cursor).await.unwrap();
    assert_eq!(store.cursor().await.unwrap(), cursor);

    fixture
        .write(
            None,
            vec![new(session(1, "TAG-1", SessionState::Active))],
            &[],
        )
        .await;
    assert_eq!(store.cursor().await.unwrap(), cursor);

    let cleared = BillingCursor {
        window_end_ms: Some(T0 + 2),
        ..BillingCursor::default()
    };
    let with_cleared = LedgerWrite {
        cursor: Some(cleared),
        ..LedgerWrite::default()
    };
    store.write_ledger(None, &with_cleared).await.unwrap();
    assert_eq!(store.cursor().await.unwrap(), cleared);
}

/// Regression guard: a run found dead that was only slow must not plan the same change as
/// the run that replaced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planners_racing_on_one_session_write_it_exactly_once_per_revision() {
    const ROUNDS: i64 = 10;
    const PLANNERS: usize = 4;
    let fixture = Fixture::new().await;
    let instances = [Arc::clone(&fixture.store), fixture.another_instance().await];
    for round in 0..ROUNDS {
        // Even rounds race to insert a new session, odd ones to update it.
        let id = 100 + round / 2;
        let expected = (round % 2 == 1).then_some(1);
        let mut planners = JoinSet::new();
        for n in 0..PLANNERS {
            let store = Arc::clone(&instances[n % instances.len()]);
            planners.spawn(async move {
                let mut planned = session(id, "TAG-1", SessionState::Billed);
                planned.charge_box_id = format!("planner-{n}");
                let write = LedgerWrite {
                    sessions: vec![ferry_store::billing::SessionWrite {
                        session: planned,
                        expected_revision: expected,
                    }],
                    events: vec![event(id, round % 2, 10)],
                    ..LedgerWrite::default()
                };
                (n, store.write_ledger(Some(round), &write).await.unwrap())
            });
        }
        let mut winners = Vec::new();
        while let Some(answer) = planners.join_next().await {
            let (n, written) = answer.unwrap();
            if written.stale.is_empty() {
                assert_eq!(written.events_inserted, 1, "round {round}");
                winners.push(n);
            } else {
                assert_eq!(written.stale, [id], "round {round}");
                assert_eq!(written.events_inserted, 0, "round {round}");
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let stored = fixture.session(id).await;
        assert_eq!(stored.charge_box_id, format!("planner-{}", winners[0]));
        assert_eq!(stored.revision, 1 + round % 2);
    }
}
