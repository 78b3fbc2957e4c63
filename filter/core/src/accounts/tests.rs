use super::*;
use crate::config::{Duration, Selection};
use crate::key_evidence::samples;
use crate::limits::{Limit, LimitKind, Per, WindowKind};
use crate::store::MemStore;
use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

const NOW: u64 = 1_714_564_830_000; // 2024-05-01T12:00:30Z

fn acct(name: &str, provider: Api, weight: u32) -> Account {
    Account {
        name: name.into(),
        provider,
        key: crate::config::Secret::new(format!("sk-{name}")),
        headers: Vec::new(),
        route: None,
        weight,
        limits: Vec::new(),
        disable_for: crate::config::Duration::from_millis(crate::config::DEFAULT_DISABLE_FOR_MS),
    }
}

fn cfg(accounts: Vec<Account>, strategy: Strategy, affinity: Option<Affinity>) -> Config {
    Config {
        accounts,
        selection: Selection { strategy, affinity },
        ..Config::default()
    }
}

fn aff(max_sessions: u32, ttl_ms: u64) -> Affinity {
    Affinity {
        header: Some("x-session-id".into()),
        conversation: true,
        ttl: Duration::from_millis(ttl_ms),
        max_sessions,
    }
}

fn need(tokens: u64) -> Amounts {
    Amounts {
        tokens,
        input_tokens: tokens,
        output_tokens: 0,
        requests: 1,
        cost_micros: 0,
    }
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn cooled(status: u32, headers: &[(&str, &str)]) -> AccountState {
    let mut health = Health::default();
    health.apply(
        &observe_response(status, &h(headers), NOW),
        DISABLE_FOR,
        NOW,
    );
    health.state
}

fn cooling(ms: u64) -> AccountState {
    AccountState::Cooling { until_ms: NOW + ms }
}

/// `accounts[].disable_for` by default, as `record` passes it to `apply`.
const DISABLE_FOR: u64 = crate::config::DEFAULT_DISABLE_FOR_MS;

/// Disabled at `NOW` for an invalid key, its probe not due for the default 10 minutes.
fn disabled(status: u16) -> AccountState {
    AccountState::Disabled {
        reason: DisableReason::InvalidKey,
        status,
        since_ms: NOW,
        probe_after_ms: NOW + DISABLE_FOR,
    }
}

/// The provider's invalid-key answer to an account of `api`.
fn invalid_key(api: Api) -> Observation {
    let (status, body) = samples::invalid_key(api);
    let obs = observe_error_body(api, status, body.as_bytes());
    assert_eq!(obs.disable, Some(DisableReason::InvalidKey), "{api:?}");
    obs
}

// ---- parsers ----

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

// ---- observations ----

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

// ---- pick ----

fn pool() -> Vec<Account> {
    vec![
        acct("a1", Api::Anthropic, 1),
        acct("o1", Api::OpenAi, 1),
        acct("a2", Api::Anthropic, 1),
        acct("a3", Api::Anthropic, 1),
    ]
}

fn pick_with(states: &[Health], strategy: Strategy, counter: u64, exclude: &[usize]) -> Choice {
    pick(
        &pool(),
        Api::Anthropic,
        &need(100),
        strategy,
        states,
        counter,
        exclude,
        NOW,
    )
}

#[test]
fn priority_takes_the_first_healthy_account_of_the_api() {
    let mut states = vec![Health::default(); 4];
    assert_eq!(
        pick_with(&states, Strategy::Priority, 0, &[]),
        Choice::Pick { account: 0 }
    );
    states[0].state = cooling(5_000);
    assert_eq!(
        pick_with(&states, Strategy::Priority, 0, &[]),
        Choice::Pick { account: 2 }
    );
    assert_eq!(
        pick(
            &pool(),
            Api::OpenAi,
            &need(1),
            Strategy::Priority,
            &states,
            0,
            &[],
            NOW
        ),
        Choice::Pick { account: 1 }
    );
    assert_eq!(
        pick(
            &pool(),
            Api::Gemini,
            &need(1),
            Strategy::Priority,
            &states,
            0,
            &[],
            NOW
        ),
        Choice::NoAccount
    );
}

#[test]
fn all_cooling_reports_the_earliest_recovery_in_whole_seconds() {
    let mut states = vec![Health::default(); 4];
    states[0].state = cooling(30_000);
    states[2].state = cooling(2_001);
    states[3].state = disabled(401);
    for s in [
        Strategy::Priority,
        Strategy::RoundRobin,
        Strategy::LeastLoaded,
    ] {
        assert_eq!(
            pick_with(&states, s, 0, &[]),
            Choice::AllCooling { retry_after_s: 3 }
        );
    }
    states[2].state = cooling(1);
    assert_eq!(
        pick_with(&states, Strategy::Priority, 0, &[]),
        Choice::AllCooling { retry_after_s: 1 }
    );
    states[0].state = disabled(401);
    states[2].state = disabled(400);
    assert_eq!(
        pick_with(&states, Strategy::Priority, 0, &[]),
        Choice::NoAccount
    );
    // The OpenAI account is healthy but serves another API.
    assert_eq!(states[1].state, AccountState::Ok);
}

#[test]
fn round_robin_rotates_by_weight_and_skips_unavailable_turns() {
    let accounts = vec![
        acct("a", Api::Anthropic, 2),
        acct("o", Api::OpenAi, 5),
        acct("b", Api::Anthropic, 1),
    ];
    let mut states = vec![Health::default(); 3];
    let seq: Vec<usize> = (0..6)
        .map(|c| {
            match pick(
                &accounts,
                Api::Anthropic,
                &need(1),
                Strategy::RoundRobin,
                &states,
                c,
                &[],
                NOW,
            ) {
                Choice::Pick { account } => account,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(seq, [0, 0, 2, 0, 0, 2]);
    states[0].state = cooling(1_000);
    for c in 0..3 {
        assert_eq!(
            pick(
                &accounts,
                Api::Anthropic,
                &need(1),
                Strategy::RoundRobin,
                &states,
                c,
                &[],
                NOW
            ),
            Choice::Pick { account: 2 }
        );
    }
}

#[test]
fn least_loaded_spreads_by_weight_when_no_headroom_is_known() {
    let accounts = vec![acct("a", Api::Anthropic, 1), acct("b", Api::Anthropic, 3)];
    let mut states = vec![Health::default(); 2];
    let mut counts = [0u32; 2];
    for k in 0..400u64 {
        let now = NOW + k * 10;
        let Choice::Pick { account } = pick(
            &accounts,
            Api::Anthropic,
            &need(10),
            Strategy::LeastLoaded,
            &states,
            0,
            &[],
            now,
        ) else {
            panic!()
        };
        counts[account] += 1;
        states[account].charge(&need(10), now);
    }
    assert!((90..=110).contains(&counts[0]), "{counts:?}");
    assert_eq!(counts[0] + counts[1], 400);
}

#[test]
fn least_loaded_prefers_the_most_headroom_relative_to_weight() {
    let learned = |remaining: u64, limit: u64| {
        let mut s = Health::default();
        s.dims[Dimension::Tokens.index()] = Some(Dim {
            remaining,
            limit: Some(limit),
            reset_ms: Some(NOW + 60_000),
            seen_ms: NOW,
        });
        s
    };
    let mut states = vec![
        learned(10_000, 100_000),
        Health::default(),
        learned(90_000, 100_000),
        learned(50_000, 100_000),
    ];
    assert_eq!(
        pick_with(&states, Strategy::LeastLoaded, 0, &[]),
        Choice::Pick { account: 2 }
    );
    let mut accounts = pool();
    accounts[3].weight = 2; // 2 × 0.5 beats 1 × 0.9
    assert_eq!(
        pick(
            &accounts,
            Api::Anthropic,
            &need(100),
            Strategy::LeastLoaded,
            &states,
            0,
            &[],
            NOW
        ),
        Choice::Pick { account: 3 }
    );
    // Unknown headroom counts as full.
    states[2] = Health::default();
    states[3] = Health::default();
    states[0] = learned(99_000, 100_000);
    assert_eq!(
        pick_with(&states, Strategy::LeastLoaded, 0, &[]),
        Choice::Pick { account: 2 }
    );
}

#[test]
fn accounts_lacking_headroom_come_after_healthy_ones_soonest_ready_first() {
    let lacking = |reset: u64| {
        let mut s = Health::default();
        s.dims[Dimension::Requests.index()] = Some(Dim {
            remaining: 0,
            limit: Some(50),
            reset_ms: Some(NOW + reset),
            seen_ms: NOW,
        });
        s
    };
    let mut states = vec![
        lacking(5_000),
        Health::default(),
        Health::default(),
        lacking(2_000),
    ];
    for s in [
        Strategy::Priority,
        Strategy::RoundRobin,
        Strategy::LeastLoaded,
    ] {
        assert_eq!(
            pick_with(&states, s, 0, &[]),
            Choice::Pick { account: 2 },
            "{s:?}"
        );
    }
    states[2].state = cooling(1_000);
    assert_eq!(
        pick_with(&states, Strategy::Priority, 0, &[]),
        Choice::Pick { account: 3 }
    );
    // A token estimate above the learned remaining also lacks room.
    let mut s = Health::default();
    s.dims[Dimension::Tokens.index()] = Some(Dim {
        remaining: 99,
        limit: None,
        reset_ms: None,
        seen_ms: NOW,
    });
    assert_eq!(s.headroom(&need(100), NOW), None);
    assert!(s.headroom(&need(99), NOW).is_some());
}

#[test]
fn excluded_accounts_are_reused_only_as_a_last_resort() {
    let mut states = vec![Health::default(); 4];
    assert_eq!(
        pick_with(&states, Strategy::Priority, 0, &[0]),
        Choice::Pick { account: 2 }
    );
    assert_eq!(
        pick_with(&states, Strategy::LeastLoaded, 0, &[0, 2]),
        Choice::Pick { account: 3 }
    );
    states[3].state = cooling(9_000);
    assert_eq!(
        pick_with(&states, Strategy::RoundRobin, 0, &[0, 2]),
        Choice::Pick { account: 0 }
    );
}

// ---- store ----

fn names_of(store: &MemStore, c: &Config, n: usize, session: Option<&str>) -> Vec<String> {
    (0..n)
        .map(|k| {
            let out = select(
                store,
                c,
                &Attempt {
                    api: Api::Anthropic,
                    need: &need(10),
                    session,
                    exclude: &[],
                    now_ms: NOW + k as u64,
                },
            );
            match out {
                Outcome::Picked(p) => c.accounts[p.account].name.clone(),
                other => format!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn prepare_creates_every_key_once_and_resets_a_changed_key() {
    let store = MemStore::new();
    let mut c = cfg(pool(), Strategy::RoundRobin, Some(aff(16, 60_000)));
    // 4 health keys, 2 round-robin counters, 16 session slots, the roster.
    assert_eq!(prepare(&store, &c), Ok(23));
    assert_eq!(store.len(), 23);
    assert_eq!(prepare(&store, &c), Ok(0));
    record(&store, &c.accounts[0], &invalid_key(Api::Anthropic), NOW).unwrap();
    assert_eq!(prepare(&store, &c), Ok(0));
    assert_eq!(
        read_health(&store, &c.accounts[0]).unwrap().kind_at(NOW),
        StateKind::Disabled
    );
    c.accounts[0].key = crate::config::Secret::new("sk-new");
    assert_eq!(prepare(&store, &c), Ok(1));
    assert_eq!(
        read_health(&store, &c.accounts[0]).unwrap().kind_at(NOW),
        StateKind::Ok
    );
    assert_eq!(store.len(), 23);
    // Garbage in a health key reads as fresh.
    store.set(&health_key("a2"), b"\xff\xfe", 0).unwrap();
    assert_eq!(
        read_health(&store, &c.accounts[2]).unwrap(),
        Health::default()
    );
    assert_eq!(prepare(&store, &c), Ok(1));
}

#[test]
fn a_stage_without_the_account_records_a_stream_error_by_name_on_an_existing_key_only() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::Priority, None);
    prepare(&store, &c).unwrap();
    let keys = store.len();
    // The downstream stage of a failover setup knows the account only by name.
    let t = record_named(
        &store,
        "a1",
        &observe_stream_error(StreamError::Overloaded),
        NOW,
    );
    let t = t.unwrap().unwrap();
    assert_eq!((t.before, t.after), (StateKind::Ok, StateKind::Cooling));
    assert_eq!(
        read_health(&store, &c.accounts[0])
            .unwrap()
            .cooling_until(NOW),
        Some(NOW + OVERLOADED_COOLING_MS)
    );
    let limited = observe_stream_error(StreamError::RateLimited);
    let t = record_named(&store, "a2", &limited, NOW).unwrap().unwrap();
    assert_eq!(t.state, cooling(RATE_LIMIT_COOLING_MS));
    // A name no stage configured creates no key; an observation that would disable (it
    // needs the account's `disable_for`) is left to the stage that lists the account.
    assert_eq!(record_named(&store, "nobody", &limited, NOW), Ok(None));
    let invalid = invalid_key(Api::Anthropic);
    assert_eq!(record_named(&store, "a3", &invalid, NOW), Ok(None));
    assert_eq!(store.len(), keys);
    assert_eq!(read_health_named(&store, "a3").kind_at(NOW), StateKind::Ok);
}

#[test]
fn the_roster_lets_an_instance_without_accounts_show_and_reset_them_by_name() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::Priority, None);
    // The downstream stage of a failover setup lists no accounts: it publishes nothing.
    let bare = cfg(Vec::new(), Strategy::Priority, None);
    assert_eq!(prepare(&store, &bare), Ok(0));
    assert_eq!(read_roster(&store), Vec::new());
    prepare(&store, &c).unwrap();
    let roster = read_roster(&store);
    let names: Vec<(&str, Api)> = roster
        .iter()
        .map(|l| (l.name.as_str(), l.provider))
        .collect();
    assert_eq!(
        names,
        [
            ("a1", Api::Anthropic),
            ("o1", Api::OpenAi),
            ("a2", Api::Anthropic),
            ("a3", Api::Anthropic)
        ]
    );
    // Published once: loading the same configuration again writes nothing.
    assert_eq!(publish_roster(&store, &c.accounts), Ok(false));
    assert_eq!(prepare(&store, &bare), Ok(0));
    assert_eq!(read_roster(&store).len(), 4);
    // Health by name, and the admin reset by name.
    let limited = observe_stream_error(StreamError::RateLimited);
    record(&store, &c.accounts[0], &limited, NOW).unwrap();
    assert_eq!(
        read_health_named(&store, "a1").kind_at(NOW),
        StateKind::Cooling
    );
    assert_eq!(read_health_named(&store, "nobody"), Health::default());
    let t = reset_named(&store, "a1", NOW).unwrap().unwrap();
    assert_eq!((t.before, t.after), (StateKind::Cooling, StateKind::Ok));
    assert_eq!(read_health_named(&store, "a1").kind_at(NOW), StateKind::Ok);
    assert_eq!(reset_named(&store, "nobody", NOW), Ok(None));
    // Garbage lines are skipped, never trusted as names.
    store
        .set(
            ROSTER_KEY,
            b"ok gemini\nbad/name openai\nx mystery\n\xff\xfe\n",
            0,
        )
        .unwrap();
    let kept: Vec<String> = read_roster(&store).into_iter().map(|l| l.name).collect();
    assert_eq!(kept, ["ok"]);
}

#[test]
fn select_round_robin_shares_one_counter_between_workers() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::RoundRobin, None);
    prepare(&store, &c).unwrap();
    assert_eq!(
        names_of(&store, &c, 6, None),
        ["a1", "a2", "a3", "a1", "a2", "a3"]
    );
}

#[test]
fn the_only_account_of_an_api_is_counted_later_unless_its_headroom_is_known() {
    let store = MemStore::new();
    // One Anthropic account (the OpenAI one serves another API).
    let c = cfg(
        vec![acct("a1", Api::Anthropic, 1), acct("o1", Api::OpenAi, 1)],
        Strategy::LeastLoaded,
        None,
    );
    prepare(&store, &c).unwrap();
    let n = need(10);
    let attempt = |now_ms| Attempt {
        api: Api::Anthropic,
        need: &n,
        session: None,
        exclude: &[],
        now_ms,
    };
    let before = store.round_trips();
    let Outcome::Picked(p) = select(&store, &c, &attempt(NOW)) else {
        panic!("an account is picked");
    };
    let after = store.round_trips();
    assert_eq!((p.account, p.counted), (0, false));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "one read, no write"
    );
    record_totals(&store, &c.accounts[0], 1, 40).unwrap();
    let health = read_health(&store, &c.accounts[0]).unwrap();
    assert_eq!((health.requests, health.tokens), (1, 40));
    // Once the provider reported headroom, every pick is charged at once.
    let obs = observe_response(
        200,
        &h(&[("anthropic-ratelimit-tokens-remaining", "1000")]),
        NOW,
    );
    record(&store, &c.accounts[0], &obs, NOW).unwrap();
    let Outcome::Picked(p) = select(&store, &c, &attempt(NOW + 1)) else {
        panic!("an account is picked");
    };
    assert!(p.counted);
    let health = read_health(&store, &c.accounts[0]).unwrap();
    assert_eq!(health.requests, 2);
    assert_eq!(
        health.dim(Dimension::Tokens, NOW + 1).map(|d| d.remaining),
        Some(990)
    );
    // An OpenAI pick among one OpenAI account is counted later too.
    let mut openai = attempt(NOW + 2);
    openai.api = Api::OpenAi;
    assert!(matches!(
        select(&store, &c, &openai),
        Outcome::Picked(Picked {
            account: 1,
            counted: false,
            ..
        })
    ));
}

#[test]
fn select_counts_its_round_trips() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::LeastLoaded, Some(aff(64, 3_600_000)));
    prepare(&store, &c).unwrap();
    let before = store.round_trips();
    let out = select(
        &store,
        &c,
        &Attempt {
            api: Api::Anthropic,
            need: &need(10),
            session: Some("s1"),
            exclude: &[],
            now_ms: NOW,
        },
    );
    assert!(matches!(
        out,
        Outcome::Picked(Picked {
            affinity: AffinityUse::Miss,
            ..
        })
    ));
    let after_miss = store.round_trips();
    let miss = (after_miss.0 - before.0, after_miss.1 - before.1);
    // 3 health gets + 1–2 slot gets; 1 health set + 1 pin set.
    assert!(miss.0 <= 5 && miss.1 == 2, "{miss:?}");
    select(
        &store,
        &c,
        &Attempt {
            api: Api::Anthropic,
            need: &need(10),
            session: Some("s1"),
            exclude: &[],
            now_ms: NOW + 1,
        },
    );
    let after_hit = store.round_trips();
    let hit = (after_hit.0 - after_miss.0, after_hit.1 - after_miss.1);
    assert!(hit.0 <= 5 && hit.1 == 1, "{hit:?}");
    let t = record(
        &store,
        &c.accounts[0],
        &observe_response(200, &h(&[]), NOW),
        NOW,
    );
    assert!(t.is_ok());
    let after_record = store.round_trips();
    assert_eq!(
        (after_record.0 - after_hit.0, after_record.1 - after_hit.1),
        (1, 1)
    );
}

