//! Provider rate-limit headers and retry-after: every value parser on arbitrary text, and
//! `observe_response` on arbitrary header lists and statuses. Results stay sane: a reset or
//! relative retry-after is `now` plus its seconds; stored health round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::accounts::{
    observe_response, parse_count, parse_duration_ms, parse_http_date_ms, parse_reset,
    parse_retry_after, parse_rfc3339_ms, parse_seconds_ms, Cool, Health,
};
use tollgate_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut u = Input::new(data);
    // now: anywhere from the epoch to far future, biased to realistic values.
    let now_ms = match u.u8() % 4 {
        0 => 1_779_000_000_000 + (u.u64() % 100_000_000_000),
        1 => u.u64(),
        2 => 0,
        _ => u64::MAX - (u.u64() % 1000),
    };
    let status = u32::from(u.u16()) % 1000;
    let text = String::from_utf8_lossy(u.rest());

    for v in text.split('\n') {
        let _ = parse_count(v);
        let _ = parse_seconds_ms(v);
        let _ = parse_duration_ms(v);
        let _ = parse_rfc3339_ms(v);
        let _ = parse_http_date_ms(v);
        // Seconds are relative to now; an HTTP date is absolute (and may be past).
        if let (Some(t), Some(ms)) = (parse_retry_after(v, now_ms), parse_seconds_ms(v)) {
            assert_eq!(t, now_ms.saturating_add(ms), "retry-after {v:?}");
        }
        let _ = parse_reset(v, now_ms);
    }

    // "name: value" lines as a header list.
    let headers: Vec<(&str, &str)> = text
        .split('\n')
        .map(|l| l.split_once(':').unwrap_or((l, "")))
        .collect();
    let obs = observe_response(status, &headers, now_ms);
    assert_eq!(obs.status, status);
    // Headers alone never disable an account: only the provider's invalid-key body does.
    assert!(obs.disable.is_none());
    if status == 429 {
        assert!(matches!(obs.cool, Some(Cool::Until(_) | Cool::RateLimited)));
    }
    // Stored health is read back from shared data: any bytes decode to something.
    let mut h = Health::decode(u8_bytes(&text));
    let _ = h.apply(&obs, 600_000, now_ms);
    let mut out = Vec::new();
    h.encode(&mut out);
    // Decoding what was encoded gives the same encoding (an optional u64::MAX is stored
    // saturated as MAX - 1, as the module's own round-trip proptest allows).
    let mut again = Vec::new();
    Health::decode(&out).encode(&mut again);
    assert_eq!(out, again, "health does not round-trip");
});

fn u8_bytes(s: &str) -> &[u8] {
    s.as_bytes()
}
