//! Header value formats of the providers' rate-limit headers (counts, seconds, Go durations,
//! RFC 3339 and HTTP dates): total functions, bounded work, no panics.

use crate::civil::epoch_ms;

/// A count such as `"4000"` (a fraction, `"4000.0"`, is truncated).
pub fn parse_count(v: &str) -> Option<u64> {
    let v = v.trim();
    let int = v.split_once('.').map_or(v, |(a, _)| a);
    if int.is_empty() || int.len() > 20 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(int.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// `<digits>[.<digits>]` seconds as milliseconds, rounded up.
pub fn parse_seconds_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut ms = int
        .bytes()
        .fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
        .saturating_mul(1000);
    let mut scale = 100;
    for (i, b) in frac.bytes().enumerate() {
        let d = u64::from(b - b'0');
        if i < 3 {
            ms = ms.saturating_add(d * scale);
            scale /= 10;
        } else if d != 0 {
            ms = ms.saturating_add(1);
            break;
        }
    }
    Some(ms)
}

/// A Go-style duration as OpenAI sends it (`1s`, `6m0s`, `20ms`, `1h2m3.5s`, `0.5s`), in
/// milliseconds rounded up. Units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, `d`. A bare number is
/// seconds.
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    if let Some(ms) = parse_seconds_ms(v) {
        return Some(ms);
    }
    let mut rest = v;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        // The number in milliseconds-of-seconds precision is enough: scale its
        // `parse_seconds_ms` reading (1/1000 units) by the unit.
        let thousandths = u128::from(parse_seconds_ms(num)?);
        total_ns = total_ns.saturating_add(thousandths.saturating_mul(unit_ns) / 1000);
        rest = after;
    }
    Some(u64::try_from(total_ns.div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(n)?)?;
    if !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0')))
}

/// RFC 3339 (`2024-05-01T12:00:30Z`, `…30.123+02:00`, `t`/space separator, no zone = UTC)
/// as epoch ms.
pub fn parse_rfc3339_ms(v: &str) -> Option<u64> {
    let b = v.trim().as_bytes();
    if b.len() < 19 || b.len() > 40 {
        return None;
    }
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let y = i64::from(digits(b, 0, 4)?);
    let (mo, d) = (digits(b, 5, 2)?, digits(b, 8, 2)?);
    let (h, mi, s) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    let mut at = 19;
    let mut ms = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                ms = ms * 10 + u32::from(b.get(at).copied().unwrap_or(b'0') - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    let offset_s: i64 = match b.get(at) {
        None => 0,
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) => {
            let oh = i64::from(digits(b, at + 1, 2)?);
            let om = match (b.get(at + 3), b.len() - at) {
                (Some(b':'), 6) => i64::from(digits(b, at + 4, 2)?),
                (_, 5) => i64::from(digits(b, at + 3, 2)?),
                (_, 3) => 0,
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *c == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let local = epoch_ms(y, mo, d, h, mi, s, ms)?;
    let off_ms = offset_s.unsigned_abs() * 1000;
    if offset_s >= 0 {
        local.checked_sub(off_ms)
    } else {
        local.checked_add(off_ms)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month_of(tok: &str) -> Option<u32> {
    if tok.len() < 3 || tok.len() > 9 {
        return None;
    }
    let t = tok.to_ascii_lowercase();
    let full = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    (0u32..12)
        .find(|&i| {
            let i = i as usize;
            MONTHS.get(i).is_some_and(|m| *m == t) || full.get(i).is_some_and(|m| *m == t)
        })
        .map(|i| i + 1)
}

/// An HTTP date (RFC 9110: IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, obsolete RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`) as epoch ms.
pub fn parse_http_date_ms(v: &str) -> Option<u64> {
    if v.len() > 64 {
        return None;
    }
    let (mut day, mut month, mut year, mut time) = (None, None, None, None);
    for tok in v.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        let b = tok.as_bytes();
        if tok.contains(':') {
            if b.len() != 8 || b.get(2) != Some(&b':') || b.get(5) != Some(&b':') || time.is_some()
            {
                return None;
            }
            time = Some((digits(b, 0, 2)?, digits(b, 3, 2)?, digits(b, 6, 2)?));
        } else if b.iter().all(u8::is_ascii_digit) {
            let n = i64::from(digits(b, 0, b.len().min(4))?);
            match (day, year, b.len()) {
                (None, _, 1 | 2) => day = Some(u32::try_from(n).ok()?),
                (Some(_), None, 4) => year = Some(n),
                // RFC 9110: a two-digit year more than 50 years ahead is in the past.
                (Some(_), None, 2) => year = Some(if n < 70 { 2000 + n } else { 1900 + n }),
                _ => return None,
            }
        } else if b.iter().all(u8::is_ascii_alphabetic) {
            if let Some(m) = month_of(tok) {
                if month.replace(m).is_some() {
                    return None;
                }
            }
            // Weekday names and `GMT` carry nothing.
        } else {
            return None;
        }
    }
    let (h, mi, s) = time?;
    epoch_ms(year?, month?, day?, h, mi, s, 0)
}

/// `retry-after`: seconds (fractions tolerated) or an HTTP date, as an absolute epoch ms.
pub fn parse_retry_after(v: &str, now_ms: u64) -> Option<u64> {
    match parse_seconds_ms(v) {
        Some(ms) => Some(now_ms.saturating_add(ms)),
        None => parse_http_date_ms(v),
    }
}

/// Any reset header as an absolute epoch ms: RFC 3339 (`anthropic-ratelimit-*-reset`), a
/// duration (`x-ratelimit-reset-*`: `6m0s`), an HTTP date, or a bare number, read as epoch
/// ms above 10^12, epoch seconds above 10^9 (`anthropic-ratelimit-unified-reset`), else
/// seconds from now.
pub fn parse_reset(v: &str, now_ms: u64) -> Option<u64> {
    let v = v.trim();
    if let Some(ms) = parse_seconds_ms(v) {
        return Some(if ms > 1_000_000_000_000_000 {
            ms / 1000
        } else if ms > 1_000_000_000_000 {
            ms
        } else {
            now_ms.saturating_add(ms)
        });
    }
    parse_rfc3339_ms(v)
        .or_else(|| parse_duration_ms(v).map(|d| now_ms.saturating_add(d)))
        .or_else(|| parse_http_date_ms(v))
}
