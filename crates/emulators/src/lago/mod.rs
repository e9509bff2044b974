//! An emulator of Lago's API for usage events, and of the customers and subscriptions they are
//! billed to. Every REST path starts with `/api/v1`.
//!
//! # What it covers
//!
//! - The API key: `Authorization: Bearer <key>`; without it the answer is `401`.
//! - `POST /events` and `POST /events/batch` (at most 100 events), validated as Lago does:
//!   `transaction_id` and `code` are mandatory, `timestamp` is Unix seconds (a number, or text
//!   with decimals) and defaults to the time of reception, and an event is unique by
//!   (`external_subscription_id`, `transaction_id`). A batch is all or nothing: one invalid event
//!   and nothing is stored, the `422` naming each invalid event by its index. As in Lago, the
//!   subscription an event names is not checked when it is posted.
//! - `GET /events/{transaction_id}`: the first event stored with that id.
//! - `GET /customers/{external_customer_id}`, and `GET /subscriptions` (also as
//!   `GET /customers/{external_customer_id}/subscriptions`) with `external_customer_id`,
//!   `status[]` (only `active` ones when absent) and paging (`page`, `per_page`: 20 by default,
//!   at most 100), newest first. A subscription is `pending` before it starts, `terminated` from
//!   its termination on, and `active` in between.
//! - Lago's error bodies: `400`, `401`, `404` with a `<resource>_not_found` code, `422` with
//!   `error_details`, `429` with its rate-limit headers, and `500`.
//!
//! # What it leaves out
//!
//! Billable metrics, plans, fees, invoices and usage: events are stored, never priced, and never
//! linked to a customer or subscription (`lago_customer_id` and `lago_subscription_id` stay null,
//! as in the answer to a post). Also absent: `GET /events` (listing), writing customers and
//! subscriptions through the REST API (the handle does it), the ClickHouse event store's
//! uniqueness rules, the `canceled` and `incomplete` statuses, and persistence.
//!
//! # The `/_emulator` routes
//!
//! The handle's actions over HTTP, without the API key. Times are RFC 3339 (any offset) and
//! default to now where optional.
//!
//! | Route | Body | Does |
//! |---|---|---|
//! | `POST /_emulator/customers` | `{"external_id", "name"}` | adds or renames a customer |
//! | `POST /_emulator/subscriptions` | `{"external_id", "external_customer_id", "plan_code", "started_at"?, "terminated_at"?}` | adds a subscription |
//! | `POST /_emulator/subscriptions/{external_id}/terminate` | `{"at"?}` | terminates it at a time |
//! | `GET /_emulator/events` | | `{"events": [...]}`, every stored event as Lago shows it |
//! | `GET /_emulator/events/sum?property=NAME` | | `{"property", "sum"}` over every stored event |
//! | `GET /_emulator/faults` | | armed faults, rejections, `event_posts`, `events_stored` |
//! | `POST /_emulator/faults` | `{"fail_next"?, "stall_next"?, "stall_ms"?, "drop_next"?, "rate_limit_next"?, "retry_after_secs"?, "hold_answer_next"?, "hold_answer_ms"?}` | arms faults (replacing those armed) |
//! | `POST /_emulator/rejections` | `{"transaction_id", "field", "code"}` | rejects an event for good |
//! | `DELETE /_emulator/faults` | | disarms every fault and rejection |
//!
//! A failed action answers `404` (unknown customer or subscription) or `409` (a subscription
//! that exists) with `{"error": "..."}`.
//!
//! # Faults
//!
//! Each applies to the next posts of events, single or batch:
//! [`fail_next`](Lago::fail_next) answers `500` and stores nothing;
//! [`stall_next`](Lago::stall_next) waits before anything else happens;
//! [`drop_next`](Lago::drop_next) handles the post, storing its events, and then closes the
//! connection without a byte of answer, so the client sees a connection error, not a status;
//! [`rate_limit_next`](Lago::rate_limit_next) answers `429` and stores nothing;
//! [`hold_answer_next`](Lago::hold_answer_next) handles the post, storing its events, and then
//! holds its answer for a while: Lago has applied the batch and its client does not know yet
//! (a client that gives up or dies meanwhile has to settle it by sending the batch again). A
//! stall combines with the others. Of fail, rate limit and drop, a post meets the first armed,
//! in that order; a hold is used up only by a post that is handled (neither failed nor rate
//! limited), dropped or not. So `rate_limit_next(2, ..)` with `hold_answer_next(1, ..)`
//! refuses the next two posts and holds the third's answer.
//! [`reject_transaction`](Lago::reject_transaction) makes an event with that transaction id
//! invalid for good, failing any batch that carries it. [`event_posts`](Lago::event_posts) and
//! [`events_stored`](Lago::events_stored) count.

