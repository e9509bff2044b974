//! The device sync API: health, push, pull and the schema.

use std::cell::Cell;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::time::format_ms;
use ferry_proto::{
    ErrorCode, Health, HealthUnavailable, PushRequest, PushResponse, RowChange, SchemaResponse,
};
use ferry_store::{Cursor, PageLimit, PullPage, PushBatch};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::json;

use crate::auth::{DeviceAuth, SchemaAccess};
use crate::error::ErrorCause;
use crate::{ApiError, AppState, body, now_ms};

/// `GET /api/sync/health`: no auth; 503 while the store cannot be reached.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let health = Health {
        status: "ok".into(),
        server_time: format_ms(now_ms()),
        version: env!("CARGO_PKG_VERSION").into(),
        schema_hash: state.config.schema_hash.clone(),
    };
    let Err(error) = state.store.ping().await else {
        return Json(health).into_response();
    };
    // The contract's health shape with status "unavailable", plus the usual error object so
    // that every non-2xx body carries `error`.
    let error = ApiError::from(error);
    let body = HealthUnavailable {
        health: Health {
            status: "unavailable".into(),
            ..health
        },
        error: error.body().error,
    };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    if let Some(cause) = error.cause() {
        response
            .extensions_mut()
            .insert(ErrorCause(cause.to_owned()));
    }
    response
}

/// `POST /api/sync/push`: one transaction; one result per change, in request order.
///
/// The token is checked while the body is read and parsed (a large push's body takes
/// milliseconds of CPU, the token a database round trip). An authentication error
/// still wins: it is answered as soon as it is known, without reading the rest of the body,
/// and it comes before any error in the body.
pub(crate) async fn push(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let (mut parts, body) = request.into_parts();
    let auth = DeviceAuth::from_request_parts(&mut parts, &state);
    let max_changes = config.max_push_changes;
    // Held until the push is answered: the parsed changes live that long.
    let read = body::read_parsed_within(
        body,
        config.body_limit_bytes,
        &state.push_budget,
        config.push_budget_wait,
        move |bytes| parse_push(bytes, max_changes),
    );
    tokio::pin!(auth, read);
    let (DeviceAuth(device), (request, _held)) = tokio::select! {
        auth_done = &mut auth => {
            let device = auth_done?;
            (device, read.await?)
        }
        read_done = &mut read => (auth.await?, read_done?),
    };
    if request.device_id != device.device_id {
        return Err(ApiError::forbidden(format!(
            "This token belongs to device {}; it cannot push for device {}.",
            device.device_id, request.device_id
        )));
    }
    if request.schema_hash != config.schema_hash {
        return Err(ApiError::new(
            ErrorCode::SchemaMismatch,
            "The device's schema differs from the server's; update the app (or the server) so \
             both sync the same tables and columns.",
        )
        .with_details(json!({
            "server_schema_hash": config.schema_hash,
            "device_schema_hash": request.schema_hash,
        })));
    }
    let now = now_ms();
    let batch = PushBatch {
        schema: config.schema.clone(),
        changes: request.changes,
        pending: request.pending,
        now_ms: now,
        max_clock_skew: config.max_clock_skew,
    };
    let results = state.store.push(&device, batch).await?;
    state.server_metrics.pushed(&results);
    push_response(&PushResponse {
        results,
        server_time: format_ms(now),
    })
}

/// Parses a push, stopping at its first change over `max_changes` (`413 payload_too_large`)
/// before building it: a body of a million tiny changes costs no more than the limit's worth.
fn parse_push(bytes: &[u8], max_changes: usize) -> Result<PushRequest, ApiError> {
    let over = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = CappedPush {
        max_changes,
        over: &over,
    }
    .deserialize(&mut deserializer)
    .and_then(|request| deserializer.end().map(|()| request));
    match parsed {
        Ok(request) => Ok(request),
        Err(_) if over.get() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "The push holds more than {max_changes} changes, the server's limit for one \
                 request; send fewer changes per request."
            ),
        )
        .with_details(json!({"limit_changes": max_changes}))),
        Err(error) => Err(body::json_error(&error)),
    }
}

/// [`PushRequest`]'s own deserialization, but for its `changes`, which [`CappedChanges`] reads.
struct CappedPush<'a> {
    max_changes: usize,
    /// Set when the changes went over the limit.
    over: &'a Cell<bool>,
}

const PUSH_FIELDS: &[&str] = &["device_id", "schema_hash", "changes", "pending"];

impl<'de> DeserializeSeed<'de> for CappedPush<'_> {
    type Value = PushRequest;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<PushRequest, D::Error> {
        deserializer.deserialize_struct("PushRequest", PUSH_FIELDS, self)
    }
}

impl<'de> Visitor<'de> for CappedPush<'_> {
    type Value = PushRequest;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a push request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PushRequest, A::Error> {
        let (mut device_id, mut schema_hash, mut changes, mut pending) = (None, None, None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "device_id" if device_id.is_none() => device_id = Some(map.next_value()?),
                "schema_hash" if schema_hash.is_none() => schema_hash = Some(map.next_value()?),
                "changes" if changes.is_none() => {
                    changes = Some(map.next_value_seed(CappedChanges {
                        max_changes: self.max_changes,
                        over: self.over,
                    })?);
                }
                "pending" if pending.is_none() => pending = Some(map.next_value()?),
                "device_id" | "schema_hash" | "changes" | "pending" => {
                    return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                }
                other => return Err(de::Error::unknown_field(other, PUSH_FIELDS)),
            }
        }
        Ok(PushRequest {
            device_id: device_id.ok_or_else(|| de::Error::missing_field("device_id"))?,
            schema_hash: schema_hash.ok_or_else(|| de::Error::missing_field("schema_hash"))?,
            changes: changes.ok_or_else(|| de::Error::missing_field("changes"))?,
            pending: pending.unwrap_or_default(),
        })
    }
}

