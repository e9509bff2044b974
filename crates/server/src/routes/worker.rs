//! The sync worker API: triggers, state, runs and pins of server-side sync jobs.
//!
//! Everything here goes through the store, never through a worker in this process, so the
//! API answers the same whether the worker runs in-process (`ferry serve`) or as its own
//! process (`ferry worker`) on the same database. Jobs serve the whole deployment, so only the
//! deployment tenant's viewers read their state and runs, and only its operators trigger and
//! pin them (see `auth`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ferry_core::time::{format_ms, parse_ms, parse_rfc3339_ms};
use ferry_proto::worker::{
    ListenerState, PinRequest, RunsResponse, SyncRun, SyncState, TRIGGER_ACCEPTED, TriggerRequest,
    TriggerResponse,
};
use ferry_store::JobStore;
use ferry_store::jobs::RunQuery;
use ferry_worker::cadence::{CadenceState, Tier};
use ferry_worker::job::{RunStatus, RunTrigger};
use ferry_worker::runtime::{from_record, to_record};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::auth::{DeploymentOperator, DeploymentReader};
use crate::{ApiError, AppState, body};

/// Trigger and pin bodies are a few fields.
const SMALL_BODY: usize = 64 * 1024;
const DEFAULT_RUNS: u32 = 50;
const MAX_RUNS: u32 = 500;
/// The longest pin: a year.
const MAX_PIN_HOURS: f64 = 24.0 * 366.0;
/// A listener that has not reported for this long is shown as disconnected.
const LISTENER_STALE_MS: i64 = 60_000;

/// The job a request names (or the server's default job) and the store to ask about it.
pub(super) struct Job {
    name: String,
    store: Arc<dyn JobStore>,
}

pub(super) fn job(state: &AppState, requested: Option<&str>) -> Result<Job, ApiError> {
    let Some(store) = state.jobs.clone() else {
        return Err(ApiError::not_found("This server runs no sync jobs."));
    };
    let known = &state.config.sync_jobs;
    let name = match requested {
        None | Some("") => known
            .first()
            .ok_or_else(|| ApiError::not_found("This server runs no sync jobs."))?,
        Some(name) => known.iter().find(|j| *j == name).ok_or_else(|| {
            ApiError::not_found(format!(
                "There is no sync job {name:?}; this server runs {}.",
                known.join(", ")
            ))
        })?,
    };
    Ok(Job {
        name: name.clone(),
        store,
    })
}

/// `POST /api/admin/sync/trigger` (operator): stores a trigger and wakes the worker; `202`
/// at once, never waiting for the run.
pub(crate) async fn trigger(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    request: Body,
) -> Result<(StatusCode, Json<TriggerResponse>), ApiError> {
    let request: TriggerRequest = body::read_optional_json(request, SMALL_BODY).await?;
    let job = job(&state, request.job.as_deref())?;
    let trigger = job.store.create_trigger(&job.name, "api").await?;
    tracing::info!(job = %job.name, trigger_id = trigger.id, "Manual sync triggered via notification");
    Ok((
        StatusCode::ACCEPTED,
        Json(TriggerResponse {
            message: TRIGGER_ACCEPTED.to_owned(),
            trigger_id: trigger.id,
            job: job.name,
        }),
    ))
}

/// A query naming a job.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct JobParam {
    /// The job; the server's default job (its first) when absent.
    job: Option<String>,
}

/// `GET /api/admin/sync/state?job=` (viewer).
pub(crate) async fn state(
    State(state): State<AppState>,
    _reader: DeploymentReader,
    params: Result<Query<JobParam>, QueryRejection>,
) -> Result<Json<SyncState>, ApiError> {
    let Query(params) = params.map_err(invalid_query)?;
    let job = job(&state, params.job.as_deref())?;
    Ok(Json(describe(&state, &job).await?))
}

