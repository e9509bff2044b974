//! The `/_emulator` routes: the handle's actions over HTTP (listed in the module documentation).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use ferry_core::time::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Error, Faults, Snapshot, Steve, StopActor};
use crate::ControlError;
use crate::time::deserialize_at;

pub(super) fn routes() -> Router<Steve> {
    Router::new()
        .route("/_emulator/state", get(state))
        .route("/_emulator/tags", post(add_tag))
        .route("/_emulator/tags/{id_tag}", delete(delete_tag))
        .route("/_emulator/sessions", post(start_session))
        .route(
            "/_emulator/sessions/{id}/meter-values",
            post(record_meter_value),
        )
        .route("/_emulator/sessions/{id}/stop", post(stop_session))
        .route(
            "/_emulator/sessions/{id}/stop-value",
            put(revise_stop_value),
        )
        .route(
            "/_emulator/faults",
            get(faults).post(arm_faults).delete(clear_faults),
        )
}

fn rejected(error: Error) -> ControlError {
    let status = match error {
        Error::UnknownTag(_) | Error::UnknownTransaction(_) => StatusCode::NOT_FOUND,
        Error::TagExists(_) | Error::AlreadyStopped(_) | Error::NotStopped(_) => {
            StatusCode::CONFLICT
        }
    };
    ControlError::new(status, &error)
}

/// The answer of an action that returns nothing.
type Answer = Result<StatusCode, ControlError>;

fn done(result: Result<(), Error>) -> Answer {
    result.map(|()| StatusCode::NO_CONTENT).map_err(rejected)
}

async fn state(State(steve): State<Steve>) -> Json<Snapshot> {
    Json(steve.snapshot())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTag {
    id_tag: String,
    parent_id_tag: Option<String>,
}

async fn add_tag(
    State(steve): State<Steve>,
    Json(tag): Json<NewTag>,
) -> Result<Response, ControlError> {
    let pk = steve
        .add_tag(&tag.id_tag, tag.parent_id_tag.as_deref())
        .map_err(rejected)?;
    Ok((StatusCode::CREATED, Json(json!({ "ocpp_tag_pk": pk }))).into_response())
}

async fn delete_tag(State(steve): State<Steve>, Path(id_tag): Path<String>) -> Answer {
    done(steve.delete_tag(&id_tag))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    charge_box_id: String,
    connector_id: i32,
    id_tag: String,
    #[serde(default, deserialize_with = "deserialize_at")]
    start: Option<i64>,
    start_value: Option<String>,
}

async fn start_session(State(steve): State<Steve>, Json(session): Json<NewSession>) -> Response {
    let id = steve.start_session(
        &session.charge_box_id,
        session.connector_id,
        &session.id_tag,
        session.start.unwrap_or_else(now_ms),
        session.start_value.as_deref(),
    );
    (StatusCode::CREATED, Json(json!({ "transaction_id": id }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reading {
    #[serde(default, deserialize_with = "deserialize_at")]
    at: Option<i64>,
    value: String,
}

async fn record_meter_value(
    State(steve): State<Steve>,
    Path(id): Path<i32>,
    Json(reading): Json<Reading>,
) -> Answer {
    let at_ms = reading.at.unwrap_or_else(now_ms);
    done(steve.record_meter_value(id, at_ms, &reading.value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    #[serde(default, deserialize_with = "deserialize_at")]
    at: Option<i64>,
    value: String,
    reason: Option<String>,
    actor: Option<StopActor>,
}

async fn stop_session(
    State(steve): State<Steve>,
    Path(id): Path<i32>,
    Json(stop): Json<StopRequest>,
) -> Answer {
    done(steve.stop_session(
        id,
        stop.at.unwrap_or_else(now_ms),
        &stop.value,
        stop.reason.as_deref(),
        stop.actor.unwrap_or(StopActor::Station),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopValue {
    value: String,
}

async fn revise_stop_value(
    State(steve): State<Steve>,
    Path(id): Path<i32>,
    Json(revised): Json<StopValue>,
) -> Answer {
    done(steve.revise_stop_value(id, &revised.value))
}

#[derive(Serialize)]
struct FaultReport {
    #[serde(flatten)]
    armed: Faults,
    requests_served: u64,
}

async fn faults(State(steve): State<Steve>) -> Json<FaultReport> {
    let state = steve.state();
    Json(FaultReport {
        armed: state.faults,
        requests_served: state.requests_served,
    })
}

async fn arm_faults(State(steve): State<Steve>, Json(armed): Json<Faults>) -> StatusCode {
    steve.state().faults = armed;
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(steve): State<Steve>) -> StatusCode {
    steve.clear_faults();
    StatusCode::NO_CONTENT
}
