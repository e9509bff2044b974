//! StEvE's REST API: the gate every request passes (count, faults, API key), the handlers, and
//! the JSON they answer with.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use ferry_core::time::{format_ms, now_ms};
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::model::{Period, Session, StopActor, TagView, TransactionFilter};
use super::{Error, Steve};
use crate::time::timestamp;

pub(super) fn routes(steve: Steve) -> Router<Steve> {
    Router::new()
        .route("/steve/api/v1/transactions", get(transactions))
        .route("/steve/api/v1/ocppTags", get(tags).post(create_tag))
        .route(
            "/steve/api/v1/ocppTags/{ocpp_tag_pk}",
            get(tag).delete(delete_tag),
        )
        .route_layer(middleware::from_fn_with_state(steve, gate))
}

/// What StEvE answers to a request it cannot bind to its parameters.
const NOT_UNDERSTOOD: &str = "Error understanding the request";

/// Counts the request, applies the armed faults, then checks the API key.
async fn gate(State(steve): State<Steve>, mut request: Request, next: Next) -> Response {
    let url = RequestUrl::of(&request);
    let (stall, fail) = {
        let mut state = steve.state();
        state.requests_served += 1;
        state.faults.take()
    };
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    if fail {
        let message = "The emulator was told to fail this request";
        return url
            .error(StatusCode::INTERNAL_SERVER_ERROR, message)
            .into_response();
    }
    let key = request.headers().get(&steve.config.api_key_header);
    if key.is_none_or(|key| key.as_bytes() != steve.config.api_key.as_bytes()) {
        let message = "Full authentication is required to access this resource";
        return url.error(StatusCode::UNAUTHORIZED, message).into_response();
    }
    request.extensions_mut().insert(url);
    next.run(request).await
}

/// The full URL of a request without its query, as StEvE's error bodies show it.
#[derive(Clone, Debug)]
struct RequestUrl(String);

impl RequestUrl {
    fn of(request: &Request) -> Self {
        let host = request
            .headers()
            .get("host")
            .and_then(|host| host.to_str().ok());
        let path = request.uri().path();
        RequestUrl(format!("http://{}{path}", host.unwrap_or("localhost")))
    }

    fn error(&self, status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            path: self.0.clone(),
        }
    }

    fn not_understood(&self) -> ApiError {
        self.error(StatusCode::BAD_REQUEST, NOT_UNDERSTOOD)
    }
}

/// StEvE's error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    path: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "timestamp": format_ms(now_ms()),
            "status": self.status.as_u16(),
            "error": self.status.canonical_reason().unwrap_or_default(),
            "message": self.message,
            "path": self.path,
        });
        (self.status, Json(body)).into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransactionParams {
    charge_box_id: Option<String>,
    ocpp_id_tag: Option<String>,
    transaction_pk: Option<String>,
    r#type: Option<String>,
    period_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// A parameter StEvE could not bind: the request is answered `400`.
#[derive(Debug)]
struct NotUnderstood;

impl TransactionParams {
    /// The filter the parameters ask for.
    fn filter(self, zone: &TimeZone, now_ms: i64) -> Result<TransactionFilter, NotUnderstood> {
        let transaction_pk = self
            .transaction_pk
            .map(|text| parse_int(&text))
            .transpose()?;
        let active_only = match self.r#type.as_deref() {
            None | Some("ALL") => false,
            Some("ACTIVE") => true,
            Some(_) => return Err(NotUnderstood),
        };
        // Both are read whatever the period, so a bad value fails any query, as in StEvE.
        let from = self.from.map(|text| parse_local(&text)).transpose()?;
        let to = self.to.map(|text| parse_local(&text)).transpose()?;
        let today = zone.to_datetime(timestamp(now_ms)).date();
        let last_days = |days: i32| Period::Days {
            first: today.saturating_sub(jiff::Span::new().days(days)),
            last: today,
        };
        let period = match self.period_type.as_deref() {
            None | Some("ALL") => Period::All,
            Some("TODAY") => last_days(0),
            Some("LAST_10") => last_days(10),
            Some("LAST_30") => last_days(30),
            Some("LAST_90") => last_days(90),
            Some("FROM_TO") => {
                let (Some(from), Some(to)) = (from, to) else {
                    return Err(NotUnderstood);
                };
                if to <= from {
                    return Err(NotUnderstood);
                }
                let instant = |local| zone.to_timestamp(local).map_err(|_| NotUnderstood);
                Period::Between {
                    from_ms: instant(from)?.as_millisecond(),
                    to_ms: instant(to)?.as_millisecond(),
                }
            }
            Some(_) => return Err(NotUnderstood),
        };
        Ok(TransactionFilter {
            charge_box_id: self.charge_box_id,
            id_tag: self.ocpp_id_tag,
            transaction_pk,
            active_only,
            period,
        })
    }
}

