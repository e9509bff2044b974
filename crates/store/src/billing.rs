//! The billing job's durable state (StEvE → Lago): tag mappings, the session ledger, the event
//! outbox, and how far the job has read StEvE.
//!
//! Like jobs, billing is server-wide, not per tenant: one deployment bills one StEvE into one
//! Lago.
//!
//! The ledger is what makes billing exactly-once. A session's event is written to the outbox
//! (status `pending`) in the same transaction that moves the session to `billed`, before
//! anything is sent; an event leaves `pending` only when Lago accepted it or answered that its
//! `transaction_id` already exists (`delivered`), or refused it for good (`rejected`). A worker
//! killed at any point leaves pending events behind, which the next run sends again; Lago
//! answers a resend of a delivered event as a duplicate, so nothing is charged twice.
//!
//! Every session row carries a `revision` that each write bumps: [`BillingStore::write_ledger`]
//! writes a session only if its revision is still the one the planner read, so two workers
//! (a run found dead that was only slow) cannot both plan the same change.

use async_trait::async_trait;

use crate::{Result, StoreError};

/// A tag's mapping to a Lago customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingRecord {
    pub id_tag: String,
    pub customer: String,
    /// The subscription to bill; `None` means the customer's subscription that was active at
    /// the session's stop time.
    pub subscription: Option<String>,
    pub updated_at_ms: i64,
}

/// A mapping to store (the time is the store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMapping {
    pub id_tag: String,
    pub customer: String,
    pub subscription: Option<String>,
}

/// Where a session stands in billing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Charging, or stopped but not yet billable for a reason that may pass (a service could
    /// not be reached); followed by every run.
    Active,
    /// Its events are in the outbox (pending or delivered).
    Billed,
    /// It cannot be billed yet: no mapping, or no active subscription at its stop time. Every
    /// run looks again.
    Parked,
    /// The numbers look wrong (negative or implausible energy, malformed meter values, an
    /// event Lago refused); waits for an operator.
    NeedsReview,
    /// An operator chose not to bill it, or StEvE no longer has it.
    Ignored,
}

impl SessionState {
    pub const ALL: [SessionState; 5] = [
        SessionState::Active,
        SessionState::Billed,
        SessionState::Parked,
        SessionState::NeedsReview,
        SessionState::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Billed => "billed",
            SessionState::Parked => "parked",
            SessionState::NeedsReview => "needs_review",
            SessionState::Ignored => "ignored",
        }
    }

    pub fn parse(text: &str) -> Option<SessionState> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub(crate) fn stored(text: &str) -> Result<SessionState> {
        Self::parse(text)
            .ok_or_else(|| StoreError::Internal(format!("unknown stored session state {text:?}")))
    }
}

/// One StEvE transaction in the ledger. Meter values are kept in milli-watt-hours, exactly as
/// StEvE's decimal text gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// StEvE's `transactionPk` (the `id` of its REST API).
    pub id: i64,
    pub charge_box_id: String,
    pub connector_id: i64,
    pub id_tag: String,
    pub started_at_ms: Option<i64>,
    pub stopped_at_ms: Option<i64>,
    pub start_mwh: Option<i64>,
    pub stop_mwh: Option<i64>,
    /// Energy in this session's events that are pending or delivered, in Wh: what Lago has or
    /// will have once the outbox drains. A correction is planned against it.
    pub planned_wh: i64,
    /// Energy in delivered events, in Wh.
    pub billed_wh: i64,
    pub state: SessionState,
    pub reason: Option<String>,
    /// An operator answered a review with "bill": the next run bills it as it is.
    pub approved: bool,
    /// Bumped by every write; see the module documentation.
    pub revision: i64,
    pub updated_at_ms: i64,
}

/// A session to write, and the revision the planner read it at (`None`: the planner saw no
/// such session, so it is inserted only if it still does not exist). An inserted session is
/// stored at revision 1 with `billed_wh` 0; an updated one at its revision + 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionWrite {
    /// Written as given, except `revision` (bumped by the store), `updated_at_ms` (the
    /// store's clock) and `billed_wh` (kept: only settling events changes it).
    pub session: SessionRecord,
    pub expected_revision: Option<i64>,
}

