//! A pulled page in a flat, owned form, so it can be parsed on one thread and applied on another.
//!
//! A fresh device's snapshot is a million rows, and parsing JSON costs a fifth of applying it.
//! The page is parsed borrowing from the response body (no copy of any text without escapes),
//! then laid out flat: every text value is a span of the body it came from (or of a side buffer,
//! for the few strings that had escapes), every change a range of one shared field list. The
//! result owns its body and holds no references, so the next page parses while this one applies.

use std::borrow::Cow;
use std::ops::Range;

use ferry_proto::{PullResponse, RowChange};
use rusqlite::types::ValueRef;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::values::{Fields, Scalar};

/// The envelope of a pulled page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageInfo {
    pub cursor: String,
    pub has_more: bool,
    /// Changes in the page.
    pub rows: usize,
}

/// A pulled page, parsed.
#[derive(Debug)]
pub struct PulledPage {
    info: PageInfo,
    body: Vec<u8>,
    /// Text that had escapes in the body, unescaped.
    side: String,
    blobs: Vec<Vec<u8>>,
    fields: Vec<(Span, Value)>,
    changes: Vec<Change>,
}

/// A stretch of text in the page: of its body, or of its side buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    in_body: bool,
    start: u32,
    len: u32,
}

/// A column value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Span),
    /// An index into the page's BLOBs.
    Blob(u32),
}

/// One row change: its `pk` and `data` are ranges of the page's fields.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) table: Span,
    pub(crate) version: Span,
    pub(crate) deleted: bool,
    pub(crate) pk: Range<usize>,
    pub(crate) data: Range<usize>,
}

/// A change as parsed from the body, borrowing its text.
#[derive(Deserialize)]
struct ParsedChange<'a> {
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(borrow)]
    pk: Fields<'a>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(default)]
    deleted: bool,
    #[serde(default, borrow)]
    data: Option<Fields<'a>>,
}

impl PulledPage {
    /// Parses a `GET /api/sync/pull` response body.
    pub fn parse(body: Vec<u8>) -> Result<PulledPage> {
        let mut flat = Flat::default();
        let info = {
            let page: PullResponse<ParsedChange<'_>> =
                serde_json::from_slice(&body).map_err(|e| Error::Protocol {
                    what: "pull".into(),
                    reason: e.to_string(),
                })?;
            flat.fields.reserve(page.changes.len() * 8);
            flat.changes.reserve(page.changes.len());
            for change in page.changes {
                flat.push(&body, change);
            }
            PageInfo {
                cursor: page.cursor,
                has_more: page.has_more,
                rows: flat.changes.len(),
            }
        };
        Ok(PulledPage {
            info,
            body,
            side: flat.side,
            blobs: flat.blobs,
            fields: flat.fields,
            changes: flat.changes,
        })
    }

    /// A page of the given changes, as if the server had sent them.
    pub fn from_changes(changes: &[RowChange], cursor: Option<&str>) -> Result<PulledPage> {
        let response = PullResponse {
            changes: changes.to_vec(),
            cursor: cursor.unwrap_or_default().to_string(),
            has_more: false,
            server_time: String::new(),
        };
        let body = serde_json::to_vec(&response).map_err(|e| Error::Protocol {
            what: "pull".into(),
            reason: e.to_string(),
        })?;
        PulledPage::parse(body)
    }

    pub fn info(&self) -> &PageInfo {
        &self.info
    }

    pub(crate) fn changes(&self) -> &[Change] {
        &self.changes
    }

    pub(crate) fn fields(&self, range: &Range<usize>) -> &[(Span, Value)] {
        &self.fields[range.clone()]
    }

    /// The bytes of a span (valid UTF-8: every span was cut from a `str`).
    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        let source = if span.in_body {
            &self.body[..]
        } else {
            self.side.as_bytes()
        };
        &source[span.start as usize..(span.start + span.len) as usize]
    }

    /// A span as text.
    pub(crate) fn text(&self, span: Span) -> Cow<'_, str> {
        String::from_utf8_lossy(self.bytes(span))
    }

    pub(crate) fn value_ref(&self, value: Value) -> ValueRef<'_> {
        match value {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(span) => ValueRef::Text(self.bytes(span)),
            Value::Blob(i) => ValueRef::Blob(&self.blobs[i as usize]),
        }
    }

    /// Some fields as a JSON object (for logs and the conflict record).
    pub(crate) fn json_object(&self, range: &Range<usize>) -> serde_json::Value {
        serde_json::Value::Object(
            self.fields(range)
                .iter()
                .map(|&(name, value)| {
                    let value = crate::values::to_json(self.value_ref(value));
                    (self.text(name).into_owned(), value)
                })
                .collect(),
        )
    }
}

