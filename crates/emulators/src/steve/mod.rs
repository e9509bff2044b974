//! An emulator of StEvE's REST API (version 3.7.1), under StEvE's default context path:
//! every REST path starts with `/steve/api/v1`.
//!
//! # What it covers
//!
//! - The API key: each request carries it in a header, `STEVE-API-KEY` unless configured
//!   otherwise; without it the answer is `401`.
//! - `GET /transactions` with all its filters: `chargeBoxId`, `ocppIdTag`, `transactionPk`,
//!   `type` (`ACTIVE` or `ALL`), `periodType` (`ALL`, `TODAY`, `LAST_10`, `LAST_30`, `LAST_90`,
//!   `FROM_TO` with `from` and `to`). `from` and `to` are local date-times without a zone, read in
//!   StEvE's own zone ([`Config::time_zone`]); `FROM_TO` selects sessions by their start, both
//!   ends included; `TODAY` and `LAST_n` by the start's calendar date in that zone. The answer is
//!   every match (StEvE does not page), newest first.
//! - `GET /ocppTags` (filters `idTag`, `parentIdTag`, `ocppTagPk`), `GET /ocppTags/{ocppTagPk}`,
//!   `POST /ocppTags`, and `DELETE /ocppTags/{ocppTagPk}`, which deletes the tag's sessions too,
//!   as StEvE's foreign keys cascade.
//! - StEvE's error body for `400`, `401`, `404`, `422` and `500`:
//!   `{"timestamp", "status", "error", "message", "path"}`.
//!
//! # What it leaves out
//!
//! OCPP: no station connects. Sessions, meter values and stops come from the simulation handle
//! ([`Steve`]) instead. Also absent: `PUT /ocppTags/{ocppTagPk}`, tag expiry and blocking (the
//! `blocked`, `expired` and `inTransaction` filters are accepted and ignored), StEvE's web pages,
//! and persistence: everything lives in memory.
//!
//! # The `/_emulator` routes
//!
//! The handle's actions over HTTP, without the API key, for driving a running emulator with curl.
//! Times are RFC 3339 (`2026-12-06T10:00:00Z`, any offset) and default to now where optional.
//!
//! | Route | Body | Does |
//! |---|---|---|
//! | `GET /_emulator/state` | | every tag and session, with meter values ([`Snapshot`]) |
//! | `POST /_emulator/tags` | `{"id_tag", "parent_id_tag"?}` | adds a tag: `201 {"ocpp_tag_pk"}` |
//! | `DELETE /_emulator/tags/{id_tag}` | | deletes a tag and its sessions |
//! | `POST /_emulator/sessions` | `{"charge_box_id", "connector_id", "id_tag", "start"?, "start_value"?}` | starts a session: `201 {"transaction_id"}` |
//! | `POST /_emulator/sessions/{id}/meter-values` | `{"at"?, "value"}` | records a meter value |
//! | `POST /_emulator/sessions/{id}/stop` | `{"at"?, "value", "reason"?, "actor"?}` | stops a session (`actor`: `station`, the default, or `manual`) |
//! | `PUT /_emulator/sessions/{id}/stop-value` | `{"value"}` | revises a stop value |
//! | `GET /_emulator/faults` | | armed faults and `requests_served` |
//! | `POST /_emulator/faults` | `{"fail_next"?, "stall_next"?, "stall_ms"?}` | arms faults (replacing those armed) |
//! | `DELETE /_emulator/faults` | | disarms every fault |
//!
//! A failed action answers `404` (unknown tag or session) or `409` (a tag that exists, a session
//! already stopped) with `{"error": "..."}`.
//!
//! # Faults
//!
//! [`Steve::fail_next`] makes the next requests to the REST API answer `500`;
//! [`Steve::stall_next`] makes them wait before they are handled. Both armed together hit the
//! same requests. [`Steve::requests_served`] counts every REST request, whatever its answer.

mod control;
mod model;
mod rest;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use model::{MeterValue, Session, SessionStop, Snapshot, StopActor, Tag};

use crate::Running;
use model::State;

/// How the emulator behaves towards clients.
#[derive(Clone, Debug)]
pub struct Config {
    /// The API key clients must send.
    pub api_key: String,
    /// The header that carries it.
    pub api_key_header: String,
    /// StEvE's own zone, in which it reads `from` and `to` and tells calendar days apart.
    pub time_zone: TimeZone,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_key: "steve-api-key".to_owned(),
            api_key_header: "STEVE-API-KEY".to_owned(),
            time_zone: TimeZone::UTC,
        }
    }
}

/// Why a simulated action could not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("an OCPP tag with idTag {0:?} exists already")]
    TagExists(String),
    #[error("no OCPP tag has idTag {0:?}")]
    UnknownTag(String),
    #[error("no transaction has id {0}")]
    UnknownTransaction(i32),
    #[error("transaction {0} is stopped already")]
    AlreadyStopped(i32),
    #[error("transaction {0} has not stopped")]
    NotStopped(i32),
}

