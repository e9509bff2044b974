//! Trigger listeners: woken by triggers stored after they opened.

use super::support::{Fixture, within};

#[tokio::test]
async fn a_listener_opened_before_a_trigger_is_woken_with_that_trigger() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let mut listener = store.listen().await.unwrap();
    listener.ping().await.unwrap();

    let trigger = store.create_trigger("billing", "api").await.unwrap();
    let wakeup = within(listener.next()).await.unwrap();
    assert_eq!(wakeup.trigger_id, trigger.id);
    assert_eq!(wakeup.job, "billing");
    assert_eq!(wakeup.source, "api");
}

#[tokio::test]
async fn every_listener_is_woken_in_trigger_order() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let mut one = store.listen().await.unwrap();
    let mut two = store.listen().await.unwrap();

    let first = store.create_trigger("billing", "api").await.unwrap();
    let second = store.create_trigger("reports", "cli").await.unwrap();
    for listener in [&mut one, &mut two] {
        assert_eq!(within(listener.next()).await.unwrap().trigger_id, first.id);
        let wakeup = within(listener.next()).await.unwrap();
        assert_eq!(
            (wakeup.trigger_id, wakeup.job.as_str()),
            (second.id, "reports")
        );
    }
}

#[tokio::test]
async fn a_listener_that_fell_far_behind_is_still_woken() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    let mut listener = store.listen().await.unwrap();
    for _ in 0..1500 {
        store.create_trigger("billing", "api").await.unwrap();
    }
    let wakeup = within(listener.next()).await.unwrap();
    assert_eq!(wakeup.job, "billing");
    assert_eq!(store.pending_triggers("billing").await.unwrap().len(), 1500);
}
