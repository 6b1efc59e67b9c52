//! Pure parsers for the contract's types. Each takes a trimmed value and says exactly what is wrong with it.
//! They work on bytes and allocate only to describe an error.

/// The error types a row can get, in the order they are checked. Part of the product's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorType {
    Schema,
    NullValue,
    Type,
    Value,
    Timestamp,
    DuplicateKey,
}

impl ErrorType {
    pub const ALL: [ErrorType; 6] = [
        ErrorType::Schema,
        ErrorType::NullValue,
        ErrorType::Type,
        ErrorType::Value,
        ErrorType::Timestamp,
        ErrorType::DuplicateKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Schema => "SCHEMA_ERROR",
            ErrorType::NullValue => "NULL_VALUE_ERROR",
            ErrorType::Type => "TYPE_ERROR",
            ErrorType::Value => "VALUE_ERROR",
            ErrorType::Timestamp => "TIMESTAMP_ERROR",
            ErrorType::DuplicateKey => "DUPLICATE_KEY_ERROR",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorType> {
        ErrorType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a single value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub error_type: ErrorType,
    pub reason: String,
}

fn type_error(reason: impl Into<String>) -> ValueError {
    ValueError { error_type: ErrorType::Type, reason: reason.into() }
}

fn value_error(reason: impl Into<String>) -> ValueError {
    ValueError { error_type: ErrorType::Value, reason: reason.into() }
}

fn timestamp_error(reason: impl Into<String>) -> ValueError {
    ValueError { error_type: ErrorType::Timestamp, reason: reason.into() }
}

/// Trims ASCII whitespace (space, tab, CR, LF, VT, FF) from both ends.
#[inline]
pub fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace() && *b != 0x0b).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace() && *b != 0x0b).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `[+-]digits[.digits]` with at most `scale` fraction digits and at most `precision - scale` integer digits,
/// returned as an unscaled integer (value × 10^scale).
#[inline]
pub fn parse_decimal(s: &[u8], precision: u8, scale: u8) -> Result<i128, ValueError> {
    let (negative, body) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int_part, frac_part) = match memchr::memchr(b'.', body) {
        Some(dot) => (&body[..dot], Some(&body[dot + 1..])),
        None => (body, None),
    };
    let malformed = || {
        type_error(format!(
            "{} is not a decimal: expected an optional sign, digits and at most {scale} decimals",
            shown(s)
        ))
    };
    if int_part.is_empty() || !int_part.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let frac = frac_part.unwrap_or(&[]);
    if frac_part.is_some() && (frac.is_empty() || !frac.iter().all(u8::is_ascii_digit)) {
        return Err(malformed());
    }
    if frac.len() > scale as usize {
        return Err(type_error(format!(
            "{} has {} fraction digits, more than the {scale} of decimal({precision},{scale})",
            shown(s),
            frac.len()
        )));
    }
    let significant = int_part.iter().position(|b| *b != b'0').map_or(0, |i| int_part.len() - i);
    if significant > (precision - scale) as usize {
        return Err(value_error(format!(
            "{} does not fit decimal({precision},{scale}): at most {} integer digits",
            shown(s),
            precision - scale
        )));
    }
    let mut unscaled: i128 = 0;
    for &d in &int_part[int_part.len() - significant..] {
        unscaled = unscaled * 10 + i128::from(d - b'0');
    }
    for i in 0..scale as usize {
        unscaled = unscaled * 10 + frac.get(i).map_or(0, |d| i128::from(d - b'0'));
    }
    Ok(if negative { -unscaled } else { unscaled })
}

/// `[+-]digits` within the range of a signed 64-bit integer.
#[inline]
pub fn parse_int64(s: &[u8]) -> Result<i64, ValueError> {
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(type_error(format!("{} is not an integer", shown(s))));
    }
    let mut value: i64 = 0;
    for &d in digits {
        let digit = i64::from(d - b'0');
        value = value
            .checked_mul(10)
            .and_then(|v| if negative { v.checked_sub(digit) } else { v.checked_add(digit) })
            .ok_or_else(|| value_error(format!("{} is out of range for int64", shown(s))))?;
    }
    Ok(value)
}

