//! The operator API as the CLI's commands call it: the server's URL and an operator token.

use anyhow::Context;

use crate::args::ApiArgs;

/// The server refused a request: its status and the contract's error code and message, so a
/// command can say what a `404` means for it.
#[derive(Debug, thiserror::Error)]
// The contract's code says what the reason phrase would (`403 forbidden`).
#[error("the server answered {status} {code}: {message}{hint}")]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
    /// What to do about it, when the status alone tells.
    hint: &'static str,
}

/// The server's operator API, with a token.
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    server: String,
    token: String,
    /// Print the server's JSON answers rather than tables.
    pub(crate) json: bool,
}

impl Api {
    pub(crate) fn new(args: &ApiArgs) -> anyhow::Result<Api> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = args.data.join(ferry_server::init::ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "reading the admin token from {} (give --token, or make a new admin \
                             token with `ferry token create --role admin --data {}`)",
                            path.display(),
                            args.data.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Api {
            http: reqwest::Client::new(),
            server: args.server.trim_end_matches('/').to_owned(),
            token,
            json: args.json,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// Sends the request with the token and reads its JSON answer; the server's error
    /// message on failure.
    pub(crate) async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let text = self.answer(request).await?;
        serde_json::from_str(&text).with_context(|| format!("reading the answer: {text}"))
    }

    /// [`Api::send`] for an answer without a body (`204`).
    pub(crate) async fn send_no_content(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<()> {
        self.answer(request).await.map(drop)
    }

    /// The text of a successful answer.
    async fn answer(&self, request: reqwest::RequestBuilder) -> anyhow::Result<String> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reaching the server at {}", self.server))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("the server answered {status}: {text}"))?;
            let hint = match status.as_u16() {
                401 => {
                    " Give a live operator token with --token or FERRY_TOKEN, or the --data \
                     whose admin.token belongs to this server; a lost or revoked admin token \
                     is replaced with `ferry token create --role admin` on the server's --data \
                     or --database."
                }
                _ => "",
            };
            return Err(Refused {
                status: status.as_u16(),
                code: body["error"]["code"].as_str().unwrap_or("?").to_owned(),
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or(&text)
                    .to_owned(),
                hint,
            }
            .into());
        }
        Ok(text)
    }
}

/// Text as one URL path segment: a tag (free text in StEvE) or a device id.
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
