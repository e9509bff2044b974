//! `GET /api/admin/events` (viewer): Server-Sent Events for live consoles.
//!
//! The store says which record changed ([`StoreEvent`], from any process on PostgreSQL); this
//! stream reads the record again through the calls the API answers with and sends it:
//!
//! - `event: run`, data the run as `GET /api/admin/sync/runs` lists it;
//! - `event: state`, data the job's state as `GET /api/admin/sync/state` gives it;
//! - `event: device`, data the device's entry as `GET /api/admin/devices` lists it.
//!
//! Runs and states belong to the deployment (see `auth`), so only the deployment tenant's
//! operators get them; a tenant's devices go to its own operators only. A device's events are
//! coalesced: at most one per device a second, carrying its latest entry, however often it
//! pushes. A record sent again unchanged is left out. The stream opens with a comment and
//! sends one at least every [`KEEP_ALIVE`]; it ends when the server shuts down, and when the
//! store cannot be read (the console reconnects and reads everything again).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_store::{DEFAULT_TENANT, StoreEvent, StoreEvents};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::worker;
use crate::auth::ReadAccess;
use crate::{ApiError, AppState};

/// A comment at least this often keeps the stream (and the proxies on its way) open; the
/// contract asks for one every 15 s at most.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The least time between two events of one device.
const DEVICE_EVERY: Duration = Duration::from_secs(1);
/// Events a slow client may fall behind by; beyond it the stream waits for the client.
const CLIENT_BACKLOG: usize = 64;

