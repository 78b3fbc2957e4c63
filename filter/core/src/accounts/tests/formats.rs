//! Tests of the header value formats.
#![cfg(test)]

use super::*;

#[test]
fn parses_seconds_with_fractions_rounding_up() {
    assert_eq!(parse_seconds_ms("30"), Some(30_000));
    assert_eq!(parse_seconds_ms(" 1.5 "), Some(1_500));
    assert_eq!(parse_seconds_ms("0.0001"), Some(1));
    assert_eq!(parse_seconds_ms(".25"), Some(250));
    for bad in ["", ".", "-1", "1e3", "abc", "1 2"] {
        assert_eq!(parse_seconds_ms(bad), None, "{bad}");
    }
}

#[test]
fn parses_openai_go_durations() {
    for (text, ms) in [
        ("1s", 1_000),
        ("6m0s", 360_000),
        ("20ms", 20),
        ("1h2m3.5s", 3_723_500),
        ("0.5s", 500),
        ("7.66s", 7_660),
        ("100us", 1),
        ("100µs", 1),
        ("1500ns", 1),
        ("2d", 172_800_000),
        ("45", 45_000),
        ("0s", 0),
    ] {
        assert_eq!(parse_duration_ms(text), Some(ms), "{text}");
    }
    for bad in ["", "s", "5x", "1h-2m", "m5", "1.2.3s"] {
        assert_eq!(parse_duration_ms(bad), None, "{bad}");
    }
}

#[test]
fn parses_rfc3339_with_fractions_and_offsets() {
    assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:30Z"), Some(NOW));
    assert_eq!(parse_rfc3339_ms("2024-05-01t12:00:30z"), Some(NOW));
    assert_eq!(parse_rfc3339_ms("2024-05-01 12:00:30"), Some(NOW));
    assert_eq!(
        parse_rfc3339_ms("2024-05-01T12:00:30.123456Z"),
        Some(NOW + 123)
    );
    assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:30.5Z"), Some(NOW + 500));
    assert_eq!(parse_rfc3339_ms("2024-05-01T14:00:30+02:00"), Some(NOW));
    assert_eq!(parse_rfc3339_ms("2024-05-01T10:30:30-01:30"), Some(NOW));
    assert_eq!(
        parse_rfc3339_ms("2000-02-29T23:59:59Z"),
        Some(951_868_799_000)
    );
    for bad in [
        "2024-13-01T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:30.Z",
        "2024-05-01T12:00:30Zjunk",
        "1969-12-31T23:59:59Z",
        "2024-05-01",
        "2024-05-01T12:00:30+2",
    ] {
        assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
    }
}

#[test]
fn parses_all_three_http_date_forms() {
    let t = Some(784_111_777_000);
    assert_eq!(parse_http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"), t);
    assert_eq!(parse_http_date_ms("Sunday, 06-Nov-94 08:49:37 GMT"), t);
    assert_eq!(parse_http_date_ms("Sun Nov  6 08:49:37 1994"), t);
    for bad in [
        "",
        "Sun, 06 Nov 1994",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "06 Nov Nov 1994 08:49:37",
        "x",
    ] {
        assert_eq!(parse_http_date_ms(bad), None, "{bad}");
    }
}

#[test]
fn reads_reset_values_in_every_format() {
    assert_eq!(parse_reset("1714564890", NOW), Some(NOW + 60_000));
    assert_eq!(parse_reset("1714564890000", NOW), Some(NOW + 60_000));
    assert_eq!(parse_reset("30", NOW), Some(NOW + 30_000));
    assert_eq!(parse_reset("6m0s", NOW), Some(NOW + 360_000));
    assert_eq!(parse_reset("2024-05-01T12:01:30Z", NOW), Some(NOW + 60_000));
    assert_eq!(
        parse_retry_after("Wed, 01 May 2024 12:01:30 GMT", NOW),
        Some(NOW + 60_000)
    );
    assert_eq!(parse_retry_after("soon", NOW), None);
}
