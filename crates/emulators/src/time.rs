//! Time as the emulators take it (milliseconds since the Unix epoch) and as their APIs show it.

use jiff::Timestamp;
use serde::{Deserialize, Deserializer};

/// The instant of `ms`, clamped to the range `jiff` represents (years -9999 to 9999).
pub(crate) fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// RFC 3339 in UTC to the second, `2026-12-06T01:02:03Z`: how Lago shows the times of its own
/// records (Rails' `iso8601`).
pub(crate) fn format_seconds(ms: i64) -> String {
    timestamp(ms).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reads an optional RFC 3339 time with any offset (`2026-12-06T10:00:00+01:00`) into
/// milliseconds, for the `/_emulator` routes people type by hand.
pub(crate) fn deserialize_at<'de, D: Deserializer<'de>>(input: D) -> Result<Option<i64>, D::Error> {
    let Some(text) = Option::<String>::deserialize(input)? else {
        return Ok(None);
    };
    let at: Timestamp = text.parse().map_err(serde::de::Error::custom)?;
    Ok(Some(at.as_millisecond()))
}
