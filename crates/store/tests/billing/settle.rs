//! Settling sends: only pending events change, so each event's Wh is counted once; rejected
//! events send their session to review; unsettled sends count attempts. And the pages of
//! pending events and a run's events.

use ferry_store::billing::{EventOutcome, EventStatus, SessionState, Settled};

use super::support::{Fixture, event, session, transaction_ids};

#[tokio::test]
async fn a_delivered_event_counts_its_wh_once_however_often_it_is_settled() {
    let fixture = Fixture::new().await;
    let mut billed = session(1, "TAG-1", SessionState::Billed);
    billed.planned_wh = 25;
    let (first, correction) = (event(1, 0, 30), event(1, 1, -5));
    fixture
        .insert(&[billed], &[first.clone(), correction.clone()])
        .await;
    let before = fixture.session(1).await;

    let settled = fixture
        .settle(
            5,
            &[
                (&first, EventOutcome::Delivered),
                (&correction, EventOutcome::Delivered),
            ],
        )
        .await;
    assert_eq!(
        settled,
        Settled {
            delivered: 2,
            rejected: 0,
            sessions_changed: Vec::new()
        }
    );
    let after = fixture.session(1).await;
    assert_eq!(after.billed_wh, 25);
    assert_eq!(after.planned_wh, 25);
    // Delivery is not a planner's field: a planner that read the session is not made late.
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.state, SessionState::Billed);
    let stored = fixture.event(&first).await;
    assert_eq!(stored.status, EventStatus::Delivered);
    assert_eq!(stored.settled_run, Some(5));
    assert!(stored.settled_at_ms.is_some());
    assert_eq!(stored.error, None);

    // A second worker (or a resend Lago answered as a duplicate) settles them again.
    let again = fixture
        .settle(
            6,
            &[
                (&first, EventOutcome::Delivered),
                (&correction, EventOutcome::Rejected("too late".into())),
            ],
        )
        .await;
    assert_eq!(again, Settled::default());
    assert_eq!(fixture.session(1).await, after);
    assert_eq!(fixture.event(&first).await, stored);
    assert_eq!(
        fixture.event(&correction).await.status,
        EventStatus::Delivered
    );

    // An unknown transaction id changes nothing either.
    let mut unknown = event(1, 9, 1);
    unknown.transaction_id = "ferry-unknown".into();
    assert_eq!(
        fixture
            .settle(6, &[(&unknown, EventOutcome::Delivered)])
            .await,
        Settled::default()
    );
}

#[tokio::test]
async fn a_rejected_event_sends_its_session_to_review_with_lagos_error() {
    let fixture = Fixture::new().await;
    let mut billed = session(1, "TAG-1", SessionState::Billed);
    billed.planned_wh = 42;
    billed.approved = true;
    let (delivered, refused) = (event(1, 0, 30), event(1, 1, 12));
    fixture
        .insert(
            &[billed, session(2, "TAG-2", SessionState::Billed)],
            &[delivered.clone(), refused.clone()],
        )
        .await;
    fixture
        .settle(3, &[(&delivered, EventOutcome::Delivered)])
        .await;
    let before = fixture.session(1).await;

    let error = "422 value_is_invalid: external_subscription_id";
    let settled = fixture
        .settle(4, &[(&refused, EventOutcome::Rejected(error.into()))])
        .await;
    assert_eq!(
        settled,
        Settled {
            delivered: 0,
            rejected: 1,
            sessions_changed: vec![1]
        }
    );
    let reviewed = fixture.session(1).await;
    assert_eq!(reviewed.state, SessionState::NeedsReview);
    assert_eq!(reviewed.planned_wh, 30);
    assert_eq!(reviewed.billed_wh, 30);
    assert!(!reviewed.approved);
    assert_eq!(reviewed.revision, before.revision + 1);
    let reason = reviewed.reason.clone().unwrap();
    assert!(reason.contains(error), "{reason}");
    assert!(reason.contains("Lago"), "{reason}");
    let stored = fixture.event(&refused).await;
    assert_eq!(stored.status, EventStatus::Rejected);
    assert_eq!(stored.error.as_deref(), Some(error));
    assert_eq!(stored.settled_run, Some(4));
    assert!(stored.settled_at_ms.is_some());
    // The other session is untouched.
    assert_eq!(fixture.session(2).await.state, SessionState::Billed);

    // Rejected twice: nothing changes the second time.
    let again = fixture
        .settle(5, &[(&refused, EventOutcome::Rejected("other".into()))])
        .await;
    assert_eq!(again, Settled::default());
    assert_eq!(fixture.session(1).await, reviewed);
    assert_eq!(fixture.event(&refused).await, stored);
}

