//! Tests of observations and of the health they lead to (transitions, encoding).
#![cfg(test)]

use super::*;

#[test]
fn rate_limit_cools_until_retry_after_in_seconds_or_date() {
    assert_eq!(cooled(429, &[("retry-after", "30")]), cooling(30_000));
    assert_eq!(
        cooled(429, &[("Retry-After", "Wed, 01 May 2024 12:01:00 GMT")]),
        cooling(30_000)
    );
    // retry-after wins over the reset headers.
    assert_eq!(
        cooled(
            429,
            &[
                ("retry-after", "5"),
                ("anthropic-ratelimit-tokens-remaining", "0"),
                ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:01:30Z"),
            ]
        ),
        cooling(5_000)
    );
}

#[test]
fn rate_limit_without_retry_after_cools_until_the_exhausted_reset() {
    let anthropic = [
        ("anthropic-ratelimit-requests-remaining", "10"),
        ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:31Z"),
        ("anthropic-ratelimit-tokens-remaining", "0"),
        ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:50Z"),
    ];
    assert_eq!(cooled(429, &anthropic), cooling(20_000));
    let openai = [
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "6m0s"),
        ("x-ratelimit-remaining-tokens", "1000"),
        ("x-ratelimit-reset-tokens", "20ms"),
    ];
    assert_eq!(cooled(429, &openai), cooling(360_000));
    // Nothing used up: the latest reset reported.
    let none_zero = [
        ("x-ratelimit-remaining-tokens", "10"),
        ("x-ratelimit-reset-tokens", "12s"),
    ];
    assert_eq!(cooled(429, &none_zero), cooling(12_000));
    assert_eq!(cooled(429, &[]), cooling(60_000));
    assert_eq!(cooled(429, &[("retry-after", "garbage")]), cooling(60_000));
}

#[test]
fn cooling_is_clamped_between_one_second_and_eight_days() {
    assert_eq!(cooled(429, &[("retry-after", "0")]), cooling(1_000));
    assert_eq!(
        cooled(429, &[("retry-after", "99999999999999")]),
        cooling(MAX_COOLING_MS)
    );
    assert_eq!(
        cooled(429, &[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")]),
        cooling(1_000)
    );
}

#[test]
fn overload_cools_ten_seconds_and_a_bare_401_or_403_changes_nothing() {
    assert_eq!(cooled(529, &[]), cooling(10_000));
    assert_eq!(cooled(503, &[]), cooling(10_000));
    assert_eq!(cooled(503, &[("retry-after", "3")]), cooling(3_000));
    for ok in [200, 400, 401, 403, 404, 500, 502] {
        assert_eq!(cooled(ok, &[]), AccountState::Ok, "{ok}");
    }
}

#[test]
fn unified_rejection_cools_until_its_epoch_reset_whatever_the_status() {
    let hdrs = [
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", "1714568430"),
    ];
    assert_eq!(cooled(429, &hdrs), cooling(3_600_000));
    assert_eq!(cooled(200, &hdrs), cooling(3_600_000));
    let window = [
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-7d-status", "rejected"),
        ("anthropic-ratelimit-unified-7d-reset", "1714651230"),
        ("anthropic-ratelimit-unified-reset", "1714568430"),
    ];
    assert_eq!(cooled(200, &window), cooling(86_400_000));
    let allowed = [
        ("anthropic-ratelimit-unified-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-reset", "1714568430"),
    ];
    assert_eq!(cooled(200, &allowed), AccountState::Ok);
}

#[test]
fn a_429_with_only_the_unified_reset_cools_until_it_unless_the_status_says_allowed() {
    // SPEC "Accounts": a 429 cools until the `anthropic-ratelimit-*-reset` time, the unified
    // one included, as epoch seconds or RFC 3339.
    const RESET: (&str, &str) = ("anthropic-ratelimit-unified-reset", "1714568430");
    const RFC3339: (&str, &str) = ("anthropic-ratelimit-unified-reset", "2024-05-01T13:00:30Z");
    type Case<'a> = (u32, &'a [(&'a str, &'a str)], AccountState);
    let cases: [Case; 5] = [
        (429, &[RESET], cooling(3_600_000)),
        (429, &[RFC3339], cooling(3_600_000)),
        // The unified limit still allows: this 429 is about something else.
        (
            429,
            &[("anthropic-ratelimit-unified-status", "allowed"), RESET],
            cooling(60_000),
        ),
        // `retry-after` still wins.
        (429, &[("retry-after", "5"), RESET], cooling(5_000)),
        // Without a 429 a bare reset is only a report.
        (200, &[RESET], AccountState::Ok),
    ];
    for (status, headers, want) in cases {
        assert_eq!(cooled(status, headers), want, "{status} {headers:?}");
    }
}

#[test]
fn learns_headroom_from_both_header_families() {
    let obs = observe_response(
        200,
        &h(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:31Z"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-reset-tokens", "6ms"),
        ]),
        NOW,
    );
    let mut health = Health::default();
    assert!(!health.apply(&obs, DISABLE_FOR, NOW).changed());
    let r = health.dim(Dimension::Requests, NOW).unwrap();
    assert_eq!(
        (r.remaining, r.limit, r.reset_ms),
        (49, Some(50), Some(NOW + 1_000))
    );
    let t = health.dim(Dimension::Tokens, NOW).unwrap();
    assert_eq!(
        (t.remaining, t.limit, t.reset_ms),
        (149_984, Some(150_000), Some(NOW + 6))
    );
    assert_eq!(
        health.dim(Dimension::InputTokens, NOW).unwrap().remaining,
        39_000
    );
    assert_eq!(
        health.dim(Dimension::OutputTokens, NOW).unwrap().remaining,
        7_000
    );
    // After its reset a dimension is forgotten; without a reset it lasts 60 s.
    assert!(health.dim(Dimension::Tokens, NOW + 6).is_none());
    assert!(health.dim(Dimension::InputTokens, NOW + 59_999).is_some());
    assert!(health.dim(Dimension::InputTokens, NOW + 60_000).is_none());
}