#[test]
fn affinity_keeps_a_session_on_one_account_until_it_cools() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::LeastLoaded, Some(aff(64, 3_600_000)));
    prepare(&store, &c).unwrap();
    let sel = |session: &str, now: u64| match select(
        &store,
        &c,
        &Attempt {
            api: Api::Anthropic,
            need: &need(10),
            session: Some(session),
            exclude: &[],
            now_ms: now,
        },
    ) {
        Outcome::Picked(p) => (p.account, p.affinity),
        other => panic!("{other:?}"),
    };
    let (first, how) = sel("conv-1", NOW);
    assert_eq!(how, AffinityUse::Miss);
    for k in 1..10 {
        assert_eq!(sel("conv-1", NOW + k), (first, AffinityUse::Hit));
    }
    // Without a session, least_loaded steers around the busy pinned account.
    let pinned_name = c.accounts[first].name.clone();
    let others = names_of(&store, &c, 4, None);
    assert!(!others.contains(&pinned_name), "{others:?}");
    record(
        &store,
        &c.accounts[first],
        &observe_response(429, &h(&[("retry-after", "20")]), NOW),
        NOW,
    )
    .unwrap();
    let (moved, how) = sel("conv-1", NOW + 20);
    assert_ne!(moved, first);
    assert_eq!(how, AffinityUse::Broken);
    assert_eq!(sel("conv-1", NOW + 30), (moved, AffinityUse::Hit));
    // The pin outlives the cooling: the session stays where it moved.
    assert_eq!(sel("conv-1", NOW + 25_000), (moved, AffinityUse::Hit));
    // After the TTL the session is new again.
    assert_eq!(sel("conv-1", NOW + 30 + 3_600_001).1, AffinityUse::Miss);
}

