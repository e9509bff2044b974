//! A job's cadence and the workers' listener reports: stored, read back, replaced.

use ferry_proto::worker::ListenerState;
use ferry_store::jobs::CadenceRecord;

use super::support::{Fixture, active_cadence};

#[tokio::test]
async fn a_cadence_round_trips_and_is_replaced() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    assert_eq!(store.cadence("billing").await.unwrap(), None);

    let clock = store.clock_ms().await.unwrap();
    let pinned = CadenceRecord {
        tier: "idle".into(),
        demotion_toward: Some("dormant".into()),
        demotion_streak: 1,
        pinned_tier: Some("active".into()),
        pinned_until_ms: Some(clock + 7_200_123),
        next_run_at_ms: Some(clock + 900_456),
    };
    store.save_cadence("billing", &pinned).await.unwrap();
    assert_eq!(store.cadence("billing").await.unwrap(), Some(pinned));

    store
        .save_cadence("billing", &active_cadence())
        .await
        .unwrap();
    assert_eq!(
        store.cadence("billing").await.unwrap(),
        Some(active_cadence())
    );
    assert_eq!(store.cadence("reports").await.unwrap(), None);
}

#[tokio::test]
async fn the_most_recent_listener_report_of_any_worker_is_the_listener_state() {
    let fixture = Fixture::new().await;
    let store = &*fixture.store;
    assert_eq!(store.listener().await.unwrap(), None);

    let connected = ListenerState {
        connected: true,
        last_ping_at: Some("2026-11-21T12:00:00.123Z".into()),
    };
    store.report_listener("w1", &connected).await.unwrap();
    assert_eq!(store.listener().await.unwrap(), Some(connected.clone()));

    let broken = ListenerState {
        connected: false,
        last_ping_at: None,
    };
    store.report_listener("w2", &broken).await.unwrap();
    assert_eq!(store.listener().await.unwrap(), Some(broken));
    store.report_listener("w1", &connected).await.unwrap();
    assert_eq!(store.listener().await.unwrap(), Some(connected));

    let nonsense = ListenerState {
        connected: true,
        last_ping_at: Some("yesterday".into()),
    };
    assert!(store.report_listener("w1", &nonsense).await.is_err());
}

#[tokio::test]
async fn the_store_clock_reads_milliseconds_near_the_system_clock() {
    let fixture = Fixture::new().await;
    let clock = fixture.store.clock_ms().await.unwrap();
    let system = ferry_core::time::now_ms();
    assert!((clock - system).abs() < 60_000, "{clock} vs {system}");
}
