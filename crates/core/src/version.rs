//! Hybrid logical clock stamps: `<timestamp>-<4 hex digit counter>-<node id>`.
//!
//! A version is taken when a row is written on its device. Versions compare as strings; the
//! greater one wins (last-write-wins) and equal versions are the same write.

use std::cmp::Ordering;
use std::fmt;

use crate::time;

/// A parsed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version<'a> {
    /// Milliseconds since the Unix epoch of the timestamp part.
    pub ms: i64,
    pub counter: u16,
    pub node: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionError(String);

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version {:?} is not `<RFC 3339 ms timestamp>-<4 hex digits>-<node id>`",
            self.0
        )
    }
}

impl std::error::Error for VersionError {}

impl<'a> Version<'a> {
    /// Parses a version in its canonical form (the one that sorts correctly as a string).
    pub fn parse(text: &'a str) -> Result<Self, VersionError> {
        let err = || VersionError(text.chars().take(80).collect());
        let stamp = text.get(..time::TIMESTAMP_LEN).ok_or_else(err)?;
        let ms = time::parse_ms(stamp).ok_or_else(err)?;
        if !is_canonical_stamp(stamp.as_bytes()) {
            return Err(err()); // Not canonical: would not sort as a string.
        }
        let rest = &text[time::TIMESTAMP_LEN..];
        let rest = rest.strip_prefix('-').ok_or_else(err)?;
        let counter = rest.get(..4).ok_or_else(err)?;
        if !counter
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(err());
        }
        let counter = u16::from_str_radix(counter, 16).map_err(|_| err())?;
        let node = rest[4..].strip_prefix('-').ok_or_else(err)?;
        if node.is_empty() || node.len() > 128 || !node.bytes().all(is_node_byte) {
            return Err(err());
        }
        Ok(Version { ms, counter, node })
    }
}

/// A stamp that `time::parse_ms` accepted is in canonical form when it has the fixed layout
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (upper-case `T` and `Z`, exactly three fraction digits). Checked
/// without formatting, since every pushed row's version passes through here.
fn is_canonical_stamp(b: &[u8]) -> bool {
    b.len() == time::TIMESTAMP_LEN
        && b[10] == b'T'
        && b[19] == b'.'
        && b[20..23].iter().all(u8::is_ascii_digit)
        && b[23] == b'Z'
}

fn is_node_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':')
}

/// Formats a version from its parts.
pub fn format(ms: i64, counter: u16, node: &str) -> String {
    let mut out = String::with_capacity(time::TIMESTAMP_LEN + 6 + node.len());
    time::push_ms(&mut out, ms);
    use std::fmt::Write;
    let _ = write!(out, "-{counter:04x}-{node}");
    out
}

/// What to do with an incoming version given the one already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing stored, or the incoming version is newer: store it.
    Apply,
    /// The same write is already stored.
    Duplicate,
    /// A newer version is stored; the incoming one loses.
    Superseded,
}

/// Last-write-wins: the greater version wins, equal versions are the same write.
pub fn decide(incoming: &str, stored: Option<&str>) -> Decision {
    match stored.map(|s| incoming.cmp(s)) {
        None | Some(Ordering::Greater) => Decision::Apply,
        Some(Ordering::Equal) => Decision::Duplicate,
        Some(Ordering::Less) => Decision::Superseded,
    }
}

/// A hybrid logical clock for one node, for Rust-side writers (the SQL triggers of the device
/// client keep the same rules in the database).
#[derive(Debug, Clone)]
pub struct Clock {
    node: String,
    ms: i64,
    counter: u16,
}

impl Clock {
    pub fn new(node: impl Into<String>) -> Self {
        Clock {
            node: node.into(),
            ms: i64::MIN,
            counter: 0,
        }
    }

    /// A new version, greater than every version this clock produced or observed, even if the
    /// wall clock went backwards.
    pub fn tick(&mut self, now_ms: i64) -> String {
        if now_ms > self.ms {
            self.ms = now_ms;
            self.counter = 0;
        } else if self.counter == u16::MAX {
            self.ms += 1;
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        format(self.ms, self.counter, &self.node)
    }

    /// Moves the clock past a version seen from another node.
    pub fn observe(&mut self, seen: &Version<'_>) {
        if (seen.ms, seen.counter) > (self.ms, self.counter) {
            self.ms = seen.ms;
            self.counter = seen.counter;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let v = Version::parse("2026-11-21T12:00:00.123Z-0000-dev_4f2a").unwrap();
        assert_eq!(
            (v.ms, v.counter, v.node),
            (1_795_262_400_123, 0, "dev_4f2a")
        );
        assert_eq!(
            format(v.ms, 0x1a, v.node),
            "2026-11-21T12:00:00.123Z-001a-dev_4f2a"
        );
    }

    #[test]
    fn rejects_versions_that_would_not_sort_as_strings() {
        for bad in [
            "",
            "2026-11-21T12:00:00Z-0000-dev",        // no milliseconds
            "2026-11-21T12:00:00.123Z-00A0-dev",    // upper-case hex
            "2026-11-21T12:00:00.123Z-000-dev",     // short counter
            "2026-11-21T12:00:00.123Z-0000-",       // no node
            "2026-11-21T12:00:00.123Z-0000-dev 1",  // space in node
            "2026-11-21T12:00:00.123+00:00-0000-d", // offset form
            "2026-11-21t12:00:00.123Z-0000-dev",    // lower-case t
            "2026-11-21T12:00:00.123z-0000-dev",    // lower-case z
            "2026-11-21 12:00:00.123Z-0000-dev",    // space separator
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clock_is_monotonic_when_the_wall_clock_goes_backwards() {
        let mut clock = Clock::new("a");
        let v1 = clock.tick(1_000);
        let v2 = clock.tick(500);
        let v3 = clock.tick(500);
        assert!(v1 < v2 && v2 < v3, "{v1} {v2} {v3}");
        let seen = format(9_000, 7, "b");
        clock.observe(&Version::parse(&seen).unwrap());
        assert!(clock.tick(600) > seen);
    }

    #[test]
    fn counter_overflow_moves_to_the_next_millisecond() {
        let mut clock = Clock::new("a");
        let mut last = clock.tick(10);
        for _ in 0..70_000 {
            let next = clock.tick(10);
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn last_write_wins_decisions() {
        let (a, b) = (
            "2026-01-01T00:00:00.000Z-0000-a",
            "2026-01-01T00:00:00.000Z-0001-a",
        );
        assert_eq!(decide(b, Some(a)), Decision::Apply);
        assert_eq!(decide(a, Some(a)), Decision::Duplicate);
        assert_eq!(decide(a, Some(b)), Decision::Superseded);
        assert_eq!(decide(a, None), Decision::Apply);
    }
}