#[test]
fn stream_errors_cool_like_their_statuses() {
    let mut health = Health::default();
    let t = health.apply(
        &observe_stream_error(StreamError::Overloaded),
        DISABLE_FOR,
        NOW,
    );
    assert_eq!((t.before, t.after), (StateKind::Ok, StateKind::Cooling));
    assert_eq!(health.state, cooling(10_000));
    let mut health = Health::default();
    health.apply(
        &observe_stream_error(StreamError::RateLimited),
        DISABLE_FOR,
        NOW,
    );
    assert_eq!(health.state, cooling(60_000));
    // A known used-up dimension's reset wins over the 60 s default.
    let mut health = Health::default();
    health.apply(
        &observe_response(
            200,
            &h(&[
                ("anthropic-ratelimit-output-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2024-05-01T12:00:45Z",
                ),
            ]),
            NOW,
        ),
        DISABLE_FOR,
        NOW,
    );
    health.apply(
        &observe_stream_error(StreamError::RateLimited),
        DISABLE_FOR,
        NOW + 1_000,
    );
    assert_eq!(health.state, cooling(15_000));
    // Which names make which class: `provider::tests`.
    for (class, cools) in [
        (StreamError::RateLimited, true),
        (StreamError::Overloaded, true),
        (StreamError::Other, false),
    ] {
        assert_eq!(
            observe_stream_error(class).cool.is_some(),
            cools,
            "{class:?}"
        );
    }
}

#[test]
fn cooling_extends_never_shortens_and_disabled_stays() {
    let mut health = Health::default();
    health.apply(
        &observe_response(429, &h(&[("retry-after", "30")]), NOW),
        DISABLE_FOR,
        NOW,
    );
    health.apply(&observe_response(529, &h(&[]), NOW), DISABLE_FOR, NOW);
    assert_eq!(health.state, cooling(30_000));
    assert_eq!(health.kind_at(NOW + 29_999), StateKind::Cooling);
    assert_eq!(health.kind_at(NOW + 30_000), StateKind::Ok);
    let t = health.apply(&invalid_key(Api::Anthropic), DISABLE_FOR, NOW);
    assert_eq!(
        (t.before, t.after),
        (StateKind::Cooling, StateKind::Disabled)
    );
    let t = health.apply(&observe_response(429, &h(&[]), NOW), DISABLE_FOR, NOW);
    assert!(!t.changed());
    assert_eq!(health.state, disabled(401));
    assert_eq!(health.last_status, 429);
}

