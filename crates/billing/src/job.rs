//! The billing job: one run reads StEvE, plans into the ledger, then drains the outbox into
//! Lago.
//!
//! A run, in order:
//!
//! 1. **Read StEvE.** The OCPP tags (for parent mappings); every active session; the sessions
//!    that started since the last windowed read (less an overlap, for clocks and late
//!    writes), or everything on the first run; on a slower rhythm, a wide sweep of the last
//!    weeks, which catches sessions StEvE learned of late (a charger that was offline sends
//!    its transactions with their old start times). A session the ledger follows as active
//!    that is no longer active is asked for by id, so a session longer than any window, or a
//!    zombie stopped a week late, is billed when it stops.
//! 2. **Plan** ([`crate::plan`]) with the ledger, the mappings and the subscriptions Lago
//!    reports for the customers involved, and write the plan: the sessions' new states and
//!    their events in the outbox, in one transaction per chunk, before anything is sent.
//! 3. **Send** every pending event (this run's and any earlier run left), in batches of at
//!    most 100, and record each outcome. An event is delivered once Lago accepted it or
//!    answered that its `transaction_id` exists; a batch Lago refuses for some of its events
//!    is sent again without them; a timeout or a dropped connection is settled by sending
//!    the same batch again, which Lago answers as duplicates for whatever it had applied.
//!
//! If StEvE cannot be read, the run still sends what is pending; if Lago cannot be reached,
//! the planned events wait in the outbox. Either way the run says so and nothing is lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::time::now_ms;
use ferry_store::BillingStore;
use ferry_store::billing::{
    BillingCursor, EventRecord, EventStatus, LedgerWrite, NewEvent, SessionRecord, SessionState,
};
use ferry_worker::cadence::Tier;
use ferry_worker::job::{FinalStatus, RunContext, RunOutcome, SyncJob};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Level;

use crate::lago::LagoClient;
use crate::outbox::Outbox;
use crate::plan::{self, Inputs, Mappings, Observed, Plan, Rules, SubscriptionBook};
use crate::steve::{SteveClient, SteveError, Transaction, TransactionQuery};

/// The job's name, as in `{"job": "billing"}`.
pub const JOB_NAME: &str = "billing";

/// Lago takes at most this many events in one batch.
pub const MAX_BATCH: usize = 100;

/// Chunks of planned events the outbox drain may lag behind the planner by.
const FRESH_BACKLOG: usize = 4;

/// Transactions asked for by id at once.
const ASK_CONCURRENCY: usize = 8;

/// Transaction ids a run asks for when it finds them missing between the ones it read; the
/// rest wait for the next run.
const MAX_GAP_PROBES: usize = 1000;

/// What asking StEvE for transactions by id found.
#[derive(Debug, Default)]
struct Asked {
    /// Ids StEvE does not have.
    missing: Vec<i64>,
    /// Ids whose request failed.
    failed: Vec<i64>,
}

/// How the job reads, plans and sends; [`Default`] suits a typical deployment.
#[derive(Debug, Clone)]
pub struct BillingOptions {
    pub rules: Rules,
    /// Each windowed read starts this long before the previous one ended.
    pub overlap: Duration,
    /// How often the wide sweep runs.
    pub sweep_every: Duration,
    /// How far back the wide sweep reads (by session start).
    pub sweep_span: Duration,
    /// The first run reads sessions that started from here; `None`: everything StEvE has.
    pub since_ms: Option<i64>,
    /// With activity (a session started or stopped) within this, the job is `idle`, else
    /// `dormant`.
    pub idle_after: Duration,
    /// Batches in flight to Lago at once.
    pub concurrency: usize,
    /// Sends of a batch in one run before its events wait for the next run, when Lago times
    /// out, drops the connection or answers 5xx.
    pub attempts: u32,
    /// The longest a run waits on Lago's rate limit before its events wait for the next run.
    pub max_rate_limit_wait: Duration,
    /// Sessions written per ledger transaction.
    pub ledger_chunk: usize,
}

impl Default for BillingOptions {
    fn default() -> BillingOptions {
        BillingOptions {
            rules: Rules::default(),
            overlap: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(24 * 3600),
            sweep_span: Duration::from_secs(30 * 24 * 3600),
            since_ms: None,
            idle_after: Duration::from_secs(24 * 3600),
            concurrency: 4,
            attempts: 3,
            max_rate_limit_wait: Duration::from_secs(60),
            ledger_chunk: 2000,
        }
    }
}

