//! A client of Lago's API: sending usage events, looking one up, and listing a customer's
//! subscriptions.
//!
//! The client reports and never retries or waits: each error says whether trying again may
//! help ([`LagoError::is_transient`]) and whether Lago may have applied the request anyway
//! ([`LagoError::is_ambiguous`]); the billing job decides what to do. An event's
//! `transaction_id` is what makes sending it again safe: Lago refuses a second event with the
//! same id as already existing.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long a request may take, from connecting to the last byte of the answer, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most events Lago takes in one batch.
pub const MAX_BATCH_EVENTS: usize = 100;

/// The wait a 429 implies when it says nothing about it.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest wait a 429 is believed about; longer hints are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The most pages of subscriptions one listing follows before it calls the answer broken.
const MAX_PAGES: u64 = 1_000;

/// Where Lago is and how to talk to it.
#[derive(Clone)]
pub struct LagoConfig {
    /// Lago's API server, such as `http://host:3000`; the client appends `/api/v1` unless the
    /// URL already ends with it.
    pub base_url: String,
    /// The API key, sent as a bearer token. It never appears in `Debug` output, logs or errors.
    pub api_key: String,
    /// The limit for a whole request, answer included.
    pub timeout: Duration,
    /// The limit for establishing a connection.
    pub connect_timeout: Duration,
}

impl LagoConfig {
    /// A configuration with the default timeouts.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> LagoConfig {
        LagoConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl fmt::Debug for LagoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagoConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A connection to one Lago server. Cloning it shares its connections.
#[derive(Clone)]
pub struct LagoClient {
    http: reqwest::Client,
    api: Url,
    authorization: HeaderValue,
}

impl fmt::Debug for LagoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagoClient")
            .field("api", &self.api.as_str())
            .finish_non_exhaustive()
    }
}

/// A usage event to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's unique id; Lago refuses a second event with the same one.
    pub transaction_id: String,
    /// The subscription the usage is billed to.
    pub external_subscription_id: String,
    /// The billable metric's code.
    pub code: String,
    /// When the usage happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The values the billable metric aggregates.
    pub properties: Map<String, Value>,
}

/// The JSON form Lago reads an event in.
#[derive(Serialize)]
struct WireEvent<'a> {
    transaction_id: &'a str,
    external_subscription_id: &'a str,
    code: &'a str,
    timestamp: String,
    properties: &'a Map<String, Value>,
}

impl<'a> WireEvent<'a> {
    fn new(event: &'a Event) -> WireEvent<'a> {
        WireEvent {
            transaction_id: &event.transaction_id,
            external_subscription_id: &event.external_subscription_id,
            code: &event.code,
            timestamp: lago_timestamp(event.timestamp_ms),
            properties: &event.properties,
        }
    }
}

/// Writes milliseconds since the Unix epoch the way Lago reads an event's time: Unix seconds
/// with three decimals, such as `"1651240791.123"`.
pub fn lago_timestamp(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let magnitude = ms.unsigned_abs();
    format!("{sign}{}.{:03}", magnitude / 1000, magnitude % 1000)
}

/// What became of a batch. Lago applies a batch whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum BatchOutcome {
    /// Lago stored every event of the batch.
    Accepted,
    /// Lago refused the batch and stored none of it. One verdict per event sent, in the order
    /// sent.
    RolledBack(Vec<EventVerdict>),
}

/// Why one event of a refused batch is not stored by this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventVerdict {
    /// Lago already holds an event with this `transaction_id` (sent before): nothing to resend.
    AlreadyExists,
    /// Lago refused the event itself; the text lists its field errors. Resending cannot help.
    Invalid(String),
    /// The event was fine, but the batch was rolled back because of others: send it again.
    NotApplied,
}

/// What became of a single event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum EventOutcome {
    /// Lago stored the event.
    Accepted,
    /// Lago already holds an event with this `transaction_id`.
    AlreadyExists,
    /// Lago refused the event; the text lists its field errors.
    Invalid(String),
}

/// An event as Lago holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Lago's own id for it.
    pub lago_id: Option<String>,
    /// The id it was sent with.
    pub transaction_id: String,
    /// The subscription it is billed to.
    pub external_subscription_id: Option<String>,
    /// The billable metric's code.
    pub code: String,
    /// When the usage happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Its properties.
    pub properties: Map<String, Value>,
}

