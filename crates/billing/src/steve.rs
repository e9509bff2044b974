//! A client of StEvE's REST API (version 3.7.1): the charging sessions it recorded and the
//! OCPP tags they were started with.
//!
//! StEvE speaks in its own time zone where a time carries none: the `from` and `to` of a
//! transaction query are local date-times there, and so is a timestamp that arrives without an
//! offset. The client converts in both directions, so its callers only ever see instants.
//!
//! The client is tolerant of what it reads: unknown fields are ignored, a missing nullable field
//! is null, and one transaction it cannot read fully never fails the others. Such a transaction
//! comes back with [`Transaction::defect`] saying why it cannot be billed. The client does not
//! retry; [`SteveError::is_transient`] tells the caller whether trying again later may help.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Response, StatusCode, Url};
use serde_json::{Map, Value};

/// The context path StEvE is served under unless it was deployed elsewhere.
pub const DEFAULT_CONTEXT_PATH: &str = "/steve";

/// The header StEvE reads its API key from unless configured otherwise.
pub const DEFAULT_HEADER_NAME: &str = "STEVE-API-KEY";

/// How long a request may take, from connecting to the last byte of the answer, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where StEvE is and how to talk to it.
#[derive(Clone)]
pub struct SteveConfig {
    /// The URL StEvE is served at, including its context path, such as
    /// `http://host:8180/steve`. A URL without any path (`http://host:8180`) means StEvE's
    /// default context path, [`DEFAULT_CONTEXT_PATH`].
    pub base_url: String,
    /// The API key StEvE checks. It never appears in `Debug` output, logs or errors.
    pub api_key: String,
    /// The header the key is sent in.
    pub header_name: String,
    /// The time zone StEvE runs in: it reads query times and zone-less timestamps there.
    pub time_zone: TimeZone,
    /// The limit for a whole request, answer included.
    pub timeout: Duration,
    /// The limit for establishing a connection.
    pub connect_timeout: Duration,
}

impl SteveConfig {
    /// A configuration with the default header, UTC, and the default timeouts.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> SteveConfig {
        SteveConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            header_name: DEFAULT_HEADER_NAME.to_string(),
            time_zone: TimeZone::UTC,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl fmt::Debug for SteveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteveConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("header_name", &self.header_name)
            .field("time_zone", &self.time_zone)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A connection to one StEvE server. Cloning it shares its connections.
#[derive(Clone)]
pub struct SteveClient {
    http: reqwest::Client,
    base: Url,
    header_name: HeaderName,
    key: HeaderValue,
    time_zone: TimeZone,
}

impl fmt::Debug for SteveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteveClient")
            .field("base", &self.base.as_str())
            .field("header_name", &self.header_name)
            .field("time_zone", &self.time_zone)
            .finish_non_exhaustive()
    }
}

impl SteveClient {
    /// Checks the configuration and prepares the connection pool; nothing is sent yet.
    pub fn new(config: SteveConfig) -> Result<SteveClient, SteveError> {
        let base = normalize_base_url(&config.base_url)?;
        let header_name = HeaderName::from_bytes(config.header_name.as_bytes()).map_err(|_| {
            SteveError::Config(format!(
                "\"{}\" is not a valid HTTP header name for StEvE's API key",
                config.header_name
            ))
        })?;
        let mut key = HeaderValue::from_str(&config.api_key).map_err(|_| {
            SteveError::Config(
                "StEvE's API key contains characters an HTTP header cannot carry".to_string(),
            )
        })?;
        key.set_sensitive(true);
        let http = crate::http_client(config.timeout, config.connect_timeout)
            .map_err(|e| SteveError::Config(format!("the HTTP client cannot start: {e}")))?;
        Ok(SteveClient {
            http,
            base,
            header_name,
            key,
            time_zone: config.time_zone,
        })
    }

