//! Billing decisions as pure functions: what StEvE reports, what the ledger holds, the tag
//! mappings and Lago's subscriptions in; the sessions to write and the events to send out.
//!
//! Nothing here does IO or reads the clock. The job ([`crate::job`]) gathers the inputs, calls
//! [`plan`], and writes the [`Plan`]'s ledger changes in one transaction before it sends a
//! single event.
//!
//! A session's path: `active` while it charges; once stopped it is billed (one event, its
//! energy, at its stop time, to the subscription active then), or `parked` while it cannot be
//! (no mapping, no active subscription; every run looks again), or sent to `needs_review` when
//! its numbers look wrong (an operator then bills or ignores it). A stop value revised after
//! billing yields a correction event for the difference. A service that cannot be reached
//! changes nothing: the session stays as it was, and the next run tries again.

use std::collections::{HashMap, HashSet};

use ferry_core::time::format_ms;
use ferry_store::billing::{
    EventRecord, EventStatus, LedgerWrite, MappingRecord, NewEvent, SessionRecord, SessionState,
    SessionWrite,
};
use serde_json::{Map, Value};

use crate::lago::{Subscription, active_at};

/// A StEvE transaction as the planner reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: i64,
    pub charge_box_id: String,
    pub connector_id: i64,
    pub id_tag: String,
    pub started_at_ms: Option<i64>,
    /// Whether StEvE reports the session as finished (it has a stop timestamp, even one that
    /// could not be read).
    pub stopped: bool,
    pub stopped_at_ms: Option<i64>,
    pub start_mwh: Option<i64>,
    pub stop_mwh: Option<i64>,
    /// Why the transaction's values cannot be trusted (a null `startValue`, a stop time
    /// without a stop value, text that is not a number); `None` when they are whole.
    pub malformed: Option<String>,
}

impl Observed {
    /// Whether StEvE reports the session as finished.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The session's energy in whole Wh (rounded half away from zero), when both meter values
    /// are known.
    pub fn energy_wh(&self) -> Option<i64> {
        let milli = self.stop_mwh? - self.start_mwh?;
        Some(round_div(milli, 1000))
    }
}

fn round_div(value: i64, by: i64) -> i64 {
    let half = by / 2;
    if value >= 0 {
        (value + half) / by
    } else {
        (value - half) / by
    }
}

/// The fixed rules of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The Lago billable metric's code (`ev_charging_kwh` by default).
    pub metric_code: String,
    /// The event property that carries the energy, in kWh with Wh precision (`kwh`).
    pub energy_property: String,
    /// Energy above this (Wh) is implausible for one session and waits for review.
    pub max_session_wh: i64,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            metric_code: "ev_charging_kwh".to_owned(),
            energy_property: "kwh".to_owned(),
            max_session_wh: 500_000,
        }
    }
}

/// The `transaction_id` of a session's event in Lago: stable, so a resend is always a
/// duplicate there.
pub fn event_id(session: i64) -> String {
    format!("steve-{session}")
}

/// The `transaction_id` of a correction planned when the session's ledger row moves to
/// `revision`: the compare-and-set on that revision lets only one correction per revision
/// exist, so a repeated or concurrent planning produces the same id.
pub fn correction_id(session: i64, revision: i64) -> String {
    format!("steve-{session}-r{revision}")
}

/// Tag mappings, with StEvE's parent tags for inheritance.
#[derive(Debug, Default, Clone)]
pub struct Mappings {
    by_tag: HashMap<String, MappingRecord>,
    parents: HashMap<String, String>,
}

impl Mappings {
    /// `parents` maps an OCPP tag to its `parentIdTag`.
    pub fn new(mappings: Vec<MappingRecord>, parents: HashMap<String, String>) -> Mappings {
        Mappings {
            by_tag: mappings
                .into_iter()
                .map(|m| (m.id_tag.clone(), m))
                .collect(),
            parents,
        }
    }

    /// The tag's own mapping, else its nearest mapped ancestor's. A cycle of parents ends
    /// the search.
    pub fn resolve(&self, tag: &str) -> Option<&MappingRecord> {
        let mut seen = HashSet::new();
        let mut current = tag;
        loop {
            if let Some(mapping) = self.by_tag.get(current) {
                return Some(mapping);
            }
            if !seen.insert(current) {
                return None;
            }
            current = self.parents.get(current)?;
        }
    }
}

/// What Lago said about each customer's subscriptions this run. A customer missing here was
/// not asked about; an error is one that may pass.
pub type SubscriptionBook = HashMap<String, Result<Vec<Subscription>, String>>;