#[test]
fn affinity_breaks_on_failover_exclusion_and_lacking_headroom() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::Priority, Some(aff(8, 60_000)));
    prepare(&store, &c).unwrap();
    let at = |exclude: &[usize], now| match select(
        &store,
        &c,
        &Attempt {
            api: Api::Anthropic,
            need: &need(500),
            session: Some("s"),
            exclude,
            now_ms: now,
        },
    ) {
        Outcome::Picked(p) => (p.account, p.affinity),
        other => panic!("{other:?}"),
    };
    assert_eq!(at(&[], NOW), (0, AffinityUse::Miss));
    assert_eq!(at(&[0], NOW + 1), (2, AffinityUse::Broken));
    assert_eq!(at(&[], NOW + 2), (2, AffinityUse::Hit));
    record(
        &store,
        &c.accounts[2],
        &observe_response(
            200,
            &h(&[("anthropic-ratelimit-tokens-remaining", "100")]),
            NOW,
        ),
        NOW,
    )
    .unwrap();
    assert_eq!(at(&[], NOW + 3), (0, AffinityUse::Broken));
}

#[test]
fn affinity_table_evicts_the_oldest_session_when_full() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::LeastLoaded, Some(aff(1, 60_000)));
    prepare(&store, &c).unwrap();
    let how = |session: &str, now: u64| match select(
        &store,
        &c,
        &Attempt {
            api: Api::Anthropic,
            need: &need(1),
            session: Some(session),
            exclude: &[],
            now_ms: now,
        },
    ) {
        Outcome::Picked(p) => p.affinity,
        other => panic!("{other:?}"),
    };
    assert_eq!(how("a", NOW), AffinityUse::Miss);
    assert_eq!(how("a", NOW + 1), AffinityUse::Hit);
    assert_eq!(how("b", NOW + 2), AffinityUse::Miss);
    assert_eq!(how("a", NOW + 3), AffinityUse::Miss);
    // 4 health keys, 1 session slot, the roster.
    assert_eq!(store.len(), 4 + 1 + 1);
    // No session: affinity is off.
    let out = select(
        &store,
        &c,
        &Attempt {
            api: Api::Anthropic,
            need: &need(1),
            session: None,
            exclude: &[],
            now_ms: NOW,
        },
    );
    assert!(matches!(
        out,
        Outcome::Picked(Picked {
            affinity: AffinityUse::Off,
            ..
        })
    ));
}