mod api;
mod control;
mod model;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use model::Event;

use crate::{Running, take_one};
use model::{State, Subscription};

/// How the emulator behaves towards clients.
#[derive(Clone, Debug)]
pub struct Config {
    /// The API key clients must send as a bearer token.
    pub api_key: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_key: "lago-api-key".to_owned(),
        }
    }
}

/// Why a simulated action could not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no customer has external id {0:?}")]
    UnknownCustomer(String),
    #[error("no subscription has external id {0:?}")]
    UnknownSubscription(String),
    #[error("a subscription with external id {0:?} exists already")]
    SubscriptionExists(String),
}

/// A permanent validation error for the events with one transaction id; also the body of
/// `POST /_emulator/rejections`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rejection {
    transaction_id: String,
    field: String,
    code: String,
}

/// The emulator: its data, its faults and its HTTP routes. Clones share the same emulator.
#[derive(Clone, Debug)]
pub struct Lago {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
}

/// Starts an emulator on a free local port.
pub async fn spawn(config: Config) -> std::io::Result<Running<Lago>> {
    let lago = Lago::new(config);
    let router = lago.router();
    crate::server::spawn(lago, router, url).await
}

/// The base URL of an emulator listening on `addr`: `http://127.0.0.1:PORT`.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

impl Lago {
    pub fn new(config: Config) -> Self {
        Lago {
            config: Arc::new(config),
            state: Arc::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The REST API and the `/_emulator` routes. The dropped-connection fault needs the
    /// connection, which only this crate's server ([`spawn`], [`Lago::serve`]) hands to the
    /// handlers; served any other way, a post it hits is handled and then answered `500`.
    pub fn router(&self) -> Router {
        api::routes(self.clone())
            .merge(control::routes())
            .with_state(self.clone())
    }

    /// Serves the emulator on `listener` until `shutdown` is cancelled.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        crate::server::serve(listener, self.router(), shutdown).await;
    }

    /// Adds a customer, or renames the one with this external id.
    pub fn add_customer(&self, external_id: &str, name: &str) {
        let now_ms = ferry_core::time::now_ms();
        self.state().upsert_customer(external_id, name, now_ms);
    }

    /// Adds a subscription of an existing customer. It is `pending` until `started_at_ms` and
    /// `terminated` from `terminated_at_ms` on.
    pub fn add_subscription(
        &self,
        external_id: &str,
        external_customer_id: &str,
        plan_code: &str,
        started_at_ms: i64,
        terminated_at_ms: Option<i64>,
    ) -> Result<(), Error> {
        self.state().add_subscription(Subscription {
            lago_id: lago_id(),
            external_id: external_id.to_owned(),
            external_customer_id: external_customer_id.to_owned(),
            plan_code: plan_code.to_owned(),
            started_at_ms,
            terminated_at_ms,
            created_at_ms: ferry_core::time::now_ms(),
        })
    }

    /// Terminates a subscription at `at_ms`, in the past or the future.
    pub fn terminate_subscription(&self, external_id: &str, at_ms: i64) -> Result<(), Error> {
        self.state().subscription_mut(external_id)?.terminated_at_ms = Some(at_ms);
        Ok(())
    }

    /// Every stored event, in the order they were stored.
    pub fn events(&self) -> Vec<Event> {
        self.state().events().to_vec()
    }

    /// The sum of a numeric property over every stored event, whether it was sent as a JSON
    /// number or as text (`"12.5"`); events without it, or with a value that is not a number,
    /// add nothing.
    pub fn sum_property(&self, property: &str) -> f64 {
        let state = self.state();
        let values =
            state
                .events()
                .iter()
                .filter_map(|event| match event.properties.get(property)? {
                    serde_json::Value::Number(number) => number.as_f64(),
                    serde_json::Value::String(text) => text.trim().parse().ok(),
                    _ => None,
                });
        values.sum()
    }

    /// The next `posts` posts of events answer `500` and store nothing.
    pub fn fail_next(&self, posts: u32) {
        self.state().faults.fail_next = posts;
    }

    /// The next `posts` posts of events wait `stall` before anything else happens.
    pub fn stall_next(&self, posts: u32, stall: Duration) {
        let faults = &mut self.state().faults;
        faults.stall_next = posts;
        faults.stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
    }

    /// The next `posts` posts of events are handled (their events stored when valid), and then
    /// their connection is closed without an answer.
    pub fn drop_next(&self, posts: u32) {
        self.state().faults.drop_next = posts;
    }

    /// The next `posts` posts of events that are handled (that no armed failure or rate limit
    /// meets) store their events as usual, and then their answer waits `hold` before it is
    /// sent. Stopping the emulator waits for held answers, as for stalls.
    pub fn hold_answer_next(&self, posts: u32, hold: Duration) {
        let faults = &mut self.state().faults;
        faults.hold_answer_next = posts;
        faults.hold_answer_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    }

    /// The next `posts` posts of events answer `429` with `Retry-After: <retry_after_secs>` and
    /// store nothing.
    pub fn rate_limit_next(&self, posts: u32, retry_after_secs: u64) {
        let faults = &mut self.state().faults;
        faults.rate_limit_next = posts;
        faults.retry_after_secs = retry_after_secs;
    }

    /// From now on, an event with this transaction id is invalid, its `error_details` saying
    /// `{field: [code]}` (e.g. `{"properties": ["invalid_value"]}`), so a batch carrying it
    /// stores nothing.
    pub fn reject_transaction(&self, transaction_id: &str, field: &str, code: &str) {
        self.state().reject(Rejection {
            transaction_id: transaction_id.to_owned(),
            field: field.to_owned(),
            code: code.to_owned(),
        });
    }

    /// Disarms every fault and rejection.
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.faults = Faults::default();
        state.rejections.clear();
    }

