//! The billing API: tag mappings, the session ledger and review actions of the `billing` job.
//!
//! Like the sync worker API, everything goes through the store, so the answers are the same
//! whether the job runs in this process or in a `ferry worker` on the same database. The
//! ledger serves the whole deployment, so only the deployment tenant's viewers read it and
//! only its operators write (see `auth`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use ferry_core::time::format_ms;
use ferry_proto::billing::{
    Event, ImportMappings, ImportResponse, Mapping, MappingsResponse, PutMapping, ReviewRequest,
    Session, SessionsResponse,
};
use ferry_store::BillingStore;
use ferry_store::billing::{
    EventRecord, MappingRecord, NewMapping, ReviewAction, Reviewed, SessionQuery, SessionRecord,
    SessionState,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::path_text;
use crate::auth::{DeploymentOperator, DeploymentReader};
use crate::{ApiError, AppState, body};

const SMALL_BODY: usize = 64 * 1024;
/// A CSV of mappings: a hundred thousand tags fit.
const IMPORT_BODY: usize = 16 * 1024 * 1024;
const DEFAULT_SESSIONS: u32 = 50;
const MAX_SESSIONS: u32 = 500;
/// The longest tag, customer or subscription id accepted (OCPP tags are at most 20
/// characters; Lago's external ids are free text).
const MAX_ID_LEN: usize = 255;

fn ledger(state: &AppState) -> Result<Arc<dyn BillingStore>, ApiError> {
    state
        .billing
        .clone()
        .ok_or_else(|| ApiError::not_found("This server does not run the billing job."))
}

/// `GET /api/admin/billing/mappings` (viewer).
pub(crate) async fn mappings(
    State(state): State<AppState>,
    _reader: DeploymentReader,
) -> Result<Json<MappingsResponse>, ApiError> {
    let mappings = ledger(&state)?.mappings().await?;
    Ok(Json(MappingsResponse {
        mappings: mappings.iter().map(mapping).collect(),
    }))
}

/// `PUT /api/admin/billing/mappings/{id_tag}` (operator): creates or replaces the mapping.
pub(crate) async fn put_mapping(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    id_tag: Result<Path<String>, PathRejection>,
    request: Body,
) -> Result<Json<Mapping>, ApiError> {
    let id_tag = path_text(id_tag)?;
    let request: PutMapping = body::read_json(request, SMALL_BODY).await?;
    let new = checked_mapping(
        &id_tag,
        &request.external_customer_id,
        request.external_subscription_id.as_deref(),
    )
    .map_err(ApiError::invalid_request)?;
    let stored = ledger(&state)?.put_mapping(&new).await?;
    tracing::info!(id_tag = %stored.id_tag, customer = %stored.customer, "A billing mapping was saved.");
    Ok(Json(mapping(&stored)))
}

/// `DELETE /api/admin/billing/mappings/{id_tag}` (operator).
pub(crate) async fn delete_mapping(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    id_tag: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id_tag = path_text(id_tag)?;
    let ledger = ledger(&state)?;
    if ledger.delete_mapping(&id_tag).await? {
        tracing::info!(%id_tag, "A billing mapping was deleted.");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "Tag {id_tag:?} has no mapping."
        )))
    }
}

/// `POST /api/admin/billing/mappings` (operator; Ferry's own): many mappings at once, all or
/// none (a tag's own `PUT` stays free for any tag name, `import` included). The body is CSV (`Content-Type: text/csv`; rows `tag,customer,subscription`,
/// the subscription may be empty, a header row is allowed) or JSON `{"mappings": [{"id_tag",
/// "external_customer_id", "external_subscription_id"}]}`.
pub(crate) async fn import_mappings(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    headers: HeaderMap,
    request: Body,
) -> Result<Json<ImportResponse>, ApiError> {
    let is_csv = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/csv"));
    let mappings = if is_csv {
        let bytes = body::read_limited(request, IMPORT_BODY).await?;
        parse_csv(&bytes)?
    } else {
        let request: ImportMappings = body::read_json(request, IMPORT_BODY).await?;
        let mut mappings = Vec::with_capacity(request.mappings.len());
        for (index, row) in request.mappings.iter().enumerate() {
            let new = checked_mapping(
                &row.id_tag,
                &row.external_customer_id,
                row.external_subscription_id.as_deref(),
            )
            .map_err(|e| {
                ApiError::invalid_request(format!("Mapping {index}: {e}"))
                    .with_details(json!({ "index": index }))
            })?;
            mappings.push(new);
        }
        if mappings.is_empty() {
            return Err(ApiError::invalid_request("The import holds no mappings."));
        }
        refuse_repeated_tags(&mappings)?;
        mappings
    };
    let imported = ledger(&state)?.import_mappings(&mappings).await?;
    tracing::info!(imported, "Billing mappings were imported.");
    Ok(Json(ImportResponse { imported }))
}