/// An event's delivery status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Pending,
    Delivered,
    Rejected,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Delivered => "delivered",
            EventStatus::Rejected => "rejected",
        }
    }

    pub(crate) fn stored(text: &str) -> Result<EventStatus> {
        match text {
            "pending" => Ok(EventStatus::Pending),
            "delivered" => Ok(EventStatus::Delivered),
            "rejected" => Ok(EventStatus::Rejected),
            _ => Err(StoreError::Internal(format!(
                "unknown stored event status {text:?}"
            ))),
        }
    }
}

/// A usage event to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Stable for the session (and for each correction): Lago's idempotency key.
    pub transaction_id: String,
    pub session_id: i64,
    /// 0 for the session's event, 1, 2, ... for its corrections.
    pub seq: i64,
    pub customer: String,
    pub subscription: String,
    /// The billable metric's code.
    pub code: String,
    /// The session's stop time.
    pub timestamp_ms: i64,
    pub wh: i64,
    /// The event's `properties` object as JSON text.
    pub properties: String,
}

/// An event in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub event: NewEvent,
    pub status: EventStatus,
    /// Lago's answer for a rejected event; the last failed attempt's error for a pending one.
    pub error: Option<String>,
    /// Sends that ended without a settled answer.
    pub attempts: i64,
    /// The run that planned it.
    pub created_run: Option<i64>,
    /// The run that delivered or rejected it.
    pub settled_run: Option<i64>,
    pub created_at_ms: i64,
    pub settled_at_ms: Option<i64>,
}

/// How far the job has read StEvE. Kept in the same transaction as the sessions it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BillingCursor {
    /// Every session that started before this was seen by a windowed read (StEvE's `FROM_TO`
    /// filters on the start); `None` before the first read.
    pub window_end_ms: Option<i64>,
    /// When the last wide sweep ran.
    pub last_sweep_ms: Option<i64>,
    /// The latest start or stop of any session seen: the cadence's measure of activity.
    pub last_activity_ms: Option<i64>,
    /// Every transaction id up to this one has been seen or asked for. StEvE numbers
    /// transactions as it records them, so an id below the highest seen that no read showed
    /// is a session recorded late (a charger that was offline) with an old start time.
    pub max_id: Option<i64>,
}

/// One atomic change to the ledger, as the planner made it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerWrite {
    pub sessions: Vec<SessionWrite>,
    /// Inserted unless an event with the same `transaction_id` exists (then left as it is).
    pub events: Vec<NewEvent>,
    /// Rejected events to send again (an operator approved their session): back to pending,
    /// error cleared.
    pub resend: Vec<String>,
    pub cursor: Option<BillingCursor>,
}

/// What [`BillingStore::write_ledger`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerWritten {
    /// Sessions not written because their revision moved (another writer got there first);
    /// their events (and resends) were not written either.
    pub stale: Vec<i64>,
    /// Events inserted (not counting those that already existed).
    pub events_inserted: u64,
}

/// How one send of an event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Lago accepted it, or answered that its `transaction_id` already exists.
    Delivered,
    /// Lago refused it for good, with this error; its session goes to `needs_review`.
    Rejected(String),
    /// No settled answer (a timeout, a dropped connection, a 5xx): it stays pending.
    Unsettled(String),
}

/// The outcome of one event's send, for [`BillingStore::settle_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub transaction_id: String,
    pub outcome: EventOutcome,
}

/// What [`BillingStore::settle_events`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settled {
    /// Events that went from pending to delivered now.
    pub delivered: u64,
    /// Events that went from pending to rejected now.
    pub rejected: u64,
    /// Sessions whose state changed (to `needs_review`, for a rejected event).
    pub sessions_changed: Vec<i64>,
}

/// Which sessions to list, newest (highest id) first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    pub state: Option<SessionState>,
    pub id_tag: Option<String>,
    /// Only sessions with a smaller id (the previous page's last id).
    pub before: Option<i64>,
    pub limit: u32,
}