    /// How many posts of events (single or batch) arrived with the right API key.
    pub fn event_posts(&self) -> u64 {
        self.state().event_posts
    }

    pub fn events_stored(&self) -> usize {
        self.state().events().len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still worth serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Faults armed for the next posts of events; also the body of `POST /_emulator/faults`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Faults {
    fail_next: u32,
    stall_next: u32,
    stall_ms: u64,
    rate_limit_next: u32,
    retry_after_secs: u64,
    drop_next: u32,
    hold_answer_next: u32,
    hold_answer_ms: u64,
}

/// What becomes of a post once its stall, if any, is over.
enum Outcome {
    Fail,
    RateLimit {
        retry_after_secs: u64,
    },
    /// Store the events; wait `hold` (if any) before answering, or before hanging up.
    Handle {
        hang_up: bool,
        hold: Option<Duration>,
    },
}

impl Faults {
    /// Takes the faults for one post: how long it stalls, and what happens then.
    fn take(&mut self) -> (Option<Duration>, Outcome) {
        let stall = take_one(&mut self.stall_next).then(|| Duration::from_millis(self.stall_ms));
        let outcome = if take_one(&mut self.fail_next) {
            Outcome::Fail
        } else if take_one(&mut self.rate_limit_next) {
            Outcome::RateLimit {
                retry_after_secs: self.retry_after_secs,
            }
        } else {
            Outcome::Handle {
                hang_up: take_one(&mut self.drop_next),
                hold: take_one(&mut self.hold_answer_next)
                    .then(|| Duration::from_millis(self.hold_answer_ms)),
            }
        };
        (stall, outcome)
    }
}

/// A random id in the shape of Lago's ids, a version 4 UUID.
fn lago_id() -> String {
    let mut bits = rand::random::<u128>();
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // the version
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // the variant
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