/// `GET /api/admin/sync/runs?job=&limit=&before=` (viewer): newest first. Ferry adds filters
/// to the contract's parameters, `status=`, `trigger=`, and `since=`/`until=` (RFC 3339 times
/// the run started at or after, and before), so a filter that matches old runs takes one
/// request rather than a page-by-page search, and `before` pages through what matches.
pub(crate) async fn runs(
    State(state): State<AppState>,
    _reader: DeploymentReader,
    params: Result<Query<RunsParams>, QueryRejection>,
) -> Result<Json<RunsResponse>, ApiError> {
    let Query(params) = params.map_err(invalid_query)?;
    let job = job(&state, params.job.as_deref())?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_RUNS,
        Some(text) => match text.parse::<u32>() {
            Ok(limit) if limit > 0 => limit.min(MAX_RUNS),
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "`limit` must be a whole number from 1 to {MAX_RUNS}; got {text:?}."
                )));
            }
        },
    };
    let before = match params.before.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::invalid_request(format!("`before` must be a run id; got {text:?}."))
        })?),
    };
    let status = match present(params.status.as_deref()) {
        None => None,
        Some(text) => Some(RunStatus::parse(text).ok_or_else(|| {
            ApiError::invalid_request(format!(
                "`status` must be one of {}; got {text:?}.",
                RunStatus::ALL.map(RunStatus::as_str).join(", ")
            ))
        })?),
    };
    let trigger = match present(params.trigger.as_deref()) {
        None => None,
        Some(text) => Some(RunTrigger::parse(text).ok_or_else(|| {
            ApiError::invalid_request(format!(
                "`trigger` must be one of {}; got {text:?}.",
                RunTrigger::ALL.map(RunTrigger::as_str).join(", ")
            ))
        })?),
    };
    let query = RunQuery {
        // Without `job`, every job's runs.
        job: params.job.as_ref().map(|_| job.name.clone()),
        status: status.map(|status| status.as_str().to_owned()),
        trigger: trigger.map(|trigger| trigger.as_str().to_owned()),
        since_ms: time_param("since", params.since.as_deref())?,
        until_ms: time_param("until", params.until.as_deref())?,
        before,
        limit,
    };
    let runs = job.store.runs(&query).await?;
    Ok(Json(RunsResponse { runs }))
}

/// The query of the runs list. Values are read as text and checked by the handler.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct RunsParams {
    /// Only this job's runs; every job's when absent.
    job: Option<String>,
    /// How many: 50 when absent, at most 500.
    #[schemars(with = "Option<u32>", range(min = 1))]
    limit: Option<String>,
    /// Only runs older than this run id: the next page.
    #[schemars(with = "Option<i64>")]
    before: Option<String>,
    status: Option<String>,
    trigger: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// A filter's value; an empty one (`status=`, as a form with nothing chosen sends it) filters
/// nothing.
fn present(param: Option<&str>) -> Option<&str> {
    param.filter(|text| !text.is_empty())
}

/// A time bound of the runs list: an RFC 3339 time, with any offset.
fn time_param(name: &str, param: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = present(param) else {
        return Ok(None);
    };
    parse_rfc3339_ms(text).map(Some).ok_or_else(|| {
        // The usual way to get here with a good time: `+01:00` in a URL, where `+` means a
        // space.
        let hint = if text.contains(' ') {
            " A `+` in a query string reads as a space: write it as `%2B`."
        } else {
            ""
        };
        ApiError::invalid_request(format!(
            "`{name}` must be an RFC 3339 time such as 2026-11-21T12:00:00Z or \
             2026-11-21T13:00:00+01:00; got {text:?}.{hint}"
        ))
    })
}