/// Everything a plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// What StEvE reported this run, one entry per transaction id.
    pub observed: &'a [Observed],
    /// Ledger sessions StEvE no longer has (asked for by id, not found).
    pub vanished: &'a [i64],
    /// The ledger's records of the observed and vanished sessions, and of every open one.
    pub ledger: &'a HashMap<i64, SessionRecord>,
    /// Events of the sessions in `needs_review` among them (a rejected event is sent again
    /// once an operator approves its session).
    pub events: &'a HashMap<i64, Vec<EventRecord>>,
    pub mappings: &'a Mappings,
    pub subscriptions: &'a SubscriptionBook,
    pub rules: &'a Rules,
}

/// One session's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub write: SessionWrite,
    /// The state before (`None`: new to the ledger).
    pub from: Option<SessionState>,
    pub events: Vec<NewEvent>,
    pub resend: Vec<String>,
}

impl Change {
    /// Whether the session's billing state changed, or it got events: what a run counts as a
    /// transaction processed.
    pub fn is_processed(&self) -> bool {
        self.from != Some(self.write.session.state)
            || !self.events.is_empty()
            || !self.resend.is_empty()
    }

    pub fn corrections(&self) -> usize {
        self.events.iter().filter(|e| e.seq > 0).count()
    }
}

