//! The four-step cycle: health, push, pull, report.
//!
//! HTTP runs on the async executor; every SQLite step runs in `spawn_blocking` against the
//! replica. A cycle never panics its caller and never returns an error: whatever goes wrong is
//! written into its [`CycleReport`] (and the report into the replica's log).

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::local::{CycleReport, CycleTrigger};
use ferry_proto::{Health, PushRequest, PushResponse, RejectCode};

use crate::client::Inner;
use crate::error::{Error, Result};
use crate::http::Http;
use crate::replica::{
    ApplyMode, ApplyStats, DirtyRow, PulledPage, PushBatch, PushCursor, PushLimit, Replica,
    now_text,
};

/// The start of a report's error when the cycle failed because the device is offline: the
/// health check failed, or the server could not be reached.
pub const OFFLINE_PREFIX: &str = "Offline: ";

/// Whether a failed report means the device was offline (rather than that something went
/// wrong). Works for reports read back from the log too.
pub fn is_offline_error(report: &CycleReport) -> bool {
    !report.ok
        && report
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(OFFLINE_PREFIX))
}

/// Which step of a cycle is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Push,
    Pull,
}

/// Progress of a cycle, for a progress bar on a long first sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Rows pushed (confirmed or rejected) or pulled so far in this phase.
    pub done: u64,
    /// The phase's total when it is known (push knows it; a pull does not).
    pub total: Option<u64>,
}

/// Counts that go into the report, kept up to date as the cycle goes so that a failed cycle
/// still reports what it did.
#[derive(Debug, Default)]
struct Counts {
    pushed: u64,
    pulled: u64,
    conflicts: u64,
    /// Rows the server rejected, with the first rejection's description.
    rejected: u64,
    first_rejection: Option<String>,
}