/// Reads a local date-time the way StEvE binds `from` and `to`: `2022-10-10T09:00:00`, also
/// without seconds, with a fraction of a second, or a bare date (midnight).
fn parse_local(text: &str) -> Result<DateTime, NotUnderstood> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    if !shaped(date, "dddd-dd-dd") {
        return Err(NotUnderstood);
    }
    let date: Date = date.parse().map_err(|_| NotUnderstood)?;
    let Some(time) = time else {
        return Ok(date.to_datetime(Time::midnight()));
    };
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let shape_ok = match fraction {
        None => shaped(clock, "dd:dd") || shaped(clock, "dd:dd:dd"),
        Some(fraction) => {
            shaped(clock, "dd:dd:dd")
                && (1..=9).contains(&fraction.len())
                && fraction.bytes().all(|c| c.is_ascii_digit())
        }
    };
    if !shape_ok {
        return Err(NotUnderstood);
    }
    let time: Time = time.parse().map_err(|_| NotUnderstood)?;
    Ok(date.to_datetime(time))
}

fn parse_int(text: &str) -> Result<i32, NotUnderstood> {
    text.parse().map_err(|_| NotUnderstood)
}

/// Whether `text` has the shape of `pattern`, where `d` stands for any ASCII digit.
fn shaped(text: &str, pattern: &str) -> bool {
    text.len() == pattern.len()
        && text.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// A transaction as StEvE's REST API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Transaction<'a> {
    id: i32,
    connector_id: i32,
    charge_box_pk: i32,
    ocpp_tag_pk: i32,
    charge_box_id: &'a str,
    ocpp_id_tag: &'a str,
    start_timestamp: String,
    start_value: Option<&'a str>,
    stop_timestamp: Option<String>,
    stop_value: Option<&'a str>,
    stop_reason: Option<&'a str>,
    stop_event_actor: Option<StopActor>,
}

impl<'a> Transaction<'a> {
    fn of(session: &'a Session) -> Self {
        let stop = session.stop.as_ref();
        Transaction {
            id: session.id,
            connector_id: session.connector_id,
            charge_box_pk: session.charge_box_pk,
            ocpp_tag_pk: session.ocpp_tag_pk,
            charge_box_id: &session.charge_box_id,
            ocpp_id_tag: &session.id_tag,
            start_timestamp: format_ms(session.start_ms),
            start_value: session.start_value.as_deref(),
            stop_timestamp: stop.map(|stop| format_ms(stop.at_ms)),
            stop_value: stop.map(|stop| stop.value.as_str()),
            stop_reason: stop.and_then(|stop| stop.reason.as_deref()),
            stop_event_actor: stop.map(|stop| stop.actor),
        }
    }
}

async fn transactions(
    State(steve): State<Steve>,
    Extension(url): Extension<RequestUrl>,
    params: Result<Query<TransactionParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Ok(Query(params)) = params else {
        return Err(url.not_understood());
    };
    let zone = &steve.config.time_zone;
    let filter = params
        .filter(zone, now_ms())
        .map_err(|NotUnderstood| url.not_understood())?;
    let state = steve.state();
    let found: Vec<_> = state
        .transactions(&filter, zone)
        .map(Transaction::of)
        .collect();
    Ok(Json(found).into_response())
}