    /// The URL StEvE is reached at, context path included.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /api/v1/transactions`: the transactions the query selects, as StEvE lists them
    /// (all at once, newest id first).
    pub async fn transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<Vec<Transaction>, SteveError> {
        let mut url = self.endpoint(&["api", "v1", "transactions"]);
        self.append_query(&mut url, query);
        let path = url.path().to_string();
        let items = self.get_array(url).await?;
        let mut transactions = Vec::with_capacity(items.len());
        for item in items {
            match read_transaction(item, &self.time_zone) {
                Ok(transaction) => transactions.push(transaction),
                // Without its id a transaction cannot even be set aside; StEvE always sends it,
                // so this is a damaged answer, worth a warning but not the other sessions.
                Err(reason) => tracing::warn!(
                    path,
                    %reason,
                    "StEvE listed a transaction without a readable id; it is skipped."
                ),
            }
        }
        Ok(transactions)
    }

    /// `GET /api/v1/ocppTags`: every OCPP tag StEvE knows.
    pub async fn ocpp_tags(&self) -> Result<Vec<OcppTag>, SteveError> {
        let url = self.endpoint(&["api", "v1", "ocppTags"]);
        let path = url.path().to_string();
        let items = self.get_array(url).await?;
        let mut tags = Vec::with_capacity(items.len());
        for item in items {
            match serde_json::from_value::<OcppTag>(item) {
                Ok(tag) => tags.push(tag),
                Err(e) => tracing::warn!(
                    path,
                    error = %e,
                    "StEvE listed an OCPP tag that cannot be read; it is skipped."
                ),
            }
        }
        Ok(tags)
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("the base URL is an http(s) URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn append_query(&self, url: &mut Url, query: &TransactionQuery) {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair(
            "type",
            match query.kind {
                TransactionKind::All => "ALL",
                TransactionKind::Active => "ACTIVE",
            },
        );
        match query.period {
            Period::All => {
                pairs.append_pair("periodType", "ALL");
            }
            Period::FromTo { from, to } => {
                pairs.append_pair("periodType", "FROM_TO");
                pairs.append_pair("from", &local_bound(from, &self.time_zone, Bound::From));
                pairs.append_pair("to", &local_bound(to, &self.time_zone, Bound::To));
            }
        }
        if let Some(pk) = query.transaction_pk {
            pairs.append_pair("transactionPk", &pk.to_string());
        }
        if let Some(tag) = &query.ocpp_id_tag {
            pairs.append_pair("ocppIdTag", tag);
        }
        if let Some(charge_box) = &query.charge_box_id {
            pairs.append_pair("chargeBoxId", charge_box);
        }
    }

    /// Sends a GET and reads a JSON array from a successful answer.
    async fn get_array(&self, url: Url) -> Result<Vec<Value>, SteveError> {
        let path = url.path().to_string();
        tracing::debug!(path, "Asking StEvE.");
        let response = self
            .http
            .get(url)
            .header(&self.header_name, self.key.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport_error(&path, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(answer_error(&path, response).await);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(&path, e))?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(other) => Err(SteveError::Decode {
                path,
                reason: format!("expected a JSON array, found {}", json_kind(&other)),
            }),
            Err(e) => Err(SteveError::Decode {
                path,
                reason: format!("the body is not JSON ({e})"),
            }),
        }
    }
}

/// Turns the configured URL into the base every API path is appended to.
fn normalize_base_url(text: &str) -> Result<Url, SteveError> {
    let mut url = Url::parse(text.trim())
        .map_err(|e| SteveError::Config(format!("StEvE's URL \"{text}\" cannot be read: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SteveError::Config(format!(
            "StEvE's URL \"{text}\" must start with http:// or https://"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SteveError::Config(format!(
            "StEvE's URL \"{text}\" must not carry a query or a fragment"
        )));
    }
    let path = url.path().trim_end_matches('/').to_string();
    if path.is_empty() {
        url.set_path(DEFAULT_CONTEXT_PATH);
    } else {
        url.set_path(&path);
    }
    Ok(url)
}

/// Which transactions a query selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionQuery {
    /// Only the sessions still running, or all of them.
    pub kind: TransactionKind,
    /// Which sessions by the time they started.
    pub period: Period,
    /// Only the transaction with this id.
    pub transaction_pk: Option<i64>,
    /// Only sessions started with this OCPP tag.
    pub ocpp_id_tag: Option<String>,
    /// Only sessions of this charging station.
    pub charge_box_id: Option<String>,
}