#[tokio::test]
async fn an_unsettled_send_counts_an_attempt_and_stays_pending() {
    let fixture = Fixture::new().await;
    let pending = event(1, 0, 10);
    fixture
        .insert(
            &[session(1, "TAG-1", SessionState::Billed)],
            std::slice::from_ref(&pending),
        )
        .await;
    let before = fixture.session(1).await;

    let timed_out = EventOutcome::Unsettled("timed out after 10 s".into());
    assert_eq!(
        fixture.settle(1, &[(&pending, timed_out)]).await,
        Settled::default()
    );
    fixture
        .settle(
            2,
            &[(&pending, EventOutcome::Unsettled("502 Bad Gateway".into()))],
        )
        .await;
    let stored = fixture.event(&pending).await;
    assert_eq!(stored.status, EventStatus::Pending);
    assert_eq!(stored.attempts, 2);
    assert_eq!(stored.error.as_deref(), Some("502 Bad Gateway"));
    assert_eq!((stored.settled_run, stored.settled_at_ms), (None, None));
    assert_eq!(fixture.session(1).await, before);
    assert_eq!(
        transaction_ids(&fixture.store.pending_events(None, 10).await.unwrap()),
        std::slice::from_ref(&pending.transaction_id)
    );

    // Retried within one run and delivered: the attempt before counts, the error goes.
    let settled = fixture
        .settle(
            3,
            &[
                (&pending, EventOutcome::Unsettled("reset".into())),
                (&pending, EventOutcome::Delivered),
                (&pending, EventOutcome::Unsettled("after".into())),
            ],
        )
        .await;
    assert_eq!(settled.delivered, 1);
    let stored = fixture.event(&pending).await;
    assert_eq!(stored.status, EventStatus::Delivered);
    assert_eq!(stored.attempts, 3);
    assert_eq!(stored.error, None);
    assert_eq!(fixture.session(1).await.billed_wh, 10);
}

#[tokio::test]
async fn pending_events_come_in_pages_by_transaction_id_in_byte_order() {
    let fixture = Fixture::new().await;
    let names = [
        "ferry-b", "ferry-A", "ferry-a", "ferry-_", "ferry-B", "ferry-0",
    ];
    let mut events = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let mut e = event(1, n as i64, 1);
        e.transaction_id = (*name).into();
        events.push(e);
    }
    fixture
        .insert(&[session(1, "TAG-1", SessionState::Billed)], &events)
        .await;
    // One of them is no longer pending.
    fixture
        .settle(1, &[(&events[0], EventOutcome::Delivered)])
        .await;
    let mut expected: Vec<String> = names[1..].iter().map(|n| (*n).to_owned()).collect();
    expected.sort_unstable();

    let store = &*fixture.store;
    let first = transaction_ids(&store.pending_events(None, 3).await.unwrap());
    assert_eq!(first, expected[..3]);
    let second = transaction_ids(&store.pending_events(Some(&first[2]), 3).await.unwrap());
    assert_eq!(second, expected[3..]);
    let last = transaction_ids(&store.pending_events(Some(&second[1]), 3).await.unwrap());
    assert_eq!(last, Vec::<String>::new());
}

#[tokio::test]
async fn a_runs_events_are_the_ones_it_delivered_or_rejected() {
    let fixture = Fixture::new().await;
    let events: Vec<_> = (1..=4).map(|id| event(id, 0, id * 10)).collect();
    let sessions: Vec<_> = (1..=4)
        .map(|id| session(id, "TAG-1", SessionState::Billed))
        .collect();
    fixture.insert(&sessions, &events).await;

    fixture
        .settle(
            7,
            &[
                (&events[1], EventOutcome::Rejected("bad".into())),
                (&events[0], EventOutcome::Delivered),
                (&events[3], EventOutcome::Unsettled("timeout".into())),
            ],
        )
        .await;
    fixture
        .settle(8, &[(&events[2], EventOutcome::Delivered)])
        .await;

    let of_7 = fixture.store.run_events(7).await.unwrap();
    assert_eq!(transaction_ids(&of_7), ["ferry-1-0", "ferry-2-0"]);
    assert_eq!(of_7[0].status, EventStatus::Delivered);
    assert_eq!(of_7[1].status, EventStatus::Rejected);
    assert_eq!(
        transaction_ids(&fixture.store.run_events(8).await.unwrap()),
        ["ferry-3-0"]
    );
    assert_eq!(fixture.store.run_events(9).await.unwrap(), []);
}

#[tokio::test]
async fn two_rejections_of_one_session_in_one_call_review_it_once() {
    let fixture = Fixture::new().await;
    let mut billed = session(1, "TAG-1", SessionState::Billed);
    billed.planned_wh = 15;
    let (a, b) = (event(1, 0, 10), event(1, 1, 5));
    fixture.insert(&[billed], &[a.clone(), b.clone()]).await;
    let settled = fixture
        .settle(
            2,
            &[
                (&a, EventOutcome::Rejected("first".into())),
                (&b, EventOutcome::Rejected("second".into())),
            ],
        )
        .await;
    assert_eq!(settled.rejected, 2);
    assert_eq!(settled.sessions_changed, [1]);
    let reviewed = fixture.session(1).await;
    assert_eq!(reviewed.planned_wh, 0);
    assert_eq!(reviewed.revision, 2);
    assert!(reviewed.reason.unwrap().contains("first"));
}
