//! RFC 3339 UTC timestamps with milliseconds: `2026-11-21T12:00:00.123Z`.
//!
//! The format is fixed-width, so timestamps (and the versions that start with one) sort as
//! strings in time order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of a formatted timestamp.
pub const TIMESTAMP_LEN: usize = 24;

/// The system clock in milliseconds since the Unix epoch. This is Ferry's one reading of the
/// wall clock, for callers at the edges (a request's server time, a cycle's start); the rules in
/// this crate take time as a parameter instead.
pub fn now_ms() -> i64 {
    ms_of(SystemTime::now())
}

/// The system clock in the contract's format.
pub fn now() -> String {
    format_ms(now_ms())
}

/// Milliseconds since the Unix epoch of a system time (negative before it).
pub fn ms_of(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Formats milliseconds since the Unix epoch. Years outside 0000..=9999 are clamped.
pub fn format_ms(ms: i64) -> String {
    let mut out = String::with_capacity(TIMESTAMP_LEN);
    push_ms(&mut out, ms);
    out
}

/// Appends the formatted timestamp to `out`.
pub fn push_ms(out: &mut String, ms: i64) {
    const MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
    const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(MIN, MAX);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    use std::fmt::Write;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z"
    );
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (a `+00:00` offset is accepted too) into milliseconds.
pub fn parse_ms(text: &str) -> Option<i64> {
    let (ms, offset) = parse_local(text)?;
    matches!(offset, "Z" | "z" | "+00:00").then_some(ms)
}

/// Parses an RFC 3339 time with any offset (`2026-11-21T13:00:00+01:00`) into milliseconds:
/// what people and tools type in a filter, where [`parse_ms`] reads the contract's own UTC
/// timestamps and refuses anything else.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let (ms, offset) = parse_local(text)?;
    if matches!(offset, "Z" | "z") {
        return Some(ms);
    }
    let &[sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] = offset.as_bytes() else {
        return None;
    };
    let two = |a: u8, b: u8| {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
    };
    let (h, m) = (two(h1, h2)?, two(m1, m2)?);
    if h > 23 || m > 59 {
        return None;
    }
    // 13:00 at +01:00 is 12:00 UTC.
    let offset_ms = (h * 60 + m) * 60_000;
    Some(if sign == b'+' {
        ms - offset_ms
    } else {
        ms + offset_ms
    })
}

/// The date and time of `YYYY-MM-DDTHH:MM:SS[.fff]<offset>` as milliseconds, read as if the
/// offset were UTC, and the offset's text.
fn parse_local(text: &str) -> Option<(i64, &str)> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, m, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut milli = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds precision: extra digits are truncated.
        let first3 = &frac[..digits.min(3)];
        milli = first3.parse::<i64>().ok()? * 10_i64.pow(3 - first3.len() as u32);
        rest = &frac[digits..];
    }
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400_000 + h * 3_600_000 + m * 60_000 + s * 1000 + milli,
        rest,
    ))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration as people write it in options: a whole number and a unit, `200ms`, `30s`, `5m`,
/// `1h` or `7d`. The unit is required, so `timeout=5` cannot be misread.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds_per_unit = match unit {
        "ms" => return Some(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        for (text, expected) in [
            ("0ms", Duration::ZERO),
            ("1500ms", Duration::from_millis(1500)),
            ("2s", Duration::from_secs(2)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
        ] {
            assert_eq!(parse_duration(text), Some(expected), "{text}");
        }
        for text in [
            "5",
            "ms",
            "1.5s",
            "-1s",
            "2w",
            "1 s",
            "99999999999999999999h",
            "",
        ] {
            assert_eq!(parse_duration(text), None, "{text}");
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_262_400_123), "2026-11-21T12:00:00.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_common_variants() {
        assert_eq!(
            parse_ms("2026-11-21T12:00:00.123Z"),
            Some(1_795_262_400_123)
        );
        assert_eq!(parse_ms("2026-11-21T12:00:00Z"), Some(1_795_262_400_000));
        assert_eq!(
            parse_ms("2026-11-21T12:00:00.1+00:00"),
            Some(1_795_262_400_100)
        );
        assert_eq!(
            parse_ms("2026-11-21T12:00:00.123456Z"),
            Some(1_795_262_400_123)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-21T12:00:00",
            "x026-11-21T12:00:00Z",
            "2026-11-21T12:00:00.Z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_times_take_any_offset_and_the_contract_s_timestamps_only_utc() {
        let noon = Some(1_795_262_400_000);
        for text in [
            "2026-11-21T12:00:00Z",
            "2026-11-21T12:00:00.000z",
            "2026-11-21T13:00:00+01:00",
            "2026-11-21T06:30:00-05:30",
            "2026-11-22T11:59:00+23:59",
            "2026-11-21 12:00:00+00:00",
        ] {
            assert_eq!(parse_rfc3339_ms(text), noon, "{text}");
        }
        assert_eq!(parse_ms("2026-11-21T13:00:00+01:00"), None);
        for bad in [
            "2026-11-21T12:00:00",
            "2026-11-21T12:00:00+1:00",
            "2026-11-21T12:00:00+0100",
            "2026-11-21T12:00:00+24:00",
            "2026-11-21T12:00:00+01:60",
            "2026-11-21T12:00:00 01:00",
            "2026-11-21T12:00:00+01:00Z",
            "2026-11-21T12:00:00+é:0",
            "2026-11-21",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_and_sorts_like_time_across_four_centuries() {
        let mut previous = String::new();
        let mut ms = -2_208_988_800_000; // 1900
        while ms < 7_258_118_400_000 {
            let text = format_ms(ms);
            assert_eq!(parse_ms(&text), Some(ms), "{text}");
            assert!(text > previous);
            previous = text;
            ms += 86_400_000 * 7 + 3_600_000 * 5 + 61_001;
        }
    }
}
