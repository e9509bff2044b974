//! The console events of PostgreSQL (see [`crate::events`]): migration 7's triggers notify
//! on [`EVENTS_CHANNEL`]; here one `LISTEN` connection per process, outside the pool, feeds
//! every subscriber of the process.
//!
//! The connection opens with the first subscriber and closes once none is left (looked at
//! on every event and every [`CHECK_EVERY`]). When it breaks, it is opened again with a
//! growing pause, and subscribers get [`StoreEvent::Gap`]: what changed meanwhile was not
//! heard.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::events::{EVENTS_BACKLOG, EVENTS_CHANNEL};
use crate::{Result, StoreError, StoreEvent, StoreEvents};

/// The connection's `application_name`, by which operators (and tests) find it in
/// `pg_stat_activity`.
const APPLICATION: &str = "ferry-events";
/// How often the connection is pinged and checked for subscribers.
const CHECK_EVERY: Duration = Duration::from_secs(15);
/// The pauses between attempts to open a broken connection again.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// The process's listening connection, shared by the store's clones.
pub(super) struct Hub {
    config: tokio_postgres::Config,
    /// Set while a task listens; subscribers subscribe to it.
    sender: Mutex<Option<broadcast::Sender<StoreEvent>>>,
}

impl Hub {
    pub(super) fn new(pool_config: &tokio_postgres::Config) -> Hub {
        let mut config = pool_config.clone();
        config.application_name(APPLICATION);
        Hub {
            config,
            sender: Mutex::new(None),
        }
    }

    /// A subscription; opens the connection when no task listens yet.
    pub(super) async fn subscribe(self: &Arc<Self>) -> Result<StoreEvents> {
        if let Some(sender) = self.slot().as_ref() {
            return Ok(StoreEvents::new(sender.subscribe()));
        }
        let line = Line::open(&self.config).await?;
        let mut slot = self.slot();
        if let Some(sender) = slot.as_ref() {
            // Another subscriber opened one meanwhile; this one closes as it is dropped.
            return Ok(StoreEvents::new(sender.subscribe()));
        }
        let sender = broadcast::channel(EVENTS_BACKLOG).0;
        let events = StoreEvents::new(sender.subscribe());
        *slot = Some(sender.clone());
        tokio::spawn(listen(Arc::clone(self), sender, line));
        Ok(events)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<StoreEvent>>> {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the listening when nobody subscribes any more; `true` if it did. Under the lock,
    /// so a subscriber either joins this task or finds the slot empty and starts another.
    fn retire_if_unused(&self, sender: &broadcast::Sender<StoreEvent>) -> bool {
        let mut slot = self.slot();
        if sender.receiver_count() > 0 {
            return false;
        }
        *slot = None;
        true
    }
}

/// An open `LISTEN` connection: its client, and the notifications a task driving the
/// connection forwards (the channel closes when the connection ends).
struct Line {
    client: Client,
    events: mpsc::Receiver<StoreEvent>,
}

impl Line {
    async fn open(config: &tokio_postgres::Config) -> Result<Line> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let (forward, events) = mpsc::channel(EVENTS_BACKLOG);
        tokio::spawn(async move {
            loop {
                let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
                let payload = match message {
                    Some(Ok(AsyncMessage::Notification(n))) => n.payload().to_owned(),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "The console events' connection broke.");
                        return;
                    }
                    None => return,
                };
                let event = match serde_json::from_str::<StoreEvent>(&payload) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(%error, %payload, "Skipped a console event that is not one.");
                        continue;
                    }
                };
                match forward.try_send(event) {
                    Ok(()) => {}
                    // The listening task is behind; it will say so with a gap.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let _ = forward.send(StoreEvent::Gap).await;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {EVENTS_CHANNEL}"))
            .await?;
        Ok(Line { client, events })
    }

    async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(CHECK_EVERY, self.client.simple_query("SELECT 1")).await {
            Ok(answer) => answer.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(
                "the console events' connection did not answer a ping".into(),
            )),
        }
    }
}

/// Forwards notifications to the subscribers until none is left, opening the connection
/// again whenever it breaks.
async fn listen(hub: Arc<Hub>, sender: broadcast::Sender<StoreEvent>, mut line: Line) {
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.tick().await;
    loop {
        let broken = tokio::select! {
            event = line.events.recv() => match event {
                Some(event) => {
                    if sender.send(event).is_err() && hub.retire_if_unused(&sender) {
                        return;
                    }
                    false
                }
                None => true,
            },
            _ = check.tick() => {
                if hub.retire_if_unused(&sender) {
                    return;
                }
                line.ping().await.is_err()
            }
        };
        if broken {
            match reopen(&hub, &sender).await {
                Some(reopened) => line = reopened,
                None => return,
            }
            // Whatever changed while the line was down went unheard.
            let _ = sender.send(StoreEvent::Gap);
        }
    }
}

/// A new line, tried with growing pauses while anybody subscribes; `None` once nobody does.
async fn reopen(hub: &Hub, sender: &broadcast::Sender<StoreEvent>) -> Option<Line> {
    let (mut pause, most) = RECONNECT_BACKOFF;
    loop {
        if hub.retire_if_unused(sender) {
            return None;
        }
        match Line::open(&hub.config).await {
            Ok(line) => {
                tracing::info!("The console events' connection is open again.");
                return Some(line);
            }
            Err(error) => {
                tracing::warn!(%error, "The console events' connection cannot be opened; trying again.");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(most);
    }
}