impl TransactionQuery {
    /// Every transaction, finished or not, of all time.
    pub fn all() -> TransactionQuery {
        TransactionQuery::default()
    }

    /// Every session that has not stopped yet.
    pub fn active() -> TransactionQuery {
        TransactionQuery {
            kind: TransactionKind::Active,
            ..TransactionQuery::default()
        }
    }

    /// Only the sessions that started between `from` and `to`, both included.
    ///
    /// StEvE takes whole seconds, so `from` is sent rounded down and `to` rounded up: the
    /// answer may hold sessions up to a second outside the window, never fewer. Where a local
    /// time is ambiguous in StEvE's zone (the hour repeated when clocks go back), the bound is
    /// moved outwards past the repeated hour for the same reason.
    pub fn started_between(self, from: Timestamp, to: Timestamp) -> TransactionQuery {
        TransactionQuery {
            period: Period::FromTo { from, to },
            ..self
        }
    }

    /// [`TransactionQuery::started_between`] with milliseconds since the Unix epoch. Values
    /// beyond the range a timestamp can hold are clamped to it.
    pub fn started_between_ms(self, from_ms: i64, to_ms: i64) -> TransactionQuery {
        self.started_between(timestamp_clamped(from_ms), timestamp_clamped(to_ms))
    }

    /// Only the transaction with this id.
    pub fn transaction_pk(self, pk: i64) -> TransactionQuery {
        TransactionQuery {
            transaction_pk: Some(pk),
            ..self
        }
    }

    /// Only sessions started with this OCPP tag.
    pub fn ocpp_id_tag(self, id_tag: impl Into<String>) -> TransactionQuery {
        TransactionQuery {
            ocpp_id_tag: Some(id_tag.into()),
            ..self
        }
    }

    /// Only sessions of this charging station.
    pub fn charge_box_id(self, charge_box_id: impl Into<String>) -> TransactionQuery {
        TransactionQuery {
            charge_box_id: Some(charge_box_id.into()),
            ..self
        }
    }
}

/// StEvE's `type`: running sessions only, or all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransactionKind {
    /// `ALL`.
    #[default]
    All,
    /// `ACTIVE`: sessions without a stop.
    Active,
}

/// StEvE's `periodType`, as far as the billing job needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Period {
    /// `ALL`: no restriction by time.
    #[default]
    All,
    /// `FROM_TO`: sessions whose start lies in the window, both ends included.
    FromTo {
        /// The earliest start.
        from: Timestamp,
        /// The latest start.
        to: Timestamp,
    },
}

fn timestamp_clamped(ms: i64) -> Timestamp {
    let ms = ms.clamp(
        Timestamp::MIN.as_millisecond(),
        Timestamp::MAX.as_millisecond(),
    );
    Timestamp::from_millisecond(ms).expect("a clamped millisecond is in range")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    From,
    To,
}

/// Formats a window bound as the zone-less local date-time StEvE reads in its own zone.
fn local_bound(at: Timestamp, tz: &TimeZone, bound: Bound) -> String {
    let ms = at.as_millisecond();
    let second = match bound {
        Bound::From => ms.div_euclid(1000),
        Bound::To => ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0),
    };
    let at = Timestamp::from_second(second).unwrap_or(at);
    let mut local = tz.to_datetime(at);
    // An instant in the repeated hour has a local time StEvE may read as the other of its two
    // instants, up to the length of the repetition away. Moving the bound outwards by that
    // length lands on a local time that is not repeated and keeps every session inside.
    for _ in 0..3 {
        let AmbiguousOffset::Fold { before, after } = tz.to_ambiguous_timestamp(local).offset()
        else {
            break;
        };
        let repeated = before.duration_since(after).abs();
        let moved = match bound {
            Bound::From => local.checked_sub(repeated),
            Bound::To => local.checked_add(repeated),
        };
        match moved {
            Ok(moved) => local = moved,
            Err(_) => break,
        }
    }
    local.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// A charging session as StEvE lists it.