/// The emulator: its data, its faults and its HTTP routes. Clones share the same emulator.
#[derive(Clone, Debug)]
pub struct Steve {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
}

/// Starts an emulator on a free local port.
pub async fn spawn(config: Config) -> std::io::Result<Running<Steve>> {
    let steve = Steve::new(config);
    let router = steve.router();
    crate::server::spawn(steve, router, url).await
}

/// The base URL of an emulator listening on `addr`, as StEvE's clients are configured with it:
/// `http://127.0.0.1:PORT/steve`.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/steve")
}

impl Steve {
    pub fn new(config: Config) -> Self {
        Steve {
            config: Arc::new(config),
            state: Arc::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The REST API and the `/_emulator` routes.
    pub fn router(&self) -> Router {
        rest::routes(self.clone())
            .merge(control::routes())
            .with_state(self.clone())
    }

    /// Serves the emulator on `listener` until `shutdown` is cancelled.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        crate::server::serve(listener, self.router(), shutdown).await;
    }

    /// Adds a tag; a parent must exist already. Returns its `ocppTagPk`.
    pub fn add_tag(&self, id_tag: &str, parent_id_tag: Option<&str>) -> Result<i32, Error> {
        self.state().add_tag(id_tag, parent_id_tag, None, 1)
    }

    /// Deletes a tag and, as in StEvE, all of its sessions.
    pub fn delete_tag(&self, id_tag: &str) -> Result<(), Error> {
        let mut state = self.state();
        let pk = state
            .tag_pk(id_tag)
            .ok_or_else(|| Error::UnknownTag(id_tag.to_owned()))?;
        state.delete_tag(pk);
        Ok(())
    }

    /// Starts a session and returns its transaction id (1, 2, 3... in start order). A tag or a
    /// charge box seen for the first time is added, as StEvE would have had it.
    pub fn start_session(
        &self,
        charge_box_id: &str,
        connector_id: i32,
        id_tag: &str,
        start_ms: i64,
        start_value: Option<&str>,
    ) -> i32 {
        self.state()
            .start_session(charge_box_id, connector_id, id_tag, start_ms, start_value)
    }

    /// Records a meter reading of a session (kept, but not shown by the REST API).
    pub fn record_meter_value(
        &self,
        transaction_id: i32,
        at_ms: i64,
        value: &str,
    ) -> Result<(), Error> {
        let mut state = self.state();
        let session = state.session_mut(transaction_id)?;
        session.meter_values.push(MeterValue {
            at_ms,
            value: value.to_owned(),
        });
        Ok(())
    }

    /// Stops an active session. A stop days after the start makes a "zombie" session, one the
    /// station forgot to end.
    pub fn stop_session(
        &self,
        transaction_id: i32,
        stop_ms: i64,
        stop_value: &str,
        reason: Option<&str>,
        actor: StopActor,
    ) -> Result<(), Error> {
        let mut state = self.state();
        let session = state.session_mut(transaction_id)?;
        if session.stop.is_some() {
            return Err(Error::AlreadyStopped(transaction_id));
        }
        session.stop = Some(SessionStop {
            at_ms: stop_ms,
            value: stop_value.to_owned(),
            reason: reason.map(str::to_owned),
            actor,
        });
        Ok(())
    }

    /// Changes the stop value of a stopped session, as an operator correcting it would.
    pub fn revise_stop_value(&self, transaction_id: i32, stop_value: &str) -> Result<(), Error> {
        let mut state = self.state();
        let stop = state
            .session_mut(transaction_id)?
            .stop
            .as_mut()
            .ok_or(Error::NotStopped(transaction_id))?;
        stop.value = stop_value.to_owned();
        Ok(())
    }

    /// Every tag and session.
    pub fn snapshot(&self) -> Snapshot {
        self.state().snapshot()
    }

    /// The next `requests` REST requests answer `500`, with StEvE's error body.
    pub fn fail_next(&self, requests: u32) {
        self.state().faults.fail_next = requests;
    }

    /// The next `requests` REST requests wait `stall` before they are handled.
    pub fn stall_next(&self, requests: u32, stall: Duration) {
        let faults = &mut self.state().faults;
        faults.stall_next = requests;
        faults.stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.state().faults = Faults::default();
    }

    /// How many REST requests the emulator has answered or is answering, whatever the answer.
    pub fn requests_served(&self) -> u64 {
        self.state().requests_served
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still worth serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Faults armed for the next REST requests; also the body of `/_emulator/faults`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Faults {
    fail_next: u32,
    stall_next: u32,
    stall_ms: u64,
}

impl Faults {
    /// Takes the faults for one request: how long it stalls, and whether it then fails.
    fn take(&mut self) -> (Option<Duration>, bool) {
        let stall =
            crate::take_one(&mut self.stall_next).then(|| Duration::from_millis(self.stall_ms));
        (stall, crate::take_one(&mut self.fail_next))
    }
}