/// Reads `tag,customer[,subscription]` rows; a first row that names the columns is skipped.
/// Every other line is a mapping: `#` starts no comment, since a tag may begin with it, and
/// a line skipped in silence would be a mapping lost from an import that said it succeeded.
fn parse_csv(bytes: &[u8]) -> Result<Vec<NewMapping>, ApiError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut mappings = Vec::new();
    let mut lines_of_tags = HashMap::new();
    for (index, record) in reader.records().enumerate() {
        let record = record
            .map_err(|e| ApiError::invalid_request(format!("The CSV cannot be read: {e}.")))?;
        let line = record.position().map_or(index as u64 + 1, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        if index == 0
            && matches!(
                field(0).to_ascii_lowercase().as_str(),
                "tag" | "id_tag" | "idtag"
            )
        {
            continue;
        }
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() > 3 {
            return Err(csv_error(
                line,
                "has more than three fields (tag, customer, subscription)",
            ));
        }
        let subscription = Some(field(2)).filter(|s| !s.is_empty());
        let new =
            checked_mapping(field(0), field(1), subscription).map_err(|e| csv_error(line, &e))?;
        if let Some(first) = lines_of_tags.insert(new.id_tag.clone(), line) {
            return Err(csv_error(
                line,
                &format!(
                    "maps tag {:?} again (first on line {first}); keep one",
                    new.id_tag
                ),
            ));
        }
        mappings.push(new);
    }
    if mappings.is_empty() {
        return Err(ApiError::invalid_request("The CSV holds no mappings."));
    }
    Ok(mappings)
}

fn csv_error(line: u64, problem: &str) -> ApiError {
    ApiError::invalid_request(format!("Line {line} of the CSV {problem}."))
        .with_details(json!({ "line": line }))
}

/// Refuses a JSON import that maps a tag twice, naming both entries by index.
fn refuse_repeated_tags(mappings: &[NewMapping]) -> Result<(), ApiError> {
    let mut seen = HashMap::new();
    for (index, mapping) in mappings.iter().enumerate() {
        if let Some(first) = seen.insert(mapping.id_tag.as_str(), index) {
            return Err(ApiError::invalid_request(format!(
                "Tag {:?} is mapped twice (mappings {first} and {index}); keep one.",
                mapping.id_tag
            ))
            .with_details(json!({ "index": index })));
        }
    }
    Ok(())
}

/// A mapping with its fields checked: ids are non-empty, at most [`MAX_ID_LEN`] long and free
/// of control characters (so also of NUL bytes, which PostgreSQL cannot store).
fn checked_mapping(
    id_tag: &str,
    customer: &str,
    subscription: Option<&str>,
) -> Result<NewMapping, String> {
    check_id("the tag", id_tag)?;
    check_id("external_customer_id", customer)?;
    if let Some(subscription) = subscription {
        check_id("external_subscription_id", subscription)?;
    }
    Ok(NewMapping {
        id_tag: id_tag.to_owned(),
        customer: customer.to_owned(),
        subscription: subscription.map(str::to_owned),
    })
}

fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(format!("{what} is empty"))
    } else if value.len() > MAX_ID_LEN {
        Err(format!("{what} is longer than {MAX_ID_LEN} bytes"))
    } else if value.chars().any(char::is_control) {
        Err(format!("{what} contains a control character"))
    } else if value.trim() != value {
        Err(format!("{what} {value:?} starts or ends with white space"))
    } else {
        Ok(())
    }
}

/// The query of the sessions list. Values are read as text and checked by the handler.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct SessionsParams {
    /// Only sessions in this state: `active`, `billed`, `parked`, `needs_review` or `ignored`.
    state: Option<String>,
    /// Only this tag's sessions.
    id_tag: Option<String>,
    /// How many: 50 when absent, at most 500.
    #[schemars(with = "Option<u32>", range(min = 1))]
    limit: Option<String>,
    /// Only sessions with a smaller StEvE transaction id: the next page.
    #[schemars(with = "Option<i64>")]
    before: Option<String>,
}

/// `GET /api/admin/billing/sessions?state=&id_tag=&limit=&before=` (viewer): newest first,
/// each with its events.
pub(crate) async fn sessions(
    State(state): State<AppState>,
    _reader: DeploymentReader,
    params: Result<Query<SessionsParams>, QueryRejection>,
) -> Result<Json<SessionsResponse>, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::invalid_request(format!("The query string is invalid: {e}.")))?;
    let session_state = match params.state.as_deref() {
        None | Some("") => None,
        Some(text) => Some(SessionState::parse(text).ok_or_else(|| {
            ApiError::invalid_request(format!(
                "`state` must be one of active, billed, parked, needs_review, ignored; got {text:?}."
            ))
        })?),
    };
    let limit = match params.limit.as_deref() {
        None => DEFAULT_SESSIONS,
        Some(text) => match text.parse::<u32>() {
            Ok(limit) if limit > 0 => limit.min(MAX_SESSIONS),
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "`limit` must be a whole number from 1 to {MAX_SESSIONS}; got {text:?}."
                )));
            }
        },
    };
    let before = match params.before.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::invalid_request(format!(
                "`before` must be a StEvE transaction id; got {text:?}."
            ))
        })?),
    };
    let store = ledger(&state)?;
    let records = store
        .list_sessions(&SessionQuery {
            state: session_state,
            id_tag: params.id_tag.filter(|t| !t.is_empty()),
            before,
            limit,
        })
        .await?;
    let ids: Vec<i64> = records.iter().map(|s| s.id).collect();
    let mut events = events_by_session(store.session_events(&ids).await?);
    let sessions = records
        .iter()
        .map(|record| session(record, events.remove(&record.id).unwrap_or_default()))
        .collect();
    Ok(Json(SessionsResponse { sessions }))
}