/// The page being laid out.
#[derive(Default)]
struct Flat {
    side: String,
    blobs: Vec<Vec<u8>>,
    fields: Vec<(Span, Value)>,
    changes: Vec<Change>,
}

impl Flat {
    fn push(&mut self, body: &[u8], change: ParsedChange<'_>) {
        let table = self.span(body, change.table);
        let version = self.span(body, change.version);
        let pk = self.push_fields(body, change.pk);
        let data = match change.data {
            Some(data) => self.push_fields(body, data),
            None => self.fields.len()..self.fields.len(),
        };
        self.changes.push(Change {
            table,
            version,
            deleted: change.deleted,
            pk,
            data,
        });
    }

    fn push_fields(&mut self, body: &[u8], fields: Fields<'_>) -> Range<usize> {
        let start = self.fields.len();
        for (name, value) in fields.0 {
            let name = self.span(body, name);
            let value = match value {
                Scalar::Null => Value::Null,
                Scalar::Integer(i) => Value::Integer(i),
                Scalar::Real(f) => Value::Real(f),
                Scalar::Text(text) => Value::Text(self.span(body, text)),
                Scalar::Blob(bytes) => {
                    self.blobs.push(bytes);
                    Value::Blob((self.blobs.len() - 1) as u32)
                }
            };
            self.fields.push((name, value));
        }
        start..self.fields.len()
    }

    /// Where a string lies: in the body when it was borrowed from it, else copied aside.
    fn span(&mut self, body: &[u8], text: Cow<'_, str>) -> Span {
        if let Cow::Borrowed(s) = &text {
            let offset = (s.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
            if offset
                .checked_add(s.len())
                .is_some_and(|end| end <= body.len())
            {
                return Span {
                    in_body: true,
                    start: offset as u32,
                    len: s.len() as u32,
                };
            }
        }
        let start = self.side.len() as u32;
        self.side.push_str(&text);
        Span {
            in_body: false,
            start,
            len: text.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_every_value_and_escaped_text() {
        let body = br#"{"changes": [
            {"table": "t", "pk": {"id": "a\"b"}, "version": "v1",
             "data": {"id": "a\"b", "n": 5, "r": 2.5, "z": null, "b": {"$blob": "AQI="}}},
            {"table": "t", "pk": {"id": "c"}, "version": "v2", "deleted": true}],
            "cursor": "next", "has_more": true, "server_time": "x"}"#;
        let page = PulledPage::parse(body.to_vec()).unwrap();
        assert_eq!(
            page.info(),
            &PageInfo {
                cursor: "next".into(),
                has_more: true,
                rows: 2
            }
        );
        let [first, second] = page.changes() else {
            panic!("two changes")
        };
        assert_eq!(page.text(first.table), "t");
        assert_eq!(page.text(first.version), "v1");
        assert_eq!(
            page.json_object(&first.data),
            serde_json::json!({"id": "a\"b", "n": 5, "r": 2.5, "z": null, "b": {"$blob": "AQI="}})
        );
        assert_eq!(
            page.json_object(&first.pk),
            serde_json::json!({"id": "a\"b"})
        );
        assert!(second.deleted && second.data.is_empty());
        assert_eq!(page.json_object(&second.pk), serde_json::json!({"id": "c"}));
    }

    #[test]
    fn malformed_pages_are_protocol_errors() {
        for body in [
            &b"not json"[..],
            br#"{"changes": [{"table": "t", "pk": {"id": [1]}, "version": "v"}], "cursor": "c", "has_more": false, "server_time": ""}"#,
            br#"{"changes": [], "has_more": false}"#,
        ] {
            assert!(matches!(
                PulledPage::parse(body.to_vec()),
                Err(Error::Protocol { .. })
            ));
        }
    }
}