/// A plan: every session that changes, with its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    /// The ledger write that carries out the plan.
    pub fn ledger_write(&self) -> LedgerWrite {
        LedgerWrite {
            sessions: self.changes.iter().map(|c| c.write.clone()).collect(),
            events: self
                .changes
                .iter()
                .flat_map(|c| c.events.iter().cloned())
                .collect(),
            resend: self
                .changes
                .iter()
                .flat_map(|c| c.resend.iter().cloned())
                .collect(),
            cursor: None,
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The customers whose subscriptions a plan of `inputs` needs: those of the sessions it may
/// bill now. The job asks Lago about each before it plans.
pub fn customers_needed(inputs: &Inputs<'_>) -> Vec<String> {
    let mut customers: Vec<String> = inputs
        .observed
        .iter()
        .filter(|o| wants_billing(o, inputs.ledger.get(&o.id)))
        .filter_map(|o| inputs.mappings.resolve(&o.id_tag))
        .map(|m| m.customer.clone())
        .collect();
    customers.sort();
    customers.dedup();
    customers
}

/// The sessions whose events a plan needs (in [`Inputs::events`]): billed sessions whose
/// values StEvE revised, and sessions in review.
pub fn events_needed(observed: &[Observed], ledger: &HashMap<i64, SessionRecord>) -> Vec<i64> {
    observed
        .iter()
        .filter(|o| {
            ledger.get(&o.id).is_some_and(|e| match e.state {
                SessionState::Billed => observed_changed(o, e),
                SessionState::NeedsReview => true,
                _ => false,
            })
        })
        .map(|o| o.id)
        .collect()
}

/// Whether a run tries to bill the session now: it stopped, and it is new, still followed,
/// parked, or in review with an operator's approval or new values.
fn wants_billing(observed: &Observed, existing: Option<&SessionRecord>) -> bool {
    observed.is_stopped()
        && match existing {
            None => true,
            Some(e) => match e.state {
                SessionState::Active | SessionState::Parked => true,
                SessionState::NeedsReview => e.approved || observed_changed(observed, e),
                SessionState::Billed | SessionState::Ignored => false,
            },
        }
}

/// Plans every observed and vanished session.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let mut changes = Vec::new();
    for observed in inputs.observed {
        let existing = inputs.ledger.get(&observed.id);
        if let Some(change) = plan_session(inputs, observed, existing) {
            changes.push(change);
        }
    }
    for id in inputs.vanished {
        if let Some(change) = inputs.ledger.get(id).and_then(vanished) {
            changes.push(change);
        }
    }
    Plan { changes }
}

/// A ledger session StEvE no longer has (its tag was deleted, and its transactions with
/// it): unless it was billed, it is ignored, with the reason.
fn vanished(existing: &SessionRecord) -> Option<Change> {
    if matches!(existing.state, SessionState::Billed | SessionState::Ignored) {
        return None;
    }
    let mut session = existing.clone();
    session.state = SessionState::Ignored;
    session.reason = Some(
        "StEvE no longer has this transaction (deleting a tag deletes its transactions); \
         nothing was billed"
            .to_owned(),
    );
    Some(change_of(Some(existing), session, Vec::new(), Vec::new()))
}

fn plan_session(
    inputs: &Inputs<'_>,
    observed: &Observed,
    existing: Option<&SessionRecord>,
) -> Option<Change> {
    let state = existing.map(|e| e.state);
    match state {
        Some(SessionState::Ignored) => return None,
        Some(SessionState::Billed) if observed.is_stopped() => {
            return correct(inputs, observed, existing?);
        }
        // StEvE shows a billed session as charging again: nothing to bill until it stops.
        Some(SessionState::Billed) => return None,
        _ => {}
    }
    if !observed.is_stopped() {
        return match existing {
            // Still charging: write only what changed (a new session, or new values).
            Some(e) if !observed_changed(observed, e) => None,
            _ => Some(with_observed(
                existing,
                observed,
                SessionState::Active,
                None,
                Vec::new(),
                Vec::new(),
            )),
        };
    }
    if !wants_billing(observed, existing) {
        return None;
    }
    bill(inputs, observed, existing)
}

/// The decision for a stopped session that has not been billed.
fn bill(
    inputs: &Inputs<'_>,
    observed: &Observed,
    existing: Option<&SessionRecord>,
) -> Option<Change> {
    let approved = existing.is_some_and(|e| e.approved);
    // Held back: the session keeps waiting, and an operator's approval is used up (it is
    // asked for again, with the new reason).
    let hold = |state, reason: String| unchanged_or(existing, observed, state, Some(reason));
    if let Some(problem) = &observed.malformed {
        return hold(
            SessionState::NeedsReview,
            format!("StEvE's values cannot be billed: {problem}"),
        );
    }
    let Some(energy) = observed.energy_wh() else {
        return hold(
            SessionState::NeedsReview,
            "StEvE's values cannot be billed: a meter value is missing".to_owned(),
        );
    };
    if !approved && let Some(reason) = implausible(energy, inputs.rules) {
        return hold(SessionState::NeedsReview, reason);
    }
    let Some(mapping) = inputs.mappings.resolve(&observed.id_tag) else {
        return hold(
            SessionState::Parked,
            format!(
                "no mapping for tag {:?} or its parent tags; map it and the next run bills it",
                observed.id_tag
            ),
        );
    };
    let stopped_at = observed.stopped_at_ms?;
    let subscriptions = match inputs.subscriptions.get(&mapping.customer) {
        Some(Ok(subscriptions)) => subscriptions,
        // A failure that may pass is never a reason to park: the session stays as it was.
        Some(Err(error)) => {
            return match existing.map(|e| e.state) {
                None | Some(SessionState::Active) => hold(
                    SessionState::Active,
                    format!(
                        "stopped; waiting for Lago's subscriptions of customer {:?}: {error}",
                        mapping.customer
                    ),
                ),
                _ => None,
            };
        }
        None => return None,
    };
    let subscription = match &mapping.subscription {
        Some(named) => subscriptions
            .iter()
            .find(|s| &s.external_id == named)
            .filter(|s| active_at(std::slice::from_ref(*s), stopped_at).is_some()),
        None => active_at(subscriptions, stopped_at),
    };
    let Some(subscription) = subscription else {
        let what = match &mapping.subscription {
            Some(named) => format!(
                "subscription {named:?} of customer {:?} was not active",
                mapping.customer
            ),
            None => format!("customer {:?} had no active subscription", mapping.customer),
        };
        return hold(
            SessionState::Parked,
            format!(
                "{what} at the session's stop ({}); the next run looks again",
                format_ms(stopped_at)
            ),
        );
    };
    let session_events = inputs
        .events
        .get(&observed.id)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let rejected: Vec<&EventRecord> = session_events
        .iter()
        .filter(|e| e.status == EventStatus::Rejected)
        .collect();
    let base = existing.map(|e| e.planned_wh).unwrap_or(0);
    let has_primary = session_events.iter().any(|e| e.event.seq == 0);
    let revision = existing.map(|e| e.revision + 1).unwrap_or(1);
    let mut events = Vec::new();
    let mut resend = Vec::new();
    let mut planned = base;
    if approved {
        for event in &rejected {
            resend.push(event.event.transaction_id.clone());
            planned += event.event.wh;
        }
    }
    let context = EventContext {
        observed,
        customer: &mapping.customer,
        subscription: &subscription.external_id,
        stopped_at,
        rules: inputs.rules,
    };
    if !has_primary {
        events.push(context.event(event_id(observed.id), 0, energy));
        planned += energy;
    } else if planned != energy {
        events.push(context.event(
            correction_id(observed.id, revision),
            revision,
            energy - planned,
        ));
        planned = energy;
    }
    let mut session = with_observed_record(existing, observed);
    session.state = SessionState::Billed;
    session.reason = None;
    session.approved = false;
    session.planned_wh = planned;
    Some(change_of(existing, session, events, resend))
}

/// A billed session StEvE reports again: a correction when its energy moved.
fn correct(inputs: &Inputs<'_>, observed: &Observed, existing: &SessionRecord) -> Option<Change> {
    if !observed_changed(observed, existing) {
        return None;
    }
    let energy = observed.energy_wh();
    let revision = existing.revision + 1;
    let mut session = with_observed_record(Some(existing), observed);
    let delta = match (energy, &observed.malformed) {
        (Some(energy), None) if implausible(energy, inputs.rules).is_none() => {
            energy - existing.planned_wh
        }
        _ => {
            // The revised values cannot be billed as they are; what was billed stands until
            // an operator looks.
            session.state = SessionState::NeedsReview;
            session.reason = Some(match (&observed.malformed, energy) {
                (Some(problem), _) => format!(
                    "StEvE revised the session after billing, and its values cannot be billed: {problem}"
                ),
                (None, Some(energy)) => format!(
                    "StEvE revised the session after billing: {}",
                    implausible(energy, inputs.rules).unwrap_or_default()
                ),
                (None, None) => {
                    "StEvE revised the session after billing and a meter value is missing"
                        .to_owned()
                }
            });
            return Some(change_of(Some(existing), session, Vec::new(), Vec::new()));
        }
    };
    let mut events = Vec::new();
    if delta != 0 {
        // Billed to the subscription of the session's own event: the correction belongs to
        // the same charge.
        let mapping_subscription = inputs
            .events
            .get(&observed.id)
            .and_then(|events| events.iter().find(|e| e.event.seq == 0))
            .map(|e| (e.event.customer.clone(), e.event.subscription.clone()));
        // The job loads the events of every billed session it corrects; without them the
        // correction waits for the next run.
        let (customer, subscription) = mapping_subscription?;
        let context = EventContext {
            observed,
            customer: &customer,
            subscription: &subscription,
            stopped_at: observed.stopped_at_ms.unwrap_or(0),
            rules: inputs.rules,
        };
        events.push(context.event(correction_id(observed.id, revision), revision, delta));
        session.planned_wh = existing.planned_wh + delta;
    }
    Some(change_of(Some(existing), session, events, Vec::new()))
}

/// The reason energy cannot be billed without review, if any.
fn implausible(energy_wh: i64, rules: &Rules) -> Option<String> {
    if energy_wh < 0 {
        Some(format!(
            "the energy is negative ({energy_wh} Wh: the stop meter value is below the start)"
        ))
    } else if energy_wh > rules.max_session_wh {
        Some(format!(
            "the energy ({energy_wh} Wh) is above the plausible ceiling of {} Wh",
            rules.max_session_wh
        ))
    } else {
        None
    }
}

/// What an event is built from.
struct EventContext<'a> {
    observed: &'a Observed,
    customer: &'a str,
    subscription: &'a str,
    stopped_at: i64,
    rules: &'a Rules,
}