pub(crate) async fn events(
    State(state): State<AppState>,
    reader: ReadAccess,
) -> Result<Response, ApiError> {
    // Subscribed before the answer starts: nothing that changes after the client sees the
    // stream open is missed.
    let subscription = state.store.events().await?;
    let (sender, receiver) = mpsc::channel(CLIENT_BACKLOG);
    let deployment = reader.tenant == DEFAULT_TENANT && state.jobs.is_some();
    let watch = Watch {
        _open: state.server_metrics.admin_stream_opened(),
        state,
        tenant: reader.tenant,
        deployment,
        sender,
        shown: HashMap::new(),
        dirty_devices: HashSet::new(),
        all_devices: false,
        last_device_flush: None,
    };
    tokio::spawn(watch.run(subscription));
    let stream = ReceiverStream::new(receiver).map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

/// One client's stream: what it may see and what it was last sent.
struct Watch {
    /// Counts the stream in `/metrics` while it is open.
    _open: crate::metrics::StreamGuard,
    state: AppState,
    tenant: String,
    /// Whether the client may see the sync jobs (an operator of the deployment's tenant, on
    /// a server that runs jobs).
    deployment: bool,
    sender: mpsc::Sender<Event>,
    /// The JSON last sent per record, so an unchanged record is not sent again.
    shown: HashMap<Shown, String>,
    /// Devices that changed since their last event.
    dirty_devices: HashSet<String>,
    /// Every device is to be sent again (after a gap).
    all_devices: bool,
    last_device_flush: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shown {
    Run(i64),
    State(String),
    Device(String),
}

/// Why a stream ends.
enum End {
    /// The client went away, or the server shuts down.
    Closed,
    /// The store could not be read.
    Store(ApiError),
}

impl From<ApiError> for End {
    fn from(error: ApiError) -> End {
        End::Store(error)
    }
}

impl Watch {
    async fn run(mut self, mut subscription: StoreEvents) {
        if let End::Store(error) = self.stream(&mut subscription).await {
            tracing::warn!(
                tenant = %self.tenant,
                error = %error.message,
                "An admin event stream ended: the store could not be read."
            );
        }
    }

    /// Sends events until the stream ends, and says why it did.
    async fn stream(&mut self, subscription: &mut StoreEvents) -> End {
        let closing = self.state.shutdown.clone();
        if let Err(end) = self.send(Event::default().comment("connected")).await {
            return end;
        }
        loop {
            let flush_at = self.device_flush_at();
            let step = tokio::select! {
                biased;
                () = closing.cancelled() => Err(End::Closed),
                () = self.sender.closed() => Err(End::Closed),
                () = sleep_until(flush_at), if flush_at.is_some() => self.flush_devices().await,
                event = subscription.next() => self.on(event).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on(&mut self, event: StoreEvent) -> Result<(), End> {
        match event {
            StoreEvent::Run { id, job } => self.run_changed(id, &job).await,
            StoreEvent::State { job } => self.state_changed(&job).await,
            StoreEvent::Listener => self.every_state().await,
            StoreEvent::Device { tenant, device_id } => {
                if tenant == self.tenant {
                    self.dirty_devices.insert(device_id);
                }
                Ok(())
            }
            StoreEvent::Gap => {
                self.all_devices = true;
                self.every_state().await
            }
            // Rows are devices' business (`GET /api/sync/stream`); the device's own event
            // shows its push.
            StoreEvent::Changes { .. } => Ok(()),
        }
    }

    async fn run_changed(&mut self, id: i64, job: &str) -> Result<(), End> {
        if !self.runs_job(job) {
            return Ok(());
        }
        let Some(store) = self.state.jobs.clone() else {
            return Ok(());
        };
        let Some(mut run) = store.run(id).await.map_err(ApiError::from)? else {
            // Pruned meanwhile.
            return Ok(());
        };
        // As the runs list shows a run: without its log lines.
        run.log = None;
        run.events = None;
        self.send_record(Shown::Run(id), "run", &run).await
    }

    async fn state_changed(&mut self, job: &str) -> Result<(), End> {
        if !self.runs_job(job) {
            return Ok(());
        }
        let job = worker::job(&self.state, Some(job))?;
        let described = worker::describe(&self.state, &job).await?;
        self.send_record(Shown::State(described.job.clone()), "state", &described)
            .await
    }

    async fn every_state(&mut self) -> Result<(), End> {
        if !self.deployment {
            return Ok(());
        }
        for job in self.state.config.sync_jobs.clone() {
            self.state_changed(&job).await?;
        }
        Ok(())
    }

    /// Whether the client may see the job and this server runs it.
    fn runs_job(&self, job: &str) -> bool {
        self.deployment && self.state.config.sync_jobs.iter().any(|j| j == job)
    }

    /// When the changed devices are sent: at once, unless devices were sent less than
    /// [`DEVICE_EVERY`] ago.
    fn device_flush_at(&self) -> Option<Instant> {
        if self.dirty_devices.is_empty() && !self.all_devices {
            return None;
        }
        let now = Instant::now();
        Some(match self.last_device_flush {
            Some(last) => (last + DEVICE_EVERY).max(now),
            None => now,
        })
    }

    async fn flush_devices(&mut self) -> Result<(), End> {
        self.last_device_flush = Some(Instant::now());
        let all = std::mem::take(&mut self.all_devices);
        let dirty = std::mem::take(&mut self.dirty_devices);
        let devices = self
            .state
            .store
            .list_devices(&self.tenant)
            .await
            .map_err(ApiError::from)?;
        for device in devices {
            if all || dirty.contains(&device.device_id) {
                let shown = Shown::Device(device.device_id.clone());
                self.send_record(shown, "device", &device).await?;
            }
        }
        Ok(())
    }

    /// Sends `record` as an event named `name`, unless it was last sent just so.
    async fn send_record<T: Serialize>(
        &mut self,
        shown: Shown,
        name: &str,
        record: &T,
    ) -> Result<(), End> {
        let json = serde_json::to_string(record).map_err(|e| {
            End::Store(ApiError::internal(format!(
                "an event's record cannot be JSON: {e}"
            )))
        })?;
        if self.shown.get(&shown) == Some(&json) {
            return Ok(());
        }
        self.send(Event::default().event(name).data(&json)).await?;
        self.shown.insert(shown, json);
        Ok(())
    }

    async fn send(&self, event: Event) -> Result<(), End> {
        self.sender.send(event).await.map_err(|_| End::Closed)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