#[test]
fn session_id_prefers_the_header_then_the_fingerprint() {
    let a = aff(8, 1_000);
    let hv = session_id(Some(&a), Some("abc"), Some(7)).unwrap();
    assert!(hv.starts_with('h') && hv.len() == 17);
    assert_eq!(
        session_id(Some(&a), Some(" "), Some(7)).as_deref(),
        Some("c0000000000000007")
    );
    assert_eq!(session_id(None, Some("abc"), Some(7)), None);
    let no_conv = Affinity {
        conversation: false,
        ..a.clone()
    };
    assert_eq!(session_id(Some(&no_conv), None, Some(7)), None);
    let no_header = Affinity { header: None, ..a };
    assert_eq!(session_id(Some(&no_header), Some("abc"), None), None);
}

#[test]
fn account_limits_move_requests_on_and_then_report_when_there_is_room() {
    let store = MemStore::new();
    let mut accounts = vec![acct("a", Api::Anthropic, 1), acct("b", Api::Anthropic, 1)];
    for a in &mut accounts {
        a.limits = vec![Limit::Rate {
            kind: LimitKind::Requests,
            amount: 1,
            per: Per::Minute,
            window: WindowKind::Fixed,
        }];
    }
    let c = cfg(accounts, Strategy::Priority, None);
    prepare(&store, &c).unwrap();
    let go = || {
        select(
            &store,
            &c,
            &Attempt {
                api: Api::Anthropic,
                need: &need(10),
                session: None,
                exclude: &[],
                now_ms: NOW,
            },
        )
    };
    let first = go();
    assert!(
        matches!(
            first,
            Outcome::Picked(Picked {
                account: 0,
                ticket: Some(_),
                ..
            })
        ),
        "{first:?}"
    );
    assert!(matches!(
        go(),
        Outcome::Picked(Picked {
            account: 1,
            ticket: Some(_),
            ..
        })
    ));
    // 12:00:30: the fixed minute window has room again at 12:01:00.
    assert_eq!(go(), Outcome::AllCooling { retry_after_s: 30 });
    // Local refusals are not written as cooling.
    assert_eq!(
        read_health(&store, &c.accounts[0]).unwrap().kind_at(NOW),
        StateKind::Ok
    );
}