///
/// Times are kept both as StEvE wrote them and as the instant they name; meter values are kept
/// as text ([`parse_meter_mwh`] reads them). A field StEvE sent with the wrong type is left
/// empty and recorded in `defects`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// `id`: the transaction's primary key.
    pub id: i64,
    /// `connectorId`.
    pub connector_id: Option<i64>,
    /// `chargeBoxPk`.
    pub charge_box_pk: Option<i64>,
    /// `ocppTagPk`.
    pub ocpp_tag_pk: Option<i64>,
    /// `chargeBoxId`: the charging station's name.
    pub charge_box_id: Option<String>,
    /// `ocppIdTag`: the tag the session was started with.
    pub ocpp_id_tag: Option<String>,
    /// `startTimestamp`.
    pub start: Option<SteveTimestamp>,
    /// `startValue`: the meter at the start, in Wh, as text.
    pub start_value: Option<String>,
    /// `stopTimestamp`; `None` while the session runs.
    pub stop: Option<SteveTimestamp>,
    /// `stopValue`: the meter at the stop, in Wh, as text.
    pub stop_value: Option<String>,
    /// `stopReason`.
    pub stop_reason: Option<String>,
    /// `stopEventActor`: who stopped the session.
    pub stop_event_actor: Option<StopEventActor>,
    /// Fields that were present but could not be read, one sentence each.
    pub defects: Vec<String>,
}

impl Transaction {
    /// When the session started, if StEvE said so readably.
    pub fn start_ms(&self) -> Option<i64> {
        self.start.as_ref().and_then(|t| t.ms)
    }

    /// When the session stopped, if it did and StEvE said so readably.
    pub fn stop_ms(&self) -> Option<i64> {
        self.stop.as_ref().and_then(|t| t.ms)
    }

    /// Whether the session has stopped (StEvE sent a stop time, readable or not).
    pub fn is_stopped(&self) -> bool {
        self.stop.is_some()
    }

    /// Why this transaction cannot be trusted, if it cannot: a field of the wrong type, a
    /// missing start, or a time that cannot be read. The caller sets such a session aside.
    pub fn defect(&self) -> Option<String> {
        if let Some(first) = self.defects.first() {
            return Some(first.clone());
        }
        match &self.start {
            None => return Some("StEvE sent no startTimestamp".to_string()),
            Some(t) if t.ms.is_none() => {
                return Some(format!("its startTimestamp \"{}\" cannot be read", t.text));
            }
            Some(_) => {}
        }
        match &self.stop {
            Some(t) if t.ms.is_none() => {
                Some(format!("its stopTimestamp \"{}\" cannot be read", t.text))
            }
            _ => None,
        }
    }
}

/// A time as StEvE wrote it, and the instant it names when that could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteveTimestamp {
    /// The text StEvE sent.
    pub text: String,
    /// Milliseconds since the Unix epoch; `None` when the text is not a date-time.
    pub ms: Option<i64>,
}

impl SteveTimestamp {
    /// Reads `text`; a date-time without a zone is read in StEvE's zone `tz`.
    pub fn parse(text: &str, tz: &TimeZone) -> SteveTimestamp {
        SteveTimestamp {
            text: text.to_string(),
            ms: parse_timestamp_ms(text, tz),
        }
    }

    /// A readable timestamp for an instant (for building transactions in tests and plans).
    pub fn from_ms(ms: i64) -> SteveTimestamp {
        SteveTimestamp {
            text: timestamp_clamped(ms).to_string(),
            ms: Some(ms),
        }
    }
}

/// Who stopped a session, in StEvE's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopEventActor {
    /// `station`: the charging station reported the stop.
    Station,
    /// `manual`: an operator closed the session in StEvE.
    Manual,
    /// A value this client does not know, kept as sent.
    Other(String),
}

impl StopEventActor {
    fn from_text(text: &str) -> StopEventActor {
        match text {
            "station" => StopEventActor::Station,
            "manual" => StopEventActor::Manual,
            other => StopEventActor::Other(other.to_string()),
        }
    }
}