/// The stored byte format, pinned: a value written by an older VM must decode the same.
#[test]
fn health_encoding_matches_hand_computed_bytes() {
    let mut cooling_health = Health {
        state: AccountState::Cooling { until_ms: 1000 },
        key_tag: 0xdead_beef,
        requests: 1,
        tokens: 200,
        load_milli: 0,
        load_ms: 5,
        last_status: 429,
        ..Health::default()
    };
    cooling_health.dims[1] = Some(Dim {
        remaining: 3,
        limit: None,
        reset_ms: Some(u64::MAX),
        seen_ms: 7,
    });
    let disabled_health = Health {
        state: AccountState::Disabled {
            reason: DisableReason::InvalidKey,
            status: 401,
            since_ms: 2,
            probe_after_ms: 130,
        },
        ..Health::default()
    };
    #[rustfmt::skip]
    let cases: [(&Health, Vec<u8>); 2] = [
        (&cooling_health, [
            &[HEALTH_VERSION, 0b1001][..], // cooling, dimension 1 present
            &[0xef, 0xfd, 0xb6, 0xf5, 0x0d], // key tag 0xdeadbeef
            &[0xe8, 0x07], // until 1000
            &[0x01, 0xc8, 0x01, 0x00, 0x05], // requests, tokens 200, load_milli, load_ms
            &[0xad, 0x03], // last status 429
            &[0x03, 0x00], // remaining 3, no limit
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // reset: u64::MAX saturates
            &[0x07], // seen
        ].concat()),
        (&disabled_health, [
            &[HEALTH_VERSION, 0b10, 0x00][..], // disabled, no dimension, key tag 0
            &[DisableReason::InvalidKey.code(), 0x91, 0x03, 0x02, 0x82, 0x01], // reason, 401, since, probe 130
            &[0, 0, 0, 0, 0], // requests, tokens, load_milli, load_ms, last status
        ].concat()),
    ];
    let mut cooling_read = cooling_health;
    if let Some(d) = cooling_read.dims[1].as_mut() {
        d.reset_ms = Some(u64::MAX - 1);
    }
    for ((health, golden), read) in cases.iter().zip([cooling_read, disabled_health]) {
        let mut bytes = Vec::new();
        health.encode(&mut bytes);
        assert_eq!(&bytes, golden, "{health:?}");
        assert_eq!(Health::decode(golden), read);
    }
}

#[test]
fn health_round_trips_and_garbage_reads_fresh() {
    let mut health = Health {
        state: cooling(5),
        requests: 7,
        tokens: u64::MAX,
        load_milli: 1_500,
        load_ms: NOW,
        key_tag: u32::MAX,
        last_status: 529,
        ..Health::default()
    };
    health.dims[1] = Some(Dim {
        remaining: 3,
        limit: None,
        reset_ms: Some(u64::MAX - 1),
        seen_ms: NOW,
    });
    let mut buf = Vec::new();
    health.encode(&mut buf);
    assert!(buf.len() <= 64, "{} bytes", buf.len());
    assert_eq!(Health::decode(&buf), health);
    for garbage in [
        &b""[..],
        b"\x02",
        b"\x02\x03\x00",
        &[
            2, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
        // Version 1 (a disabled state without reason or times).
        &[1, 2, 0, 0x91, 0x03, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(Health::decode(garbage), Health::default());
    }
    buf.push(0);
    assert_eq!(Health::decode(&buf), Health::default());
}

#[test]
fn disabled_health_round_trips_even_at_its_largest_and_an_unknown_reason_reads_fresh() {
    let mut health = Health {
        state: AccountState::Disabled {
            reason: DisableReason::InvalidKey,
            status: u16::MAX,
            since_ms: u64::MAX,
            probe_after_ms: u64::MAX,
        },
        requests: u64::MAX,
        tokens: u64::MAX,
        load_milli: u64::MAX,
        load_ms: u64::MAX,
        key_tag: u32::MAX,
        last_status: u16::MAX,
        ..Health::default()
    };
    health.dims = [Some(Dim {
        remaining: u64::MAX,
        limit: Some(u64::MAX - 1),
        reset_ms: Some(u64::MAX - 1),
        seen_ms: u64::MAX,
    }); 4];
    let mut buf = Vec::new();
    health.encode(&mut buf);
    assert!(buf.len() <= MAX_HEALTH_BYTES, "{} bytes", buf.len());
    assert_eq!(Health::decode(&buf), health);
    // The reason code follows version, flags and the 5-byte key tag.
    assert_eq!(buf[7], DisableReason::InvalidKey.code());
    buf[7] = 9;
    assert_eq!(Health::decode(&buf), Health::default());
}
