//! Lago's REST API: the API key check, the handlers, and the JSON they answer with.

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ferry_core::time::{format_ms, now_ms};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::model::{Details, Event, EventInput, State as Store, Subscription, SubscriptionStatus};
use super::{Lago, Outcome};
use crate::server::Hangup;
use crate::time::format_seconds;

/// The most events one batch may carry.
const BATCH_LIMIT: usize = 100;

/// The quota the `429` fault's `X-RateLimit-Limit` header announces; the emulator has no quota
/// of its own.
const RATE_LIMIT: u32 = 100;

pub(super) fn routes(lago: Lago) -> Router<Lago> {
    Router::new()
        .route("/api/v1/events", post(create_event))
        .route("/api/v1/events/batch", post(create_batch))
        .route("/api/v1/events/{transaction_id}", get(event))
        .route("/api/v1/customers/{external_customer_id}", get(customer))
        .route(
            "/api/v1/customers/{external_customer_id}/subscriptions",
            get(customer_subscriptions),
        )
        .route("/api/v1/subscriptions", get(subscriptions))
        .route_layer(middleware::from_fn_with_state(lago, authorize))
}

async fn authorize(State(lago): State<Lago>, request: Request, next: Next) -> Response {
    let sent = (request.headers().get(AUTHORIZATION))
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if sent != Some(lago.config.api_key.as_str()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Lago's error answers.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Unauthorized,
    /// The resource that was not found: `event`, `customer`.
    NotFound(&'static str),
    /// The `error_details` of a `422`.
    Invalid(Value),
    TooManyRequests {
        retry_after_secs: u64,
    },
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                json!({ "status": 400, "error": format!("BadRequest: {message}") }),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({ "status": 401, "error": "Unauthorized" }),
            ),
            ApiError::NotFound(resource) => (
                StatusCode::NOT_FOUND,
                json!({
                    "status": 404,
                    "error": "Not Found",
                    "code": format!("{resource}_not_found"),
                }),
            ),
            ApiError::Invalid(details) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "status": 422,
                    "error": "Unprocessable Entity",
                    "code": "validation_errors",
                    "error_details": details,
                }),
            ),
            ApiError::TooManyRequests { retry_after_secs } => {
                let seconds = retry_after_secs.to_string();
                let headers = [
                    ("retry-after", seconds.clone()),
                    ("x-ratelimit-limit", RATE_LIMIT.to_string()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-reset", seconds),
                ];
                let body = json!({
                    "status": 429,
                    "error": "Too Many Requests",
                    "code": "too_many_requests",
                });
                return (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response();
            }
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "status": 500, "error": "Internal Server Error" }),
            ),
        };
        (status, Json(body)).into_response()
    }
}

/// An event as Lago shows it.
#[derive(Serialize)]
pub(super) struct EventJson<'a> {
    lago_id: &'a str,
    transaction_id: &'a str,
    /// Always null: Lago links an event to its customer after answering.
    lago_customer_id: (),
    code: &'a str,
    timestamp: String,
    /// Always null, as `lago_customer_id`.
    lago_subscription_id: (),
    external_subscription_id: Option<&'a str>,
    precise_total_amount_cents: Option<&'a str>,
    properties: &'a Value,
    created_at: String,
}

impl<'a> EventJson<'a> {
    pub(super) fn of(event: &'a Event) -> Self {
        EventJson {
            lago_id: &event.lago_id,
            transaction_id: &event.transaction_id,
            lago_customer_id: (),
            code: &event.code,
            timestamp: format_ms(event.timestamp_ms),
            lago_subscription_id: (),
            external_subscription_id: event.external_subscription_id.as_deref(),
            precise_total_amount_cents: event.precise_total_amount_cents.as_deref(),
            properties: &event.properties,
            created_at: format_seconds(event.created_at_ms),
        }
    }
}

#[derive(Serialize)]
struct OneEvent<'a> {
    event: EventJson<'a>,
}

#[derive(Serialize)]
pub(super) struct Events<'a> {
    pub(super) events: Vec<EventJson<'a>>,
}

#[derive(serde::Deserialize)]
struct SingleBody {
    event: Option<EventInput>,
}