#[test]
fn an_accounts_concurrency_lease_lives_the_configured_lease_ttl() {
    let store = MemStore::new();
    let mut a = acct("a", Api::Anthropic, 1);
    a.limits = vec![Limit::Concurrent(1)];
    let c = Config {
        lease_ttl: Duration::from_millis(2_000),
        ..cfg(vec![a], Strategy::Priority, None)
    };
    prepare(&store, &c).unwrap();
    let at = |now_ms| {
        let attempt = Attempt {
            api: Api::Anthropic,
            need: &need(10),
            session: None,
            exclude: &[],
            now_ms,
        };
        matches!(
            select(&store, &c, &attempt),
            Outcome::Picked(Picked {
                ticket: Some(_),
                ..
            })
        )
    };
    // Never released: held until 2 s have passed, then free again.
    assert!(at(NOW));
    assert!(!at(NOW + 1_999));
    assert!(at(NOW + 2_000));
}

#[test]
fn recorded_cooling_steers_selection_and_reports_retry_after() {
    let store = MemStore::new();
    let c = cfg(
        vec![acct("a", Api::Anthropic, 1), acct("b", Api::Anthropic, 1)],
        Strategy::Priority,
        None,
    );
    prepare(&store, &c).unwrap();
    let t = record(
        &store,
        &c.accounts[0],
        &observe_response(429, &h(&[("retry-after", "10")]), NOW),
        NOW,
    )
    .unwrap();
    assert!(t.changed() && t.after == StateKind::Cooling);
    assert_eq!(names_of(&store, &c, 1, None), ["b"]);
    record(
        &store,
        &c.accounts[1],
        &observe_stream_error(StreamError::Overloaded),
        NOW,
    )
    .unwrap();
    assert_eq!(
        names_of(&store, &c, 1, None),
        ["AllCooling { retry_after_s: 10 }"]
    );
    // A 401 or 403 without the invalid-key body disables nothing.
    for (i, status) in [(0, 401), (1, 403)] {
        record(
            &store,
            &c.accounts[i],
            &observe_response(status, &h(&[]), NOW),
            NOW,
        )
        .unwrap();
    }
    assert_eq!(
        names_of(&store, &c, 1, None),
        ["AllCooling { retry_after_s: 10 }"]
    );
    for a in &c.accounts {
        record(&store, a, &invalid_key(Api::Anthropic), NOW).unwrap();
    }
    assert_eq!(names_of(&store, &c, 1, None), ["NoAccount"]);
    record_totals(&store, &c.accounts[0], 0, 1234).unwrap();
    let health = read_health(&store, &c.accounts[0]).unwrap();
    assert_eq!((health.tokens, health.requests), (1234, 0));
    assert_eq!(read_health(&store, &c.accounts[1]).unwrap().requests, 1);
}

// ---- evidence, probes and reset ----

/// One attempt of `api` at `now` through `store`.
fn attempt_at(store: &dyn Store, c: &Config, api: Api, now: u64) -> Outcome {
    select(
        store,
        c,
        &Attempt {
            api,
            need: &need(10),
            session: None,
            exclude: &[],
            now_ms: now,
        },
    )
}

/// The account picked and whether the pick is a probe, or the outcome's debug form.
fn probe_of(out: Outcome) -> Result<(usize, bool), String> {
    match out {
        Outcome::Picked(p) => Ok((p.account, p.probe)),
        other => Err(format!("{other:?}")),
    }
}

/// One account of `api` that rests `disable_for_ms` after an invalid-key answer.
fn lone(api: Api, disable_for_ms: u64) -> Config {
    let mut a = acct("solo", api, 1);
    a.disable_for = Duration::from_millis(disable_for_ms);
    cfg(vec![a], Strategy::LeastLoaded, None)
}

/// `lone(api, disable_for_ms)` in a store, its key found invalid at `NOW`.
fn disabled_at_now(api: Api, disable_for_ms: u64) -> (MemStore, Config) {
    let store = MemStore::new();
    let c = lone(api, disable_for_ms);
    prepare(&store, &c).unwrap();
    record(&store, &c.accounts[0], &invalid_key(api), NOW).unwrap();
    (store, c)
}

#[test]
fn answers_about_the_request_never_disable_the_shared_accounts() {
    // The review's case: one client's `OpenAI-Organization: org-x` against the failover
    // pool used to disable all three accounts.
    let store = MemStore::new();
    let c = cfg(
        vec![
            acct("o1", Api::OpenAi, 1),
            acct("o2", Api::OpenAi, 1),
            acct("o3", Api::OpenAi, 1),
        ],
        Strategy::Priority,
        None,
    );
    prepare(&store, &c).unwrap();
    for a in &c.accounts {
        for obs in [
            observe_response(401, &h(&[]), NOW),
            observe_error_body(Api::OpenAi, 401, samples::OPENAI_MISMATCHED_ORG.as_bytes()),
            observe_response(403, &h(&[]), NOW),
            observe_error_body(
                Api::OpenAi,
                403,
                b"{\"error\":{\"code\":\"unsupported_country_region_territory\"}}",
            ),
            // Cut off before the end: no evidence either.
            observe_error_body(Api::OpenAi, 401, &samples::OPENAI_INVALID.as_bytes()[..40]),
        ] {
            assert_eq!(obs.disable, None);
            let t = record(&store, a, &obs, NOW).unwrap();
            assert_eq!(t.after, StateKind::Ok, "{}", a.name);
        }
    }
    assert_eq!(
        probe_of(attempt_at(&store, &c, Api::OpenAi, NOW)),
        Ok((0, false))
    );
}

#[test]
fn each_providers_invalid_key_answer_disables_with_its_reason_and_time() {
    for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
        let store = MemStore::new();
        let c = lone(api, 300_000);
        prepare(&store, &c).unwrap();
        let t = record(&store, &c.accounts[0], &invalid_key(api), NOW).unwrap();
        assert_eq!((t.before, t.after), (StateKind::Ok, StateKind::Disabled));
        let status = if api == Api::Gemini { 400 } else { 401 };
        assert_eq!(
            read_health(&store, &c.accounts[0]).unwrap().state,
            AccountState::Disabled {
                reason: DisableReason::InvalidKey,
                status,
                since_ms: NOW,
                probe_after_ms: NOW + 300_000,
            },
            "{api:?}"
        );
        assert_eq!(
            probe_of(attempt_at(&store, &c, api, NOW + 1)),
            Err("NoAccount".into())
        );
    }
}

