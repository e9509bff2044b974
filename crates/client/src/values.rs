//! Values between the wire (JSON) and the replica (SQLite).
//!
//! On the wire a value is JSON `null`, a number, a string, or `{"$blob": "<base64>"}`. In SQLite
//! it is NULL, INTEGER, REAL, TEXT or BLOB. Numbers keep their kind: an integral JSON number binds
//! as INTEGER, any other as REAL, so a pulled row stores exactly what the server sent.
//!
//! Tombstones name their row by a *key text*: the primary-key values rendered by SQLite's
//! `quote()` and joined by `,` (for example `'abc',7` or `X'00FF'`). The delete triggers build it
//! in SQL, so they work in any writer's process; this module renders and parses the same text in
//! Rust.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use ferry_core::Affinity;
use rusqlite::types::{Value as SqlValue, ValueRef};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One wire value as SQLite will store it, borrowing its text from the response body where it
/// can (a fresh device's snapshot carries millions of them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Vec<u8>),
}

const NOT_A_VALUE: &str = "not an SQLite value (BLOBs travel as {\"$blob\": \"<base64>\"})";

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null, a number, a string or {\"$blob\": \"<base64>\"}")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Integer(i64::from(b)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Integer(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(u).map_or(Scalar::Real(u as f64), Scalar::Integer))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Real(f))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(s)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let key: Option<CowStr<'de>> = map.next_key()?;
        if key.as_ref().map(|k| k.0.as_ref()) != Some("$blob") {
            return Err(de::Error::custom(NOT_A_VALUE));
        }
        let text: CowStr<'de> = map.next_value()?;
        if map.next_key::<CowStr<'de>>()?.is_some() {
            return Err(de::Error::custom(NOT_A_VALUE));
        }
        base64_decode(&text.0)
            .map(Scalar::Blob)
            .ok_or_else(|| de::Error::custom("$blob is not base64"))
    }
}

/// A string that borrows from the input when it has no escapes.
pub(crate) struct CowStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A JSON object of column values (`pk` or `data`), in the order it arrived.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Fields<'a>(pub(crate) Vec<(Cow<'a, str>, Scalar<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of column values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((CowStr(name), value)) = map.next_entry()? {
                    fields.push((name, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// An SQLite value as it goes on the wire.
pub(crate) fn to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Number(i.into()),
        ValueRef::Real(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => {
            let mut object = Map::with_capacity(1);
            object.insert("$blob".to_string(), Value::String(base64_encode(b)));
            Value::Object(object)
        }
    }
}

/// A value converted the way SQLite converts it on the way into a column of the given
/// affinity. Key texts are compared as text, so a pulled `{"id": "5"}` must render like the `5`
/// SQLite stored in an INTEGER column.
pub(crate) fn with_affinity(value: ValueRef<'_>, affinity: Affinity) -> SqlValue {
    let raw = match value {
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        other => SqlValue::from(other),
    };
    match (affinity, raw) {
        (Affinity::Integer | Affinity::Numeric, SqlValue::Text(t)) => {
            numeric_text(&t).unwrap_or(SqlValue::Text(t))
        }
        (Affinity::Integer | Affinity::Numeric, SqlValue::Real(f)) => integral(f),
        (Affinity::Real, SqlValue::Integer(i)) => SqlValue::Real(i as f64),
        (Affinity::Real, SqlValue::Text(t)) => match t.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => SqlValue::Real(f),
            _ => SqlValue::Text(t),
        },
        (Affinity::Text, SqlValue::Integer(i)) => SqlValue::Text(i.to_string()),
        (Affinity::Text, SqlValue::Real(f)) => SqlValue::Text(format_real(f)),
        (_, other) => other,
    }
}

/// Text that SQLite's NUMERIC conversion turns into a number.
fn numeric_text(text: &str) -> Option<SqlValue> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(SqlValue::Integer(i));
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() && t.bytes().any(|c| c.is_ascii_digit()) => Some(integral(f)),
        _ => None,
    }
}

