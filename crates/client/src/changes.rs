//! A device's change stream (`GET /api/sync/stream`), read as Server-Sent Events.
//!
//! The server sends `event: changed` with `{"cursor": ...}` when rows of the tenant that this
//! device has not pulled commit, and a comment at least every 15 s. Only `changed` events are
//! read; comments, other event names and fields are skipped, as the SSE format asks of a
//! reader. A stream that sends nothing at all (not even a comment) for
//! [`STREAM_SILENCE`] is taken as broken.

use std::time::Duration;

use ferry_proto::ChangedEvent;

use crate::error::{Error, Result};

/// How long the stream may send nothing before it counts as broken: three times the longest
/// gap between the server's keep-alive comments.
pub(crate) const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// The longest event the reader holds; a server that sends more without a line end is not a
/// Ferry server.
const MAX_LINE: usize = 64 * 1024;

/// An open change stream. Each [`ChangeStream::next`] is the cursor of the tenant's newest
/// change the device was told of.
#[derive(Debug)]
pub struct ChangeStream {
    response: reqwest::Response,
    base: String,
    /// Bytes received after the last complete line.
    pending: Vec<u8>,
    event: Event,
}

/// The event being read: its name and data lines so far.
#[derive(Debug, Default)]
struct Event {
    name: String,
    data: String,
}

impl ChangeStream {
    pub(crate) fn new(response: reqwest::Response, base: String) -> ChangeStream {
        ChangeStream {
            response,
            base,
            pending: Vec::new(),
            event: Event::default(),
        }
    }

    /// The next `changed` event's cursor; `None` when the server ended the stream (it shuts
    /// down, or the device was revoked). A broken connection is [`Error::Offline`].
    pub async fn next(&mut self) -> Result<Option<String>> {
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Some(cursor) = self.line(&line)? {
                    return Ok(Some(cursor));
                }
            }
            if self.pending.len() > MAX_LINE {
                return Err(self.protocol(format!("a line is longer than {MAX_LINE} bytes")));
            }
            let chunk = self.response.chunk().await.map_err(|e| Error::Offline {
                url: self.base.clone(),
                reason: format!("the change stream broke: {e}"),
            })?;
            match chunk {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }

    /// Takes one line (with its line end); a blank line ends an event, and a `changed` event
    /// gives its cursor.
    fn line(&mut self, line: &[u8]) -> Result<Option<String>> {
        let line = std::str::from_utf8(line).map_err(|_| self.protocol("a line is not UTF-8"))?;
        let line = line.trim_end_matches('\n').trim_end_matches('\r');
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if event.name != "changed" {
                return Ok(None);
            }
            let changed: ChangedEvent = serde_json::from_str(&event.data)
                .map_err(|e| self.protocol(format!("a changed event's data: {e}")))?;
            return Ok(Some(changed.cursor));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event.name = value.to_owned(),
            "data" => {
                if !self.event.data.is_empty() {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
            }
            _ => {}
        }
        Ok(None)
    }

    fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            what: "the change stream".into(),
            reason: reason.into(),
        }
    }
}
