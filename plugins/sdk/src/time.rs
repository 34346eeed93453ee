//! Wall-clock times as a config writes them: a date (`2027-01-01`) or an
//! RFC 3339 date and time (`2027-01-01T12:00:00Z`, `2027-01-01T14:00:00+02:00`),
//! as seconds since the Unix epoch (UTC).
//!
//! [`now`] reads the wall clock. Inside a plugin that is WASI's
//! `wasi:clocks/wall-clock`, which llamagate gives plugins (the host's real
//! clock: only waiting is refused to plugins, never reading a clock).
//!
//! ```
//! use llamagate_sdk::time::{format_timestamp, parse_timestamp};
//!
//! assert_eq!(parse_timestamp("1970-01-02"), Ok(86_400));
//! assert_eq!(parse_timestamp("2027-01-01T02:00:00+02:00"), parse_timestamp("2027-01-01"));
//! assert_eq!(format_timestamp(86_400), "1970-01-02T00:00:00Z");
//! assert!(parse_timestamp("2027-02-30").is_err());
//! ```

/// Why a time was refused. The message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeError;

impl std::fmt::Display for TimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "expected a date (2027-01-01, midnight UTC) or an RFC 3339 date and time \
             (2027-01-01T12:00:00Z, 2027-01-01T14:00:00+02:00)",
        )
    }
}

impl std::error::Error for TimeError {}

/// Seconds since the Unix epoch now, from the wall clock (negative before 1970,
/// which no real clock is).
pub fn now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Reads `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`
/// (`t`, `z` and a space for `T` are accepted, as RFC 3339 allows; the fraction
/// is dropped) as seconds since the Unix epoch.
pub fn parse_timestamp(text: &str) -> Result<i64, TimeError> {
    let text = text.trim();
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let part = b.get(range).ok_or(TimeError)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(TimeError);
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| -> Result<(), TimeError> {
        (b.get(at) == Some(&c)).then_some(()).ok_or(TimeError)
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    sep(4, b'-')?;
    sep(7, b'-')?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(TimeError);
    }
    let date = days_from_civil(year, month, day) * 86_400;
    if b.len() == 10 {
        return Ok(date);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return Err(TimeError);
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    sep(13, b':')?;
    sep(16, b':')?;
    // 60: a leap second, read as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(TimeError);
    }
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(TimeError);
        }
    }
    let offset = match &b[at..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == at + 6 => {
            sep(at + 3, b':')?;
            let (h, m) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return Err(TimeError);
            }
            let offset = h * 3600 + m * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return Err(TimeError),
    };
    Ok(date + hour * 3600 + minute * 60 + second - offset)
}

/// `secs` since the Unix epoch as RFC 3339 in UTC, to the second
/// (`2027-01-01T00:00:00Z`).
pub fn format_timestamp(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_as_rfc_3339_writes_them() {
        assert_eq!(parse_timestamp("1970-01-01"), Ok(0));
        assert_eq!(parse_timestamp("2000-03-01"), Ok(951_868_800));
        // `date -u -d 2027-01-01 +%s`
        assert_eq!(parse_timestamp("2027-01-01"), Ok(1_798_761_600));
        assert_eq!(parse_timestamp("2027-01-01T00:00:00Z"), Ok(1_798_761_600));
        assert_eq!(
            parse_timestamp("2027-01-01t00:00:00.999z"),
            Ok(1_798_761_600)
        );
        assert_eq!(
            parse_timestamp("2027-01-01 01:30:00+01:30"),
            Ok(1_798_761_600)
        );
        assert_eq!(
            parse_timestamp("2026-12-31T19:00:00-05:00"),
            Ok(1_798_761_600)
        );
        assert_eq!(parse_timestamp("2024-02-29T12:00:01Z"), Ok(1_709_208_001));
        assert_eq!(parse_timestamp(" 2027-01-01 "), Ok(1_798_761_600));
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2027",
            "2027-1-01",
            "2027-01-1",
            "2027-13-01",
            "2027-00-10",
            "2023-02-29",
            "2027-04-31",
            "2027-01-01T",
            "2027-01-01T24:00:00Z",
            "2027-01-01T12:00:00",
            "2027-01-01T12:00Z",
            "2027-01-01T12:00:00.Z",
            "2027-01-01T12:00:00+0200",
            "2027-01-01T12:00:00+02:00x",
            "2027-01-01x",
            "30d",
            "+2027-01-01",
            "２０２７-01-01",
        ] {
            assert_eq!(parse_timestamp(bad), Err(TimeError), "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for secs in [0, 86_399, 951_868_800, 1_709_208_001, 4_102_444_800, -1] {
            assert_eq!(parse_timestamp(&format_timestamp(secs)), Ok(secs), "{secs}");
        }
        assert_eq!(format_timestamp(1_798_761_600), "2027-01-01T00:00:00Z");
        assert!(now() > 1_700_000_000, "the wall clock runs");
    }
}