/// The billing job.
pub struct BillingJob {
    steve: SteveClient,
    lago: LagoClient,
    store: Arc<dyn BillingStore>,
    options: BillingOptions,
}

impl BillingJob {
    pub fn new(
        steve: SteveClient,
        lago: LagoClient,
        store: Arc<dyn BillingStore>,
        options: BillingOptions,
    ) -> BillingJob {
        BillingJob {
            steve,
            lago,
            store,
            options,
        }
    }
}

impl SyncJob for BillingJob {
    fn name(&self) -> &str {
        JOB_NAME
    }

    fn run<'a>(
        &'a self,
        ctx: &'a RunContext,
    ) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>> {
        Box::pin(self.run_once(ctx))
    }
}

/// What a run did, as it goes.
#[derive(Debug, Default)]
struct Report {
    /// Events Lago accepted as new in this run.
    events_created: i64,
    /// Events Lago already had (sent by a run whose answer was lost), settled by this run.
    events_duplicate: i64,
    events_rejected: i64,
    /// Sessions whose billing state changed (or that got events) in this run.
    processed: HashSet<i64>,
    sessions_parked: i64,
    corrections: i64,
    errors: Vec<String>,
}

impl Report {
    fn error(&mut self, ctx: &RunContext, error: String) {
        ctx.log(Level::WARN, error.clone());
        self.errors.push(error);
    }

    fn outcome(self, activity: Option<Tier>) -> RunOutcome {
        let worked = self.events_created + self.events_duplicate > 0 || !self.processed.is_empty();
        let status = if self.errors.is_empty() {
            FinalStatus::Succeeded
        } else if worked || self.events_rejected > 0 || activity.is_some() {
            FinalStatus::Partial
        } else {
            FinalStatus::Failed
        };
        let counts: BTreeMap<String, i64> = [
            ("events_created", self.events_created),
            ("transactions_processed", self.processed.len() as i64),
            ("sessions_parked", self.sessions_parked),
            ("corrections", self.corrections),
            ("events_rejected", self.events_rejected),
            ("events_already_in_lago", self.events_duplicate),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        RunOutcome {
            status,
            counts,
            errors: self.errors,
            activity,
        }
    }
}

impl BillingJob {
    async fn run_once(&self, ctx: &RunContext) -> RunOutcome {
        let outbox = Outbox {
            lago: self.lago.clone(),
            store: self.store.clone(),
            options: self.options.clone(),
        };
        // The plan's events go out as soon as each chunk of it is written; after the plan,
        // whatever else is pending (whether or not StEvE could be read).
        let (fresh, planned) = mpsc::channel(FRESH_BACKLOG);
        let sending = Instant::now();
        let ((activity, mut report), drained) = tokio::join!(
            async {
                let mut report = Report::default();
                let activity = match self.read_and_plan(ctx, &mut report, fresh).await {
                    Ok(activity) => Some(activity),
                    Err(error) => {
                        report.error(ctx, error);
                        None
                    }
                };
                (activity, report)
            },
            outbox.drain(ctx, planned),
        );
        ctx.log(
            Level::DEBUG,
            format!(
                "Planned, sent and settled in {:.2}s.",
                sending.elapsed().as_secs_f64()
            ),
        );
        report.events_created += drained.accepted as i64;
        report.events_duplicate += drained.duplicates as i64;
        report.events_rejected += drained.rejected as i64;
        report.processed.extend(drained.sessions_changed);
        for error in drained.errors {
            if !error.starts_with("Lago refused event") {
                ctx.log(Level::WARN, error.clone());
            }
            report.errors.push(error);
        }
        report.outcome(activity)
    }