/// `GET /api/admin/sync/runs/{id}` (viewer): one run with its log lines and, for a billing
/// run, the events it delivered or rejected.
pub(crate) async fn run(
    State(state): State<AppState>,
    _reader: DeploymentReader,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SyncRun>, ApiError> {
    let id = super::path_text(id)?;
    let job = job(&state, None)?;
    let not_found = || ApiError::not_found(format!("There is no run {id}."));
    let id_number: i64 = id.parse().map_err(|_| not_found())?;
    let mut run = job.store.run(id_number).await?.ok_or_else(not_found)?;
    if let Some(billing) = state.billing.as_ref().filter(|_| run.job == "billing") {
        let events = billing.run_events(id_number).await?;
        run.events = Some(events.iter().map(super::billing::event).collect());
    }
    Ok(Json(run))
}

/// `POST /api/admin/sync/pin` (operator) `{"job", "tier", "hours"}`: the job runs at that tier
/// until the pin ends. Answers with the job's state.
pub(crate) async fn pin(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    request: Body,
) -> Result<Json<SyncState>, ApiError> {
    let request: PinRequest = body::read_json(request, SMALL_BODY).await?;
    let job = job(&state, request.job.as_deref())?;
    let tier = Tier::parse(&request.tier).ok_or_else(|| {
        ApiError::invalid_request(format!(
            "`tier` must be active, idle or dormant; got {:?}.",
            request.tier
        ))
    })?;
    if !(request.hours > 0.0 && request.hours <= MAX_PIN_HOURS) {
        return Err(ApiError::invalid_request(format!(
            "`hours` must be more than 0 and at most {MAX_PIN_HOURS}; got {}.",
            request.hours
        )));
    }
    let duration = Duration::from_secs_f64(request.hours * 3600.0);
    let intervals = &state.config.tier_intervals;
    let now = job.store.clock_ms().await?;
    let cadence = cadence(&job).await?.pinned(tier, duration, now, intervals);
    job.store
        .save_cadence(&job.name, &to_record(&cadence))
        .await?;
    tracing::info!(job = %job.name, tier = tier.as_str(), hours = request.hours, "A sync job was pinned.");
    Ok(Json(describe(&state, &job).await?))
}

/// `DELETE /api/admin/sync/pin?job=` (operator): the job's own tier applies again.
pub(crate) async fn unpin(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    params: Result<Query<JobParam>, QueryRejection>,
) -> Result<Json<SyncState>, ApiError> {
    let Query(params) = params.map_err(invalid_query)?;
    let job = job(&state, params.job.as_deref())?;
    let now = job.store.clock_ms().await?;
    let cadence = cadence(&job)
        .await?
        .unpinned(now, &state.config.tier_intervals);
    job.store
        .save_cadence(&job.name, &to_record(&cadence))
        .await?;
    tracing::info!(job = %job.name, "A sync job's pin was removed.");
    Ok(Json(describe(&state, &job).await?))
}

async fn cadence(job: &Job) -> Result<CadenceState, ApiError> {
    Ok(match job.store.cadence(&job.name).await? {
        Some(record) => from_record(&record),
        None => CadenceState::new(),
    })
}

pub(super) async fn describe(state: &AppState, job: &Job) -> Result<SyncState, ApiError> {
    let store = &job.store;
    let now = store.clock_ms().await?;
    let cadence = cadence(job).await?;
    let running = store.running(&job.name).await?;
    let pending = store.pending_count(&job.name).await?;
    let last_run = store
        .runs(&RunQuery {
            job: Some(job.name.clone()),
            limit: 1,
            ..RunQuery::default()
        })
        .await?
        .into_iter()
        .next();
    let mut listener = store.listener().await?.unwrap_or(ListenerState {
        connected: false,
        last_ping_at: None,
    });
    let last_heard = listener.last_ping_at.as_deref().and_then(parse_ms);
    if last_heard.is_none_or(|at| now - at > LISTENER_STALE_MS) {
        listener.connected = false;
    }
    Ok(SyncState {
        job: job.name.clone(),
        tier: cadence.effective_tier(now).as_str().to_owned(),
        interval_seconds: cadence
            .interval(now, &state.config.tier_intervals)
            .as_secs(),
        next_run_at: cadence.next_run_at_ms.map(format_ms),
        pinned_until: cadence.active_pin(now).map(|pin| format_ms(pin.until_ms)),
        in_flight: running.is_some(),
        pending_triggers: pending,
        last_run,
        listener,
    })
}

fn invalid_query(error: QueryRejection) -> ApiError {
    ApiError::invalid_request(format!("The query string is invalid: {error}."))
}