/// An operator's answer to a session in `needs_review`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewAction {
    /// Bill it as it is (the next run plans its event, or sends a rejected one again).
    Bill,
    /// Never bill it.
    Ignore,
}

/// The answer of [`BillingStore::review`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewed {
    Done(SessionRecord),
    NotFound,
    /// The session is not in `needs_review` (its current record).
    NotInReview(SessionRecord),
}

/// The billing job's durable state. Both stores implement it; the billing job and the billing
/// API use nothing else.
#[async_trait]
pub trait BillingStore: Send + Sync + 'static {
    /// Every mapping, by tag.
    async fn mappings(&self) -> Result<Vec<MappingRecord>>;

    /// Creates or replaces a tag's mapping.
    async fn put_mapping(&self, mapping: &NewMapping) -> Result<MappingRecord>;

    /// Deletes a tag's mapping; `false` when it had none.
    async fn delete_mapping(&self, id_tag: &str) -> Result<bool>;

    /// Creates or replaces all these mappings in one transaction; returns how many.
    async fn import_mappings(&self, mappings: &[NewMapping]) -> Result<u64>;

    /// The sessions with these ids that the ledger has, in no particular order.
    async fn sessions(&self, ids: &[i64]) -> Result<Vec<SessionRecord>>;

    /// Sessions every run must look at again: `active` and `parked` ones, and `needs_review`
    /// ones an operator approved.
    async fn open_sessions(&self) -> Result<Vec<SessionRecord>>;

    /// Applies a planner's changes atomically; see [`LedgerWrite`] and [`LedgerWritten`].
    /// `run_id` is recorded on the events it inserts. A write that names one session twice
    /// is a planner's bug: it fails ([`StoreError::Internal`]) and writes nothing.
    async fn write_ledger(&self, run_id: Option<i64>, write: &LedgerWrite)
    -> Result<LedgerWritten>;

    /// How far the job has read StEvE.
    async fn cursor(&self) -> Result<BillingCursor>;

    /// Pending events, by `transaction_id` after `after`, at most `limit`.
    async fn pending_events(&self, after: Option<&str>, limit: u32) -> Result<Vec<EventRecord>>;

    /// Records how sends ended, atomically. Only pending events change; settling one twice
    /// changes nothing the second time. A delivered event adds its Wh to its session's
    /// `billed_wh`; a rejected one moves its session to `needs_review` with Lago's error as
    /// the reason (and takes its Wh back out of `planned_wh`), which bumps its revision; a
    /// delivery does not, as no planner writes `billed_wh`. Several settlements of one event
    /// in a call apply in order: unsettled sends before its first settled answer count
    /// attempts, and the rest find it settled.
    async fn settle_events(&self, run_id: i64, settled: &[Settlement]) -> Result<Settled>;

    /// Sessions, newest first.
    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>>;

    /// The events of these sessions, by session then `seq`.
    async fn session_events(&self, session_ids: &[i64]) -> Result<Vec<EventRecord>>;

    /// The events a run delivered or rejected, by `transaction_id`.
    async fn run_events(&self, run_id: i64) -> Result<Vec<EventRecord>>;

    /// Settles a session in `needs_review`: `Ignore` moves it to `ignored` (not approved);
    /// `Bill` marks it approved (it stays in `needs_review` until the next run bills it).
    /// Either bumps its revision.
    async fn review(&self, id: i64, action: ReviewAction) -> Result<Reviewed>;
}

/// The reason a session in `needs_review` gives when Lago refused one of its events.
pub(crate) fn rejected_reason(transaction_id: &str, error: &str) -> String {
    format!("Lago rejected usage event {transaction_id}: {error}")
}

/// The reason of a session an operator chose not to bill.
pub(crate) const IGNORED_REASON: &str = "An operator chose not to bill this session.";

impl LedgerWrite {
    /// A write names each session at most once: two writes of one session in one call have
    /// no order the stores could agree on, so that is the planner's bug, refused whole.
    pub(crate) fn check(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::with_capacity(self.sessions.len());
        match self.sessions.iter().find(|w| !seen.insert(w.session.id)) {
            Some(twice) => Err(StoreError::Internal(format!(
                "a ledger write names session {} twice",
                twice.session.id
            ))),
            None => Ok(()),
        }
    }
}

