//! Request bodies, read by the server itself so that every failure is the contract's JSON
//! error rather than one of axum's plain-text rejections.
//!
//! [`decode`] wraps every request's body in a [`RequestBody`] before any handler sees it: it
//! stops reading at [`Config::compressed_body_limit_bytes`] as sent, decodes gzip as the bytes
//! arrive, a bounded piece at a time, and stops decoding at [`Config::body_limit_bytes`], so a
//! gzip bomb is refused having decoded no more than the limit; and a body that has not
//! arrived [`Config::body_timeout`] after its head is given up. The handlers read it with
//! [`read_json`] and friends under their own, smaller limits. Over a limit is
//! `413 payload_too_large`, anything unparsable is `400 invalid_request`, and so is a body in
//! an encoding the server does not decode; a body that stalls is `408` with the closest code,
//! `invalid_request`.
//!
//! [`Config::compressed_body_limit_bytes`]: crate::Config::compressed_body_limit_bytes
//! [`Config::body_limit_bytes`]: crate::Config::body_limit_bytes
//! [`Config::body_timeout`]: crate::Config::body_timeout

use std::future::poll_fn;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, EXPECT};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_proto::ErrorCode;
use flate2::write::MultiGzDecoder;
use hyper::body::{Buf, Bytes, Frame};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::{ApiError, AppState};

/// After refusing an oversized body, the server still reads (and drops) this much more of it:
/// a client that is still sending then reads the 413 instead of a reset connection.
const DRAIN_AFTER_REFUSAL: usize = 64 * 1024 * 1024;

/// Bodies at least this large are parsed on the blocking pool: a push of a thousand changes
/// is milliseconds of parsing, which would hold up every other request on the same async
/// worker (and the request's own authentication, which runs beside the read).
const PARSE_OFF_WORKER: usize = 64 * 1024;

/// Decoded bytes handed on at once: a piece of a gzip body decodes into at most about this
/// much (plus the decoder's own 32 KiB buffer) before the limit is checked again.
const DECODED_PIECE: usize = 64 * 1024;

/// Reads the whole body, at most `limit` bytes of it (decompressed), and parses it as `T`.
pub(crate) async fn read_json<T: DeserializeOwned + Send + 'static>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    read_parsed(body, limit, parse_json).await
}

/// Reads the whole body, at most `limit` bytes of it (decompressed), and parses it with
/// `parse`: on the blocking pool when it is large.
pub(crate) async fn read_parsed<T: Send + 'static>(
    body: Body,
    limit: usize,
    parse: impl FnOnce(&[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let bytes = read_limited(body, limit).await?;
    if bytes.len() < PARSE_OFF_WORKER {
        return parse(&bytes);
    }
    tokio::task::spawn_blocking(move || parse(&bytes))
        .await
        .map_err(|e| ApiError::internal(format!("parsing a request body did not finish: {e}")))?
}

/// A budget of request bytes held at once, one permit per KiB.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl Budget {
    pub(crate) fn of_bytes(bytes: usize) -> Budget {
        let total = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Budget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }
}

/// [`read_parsed`] within `budget` (one permit per KiB of body; a body larger than the whole
/// budget takes all of it): waits up to `wait` for room once the body is read, else
/// `503 unavailable` with `Retry-After`. The permit goes back when the caller drops it, after
/// the work the parsed body is for.
pub(crate) async fn read_parsed_within<T: Send + 'static>(
    body: Body,
    limit: usize,
    budget: &Budget,
    wait: Duration,
    parse: impl FnOnce(&[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<(T, OwnedSemaphorePermit), ApiError> {
    let bytes = read_limited(body, limit).await?;
    let kib = u32::try_from(bytes.len() / 1024 + 1).unwrap_or(u32::MAX);
    let acquire = Arc::clone(&budget.permits).acquire_many_owned(kib.min(budget.total));
    let permit = tokio::time::timeout(wait, acquire)
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::unavailable(
                "The server is working on as many large pushes as it holds at once; try again \
                 shortly.",
                Duration::from_secs(1),
            )
        })?;
    let parsed = if bytes.len() < PARSE_OFF_WORKER {
        parse(&bytes)?
    } else {
        tokio::task::spawn_blocking(move || parse(&bytes))
            .await
            .map_err(|e| {
                ApiError::internal(format!("parsing a request body did not finish: {e}"))
            })??
    };
    Ok((parsed, permit))
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
    serde_json::from_slice(bytes).map_err(|error| json_error(&error))
}

/// `400 invalid_request` for a body that does not parse, saying what and where.
pub(crate) fn json_error(error: &serde_json::Error) -> ApiError {
    ApiError::invalid_request(format!(
        "The request body is not valid for this endpoint: {error}."
    ))
    .with_details(json!({"line": error.line(), "column": error.column()}))
}