/// A REAL that holds an integer exactly becomes INTEGER under INTEGER and NUMERIC affinity.
fn integral(f: f64) -> SqlValue {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        SqlValue::Integer(f as i64)
    } else {
        SqlValue::Real(f)
    }
}

/// SQLite renders a REAL with 15 significant digits and keeps a `.0` on integral values.
fn format_real(f: f64) -> String {
    let mut text = format!("{f}");
    if !text.contains(['.', 'e', 'E', 'i', 'N']) {
        text.push_str(".0");
    }
    text
}

/// Appends a value rendered as SQLite's `quote()` renders it.
///
/// Integers, text and BLOBs render exactly as SQLite does; REALs render in their shortest
/// round-trip form, which matches SQLite for ordinary values (REAL primary keys are rare and
/// fragile in any database).
pub(crate) fn push_quoted(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.push_str("NULL"),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(f) => out.push_str(&format_real(f)),
        ValueRef::Text(t) => {
            out.push('\'');
            for c in String::from_utf8_lossy(t).chars() {
                if c == '\'' {
                    out.push('\'');
                }
                out.push(c);
            }
            out.push('\'');
        }
        ValueRef::Blob(b) => {
            out.push_str("X'");
            for byte in b {
                let _ = write!(out, "{byte:02X}");
            }
            out.push('\'');
        }
    }
}

/// The key text of a row from its primary-key values, in key order.
pub(crate) fn key_text<'a>(values: impl IntoIterator<Item = ValueRef<'a>>) -> String {
    let mut out = String::new();
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_quoted(&mut out, value);
    }
    out
}

/// Parses a key text back into its values.
pub(crate) fn parse_key_text(text: &str) -> Option<Vec<SqlValue>> {
    let mut values = Vec::new();
    let mut rest = text;
    loop {
        let (value, after) = parse_literal(rest)?;
        values.push(value);
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None if after.is_empty() => return Some(values),
            None => return None,
        }
    }
}

/// One SQL literal at the start of `text`, and what follows it.
fn parse_literal(text: &str) -> Option<(SqlValue, &str)> {
    if let Some(rest) = text.strip_prefix("NULL") {
        return Some((SqlValue::Null, rest));
    }
    if let Some(rest) = text.strip_prefix("X'") {
        let end = rest.find('\'')?;
        let hex = &rest[..end];
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        return Some((SqlValue::Blob(bytes), &rest[end + 1..]));
    }
    if let Some(rest) = text.strip_prefix('\'') {
        // A quote inside the text is doubled; a single quote ends it.
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                out.push(c);
            } else if rest[i + 1..].starts_with('\'') {
                out.push('\'');
                chars.next();
            } else {
                return Some((SqlValue::Text(out), &rest[i + 1..]));
            }
        }
        return None;
    }
    let end = text.find(',').unwrap_or(text.len());
    let number = &text[..end];
    let value = match number.parse::<i64>() {
        Ok(i) => SqlValue::Integer(i),
        Err(_) => SqlValue::Real(number.parse::<f64>().ok()?),
    };
    Some((value, &text[end..]))
}