#[test]
fn a_disabled_account_is_probed_by_one_request_after_disable_for_and_a_2xx_makes_it_ok() {
    let (store, c) = disabled_at_now(Api::Anthropic, 60_000);
    let a = &c.accounts[0];
    let at = |now| probe_of(attempt_at(&store, &c, Api::Anthropic, now));
    assert_eq!(at(NOW + 59_999), Err("NoAccount".into()));
    let Outcome::Picked(p) = attempt_at(&store, &c, Api::Anthropic, NOW + 60_000) else {
        panic!("the probe is picked");
    };
    assert!(p.probe && p.counted, "{p:?}");
    assert_eq!(read_health(&store, a).unwrap().requests, 1);
    // While it is out, nobody else is sent to the account.
    assert_eq!(at(NOW + 60_001), Err("NoAccount".into()));
    let t = record(
        &store,
        a,
        &observe_response(200, &h(&[]), NOW + 60_500),
        NOW + 60_500,
    )
    .unwrap();
    assert_eq!((t.before, t.after), (StateKind::Disabled, StateKind::Ok));
    assert_eq!(read_health(&store, a).unwrap().state, AccountState::Ok);
    assert_eq!(at(NOW + 60_501), Ok((0, false)));
}

#[test]
fn a_probe_answered_invalid_key_again_is_disabled_afresh_from_then() {
    let (store, c) = disabled_at_now(Api::OpenAi, 60_000);
    let a = &c.accounts[0];
    let at = |now| probe_of(attempt_at(&store, &c, Api::OpenAi, now));
    assert_eq!(at(NOW + 60_000), Ok((0, true)));
    let answered = NOW + 61_000;
    let t = record(&store, a, &invalid_key(Api::OpenAi), answered).unwrap();
    assert!(!t.changed());
    assert_eq!(
        read_health(&store, a).unwrap().state,
        AccountState::Disabled {
            reason: DisableReason::InvalidKey,
            status: 401,
            since_ms: answered,
            probe_after_ms: answered + 60_000,
        }
    );
    // Not after the lapsed probe's 30 s: after a full `disable_for` from the new answer.
    assert_eq!(at(NOW + 60_000 + PROBE_RETRY_MS), Err("NoAccount".into()));
    assert_eq!(at(answered + 59_999), Err("NoAccount".into()));
    assert_eq!(at(answered + 60_000), Ok((0, true)));
}

#[test]
fn a_probe_answered_otherwise_keeps_the_account_disabled_without_cooling() {
    for (status, headers) in [
        (500, vec![]),
        (429, vec![("retry-after", "5")]),
        (401, vec![]),
        (400, vec![]),
    ] {
        let (store, c) = disabled_at_now(Api::Anthropic, 60_000);
        let a = &c.accounts[0];
        let sent = NOW + 60_000;
        assert_eq!(
            probe_of(attempt_at(&store, &c, Api::Anthropic, sent)),
            Ok((0, true))
        );
        let t = record(
            &store,
            a,
            &observe_response(status, &h(&headers), sent + 10),
            sent + 10,
        )
        .unwrap();
        assert_eq!(t.after, StateKind::Disabled, "{status}");
        let health = read_health(&store, a).unwrap();
        assert!(
            matches!(health.state, AccountState::Disabled { since_ms: NOW, .. }),
            "{status}: {health:?}"
        );
        // The next probe goes once the unanswered one's time is up.
        assert_eq!(
            probe_of(attempt_at(
                &store,
                &c,
                Api::Anthropic,
                sent + PROBE_RETRY_MS - 1
            )),
            Err("NoAccount".into())
        );
        assert_eq!(
            probe_of(attempt_at(
                &store,
                &c,
                Api::Anthropic,
                sent + PROBE_RETRY_MS
            )),
            Ok((0, true))
        );
    }
}

#[test]
fn a_probe_that_never_reports_back_frees_the_account_after_30_seconds() {
    let (store, c) = disabled_at_now(Api::Gemini, 60_000);
    let at = |now| probe_of(attempt_at(&store, &c, Api::Gemini, now));
    let first = NOW + 90_000;
    assert_eq!(at(first), Ok((0, true)));
    assert_eq!(at(first + PROBE_RETRY_MS - 1), Err("NoAccount".into()));
    assert_eq!(at(first + PROBE_RETRY_MS), Ok((0, true)));
    assert_eq!(at(first + PROBE_RETRY_MS + 1), Err("NoAccount".into()));
}

/// Runs `other` (another worker's turn) just before the first write to `key`: between the
/// read and the write of a compare-and-swap, the narrowest race two workers can run.
struct RaceBeforeWrite<'a> {
    inner: &'a MemStore,
    key: String,
    other: std::cell::RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl Store for RaceBeforeWrite<'_> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if key == self.key {
            let other = self.other.borrow_mut().take();
            if let Some(run) = other {
                run();
            }
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn two_workers_never_probe_one_account_at_once() {
    for healthy_other in [false, true] {
        let store = MemStore::new();
        let mut accounts = vec![acct("bad", Api::Anthropic, 1)];
        if healthy_other {
            accounts.push(acct("good", Api::Anthropic, 1));
        }
        let c = cfg(accounts, Strategy::Priority, None);
        prepare(&store, &c).unwrap();
        record(&store, &c.accounts[0], &invalid_key(Api::Anthropic), NOW).unwrap();
        let due = NOW + DISABLE_FOR;
        let lost = if healthy_other {
            Ok((1, false))
        } else {
            Err("NoAccount".into())
        };

        // One after the other.
        assert_eq!(
            probe_of(attempt_at(&store, &c, Api::Anthropic, due)),
            Ok((0, true))
        );
        assert_eq!(probe_of(attempt_at(&store, &c, Api::Anthropic, due)), lost);

        // Racing: both saw the probe due; worker B claims it between A's read and write.
        let later = due + PROBE_RETRY_MS;
        let b_got = std::cell::RefCell::new(None);
        let racing = RaceBeforeWrite {
            inner: &store,
            key: health_key("bad"),
            other: std::cell::RefCell::new(Some(Box::new(|| {
                *b_got.borrow_mut() = Some(probe_of(attempt_at(&store, &c, Api::Anthropic, later)));
            }))),
        };
        let a_got = probe_of(attempt_at(&racing, &c, Api::Anthropic, later));
        drop(racing);
        assert_eq!(
            b_got.into_inner(),
            Some(Ok((0, true))),
            "B ran first and probes"
        );
        assert_eq!(a_got, lost, "A lost the claim");
    }
}