impl EventContext<'_> {
    fn event(&self, transaction_id: String, seq: i64, wh: i64) -> NewEvent {
        let mut properties = Map::new();
        properties.insert(self.rules.energy_property.clone(), kwh(wh));
        properties.insert(
            "charge_box_id".to_owned(),
            Value::String(self.observed.charge_box_id.clone()),
        );
        properties.insert(
            "id_tag".to_owned(),
            Value::String(self.observed.id_tag.clone()),
        );
        NewEvent {
            transaction_id,
            session_id: self.observed.id,
            seq,
            customer: self.customer.to_owned(),
            subscription: self.subscription.to_owned(),
            code: self.rules.metric_code.clone(),
            timestamp_ms: self.stopped_at,
            wh,
            properties: Value::Object(properties).to_string(),
        }
    }
}

/// Wh as a kWh number with three decimals (`12345` → `12.345`).
pub fn kwh(wh: i64) -> Value {
    let text = format!(
        "{}{}.{:03}",
        if wh < 0 { "-" } else { "" },
        wh.unsigned_abs() / 1000,
        wh.unsigned_abs() % 1000
    );
    // The text is a valid JSON number by construction.
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Whether StEvE's values differ from the ledger's.
fn observed_changed(observed: &Observed, existing: &SessionRecord) -> bool {
    existing.started_at_ms != observed.started_at_ms
        || existing.stopped_at_ms != observed.stopped_at_ms
        || existing.start_mwh != observed.start_mwh
        || existing.stop_mwh != observed.stop_mwh
        || existing.id_tag != observed.id_tag
        || existing.charge_box_id != observed.charge_box_id
        || existing.connector_id != observed.connector_id
}

/// The session in `state` with `reason`, unless the ledger already says exactly that.
fn unchanged_or(
    existing: Option<&SessionRecord>,
    observed: &Observed,
    state: SessionState,
    reason: Option<String>,
) -> Option<Change> {
    if let Some(e) = existing
        && e.state == state
        && e.reason == reason
        && !e.approved
        && !observed_changed(observed, e)
    {
        return None;
    }
    let mut change = with_observed(existing, observed, state, reason, Vec::new(), Vec::new());
    change.write.session.approved = false;
    Some(change)
}

fn with_observed(
    existing: Option<&SessionRecord>,
    observed: &Observed,
    state: SessionState,
    reason: Option<String>,
    events: Vec<NewEvent>,
    resend: Vec<String>,
) -> Change {
    let mut session = with_observed_record(existing, observed);
    session.state = state;
    session.reason = reason;
    change_of(existing, session, events, resend)
}

/// The ledger record with StEvE's current values.
fn with_observed_record(existing: Option<&SessionRecord>, observed: &Observed) -> SessionRecord {
    let mut session = existing.cloned().unwrap_or(SessionRecord {
        id: observed.id,
        charge_box_id: String::new(),
        connector_id: 0,
        id_tag: String::new(),
        started_at_ms: None,
        stopped_at_ms: None,
        start_mwh: None,
        stop_mwh: None,
        planned_wh: 0,
        billed_wh: 0,
        state: SessionState::Active,
        reason: None,
        approved: false,
        revision: 0,
        updated_at_ms: 0,
    });
    session.charge_box_id = observed.charge_box_id.clone();
    session.connector_id = observed.connector_id;
    session.id_tag = observed.id_tag.clone();
    session.started_at_ms = observed.started_at_ms;
    session.stopped_at_ms = observed.stopped_at_ms;
    session.start_mwh = observed.start_mwh;
    session.stop_mwh = observed.stop_mwh;
    session
}

fn change_of(
    existing: Option<&SessionRecord>,
    session: SessionRecord,
    events: Vec<NewEvent>,
    resend: Vec<String>,
) -> Change {
    Change {
        from: existing.map(|e| e.state),
        write: SessionWrite {
            session,
            expected_revision: existing.map(|e| e.revision),
        },
        events,
        resend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_780_000_000_000;

    fn stopped(id: i64, tag: &str, start_wh: i64, stop_wh: i64) -> Observed {
        Observed {
            id,
            charge_box_id: "CB-1".into(),
            connector_id: 1,
            id_tag: tag.into(),
            started_at_ms: Some(T0),
            stopped: true,
            stopped_at_ms: Some(T0 + HOUR),
            start_mwh: Some(start_wh * 1000),
            stop_mwh: Some(stop_wh * 1000),
            malformed: None,
        }
    }

    fn charging(id: i64, tag: &str) -> Observed {
        Observed {
            stopped: false,
            stopped_at_ms: None,
            stop_mwh: None,
            ..stopped(id, tag, 1000, 0)
        }
    }

    fn mapping(tag: &str, customer: &str, subscription: Option<&str>) -> MappingRecord {
        MappingRecord {
            id_tag: tag.into(),
            customer: customer.into(),
            subscription: subscription.map(Into::into),
            updated_at_ms: T0,
        }
    }

    fn subscription(id: &str, started: i64, terminated: Option<i64>) -> Subscription {
        Subscription {
            external_id: id.into(),
            external_customer_id: "cust".into(),
            status: if terminated.is_some() {
                "terminated"
            } else {
                "active"
            }
            .into(),
            started_at_ms: Some(started),
            terminated_at_ms: terminated,
        }
    }

    /// A world of one customer `cust` with subscription `sub` since long before `T0`, and
    /// tag `TAG` mapped to it.
    struct World {
        mappings: Mappings,
        book: SubscriptionBook,
        ledger: HashMap<i64, SessionRecord>,
        events: HashMap<i64, Vec<EventRecord>>,
        rules: Rules,
    }

    impl World {
        fn new() -> World {
            let mut book = SubscriptionBook::new();
            book.insert(
                "cust".into(),
                Ok(vec![subscription("sub", T0 - 1000 * HOUR, None)]),
            );
            World {
                mappings: Mappings::new(vec![mapping("TAG", "cust", None)], HashMap::new()),
                book,
                ledger: HashMap::new(),
                events: HashMap::new(),
                rules: Rules::default(),
            }
        }

        fn plan(&self, observed: &[Observed]) -> Plan {
            self.plan_with(observed, &[])
        }

        fn plan_with(&self, observed: &[Observed], vanished: &[i64]) -> Plan {
            plan(&Inputs {
                observed,
                vanished,
                ledger: &self.ledger,
                events: &self.events,
                mappings: &self.mappings,
                subscriptions: &self.book,
                rules: &self.rules,
            })
        }

        /// Plans, then stores the plan's sessions and events as the store would (events
        /// delivered at once), and returns the plan.
        fn step(&mut self, observed: &[Observed]) -> Plan {
            let plan = self.plan(observed);
            self.apply(&plan);
            plan
        }

        fn apply(&mut self, plan: &Plan) {
            for change in &plan.changes {
                let mut session = change.write.session.clone();
                session.revision = change.write.expected_revision.unwrap_or(0) + 1;
                for event in &change.events {
                    session.billed_wh += event.wh;
                    self.events
                        .entry(session.id)
                        .or_default()
                        .push(EventRecord {
                            event: event.clone(),
                            status: EventStatus::Delivered,
                            error: None,
                            attempts: 0,
                            created_run: None,
                            settled_run: None,
                            created_at_ms: T0,
                            settled_at_ms: Some(T0),
                        });
                }
                self.ledger.insert(session.id, session);
            }
        }

        fn state(&self, id: i64) -> SessionState {
            self.ledger[&id].state
        }
    }

    fn only(plan: &Plan) -> &Change {
        assert_eq!(plan.changes.len(), 1, "{plan:#?}");
        &plan.changes[0]
    }

    #[test]
    fn a_finished_session_of_a_mapped_tag_is_billed_once_at_its_stop_time() {
        let mut world = World::new();
        let plan = world.step(&[stopped(7, "TAG", 1000, 13_345)]);
        let change = only(&plan);
        assert_eq!(change.from, None);
        assert_eq!(change.write.expected_revision, None);
        assert_eq!(change.write.session.state, SessionState::Billed);
        assert_eq!(change.write.session.planned_wh, 12_345);
        let [event] = change.events.as_slice() else {
            panic!("one event: {change:#?}")
        };
        assert_eq!(event.transaction_id, "steve-7");
        assert_eq!(event.seq, 0);
        assert_eq!(event.subscription, "sub");
        assert_eq!(event.code, "ev_charging_kwh");
        assert_eq!(event.timestamp_ms, T0 + HOUR);
        assert_eq!(event.wh, 12_345);
        let properties: Value = serde_json::from_str(&event.properties).unwrap();
        assert_eq!(properties["kwh"], serde_json::json!(12.345));
        assert_eq!(properties["charge_box_id"], "CB-1");
        assert!(change.is_processed());

        let again = world.plan(&[stopped(7, "TAG", 1000, 13_345)]);
        assert!(again.is_empty(), "a re-read changes nothing: {again:#?}");
    }

    #[test]
    fn a_charging_session_is_followed_and_written_only_when_it_changes() {
        let mut world = World::new();
        let change = only(&world.step(&[charging(1, "TAG")])).clone();
        assert_eq!(change.write.session.state, SessionState::Active);
        assert!(change.events.is_empty());
        assert!(world.plan(&[charging(1, "TAG")]).is_empty());
        assert_eq!(
            customers_needed(&Inputs {
                observed: &[charging(1, "TAG")],
                vanished: &[],
                ledger: &world.ledger,
                events: &world.events,
                mappings: &world.mappings,
                subscriptions: &world.book,
                rules: &world.rules,
            }),
            Vec::<String>::new(),
            "a charging session needs no subscription yet"
        );
        let stop = world.step(&[stopped(1, "TAG", 1000, 2000)]);
        assert_eq!(only(&stop).from, Some(SessionState::Active));
        assert_eq!(only(&stop).write.expected_revision, Some(1));
        assert_eq!(world.state(1), SessionState::Billed);
    }

    #[test]
    fn an_unmapped_tag_parks_the_session_until_a_mapping_arrives() {
        let mut world = World::new();
        let plan = world.step(&[stopped(3, "STRANGER", 0, 5000)]);
        let change = only(&plan);
        assert_eq!(change.write.session.state, SessionState::Parked);
        assert!(change.events.is_empty());
        assert!(
            change
                .write
                .session
                .reason
                .as_deref()
                .unwrap()
                .contains("no mapping for tag \"STRANGER\""),
            "{change:#?}"
        );
        assert!(
            world.plan(&[stopped(3, "STRANGER", 0, 5000)]).is_empty(),
            "parked stays parked quietly"
        );

        world.mappings = Mappings::new(
            vec![
                mapping("TAG", "cust", None),
                mapping("STRANGER", "cust", None),
            ],
            HashMap::new(),
        );
        let plan = world.step(&[stopped(3, "STRANGER", 0, 5000)]);
        assert_eq!(only(&plan).from, Some(SessionState::Parked));
        assert_eq!(only(&plan).events.len(), 1);
        assert_eq!(world.state(3), SessionState::Billed);
    }

    #[test]
    fn a_child_tag_inherits_its_nearest_mapped_parent_and_a_cycle_ends_the_search() {
        let parents: HashMap<String, String> =
            [("CHILD", "MID"), ("MID", "TAG"), ("A", "B"), ("B", "A")]
                .into_iter()
                .map(|(c, p)| (c.to_owned(), p.to_owned()))
                .collect();
        let mappings = Mappings::new(
            vec![
                mapping("TAG", "cust", None),
                mapping("MID", "other", Some("s2")),
            ],
            parents,
        );
        assert_eq!(mappings.resolve("CHILD").unwrap().customer, "other");
        assert_eq!(mappings.resolve("TAG").unwrap().customer, "cust");
        assert_eq!(mappings.resolve("A"), None);
        assert_eq!(mappings.resolve("NOBODY"), None);
    }

    #[test]
    fn the_subscription_is_the_one_active_at_the_sessions_stop_not_at_the_sync() {
        let mut world = World::new();
        let stop = T0 + HOUR;
        world.book.insert(
            "cust".into(),
            Ok(vec![
                subscription("old", T0 - 100 * HOUR, Some(stop + HOUR)),
                subscription("new", stop + HOUR, None),
            ]),
        );
        let plan = world.plan(&[stopped(1, "TAG", 0, 100)]);
        assert_eq!(only(&plan).events[0].subscription, "old");

        world.book.insert(
            "cust".into(),
            Ok(vec![subscription("later", stop + 1, None)]),
        );
        let plan = world.plan(&[stopped(1, "TAG", 0, 100)]);
        let change = only(&plan);
        assert_eq!(change.write.session.state, SessionState::Parked);
        assert!(
            change
                .write
                .session
                .reason
                .as_deref()
                .unwrap()
                .contains("no active subscription")
        );
    }

    #[test]
    fn a_named_subscription_is_used_only_while_it_was_active() {
        let mut world = World::new();
        world.mappings = Mappings::new(vec![mapping("TAG", "cust", Some("sub"))], HashMap::new());
        assert_eq!(
            only(&world.plan(&[stopped(1, "TAG", 0, 100)])).events[0].subscription,
            "sub"
        );
        world.mappings = Mappings::new(vec![mapping("TAG", "cust", Some("gone"))], HashMap::new());
        let plan = world.plan(&[stopped(1, "TAG", 0, 100)]);
        assert_eq!(only(&plan).write.session.state, SessionState::Parked);
        assert!(
            only(&plan)
                .write
                .session
                .reason
                .as_deref()
                .unwrap()
                .contains("\"gone\"")
        );
    }

    #[test]
    fn a_lago_hiccup_never_parks_a_session() {
        let mut world = World::new();
        world
            .book
            .insert("cust".into(), Err("Lago answered 503".into()));
        let plan = world.step(&[stopped(1, "TAG", 0, 100)]);
        let change = only(&plan);
        assert_eq!(change.write.session.state, SessionState::Active);
        assert!(
            change
                .write
                .session
                .reason
                .as_deref()
                .unwrap()
                .contains("Lago answered 503")
        );
        assert!(change.events.is_empty());

        // A parked session stays exactly as it was.
        world.ledger.get_mut(&1).unwrap().state = SessionState::Parked;
        assert!(world.plan(&[stopped(1, "TAG", 0, 100)]).is_empty());

        world.book.insert(
            "cust".into(),
            Ok(vec![subscription("sub", T0 - HOUR, None)]),
        );
        world.step(&[stopped(1, "TAG", 0, 100)]);
        assert_eq!(world.state(1), SessionState::Billed);
    }

    #[test]
    fn suspicious_numbers_wait_for_review_and_an_approval_bills_them_as_they_are() {
        let mut world = World::new();
        let mut malformed = stopped(1, "TAG", 0, 100);
        malformed.start_mwh = None;
        malformed.malformed = Some("startValue is null".into());
        let negative = stopped(2, "TAG", 5000, 4000);
        let huge = stopped(3, "TAG", 0, 600_000);
        let plan = world.step(&[malformed.clone(), negative.clone(), huge.clone()]);
        assert_eq!(plan.changes.len(), 3);
        for change in &plan.changes {
            assert_eq!(
                change.write.session.state,
                SessionState::NeedsReview,
                "{change:#?}"
            );
            assert!(change.events.is_empty());
        }
        assert!(
            world.ledger[&1]
                .reason
                .as_deref()
                .unwrap()
                .contains("startValue is null")
        );
        assert!(
            world.ledger[&2]
                .reason
                .as_deref()
                .unwrap()
                .contains("negative")
        );
        assert!(
            world.ledger[&3]
                .reason
                .as_deref()
                .unwrap()
                .contains("ceiling")
        );
        assert!(
            world
                .plan(&[malformed.clone(), negative.clone(), huge.clone()])
                .is_empty()
        );

        for id in [1, 2, 3] {
            world.ledger.get_mut(&id).unwrap().approved = true;
        }
        let plan = world.step(&[malformed, negative, huge]);
        assert_eq!(world.state(2), SessionState::Billed);
        assert_eq!(world.events[&2][0].event.wh, -1000);
        assert_eq!(world.state(3), SessionState::Billed);
        assert_eq!(
            world.state(1),
            SessionState::NeedsReview,
            "no energy to bill"
        );
        assert!(
            !world.ledger[&1].approved,
            "the approval is asked for again"
        );
        assert_eq!(plan.changes.len(), 3);
    }

    #[test]
    fn a_stop_value_revised_after_billing_yields_one_correction_for_the_difference() {
        let mut world = World::new();
        world.step(&[stopped(5, "TAG", 1000, 11_000)]);
        let plan = world.step(&[stopped(5, "TAG", 1000, 12_500)]);
        let change = only(&plan);
        let [correction] = change.events.as_slice() else {
            panic!("{change:#?}")
        };
        assert_eq!(correction.wh, 1500);
        assert_eq!(correction.transaction_id, "steve-5-r2");
        assert_eq!(correction.subscription, "sub");
        assert_eq!(change.corrections(), 1);
        assert_eq!(world.ledger[&5].planned_wh, 11_500);
        assert!(world.plan(&[stopped(5, "TAG", 1000, 12_500)]).is_empty());

        // Back down: a negative correction, with an id of its own.
        let plan = world.step(&[stopped(5, "TAG", 1000, 11_000)]);
        assert_eq!(only(&plan).events[0].wh, -1500);
        assert_eq!(only(&plan).events[0].transaction_id, "steve-5-r3");
        let total: i64 = world.events[&5].iter().map(|e| e.event.wh).sum();
        assert_eq!(total, 10_000);
    }

    #[test]
    fn a_session_steve_lost_is_ignored_unless_it_was_billed() {
        let mut world = World::new();
        world.step(&[charging(1, "TAG"), stopped(2, "TAG", 0, 10)]);
        let plan = world.plan_with(&[], &[1, 2]);
        let change = only(&plan);
        assert_eq!(change.write.session.id, 1);
        assert_eq!(change.write.session.state, SessionState::Ignored);
        assert!(
            change
                .write
                .session
                .reason
                .as_deref()
                .unwrap()
                .contains("no longer has")
        );
    }

    #[test]
    fn an_approved_session_whose_event_lago_refused_sends_that_event_again() {
        let mut world = World::new();
        world.step(&[stopped(4, "TAG", 0, 700)]);
        // Lago refused it: the store moved the session to review and took the Wh back.
        let record = world.ledger.get_mut(&4).unwrap();
        record.state = SessionState::NeedsReview;
        record.planned_wh = 0;
        record.approved = true;
        world.events.get_mut(&4).unwrap()[0].status = EventStatus::Rejected;
        let plan = world.plan(&[stopped(4, "TAG", 0, 700)]);
        let change = only(&plan);
        assert_eq!(change.resend, ["steve-4"]);
        assert!(change.events.is_empty(), "no second event: {change:#?}");
        assert_eq!(change.write.session.state, SessionState::Billed);
        assert_eq!(change.write.session.planned_wh, 700);
    }

    #[test]
    fn energy_rounds_to_whole_wh_and_kwh_keeps_wh_precision() {
        let mut o = stopped(1, "T", 0, 0);
        o.stop_mwh = Some(1500);
        assert_eq!(o.energy_wh(), Some(2));
        o.stop_mwh = Some(1499);
        assert_eq!(o.energy_wh(), Some(1));
        o.stop_mwh = Some(-1500);
        assert_eq!(o.energy_wh(), Some(-2));
        assert_eq!(kwh(12_345).to_string(), "12.345");
        assert_eq!(kwh(-5).to_string(), "-0.005");
        assert_eq!(kwh(2000).to_string(), "2.0");
    }
}