/// A key value as it goes on the wire.
pub(crate) fn sql_to_json(value: &SqlValue) -> Value {
    to_json(ValueRef::from(value))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, the encoding of `{"$blob": ...}`.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; padding is optional.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0_u32, 0_u32);
    for c in body.bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn base64_round_trips_every_length_and_matches_known_text() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(&[0, 1, 255]), "AAH/");
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64_encode(&bytes);
            assert_eq!(base64_decode(&text).unwrap(), bytes, "{text}");
            assert_eq!(
                base64_decode(text.trim_end_matches('=')).unwrap(),
                bytes,
                "unpadded {text}"
            );
        }
        assert!(base64_decode("A").is_none());
        assert!(base64_decode("AA!=").is_none());
    }

    /// Key texts rendered in Rust must equal the ones the triggers render with `quote()`.
    #[test]
    fn key_text_matches_sqlite_quote_and_parses_back() {
        let conn = Connection::open_in_memory().unwrap();
        let cases = [
            SqlValue::Integer(0),
            SqlValue::Integer(-42),
            SqlValue::Integer(i64::MAX),
            SqlValue::Text("plain".into()),
            SqlValue::Text("it's, quoted ''".into()),
            SqlValue::Text("ünïcødé".into()),
            SqlValue::Text(String::new()),
            SqlValue::Blob(vec![0, 1, 0xab, 0xff]),
            SqlValue::Blob(vec![]),
            SqlValue::Real(1.5),
            SqlValue::Real(-0.25),
            SqlValue::Real(3.0),
            SqlValue::Null,
        ];
        for value in &cases {
            let sqlite: String = conn
                .query_row("SELECT quote(?1)", [value], |r| r.get(0))
                .unwrap();
            let rust = key_text([ValueRef::from(value)]);
            assert_eq!(rust, sqlite, "{value:?}");
            assert_eq!(parse_key_text(&rust).unwrap(), vec![value.clone()]);
        }
        let composite = key_text(cases.iter().map(ValueRef::from));
        assert_eq!(parse_key_text(&composite).unwrap(), cases.to_vec());
        for bad in ["", "'open", "X'0'", "1,", "abc", "'a'b"] {
            assert!(parse_key_text(bad).is_none(), "{bad}");
        }
    }

    /// The snapshot path parses column values without copying their text.
    #[test]
    fn fields_parse_borrowing_text_and_keep_every_kind_of_value() {
        let text = r#"{"a": "plain", "b": "esc\"aped", "c": 5, "d": -2, "e": 2.5,
                       "f": null, "g": {"$blob": "AQI="}, "h": 18446744073709551615, "i": true}"#;
        let fields: Fields<'_> = serde_json::from_str(text).unwrap();
        assert!(matches!(fields.0[0].0, Cow::Borrowed("a")));
        assert!(matches!(
            &fields.0[0].1,
            Scalar::Text(Cow::Borrowed("plain"))
        ));
        let values: Vec<&Scalar<'_>> = fields.0.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                &Scalar::Text("plain".into()),
                &Scalar::Text("esc\"aped".into()),
                &Scalar::Integer(5),
                &Scalar::Integer(-2),
                &Scalar::Real(2.5),
                &Scalar::Null,
                &Scalar::Blob(vec![1, 2]),
                &Scalar::Real(18446744073709551615.0),
                &Scalar::Integer(1),
            ]
        );
        for bad in [
            r#"{"a": [1]}"#,
            r#"{"a": {"x": 1}}"#,
            r#"{"a": {"$blob": "!"}}"#,
        ] {
            assert!(serde_json::from_str::<Fields<'_>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn affinity_conversion_matches_what_sqlite_stores() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (i INTEGER, s TEXT, r REAL, n NUMERIC, b BLOB)")
            .unwrap();
        let columns = [
            ("i", Affinity::Integer),
            ("s", Affinity::Text),
            ("r", Affinity::Real),
            ("n", Affinity::Numeric),
            ("b", Affinity::Blob),
        ];
        let cases = [
            SqlValue::Integer(5),
            SqlValue::Text("5".into()),
            SqlValue::Real(5.0),
            SqlValue::Text("x".into()),
            SqlValue::Real(2.5),
        ];
        for value in cases {
            for (column, affinity) in columns {
                conn.execute("DELETE FROM t", []).unwrap();
                conn.execute(&format!("INSERT INTO t ({column}) VALUES (?1)"), [&value])
                    .unwrap();
                let stored: String = conn
                    .query_row(&format!("SELECT quote({column}) FROM t"), [], |r| r.get(0))
                    .unwrap();
                let ours = with_affinity(ValueRef::from(&value), affinity);
                assert_eq!(
                    key_text([ValueRef::from(&ours)]),
                    stored,
                    "{value:?} into {column}"
                );
            }
        }
    }
}