/// A customer's subscription, as far as billing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The subscription's id in the caller's world; events name it.
    pub external_id: String,
    /// The customer's id in the caller's world.
    pub external_customer_id: String,
    /// Lago's status: `active`, `terminated`, `pending` or `canceled`.
    pub status: String,
    /// When it took effect; `None` while pending.
    pub started_at_ms: Option<i64>,
    /// When it ended; `None` while it runs.
    pub terminated_at_ms: Option<i64>,
}

/// The subscription usage at `at_ms` is billed to: one that had started by then and had not
/// been terminated before it. A subscription still running wins over a terminated one, then the
/// one started last; among equals, the first listed.
pub fn active_at(subscriptions: &[Subscription], at_ms: i64) -> Option<&Subscription> {
    subscriptions
        .iter()
        .filter(|s| {
            s.started_at_ms.is_some_and(|started| started <= at_ms)
                && s.terminated_at_ms.is_none_or(|ended| ended >= at_ms)
        })
        .min_by_key(|s| {
            (
                s.terminated_at_ms.is_some(),
                std::cmp::Reverse(s.started_at_ms),
            )
        })
}

impl LagoClient {
    /// Checks the configuration and prepares the connection pool; nothing is sent yet.
    pub fn new(config: LagoConfig) -> Result<LagoClient, LagoError> {
        let api = normalize_api_url(&config.base_url)?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.api_key))
            .map_err(|_| {
                LagoError::Config(
                    "Lago's API key contains characters an HTTP header cannot carry".to_string(),
                )
            })?;
        authorization.set_sensitive(true);
        let http = crate::http_client(config.timeout, config.connect_timeout)
            .map_err(|e| LagoError::Config(format!("the HTTP client cannot start: {e}")))?;
        Ok(LagoClient {
            http,
            api,
            authorization,
        })
    }

    /// The URL of Lago's API, ending in `/api/v1`.
    pub fn api_url(&self) -> &Url {
        &self.api
    }

    /// `POST /api/v1/events/batch`: sends up to [`MAX_BATCH_EVENTS`] events at once. An empty
    /// batch sends nothing and is accepted.
    pub async fn post_batch(&self, events: &[Event]) -> Result<BatchOutcome, LagoError> {
        if events.len() > MAX_BATCH_EVENTS {
            return Err(LagoError::BatchTooLarge {
                count: events.len(),
            });
        }
        if events.is_empty() {
            return Ok(BatchOutcome::Accepted);
        }
        let url = self.endpoint(&["events", "batch"]);
        let path = url.path().to_string();
        let body = serde_json::json!({
            "events": events.iter().map(WireEvent::new).collect::<Vec<_>>(),
        });
        let response = self.send(self.http.post(url).json(&body), &path).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_body(&path, response).await?;
        if status.is_success() {
            expect_json_object(&path, &body)?;
            return Ok(BatchOutcome::Accepted);
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            let error = ErrorBody::read(&body);
            if let Some(verdicts) = error
                .details
                .as_ref()
                .and_then(|details| verdicts_by_index(details, events.len()))
            {
                return Ok(BatchOutcome::RolledBack(verdicts));
            }
        }
        Err(answer_error(&path, status, &headers, &body))
    }

    /// `POST /api/v1/events`: sends one event.
    pub async fn post_event(&self, event: &Event) -> Result<EventOutcome, LagoError> {
        let url = self.endpoint(&["events"]);
        let path = url.path().to_string();
        let body = serde_json::json!({ "event": WireEvent::new(event) });
        let response = self.send(self.http.post(url).json(&body), &path).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_body(&path, response).await?;
        if status.is_success() {
            expect_json_object(&path, &body)?;
            return Ok(EventOutcome::Accepted);
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY
            && let Some(details @ Value::Object(_)) = ErrorBody::read(&body).details
        {
            return Ok(if only_already_exists(&details) {
                EventOutcome::AlreadyExists
            } else {
                EventOutcome::Invalid(invalid_text(&details))
            });
        }
        Err(answer_error(&path, status, &headers, &body))
    }

    /// `GET /api/v1/events/{transaction_id}`: the event Lago holds with this id, if any.
    ///
    /// An empty id names no event (and its URL would be the event list), so it is not asked.
    pub async fn event(&self, transaction_id: &str) -> Result<Option<StoredEvent>, LagoError> {
        if transaction_id.is_empty() {
            return Ok(None);
        }
        let url = self.endpoint(&["events", transaction_id]);
        let path = url.path().to_string();
        let response = self.send(self.http.get(url), &path).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_body(&path, response).await?;
        if status.is_success() {
            let answer: EventAnswer = decode(&path, &body)?;
            return answer.event.into_stored(&path).map(Some);
        }
        // Lago's "not found" comes as JSON; a bare 404 is more likely a wrong base URL.
        if status == StatusCode::NOT_FOUND && ErrorBody::read(&body).is_json {
            return Ok(None);
        }
        Err(answer_error(&path, status, &headers, &body))
    }

    /// `GET /api/v1/subscriptions`: the customer's active and terminated subscriptions, every
    /// page of them.
    pub async fn subscriptions(
        &self,
        external_customer_id: &str,
    ) -> Result<Vec<Subscription>, LagoError> {
        let mut subscriptions = Vec::new();
        let mut page: u64 = 1;
        loop {
            let mut url = self.endpoint(&["subscriptions"]);
            url.query_pairs_mut()
                .append_pair("external_customer_id", external_customer_id)
                .append_pair("status[]", "active")
                .append_pair("status[]", "terminated")
                .append_pair("per_page", "100")
                .append_pair("page", &page.to_string());
            let path = url.path().to_string();
            let response = self.send(self.http.get(url), &path).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = read_body(&path, response).await?;
            if !status.is_success() {
                return Err(answer_error(&path, status, &headers, &body));
            }
            let answer: SubscriptionsAnswer = decode(&path, &body)?;
            for raw in answer.subscriptions {
                subscriptions.push(raw.into_subscription(&path)?);
            }
            match answer.meta.next_page {
                None => return Ok(subscriptions),
                Some(next) if next <= page || next > MAX_PAGES => {
                    return Err(LagoError::Decode {
                        path,
                        reason: format!("page {page} names page {next} as the next one"),
                    });
                }
                Some(next) => page = next,
            }
        }
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("the API URL is an http(s) URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Sends a request with the key; any answer is returned, a failure to get one is mapped.
    async fn send(&self, request: RequestBuilder, path: &str) -> Result<Response, LagoError> {
        tracing::debug!(path, "Sending a request to Lago.");
        request
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport_error(path, e))
    }
}

/// Turns the configured URL into the API's base, ending in `/api/v1`.
fn normalize_api_url(text: &str) -> Result<Url, LagoError> {
    let mut url = Url::parse(text.trim())
        .map_err(|e| LagoError::Config(format!("Lago's URL \"{text}\" cannot be read: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LagoError::Config(format!(
            "Lago's URL \"{text}\" must start with http:// or https://"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(LagoError::Config(format!(
            "Lago's URL \"{text}\" must not carry a query or a fragment"
        )));
    }
    let path = url.path().trim_end_matches('/').to_string();
    if path.ends_with("/api/v1") {
        url.set_path(&path);
    } else {
        url.set_path(&format!("{path}/api/v1"));
    }
    Ok(url)
}

/// The verdicts of a refused batch when Lago's `error_details` are keyed by event index; `None`
/// when they are about the batch as a whole.
fn verdicts_by_index(details: &Value, count: usize) -> Option<Vec<EventVerdict>> {
    let Value::Object(by_index) = details else {
        return None;
    };
    if by_index.is_empty() {
        return None;
    }
    let mut verdicts = vec![EventVerdict::NotApplied; count];
    for (key, errors) in by_index {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let index: usize = key.parse().ok()?;
        *verdicts.get_mut(index)? = if only_already_exists(errors) {
            EventVerdict::AlreadyExists
        } else {
            EventVerdict::Invalid(invalid_text(errors))
        };
    }
    Some(verdicts)
}

/// Whether an event's only field error is that its `transaction_id` is taken: Lago holds it.
fn only_already_exists(errors: &Value) -> bool {
    let Value::Object(fields) = errors else {
        return false;
    };
    fields.len() == 1
        && matches!(
            fields.get("transaction_id"),
            Some(Value::Array(codes)) if codes.len() == 1 && codes[0] == "value_already_exist"
        )
}

/// The readable text of an invalid event's field errors.
fn invalid_text(errors: &Value) -> String {
    let text = describe_details(errors);
    if text.is_empty() {
        format!("Lago refused it without saying why ({errors})")
    } else {
        text
    }
}

/// Lago's field errors as one line: `properties: invalid_value; code: value_is_mandatory`.
fn describe_details(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .map(describe_details)
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(fields) => fields
            .iter()
            .map(|(name, inner)| match inner {
                Value::Object(_) => format!("{name}: ({})", describe_details(inner)),
                _ => format!("{name}: {}", describe_details(inner)),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What Lago's error bodies say: `{"status", "error", "code", "error_details"}`.
#[derive(Debug, Default)]
struct ErrorBody {
    is_json: bool,
    error: Option<String>,
    code: Option<String>,
    details: Option<Value>,
}

impl ErrorBody {
    fn read(body: &[u8]) -> ErrorBody {
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
            return ErrorBody::default();
        };
        let text = |value: Option<Value>| match value {
            Some(Value::String(text)) if !text.trim().is_empty() => Some(text),
            _ => None,
        };
        ErrorBody {
            is_json: true,
            error: text(fields.remove("error")),
            code: text(fields.remove("code")),
            details: fields.remove("error_details").filter(|d| !d.is_null()),
        }
    }

    /// One sentence-like text of the error, its code and details.
    fn message(&self, status: StatusCode) -> String {
        let mut message = self
            .error
            .clone()
            .or_else(|| status.canonical_reason().map(str::to_string))
            .unwrap_or_else(|| "an unexpected answer".to_string());
        if let Some(code) = &self.code {
            message.push_str(&format!(" ({code})"));
        }
        if let Some(details) = &self.details {
            let text = describe_details(details);
            if !text.is_empty() {
                message.push_str(&format!(": {text}"));
            }
        }
        message
    }
}

/// Maps an answer that is not a success (and not one the operation reads itself).
fn answer_error(path: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> LagoError {
    let path = path.to_string();
    let error = ErrorBody::read(body);
    let mut message = error.message(status);
    if !error.is_json && (status == StatusCode::NOT_FOUND || status.is_redirection()) {
        message.push_str("; is the base URL Lago's API server?");
    }
    match status {
        StatusCode::UNAUTHORIZED => LagoError::Unauthorized { path },
        StatusCode::TOO_MANY_REQUESTS => LagoError::RateLimited {
            path,
            retry_after: retry_after(headers),
        },
        _ if status.is_client_error() => LagoError::Rejected {
            path,
            status: status.as_u16(),
            code: error.code,
            message,
        },
        _ => LagoError::Server {
            path,
            status: status.as_u16(),
            message,
        },
    }
}

/// How long a 429 asks to wait: `Retry-After`, else `X-RateLimit-Reset`, in seconds; else the
/// default. Capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Duration {
    let seconds = |name: &str| {
        let text = headers.get(name)?.to_str().ok()?.trim();
        let seconds: f64 = text.parse().ok()?;
        (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
    };
    seconds("retry-after")
        .or_else(|| seconds("x-ratelimit-reset"))
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

async fn read_body(path: &str, response: Response) -> Result<Vec<u8>, LagoError> {
    response
        .bytes()
        .await
        .map(Vec::from)
        .map_err(|e| transport_error(path, e))
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, LagoError> {
    serde_json::from_slice(body).map_err(|e| LagoError::Decode {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// A successful write's answer must be a JSON object (or empty): a page of HTML from something
/// that is not Lago must not pass for an accepted event.
fn expect_json_object(path: &str, body: &[u8]) -> Result<(), LagoError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => Ok(()),
        Ok(_) => Err(LagoError::Decode {
            path: path.to_string(),
            reason: "the answer is JSON but not an object".to_string(),
        }),
        Err(e) => Err(LagoError::Decode {
            path: path.to_string(),
            reason: format!("the answer is not JSON ({e})"),
        }),
    }
}

fn parse_time(path: &str, field: &str, text: &str) -> Result<i64, LagoError> {
    text.trim()
        .parse::<Timestamp>()
        .map(Timestamp::as_millisecond)
        .map_err(|_| LagoError::Decode {
            path: path.to_string(),
            reason: format!("its {field} \"{text}\" is not an RFC 3339 time"),
        })
}

#[derive(Deserialize)]
struct EventAnswer {
    event: RawEvent,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    lago_id: Option<String>,
    transaction_id: String,
    #[serde(default)]
    external_subscription_id: Option<String>,
    code: String,
    timestamp: String,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
}

impl RawEvent {
    fn into_stored(self, path: &str) -> Result<StoredEvent, LagoError> {
        Ok(StoredEvent {
            timestamp_ms: parse_time(path, "timestamp", &self.timestamp)?,
            lago_id: self.lago_id,
            transaction_id: self.transaction_id,
            external_subscription_id: self.external_subscription_id,
            code: self.code,
            properties: self.properties.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
struct SubscriptionsAnswer {
    subscriptions: Vec<RawSubscription>,
    meta: PageMeta,
}

#[derive(Deserialize)]
struct PageMeta {
    #[serde(default)]
    next_page: Option<u64>,
}

#[derive(Deserialize)]
struct RawSubscription {
    external_id: String,
    external_customer_id: String,
    status: String,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    terminated_at: Option<String>,
}

impl RawSubscription {
    fn into_subscription(self, path: &str) -> Result<Subscription, LagoError> {
        let time = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_time(path, field, text))
                .transpose()
        };
        Ok(Subscription {
            started_at_ms: time("started_at", &self.started_at)?,
            terminated_at_ms: time("terminated_at", &self.terminated_at)?,
            external_id: self.external_id,
            external_customer_id: self.external_customer_id,
            status: self.status,
        })
    }
}

/// Why a call to Lago failed. No message contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum LagoError {
    /// The configuration cannot work (an unreadable URL, a key no header can carry).
    #[error("the Lago client is misconfigured: {0}")]
    Config(String),
    /// More than [`MAX_BATCH_EVENTS`] events in one batch; nothing was sent.
    #[error("a batch of {count} events is more than Lago takes at once ({MAX_BATCH_EVENTS}).")]
    BatchTooLarge {
        /// How many events the batch had.
        count: usize,
    },
    /// 401: Lago did not accept the API key.
    #[error("Lago refused the API key for {path} (401 Unauthorized).")]
    Unauthorized {
        /// The URL path asked for.
        path: String,
    },
    /// 429: too many requests; Lago asks to wait `retry_after`.
    #[error("Lago is limiting requests to {path}; it asks to wait {retry_after:?}.")]
    RateLimited {
        /// The URL path asked for.
        path: String,
        /// How long to wait before the next request.
        retry_after: Duration,
    },
    /// Any other 4xx: Lago refused the request as a whole. Nothing was stored.
    #[error("Lago refused the request to {path} with {status}: {message}")]
    Rejected {
        /// The URL path asked for.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Lago's error code, such as `validation_errors`, when it sent one.
        code: Option<String>,
        /// Lago's error and details.
        message: String,
    },
    /// A 5xx, or an answer no request of this client expects (a redirect).
    #[error("Lago answered {status} for {path}: {message}")]
    Server {
        /// The URL path asked for.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Lago's error, or what is known about the answer.
        message: String,
    },
    /// No complete answer arrived within the request timeout; the request may have been
    /// applied.
    #[error("Lago did not answer {path} in time; the request may or may not have been applied.")]
    Timeout {
        /// The URL path asked for.
        path: String,
    },
    /// Lago could not be reached (`request_sent` false: nothing was applied), or the
    /// connection broke after the request went out and before the answer was complete
    /// (`request_sent` true: it may have been applied).
    #[error("{}", connect_message(path, reason, *request_sent))]
    Connect {
        /// The URL path asked for.
        path: String,
        /// What the network said.
        reason: String,
        /// Whether the request may have reached Lago.
        request_sent: bool,
    },
    /// A successful answer is not the JSON this client expects.
    #[error("Lago's answer to {path} cannot be read: {reason}")]
    Decode {
        /// The URL path asked for.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn connect_message(path: &str, reason: &str, request_sent: bool) -> String {
    if request_sent {
        format!(
            "The connection to Lago broke before it answered {path}, so the request may or may \
             not have been applied: {reason}"
        )
    } else {
        format!("Lago cannot be reached for {path}: {reason}")
    }
}

impl LagoError {
    /// Whether the same request may succeed later: 5xx, 429, a timeout, a lost connection.
    pub fn is_transient(&self) -> bool {
        match self {
            LagoError::Server { status, .. } => *status >= 500,
            LagoError::RateLimited { .. }
            | LagoError::Timeout { .. }
            | LagoError::Connect { .. } => true,
            LagoError::Config(_)
            | LagoError::BatchTooLarge { .. }
            | LagoError::Unauthorized { .. }
            | LagoError::Rejected { .. }
            | LagoError::Decode { .. } => false,
        }
    }

    /// Whether Lago may have applied the request although this is an error: a timeout, a
    /// connection lost after sending, a 5xx, or a success answer that cannot be read. For a
    /// write, the caller must find out (or resend, which the transaction id makes safe); for a
    /// read it does not matter.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            LagoError::Timeout { .. } | LagoError::Decode { .. } => true,
            LagoError::Connect { request_sent, .. } => *request_sent,
            LagoError::Server { status, .. } => *status >= 500,
            LagoError::Config(_)
            | LagoError::BatchTooLarge { .. }
            | LagoError::Unauthorized { .. }
            | LagoError::RateLimited { .. }
            | LagoError::Rejected { .. } => false,
        }
    }

    /// For a 429: how long Lago asks to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LagoError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Maps a failure to exchange a request and its answer.
fn transport_error(path: &str, error: reqwest::Error) -> LagoError {
    let path = path.to_string();
    // A failed connect (a connect timeout included) sent nothing.
    if error.is_connect() {
        return LagoError::Connect {
            path,
            reason: describe(&error),
            request_sent: false,
        };
    }
    if error.is_timeout() {
        return LagoError::Timeout { path };
    }
    if error.is_decode() {
        return LagoError::Decode {
            path,
            reason: describe(&error),
        };
    }
    LagoError::Connect {
        path,
        reason: describe(&error),
        request_sent: true,
    }
}

/// What went wrong on the network, in the words of the innermost cause (the outer layers
/// only repeat that a request failed, and name the URL, which errors give as a path).
fn describe(error: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    match error.url() {
        Some(url) => innermost.to_string().replace(&format!(" ({url})"), ""),
        None => innermost.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription(id: &str, started: Option<i64>, terminated: Option<i64>) -> Subscription {
        Subscription {
            external_id: id.to_string(),
            external_customer_id: "customer".to_string(),
            status: if terminated.is_some() {
                "terminated"
            } else {
                "active"
            }
            .to_string(),
            started_at_ms: started,
            terminated_at_ms: terminated,
        }
    }

    #[test]
    fn timestamps_are_unix_seconds_with_milliseconds() {
        assert_eq!(lago_timestamp(1_651_240_791_123), "1651240791.123");
        assert_eq!(lago_timestamp(1_651_240_791_000), "1651240791.000");
        assert_eq!(lago_timestamp(5), "0.005");
        assert_eq!(lago_timestamp(0), "0.000");
        assert_eq!(lago_timestamp(-1), "-0.001");
        assert_eq!(lago_timestamp(-1_500), "-1.500");
    }

    #[test]
    fn a_subscription_is_active_from_its_start_to_its_termination_inclusive() {
        let subs = [subscription("a", Some(100), Some(200))];
        assert_eq!(active_at(&subs, 99), None);
        assert_eq!(active_at(&subs, 100).unwrap().external_id, "a");
        assert_eq!(active_at(&subs, 200).unwrap().external_id, "a");
        assert_eq!(active_at(&subs, 201), None);
    }

    #[test]
    fn a_pending_subscription_is_never_active() {
        let subs = [subscription("pending", None, None)];
        assert_eq!(active_at(&subs, i64::MAX), None);
    }

    #[test]
    fn a_running_subscription_wins_over_a_terminated_one() {
        // Plan change at 200: the old one terminated at 200, the new one started at 200.
        let subs = [
            subscription("old", Some(100), Some(300)),
            subscription("new", Some(50), None),
        ];
        assert_eq!(active_at(&subs, 200).unwrap().external_id, "new");
        assert_eq!(active_at(&subs, 60).unwrap().external_id, "new");
    }

    #[test]
    fn among_equals_the_latest_started_wins_then_the_first_listed() {
        let subs = [
            subscription("early", Some(100), None),
            subscription("late", Some(150), None),
            subscription("late-too", Some(150), None),
        ];
        assert_eq!(active_at(&subs, 160).unwrap().external_id, "late");
        assert_eq!(active_at(&subs, 120).unwrap().external_id, "early");
        let terminated = [
            subscription("t1", Some(100), Some(500)),
            subscription("t2", Some(120), Some(400)),
        ];
        assert_eq!(active_at(&terminated, 300).unwrap().external_id, "t2");
        assert_eq!(active_at(&terminated, 450).unwrap().external_id, "t1");
    }

    #[test]
    fn the_api_path_is_appended_once() {
        let url = |text: &str| normalize_api_url(text).unwrap().to_string();
        assert_eq!(url("http://host:3000"), "http://host:3000/api/v1");
        assert_eq!(url("http://host:3000/"), "http://host:3000/api/v1");
        assert_eq!(url("http://host:3000/api/v1"), "http://host:3000/api/v1");
        assert_eq!(url("http://host:3000/api/v1/"), "http://host:3000/api/v1");
        assert_eq!(url("https://host/lago"), "https://host/lago/api/v1");
        assert!(normalize_api_url("host:3000").is_err());
        assert!(normalize_api_url("http://host?x=1").is_err());
    }

    #[test]
    fn an_event_id_is_one_encoded_path_segment() {
        let client = LagoClient::new(LagoConfig::new("http://host:3000", "k")).unwrap();
        assert_eq!(
            client.endpoint(&["events", "steve/42 a?b#c%"]).as_str(),
            "http://host:3000/api/v1/events/steve%2F42%20a%3Fb%23c%25"
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let config = LagoConfig::new("http://host:3000", "very-secret-key-123");
        assert!(!format!("{config:?}").contains("very-secret-key-123"));
        let client = LagoClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("very-secret-key-123"));
        assert!(!format!("{client:#?}").contains("very-secret-key-123"));
    }

    #[test]
    fn batch_errors_keyed_by_index_give_one_verdict_per_event() {
        let details = json!({
            "1": {"transaction_id": ["value_already_exist"]},
            "3": {"properties": ["invalid_value"], "code": ["value_is_mandatory"]},
            "4": {"transaction_id": ["value_already_exist", "invalid_format"]},
        });
        let verdicts = verdicts_by_index(&details, 5).unwrap();
        assert_eq!(verdicts[0], EventVerdict::NotApplied);
        assert_eq!(verdicts[1], EventVerdict::AlreadyExists);
        assert_eq!(verdicts[2], EventVerdict::NotApplied);
        let EventVerdict::Invalid(text) = &verdicts[3] else {
            panic!("{:?}", verdicts[3]);
        };
        assert!(text.contains("properties: invalid_value"), "{text}");
        assert!(text.contains("code: value_is_mandatory"), "{text}");
        assert!(matches!(verdicts[4], EventVerdict::Invalid(_)));
    }

    #[test]
    fn batch_errors_not_keyed_by_index_are_about_the_batch() {
        assert_eq!(
            verdicts_by_index(&json!({"events": ["too_many_events"]}), 3),
            None
        );
        assert_eq!(verdicts_by_index(&json!({"7": {"code": ["x"]}}), 3), None);
        assert_eq!(verdicts_by_index(&json!({}), 3), None);
        assert_eq!(verdicts_by_index(&json!(["x"]), 3), None);
        assert_eq!(verdicts_by_index(&json!({"-1": {"code": ["x"]}}), 3), None);
    }

    #[test]
    fn retry_after_prefers_retry_after_then_the_reset_header_and_is_capped() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        let cases = [
            (
                headers(&[("retry-after", "7"), ("x-ratelimit-reset", "3")]),
                7.0,
            ),
            (headers(&[("x-ratelimit-reset", "3")]), 3.0),
            (
                headers(&[("retry-after", "later"), ("x-ratelimit-reset", "2")]),
                2.0,
            ),
            (headers(&[]), 1.0),
            (headers(&[("retry-after", "86400")]), 60.0),
            (headers(&[("x-ratelimit-reset", "1700000000")]), 60.0),
            (headers(&[("retry-after", "-3")]), 1.0),
        ];
        for (map, seconds) in cases {
            assert_eq!(
                retry_after(&map),
                Duration::from_secs_f64(seconds),
                "{map:?}"
            );
        }
    }

    #[test]
    fn a_stored_event_reads_its_time() {
        let answer: EventAnswer = serde_json::from_value(json!({"event": {
            "lago_id": "x", "transaction_id": "t", "external_subscription_id": "s",
            "code": "kwh", "timestamp": "2022-04-29T08:59:51.123Z",
            "properties": {"mwh": 5}, "lago_customer_id": null,
        }}))
        .unwrap();
        let event = answer.event.into_stored("/p").unwrap();
        assert_eq!(event.timestamp_ms, 1_651_222_791_123);
        assert_eq!(event.properties["mwh"], 5);
    }
}