    /// Reads StEvE, plans, and writes the plan into the ledger; returns the activity the
    /// sessions show, for the cadence.
    async fn read_and_plan(
        &self,
        ctx: &RunContext,
        report: &mut Report,
        fresh: mpsc::Sender<Vec<EventRecord>>,
    ) -> Result<Tier, String> {
        let store = &self.store;
        let cursor = store
            .cursor()
            .await
            .map_err(|e| format!("Reading the billing ledger failed: {e}"))?;
        let now = now_ms();
        let parents = self.tag_parents().await?;
        let sweep_due = cursor
            .last_sweep_ms
            .is_none_or(|at| now - at >= millis(self.options.sweep_every));
        let mut seen: BTreeMap<i64, Observed> = BTreeMap::new();
        let reading = Instant::now();
        for query in self.queries(&cursor, now, sweep_due) {
            for transaction in self
                .steve
                .transactions(&query)
                .await
                .map_err(steve_failed)?
            {
                let observed = observe(&transaction);
                // Reads a moment apart may disagree on a session that just stopped; the
                // later news wins.
                match seen.get(&observed.id) {
                    Some(known) if known.is_stopped() || !observed.is_stopped() => {}
                    _ => {
                        seen.insert(observed.id, observed);
                    }
                }
            }
        }
        ctx.log(
            Level::DEBUG,
            format!(
                "Read {} transactions from StEvE in {:.2}s.",
                seen.len(),
                reading.elapsed().as_secs_f64()
            ),
        );
        let planning = Instant::now();
        let ids: Vec<i64> = seen.keys().copied().collect();
        let mut ledger: HashMap<i64, SessionRecord> = HashMap::new();
        for chunk in ids.chunks(5000) {
            for session in store.sessions(chunk).await.map_err(ledger_failed)? {
                ledger.insert(session.id, session);
            }
        }
        for session in store.open_sessions().await.map_err(ledger_failed)? {
            ledger.entry(session.id).or_insert(session);
        }
        let max_id = self.probe_gaps(&cursor, &mut seen, report, ctx).await;
        if let Some(since) = self.options.since_ms {
            // The operator bills sessions that started from `since` on; one recorded late with
            // an earlier start is not among them.
            seen.retain(|_, o| o.started_at_ms.is_none_or(|start| start >= since));
        }
        let vanished = self.follow_up(&ledger, &mut seen, report, ctx).await;
        let observed: Vec<Observed> = seen.into_values().collect();

        let mappings = Mappings::new(store.mappings().await.map_err(ledger_failed)?, parents);
        let events = self
            .events_of(&plan::events_needed(&observed, &ledger))
            .await?;
        let empty = SubscriptionBook::new();
        let mut inputs = Inputs {
            observed: &observed,
            vanished: &vanished,
            ledger: &ledger,
            events: &events,
            mappings: &mappings,
            subscriptions: &empty,
            rules: &self.options.rules,
        };
        let book = self
            .subscriptions(&plan::customers_needed(&inputs), report, ctx)
            .await;
        inputs.subscriptions = &book;
        let plan = plan::plan(&inputs);
        ctx.log(
            Level::DEBUG,
            format!(
                "Planned {} session change(s) in {:.2}s.",
                plan.changes.len(),
                planning.elapsed().as_secs_f64()
            ),
        );
        let activity = self.activity(&observed, &cursor, now);
        let cursor = BillingCursor {
            window_end_ms: Some(now),
            last_sweep_ms: if sweep_due {
                Some(now)
            } else {
                cursor.last_sweep_ms
            },
            last_activity_ms: latest_activity(&observed).max(cursor.last_activity_ms),
            max_id,
        };
        let writing = Instant::now();
        self.write(ctx, plan, cursor, report, &fresh).await?;
        ctx.log(
            Level::DEBUG,
            format!(
                "Wrote the plan to the ledger in {:.2}s.",
                writing.elapsed().as_secs_f64()
            ),
        );
        Ok(activity)
    }

    /// StEvE's tag → parent tag.
    async fn tag_parents(&self) -> Result<HashMap<String, String>, String> {
        let tags = self.steve.ocpp_tags().await.map_err(steve_failed)?;
        Ok(tags
            .into_iter()
            .filter_map(|tag| Some((tag.id_tag, tag.parent_id_tag?)))
            .collect())
    }