/// Reads the whole body, at most `limit` bytes of it (decompressed).
pub(crate) async fn read_limited(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut buffer = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let error = BodyError::of(error);
                let answer = error.answer();
                if matches!(error, BodyError::TooLarge { .. }) {
                    drain(body, DRAIN_AFTER_REFUSAL).await;
                }
                return Err(answer);
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // Trailers carry nothing we use.
        };
        if buffer.len() + data.len() > limit {
            drain(body, DRAIN_AFTER_REFUSAL).await;
            return Err(too_large(limit, Measured::Decoded));
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer)
}

/// Middleware that puts every request's body under the server's limits (see the module's
/// documentation) before anything reads it. `Content-Encoding` `gzip` in any case (and
/// `x-gzip`, which RFC 9110 makes its synonym) is decoded here, `identity` is dropped, and any
/// other coding, or gzip applied twice, is refused before the body is read; so is a body whose
/// declared length is over the limit.
pub(crate) async fn decode(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    let (mut parts, body) = request.into_parts();
    let mut body = RequestBody::new(body, config);
    let coding = coding(&parts.headers);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    parts.headers.remove(CONTENT_ENCODING);
    let error = match coding {
        Err(error) => Some(error),
        Ok(_) if declared.is_some_and(|n| n > config.compressed_body_limit_bytes as u64) => {
            body.discard();
            Some(too_large(
                config.compressed_body_limit_bytes,
                Measured::AsSent,
            ))
        }
        Ok(Coding::Gzip) => {
            // The length no longer describes the body handed on.
            parts.headers.remove(CONTENT_LENGTH);
            body.gunzip(config.body_limit_bytes);
            None
        }
        Ok(Coding::Identity) => None,
    };
    let request = Request::from_parts(parts, Body::new(body));
    match error {
        Some(error) => refuse(request, error).await,
        None => next.run(request).await,
    }
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
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = match frame.map_err(BodyError::of) {
            Ok(frame) => frame,
            // Over a limit, a [`RequestBody`] reads on without decoding, and ends in time.
            Err(BodyError::TooLarge { .. }) => continue,
            Err(_) => return,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let Some(left) = budget.checked_sub(data.len()) else {
            return;
        };
        budget = left;
    }
}

/// Which size of a body a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measured {
    /// The bytes as they arrive, compressed when the body is gzip.
    AsSent,
    /// The bytes after gzip decompression (the same, for a body that is not compressed).
    Decoded,
}

fn too_large(limit: usize, measured: Measured) -> ApiError {
    let (how, details) = match measured {
        Measured::AsSent => (
            "as sent",
            json!({"limit_bytes": limit, "measured": "as_sent"}),
        ),
        Measured::Decoded => (
            "after decompression",
            json!({"limit_bytes": limit, "measured": "decoded"}),
        ),
    };
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "The request body is larger than the server's limit of {limit} bytes ({how}); send \
             fewer changes per request."
        ),
    )
    .with_details(details)
}

/// Why a [`RequestBody`] stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the body is over the limit of {limit} bytes")]
    TooLarge { limit: usize, measured: Measured },
    #[error("the body did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("the gzip data is corrupt")]
    Corrupt,
    #[error("the body could not be read: {0}")]
    Read(axum::Error),
}

impl BodyError {
    /// The error of a body read through axum's [`Body`]: a [`RequestBody`]'s own, or any other.
    fn of(error: axum::Error) -> BodyError {
        match error.into_inner().downcast::<BodyError>() {
            Ok(error) => *error,
            Err(other) => BodyError::Read(axum::Error::new(other)),
        }
    }

    fn answer(&self) -> ApiError {
        match self {
            BodyError::TooLarge { limit, measured } => too_large(*limit, *measured),
            BodyError::TimedOut(timeout) => ApiError::invalid_request(format!(
                "The request body did not arrive within {} s of the request's head; the server \
                 stopped waiting for it.",
                timeout.as_secs_f64()
            ))
            .with_details(json!({"timeout_seconds": timeout.as_secs_f64()}))
            .with_status(StatusCode::REQUEST_TIMEOUT),
            BodyError::Corrupt | BodyError::Read(_) => ApiError::invalid_request(
                "The request body could not be read; if it is gzip-compressed, the compressed \
                 data is corrupt.",
            ),
        }
    }
}

/// A request's body under the server's limits: at most so many bytes as sent, decoded from
/// gzip when it is, at most so many bytes decoded, and all of it within a deadline.
///
/// Once over a size limit it reads on without decoding, dropping what it reads, for at most
/// [`DRAIN_AFTER_REFUSAL`] bytes, so the client reads the `413` rather than a reset connection.
pub(crate) struct RequestBody {
    raw: Body,
    /// Bytes received so far, as sent.
    received: usize,
    received_limit: usize,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    gunzip: Option<Gunzip>,
    /// Received bytes not decoded yet.
    undecoded: Bytes,
    state: ReadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    /// Over a limit: what still arrives is dropped, up to [`DRAIN_AFTER_REFUSAL`] bytes.
    Discarding {
        left: usize,
    },
    Done,
}

