//! Reading the ledger: the sessions a run follows, pages of sessions with filters, and
//! sessions and events by id.

use ferry_store::billing::{SessionQuery, SessionRecord, SessionState};

use super::support::{Fixture, event, ids, session, transaction_ids};

#[tokio::test]
async fn open_sessions_are_active_and_parked_ones_and_approved_reviews() {
    let fixture = Fixture::new().await;
    let mut approved = session(6, "TAG-1", SessionState::NeedsReview);
    approved.approved = true;
    // An approval means nothing outside review.
    let mut approved_billed = session(7, "TAG-1", SessionState::Billed);
    approved_billed.approved = true;
    let mut sessions: Vec<SessionRecord> = SessionState::ALL
        .into_iter()
        .zip(1..)
        .map(|(state, id)| session(id, "TAG-1", state))
        .collect();
    sessions.extend([approved, approved_billed]);
    fixture.insert(&sessions, &[]).await;

    // 1 active, 2 billed, 3 parked, 4 needs_review, 5 ignored.
    let open = fixture.store.open_sessions().await.unwrap();
    assert_eq!(ids(&open), [1, 3, 6]);
    assert_eq!(open[0], fixture.session(1).await);
}

#[tokio::test]
async fn sessions_are_listed_newest_first_with_filters_and_in_pages() {
    let fixture = Fixture::new().await;
    let states = [SessionState::Billed, SessionState::Parked];
    let sessions: Vec<SessionRecord> = (1..=12)
        .map(|id| {
            let tag = if id % 3 == 0 { "TAG-X" } else { "TAG-Y" };
            session(id, tag, states[id as usize % 2])
        })
        .collect();
    fixture.insert(&sessions, &[]).await;
    let list = async |state: Option<SessionState>, id_tag: Option<&str>, before, limit| {
        let query = SessionQuery {
            state,
            id_tag: id_tag.map(str::to_owned),
            before,
            limit,
        };
        ids(&fixture.store.list_sessions(&query).await.unwrap())
    };

    assert_eq!(
        list(None, None, None, 100).await,
        (1..=12).rev().collect::<Vec<_>>()
    );
    let first = list(None, None, None, 5).await;
    assert_eq!(first, [12, 11, 10, 9, 8]);
    assert_eq!(list(None, None, Some(8), 5).await, [7, 6, 5, 4, 3]);
    assert_eq!(list(None, None, Some(3), 5).await, [2, 1]);
    assert_eq!(list(None, None, Some(1), 5).await, Vec::<i64>::new());

    assert_eq!(
        list(Some(SessionState::Billed), None, None, 100).await,
        [12, 10, 8, 6, 4, 2]
    );
    assert_eq!(
        list(Some(SessionState::Parked), None, Some(7), 2).await,
        [5, 3]
    );
    assert_eq!(list(None, Some("TAG-X"), None, 100).await, [12, 9, 6, 3]);
    assert_eq!(
        list(Some(SessionState::Parked), Some("TAG-X"), None, 100).await,
        [9, 3]
    );
    assert_eq!(
        list(Some(SessionState::Billed), Some("TAG-X"), Some(12), 1).await,
        [6]
    );
    assert_eq!(
        list(Some(SessionState::Ignored), None, None, 100).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        list(None, Some("TAG-NONE"), None, 100).await,
        Vec::<i64>::new()
    );

    // The listed records are the stored ones.
    let listed = fixture
        .store
        .list_sessions(&SessionQuery {
            limit: 1,
            ..SessionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed, [fixture.session(12).await]);
}

#[tokio::test]
async fn sessions_and_their_events_are_read_by_id() {
    let fixture = Fixture::new().await;
    fixture
        .insert(
            &[
                session(1, "TAG-1", SessionState::Billed),
                session(2, "TAG-1", SessionState::Billed),
                session(3, "TAG-1", SessionState::Active),
            ],
            &[
                event(2, 1, -3),
                event(1, 0, 10),
                event(2, 0, 20),
                event(2, 2, 4),
            ],
        )
        .await;

    let mut found = ids(&fixture.store.sessions(&[3, 99, 1, 3]).await.unwrap());
    found.sort_unstable();
    assert_eq!(found, [1, 3]);
    assert_eq!(fixture.store.sessions(&[]).await.unwrap(), []);

    let events = fixture.store.session_events(&[2, 1, 3]).await.unwrap();
    assert_eq!(
        transaction_ids(&events),
        ["ferry-1-0", "ferry-2-0", "ferry-2-1", "ferry-2-2"]
    );
    assert_eq!(events[2].event, event(2, 1, -3));
    assert_eq!(fixture.store.session_events(&[3]).await.unwrap(), []);
    assert_eq!(fixture.store.session_events(&[]).await.unwrap(), []);
}