    /// The reads of one run: the active sessions, the window since the last read (or
    /// everything from `since` on the first run), and the wide sweep when it is due.
    fn queries(&self, cursor: &BillingCursor, now: i64, sweep_due: bool) -> Vec<TransactionQuery> {
        // StEvE's `to` is inclusive and read on its clock; a day ahead covers any skew.
        let to = now + 24 * 3600 * 1000;
        let mut queries = vec![TransactionQuery::active()];
        match (cursor.window_end_ms, self.options.since_ms) {
            (Some(end), _) => queries.push(
                TransactionQuery::all().started_between_ms(end - millis(self.options.overlap), to),
            ),
            (None, Some(since)) => {
                queries.push(TransactionQuery::all().started_between_ms(since, to))
            }
            (None, None) => queries.push(TransactionQuery::all()),
        }
        if sweep_due && cursor.window_end_ms.is_some() {
            let from = now - millis(self.options.sweep_span);
            let from = self.options.since_ms.map_or(from, |since| from.max(since));
            queries.push(TransactionQuery::all().started_between_ms(from, to));
        }
        queries
    }

    /// Sessions the ledger follows that this run's reads did not show: the ones it saw
    /// active are asked for by id (they stopped, or StEvE lost them); parked ones and those
    /// an operator approved are planned again from the ledger's values. Returns the ids
    /// StEvE no longer has.
    async fn follow_up(
        &self,
        ledger: &HashMap<i64, SessionRecord>,
        seen: &mut BTreeMap<i64, Observed>,
        report: &mut Report,
        ctx: &RunContext,
    ) -> Vec<i64> {
        let mut ask: Vec<i64> = Vec::new();
        for session in ledger.values() {
            if seen.contains_key(&session.id) {
                continue;
            }
            match session.state {
                SessionState::Active => ask.push(session.id),
                SessionState::Parked | SessionState::NeedsReview => {
                    seen.insert(session.id, remembered(session));
                }
                SessionState::Billed | SessionState::Ignored => {}
            }
        }
        ask.sort_unstable();
        let asked = self.ask_by_id(ask, seen, report, ctx).await;
        asked.missing
    }

    /// Transaction ids StEvE gave out since the last run that no read showed: sessions it
    /// recorded late, with start times before the window (a charger that was offline sends
    /// its transactions when it is back). StEvE numbers transactions as it records them, so
    /// each id between the last run's highest and this run's is asked for by id, and so are
    /// the ids just above the highest, until a few in a row are missing. At most
    /// [`MAX_GAP_PROBES`] a run; returns the cursor's new `max_id`, below any id still to ask.
    async fn probe_gaps(
        &self,
        cursor: &BillingCursor,
        seen: &mut BTreeMap<i64, Observed>,
        report: &mut Report,
        ctx: &RunContext,
    ) -> Option<i64> {
        let top = seen.keys().next_back().copied();
        let known = match cursor.max_id {
            Some(known) => known,
            // The first read took everything there was (or everything since a day the
            // operator chose): nothing below it is new.
            None if cursor.window_end_ms.is_none() => return top,
            // Every run so far found StEvE empty: every id is new.
            None => 0,
        };
        let top = top.unwrap_or(known).max(known);
        let gaps: Vec<i64> = (known + 1..top)
            .filter(|id| !seen.contains_key(id))
            .take(MAX_GAP_PROBES)
            .collect();
        let capped = gaps.len() == MAX_GAP_PROBES;
        let last_asked = gaps.last().copied();
        let asked = self.ask_by_id(gaps, seen, report, ctx).await;
        let mut failed = asked.failed;
        let mut reached = if capped {
            last_asked.unwrap_or(top)
        } else {
            top
        };
        if !capped {
            // Above the highest id: a quiet site's late sessions have no newer one to show
            // the gap.
            let mut next = top + 1;
            while next - top <= MAX_GAP_PROBES as i64 {
                let ids: Vec<i64> = (next..next + ASK_CONCURRENCY as i64).collect();
                let asked = self.ask_by_id(ids, seen, report, ctx).await;
                let found = seen.range(next..).next_back().map(|(id, _)| *id);
                failed.extend(asked.failed);
                match found {
                    Some(highest) if failed.is_empty() => {
                        reached = highest;
                        next += ASK_CONCURRENCY as i64;
                    }
                    _ => break,
                }
            }
        }
        if let Some(first_failed) = failed.iter().min() {
            reached = reached.min(first_failed - 1);
        }
        Some(reached.max(known))
    }