/// One full cycle: health, push, pull.
pub(crate) async fn sync(
    inner: &Arc<Inner>,
    trigger: CycleTrigger,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> CycleReport {
    let _one_at_a_time = inner.cycle.lock().await;
    let mut cycle = Cycle::start(inner, progress);
    let outcome = cycle.full().await;
    cycle.finish(trigger, outcome).await
}

/// Pull only, from the beginning, the cloud authoritative. A pull without `since` is the whole
/// tenant snapshot, this device's own rows included (contract v1.1), so afterwards every row
/// the server holds is here at the server's version. It is also the remedy for a file
/// restored from a backup: its saved cursor is older than rows it pushed after the backup,
/// and the incremental pulls of its normal cycles leave its own rows out, so only a pull from
/// the beginning brings those back.
pub(crate) async fn force_pull(
    inner: &Arc<Inner>,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> CycleReport {
    let _one_at_a_time = inner.cycle.lock().await;
    let mut cycle = Cycle::start(inner, progress);
    let outcome = cycle.pull_only().await;
    cycle.finish(CycleTrigger::ForcePull, outcome).await
}

/// One running cycle.
struct Cycle<'a> {
    inner: &'a Arc<Inner>,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
    started_at: String,
    clock: Instant,
    counts: Counts,
    /// The size of push batches: the options', until the server refuses one as too large.
    /// Learned for this cycle only, so a server whose limits are raised gets larger batches
    /// again from the next cycle.
    push_limit: PushLimit,
}

impl<'a> Cycle<'a> {
    fn start(inner: &'a Arc<Inner>, progress: &'a (dyn Fn(Progress) + Send + Sync)) -> Self {
        Cycle {
            inner,
            progress,
            started_at: now_text(),
            clock: Instant::now(),
            counts: Counts::default(),
            push_limit: inner.options.push_limit(),
        }
    }

    async fn full(&mut self) -> Result<()> {
        let health = self.check_health().await?;
        let device_hash = self.check_schema(&health).await?;
        self.push(&device_hash, &health).await?;
        self.pull(ApplyMode::LastWriteWins).await
    }

    async fn pull_only(&mut self) -> Result<()> {
        let health = self.check_health().await?;
        self.check_schema(&health).await?;
        self.pull(ApplyMode::CloudWins).await
    }

    /// Step 1: the server answers its health check within the health timeout, or the device
    /// is offline.
    async fn check_health(&self) -> Result<Health> {
        let http = &self.inner.http;
        match http.health(self.inner.options.health_timeout).await {
            Ok(health) if health.status == "ok" => Ok(health),
            Ok(health) => Err(Error::Offline {
                url: http.base().to_string(),
                reason: format!("its health check says {:?}", health.status),
            }),
            Err(Error::Offline { url, reason }) => Err(Error::Offline { url, reason }),
            // An answer the client cannot read still means no usable server.
            Err(other) => Err(Error::Offline {
                url: http.base().to_string(),
                reason: other.to_string(),
            }),
        }
    }

    /// The device's schema (as the app's file has it now) must be the server's. When the
    /// server's has grown (new tables, new columns), the device adopts it first: its pending
    /// changes stay and go out in this cycle.
    async fn check_schema(&self, health: &Health) -> Result<String> {
        let device = with_replica(self.inner, |r| r.schema_hash()).await?;
        if health.schema_hash.is_empty() || health.schema_hash.eq_ignore_ascii_case(&device) {
            return Ok(device);
        }
        let server = self.inner.http.schema().await?;
        let added = with_replica(self.inner, move |r| r.adopt_schema(&server.ddl)).await?;
        if !added.is_empty() {
            tracing::info!(%added, "The device adopted the server's grown schema.");
        }
        let device = with_replica(self.inner, |r| r.schema_hash()).await?;
        if !health.schema_hash.eq_ignore_ascii_case(&device) {
            return Err(Error::SchemaMismatch {
                device,
                server: health.schema_hash.clone(),
            });
        }
        Ok(device)
    }

    /// Step 2: every dirty row and tombstone, parents first, in batches bounded by rows and
    /// bytes; confirmed rows are stamped clean, rejected ones stay dirty. Rows that reference
    /// each other in a cycle go in one batch (see `Replica::next_push_batch`). Rows rejected
    /// for a missing parent are tried again while that makes progress (the parent may have
    /// been in a later batch), a group's rows again in one batch. A batch the server refuses
    /// as too large is split (see [`Cycle::deliver`]).
    async fn push(&mut self, device_hash: &str, health: &Health) -> Result<()> {
        let total = with_replica(self.inner, |r| r.pending()).await?;
        if total == 0 {
            return Ok(());
        }
        self.report_progress(Phase::Push, 0, Some(total));
        let inner = self.inner;
        let mut cursor = PushCursor::default();
        let mut sent = 0_u64;
        let mut confirmed_in_pass = 0_u64;
        let mut missing_parent: Vec<(DirtyRow, String)> = Vec::new();
        let (mut batch, next_cursor) =
            stamp_and_read(inner, Vec::new(), cursor, self.push_limit).await?;
        cursor = next_cursor;
        // The previous batch's confirmed rows, stamped while the next batch is on its way.
        let mut to_stamp = Vec::new();
        // Rows of the batches answered so far; progress counts them once they are stamped.
        let mut answered = 0_u64;
        while !batch.rows.is_empty() {
            let size = batch.rows.len() as u64;
            sent += size;
            let pending = total.saturating_sub(sent);
            let limit = self.push_limit;
            // While the batch is on its way, the replica stamps the one before and reads the
            // next one (keyset order keeps them apart). A batch is sent only once the one
            // before has its answer, so the server sees them in order.
            let (delivered, next) = tokio::join!(
                self.deliver(batch, pending, device_hash, health),
                stamp_and_read(inner, std::mem::take(&mut to_stamp), cursor, limit)
            );
            (batch, cursor) = next?;
            if answered > 0 {
                self.report_progress(Phase::Push, answered, Some(total.max(sent)));
            }
            let result = delivered?;
            answered += size;
            to_stamp = result.confirmed;
            confirmed_in_pass += result.confirmed_count;
            missing_parent.extend(result.missing_parent);
        }
        if !to_stamp.is_empty() {
            with_replica(self.inner, move |r| r.stamp(&to_stamp)).await?;
        }
        if answered > 0 {
            self.report_progress(Phase::Push, answered, Some(total.max(sent)));
        }

        // A row whose parent came in a later batch (or later in a chain of self-references)
        // goes through once its parent is there: try again while a pass makes progress.
        let mut progress = confirmed_in_pass > 0;
        while !missing_parent.is_empty() && progress {
            tracing::info!(
                rows = missing_parent.len(),
                "Pushing rows rejected for a missing parent again."
            );
            let mut still_missing = Vec::new();
            let mut confirmed = 0;
            let chunks = retry_chunks(
                &missing_parent,
                self.push_limit,
                |(row, _)| row.group(),
                |(row, _)| row.size(),
            );
            for chunk in chunks {
                let rows: Vec<DirtyRow> = chunk.iter().map(|(row, _)| row.clone()).collect();
                let batch = with_replica(self.inner, move |r| r.reread(&rows)).await?;
                if batch.rows.is_empty() {
                    continue;
                }
                let result = self.deliver(batch, 0, device_hash, health).await?;
                if !result.confirmed.is_empty() {
                    let rows = result.confirmed;
                    with_replica(self.inner, move |r| r.stamp(&rows)).await?;
                }
                confirmed += result.confirmed_count;
                still_missing.extend(result.missing_parent);
            }
            progress = confirmed > 0;
            missing_parent = still_missing;
        }
        if let Some((_, description)) = missing_parent.first() {
            self.counts
                .first_rejection
                .get_or_insert_with(|| description.clone());
        }
        self.counts.rejected += missing_parent.len() as u64;
        Ok(())
    }

    /// Pushes one batch and sorts its rows by their outcome. The server, or a proxy in front of
    /// it, may refuse the batch as too large (`413`) when its limits are below the options'
    /// batch sizes: then the batch is split in about two halves, never splitting a group, and
    /// the pieces are pushed in turn, each split again while it is refused, down to one row or
    /// one group. From then on the cycle's batches are split before they are sent (and read)
    /// to what the server's answer says it takes, or, when it does not say, to the size of
    /// the halves. A row or group refused on its own is rejected: it stays dirty, the report
    /// names it and the limit, and it is tried again next cycle (once a cycle: the server may
    /// take it once its limits are raised).
    async fn deliver(
        &mut self,
        batch: PushBatch,
        pending: u64,
        device_hash: &str,
        health: &Health,
    ) -> Result<PushedBatch> {
        let mut delivered = PushedBatch::default();
        // Pieces to send, the next one last.
        let mut pieces = vec![batch];
        while let Some(mut piece) = pieces.pop() {
            if !self.push_limit.holds(&piece) {
                // Larger than the server was found to take: split before it is refused again.
                let mut smaller = split(piece, self.push_limit);
                piece = smaller.remove(0);
                pieces.extend(smaller.into_iter().rev());
            }
            let PushBatch { changes, rows, .. } = piece;
            let waiting: usize = pieces.iter().map(|p| p.rows.len()).sum();
            let request = self.push_request(changes, pending + waiting as u64, device_hash);
            let refusal = match self.send(&request, device_hash, health).await {
                Ok(response) => {
                    delivered.add(self.sort_results(&request, rows, response)?);
                    continue;
                }
                Err(error @ Error::TooLarge { .. }) => error,
                Err(other) => return Err(other),
            };
            let mut halves = halve(PushBatch::of(request.changes, rows));
            if halves.len() > 1 {
                self.learn_limit(&halves, &refusal);
                pieces.extend(halves.into_iter().rev());
            } else if let Some(alone) = halves.pop() {
                self.too_large(&alone, &refusal);
            }
        }
        Ok(delivered)
    }

    /// Makes the cycle's later batches no larger than what the server refused, `halves`, says
    /// it takes: its limit when its answer names one, the halves' size otherwise.
    fn learn_limit(&mut self, halves: &[PushBatch], refusal: &Error) {
        let Error::TooLarge {
            limit_bytes,
            limit_changes,
            ..
        } = refusal
        else {
            return;
        };
        let largest = |size: fn(&PushBatch) -> usize| halves.iter().map(size).max().unwrap_or(1);
        let limit = &mut self.push_limit;
        match (limit_bytes, limit_changes) {
            (Some(bytes), _) => {
                // The body holds a little more than its changes.
                let bytes = usize::try_from(*bytes).unwrap_or(usize::MAX);
                limit.bytes = limit
                    .bytes
                    .min(bytes.saturating_sub(REQUEST_OVERHEAD).max(1));
            }
            (None, Some(changes)) => {
                let changes = usize::try_from(*changes).unwrap_or(usize::MAX);
                limit.rows = limit.rows.min(changes.max(1));
            }
            (None, None) => {
                limit.rows = limit.rows.min(largest(|b| b.rows.len()));
                limit.bytes = limit.bytes.min(largest(|b| b.bytes));
            }
        }
        tracing::info!(
            rows = limit.rows,
            bytes = limit.bytes,
            "The server refused a push as too large; it is sent in smaller pieces, and the \
             rest of this cycle's batches are read smaller."
        );
    }

    /// A row, or a group of rows that must go together, that the server refused as too large
    /// on its own: rejected for this cycle, it stays dirty.
    fn too_large(&mut self, alone: &PushBatch, refusal: &Error) {
        let Some(first) = alone.changes.first() else {
            return;
        };
        let pk = serde_json::Value::Object(first.pk.clone());
        let what = match alone.changes.len() {
            1 => format!("{} {pk}", first.table),
            n => format!(
                "{} {pk} and the {} other row(s) that reference it in a cycle",
                first.table,
                n - 1
            ),
        };
        let limit = match refusal {
            Error::TooLarge {
                limit_bytes: Some(bytes),
                ..
            } => format!("the server's limit of {bytes} bytes per push request"),
            Error::TooLarge {
                limit_changes: Some(changes),
                ..
            } => format!("the server's limit of {changes} changes per push request"),
            _ => "the server's limit per push request".to_string(),
        };
        let description = format!(
            "{what}: payload_too_large: {} bytes of JSON, over {limit}",
            alone.bytes
        );
        tracing::warn!(
            table = %first.table,
            %pk,
            rows = alone.rows.len(),
            bytes = alone.bytes,
            error = %refusal,
            "The server refused a pushed row as too large even on its own; it stays dirty."
        );
        self.counts.rejected += alone.rows.len() as u64;
        self.counts.first_rejection.get_or_insert(description);
    }

    fn push_request(
        &self,
        changes: Vec<ferry_proto::RowChange>,
        pending: u64,
        device_hash: &str,
    ) -> PushRequest {
        PushRequest {
            device_id: self.inner.device_id.clone(),
            schema_hash: device_hash.to_string(),
            changes,
            pending,
        }
    }

    /// Sends one push request; a 409 is the schema mismatch it stands for.
    async fn send(
        &self,
        request: &PushRequest,
        device_hash: &str,
        health: &Health,
    ) -> Result<PushResponse> {
        match self.inner.http.push(request).await {
            Err(Error::Server { status: 409, .. }) => Err(Error::SchemaMismatch {
                device: device_hash.to_string(),
                server: health.schema_hash.clone(),
            }),
            other => other,
        }
    }

    /// Sorts a batch's rows by their outcome: confirmed (to stamp), rejected for a missing
    /// parent (to try again), or rejected for good (counted, and they stay dirty).
    fn sort_results(
        &mut self,
        request: &PushRequest,
        rows: Vec<DirtyRow>,
        response: PushResponse,
    ) -> Result<PushedBatch> {
        if response.results.len() != rows.len() {
            return Err(Error::Protocol {
                what: "push".into(),
                reason: format!(
                    "{} results for {} changes",
                    response.results.len(),
                    rows.len()
                ),
            });
        }
        let mut confirmed = Vec::with_capacity(rows.len());
        let mut missing_parent = Vec::new();
        for ((row, change), result) in rows
            .into_iter()
            .zip(&request.changes)
            .zip(&response.results)
        {
            if result.outcome.is_confirmed() {
                confirmed.push(row);
                continue;
            }
            let code = result.code.map_or("rejected", RejectCode::as_str);
            let message = result.message.as_deref().unwrap_or("no reason given");
            let pk = serde_json::Value::Object(change.pk.clone());
            tracing::warn!(
                table = %change.table,
                %pk,
                code,
                message,
                "The server rejected a pushed row; it stays dirty."
            );
            let description = format!("{} {pk}: {code}: {message}", change.table);
            if result.code == Some(RejectCode::FkViolation) {
                missing_parent.push((row, description));
            } else {
                self.counts.rejected += 1;
                self.counts.first_rejection.get_or_insert(description);
            }
        }
        let confirmed_count = confirmed.len() as u64;
        self.counts.pushed += confirmed_count;
        Ok(PushedBatch {
            confirmed,
            confirmed_count,
            missing_parent,
        })
    }

    /// Step 3: pages after the saved cursor (from the beginning for a force pull) until the
    /// server has no more. A fetcher keeps requesting, downloading and parsing pages into a
    /// short queue while the replica applies them, so neither the server nor the device waits
    /// for the other.
    ///
    /// Each page's cursor is saved with its rows. The server marks the cursors of a pull from
    /// the beginning that more pages follow, so a cycle that resumes such a pull after a crash
    /// still gets the device's own rows; the last page's cursor is a plain incremental one,
    /// so the cycles after a snapshot are incremental again. The client does not need to know
    /// which is which: cursors are opaque.
    async fn pull(&mut self, mode: ApplyMode) -> Result<()> {
        let since = match mode {
            ApplyMode::LastWriteWins => with_replica(self.inner, |r| r.cursor()).await?,
            ApplyMode::CloudWins => None,
        };
        let inner = self.inner;
        let limit = inner.options.pull_limit.max(1);
        let (pages_tx, mut pages_rx) = tokio::sync::mpsc::channel::<Result<PulledPage>>(2);
        let fetcher = fetch_pages(&inner.http, since, limit, pages_tx);
        let counts = &mut self.counts;
        let progress = self.progress;
        let applier = async move {
            let mut stats = ApplyStats::default();
            progress(Progress {
                phase: Phase::Pull,
                done: 0,
                total: None,
            });
            while let Some(page) = pages_rx.recv().await {
                let page = page?;
                let rows = page.info().rows as u64;
                stats += with_replica(inner, move |r| r.apply_pulled(&page, mode)).await?;
                counts.pulled += rows;
                counts.conflicts = stats.conflicts;
                progress(Progress {
                    phase: Phase::Pull,
                    done: counts.pulled,
                    total: None,
                });
            }
            if stats.skipped > 0 {
                tracing::warn!(
                    rows = stats.skipped,
                    "Pulled rows for tables this device does not sync were skipped."
                );
            }
            Ok(())
        };
        // When the applier stops early (an error), the queue closes and the fetcher stops too.
        let ((), applied) = tokio::join!(fetcher, applier);
        applied
    }

    fn report_progress(&self, phase: Phase, done: u64, total: Option<u64>) {
        (self.progress)(Progress { phase, done, total });
    }

    /// Step 4: the report, written to the log; a cycle that got through push and pull also
    /// becomes the last sync time (rejected rows are reported, and retried next cycle).
    async fn finish(self, trigger: CycleTrigger, outcome: Result<()>) -> CycleReport {
        let counts = self.counts;
        let error = match &outcome {
            Err(e) => Some(error_sentence(e)),
            Ok(()) if counts.rejected > 0 => Some(format!(
                "The server rejected {} row(s), which stay dirty and are pushed again next \
                 cycle (first: {}).",
                counts.rejected,
                counts.first_rejection.as_deref().unwrap_or("unknown")
            )),
            Ok(()) => None,
        };
        let report = CycleReport {
            started_at: self.started_at,
            trigger,
            duration_ms: self.clock.elapsed().as_millis() as u64,
            pushed: counts.pushed,
            pulled: counts.pulled,
            rejected: counts.rejected,
            conflicts: counts.conflicts,
            ok: error.is_none(),
            error,
        };
        match &report.error {
            None => tracing::info!(
                trigger = trigger.as_str(),
                pushed = report.pushed,
                pulled = report.pulled,
                duration_ms = report.duration_ms,
                "The sync cycle completed."
            ),
            Some(error) => tracing::warn!(
                trigger = trigger.as_str(),
                error = %error,
                "The sync cycle did not complete."
            ),
        }
        let logged = report.clone();
        let completed = outcome.is_ok();
        let saved = with_replica(self.inner, move |r| {
            r.record_cycle(&logged)?;
            if completed {
                r.set_last_synced_at(&now_text())?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = saved {
            tracing::error!(error = %e, "The cycle report could not be saved.");
        }
        report
    }
}

/// What one pushed batch came to.
#[derive(Default)]
struct PushedBatch {
    /// Rows to stamp clean.
    confirmed: Vec<DirtyRow>,
    confirmed_count: u64,
    /// Rows rejected for a missing parent, with a description of the rejection.
    missing_parent: Vec<(DirtyRow, String)>,
}

impl PushedBatch {
    /// Adds what a piece of the same batch came to.
    fn add(&mut self, piece: PushedBatch) {
        self.confirmed.extend(piece.confirmed);
        self.confirmed_count += piece.confirmed_count;
        self.missing_parent.extend(piece.missing_parent);
    }
}

/// What a push request holds besides its changes (the device id, the schema hash, the pending
/// count), at most: kept free below a body limit the server names.
const REQUEST_OVERHEAD: usize = 1024;

/// Splits rows into chunks within `limit`, by the rows' count and `size`, but never splits the
/// rows of a group (rows that reference each other, read next to each other): a chunk ends
/// before a row or group that does not fit in it, and a row or group larger than `limit` is a
/// chunk of its own.
fn retry_chunks<T>(
    rows: &[T],
    limit: PushLimit,
    group: impl Fn(&T) -> Option<usize>,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let (mut end, mut bytes) = (0, 0);
        while end < rest.len() {
            // A row of no group, or the whole run of its group.
            let run = match group(&rest[end]) {
                None => 1,
                Some(g) => rest[end..]
                    .iter()
                    .take_while(|row| group(row) == Some(g))
                    .count(),
            };
            let run_bytes: usize = rest[end..end + run].iter().map(&size).sum();
            if !limit.takes((end, bytes), (run, run_bytes)) {
                break;
            }
            end += run;
            bytes += run_bytes;
        }
        let (chunk, after) = rest.split_at(end);
        chunks.push(chunk);
        rest = after;
    }
    chunks
}

/// A batch the server refused as too large, in pieces of about half its rows and half its
/// bytes; a batch of one row or one group comes back whole, alone.
fn halve(batch: PushBatch) -> Vec<PushBatch> {
    let half = PushLimit {
        rows: batch.rows.len().div_ceil(2),
        bytes: batch.bytes.div_ceil(2),
    };
    split(batch, half)
}

/// A batch in pieces within `limit`, in order, groups whole (see [`retry_chunks`]); at least
/// one piece.
fn split(batch: PushBatch, limit: PushLimit) -> Vec<PushBatch> {
    let lengths: Vec<usize> = retry_chunks(&batch.rows, limit, DirtyRow::group, DirtyRow::size)
        .iter()
        .map(|chunk| chunk.len())
        .collect();
    let mut changes = batch.changes.into_iter();
    let mut rows = batch.rows.into_iter();
    lengths
        .into_iter()
        .map(|n| {
            let piece_changes = changes.by_ref().take(n).collect();
            PushBatch::of(piece_changes, rows.by_ref().take(n).collect())
        })
        .collect()
}

/// An error as the report's sentence; offline errors start with [`OFFLINE_PREFIX`].
fn error_sentence(error: &Error) -> String {
    let text = error.to_string();
    let mut sentence = if error.is_offline() {
        format!("{OFFLINE_PREFIX}{text}")
    } else {
        let mut chars = text.chars();
        match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => text,
        }
    };
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    sentence
}

/// Stamps `confirmed` (rows of an earlier batch), then reads the next push batch after
/// `cursor`; hands the cursor back with it.
async fn stamp_and_read(
    inner: &Arc<Inner>,
    confirmed: Vec<DirtyRow>,
    mut cursor: PushCursor,
    limit: PushLimit,
) -> Result<(PushBatch, PushCursor)> {
    with_replica(inner, move |r| {
        if !confirmed.is_empty() {
            r.stamp(&confirmed)?;
        }
        let batch = r.next_push_batch(&mut cursor, limit)?;
        Ok((batch, cursor))
    })
    .await
}

/// Fetches and parses pages after `since` into `pages` until the server has no more, the
/// queue closes, or an error (which goes into the queue).
async fn fetch_pages(
    http: &Http,
    mut since: Option<String>,
    limit: u32,
    pages: tokio::sync::mpsc::Sender<Result<PulledPage>>,
) {
    let mut first = true;
    loop {
        let page = match fetch_page(http, since.as_deref(), limit).await {
            // The server no longer knows the cursor (its store was reset or restored): start
            // over, with a snapshot that holds this device's own rows too. Re-applying rows the
            // device already has changes nothing.
            Err(Error::Server { code, .. })
                if first && code == "invalid_cursor" && since.is_some() =>
            {
                tracing::warn!(
                    "The server refused this device's pull cursor; pulling everything again."
                );
                since = None;
                continue;
            }
            page => page,
        };
        first = false;
        let next = match &page {
            // A page that moves nothing forward would be fetched forever.
            Ok(page) if page.info().has_more => {
                let info = page.info();
                let stuck = info.rows == 0 && since.as_deref() == Some(info.cursor.as_str());
                (!stuck).then(|| info.cursor.clone())
            }
            _ => None,
        };
        if pages.send(page).await.is_err() {
            return;
        }
        match next {
            Some(cursor) => since = Some(cursor),
            None => return,
        }
    }
}

/// Fetches one page and parses it off the async executor.
async fn fetch_page(http: &Http, since: Option<&str>, limit: u32) -> Result<PulledPage> {
    let body = http.pull(since, limit).await?;
    tokio::task::spawn_blocking(move || PulledPage::parse(body))
        .await
        .map_err(|e| Error::Task(format!("parsing a pulled page did not finish: {e}")))?
}

/// Runs replica work off the async executor.
pub(crate) async fn with_replica<T, F>(inner: &Arc<Inner>, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Replica) -> Result<T> + Send + 'static,
{
    let inner = Arc::clone(inner);
    tokio::task::spawn_blocking(move || {
        // A panic in earlier work rolled its transaction back; the replica is still sound.
        let mut replica = inner
            .replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut replica)
    })
    .await
    .map_err(|e| Error::Task(format!("replica work did not finish: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::{PushLimit, retry_chunks};

    #[test]
    fn retries_never_split_a_group() {
        // Rows by their group, 0 for none.
        let rows = [0, 1, 1, 1, 0, 0, 2, 2, 0];
        let group = |row: &usize| (*row > 0).then_some(*row);
        let chunks: Vec<&[usize]> = retry_chunks(&rows, PushLimit::rows(2), group, |_| 1);
        assert_eq!(chunks, [&[0][..], &[1, 1, 1], &[0, 0], &[2, 2], &[0]]);
        let all = retry_chunks(&rows, PushLimit::rows(100), group, |_| 1);
        assert_eq!(all, [&rows[..]]);
    }

    #[test]
    fn retries_fit_the_bytes_too() {
        // Rows by their size; 20 and 21 are a group.
        let rows = [3, 3, 9, 1, 20, 21, 2];
        let group = |row: &usize| (*row >= 20).then_some(20);
        let limit = PushLimit {
            rows: 100,
            bytes: 8,
        };
        let chunks: Vec<&[usize]> = retry_chunks(&rows, limit, group, |row| *row);
        assert_eq!(chunks, [&[3, 3][..], &[9], &[1], &[20, 21], &[2]]);
    }
}
