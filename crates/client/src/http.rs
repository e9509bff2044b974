//! The device sync API over HTTP (reqwest with rustls; gzip responses are decoded).
//!
//! Every failure to reach the server (connect, timeout, a dropped connection) and every `5xx`
//! answer (a store the server reports unavailable, a server error, a proxy that cannot reach
//! the server) become [`Error::Offline`]: the device cannot sync right now and nothing is wrong
//! with it. Other error answers keep the contract's code and message.

use std::time::Duration;

use ferry_proto::{
    CLIENT_AGENT_PREFIX, ErrorBody, Health, PairRequest, PairResponse, PushRequest, PushResponse,
    SchemaResponse, SyncDevicesResponse,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::changes::{ChangeStream, STREAM_SILENCE};
use crate::error::{Error, Result};

/// The header a pairing code goes in when the schema is read before pairing.
const PAIRING_CODE_HEADER: &str = "X-Ferry-Pairing-Code";

/// A connection to one Ferry server, with the device's token once it has one.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    /// For the change stream, which is open for as long as the device runs: no limit on the
    /// whole request, only on silence.
    streaming: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Http {
    pub(crate) fn new(server_url: &str, token: Option<String>, timeout: Duration) -> Result<Http> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(format!(
                    "{CLIENT_AGENT_PREFIX}{}",
                    env!("CARGO_PKG_VERSION")
                ))
                .connect_timeout(timeout.min(Duration::from_secs(10)))
        };
        let cannot_start =
            |e: reqwest::Error| Error::Task(format!("the HTTP client cannot start: {e}"));
        let client = builder().timeout(timeout).build().map_err(cannot_start)?;
        let streaming = builder()
            .read_timeout(STREAM_SILENCE)
            .build()
            .map_err(cannot_start)?;
        Ok(Http {
            client,
            streaming,
            base: server_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/sync/health`. Any failure, including a 503, means offline.
    pub(crate) async fn health(&self, timeout: Duration) -> Result<Health> {
        let request = self
            .client
            .get(self.url("/api/sync/health"))
            .timeout(timeout);
        match self.send(request).await {
            Ok(response) => self.json("the health check", response).await,
            Err(Error::Server {
                status, message, ..
            }) => Err(self.offline(format!("its health check answered {status}: {message}"))),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/sync/devices`: the tenant's devices, this one marked.
    pub(crate) async fn devices(&self, timeout: Duration) -> Result<SyncDevicesResponse> {
        let request = self
            .client
            .get(self.url("/api/sync/devices"))
            .timeout(timeout);
        let request = self.authorized(request);
        let response = self.send(request).await?;
        self.json("the devices request", response).await
    }

    /// `GET /api/sync/stream`, once the server answered with the stream.
    pub(crate) async fn changes(&self) -> Result<ChangeStream> {
        let request = self.authorized(self.streaming.get(self.url("/api/sync/stream")));
        let response = self.send(request).await?;
        Ok(ChangeStream::new(response, self.base.clone()))
    }

    /// `GET /api/sync/schema`: the server's synced tables as SQLite DDL.
    pub(crate) async fn schema(&self) -> Result<SchemaResponse> {
        let request = self.authorized(self.client.get(self.url("/api/sync/schema")));
        let response = self.send(request).await?;
        self.json("the schema request", response).await
    }

    /// `GET /api/sync/schema` with a pairing code, which the server checks but does not
    /// spend.
    pub(crate) async fn schema_with_code(&self, code: &str) -> Result<SchemaResponse> {
        let request = self
            .client
            .get(self.url("/api/sync/schema"))
            .header(PAIRING_CODE_HEADER, code.trim());
        let response = self.send(request).await?;
        self.json("the schema request", response).await
    }

    /// `DELETE /api/sync/device`: the device gives up its identity.
    pub(crate) async fn revoke_self(&self) -> Result<()> {
        let request = self.authorized(self.client.delete(self.url("/api/sync/device")));
        self.send(request).await.map(drop)
    }

    /// `POST /api/devices/pair`.
    pub(crate) async fn pair(&self, body: &PairRequest) -> Result<PairResponse> {
        let request = self.client.post(self.url("/api/devices/pair")).json(body);
        let response = self.send(request).await?;
        self.json("pairing", response).await
    }

    /// `POST /api/sync/push`.
    pub(crate) async fn push(&self, body: &PushRequest) -> Result<PushResponse> {
        let request = self.authorized(self.client.post(self.url("/api/sync/push")).json(body));
        let response = self.send(request).await?;
        self.json("push", response).await
    }

    /// `GET /api/sync/pull`: the raw body, parsed later next to the replica (borrowing from
    /// it, which a large snapshot page needs to be fast).
    pub(crate) async fn pull(&self, since: Option<&str>, limit: u32) -> Result<Vec<u8>> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        let request = self.authorized(self.client.get(self.url("/api/sync/pull")).query(&query));
        let response = self.send(request).await?;
        let body = response.bytes().await.map_err(|e| self.transport(e))?;
        Ok(body.into())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the contract's code.
    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.unwrap_or_default();
        let (code, mut message, details) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(body) => (
                body.error.code.as_str().to_string(),
                body.error.message,
                body.error.details,
            ),
            Err(_) => (
                "unknown".to_string(),
                status.canonical_reason().unwrap_or("error").to_lowercase(),
                serde_json::Value::Null,
            ),
        };
        if let Some(seconds) = retry_after {
            message.push_str(&format!(" (retry after {seconds} s)"));
        }
        Err(match status {
            StatusCode::UNAUTHORIZED => Error::Unauthorized { message },
            StatusCode::UNPROCESSABLE_ENTITY if code == "invalid_pairing_code" => {
                Error::InvalidPairingCode
            }
            // Whatever its body: a proxy's limit answers 413 too, with a page of its own.
            StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge {
                limit_bytes: details["limit_bytes"].as_u64(),
                limit_changes: details["limit_changes"].as_u64(),
                message,
            },
            // The server, its store or a proxy in front of it failing for now (a proxy answers
            // 502 or 504 when the server is down): the device cannot sync, as when offline.
            status if status.is_server_error() => {
                self.offline(format!("it answered {} {code}: {message}", status.as_u16()))
            }
            _ => Error::Server {
                status: status.as_u16(),
                code,
                message,
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, response: Response) -> Result<T> {
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// A failure to talk to the server at all: the device is offline.
    fn transport(&self, error: reqwest::Error) -> Error {
        if error.is_decode() {
            return Error::Protocol {
                what: "a request".into(),
                reason: describe(&error),
            };
        }
        self.offline(describe(&error))
    }

    fn offline(&self, reason: String) -> Error {
        Error::Offline {
            url: self.base.clone(),
            reason,
        }
    }
}

/// The error and its causes, without the URL (the caller names the server once).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "the request timed out".to_string()
    } else {
        let mut top = error.to_string();
        if let Some(url) = error.url() {
            top = top.replace(&format!(" ({url})"), "");
        }
        top
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