    /// Asks StEvE for each transaction by id (a few at a time); what it has goes into
    /// `seen`.
    async fn ask_by_id(
        &self,
        ids: Vec<i64>,
        seen: &mut BTreeMap<i64, Observed>,
        report: &mut Report,
        ctx: &RunContext,
    ) -> Asked {
        let mut asked = Asked::default();
        let mut tasks = JoinSet::new();
        let mut ids = ids.into_iter();
        loop {
            while tasks.len() < ASK_CONCURRENCY {
                let Some(id) = ids.next() else { break };
                let steve = self.steve.clone();
                tasks.spawn(async move {
                    let query = TransactionQuery::all().transaction_pk(id);
                    (id, steve.transactions(&query).await)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((id, Ok(found))) => match found.iter().find(|t| t.id == id) {
                    Some(transaction) => {
                        seen.insert(id, observe(transaction));
                    }
                    None => asked.missing.push(id),
                },
                Ok((id, Err(error))) => {
                    asked.failed.push(id);
                    report.error(
                        ctx,
                        format!(
                            "Asking StEvE for session {id} failed; the next run asks again: {error}"
                        ),
                    );
                }
                Err(error) => report.error(ctx, format!("A StEvE request task failed: {error}")),
            }
        }
        asked.missing.sort_unstable();
        asked.failed.sort_unstable();
        asked
    }

    async fn events_of(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<EventRecord>>, String> {
        let mut events: HashMap<i64, Vec<EventRecord>> = HashMap::new();
        if ids.is_empty() {
            return Ok(events);
        }
        for event in self
            .store
            .session_events(ids)
            .await
            .map_err(ledger_failed)?
        {
            events
                .entry(event.event.session_id)
                .or_default()
                .push(event);
        }
        Ok(events)
    }

    /// What Lago says about each customer's subscriptions. A failure is kept in the book
    /// (the sessions concerned wait) and reported; it does not end the run.
    async fn subscriptions(
        &self,
        customers: &[String],
        report: &mut Report,
        ctx: &RunContext,
    ) -> SubscriptionBook {
        let mut book = SubscriptionBook::new();
        let mut tasks = JoinSet::new();
        let mut pending = customers.iter().cloned();
        loop {
            while tasks.len() < self.options.concurrency.max(1) {
                let Some(customer) = pending.next() else {
                    break;
                };
                let lago = self.lago.clone();
                tasks.spawn(async move {
                    let answer = lago.subscriptions(&customer).await;
                    (customer, answer)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok((customer, Ok(subscriptions))) => {
                    book.insert(customer, Ok(subscriptions));
                }
                Ok((customer, Err(error))) => {
                    let text = error.to_string();
                    report.error(
                        ctx,
                        format!(
                            "Reading customer {customer:?}'s subscriptions from Lago failed; \
                             their sessions wait for the next run: {text}"
                        ),
                    );
                    book.insert(customer, Err(text));
                }
                Err(error) => report.error(ctx, format!("A Lago request task failed: {error}")),
            }
        }
        book
    }

    /// Writes the plan in chunks (each one transaction); the cursor goes with the last, so a
    /// run that dies half-way reads the same window again.
    async fn write(
        &self,
        ctx: &RunContext,
        plan: Plan,
        cursor: BillingCursor,
        report: &mut Report,
        fresh: &mpsc::Sender<Vec<EventRecord>>,
    ) -> Result<(), String> {
        let chunk = self.options.ledger_chunk.max(1);
        let total = plan.changes.len();
        let mut changes = plan.changes;
        let mut written = 0;
        loop {
            let rest = changes.split_off(chunk.min(changes.len()));
            let part = Plan { changes };
            let mut write: LedgerWrite = part.ledger_write();
            if rest.is_empty() {
                write.cursor = Some(cursor);
            }
            let done = self
                .store
                .write_ledger(Some(ctx.run_id()), &write)
                .await
                .map_err(|e| format!("Writing the billing ledger failed: {e}"))?;
            let stale: HashSet<i64> = done.stale.iter().copied().collect();
            for change in part
                .changes
                .iter()
                .filter(|c| !stale.contains(&c.write.session.id))
            {
                if change.is_processed() {
                    report.processed.insert(change.write.session.id);
                }
                if change.write.session.state == SessionState::Parked
                    && change.from != Some(SessionState::Parked)
                {
                    report.sessions_parked += 1;
                }
                report.corrections += change.corrections() as i64;
            }
            if !stale.is_empty() {
                ctx.log(
                    Level::INFO,
                    format!(
                        "{} session(s) changed under this run (another worker); the next run \
                         plans them again",
                        stale.len()
                    ),
                );
            }
            let events: Vec<EventRecord> = part
                .changes
                .iter()
                .filter(|c| !stale.contains(&c.write.session.id))
                .flat_map(|c| c.events.iter())
                .map(|event| pending(event, ctx.run_id()))
                .collect();
            // The outbox drain takes them from here; if it has gone, they wait in the ledger.
            if !events.is_empty() {
                let _ = fresh.send(events).await;
            }
            written += part.changes.len();
            if total > chunk {
                ctx.log(
                    Level::INFO,
                    format!("Planned {written} of {total} sessions."),
                );
            }
            if rest.is_empty() {
                return Ok(());
            }
            changes = rest;
        }
    }

    /// The cadence's reading: `active` while a session charges or one stopped since the
    /// last read; `idle` with a start or stop within `idle_after`; else `dormant`.
    fn activity(&self, observed: &[Observed], cursor: &BillingCursor, now: i64) -> Tier {
        let charging = observed.iter().any(|o| !o.is_stopped());
        let stopped_since = cursor.window_end_ms.is_some_and(|since| {
            observed
                .iter()
                .any(|o| o.stopped_at_ms.is_some_and(|at| at > since))
        });
        if charging || stopped_since {
            return Tier::Active;
        }
        let latest = latest_activity(observed).max(cursor.last_activity_ms);
        match latest {
            Some(at) if now - at <= millis(self.options.idle_after) => Tier::Idle,
            _ => Tier::Dormant,
        }
    }
}

/// A planned event as the outbox holds it until it is sent.
fn pending(event: &NewEvent, run_id: i64) -> EventRecord {
    EventRecord {
        event: event.clone(),
        status: EventStatus::Pending,
        error: None,
        attempts: 0,
        created_run: Some(run_id),
        settled_run: None,
        created_at_ms: 0,
        settled_at_ms: None,
    }
}

/// A StEvE transaction as the planner reads it: values that cannot be read make the session
/// malformed, with the reason, rather than failing the run.
pub fn observe(transaction: &Transaction) -> Observed {
    let mut problems: Vec<String> = transaction.defect().into_iter().collect();
    let start_mwh = meter(
        transaction.start_value.as_deref(),
        "startValue",
        &mut problems,
    );
    let stopped = transaction.is_stopped();
    let stop_mwh = if stopped {
        meter(
            transaction.stop_value.as_deref(),
            "stopValue",
            &mut problems,
        )
    } else {
        None
    };
    Observed {
        id: transaction.id,
        charge_box_id: transaction.charge_box_id.clone().unwrap_or_default(),
        connector_id: transaction.connector_id.unwrap_or(0),
        id_tag: transaction.ocpp_id_tag.clone().unwrap_or_default(),
        started_at_ms: transaction.start_ms(),
        stopped,
        stopped_at_ms: transaction.stop_ms(),
        start_mwh,
        stop_mwh,
        malformed: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

fn meter(text: Option<&str>, field: &str, problems: &mut Vec<String>) -> Option<i64> {
    match text {
        None => {
            problems.push(format!("StEvE reports no {field} (null)"));
            None
        }
        Some(text) => {
            let value = crate::steve::parse_meter_mwh(text);
            if value.is_none() {
                problems.push(format!("{field} {text:?} is not a number of Wh"));
            }
            value
        }
    }
}

/// A session the ledger holds but this run did not read, as the ledger remembers it.
fn remembered(session: &SessionRecord) -> Observed {
    Observed {
        id: session.id,
        charge_box_id: session.charge_box_id.clone(),
        connector_id: session.connector_id,
        id_tag: session.id_tag.clone(),
        started_at_ms: session.started_at_ms,
        stopped: session.stopped_at_ms.is_some() || session.state != SessionState::Active,
        stopped_at_ms: session.stopped_at_ms,
        start_mwh: session.start_mwh,
        stop_mwh: session.stop_mwh,
        malformed: None,
    }
}

fn latest_activity(observed: &[Observed]) -> Option<i64> {
    observed
        .iter()
        .flat_map(|o| [o.started_at_ms, o.stopped_at_ms])
        .flatten()
        .max()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn steve_failed(error: SteveError) -> String {
    format!("Reading StEvE failed; sessions are read again by the next run: {error}")
}

fn ledger_failed(error: ferry_store::StoreError) -> String {
    format!("The billing ledger could not be read or written: {error}")
}
