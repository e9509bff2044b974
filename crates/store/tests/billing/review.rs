//! An operator's answer to a session in review.

use ferry_store::billing::{ReviewAction, Reviewed, SessionRecord, SessionState};

use super::support::{Fixture, ids, session};

/// A session in review, as a rejected event or an implausible reading leaves it.
fn in_review(id: i64) -> SessionRecord {
    let mut s = session(id, "TAG-1", SessionState::NeedsReview);
    s.reason = Some("The meter went backwards.".into());
    s
}

fn done(reviewed: Reviewed) -> SessionRecord {
    match reviewed {
        Reviewed::Done(session) => session,
        other => panic!("the review was not done: {other:?}"),
    }
}

#[tokio::test]
async fn bill_approves_a_session_in_review_and_keeps_it_there_for_the_next_run() {
    let fixture = Fixture::new().await;
    fixture.insert(&[in_review(1)], &[]).await;
    assert_eq!(fixture.store.open_sessions().await.unwrap(), []);

    let approved = done(fixture.store.review(1, ReviewAction::Bill).await.unwrap());
    assert_eq!(approved.state, SessionState::NeedsReview);
    assert!(approved.approved);
    assert_eq!(approved.revision, 2);
    assert_eq!(
        approved.reason.as_deref(),
        Some("The meter went backwards.")
    );
    assert_eq!(fixture.session(1).await, approved);
    assert_eq!(ids(&fixture.store.open_sessions().await.unwrap()), [1]);
}

#[tokio::test]
async fn ignore_moves_a_session_in_review_to_ignored_for_good() {
    let fixture = Fixture::new().await;
    fixture.insert(&[in_review(1)], &[]).await;
    let ignored = done(fixture.store.review(1, ReviewAction::Ignore).await.unwrap());
    assert_eq!(ignored.state, SessionState::Ignored);
    assert!(!ignored.approved);
    assert_eq!(ignored.revision, 2);
    let reason = ignored.reason.clone().unwrap();
    assert!(reason.contains("operator"), "{reason}");
    assert_eq!(fixture.session(1).await, ignored);
    assert_eq!(fixture.store.open_sessions().await.unwrap(), []);

    // It left review: a second answer changes nothing.
    let again = fixture.store.review(1, ReviewAction::Bill).await.unwrap();
    assert_eq!(again, Reviewed::NotInReview(ignored.clone()));
    assert_eq!(fixture.session(1).await, ignored);
}

#[tokio::test]
async fn a_review_of_a_missing_session_or_one_not_in_review_changes_nothing() {
    let fixture = Fixture::new().await;
    fixture
        .insert(&[session(1, "TAG-1", SessionState::Billed)], &[])
        .await;
    let billed = fixture.session(1).await;
    for action in [ReviewAction::Bill, ReviewAction::Ignore] {
        assert_eq!(
            fixture.store.review(1, action).await.unwrap(),
            Reviewed::NotInReview(billed.clone())
        );
        assert_eq!(
            fixture.store.review(2, action).await.unwrap(),
            Reviewed::NotFound
        );
    }
    assert_eq!(fixture.session(1).await, billed);
}