/// A push's changes, at most `max_changes` of them.
struct CappedChanges<'a> {
    max_changes: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for CappedChanges<'_> {
    type Value = Vec<RowChange>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CappedChanges<'_> {
    type Value = Vec<RowChange>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of row changes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RowChange>, A::Error> {
        let mut changes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max_changes));
        while let Some(change) = seq.next_element()? {
            if changes.len() == self.max_changes {
                self.over.set(true);
                return Err(de::Error::custom("too many changes"));
            }
            changes.push(change);
        }
        Ok(changes)
    }
}

/// A push's answer, serialized into one buffer sized for it up front: a thousand results are
/// tens of kilobytes, which `Json` would grow step by step.
fn push_response(answer: &PushResponse) -> Result<Response, ApiError> {
    let mut body = Vec::with_capacity(64 + 80 * answer.results.len());
    serde_json::to_writer(&mut body, answer)
        .map_err(|e| ApiError::internal(format!("a push answer did not serialize: {e}")))?;
    Ok(json_response(body))
}

/// The query of a pull. Values are read as text and checked by the handler, which names the
/// problem; the schema says what they should be.
#[derive(Deserialize, JsonSchema)]
pub(crate) struct PullParams {
    /// The cursor of the last page pulled; absent or empty: from the beginning (the whole
    /// tenant snapshot).
    since: Option<String>,
    /// Rows per page: 1000 when absent; larger values are capped to the server's maximum
    /// (10,000 by default).
    #[schemars(with = "Option<u32>", range(min = 1))]
    limit: Option<String>,
}

/// `GET /api/sync/pull?since=&limit=`: the tenant's changes after the cursor.
pub(crate) async fn pull(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    params: Result<Query<PullParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::invalid_request(format!("The query string is invalid: {e}.")))?;
    // An empty `since=` means "from the beginning", like an absent one.
    let since = match params.since.as_deref() {
        None | Some("") => Cursor::START,
        Some(text) => text.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "The cursor is not one this server handed out; pull without `since` to start over.",
            )
        })?,
    };
    let limit = PageLimit {
        rows: pull_limit(params.limit.as_deref(), &state)?,
        bytes: state.config.max_pull_bytes,
    };
    let page = state.store.pull(&device, since, limit).await?;
    state
        .server_metrics
        .pulled(u64::try_from(page.count).unwrap_or(u64::MAX));
    Ok(pull_response(&page, &format_ms(now_ms())))
}

fn pull_limit(text: Option<&str>, state: &AppState) -> Result<u32, ApiError> {
    let config = &state.config;
    let Some(text) = text else {
        return Ok(config.default_pull_limit.min(config.max_pull_limit));
    };
    match text.parse::<u32>() {
        Ok(limit) if limit > 0 => Ok(limit.min(config.max_pull_limit)),
        _ => Err(ApiError::invalid_request(format!(
            "`limit` must be a whole number from 1 to {}; got {text:?}.",
            config.max_pull_limit
        ))),
    }
}

/// The `PullResponse` JSON, written around the stored change text so rows are never parsed
/// or rebuilt: this is what makes a large snapshot fast.
fn pull_response(page: &PullPage, server_time: &str) -> Response {
    let cursor = page.cursor.to_string();
    let mut text = String::with_capacity(page.changes_json.len() + cursor.len() + 96);
    text.push_str("{\"changes\":");
    text.push_str(&page.changes_json);
    text.push_str(",\"cursor\":");
    text.push_str(&json_string(&cursor));
    text.push_str(",\"has_more\":");
    text.push_str(if page.has_more { "true" } else { "false" });
    text.push_str(",\"server_time\":");
    text.push_str(&json_string(server_time));
    text.push('}');
    json_response(text)
}

/// A response with a JSON body already serialized.
fn json_response(body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `GET /api/sync/schema` (extension): the synced schema as DDL, for devices and operators.
/// `GET /api/sync/schema`: the synced tables' DDL, for any valid token, or for a device about
/// to pair with a pairing code in `X-Ferry-Pairing-Code` (checked, not spent): the device
/// checks that its file can take the schema before it redeems the code.
pub(crate) async fn schema(
    State(state): State<AppState>,
    _auth: SchemaAccess,
) -> Json<SchemaResponse> {
    Json(SchemaResponse {
        schema_hash: state.config.schema_hash.clone(),
        ddl: state.config.schema_ddl.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{PullResponse, RowChange};

    #[test]
    fn hand_written_pull_body_parses_as_the_wire_type() {
        let page = PullPage {
            changes_json: r#"[{"table":"t","pk":{"id":1},"version":"v","deleted":true}]"#.into(),
            count: 1,
            cursor: Cursor::from_seq(9),
            has_more: true,
        };
        let response = pull_response(&page, "2026-11-21T12:00:00.123Z");
        let bytes = futures_body(response);
        let parsed: PullResponse<RowChange> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.changes.len(), 1);
        assert!(parsed.changes[0].deleted);
        assert_eq!(
            parsed.cursor.parse::<Cursor>().unwrap(),
            Cursor::from_seq(9)
        );
        assert!(parsed.has_more);
        assert_eq!(parsed.server_time, "2026-11-21T12:00:00.123Z");
    }

    fn futures_body(response: Response) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap()
            .to_vec()
    }
}
