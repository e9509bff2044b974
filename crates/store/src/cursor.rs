//! Pull cursors: opaque to clients, a sequence number to the store.
//!
//! On the wire a cursor is base64url (no padding) of `v1:<seq>`. The version prefix lets a
//! later format (say, one per shard) coexist with cursors devices already hold.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A position in a tenant's change stream: every change with a greater sequence comes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor(u64);

/// A `since` value that is not a cursor this server handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor is not one this server handed out")]
pub struct InvalidCursor;

impl Cursor {
    /// Before every change: a fresh device's full snapshot starts here.
    pub const START: Cursor = Cursor(0);

    pub fn from_seq(seq: u64) -> Cursor {
        Cursor(seq)
    }

    /// The last sequence number this cursor has seen.
    pub fn seq(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(format!("v1:{}", self.0)))
    }
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Cursor, InvalidCursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidCursor)?;
        let plain = std::str::from_utf8(&bytes).map_err(|_| InvalidCursor)?;
        let digits = plain.strip_prefix("v1:").ok_or(InvalidCursor)?;
        // Only canonical digits: a cursor must round-trip to the same text.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidCursor);
        }
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(InvalidCursor);
        }
        digits.parse().map(Cursor).map_err(|_| InvalidCursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_anything_else() {
        for seq in [0, 1, 42, u64::MAX] {
            let text = Cursor(seq).to_string();
            assert_eq!(text.parse::<Cursor>(), Ok(Cursor(seq)));
        }
        assert_eq!(Cursor(7).to_string(), "djE6Nw");
        for bad in [
            "", "djE6", "v1:7", "djI6Nw", "djE6MDc", "djE6LTE", "!!!", "djE6Nw==",
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(InvalidCursor), "{bad}");
        }
    }
}
