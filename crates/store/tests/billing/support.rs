//! Stores opened the way the server opens them, and sessions and events to write.

use std::sync::Arc;

use ferry_server::init::{StoreLocation, open_billing};
use ferry_store::BillingStore;
use ferry_store::billing::{
    EventOutcome, EventRecord, LedgerWrite, LedgerWritten, NewEvent, SessionRecord, SessionState,
    SessionWrite, Settled, Settlement,
};
use ferry_testkit::{Backend, TestStore};

/// 2026-01-01T00:00:00Z: sessions in tests start around here.
pub(crate) const T0: i64 = 1_767_225_600_000;

/// The store this test binary runs on.
pub(crate) fn backend() -> Backend {
    Backend::of_binary(env!("CARGO_CRATE_NAME"))
}

/// A new, empty store of this binary's backend.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn BillingStore>,
    pub(crate) storage: TestStore,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let storage = TestStore::new(backend()).await;
        let store = open(&storage.location).await;
        Fixture { store, storage }
    }

    /// A second store on the same database, as another worker process would open it.
    pub(crate) async fn another_instance(&self) -> Arc<dyn BillingStore> {
        open(&self.storage.location).await
    }

    /// Writes sessions the store does not have yet, with their events; none may be stale.
    pub(crate) async fn insert(&self, sessions: &[SessionRecord], events: &[NewEvent]) {
        let written = self
            .write(None, sessions.iter().cloned().map(new).collect(), events)
            .await;
        assert_eq!(written.stale, Vec::<i64>::new());
    }

    /// One ledger write without resends or cursor.
    pub(crate) async fn write(
        &self,
        run_id: Option<i64>,
        sessions: Vec<SessionWrite>,
        events: &[NewEvent],
    ) -> LedgerWritten {
        let write = LedgerWrite {
            sessions,
            events: events.to_vec(),
            ..LedgerWrite::default()
        };
        self.store.write_ledger(run_id, &write).await.unwrap()
    }

    /// The stored session `id`, which must exist.
    pub(crate) async fn session(&self, id: i64) -> SessionRecord {
        let mut found = self.store.sessions(&[id]).await.unwrap();
        assert_eq!(found.len(), 1, "session {id} is stored once");
        found.pop().unwrap()
    }

    /// The stored event, which must exist.
    pub(crate) async fn event(&self, event: &NewEvent) -> EventRecord {
        self.store
            .session_events(&[event.session_id])
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.event.transaction_id == event.transaction_id)
            .unwrap_or_else(|| panic!("event {} is stored", event.transaction_id))
    }

    /// Settles events by a run.
    pub(crate) async fn settle(
        &self,
        run_id: i64,
        settled: &[(&NewEvent, EventOutcome)],
    ) -> Settled {
        let settled: Vec<Settlement> = settled
            .iter()
            .map(|(event, outcome)| Settlement {
                transaction_id: event.transaction_id.clone(),
                outcome: outcome.clone(),
            })
            .collect();
        self.store.settle_events(run_id, &settled).await.unwrap()
    }
}

/// Opens the store at `location` (migrated) as the server does.
pub(crate) async fn open(location: &StoreLocation) -> Arc<dyn BillingStore> {
    open_billing(location).await.unwrap()
}

/// A stopped session of `id_tag` in `state`, with everything the ledger keeps filled in.
pub(crate) fn session(id: i64, id_tag: &str, state: SessionState) -> SessionRecord {
    let started = T0 + id * 60_000;
    SessionRecord {
        id,
        charge_box_id: "CB-7".into(),
        connector_id: 2,
        id_tag: id_tag.into(),
        started_at_ms: Some(started),
        stopped_at_ms: Some(started + 45_000),
        start_mwh: Some(1_000_123),
        stop_mwh: Some(13_345_801),
        planned_wh: 0,
        billed_wh: 0,
        state,
        reason: None,
        approved: false,
        revision: 0,
        updated_at_ms: 0,
    }
}

/// A session's usage event (`seq` 0) or correction, carrying `wh`.
pub(crate) fn event(session: i64, seq: i64, wh: i64) -> NewEvent {
    NewEvent {
        transaction_id: format!("ferry-{session}-{seq}"),
        session_id: session,
        seq,
        customer: "cust-1".into(),
        subscription: "sub-1".into(),
        code: "energy_wh".into(),
        timestamp_ms: T0 + session * 60_000 + 45_000,
        wh,
        properties: format!(r#"{{"wh":{wh},"charge_box_id":"CB-7"}}"#),
    }
}

/// A write of a session the planner did not find.
pub(crate) fn new(session: SessionRecord) -> SessionWrite {
    SessionWrite {
        session,
        expected_revision: None,
    }
}

/// A write of a session the planner read at `revision`.
pub(crate) fn update(session: SessionRecord, revision: i64) -> SessionWrite {
    SessionWrite {
        session,
        expected_revision: Some(revision),
    }
}

/// The ids of some sessions.
pub(crate) fn ids(sessions: &[SessionRecord]) -> Vec<i64> {
    sessions.iter().map(|s| s.id).collect()
}

/// The transaction ids of some events.
pub(crate) fn transaction_ids(events: &[EventRecord]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event.transaction_id.clone())
        .collect()
}