#[derive(serde::Deserialize)]
struct BatchBody {
    events: Option<Vec<EventInput>>,
}

async fn create_event(
    State(lago): State<Lago>,
    hangup: Option<Extension<Hangup>>,
    body: Bytes,
) -> Response {
    post_events(&lago, hangup, || store_one(&lago, &body)).await
}

async fn create_batch(
    State(lago): State<Lago>,
    hangup: Option<Extension<Hangup>>,
    body: Bytes,
) -> Response {
    post_events(&lago, hangup, || store_batch(&lago, &body)).await
}

/// Counts a post of events, applies the armed faults, and lets `handle` store the events.
async fn post_events(
    lago: &Lago,
    hangup: Option<Extension<Hangup>>,
    handle: impl FnOnce() -> Result<Response, ApiError>,
) -> Response {
    let (stall, outcome) = {
        let mut state = lago.state();
        state.event_posts += 1;
        state.faults.take()
    };
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    let (hang_up, hold) = match outcome {
        Outcome::Fail => return ApiError::Internal.into_response(),
        Outcome::RateLimit { retry_after_secs } => {
            return ApiError::TooManyRequests { retry_after_secs }.into_response();
        }
        Outcome::Handle { hang_up, hold } => (hang_up, hold),
    };
    let answer = handle().unwrap_or_else(IntoResponse::into_response);
    // The post's events are stored by now; only the client's hearing of it waits.
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    match hangup {
        Some(Extension(hangup)) if hang_up => hangup.now().await,
        None if hang_up => ApiError::Internal.into_response(),
        _ => answer,
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::BadRequest(error.to_string()))
}

fn store_one(lago: &Lago, body: &[u8]) -> Result<Response, ApiError> {
    let SingleBody { event } = parse(body)?;
    let missing = "param is missing or the value is empty: event";
    let input = event.ok_or_else(|| ApiError::BadRequest(missing.to_owned()))?;
    let mut state = lago.state();
    match state.accept(vec![input], now_ms()) {
        Ok(stored) => {
            let event = EventJson::of(&state.events()[stored.start]);
            Ok(Json(OneEvent { event }).into_response())
        }
        // One event, so one entry: its details are the whole answer.
        Err(mut invalid) => Err(ApiError::Invalid(json!(invalid.swap_remove(0).1))),
    }
}

fn store_batch(lago: &Lago, body: &[u8]) -> Result<Response, ApiError> {
    let BatchBody { events } = parse(body)?;
    let inputs = events.unwrap_or_default();
    if inputs.is_empty() {
        return Err(ApiError::Invalid(json!({ "events": ["no_events"] })));
    }
    if inputs.len() > BATCH_LIMIT {
        return Err(ApiError::Invalid(json!({ "events": ["too_many_events"] })));
    }
    let mut state = lago.state();
    match state.accept(inputs, now_ms()) {
        Ok(stored) => {
            let events = state.events()[stored].iter().map(EventJson::of).collect();
            Ok(Json(Events { events }).into_response())
        }
        Err(invalid) => {
            let by_index: serde_json::Map<String, Value> = (invalid.into_iter())
                .map(|(index, details): (usize, Details)| (index.to_string(), json!(details)))
                .collect();
            Err(ApiError::Invalid(Value::Object(by_index)))
        }
    }
}

async fn event(
    State(lago): State<Lago>,
    Path(transaction_id): Path<String>,
) -> Result<Response, ApiError> {
    let state = lago.state();
    let event = state
        .event(&transaction_id)
        .ok_or(ApiError::NotFound("event"))?;
    Ok(Json(OneEvent {
        event: EventJson::of(event),
    })
    .into_response())
}

async fn customer(
    State(lago): State<Lago>,
    Path(external_id): Path<String>,
) -> Result<Response, ApiError> {
    let state = lago.state();
    let customer = state
        .customer(&external_id)
        .ok_or(ApiError::NotFound("customer"))?;
    let body = json!({
        "customer": {
            "lago_id": customer.lago_id,
            "sequential_id": customer.sequential_id,
            "external_id": customer.external_id,
            "name": customer.name,
            "applicable_timezone": "UTC",
            "created_at": format_seconds(customer.created_at_ms),
        }
    });
    Ok(Json(body).into_response())
}

