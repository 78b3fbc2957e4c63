//! Calendar maths on the proleptic Gregorian calendar in UTC, in one place: days since the
//! epoch to and from a civil date (Howard Hinnant's algorithms), month lengths, a validated
//! civil time as epoch milliseconds, and the calendar months that fixed monthly windows use.

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (`m` 1..=12, `d` 1..=31; not validated).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month 1..=12, day 1..=31)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days in month `m` (1..=12) of year `y`.
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Epoch ms of a UTC civil time, `None` if out of range (years 1970 to 9999, a leap second
/// allowed) or not a real date.
pub fn epoch_ms(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> Option<u64> {
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let secs = days_from_civil(y, i64::from(mo), i64::from(d)) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(s);
    u64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(u64::from(ms))
}

/// Calendar months since January 1970 at `now_ms` (0 in January 1970).
pub fn month_index(now_ms: u64) -> u64 {
    let (y, m, _) = civil_from_days((now_ms / DAY_MS) as i64);
    ((y - 1970) * 12 + (m - 1)).max(0) as u64
}

/// Epoch ms at which calendar month `idx` (see [`month_index`]) starts.
pub fn month_start_ms(idx: u64) -> u64 {
    // Bounded so the calendar arithmetic cannot overflow (a million years).
    let idx = idx.min(12_000_000) as i64;
    let days = days_from_civil(1970 + idx / 12, idx % 12 + 1, 1);
    (days.max(0) as u64).saturating_mul(DAY_MS)
}

#[cfg(test)]
mod tests;
