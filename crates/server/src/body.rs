//! Reading request bodies ourselves, so every failure is the contract's JSON error rather than
//! one of axum's plain-text rejections: over the limit (also after gzip decompression) is
//! `413 payload_too_large`, anything unparsable is `400 invalid_request`, and so is a body in
//! an encoding the server does not decode.

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header::{CONTENT_ENCODING, EXPECT};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_proto::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::ApiError;

/// After refusing an oversized body, the server still reads (and drops) this much more of it:
/// a client that is still sending then reads the 413 instead of a reset connection.
const DRAIN_AFTER_REFUSAL: usize = 64 * 1024 * 1024;

/// Bodies at least this large are parsed on the blocking pool: a push of a thousand changes
/// is milliseconds of parsing, which would hold up every other request on the same async
/// worker (and the request's own authentication, which runs beside the read).
const PARSE_OFF_WORKER: usize = 64 * 1024;

/// Reads the whole body, at most `limit` bytes of it (decompressed), and parses it as `T`.
pub(crate) async fn read_json<T: DeserializeOwned + Send + 'static>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_limited(body, limit).await?;
    if bytes.len() < PARSE_OFF_WORKER {
        return parse_json(&bytes);
    }
    tokio::task::spawn_blocking(move || parse_json(&bytes))
        .await
        .map_err(|e| ApiError::internal(format!("parsing a request body did not finish: {e}")))?
}

/// [`read_json`] for an optional body: an empty one is `T::default()`.
pub(crate) async fn read_optional_json<T: DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_limited(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

/// Parses a JSON body, naming the problem (and where) in the error.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::invalid_request(format!(
            "The request body is not valid for this endpoint: {error}."
        ))
        .with_details(json!({"line": error.line(), "column": error.column()}))
    })
}

/// Reads the whole body, at most `limit` bytes of it (decompressed).
pub(crate) async fn read_limited(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut buffer = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| {
            ApiError::invalid_request(
                "The request body could not be read; if it is gzip-compressed, the compressed \
                 data is corrupt.",
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // Trailers carry nothing we use.
        };
        if buffer.len() + data.len() > limit {
            drain(body, DRAIN_AFTER_REFUSAL).await;
            return Err(too_large(limit));
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer)
}

/// Middleware in front of tower-http's decompression, which matches `Content-Encoding` by its
/// exact bytes and lets anything else through undecoded: `gzip` in any case (and `x-gzip`,
/// which RFC 9110 makes its synonym) is handed on as `gzip`, `identity` is dropped, and any
/// other coding, or gzip applied twice, is refused before the body is read.
pub(crate) async fn content_encoding(mut request: Request, next: Next) -> Response {
    match coding(request.headers()) {
        Ok(Coding::Identity) => {
            request.headers_mut().remove(CONTENT_ENCODING);
        }
        Ok(Coding::Gzip) => {
            request
                .headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Err(error) => return refuse(request, error).await,
    }
    next.run(request).await
}

enum Coding {
    Identity,
    Gzip,
}

/// What the body is encoded with: every `Content-Encoding` value, in order, each a list.
fn coding(headers: &HeaderMap) -> Result<Coding, ApiError> {
    let mut gzip = false;
    for value in headers.get_all(CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            if name.eq_ignore_ascii_case("identity") {
                continue;
            }
            let is_gzip = name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip");
            if !is_gzip {
                return Err(unsupported_encoding(
                    headers,
                    name,
                    format!("the server does not decode `{name}`"),
                ));
            }
            if gzip {
                return Err(unsupported_encoding(
                    headers,
                    name,
                    "the server decodes gzip once, not twice".to_owned(),
                ));
            }
            gzip = true;
        }
    }
    Ok(if gzip { Coding::Gzip } else { Coding::Identity })
}

fn unsupported_encoding(headers: &HeaderMap, name: &str, why: String) -> ApiError {
    let whole: Vec<_> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    let whole = whole.join(", ");
    ApiError::invalid_request(format!(
        "The request body's Content-Encoding `{whole}` is not supported: {why}; send the body \
         as is or gzip-compressed."
    ))
    .with_details(json!({
        "content_encoding": whole,
        "unsupported": name,
        "supported": ["gzip", "identity"],
    }))
}

/// Answers `error` to a request refused before its body was read. The body is drained first
/// (as after a `413`), so a client that is still sending reads the answer rather than a reset
/// connection; unless the client waits for `100 Continue` before it sends, which draining
/// would ask it for.
pub(crate) async fn refuse(request: Request, error: ApiError) -> Response {
    let waits_to_send = request
        .headers()
        .get(EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits_to_send {
        drain(request.into_body(), DRAIN_AFTER_REFUSAL).await;
    }
    error.into_response()
}

async fn drain(mut body: Body, mut budget: usize) {
    while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let Some(left) = budget.checked_sub(data.len()) else {
            return;
        };
        budget = left;
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "The request body is larger than the server's limit of {limit} bytes (after \
             decompression); send fewer changes per request."
        ),
    )
    .with_details(json!({"limit_bytes": limit}))
}