#[test]
fn a_probe_refused_by_the_accounts_own_limits_is_no_probe() {
    let store = MemStore::new();
    let mut accounts = vec![
        acct("bad", Api::Anthropic, 1),
        acct("good", Api::Anthropic, 1),
    ];
    accounts[0].limits = vec![Limit::Rate {
        kind: LimitKind::Requests,
        amount: 1,
        per: Per::Minute,
        window: WindowKind::Fixed,
    }];
    accounts[0].disable_for = Duration::from_millis(10_000);
    let c = cfg(accounts, Strategy::Priority, None);
    prepare(&store, &c).unwrap();
    // Its one request this minute is spent, then the key is found invalid.
    assert_eq!(
        probe_of(attempt_at(&store, &c, Api::Anthropic, NOW)),
        Ok((0, false))
    );
    record(&store, &c.accounts[0], &invalid_key(Api::Anthropic), NOW).unwrap();
    // The probe is due at 12:00:40, but the account's minute is full until 12:01:00.
    assert_eq!(
        probe_of(attempt_at(&store, &c, Api::Anthropic, NOW + 10_000)),
        Ok((1, false))
    );
}

#[test]
fn unmetered_requests_skip_disabled_accounts_but_not_cooling_ones() {
    let store = MemStore::new();
    let c = cfg(
        vec![
            acct("a1", Api::Anthropic, 1),
            acct("o1", Api::OpenAi, 1),
            acct("a2", Api::Anthropic, 1),
        ],
        Strategy::Priority,
        None,
    );
    prepare(&store, &c).unwrap();
    let first = |now| first_usable_for(&store, &c.accounts, Api::Anthropic, now);
    assert_eq!(first(NOW), Some(0));
    let cooled = observe_response(429, &h(&[("retry-after", "60")]), NOW);
    record(&store, &c.accounts[0], &cooled, NOW).unwrap();
    assert_eq!(first(NOW + 1), Some(0));
    record(&store, &c.accounts[0], &invalid_key(Api::Anthropic), NOW).unwrap();
    assert_eq!(first(NOW + 2), Some(2));
    record(&store, &c.accounts[2], &invalid_key(Api::Anthropic), NOW).unwrap();
    assert_eq!(first(NOW + 3), None);
    assert_eq!(
        first_usable_for(&store, &c.accounts, Api::OpenAi, NOW),
        Some(1)
    );
}

#[test]
fn reset_returns_an_account_to_ok_at_once_keeping_its_counters() {
    let store = MemStore::new();
    let c = lone(Api::Anthropic, 600_000);
    let a = &c.accounts[0];
    prepare(&store, &c).unwrap();
    record_totals(&store, a, 3, 400).unwrap();
    record(&store, a, &invalid_key(Api::Anthropic), NOW).unwrap();
    let t = reset(&store, a, NOW + 5).unwrap();
    assert_eq!((t.before, t.after), (StateKind::Disabled, StateKind::Ok));
    let health = read_health(&store, a).unwrap();
    assert_eq!(
        (health.state, health.requests, health.tokens),
        (AccountState::Ok, 3, 400)
    );
    assert_eq!(
        probe_of(attempt_at(&store, &c, Api::Anthropic, NOW + 6)),
        Ok((0, false))
    );
    // Cooling ends at once too; an ok account stays ok.
    record(
        &store,
        a,
        &observe_response(429, &h(&[("retry-after", "60")]), NOW),
        NOW,
    )
    .unwrap();
    let t = reset(&store, a, NOW + 7).unwrap();
    assert_eq!((t.before, t.after), (StateKind::Cooling, StateKind::Ok));
    assert!(!reset(&store, a, NOW + 8).unwrap().changed());
}