async fn subscriptions(
    State(lago): State<Lago>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let listing = Listing::read(params);
    listing.answer(&lago.state(), now_ms())
}

async fn customer_subscriptions(
    State(lago): State<Lago>,
    Path(external_customer_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let state = lago.state();
    if state.customer(&external_customer_id).is_none() {
        return Err(ApiError::NotFound("customer"));
    }
    let listing = Listing {
        customer: Some(external_customer_id),
        ..Listing::read(params)
    };
    Ok(listing.answer(&state, now_ms()))
}

/// What a listing of subscriptions asks for.
#[derive(Debug)]
struct Listing {
    customer: Option<String>,
    /// The statuses wanted, as sent (`status[]`); `active` when none is.
    statuses: Vec<String>,
    page: usize,
    per_page: usize,
}

impl Listing {
    /// Reads the query; values that are not numbers fall back to the defaults, as Rails' `to_i`
    /// would make them.
    fn read(params: Vec<(String, String)>) -> Self {
        let mut listing = Listing {
            customer: None,
            statuses: Vec::new(),
            page: 1,
            per_page: 20,
        };
        for (name, value) in params {
            match name.as_str() {
                "external_customer_id" => listing.customer = Some(value),
                "status[]" => listing.statuses.push(value),
                "page" => listing.page = value.parse().unwrap_or(1).max(1),
                "per_page" => listing.per_page = value.parse().unwrap_or(20).clamp(1, 100),
                _ => {}
            }
        }
        if listing.statuses.is_empty() {
            listing.statuses.push("active".to_owned());
        }
        listing
    }

    fn answer(&self, state: &Store, now_ms: i64) -> Response {
        let wanted = |subscription: &&Subscription| {
            let status = subscription.status(now_ms).as_str();
            (self.customer.as_ref()).is_none_or(|id| *id == subscription.external_customer_id)
                && self.statuses.iter().any(|wanted| wanted == status)
        };
        let matching: Vec<&Subscription> = state.subscriptions().filter(wanted).collect();
        let total_pages = matching.len().div_ceil(self.per_page);
        let skipped = (self.page - 1).saturating_mul(self.per_page);
        let page: Vec<Value> = (matching.iter().skip(skipped).take(self.per_page))
            .map(|subscription| subscription_json(state, subscription, now_ms))
            .collect();
        let body = json!({
            "subscriptions": page,
            "meta": {
                "current_page": self.page,
                "next_page": (self.page < total_pages).then_some(self.page + 1),
                "prev_page": (self.page > 1 && self.page <= total_pages).then_some(self.page - 1),
                "total_pages": total_pages,
                "total_count": matching.len(),
            }
        });
        Json(body).into_response()
    }
}

/// A subscription as Lago shows it, with the fields about plans, billing periods and invoices
/// left out.
fn subscription_json(state: &Store, subscription: &Subscription, now_ms: i64) -> Value {
    let status = subscription.status(now_ms);
    let customer = state.customer(&subscription.external_customer_id);
    let start = format_seconds(subscription.started_at_ms);
    let termination = subscription.terminated_at_ms.map(format_seconds);
    let terminated = status == SubscriptionStatus::Terminated;
    json!({
        "lago_id": subscription.lago_id,
        "external_id": subscription.external_id,
        "lago_customer_id": customer.map(|customer| &customer.lago_id),
        "external_customer_id": subscription.external_customer_id,
        "name": null,
        "plan_code": subscription.plan_code,
        "status": status.as_str(),
        "billing_time": "calendar",
        "subscription_at": &start,
        // A pending subscription has not started yet, and Lago shows no start for it.
        "started_at": (status != SubscriptionStatus::Pending).then_some(&start),
        // A termination still to come is the subscription's end date.
        "ending_at": if terminated { None } else { termination.as_ref() },
        "terminated_at": if terminated { termination.as_ref() } else { None },
        "canceled_at": null,
        "trial_ended_at": null,
        "previous_plan_code": null,
        "next_plan_code": null,
        "downgrade_plan_date": null,
        "created_at": format_seconds(subscription.created_at_ms),
    })
}