/// What one call's settlements do to one event, folded the way applying them one by one
/// would: each unsettled send before the first settled answer counts an attempt (the last
/// one's error is kept), the first settled answer decides, and anything after it finds the
/// event no longer pending. Both stores apply this fold, so they agree however a caller
/// repeats an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Folded<'a> {
    pub(crate) transaction_id: &'a str,
    /// `Pending` when no settled answer came.
    pub(crate) status: EventStatus,
    pub(crate) error: Option<&'a str>,
    /// Unsettled sends to add to `attempts`.
    pub(crate) attempts: i64,
    /// The session's reason, for a rejection.
    pub(crate) reason: Option<String>,
}

/// Folds settlements per event (see [`Folded`]), in the order events first appear.
pub(crate) fn fold_settlements(settled: &[Settlement]) -> Vec<Folded<'_>> {
    let mut folded: Vec<Folded<'_>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for settlement in settled {
        let id = settlement.transaction_id.as_str();
        let at = *index.entry(id).or_insert_with(|| {
            folded.push(Folded {
                transaction_id: id,
                status: EventStatus::Pending,
                error: None,
                attempts: 0,
                reason: None,
            });
            folded.len() - 1
        });
        let event = &mut folded[at];
        if event.status != EventStatus::Pending {
            continue;
        }
        match &settlement.outcome {
            EventOutcome::Delivered => {
                event.status = EventStatus::Delivered;
                event.error = None;
            }
            EventOutcome::Rejected(error) => {
                event.status = EventStatus::Rejected;
                event.error = Some(error);
                event.reason = Some(rejected_reason(id, error));
            }
            EventOutcome::Unsettled(error) => {
                event.attempts += 1;
                event.error = Some(error);
            }
        }
    }
    folded
}

/// Mappings to import, one per tag: a later line for a tag replaces an earlier one, as
/// storing them one by one would.
pub(crate) fn distinct_mappings(mappings: &[NewMapping]) -> Vec<&NewMapping> {
    let mut last = std::collections::HashMap::with_capacity(mappings.len());
    for (n, mapping) in mappings.iter().enumerate() {
        last.insert(mapping.id_tag.as_str(), n);
    }
    mappings
        .iter()
        .enumerate()
        .filter(|(n, mapping)| last[mapping.id_tag.as_str()] == *n)
        .map(|(_, mapping)| mapping)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(id: &str, outcome: EventOutcome) -> Settlement {
        Settlement {
            transaction_id: id.into(),
            outcome,
        }
    }

    #[test]
    fn settlements_fold_as_if_applied_one_by_one() {
        let settled = [
            settle("a", EventOutcome::Unsettled("timeout".into())),
            settle("b", EventOutcome::Rejected("bad".into())),
            settle("a", EventOutcome::Delivered),
            settle("a", EventOutcome::Rejected("late".into())),
            settle("c", EventOutcome::Unsettled("503".into())),
            settle("c", EventOutcome::Unsettled("504".into())),
        ];
        let folded = fold_settlements(&settled);
        let summary: Vec<_> = folded
            .iter()
            .map(|f| (f.transaction_id, f.status, f.error, f.attempts))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", EventStatus::Delivered, None, 1),
                ("b", EventStatus::Rejected, Some("bad"), 0),
                ("c", EventStatus::Pending, Some("504"), 2),
            ]
        );
        assert_eq!(
            folded[1].reason.as_deref(),
            Some("Lago rejected usage event b: bad")
        );
    }

    #[test]
    fn a_later_mapping_of_a_tag_replaces_an_earlier_one() {
        let mapping = |tag: &str, customer: &str| NewMapping {
            id_tag: tag.into(),
            customer: customer.into(),
            subscription: None,
        };
        let given = [mapping("t1", "a"), mapping("t2", "b"), mapping("t1", "c")];
        let kept: Vec<_> = distinct_mappings(&given)
            .into_iter()
            .map(|m| (m.id_tag.as_str(), m.customer.as_str()))
            .collect();
        assert_eq!(kept, [("t2", "b"), ("t1", "c")]);
    }
}
