//! The time formats rate-limit headers use: Go durations, HTTP dates, RFC 3339 timestamps.
//! Small hand-written parsers (no date crate in the dependency tree); all arithmetic is
//! checked, so they never panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A Go `time.Duration` string (`1s`, `6m0s`, `20ms`, `1h2m3.5s`, `1.5µs`, `0`), in seconds.
/// A leading `-` gives a negative value. `None` when malformed.
pub(super) fn parse_go_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let (num, tail) = rest.split_at_checked(num_len)?;
        if !num.bytes().any(|c| c.is_ascii_digit()) {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_len: usize = tail
            .chars()
            .take_while(|c| !c.is_ascii_digit() && *c != '.')
            .map(char::len_utf8)
            .sum();
        let (unit, tail) = tail.split_at_checked(unit_len)?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Some(sign * total)
}

/// Seconds (possibly fractional or negative) as a duration clamped to `0..=cap`; NaN is zero.
pub(super) fn clamp_secs(secs: f64, cap: Duration) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else if secs >= cap.as_secs_f64() {
        cap
    } else {
        Duration::try_from_secs_f64(secs).unwrap_or(cap)
    }
}

/// How long from `now` until `at` (Unix seconds and nanoseconds), clamped to `0..=cap`.
pub(super) fn until(at: (i64, u32), now: SystemTime, cap: Duration) -> Duration {
    let (secs, nanos) = at;
    let Ok(secs) = u64::try_from(secs) else {
        return Duration::ZERO;
    };
    let Some(target) = UNIX_EPOCH.checked_add(Duration::new(secs, nanos.min(999_999_999))) else {
        return cap;
    };
    target
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(cap)
}

/// An HTTP date (RFC 9110): IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, and the obsolete
/// RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994` forms.
/// Month and weekday names are matched case-insensitively; the weekday is not checked.
/// Returns Unix seconds.
pub(super) fn parse_http_date(s: &str) -> Option<i64> {
    let mut tokens = s.split([' ', ',', '\t']).filter(|t| !t.is_empty());
    let mut toks: [&str; 6] = [""; 6];
    let mut n = 0usize;
    for t in tokens.by_ref() {
        *toks.get_mut(n)? = t;
        n = n.saturating_add(1);
    }
    let mut toks = toks.get(..n)?;
    // Drop a leading weekday name.
    if let Some((first, rest)) = toks.split_first()
        && first.bytes().all(|c| c.is_ascii_alphabetic())
        && month(first).is_none()
    {
        toks = rest;
    }
    let (year, mon, day, time) = match *toks {
        // IMF-fixdate: 06 Nov 1994 08:49:37 GMT
        [d, m, y, t, zone] if is_gmt(zone) => (number(y, 4, 4)?, month(m)?, number(d, 1, 2)?, t),
        // RFC 850: 06-Nov-94 08:49:37 GMT
        [date, t, zone] if is_gmt(zone) => {
            let mut parts = date.split('-');
            let d = number(parts.next()?, 1, 2)?;
            let m = month(parts.next()?)?;
            let y = number(parts.next()?, 2, 4)?;
            if parts.next().is_some() {
                return None;
            }
            // Two-digit years: 70..99 are 19xx, 00..69 are 20xx.
            let y = match y {
                0..=69 => y.saturating_add(2000),
                70..=99 => y.saturating_add(1900),
                _ => y,
            };
            (y, m, d, t)
        }
        // asctime: Nov  6 08:49:37 1994
        [m, d, t, y] => (number(y, 4, 4)?, month(m)?, number(d, 1, 2)?, t),
        _ => return None,
    };
    let mut hms = time.split(':');
    let h = number(hms.next()?, 1, 2)?;
    let mi = number(hms.next()?, 1, 2)?;
    let sec = number(hms.next()?, 1, 2)?;
    if hms.next().is_some() {
        return None;
    }
    unix_seconds(year, mon, day, h, mi, sec)
}

/// An RFC 3339 timestamp (`2024-06-04T12:00:00Z`, `2024-06-04T12:00:00.123+02:00`; `t`, `z`
/// and a space separator accepted). Returns Unix seconds and nanoseconds.
pub(super) fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.trim().as_bytes();
    let field = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from.checked_add(len)?)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0u32, |acc, d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, mon, day) = (field(0, 4)?, field(5, 2)?, field(8, 2)?);
    let (h, mi, sec) = (field(11, 2)?, field(14, 2)?, field(17, 2)?);
    let mut i = 19usize;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i = i.saturating_add(1);
        let start = i;
        while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i.saturating_sub(start) < 9 {
                nanos = nanos.saturating_mul(10).saturating_add(u32::from(d - b'0'));
            }
            i = i.saturating_add(1);
        }
        let digits = i.saturating_sub(start);
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos = nanos.saturating_mul(10);
        }
    }
    let offset: i64 = match b.get(i)? {
        b'Z' | b'z' if i.saturating_add(1) == b.len() => 0,
        c @ (b'+' | b'-') if i.saturating_add(6) == b.len() => {
            if !sep(i.saturating_add(3), b":") {
                return None;
            }
            let oh = field(i.saturating_add(1), 2)?;
            let om = field(i.saturating_add(4), 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh) * 3600 + i64::from(om) * 60;
            if *c == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let secs = unix_seconds(year, mon, day, h, mi, sec)?;
    Some((secs.checked_sub(offset)?, nanos))
}

fn is_gmt(zone: &str) -> bool {
    zone.eq_ignore_ascii_case("GMT") || zone.eq_ignore_ascii_case("UTC")
}

/// 1..=12 for an English three-letter month name.
fn month(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let i = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    u32::try_from(i).ok()?.checked_add(1)
}

/// A decimal of `min..=max` ASCII digits.
fn number(s: &str, min: usize, max: usize) -> Option<u32> {
    if s.len() < min || s.len() > max || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Unix seconds of a UTC civil time, after range checks (a leap second 60 is accepted).
fn unix_seconds(year: u32, mon: u32, day: u32, h: u32, mi: u32, sec: u32) -> Option<i64> {
    if !(1..=12).contains(&mon) || day < 1 || day > days_in_month(year, mon) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), i64::from(mon), i64::from(day));
    days.checked_mul(86_400)?
        .checked_add(i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec))
}

fn days_in_month(year: u32, mon: u32) -> u32 {
    match mon {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). The inputs
/// are small (year < 10000), so the arithmetic cannot overflow.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