/// An OCPP tag as StEvE lists it (the fields billing needs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OcppTag {
    /// `ocppTagPk`.
    pub ocpp_tag_pk: i64,
    /// `idTag`.
    pub id_tag: String,
    /// `parentIdTag`.
    #[serde(default)]
    pub parent_id_tag: Option<String>,
    /// `parentOcppTagPk`.
    #[serde(default)]
    pub parent_ocpp_tag_pk: Option<i64>,
}

/// Reads one element of StEvE's transaction list; an error only when it has no usable id.
fn read_transaction(value: Value, tz: &TimeZone) -> Result<Transaction, String> {
    let Value::Object(fields) = value else {
        return Err(format!("it is {}, not an object", json_kind(&value)));
    };
    let id = match fields.get("id") {
        Some(id) => id
            .as_i64()
            .ok_or_else(|| format!("its id {id} is not an integer"))?,
        None => return Err("it has no id".to_string()),
    };
    let mut reader = Fields {
        fields: &fields,
        defects: Vec::new(),
    };
    Ok(Transaction {
        id,
        connector_id: reader.integer("connectorId"),
        charge_box_pk: reader.integer("chargeBoxPk"),
        ocpp_tag_pk: reader.integer("ocppTagPk"),
        charge_box_id: reader.text("chargeBoxId"),
        ocpp_id_tag: reader.text("ocppIdTag"),
        start: reader
            .text("startTimestamp")
            .map(|t| SteveTimestamp::parse(&t, tz)),
        start_value: reader.text("startValue"),
        stop: reader
            .text("stopTimestamp")
            .map(|t| SteveTimestamp::parse(&t, tz)),
        stop_value: reader.text("stopValue"),
        stop_reason: reader.text("stopReason"),
        stop_event_actor: reader
            .text("stopEventActor")
            .map(|t| StopEventActor::from_text(&t)),
        defects: std::mem::take(&mut reader.defects),
    })
}

/// Reads fields leniently: absent and null are `None`, a wrong type is `None` and a defect.
struct Fields<'a> {
    fields: &'a Map<String, Value>,
    defects: Vec<String>,
}

impl Fields<'_> {
    fn integer(&mut self, name: &str) -> Option<i64> {
        match self.fields.get(name) {
            None | Some(Value::Null) => None,
            Some(value) => {
                let integer = value.as_i64();
                if integer.is_none() {
                    self.defects
                        .push(format!("its {name} {value} is not an integer"));
                }
                integer
            }
        }
    }

    /// A string field; a number is accepted as its text (a meter value sent unquoted).
    fn text(&mut self, name: &str) -> Option<String> {
        match self.fields.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Number(number)) => Some(number.to_string()),
            Some(value) => {
                self.defects
                    .push(format!("its {name} {value} is not a string"));
                None
            }
        }
    }
}

/// Reads an ISO 8601 date-time into milliseconds since the Unix epoch.
///
/// With a zone (`Z` or an offset) it names that instant; without one it is a local time in
/// `tz`, StEvE's zone (a repeated local time is read as its earlier instant, a skipped one as
/// if the clocks had not moved yet). Anything else is `None`.
pub fn parse_timestamp_ms(text: &str, tz: &TimeZone) -> Option<i64> {
    let text = text.trim();
    if let Ok(at) = text.parse::<Timestamp>() {
        return Some(at.as_millisecond());
    }
    let local = text.parse::<DateTime>().ok()?;
    let at = tz.to_ambiguous_timestamp(local).compatible().ok()?;
    Some(at.as_millisecond())
}