/// An OCPP tag as StEvE's REST API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Overview<'a> {
    ocpp_tag_pk: i32,
    id_tag: &'a str,
    parent_ocpp_tag_pk: Option<i32>,
    parent_id_tag: Option<&'a str>,
    /// Always null: the emulator's tags never expire.
    expiry_date: (),
    in_transaction: bool,
    blocked: bool,
    max_active_transaction_count: i32,
    active_transaction_count: i64,
    note: Option<&'a str>,
}

impl<'a> Overview<'a> {
    fn of(view: TagView<'a>) -> Self {
        let tag = view.tag;
        Overview {
            ocpp_tag_pk: tag.pk,
            id_tag: &tag.id_tag,
            parent_ocpp_tag_pk: view.parent_pk,
            parent_id_tag: tag.parent_id_tag.as_deref(),
            expiry_date: (),
            in_transaction: view.active_sessions > 0,
            blocked: false,
            max_active_transaction_count: tag.max_active_transaction_count,
            active_transaction_count: view.active_sessions,
            note: tag.note.as_deref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagParams {
    id_tag: Option<String>,
    parent_id_tag: Option<String>,
    ocpp_tag_pk: Option<String>,
}

async fn tags(
    State(steve): State<Steve>,
    Extension(url): Extension<RequestUrl>,
    params: Result<Query<TagParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Ok(Query(params)) = params else {
        return Err(url.not_understood());
    };
    let pk = (params.ocpp_tag_pk.as_deref().map(parse_int).transpose())
        .map_err(|NotUnderstood| url.not_understood())?;
    let state = steve.state();
    let found: Vec<_> = state
        .tags()
        .filter(|view| {
            let tag = view.tag;
            pk.is_none_or(|pk| pk == tag.pk)
                && params.id_tag.as_ref().is_none_or(|id| *id == tag.id_tag)
                && (params.parent_id_tag.as_ref())
                    .is_none_or(|parent| tag.parent_id_tag.as_ref() == Some(parent))
        })
        .map(Overview::of)
        .collect();
    Ok(Json(found).into_response())
}

fn tag_pk(url: &RequestUrl, text: &str) -> Result<i32, ApiError> {
    parse_int(text).map_err(|NotUnderstood| url.not_understood())
}

fn tag_not_found(url: &RequestUrl, pk: i32) -> ApiError {
    url.error(
        StatusCode::NOT_FOUND,
        format!("No OCPP tag has ocppTagPk {pk}"),
    )
}

async fn tag(
    State(steve): State<Steve>,
    Extension(url): Extension<RequestUrl>,
    Path(pk): Path<String>,
) -> Result<Response, ApiError> {
    let pk = tag_pk(&url, &pk)?;
    let state = steve.state();
    let view = state.tag(pk).ok_or_else(|| tag_not_found(&url, pk))?;
    Ok(Json(Overview::of(view)).into_response())
}

async fn delete_tag(
    State(steve): State<Steve>,
    Extension(url): Extension<RequestUrl>,
    Path(pk): Path<String>,
) -> Result<Response, ApiError> {
    let pk = tag_pk(&url, &pk)?;
    let mut state = steve.state();
    let view = state.tag(pk).ok_or_else(|| tag_not_found(&url, pk))?;
    let answer = Json(Overview::of(view)).into_response();
    state.delete_tag(pk);
    Ok(answer)
}

/// The body of `POST /ocppTags`; StEvE's other fields (`expiryDate`) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagForm {
    id_tag: Option<String>,
    parent_id_tag: Option<String>,
    note: Option<String>,
    max_active_transaction_count: Option<i32>,
}

async fn create_tag(
    State(steve): State<Steve>,
    Extension(url): Extension<RequestUrl>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form: TagForm = serde_json::from_slice(&body).map_err(|_| url.not_understood())?;
    let id_tag = form.id_tag.filter(|id| !id.trim().is_empty());
    let id_tag = id_tag.ok_or_else(|| url.not_understood())?;
    let mut state = steve.state();
    let added = state.add_tag(
        &id_tag,
        form.parent_id_tag.as_deref(),
        form.note,
        form.max_active_transaction_count.unwrap_or(1),
    );
    let pk = added
        .map_err(|error: Error| url.error(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()))?;
    let view = state.tag(pk).expect("the tag was just added");
    Ok((StatusCode::CREATED, Json(Overview::of(view))).into_response())
}
