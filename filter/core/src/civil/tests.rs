#![cfg(test)]
use super::*;

/// (date, days since 1970-01-01), from `date -u -d <date> +%s` / 86400.
const DATES: [((i64, i64, i64), i64); 8] = [
    ((1970, 1, 1), 0),
    ((1969, 12, 31), -1),
    ((1972, 2, 29), 789),
    ((2000, 3, 1), 11_017),
    ((2024, 2, 29), 19_782),
    ((2026, 12, 7), 20_794),
    ((1600, 1, 1), -135_140),
    ((9999, 12, 31), 2_932_896),
];

#[test]
fn known_dates_convert_both_ways() {
    for (date, days) in DATES {
        assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
        assert_eq!(civil_from_days(days), date, "{days}");
    }
}

#[test]
fn every_day_of_four_centuries_round_trips_in_order() {
    let start = days_from_civil(1800, 1, 1);
    let mut prev = civil_from_days(start - 1);
    for days in start..start + 146_097 {
        let date = civil_from_days(days);
        assert_eq!(days_from_civil(date.0, date.1, date.2), days);
        assert!(date > prev, "{date:?} after {prev:?}");
        let len = days_in_month(date.0, u32::try_from(date.1).unwrap_or(0));
        assert!((1..=i64::from(len)).contains(&date.2), "{date:?}");
        prev = date;
    }
}

/// (year, month, days in it): the leap-year rules, every month length, the epoch's month.
const MONTHS: [(i64, i64, u32); 10] = [
    (2024, 2, 29),
    (2023, 2, 28),
    (2000, 2, 29),
    (2100, 2, 28),
    (1900, 2, 28),
    (2023, 12, 31),
    (2024, 4, 30),
    (2024, 9, 30),
    (1970, 1, 31),
    (2026, 12, 31),
];

#[test]
fn month_lengths_know_the_leap_year_rules() {
    for (y, m, len) in MONTHS {
        assert_eq!(days_in_month(y, m as u32), len, "{y}-{m}");
    }
}

#[test]
fn a_civil_time_is_epoch_ms_only_when_it_is_a_real_time() {
    // (y, mo, d, h, mi, s, ms) and the epoch ms, or None.
    for (t, expected) in [
        ((1970, 1, 1, 0, 0, 0, 0), Some(0)),
        ((1994, 11, 6, 8, 49, 37, 0), Some(784_111_777_000)),
        ((2024, 5, 1, 12, 0, 30, 123), Some(1_714_564_830_123)),
        ((2016, 12, 31, 23, 59, 60, 0), Some(1_483_228_800_000)),
        ((2024, 2, 29, 0, 0, 0, 0), Some(1_709_164_800_000)),
        ((2023, 2, 29, 0, 0, 0, 0), None),
        ((2024, 4, 31, 0, 0, 0, 0), None),
        ((2024, 0, 1, 0, 0, 0, 0), None),
        ((2024, 13, 1, 0, 0, 0, 0), None),
        ((2024, 1, 0, 0, 0, 0, 0), None),
        ((2024, 1, 1, 24, 0, 0, 0), None),
        ((2024, 1, 1, 0, 60, 0, 0), None),
        ((2024, 1, 1, 0, 0, 61, 0), None),
        ((1969, 12, 31, 23, 59, 59, 0), None),
        ((10_000, 1, 1, 0, 0, 0, 0), None),
    ] {
        let (y, mo, d, h, mi, s, ms) = t;
        assert_eq!(epoch_ms(y, mo, d, h, mi, s, ms), expected, "{t:?}");
    }
}

#[test]
fn calendar_months_start_on_the_first_and_last_their_length() {
    // Windows are counted from January 1970.
    for (y, m, len) in MONTHS.into_iter().filter(|(y, _, _)| *y >= 1970) {
        let first = days_from_civil(y, m, 1) as u64 * DAY_MS;
        let mid = first + 14 * DAY_MS + 1;
        let idx = month_index(mid);
        assert_eq!(idx, ((y - 1970) * 12 + m - 1) as u64, "{y}-{m}");
        assert_eq!(month_index(first), idx, "{y}-{m} first ms");
        if let Some(before) = first.checked_sub(1) {
            assert_eq!(month_index(before), idx - 1, "{y}-{m} ms before");
        }
        assert_eq!(month_start_ms(idx), first, "{y}-{m}");
        assert_eq!(
            (month_start_ms(idx + 1) - first) / DAY_MS,
            u64::from(len),
            "{y}-{m}"
        );
    }
}

#[test]
fn far_month_indexes_saturate_instead_of_overflowing() {
    assert_eq!(month_start_ms(u64::MAX), month_start_ms(12_000_000));
    assert!(month_start_ms(12_000_000) > month_start_ms(11_999_999));
    assert!(month_index(u64::MAX) > 0);
}
