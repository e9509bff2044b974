//! What changed in the store, for live consoles (`GET /api/admin/events`) and devices'
//! change streams (`GET /api/sync/stream`).
//!
//! A [`StoreEvent`] names a record that changed (a run, a job's state, a device), never its
//! contents: a subscriber reads the record again, through the same calls the API answers
//! with, so an event can never show more than the API would, and a late or repeated event
//! shows the current record rather than a stale one.
//!
//! Both stores publish them after the change commits, from every process that writes:
//!
//! - SQLite: an in-process channel, sent by the store's own methods after their transaction.
//!   Writes made by another process on the same file (the CLI creating a pairing code) are
//!   not seen until the next event about the same record.
//! - PostgreSQL: database triggers call `pg_notify` on [`EVENTS_CHANNEL`] inside the writing
//!   transaction (migration 7), so a run finished by a `ferry worker` process or a device
//!   that pushed through another instance reaches every instance's subscribers. One `LISTEN`
//!   connection per process (not per subscriber) feeds them all.
//!
//! Events are hints. A subscriber that fell behind, or whose store lost its `LISTEN`
//! connection for a while, gets [`StoreEvent::Gap`] and should read everything it shows
//! again.

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// The PostgreSQL channel the store's triggers notify on; separate from the workers'
/// `sync_trigger` so that neither wakes the other's listeners.
pub const EVENTS_CHANNEL: &str = "ferry_events";

/// Events a subscriber may fall behind by before it gets [`StoreEvent::Gap`].
pub(crate) const EVENTS_BACKLOG: usize = 4096;

/// One change, named by the record it touched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreEvent {
    /// A run started, finished, or was found abandoned.
    Run { id: i64, job: String },
    /// Something a job's state shows changed: its cadence or pin, its pending triggers, its
    /// running run.
    State { job: String },
    /// A worker's trigger listener connected or disconnected: every job's state shows it.
    Listener,
    /// A device paired, checked in, pushed, pulled, or was revoked. PostgreSQL publishes a
    /// time-only change (a check-in, a pull) at most once a second per device; a change of its
    /// pending count, name, version or revocation always.
    Device { tenant: String, device_id: String },
    /// A push committed rows of `tenant`, the last at sequence `seq`, from `origin` (a device
    /// id). One event per push that wrote rows.
    Changes {
        tenant: String,
        seq: u64,
        origin: String,
    },
    /// Events may have been lost: re-read what is shown.
    Gap,
}

/// A subscription to a store's events; dropping it unsubscribes.
#[derive(Debug)]
pub struct StoreEvents {
    receiver: broadcast::Receiver<StoreEvent>,
}

impl StoreEvents {
    pub(crate) fn new(receiver: broadcast::Receiver<StoreEvent>) -> StoreEvents {
        StoreEvents { receiver }
    }

    /// The next event. [`StoreEvent::Gap`] after falling behind. Waits forever once the
    /// store is gone (a subscriber's own shutdown ends it).
    pub async fn next(&mut self) -> StoreEvent {
        match self.receiver.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => StoreEvent::Gap,
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// The sending side both stores keep.
pub(crate) fn channel() -> broadcast::Sender<StoreEvent> {
    broadcast::channel(EVENTS_BACKLOG).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_parse() {
        let parse = |text: &str| serde_json::from_str::<StoreEvent>(text).unwrap();
        assert_eq!(
            parse(r#"{"kind": "run", "id": 7, "job": "billing"}"#),
            StoreEvent::Run {
                id: 7,
                job: "billing".into()
            }
        );
        assert_eq!(
            parse(r#"{"kind": "device", "tenant": "t", "device_id": "dev_1"}"#),
            StoreEvent::Device {
                tenant: "t".into(),
                device_id: "dev_1".into()
            }
        );
        assert_eq!(parse(r#"{"kind": "listener"}"#), StoreEvent::Listener);
        assert_eq!(
            parse(r#"{"kind": "changes", "tenant": "t", "seq": 42, "origin": "dev_1"}"#),
            StoreEvent::Changes {
                tenant: "t".into(),
                seq: 42,
                origin: "dev_1".into()
            }
        );
    }
}