/// `GET /api/admin/billing/sessions/{steve_transaction_id}` (viewer): one session with its
/// events.
pub(crate) async fn session_detail(
    State(state): State<AppState>,
    _reader: DeploymentReader,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Session>, ApiError> {
    let id = path_text(id)?;
    let store = ledger(&state)?;
    let record = find(&*store, &id).await?;
    let events = store.session_events(&[record.id]).await?;
    Ok(Json(session(&record, events)))
}

/// `POST /api/admin/billing/sessions/{steve_transaction_id}/review` (operator)
/// `{"action": "bill"|"ignore"}`: settles a session in `needs_review`. After "bill" a trigger
/// is stored, so the job bills it at once rather than at its next scheduled run.
pub(crate) async fn review(
    State(state): State<AppState>,
    _operator: DeploymentOperator,
    id: Result<Path<String>, PathRejection>,
    request: Body,
) -> Result<Json<Session>, ApiError> {
    let id = path_text(id)?;
    let request: ReviewRequest = body::read_json(request, SMALL_BODY).await?;
    let action = match request.action.as_str() {
        "bill" => ReviewAction::Bill,
        "ignore" => ReviewAction::Ignore,
        other => {
            return Err(ApiError::invalid_request(format!(
                "`action` must be \"bill\" or \"ignore\"; got {other:?}."
            )));
        }
    };
    let store = ledger(&state)?;
    let number = session_id(&id)?;
    let record = match store.review(number, action).await? {
        Reviewed::Done(record) => record,
        Reviewed::NotFound => return Err(no_session(&id)),
        Reviewed::NotInReview(record) => {
            return Err(ApiError::invalid_request(format!(
                "Session {id} is {}, not waiting for review; only a session in needs_review \
                 can be billed or ignored by hand.",
                record.state.as_str()
            ))
            .with_details(json!({ "state": record.state.as_str() })));
        }
    };
    tracing::info!(session = number, action = %request.action, "A billing session was reviewed.");
    if action == ReviewAction::Bill
        && let Some(jobs) = &state.jobs
        && state.config.sync_jobs.iter().any(|j| j == "billing")
    {
        jobs.create_trigger("billing", "review").await?;
    }
    let events = store.session_events(&[record.id]).await?;
    Ok(Json(session(&record, events)))
}

async fn find(store: &dyn BillingStore, id: &str) -> Result<SessionRecord, ApiError> {
    let number = session_id(id)?;
    store
        .sessions(&[number])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| no_session(id))
}

fn session_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| no_session(id))
}

fn no_session(id: &str) -> ApiError {
    ApiError::not_found(format!("The billing ledger has no session {id}."))
}

fn events_by_session(events: Vec<EventRecord>) -> HashMap<i64, Vec<EventRecord>> {
    let mut by_session: HashMap<i64, Vec<EventRecord>> = HashMap::new();
    for event in events {
        by_session
            .entry(event.event.session_id)
            .or_default()
            .push(event);
    }
    by_session
}

fn mapping(record: &MappingRecord) -> Mapping {
    Mapping {
        id_tag: record.id_tag.clone(),
        external_customer_id: record.customer.clone(),
        external_subscription_id: record.subscription.clone(),
        updated_at: format_ms(record.updated_at_ms),
    }
}

fn session(record: &SessionRecord, events: Vec<EventRecord>) -> Session {
    Session {
        steve_transaction_id: record.id,
        charge_box_id: record.charge_box_id.clone(),
        connector_id: record.connector_id,
        id_tag: record.id_tag.clone(),
        started_at: record.started_at_ms.map(format_ms),
        stopped_at: record.stopped_at_ms.map(format_ms),
        start_wh: record.start_mwh.map(wh_of_mwh),
        stop_wh: record.stop_mwh.map(wh_of_mwh),
        billed_wh: record.billed_wh,
        state: record.state.as_str().to_owned(),
        reason: record.reason.clone(),
        events: events.iter().map(event).collect(),
    }
}

fn wh_of_mwh(mwh: i64) -> f64 {
    mwh as f64 / 1000.0
}

/// An outbox event as the API shows it.
pub(crate) fn event(record: &EventRecord) -> Event {
    let e = &record.event;
    Event {
        transaction_id: e.transaction_id.clone(),
        external_subscription_id: e.subscription.clone(),
        code: e.code.clone(),
        timestamp: format_ms(e.timestamp_ms),
        properties: match serde_json::from_str(&e.properties) {
            Ok(Value::Object(map)) => map,
            _ => Default::default(),
        },
        wh: e.wh,
        status: record.status.as_str().to_owned(),
        error: record.error.clone(),
        run_id: record.settled_run,
    }
}
