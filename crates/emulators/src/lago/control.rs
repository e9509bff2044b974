//! The `/_emulator` routes: the handle's actions over HTTP (listed in the module documentation).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::time::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{EventJson, Events};
use super::{Error, Faults, Lago, Rejection};
use crate::ControlError;
use crate::time::deserialize_at;

pub(super) fn routes() -> Router<Lago> {
    Router::new()
        .route("/_emulator/customers", post(add_customer))
        .route("/_emulator/subscriptions", post(add_subscription))
        .route(
            "/_emulator/subscriptions/{external_id}/terminate",
            post(terminate_subscription),
        )
        .route("/_emulator/events", get(events))
        .route("/_emulator/events/sum", get(sum))
        .route(
            "/_emulator/faults",
            get(faults).post(arm_faults).delete(clear_faults),
        )
        .route("/_emulator/rejections", post(reject))
}

fn done(result: Result<(), Error>) -> Result<StatusCode, ControlError> {
    result.map(|()| StatusCode::NO_CONTENT).map_err(|error| {
        let status = match error {
            Error::UnknownCustomer(_) | Error::UnknownSubscription(_) => StatusCode::NOT_FOUND,
            Error::SubscriptionExists(_) => StatusCode::CONFLICT,
        };
        ControlError::new(status, &error)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCustomer {
    external_id: String,
    name: String,
}

async fn add_customer(State(lago): State<Lago>, Json(customer): Json<NewCustomer>) -> StatusCode {
    lago.add_customer(&customer.external_id, &customer.name);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    external_id: String,
    external_customer_id: String,
    plan_code: String,
    #[serde(default, deserialize_with = "deserialize_at")]
    started_at: Option<i64>,
    #[serde(default, deserialize_with = "deserialize_at")]
    terminated_at: Option<i64>,
}

async fn add_subscription(
    State(lago): State<Lago>,
    Json(subscription): Json<NewSubscription>,
) -> Result<StatusCode, ControlError> {
    done(lago.add_subscription(
        &subscription.external_id,
        &subscription.external_customer_id,
        &subscription.plan_code,
        subscription.started_at.unwrap_or_else(now_ms),
        subscription.terminated_at,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Termination {
    #[serde(default, deserialize_with = "deserialize_at")]
    at: Option<i64>,
}

async fn terminate_subscription(
    State(lago): State<Lago>,
    Path(external_id): Path<String>,
    Json(termination): Json<Termination>,
) -> Result<StatusCode, ControlError> {
    let at_ms = termination.at.unwrap_or_else(now_ms);
    done(lago.terminate_subscription(&external_id, at_ms))
}

async fn events(State(lago): State<Lago>) -> Response {
    let state = lago.state();
    let events = state.events().iter().map(EventJson::of).collect();
    Json(Events { events }).into_response()
}

async fn sum(
    State(lago): State<Lago>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ControlError> {
    let Some(property) = params.get("property") else {
        let error = "name the property to sum: ?property=NAME";
        return Err(ControlError::new(StatusCode::BAD_REQUEST, &error));
    };
    let sum = lago.sum_property(property);
    Ok(Json(json!({ "property": property, "sum": sum })).into_response())
}

#[derive(Serialize)]
struct FaultReport {
    #[serde(flatten)]
    armed: Faults,
    rejections: Vec<Rejection>,
    event_posts: u64,
    events_stored: usize,
}

async fn faults(State(lago): State<Lago>) -> Json<FaultReport> {
    let state = lago.state();
    Json(FaultReport {
        armed: state.faults,
        rejections: state.rejections.values().cloned().collect(),
        event_posts: state.event_posts,
        events_stored: state.events().len(),
    })
}

async fn arm_faults(State(lago): State<Lago>, Json(armed): Json<Faults>) -> StatusCode {
    lago.state().faults = armed;
    StatusCode::NO_CONTENT
}

async fn reject(State(lago): State<Lago>, Json(rejection): Json<Rejection>) -> StatusCode {
    lago.state().reject(rejection);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(lago): State<Lago>) -> StatusCode {
    lago.clear_faults();
    StatusCode::NO_CONTENT
}