/// Reads a meter value in watt-hours, written as a decimal (`"12345"`, `"12345.678"`,
/// `" -5 "`), exactly into milliwatt-hours.
///
/// Surrounding whitespace and a sign are allowed; exponents, `NaN`, empty and any other text
/// are not (`None`), nor is a value beyond `i64`. Digits past the third decimal are rounded,
/// half away from zero.
pub fn parse_meter_mwh(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let mut magnitude: i64 = 0;
    for digit in whole.bytes() {
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    let mut fraction_digits = fraction.bytes().map(|b| i64::from(b - b'0'));
    for _ in 0..3 {
        let digit = fraction_digits.next().unwrap_or(0);
        magnitude = magnitude.checked_mul(10)?.checked_add(digit)?;
    }
    // The fourth decimal alone decides: 5 or more is at least half a milliwatt-hour.
    if fraction_digits.next().is_some_and(|digit| digit >= 5) {
        magnitude = magnitude.checked_add(1)?;
    }
    Some(if negative { -magnitude } else { magnitude })
}

/// Why a call to StEvE failed. No message contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum SteveError {
    /// The configuration cannot work (an unreadable URL, a key no header can carry).
    #[error("the StEvE client is misconfigured: {0}")]
    Config(String),
    /// 401: StEvE did not accept the API key.
    #[error("StEvE refused the API key for {path} (401 Unauthorized).")]
    Unauthorized {
        /// The URL path asked for.
        path: String,
    },
    /// 400: StEvE found the request invalid; `message` is its explanation.
    #[error("StEvE rejected the request to {path} as invalid: {message}")]
    BadRequest {
        /// The URL path asked for.
        path: String,
        /// StEvE's `message`.
        message: String,
    },
    /// Any other answer that is not a success: 5xx, 404 from a wrong context path, 429.
    #[error("StEvE answered {status} for {path}: {message}")]
    Server {
        /// The URL path asked for.
        path: String,
        /// The HTTP status.
        status: u16,
        /// StEvE's message, or what is known about the answer.
        message: String,
    },
    /// No complete answer arrived within the request timeout.
    #[error("StEvE did not answer {path} in time.")]
    Timeout {
        /// The URL path asked for.
        path: String,
    },
    /// StEvE could not be reached, or the connection broke before the answer was complete.
    #[error("The connection to StEvE failed for {path}: {reason}")]
    Connect {
        /// The URL path asked for.
        path: String,
        /// What the network said.
        reason: String,
    },
    /// The answer is not the JSON this client expects.
    #[error("StEvE's answer to {path} cannot be read: {reason}")]
    Decode {
        /// The URL path asked for.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SteveError {
    /// Whether the same request may succeed later: 5xx, 429, a timeout, a lost connection.
    pub fn is_transient(&self) -> bool {
        match self {
            SteveError::Server { status, .. } => *status >= 500 || *status == 429,
            SteveError::Timeout { .. } | SteveError::Connect { .. } => true,
            SteveError::Config(_)
            | SteveError::Unauthorized { .. }
            | SteveError::BadRequest { .. }
            | SteveError::Decode { .. } => false,
        }
    }
}

/// Maps a failure to exchange a request and its answer.
fn transport_error(path: &str, error: reqwest::Error) -> SteveError {
    let path = path.to_string();
    if error.is_timeout() && !error.is_connect() {
        return SteveError::Timeout { path };
    }
    if error.is_decode() {
        return SteveError::Decode {
            path,
            reason: describe(&error),
        };
    }
    SteveError::Connect {
        path,
        reason: describe(&error),
    }
}

/// Maps an answer that is not a success.
async fn answer_error(path: &str, response: Response) -> SteveError {
    let path = path.to_string();
    let status = response.status();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.bytes().await.unwrap_or_default();
    let message = error_message(&body).unwrap_or_else(|| {
        let reason = status.canonical_reason().unwrap_or("an unexpected answer");
        match (&location, status.is_redirection()) {
            (Some(location), true) => {
                format!("{reason}, a redirect to {location}; is the base URL StEvE's context path?")
            }
            _ if status == StatusCode::NOT_FOUND => {
                format!("{reason}; is the base URL StEvE's context path?")
            }
            _ => reason.to_string(),
        }
    });
    match status {
        StatusCode::UNAUTHORIZED => SteveError::Unauthorized { path },
        StatusCode::BAD_REQUEST => SteveError::BadRequest { path, message },
        _ => SteveError::Server {
            path,
            status: status.as_u16(),
            message,
        },
    }
}

/// The `message` (or else `error`) of StEvE's error body, when it has one.
fn error_message(body: &[u8]) -> Option<String> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    ["message", "error"]
        .iter()
        .filter_map(|name| fields.get(*name)?.as_str())
        .map(str::trim)
        .find(|text| !text.is_empty())
        .map(str::to_string)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn meter_values_parse_exactly_into_milliwatt_hours() {
        assert_eq!(parse_meter_mwh("12345"), Some(12_345_000));
        assert_eq!(parse_meter_mwh("12345.678"), Some(12_345_678));
        assert_eq!(parse_meter_mwh(" 12 "), Some(12_000));
        assert_eq!(parse_meter_mwh("-5"), Some(-5_000));
        assert_eq!(parse_meter_mwh("+5.5"), Some(5_500));
        assert_eq!(parse_meter_mwh("0.1"), Some(100));
        assert_eq!(parse_meter_mwh(".25"), Some(250));
        assert_eq!(parse_meter_mwh("7."), Some(7_000));
        assert_eq!(parse_meter_mwh("-0"), Some(0));
    }

    #[test]
    fn meter_values_round_half_away_from_zero_past_three_decimals() {
        assert_eq!(parse_meter_mwh("1.0005"), Some(1_001));
        assert_eq!(parse_meter_mwh("1.00049999"), Some(1_000));
        assert_eq!(parse_meter_mwh("-1.0005"), Some(-1_001));
        assert_eq!(parse_meter_mwh("-1.0004"), Some(-1_000));
        assert_eq!(parse_meter_mwh("0.9995"), Some(1_000));
        // The binary float nearest 0.1 + 0.2 would not come out this exactly.
        assert_eq!(parse_meter_mwh("0.3"), Some(300));
    }

    #[test]
    fn meter_values_that_are_not_plain_decimals_are_rejected() {
        for text in [
            "",
            " ",
            "1e3",
            "1E3",
            "NaN",
            "nan",
            "inf",
            "abc",
            "12a",
            "1.2.3",
            ".",
            "-",
            "+",
            "--1",
            "1 2",
            "0x10",
            "١٢",
            "99999999999999999999",
        ] {
            assert_eq!(parse_meter_mwh(text), None, "{text:?}");
        }
        assert_eq!(parse_meter_mwh("9223372036854775.807"), Some(i64::MAX));
        assert_eq!(parse_meter_mwh("9223372036854775.808"), None);
    }

    #[test]
    fn timestamps_with_a_zone_name_their_instant() {
        let tz = berlin();
        let expected = ms("2026-12-06T01:02:03.456Z");
        assert_eq!(
            parse_timestamp_ms("2026-12-06T01:02:03.456Z", &tz),
            Some(expected)
        );
        assert_eq!(
            parse_timestamp_ms("2026-12-06T02:02:03.456+01:00", &tz),
            Some(expected)
        );
        assert_eq!(
            parse_timestamp_ms("2026-12-06T01:02:03Z", &tz),
            Some(expected - 456)
        );
    }

    #[test]
    fn timestamps_without_a_zone_are_read_in_steves_zone() {
        let tz = berlin();
        // Winter: UTC+1; summer: UTC+2.
        assert_eq!(
            parse_timestamp_ms("2026-12-06T02:02:03.456", &tz),
            Some(ms("2026-12-06T01:02:03.456Z"))
        );
        assert_eq!(
            parse_timestamp_ms("2026-07-01T12:00:00", &tz),
            Some(ms("2026-07-01T10:00:00Z"))
        );
        assert_eq!(
            parse_timestamp_ms("2026-07-01T12:00:00", &TimeZone::UTC),
            Some(ms("2026-07-01T12:00:00Z"))
        );
    }

    #[test]
    fn unreadable_timestamps_are_none() {
        for text in ["", "yesterday", "2026-13-01T00:00:00Z", "1700000000"] {
            assert_eq!(parse_timestamp_ms(text, &TimeZone::UTC), None, "{text:?}");
        }
    }

    #[test]
    fn a_transaction_with_a_bad_time_is_kept_with_its_defect() {
        let value = serde_json::json!({
            "id": 7, "connectorId": 1, "chargeBoxId": "CB1", "ocppIdTag": "TAG",
            "startTimestamp": "not a time", "startValue": null, "extra": true,
        });
        let transaction = read_transaction(value, &TimeZone::UTC).unwrap();
        assert_eq!(transaction.id, 7);
        assert_eq!(transaction.start_ms(), None);
        assert_eq!(transaction.start_value, None);
        assert!(transaction.defect().unwrap().contains("not a time"));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_defect_not_a_failure() {
        let value = serde_json::json!({
            "id": 8, "connectorId": "one", "startTimestamp": "2026-01-01T00:00:00Z",
        });
        let transaction = read_transaction(value, &TimeZone::UTC).unwrap();
        assert_eq!(transaction.connector_id, None);
        assert!(transaction.defect().unwrap().contains("connectorId"));
        assert!(read_transaction(serde_json::json!({"id": "x"}), &TimeZone::UTC).is_err());
        assert!(read_transaction(serde_json::json!([]), &TimeZone::UTC).is_err());
    }

    #[test]
    fn query_bounds_are_local_times_in_steves_zone() {
        let tz = berlin();
        let from = ms("2026-03-01T12:00:00.250Z");
        let to = ms("2026-04-01T12:00:00.250Z");
        // Rounded outwards to whole seconds, each with the offset of its own date.
        assert_eq!(
            local_bound(timestamp_clamped(from), &tz, Bound::From),
            "2026-03-01T13:00:00"
        );
        assert_eq!(
            local_bound(timestamp_clamped(to), &tz, Bound::To),
            "2026-04-01T14:00:01"
        );
        assert_eq!(
            local_bound(timestamp_clamped(to), &TimeZone::UTC, Bound::To),
            "2026-04-01T12:00:01"
        );
    }

    #[test]
    fn query_bounds_in_the_repeated_hour_move_outwards() {
        let tz = berlin();
        // On 2026-10-25 Berlin's clocks go from 03:00 CEST back to 02:00 CET at 01:00Z.
        let first_0230 = timestamp_clamped(ms("2026-10-25T00:30:00Z"));
        let second_0230 = timestamp_clamped(ms("2026-10-25T01:30:00Z"));
        assert_eq!(
            local_bound(first_0230, &tz, Bound::From),
            "2026-10-25T01:30:00"
        );
        assert_eq!(
            local_bound(second_0230, &tz, Bound::To),
            "2026-10-25T03:30:00"
        );
        // Outside the repeated hour nothing moves.
        let before = timestamp_clamped(ms("2026-10-24T23:59:59Z"));
        assert_eq!(local_bound(before, &tz, Bound::From), "2026-10-25T01:59:59");
    }

    #[test]
    fn a_url_without_a_path_gets_steves_default_context_path() {
        let url = |text: &str| normalize_base_url(text).unwrap().to_string();
        assert_eq!(url("http://host:8180"), "http://host:8180/steve");
        assert_eq!(url("http://host:8180/"), "http://host:8180/steve");
        assert_eq!(url("http://host:8180/steve/"), "http://host:8180/steve");
        assert_eq!(url("https://host/ocpp/steve"), "https://host/ocpp/steve");
        assert!(normalize_base_url("ftp://host").is_err());
        assert!(normalize_base_url("host:8180").is_err());
        assert!(normalize_base_url("http://host/steve?x=1").is_err());
    }

    #[test]
    fn endpoints_are_appended_to_the_context_path() {
        let client = SteveClient::new(SteveConfig::new("http://host:8180/", "k")).unwrap();
        assert_eq!(
            client.endpoint(&["api", "v1", "ocppTags"]).as_str(),
            "http://host:8180/steve/api/v1/ocppTags"
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let config = SteveConfig::new("http://host:8180/steve", "very-secret-key-123");
        assert!(!format!("{config:?}").contains("very-secret-key-123"));
        let client = SteveClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("very-secret-key-123"));
        assert!(!format!("{client:#?}").contains("very-secret-key-123"));
    }

    #[test]
    fn a_key_no_header_can_carry_is_a_config_error_that_does_not_show_it() {
        let error = SteveClient::new(SteveConfig::new("http://h", "bad\nkey")).unwrap_err();
        assert!(matches!(error, SteveError::Config(_)));
        assert!(!error.to_string().contains("bad\nkey"));
    }
}