proptest! {
    #[test]
    fn parsers_never_panic(s in "\\PC{0,80}") {
        let _ = parse_seconds_ms(&s);
        let _ = parse_duration_ms(&s);
        let _ = parse_rfc3339_ms(&s);
        let _ = parse_http_date_ms(&s);
        let _ = parse_reset(&s, NOW);
        let _ = parse_retry_after(&s, u64::MAX);
        let _ = parse_count(&s);
    }

    #[test]
    fn parsers_never_panic_on_near_valid_input(s in "[0-9 :.,TZzmsuhd+-]{0,40}") {
        let _ = parse_duration_ms(&s);
        let _ = parse_rfc3339_ms(&s);
        let _ = parse_http_date_ms(&s);
        let _ = parse_reset(&s, NOW);
    }

    #[test]
    fn observing_any_response_never_panics(status in 0u32..1000, name in "(anthropic-ratelimit-|x-ratelimit-|retry-after)[a-z0-9-]{0,30}", value in "\\PC{0,40}") {
        let obs = observe_response(status, &[(name, value)], NOW);
        let mut health = Health::default();
        health.apply(&obs, DISABLE_FOR, NOW);
        if let Some(until) = health.cooling_until(NOW) {
            prop_assert!((NOW + MIN_COOLING_MS..=NOW + MAX_COOLING_MS).contains(&until));
        }
    }

    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Health::decode(&bytes);
        let _ = Pin::decode(&bytes);
    }

    #[test]
    fn health_round_trips(tag: u32, req: u64, tok: u64, until: u64, rem: u64, lim: Option<u64>, reset in proptest::option::of(0u64..u64::MAX), state in 0u8..3, status: u16, since: u64) {
        let mut health = Health { key_tag: tag, requests: req, tokens: tok, load_milli: rem, load_ms: until, last_status: status, ..Health::default() };
        health.state = match state {
            0 => AccountState::Ok,
            1 => AccountState::Cooling { until_ms: until },
            _ => AccountState::Disabled { reason: DisableReason::InvalidKey, status, since_ms: since, probe_after_ms: until },
        };
        health.dims[3] = Some(Dim { remaining: rem, limit: lim.map(|l| l.min(u64::MAX - 1)), reset_ms: reset, seen_ms: until });
        let mut buf = Vec::new();
        health.encode(&mut buf);
        prop_assert_eq!(Health::decode(&buf), health);
    }

    #[test]
    fn pick_only_ever_picks_a_usable_account_of_the_api(
        kinds in proptest::collection::vec(0u8..5, 4),
        strategy in 0u8..3,
        counter: u64,
        excl in proptest::collection::vec(0usize..5, 0..3),
    ) {
        let states: Vec<Health> = kinds.iter().map(|k| {
            let mut s = Health::default();
            match k {
                1 => s.state = cooling(1_000),
                2 => s.state = disabled(401),
                3 => s.dims[0] = Some(Dim { remaining: 0, limit: None, reset_ms: Some(NOW + 5), seen_ms: NOW }),
                // Disabled, its probe due.
                4 => s.state = AccountState::Disabled { reason: DisableReason::InvalidKey, status: 401, since_ms: NOW - DISABLE_FOR, probe_after_ms: NOW },
                _ => {}
            }
            s
        }).collect();
        let strategy = [Strategy::Priority, Strategy::RoundRobin, Strategy::LeastLoaded][strategy as usize];
        match pick_with(&states, strategy, counter, &excl) {
            Choice::Pick { account } => {
                prop_assert!(account != 1);
                prop_assert!(states[account].pickable(NOW));
                prop_assert!(kinds[account] != 1 && kinds[account] != 2);
            }
            Choice::AllCooling { retry_after_s } => {
                prop_assert_eq!(retry_after_s, 1);
                prop_assert!([0usize, 2, 3].iter().all(|i| !states[*i].pickable(NOW)));
            }
            Choice::NoAccount => {
                prop_assert!([0usize, 2, 3].iter().all(|i| kinds[*i] == 2));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pause and resume (admin API)
// ---------------------------------------------------------------------------------------------

#[test]
fn a_paused_account_is_never_picked_and_resume_returns_it() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::Priority, None);
    prepare(&store, &c).unwrap();
    assert_eq!(names_of(&store, &c, 1, None), ["a1"]);
    let t = set_paused(&store, &c.accounts[0], true, NOW).unwrap();
    assert_eq!((t.before, t.after), (StateKind::Ok, StateKind::Paused));
    assert_eq!(names_of(&store, &c, 3, None), ["a2", "a2", "a2"]);
    // Every account of the API paused: none is usable, and no cooling end to wait for.
    for i in [2, 3] {
        set_paused(&store, &c.accounts[i], true, NOW).unwrap();
    }
    assert_eq!(names_of(&store, &c, 1, None), ["NoAccount"]);
    assert_eq!(
        first_usable_for(&store, &c.accounts, Api::Anthropic, NOW),
        None
    );
    assert_eq!(
        first_usable_for(&store, &c.accounts, Api::OpenAi, NOW),
        Some(1)
    );
    let t = set_paused(&store, &c.accounts[0], false, NOW).unwrap();
    assert_eq!((t.before, t.after), (StateKind::Paused, StateKind::Ok));
    assert_eq!(names_of(&store, &c, 2, None), ["a1", "a1"]);
    assert_eq!(
        read_health(&store, &c.accounts[2]).map(|h| h.kind_at(NOW)),
        Ok(StateKind::Paused)
    );
}

#[test]
fn a_paused_account_learns_but_is_neither_probed_nor_unpaused_by_answers_or_a_reset() {
    let store = MemStore::new();
    let c = lone(Api::Anthropic, 1_000);
    prepare(&store, &c).unwrap();
    let a = &c.accounts[0];
    set_paused(&store, a, true, NOW).unwrap();
    // An answer to a request sent before the pause: learned, still paused.
    let limited = observe_response(429, &h(&[("retry-after", "30")]), NOW);
    let t = record(&store, a, &limited, NOW).unwrap();
    assert_eq!(t.after, StateKind::Paused);
    let health = read_health(&store, a).unwrap();
    assert!(matches!(health.state, AccountState::Cooling { .. }));
    assert_eq!(
        health.cooling_until(NOW),
        None,
        "a paused account waits for a resume"
    );
    record(&store, a, &invalid_key(Api::Anthropic), NOW).unwrap();
    // Its probe is due, but a paused account is not probed.
    assert!(!read_health(&store, a).unwrap().probe_due(NOW + 5_000));
    assert_eq!(
        names_of_at(&store, &c, NOW + 5_000),
        "NoAccount",
        "no probe goes to a paused account"
    );
    let t = reset(&store, a, NOW + 6_000).unwrap();
    assert_eq!(t.after, StateKind::Paused, "a reset does not resume");
    let t = set_paused(&store, a, false, NOW + 7_000).unwrap();
    assert_eq!(t.after, StateKind::Ok);
    assert_eq!(names_of_at(&store, &c, NOW + 7_000), "solo");
}

fn names_of_at(store: &MemStore, c: &Config, now_ms: u64) -> String {
    let out = select(
        store,
        c,
        &Attempt {
            api: c.accounts[0].provider,
            need: &need(10),
            session: None,
            exclude: &[],
            now_ms,
        },
    );
    match out {
        Outcome::Picked(p) => c.accounts[p.account].name.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn pause_round_trips_in_the_stored_health_and_an_old_value_reads_unpaused() {
    let health = Health {
        state: disabled(401),
        paused: true,
        requests: 3,
        ..Health::default()
    };
    let mut buf = Vec::new();
    health.encode(&mut buf);
    assert_eq!(Health::decode(&buf), health);
    assert_eq!(health.kind_at(NOW), StateKind::Paused);
    assert_eq!(StateKind::Paused.as_str(), "paused");
    assert_eq!(StateKind::Paused.gauge(), 3);
    let mut plain = Vec::new();
    Health {
        paused: false,
        ..health
    }
    .encode(&mut plain);
    assert!(!Health::decode(&plain).paused);
    // The one flag bit still unused reads as garbage.
    let mut bad = plain.clone();
    bad[1] |= 0b1000_0000;
    assert_eq!(Health::decode(&bad), Health::default());
}

#[test]
fn an_instance_without_accounts_pauses_and_resumes_them_by_name() {
    let store = MemStore::new();
    let c = cfg(pool(), Strategy::Priority, None);
    prepare(&store, &c).unwrap();
    let t = set_paused_named(&store, "a1", true, NOW).unwrap().unwrap();
    assert_eq!(t.after, StateKind::Paused);
    assert_eq!(names_of(&store, &c, 1, None), ["a2"]);
    assert_eq!(set_paused_named(&store, "nobody", true, NOW), Ok(None));
    let t = set_paused_named(&store, "a1", false, NOW).unwrap().unwrap();
    assert_eq!((t.before, t.after), (StateKind::Paused, StateKind::Ok));
    assert_eq!(read_health_named(&store, "nobody"), Health::default());
}
