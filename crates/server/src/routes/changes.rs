//! `GET /api/sync/stream` (device token): Server-Sent Events that tell a device its tenant has
//! rows it has not pulled, so it pulls now instead of at its next cycle.
//!
//! Each event is `event: changed`, data `{"cursor": "<opaque>"}`: the cursor a pull would
//! reach with everything committed so far. The stream opens with a comment (from then on no
//! commit is missed), then sends an event after every push of another device of the tenant
//! commits, on whichever instance it committed (the store's events,
//! [`StoreEvent::Changes`]). A device's own pushes send nothing: it has those rows. Rows that
//! committed before the stream opened are the device's cadence's to find, as they always were.
//!
//! Events coalesce: while the device is slow to read, only the newest cursor waits, so a busy
//! tenant never queues a backlog per device. After the store may have lost events
//! ([`StoreEvent::Gap`]) the stream reads the tenant's newest change and sends it. A comment
//! at least every [`KEEP_ALIVE`] keeps the stream open. It ends when the server shuts down,
//! when the device is revoked, and when the store cannot be read; all are hints' ends only:
//! a device that misses an event loses nothing, since its cadence still runs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_proto::ChangedEvent;
use ferry_store::{Cursor, DeviceKey, Principal, StoreEvent, StoreEvents};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::auth::{DeviceAuth, bearer_of};
use crate::{ApiError, AppState};

/// A comment at least this often; the contract asks for one every 15 s at most.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub(crate) async fn stream(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Subscribed before the answer starts: a push that commits once the device sees the
    // stream open is in an event.
    let subscription = state.store.events().await?;
    let newest = state.store.last_change(&device.tenant).await?;
    let token = bearer_of(&headers).unwrap_or_default().to_owned();
    let (sender, receiver) = watch::channel(newest);
    let watch = Watch {
        _open: state.server_metrics.change_stream_opened(),
        state,
        device,
        token,
        sender,
    };
    tokio::spawn(watch.run(subscription));
    let opening = tokio_stream::once(Event::default().comment("connected"));
    let changes = WatchStream::from_changes(receiver).map(changed);
    let events = opening.chain(changes).map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive");
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

/// The `changed` event for the tenant's newest change `seq`.
fn changed(seq: u64) -> Event {
    let cursor = Cursor::from_seq(seq).to_string();
    let data = serde_json::to_string(&ChangedEvent { cursor }).unwrap_or_default();
    Event::default().event("changed").data(data)
}

/// One device's stream: the newest sequence number it was told of (at first, the tenant's
/// newest when it opened) lives in `sender`.
struct Watch {
    /// Counts the stream in `/metrics` while it is open.
    _open: crate::metrics::StreamGuard,
    state: AppState,
    device: DeviceKey,
    /// The device's token, checked again when the device changes (a revocation ends the
    /// stream).
    token: String,
    sender: watch::Sender<u64>,
}

impl Watch {
    async fn run(self, mut subscription: StoreEvents) {
        let closing = self.state.shutdown.clone();
        loop {
            let step = tokio::select! {
                biased;
                () = closing.cancelled() => return,
                () = self.sender.closed() => return,
                event = subscription.next() => self.on(event).await,
            };
            match step {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(
                        device = %self.device.device_id,
                        error = %error.message,
                        "A device's change stream ended: the store could not be read."
                    );
                    return;
                }
            }
        }
    }

    /// Handles one store event; `false` ends the stream.
    async fn on(&self, event: StoreEvent) -> Result<bool, ApiError> {
        match event {
            StoreEvent::Changes {
                tenant,
                seq,
                origin,
            } if tenant == self.device.tenant && origin != self.device.device_id => {
                self.tell(seq);
            }
            StoreEvent::Device { tenant, device_id }
                if tenant == self.device.tenant && device_id == self.device.device_id =>
            {
                return self.still_valid().await;
            }
            StoreEvent::Gap => {
                let newest = self.state.store.last_change(&self.device.tenant).await?;
                self.tell(newest);
            }
            _ => {}
        }
        Ok(true)
    }

    /// Sends `seq` unless the device was already told of it or of a later one (events of
    /// concurrent pushes can arrive out of order).
    fn tell(&self, seq: u64) {
        self.sender.send_if_modified(|told| {
            let newer = seq > *told;
            if newer {
                *told = seq;
            }
            newer
        });
    }

    /// Whether the device's token still authenticates this device.
    async fn still_valid(&self) -> Result<bool, ApiError> {
        let principal = self.state.store.authenticate(&self.token).await?;
        Ok(matches!(principal, Some(Principal::Device(device)) if device == self.device))
    }
}
