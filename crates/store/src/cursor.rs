//! Pull cursors: opaque to clients, a sequence number (and where its pull began) to the store.
//!
//! On the wire a cursor is base64url (no padding) of `v1:<seq>` or `v1:<seq>:full`. The
//! version prefix lets a later format (say, one per shard) coexist with cursors devices
//! already hold.
//!
//! A pull from the beginning (no `since`) is the whole tenant snapshot, the pulling device's
//! own rows included; an incremental pull leaves out rows whose latest write came from the
//! pulling device (it has them). A snapshot takes many pages, so the cursors handed out while
//! one is under way (`has_more: true`) carry `:full`, and every page reached with them
//! includes the device's own rows too. The cursor of a snapshot's last page (`has_more:
//! false`) is a plain `v1:<seq>` again: the device saves it for its next cycles, which are
//! incremental. A device that stops in the middle of a snapshot and resumes from its saved
//! cursor finishes the snapshot. Cursors from before `:full` existed are all `v1:<seq>`, and
//! mean what they always meant: incremental.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A position in a tenant's change stream: every change with a greater sequence comes after
/// it. It also tells whether the pull it belongs to began at the start (a snapshot, which
/// includes the device's own rows) or is incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    seq: u64,
    snapshot: bool,
}

/// A `since` value that is not a cursor this server handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor is not one this server handed out")]
pub struct InvalidCursor;

/// What a snapshot's cursors carry after the sequence number.
const SNAPSHOT_SUFFIX: &str = ":full";

impl Cursor {
    /// Before every change, at the start of a snapshot: where a pull without `since` starts.
    pub const START: Cursor = Cursor {
        seq: 0,
        snapshot: true,
    };

    /// An incremental cursor: after `seq`, leaving out the device's own rows.
    pub fn from_seq(seq: u64) -> Cursor {
        Cursor {
            seq,
            snapshot: false,
        }
    }

    /// The cursor of a page that more pages follow: at `seq`, in the same pull as `self`
    /// (still a snapshot if `self` is one).
    pub fn continued_at(self, seq: u64) -> Cursor {
        Cursor { seq, ..self }
    }

    /// The last sequence number this cursor has seen.
    pub fn seq(self) -> u64 {
        self.seq
    }

    /// Whether this cursor belongs to a pull that began at the start, so that its pages
    /// include the device's own rows.
    pub fn is_snapshot(self) -> bool {
        self.snapshot
    }
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor::START
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = if self.snapshot { SNAPSHOT_SUFFIX } else { "" };
        f.write_str(&URL_SAFE_NO_PAD.encode(format!("v1:{}{suffix}", self.seq)))
    }
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Cursor, InvalidCursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidCursor)?;
        let plain = std::str::from_utf8(&bytes).map_err(|_| InvalidCursor)?;
        let rest = plain.strip_prefix("v1:").ok_or(InvalidCursor)?;
        let (digits, snapshot) = match rest.strip_suffix(SNAPSHOT_SUFFIX) {
            Some(digits) => (digits, true),
            None => (rest, false),
        };
        // Only canonical digits: a cursor must round-trip to the same text.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidCursor);
        }
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(InvalidCursor);
        }
        let seq = digits.parse().map_err(|_| InvalidCursor)?;
        Ok(Cursor { seq, snapshot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_anything_else() {
        for seq in [0, 1, 42, u64::MAX] {
            for cursor in [Cursor::from_seq(seq), Cursor::START.continued_at(seq)] {
                let text = cursor.to_string();
                assert_eq!(text.parse::<Cursor>(), Ok(cursor));
            }
        }
        assert_eq!(Cursor::from_seq(7).to_string(), "djE6Nw");
        for bad in [
            "", "djE6", "v1:7", "djI6Nw", "djE6MDc", "djE6LTE", "!!!", "djE6Nw==",
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(InvalidCursor), "{bad}");
        }
        for bad in [
            "v1::full",
            "v1:07:full",
            "v1:7:full:full",
            "v1:7:FULL",
            "v1:7:",
        ] {
            let text = URL_SAFE_NO_PAD.encode(bad);
            assert_eq!(text.parse::<Cursor>(), Err(InvalidCursor), "{bad}");
        }
    }

    /// Guards the cursors devices already hold: `v1:<seq>` stays an incremental cursor.
    #[test]
    fn cursors_from_before_snapshots_are_incremental() {
        let old: Cursor = "djE6Nw".parse().unwrap();
        assert_eq!(old, Cursor::from_seq(7));
        assert!(!old.is_snapshot());
        assert!(Cursor::START.is_snapshot());
        assert!(Cursor::START.continued_at(9).is_snapshot());
        assert!(!Cursor::from_seq(3).continued_at(9).is_snapshot());
    }
}