struct Gunzip {
    decoder: MultiGzDecoder<Vec<u8>>,
    decoded: usize,
    limit: usize,
}

impl RequestBody {
    fn new(raw: Body, config: &crate::Config) -> RequestBody {
        RequestBody {
            raw,
            received: 0,
            received_limit: config.compressed_body_limit_bytes,
            deadline: Instant::now() + config.body_timeout,
            timeout: config.body_timeout,
            timer: None,
            gunzip: None,
            undecoded: Bytes::new(),
            state: ReadState::Reading,
        }
    }

    /// Decodes the body from gzip, at most `limit` bytes of it.
    fn gunzip(&mut self, limit: usize) {
        self.gunzip = Some(Gunzip {
            decoder: MultiGzDecoder::new(Vec::new()),
            decoded: 0,
            limit,
        });
    }

    /// Drops the rest of the body unread (up to [`DRAIN_AFTER_REFUSAL`] bytes).
    fn discard(&mut self) {
        self.gunzip = None;
        self.undecoded = Bytes::new();
        self.state = ReadState::Discarding {
            left: DRAIN_AFTER_REFUSAL,
        };
    }

    /// Stops over a limit: the error now, and what still arrives dropped.
    fn over(&mut self, limit: usize, measured: Measured) -> BodyError {
        self.discard();
        BodyError::TooLarge { limit, measured }
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).is_ready()
    }

    /// The next piece of the body as received, within the size limit and the deadline.
    fn poll_received(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let frame = match Pin::new(&mut self.raw).poll_frame(cx) {
                Poll::Pending if self.timed_out(cx) => {
                    self.state = ReadState::Done;
                    return Poll::Ready(Some(Err(BodyError::TimedOut(self.timeout))));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => {
                    self.state = ReadState::Done;
                    return Poll::Ready(Some(Err(BodyError::Read(error))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Some(data) = frame.data_ref() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            self.received = self.received.saturating_add(data.len());
            match self.state {
                ReadState::Discarding { left } => {
                    self.state = match left.checked_sub(data.len()) {
                        Some(left) => ReadState::Discarding { left },
                        None => ReadState::Done,
                    };
                    if self.state == ReadState::Done {
                        return Poll::Ready(None);
                    }
                    continue;
                }
                _ if self.received > self.received_limit => {
                    let limit = self.received_limit;
                    return Poll::Ready(Some(Err(self.over(limit, Measured::AsSent))));
                }
                _ => return Poll::Ready(Some(Ok(frame))),
            }
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.state == ReadState::Done {
                return Poll::Ready(None);
            }
            if let Some(gunzip) = &mut this.gunzip
                && !this.undecoded.is_empty()
            {
                let decoded = match gunzip.decode(&mut this.undecoded) {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        this.discard();
                        return Poll::Ready(Some(Err(error)));
                    }
                };
                if !decoded.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(decoded))));
                }
                continue;
            }
            let frame = match ready!(this.poll_received(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    let was_reading = this.state == ReadState::Reading;
                    this.state = ReadState::Done;
                    let Some(gunzip) = this.gunzip.as_mut().filter(|_| was_reading) else {
                        return Poll::Ready(None);
                    };
                    return Poll::Ready(match gunzip.finish() {
                        Ok(rest) if rest.is_empty() => None,
                        Ok(rest) => Some(Ok(Frame::data(rest))),
                        Err(error) => Some(Err(error)),
                    });
                }
            };
            match (&this.gunzip, frame.into_data()) {
                (Some(_), Ok(data)) => this.undecoded = data,
                (None, Ok(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                (_, Err(trailers)) => return Poll::Ready(Some(Ok(trailers))),
            }
        }
    }
}

impl Gunzip {
    /// Decodes from the front of `input` until about [`DECODED_PIECE`] bytes came out or the
    /// input is used up.
    fn decode(&mut self, input: &mut Bytes) -> Result<Bytes, BodyError> {
        while !input.is_empty() && self.decoder.get_ref().len() < DECODED_PIECE {
            let used = self.decoder.write(input).map_err(|_| BodyError::Corrupt)?;
            if used == 0 {
                return Err(BodyError::Corrupt);
            }
            input.advance(used);
        }
        self.take()
    }

    /// The last decoded bytes, once the input has ended; an error if the gzip data did not.
    fn finish(&mut self) -> Result<Bytes, BodyError> {
        self.decoder.try_finish().map_err(|_| BodyError::Corrupt)?;
        self.take()
    }

    fn take(&mut self) -> Result<Bytes, BodyError> {
        let decoded = std::mem::take(self.decoder.get_mut());
        self.decoded = self.decoded.saturating_add(decoded.len());
        if self.decoded > self.limit {
            return Err(BodyError::TooLarge {
                limit: self.limit,
                measured: Measured::Decoded,
            });
        }
        Ok(Bytes::from(decoded))
    }
}