#[inline]
fn digits<const N: usize>(s: &[u8], at: usize) -> Option<u32> {
    let slice = s.get(at..at + N)?;
    let mut v = 0u32;
    for &b in slice {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    Some(v)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month) of a day count since 1970-01-01.
pub fn civil_year_month(days: i64) -> (i32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month)
}

/// The UTC (year, month) of a timestamp in microseconds since the epoch.
pub fn year_month_of_micros(micros: i64) -> (i32, u32) {
    civil_year_month(micros.div_euclid(86_400_000_000))
}

fn parse_date_prefix(s: &[u8]) -> Result<(i64, u32, u32), ValueError> {
    let bad = || timestamp_error(format!("{} is not a date YYYY-MM-DD", shown(s)));
    if s.len() < 10 || s[4] != b'-' || s[7] != b'-' {
        return Err(bad());
    }
    let year = i64::from(digits::<4>(s, 0).ok_or_else(bad)?);
    let month = digits::<2>(s, 5).ok_or_else(bad)?;
    let day = digits::<2>(s, 8).ok_or_else(bad)?;
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(timestamp_error(format!("{} is not a real calendar date", shown(&s[..10]))));
    }
    Ok((year, month, day))
}

/// `YYYY-MM-DD` as days since 1970-01-01.
pub fn parse_date_days(s: &[u8]) -> Result<i32, ValueError> {
    if s.len() != 10 {
        return Err(timestamp_error(format!("{} is not a date YYYY-MM-DD", shown(s))));
    }
    let (y, m, d) = parse_date_prefix(s)?;
    Ok(days_from_civil(y, m, d) as i32)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)?` as UTC microseconds since the epoch; no zone means UTC.
/// Fraction digits beyond the microsecond must be zero, so that nothing is silently truncated.
#[inline]
pub fn parse_timestamp_micros(s: &[u8]) -> Result<i64, ValueError> {
    let bad = || {
        timestamp_error(format!(
            "{} is not a timestamp YYYY-MM-DDTHH:MM:SS[.fraction] with Z, an offset ±HH:MM or no zone",
            shown(s)
        ))
    };
    if s.len() < 19 || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return Err(bad());
    }
    let (year, month, day) = parse_date_prefix(&s[..10]).map_err(|e| match s[..10].iter().all(|b| b.is_ascii()) {
        true => e,
        false => bad(),
    })?;
    let hour = digits::<2>(s, 11).ok_or_else(bad)?;
    let minute = digits::<2>(s, 14).ok_or_else(bad)?;
    let second = digits::<2>(s, 17).ok_or_else(bad)?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err(timestamp_error(format!("{} has an impossible time of day", shown(s))));
    }
    let mut at = 19;
    let mut micros_frac: i64 = 0;
    if s.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < s.len() && s[at].is_ascii_digit() {
            at += 1;
        }
        let frac = &s[start..at];
        if frac.is_empty() {
            return Err(bad());
        }
        // Zeros beyond the microsecond lose nothing, however many; any other digit there would be lost.
        if frac.iter().skip(6).any(|d| *d != b'0') {
            return Err(timestamp_error(format!(
                "{} has {} fraction digits with sub-microsecond precision, which would be lost (timestamps are \
                 stored in microseconds)",
                shown(s),
                frac.len()
            )));
        }
        for i in 0..6 {
            micros_frac = micros_frac * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
    }
    let offset_seconds: i64 = match &s[at..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let oh = digits::<2>(rest, 0).ok_or_else(bad)?;
            let om = digits::<2>(rest, 3).ok_or_else(bad)?;
            if oh > 23 || om > 59 {
                return Err(timestamp_error(format!("{} has an impossible UTC offset", shown(s))));
            }
            let offset = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    let micros = seconds * 1_000_000 + micros_frac;
    // An offset can carry a valid local time across year 1 or 9999, where readers cannot follow.
    if !(MIN_TIMESTAMP_MICROS..=MAX_TIMESTAMP_MICROS).contains(&micros) {
        return Err(timestamp_error(format!(
            "{} is outside the supported range {TIMESTAMP_RANGE} once converted to UTC",
            shown(s)
        )));
    }
    Ok(micros)
}

/// The instants a timestamp may take, in UTC: years 1 to 9999, as every reader of Parquet supports.
pub const TIMESTAMP_RANGE: &str = "0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z";
/// 0001-01-01T00:00:00Z in microseconds since the epoch.
pub const MIN_TIMESTAMP_MICROS: i64 = -62_135_596_800_000_000;
/// 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
pub const MAX_TIMESTAMP_MICROS: i64 = 253_402_300_799_999_999;

/// Characters of a value quoted in an error message; the rest is elided, so that a huge value gives a short
/// message (the value itself is kept in quarantine).
pub const SHOWN_CHARS: usize = 64;

/// A value for an error message: quoted, undecodable bytes replaced, at most [`SHOWN_CHARS`] characters, then
/// `…` and the value's full size.
pub fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((at, _)) => format!("{:?}… ({} bytes)", &text[..at], bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Result<i64, ErrorType> {
        parse_timestamp_micros(s.as_bytes()).map_err(|e| e.error_type)
    }

    fn ym(s: &str) -> (i32, u32) {
        year_month_of_micros(parse_timestamp_micros(s.as_bytes()).expect(s))
    }

    #[test]
    fn decimals_follow_the_contract() {
        let d = |s: &str| parse_decimal(s.as_bytes(), 18, 2);
        assert_eq!(d("12.34"), Ok(1234));
        assert_eq!(d("-12.3"), Ok(-1230));
        assert_eq!(d("+7"), Ok(700));
        assert_eq!(d("0.01"), Ok(1));
        assert_eq!(d("0000000000000000000012.50"), Ok(1250));
        assert_eq!(d("9999999999999999.99"), Ok(999_999_999_999_999_999));
        for bad in ["", "-", "1.", ".5", "1.234", "1,000.00", "1e5", "12a", "1.2.3", "--1", " 1", "NaN"] {
            assert_eq!(d(bad).map_err(|e| e.error_type), Err(ErrorType::Type), "{bad:?}");
        }
        assert_eq!(d("10000000000000000").map_err(|e| e.error_type), Err(ErrorType::Value));
    }

    #[test]
    fn integers_are_checked_for_range() {
        assert_eq!(parse_int64(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_int64(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_int64(b"9223372036854775808").map_err(|e| e.error_type), Err(ErrorType::Value));
        assert_eq!(parse_int64(b"1.0").map_err(|e| e.error_type), Err(ErrorType::Type));
    }

    #[test]
    fn timestamps_accept_zone_offset_or_none() {
        assert_eq!(ts("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(ts("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(ts("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(ts("1970-01-01T00:00:00.5Z"), Ok(500_000));
        assert_eq!(ts("1970-01-01T00:00:00.123456789").map_err(|_| ()), Err(()));
        assert_eq!(ts("1970-01-01T00:00:00.123456000Z"), Ok(123_456));
        assert_eq!(ts("1970-01-01T00:00:00.1234560000000Z"), Ok(123_456), "zeros past the 9th digit lose nothing");
        assert_eq!(ts("1970-01-01T00:00:00.0000000000Z"), Ok(0));
        assert_eq!(ts("1970-01-01T00:00:00.1234560000001Z").map_err(|_| ()), Err(()));
        assert_eq!(ts("1969-12-31T23:59:59Z"), Ok(-1_000_000));
    }

    #[test]
    fn timestamps_reject_everything_else() {
        for bad in [
            "2024-01-15 10:00:00",
            "2024-01-15",
            "20240115T100000Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-15T24:00:00Z",
            "2024-01-15T10:60:00Z",
            "2024-01-15T10:00:00z",
            "2024-01-15T10:00:00+0100",
            "2024-01-15T10:00:00+24:00",
            "2024-01-15T10:00:00.Z",
            "2024-01-15T10:00:00 Z",
            "0000-01-01T00:00:00Z",
            "2024-1-15T10:00:00Z",
            "",
        ] {
            assert_eq!(ts(bad).map(|_| ()), Err(ErrorType::Timestamp), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_stay_within_years_1_to_9999_utc() {
        assert_eq!(ts("0001-01-01T00:00:00Z"), Ok(MIN_TIMESTAMP_MICROS));
        assert_eq!(ts("9999-12-31T23:59:59.999999Z"), Ok(MAX_TIMESTAMP_MICROS));
        assert_eq!(MIN_TIMESTAMP_MICROS, days_from_civil(1, 1, 1) * 86_400_000_000);
        assert_eq!(MAX_TIMESTAMP_MICROS, days_from_civil(10_000, 1, 1) * 86_400_000_000 - 1);
        for outside in ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "0001-01-01T00:00:00.5+00:01"] {
            let err = parse_timestamp_micros(outside.as_bytes()).expect_err(outside);
            assert_eq!(err.error_type, ErrorType::Timestamp);
            assert!(err.reason.contains(TIMESTAMP_RANGE), "{}", err.reason);
        }
    }

    #[test]
    fn leap_days_exist_only_in_leap_years() {
        assert!(ts("2024-02-29T12:00:00Z").is_ok());
        assert!(ts("2000-02-29T12:00:00Z").is_ok());
        assert!(ts("1900-02-29T12:00:00Z").is_err());
        assert!(ts("2023-02-29T12:00:00Z").is_err());
    }

    #[test]
    fn partitions_use_the_utc_month() {
        assert_eq!(ym("2024-01-31T23:30:00-02:00"), (2024, 2));
        assert_eq!(ym("2024-03-01T00:30:00+01:00"), (2024, 2));
        assert_eq!(ym("2023-12-31T23:59:59.999999Z"), (2023, 12));
        assert_eq!(ym("2024-01-01T00:00:00Z"), (2024, 1));
        assert_eq!(ym("1969-12-31T23:59:59Z"), (1969, 12));
    }

    #[test]
    fn civil_conversion_round_trips() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m) = civil_year_month(days);
            let first = days_from_civil(i64::from(y), m, 1);
            assert!(first <= days && days - first < 31, "{days}");
        }
    }

    #[test]
    fn dates_are_plain_calendar_days() {
        assert_eq!(parse_date_days(b"1970-01-02"), Ok(1));
        assert!(parse_date_days(b"2023-02-29").is_err());
        assert!(parse_date_days(b"2023-02-28T00:00:00").is_err());
    }

    #[test]
    fn messages_quote_a_bounded_prefix_of_the_value() {
        assert_eq!(shown(b"abc"), "\"abc\"");
        let huge = "é".repeat(100_000);
        let text = shown(huge.as_bytes());
        assert!(text.starts_with(&format!("\"{}\"…", "é".repeat(SHOWN_CHARS))), "{text}");
        assert!(text.ends_with("(200000 bytes)"), "{text}");
        let err = parse_decimal(huge.as_bytes(), 18, 2).expect_err("not a decimal");
        assert!(err.reason.len() < 300, "{}", err.reason);
    }

    #[test]
    fn trimming_removes_surrounding_ascii_whitespace_only() {
        assert_eq!(trim(b"  a b \t\r\n"), b"a b");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim("\u{a0}x".as_bytes()), "\u{a0}x".as_bytes());
    }
}
