#![cfg(test)]
use super::*;
use crate::civil::{civil_from_days, days_from_civil, DAY_MS};
use crate::store::MemStore;
use std::cell::RefCell;

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

/// Unix millis of a UTC date and time.
fn at(y: i64, mo: i64, d: i64, h: u64, mi: u64, s: u64) -> u64 {
    days_from_civil(y, mo, d) as u64 * DAY_MS + h * HOUR + mi * MIN + s * SEC
}

fn rate(kind: LimitKind, amount: u64, per: Per, window: WindowKind) -> Limit {
    Limit::Rate {
        kind,
        amount,
        per,
        window,
    }
}

fn requests(amount: u64, per: Per, window: WindowKind) -> Limit {
    rate(LimitKind::Requests, amount, per, window)
}

fn req() -> Amounts {
    Amounts {
        requests: 1,
        ..Amounts::ZERO
    }
}

fn toks(n: u64) -> Amounts {
    Amounts {
        tokens: n,
        requests: 1,
        ..Amounts::ZERO
    }
}

fn key() -> OwnerKey {
    OwnerKey::consumer("team-a")
}

/// The default `lease_ttl` (90 s): the tests' `decide`, `admit` and `renew` below run
/// with it; tests of other ttls call `super::…` with theirs.
const TTL: Duration = Duration::from_millis(crate::config::DEFAULT_LEASE_TTL_MS);

fn decide(state: &mut State, limits: &[Limit], amounts: &Amounts, now: u64) -> Decision {
    super::decide(state, limits, amounts, now, TTL)
}

fn admit(
    s: &dyn Store,
    k: &OwnerKey,
    limits: &[Limit],
    amounts: &Amounts,
    now: u64,
) -> Result<Admission, StoreError> {
    super::admit(s, k, limits, amounts, now, TTL)
}

fn renew(s: &dyn Store, k: &OwnerKey, t: &mut Ticket, now: u64) -> Result<Settled, StoreError> {
    super::renew(s, k, t, now, TTL)
}

fn admitted(a: &Admission) -> Option<Ticket> {
    match a {
        Admission::Admitted { ticket, .. } => Some(*ticket),
        Admission::Rejected { .. } => None,
    }
}

fn rejection(a: &Admission) -> Option<Rejection> {
    match a {
        Admission::Rejected { rejection, .. } => Some(*rejection),
        Admission::Admitted { .. } => None,
    }
}

/// Admits `n` requests of `amounts` at `now`; returns how many got in.
fn admit_n(s: &MemStore, limits: &[Limit], amounts: &Amounts, n: usize, now: u64) -> usize {
    (0..n)
        .filter(|_| admitted(&admit(s, &key(), limits, amounts, now).unwrap()).is_some())
        .count()
}

fn state_of(s: &MemStore, k: &str) -> State {
    State::decode(&s.get(k).unwrap().0.unwrap_or_default())
}

#[test]
fn reservation_follows_the_spec() {
    let price = Price {
        input: 3.0,
        output: 15.0,
        ..Price::default()
    };
    // (estimate, max_tokens, reserve, price) → (tokens, input, output, cost)
    type Case<'a> = (u64, Option<u64>, u64, Option<&'a Price>, [u64; 4]);
    let cases: [Case; 4] = [
        (100, None, 1024, None, [1124, 100, 1024, 0]),
        (100, Some(50), 1024, None, [150, 100, 50, 0]),
        (100, Some(5000), 1024, None, [1124, 100, 1024, 0]),
        (1000, Some(100), 1024, Some(&price), [1100, 1000, 100, 4500]),
    ];
    for (estimate, max, reserve, price, [t, i, o, c]) in cases {
        let a = reservation(estimate, max, reserve, price);
        let want = Amounts {
            tokens: t,
            input_tokens: i,
            output_tokens: o,
            requests: 1,
            cost_micros: c,
        };
        assert_eq!(a, want, "{estimate} {max:?} {reserve}");
    }
    let u = Usage {
        input: 10,
        cache_read: 20,
        cache_write: 5,
        output: 7,
    };
    let a = Amounts::from_usage(&u, None);
    assert_eq!(
        (a.tokens, a.input_tokens, a.output_tokens, a.requests),
        (42, 35, 7, 1)
    );
}

/// The stored byte format, pinned: a value written by an older VM must decode the same.
#[test]
fn state_encoding_matches_hand_computed_bytes() {
    let state = State {
        owner: 0x0807_0605_0403_0201,
        touched_ms: 300,
        next_lease: 2,
        counters: vec![
            Counter {
                fp: FP_CONCURRENT,
                ..Counter::default()
            },
            Counter {
                fp: 5,
                idx: 1,
                cur: 128,
                prev: u64::MAX,
            },
        ],
        leases: vec![Lease {
            id: 1,
            expires_ms: 16_384,
        }],
    };
    #[rustfmt::skip]
    let golden: &[u8] = &[
        VERSION,
        1, 2, 3, 4, 5, 6, 7, 8, // owner, little-endian
        0xac, 0x02, // touched_ms 300
        0x02, // next_lease
        0x02, // two counters
        FP_CONCURRENT, // a concurrency counter: its fingerprint only
        0x05, 0x01, 0x80, 0x01, // fp 5, idx 1, cur 128
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // prev u64::MAX
        0x01, // one lease
        0x01, 0x80, 0x80, 0x01, // id 1, expires 16384
    ];
    let mut bytes = Vec::new();
    state.encode(&mut bytes);
    assert_eq!(bytes, golden);
    assert_eq!(State::decode(golden), state);
}

#[test]
fn state_survives_encoding_and_garbage_reads_as_fresh() {
    let limits = [
        requests(5, Per::Minute, WindowKind::Sliding),
        Limit::Concurrent(3),
        rate(LimitKind::CostUsd, u64::MAX, Per::Month, WindowKind::Fixed),
    ];
    let mut s = State {
        owner: 0xdead_beef_0000_0001,
        ..State::default()
    };
    let amounts = Amounts {
        requests: 1,
        cost_micros: u64::MAX - 1,
        ..Amounts::ZERO
    };
    assert!(matches!(
        decide(&mut s, &limits, &amounts, 1_700_000_000_000),
        Decision::Admit(_)
    ));
    let mut bytes = Vec::new();
    s.encode(&mut bytes);
    assert!(bytes.len() < 64, "{} bytes", bytes.len());
    assert_eq!(State::decode(&bytes), s);

    let mut wrong_version = bytes.clone();
    wrong_version[0] = 9;
    let mut trailing = bytes.clone();
    trailing.push(0);
    let mut too_many = vec![VERSION];
    too_many.extend_from_slice(&[0; 8]);
    too_many.extend_from_slice(&[0, 0, 200]);
    let overlong_varint = [&bytes[..9], &[0xff; 11][..]].concat();
    for garbage in [
        &[][..],
        &[0xff][..],
        &bytes[..bytes.len() - 1],
        &wrong_version[..],
        &trailing[..],
        &too_many[..],
        &overlong_varint[..],
    ] {
        assert_eq!(State::decode(garbage), State::default(), "{garbage:?}");
    }
}

#[test]
fn calendar_conversion_round_trips_and_knows_leap_years() {
    for days in (0..200_000).step_by(7) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    // (date, days in its month)
    for ((y, m), len) in [
        ((2024, 2), 29),
        ((2023, 2), 28),
        ((2000, 2), 29),
        ((2100, 2), 28),
        ((2023, 12), 31),
        ((2024, 4), 30),
        ((1970, 1), 31),
    ] {
        let idx = window_index(Per::Month, WindowKind::Fixed, at(y, m, 15, 12, 0, 0));
        let start = window_start(Per::Month, WindowKind::Fixed, idx);
        let end = window_start(Per::Month, WindowKind::Fixed, idx + 1);
        assert_eq!(start, at(y, m, 1, 0, 0, 0), "{y}-{m}");
        assert_eq!((end - start) / DAY_MS, len, "{y}-{m}");
    }
}

/// Every window kind: full at the end of a window, and at the boundary a fixed window
/// starts empty while a sliding one still counts all of the previous window.
#[test]
fn each_window_kind_resets_at_its_boundary() {
    // (per, window, a time inside a window, that window's end)
    let cases = [
        (
            Per::Second,
            WindowKind::Fixed,
            at(2024, 3, 5, 10, 0, 7) + 300,
            at(2024, 3, 5, 10, 0, 8),
        ),
        (
            Per::Minute,
            WindowKind::Fixed,
            at(2024, 3, 5, 10, 0, 7),
            at(2024, 3, 5, 10, 1, 0),
        ),
        (
            Per::Hour,
            WindowKind::Fixed,
            at(2024, 3, 5, 10, 30, 0),
            at(2024, 3, 5, 11, 0, 0),
        ),
        (
            Per::Day,
            WindowKind::Fixed,
            at(2024, 3, 5, 10, 30, 0),
            at(2024, 3, 6, 0, 0, 0),
        ),
        (
            Per::Month,
            WindowKind::Fixed,
            at(2024, 2, 10, 8, 0, 0),
            at(2024, 3, 1, 0, 0, 0),
        ),
        (
            Per::Month,
            WindowKind::Fixed,
            at(2023, 2, 10, 8, 0, 0),
            at(2023, 3, 1, 0, 0, 0),
        ),
        (
            Per::Month,
            WindowKind::Fixed,
            at(2023, 12, 31, 23, 0, 0),
            at(2024, 1, 1, 0, 0, 0),
        ),
        (
            Per::Second,
            WindowKind::Sliding,
            at(2024, 3, 5, 10, 0, 7),
            at(2024, 3, 5, 10, 0, 8),
        ),
        (
            Per::Minute,
            WindowKind::Sliding,
            at(2024, 3, 5, 10, 0, 7),
            at(2024, 3, 5, 10, 1, 0),
        ),
        (
            Per::Hour,
            WindowKind::Sliding,
            at(2024, 3, 5, 10, 0, 0),
            at(2024, 3, 5, 11, 0, 0),
        ),
        (
            Per::Day,
            WindowKind::Sliding,
            at(2024, 3, 5, 0, 0, 0),
            at(2024, 3, 6, 0, 0, 0),
        ),
        // Sliding months are 30-day windows counted from the epoch.
        (
            Per::Month,
            WindowKind::Sliding,
            19_800 * DAY_MS + 5,
            19_830 * DAY_MS,
        ),
    ];
    for (per, window, t0, end) in cases {
        let s = MemStore::new();
        let limits = [requests(10, per, window)];
        let what = format!("{per:?} {window:?}");
        assert_eq!(admit_n(&s, &limits, &req(), 11, t0), 10, "{what}");
        assert_eq!(admit_n(&s, &limits, &req(), 1, end - 1), 0, "{what}");
        match window {
            WindowKind::Fixed => {
                assert_eq!(admit_n(&s, &limits, &req(), 11, end), 10, "{what}")
            }
            WindowKind::Sliding => {
                assert_eq!(admit_n(&s, &limits, &req(), 1, end), 0, "{what}");
                // Halfway through, half of the previous window still counts.
                let half = end + per.millis() / 2;
                assert_eq!(admit_n(&s, &limits, &req(), 11, half), 5, "{what}");
                // Two windows on, nothing of the first counts.
                assert_eq!(
                    admit_n(&s, &limits, &req(), 11, end + 2 * per.millis()),
                    10,
                    "{what}"
                );
            }
        }
    }
}

/// The request fits exactly `retry_after_s` seconds later and not one second earlier.
#[test]
fn retry_after_is_when_the_binding_window_really_has_room() {
    let t = at(2024, 5, 20, 12, 0, 0);
    // (limit, charges made earlier as (time, tokens), now, request tokens)
    type Case = (Limit, Vec<(u64, u64)>, u64, u64);
    let cases: Vec<Case> = vec![
        // Sliding, room comes within the current window as the previous one decays.
        (
            rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
            vec![(t - 30 * SEC, 80)],
            t + 10 * SEC,
            40,
        ),
        (
            rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
            vec![(t - 30 * SEC, 100)],
            t + 1,
            1,
        ),
        (
            rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
            vec![(t - 1, 99)],
            t + SEC,
            4,
        ),
        // Sliding, the current window itself is too full: room comes in the next one.
        (
            rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
            vec![(t + SEC, 70)],
            t + 20 * SEC,
            40,
        ),
        (
            rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
            vec![(t - 30 * SEC, 50), (t + 40 * SEC, 60)],
            t + 45 * SEC,
            100,
        ),
        (
            rate(LimitKind::Tokens, 1000, Per::Hour, WindowKind::Sliding),
            vec![(t + MIN, 999)],
            t + 2 * MIN,
            7,
        ),
        (
            rate(LimitKind::Tokens, 10, Per::Second, WindowKind::Sliding),
            vec![(t + 100, 10)],
            t + 200,
            10,
        ),
        (
            rate(LimitKind::Tokens, 10, Per::Day, WindowKind::Sliding),
            vec![(t, 9)],
            t + HOUR,
            3,
        ),
        (
            rate(LimitKind::Tokens, 10, Per::Month, WindowKind::Sliding),
            vec![(t, 9)],
            t + HOUR,
            3,
        ),
        // Fixed: the next window start.
        (
            rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Fixed),
            vec![(t + SEC, 90)],
            t + 20 * SEC + 1,
            20,
        ),
        (
            rate(LimitKind::Tokens, 100, Per::Day, WindowKind::Fixed),
            vec![(t, 90)],
            t,
            20,
        ),
        (
            rate(LimitKind::Tokens, 100, Per::Month, WindowKind::Fixed),
            vec![(at(2024, 2, 3, 0, 0, 0), 90)],
            at(2024, 2, 28, 23, 59, 59),
            20,
        ),
        (
            rate(LimitKind::Tokens, 100, Per::Second, WindowKind::Fixed),
            vec![(t + 10, 90)],
            t + 999,
            20,
        ),
    ];
    for (i, (limit, charges, now, tokens)) in cases.into_iter().enumerate() {
        let limits = [limit];
        let mut state = State::default();
        for (when, n) in charges {
            assert!(
                matches!(
                    decide(&mut state, &limits, &toks(n), when),
                    Decision::Admit(_)
                ),
                "case {i}"
            );
        }
        let mut probe = state.clone();
        let Decision::Reject(r) = decide(&mut probe, &limits, &toks(tokens), now) else {
            panic!("case {i}: admitted at once");
        };
        assert!(r.should_retry && r.retry_after_s >= 1, "case {i}: {r:?}");
        let later = now + r.retry_after_s * SEC;
        let mut probe = state.clone();
        assert!(
            matches!(
                decide(&mut probe, &limits, &toks(tokens), later),
                Decision::Admit(_)
            ),
            "case {i}: {r:?}"
        );
        let earlier = later - SEC;
        let mut probe = state.clone();
        assert!(
            matches!(
                decide(&mut probe, &limits, &toks(tokens), earlier),
                Decision::Reject(_)
            ),
            "case {i}: {r:?}"
        );
    }
}

#[test]
fn retry_after_is_the_latest_of_several_full_limits() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [
        requests(1, Per::Second, WindowKind::Fixed),
        requests(1, Per::Minute, WindowKind::Fixed),
        requests(100, Per::Day, WindowKind::Fixed),
    ];
    let mut state = State::default();
    assert!(matches!(
        decide(&mut state, &limits, &req(), t),
        Decision::Admit(_)
    ));
    let Decision::Reject(r) = decide(&mut state, &limits, &req(), t + 100) else {
        panic!("admitted");
    };
    assert_eq!((r.limit, r.retry_after_s, r.reason()), (1, 60, "requests"));
}

#[test]
fn refuses_without_retry_when_the_reservation_exceeds_the_limit_itself() {
    let t = at(2024, 5, 20, 12, 0, 30);
    let cases = [
        (
            vec![rate(
                LimitKind::Tokens,
                100,
                Per::Minute,
                WindowKind::Sliding,
            )],
            toks(101),
            Some(LimitKind::Tokens),
        ),
        (
            vec![
                requests(10, Per::Minute, WindowKind::Fixed),
                rate(LimitKind::OutputTokens, 10, Per::Day, WindowKind::Fixed),
            ],
            Amounts {
                output_tokens: 11,
                requests: 1,
                ..Amounts::ZERO
            },
            Some(LimitKind::OutputTokens),
        ),
        (
            vec![rate(LimitKind::CostUsd, 5, Per::Hour, WindowKind::Sliding)],
            Amounts {
                cost_micros: 6,
                ..Amounts::ZERO
            },
            Some(LimitKind::CostUsd),
        ),
        (
            vec![
                requests(10, Per::Minute, WindowKind::Fixed),
                Limit::Concurrent(0),
            ],
            req(),
            None,
        ),
    ];
    for (limits, amounts, kind) in cases {
        let s = MemStore::new();
        let a = admit(&s, &key(), &limits, &amounts, t).unwrap();
        let r = rejection(&a).unwrap();
        assert!(!r.should_retry && r.retry_after_s >= 1, "{r:?}");
        assert_eq!(r.kind, kind);
        assert_eq!(r.limit, limits.len() - 1);
    }
    // Other full limits do not hide that waiting cannot help.
    let s = MemStore::new();
    let limits = [
        requests(1, Per::Day, WindowKind::Fixed),
        rate(LimitKind::Tokens, 10, Per::Minute, WindowKind::Fixed),
    ];
    assert_eq!(admit_n(&s, &limits, &toks(5), 1, t), 1);
    let r = rejection(&admit(&s, &key(), &limits, &toks(50), t).unwrap()).unwrap();
    assert_eq!((r.limit, r.should_retry), (1, false));
}

#[test]
fn reconciliation_corrects_the_window_that_took_the_reservation() {
    let per = Per::Minute;
    let t = at(2024, 5, 20, 12, 0, 10);
    let limits = [rate(LimitKind::Tokens, 1000, per, WindowKind::Fixed)];
    // (reconcile time, real tokens) → (current, previous) counters afterwards
    let cases = [
        (t + 5 * SEC, 300, (300, 0)), // same window, refund
        (t + 5 * SEC, 700, (700, 0)), // same window, charge
        (t + MIN, 300, (0, 300)),     // previous window, refund
        (t + MIN, 900, (0, 900)),     // previous window, charge
        (t + 2 * MIN, 300, (0, 0)),   // older: refund dropped
        (t + 2 * MIN, 650, (150, 0)), // older: charge to current window
    ];
    for (when, real, want) in cases {
        let s = MemStore::new();
        let a = admit(&s, &key(), &limits, &toks(500), t).unwrap();
        let ticket = admitted(&a).unwrap();
        let actual = toks(real);
        assert_eq!(
            reconcile(&s, &key(), &limits, &ticket, &actual, when).unwrap(),
            Settled::Applied
        );
        let st = state_of(&s, "tollgate:q:c:team-a");
        let c = st.counters[0];
        assert_eq!((c.cur, c.prev), want, "at +{}ms real {real}", when - t);
    }
    // A sliding window sees the refund at once.
    let limits = [rate(LimitKind::Tokens, 1000, per, WindowKind::Sliding)];
    let s = MemStore::new();
    let ticket = admitted(&admit(&s, &key(), &limits, &toks(1000), t).unwrap()).unwrap();
    assert_eq!(admit_n(&s, &limits, &toks(200), 1, t + MIN), 0);
    reconcile(&s, &key(), &limits, &ticket, &toks(100), t + MIN).unwrap();
    assert_eq!(admit_n(&s, &limits, &toks(900), 1, t + MIN), 1);
}

#[test]
fn cancelling_returns_the_whole_reservation_including_the_request() {
    let t = at(2024, 5, 20, 12, 0, 10);
    let limits = [requests(1, Per::Minute, WindowKind::Fixed)];
    let s = MemStore::new();
    let ticket = admitted(&admit(&s, &key(), &limits, &req(), t).unwrap()).unwrap();
    assert_eq!(admit_n(&s, &limits, &req(), 1, t), 0);
    reconcile(&s, &key(), &limits, &ticket, &Amounts::ZERO, t).unwrap();
    assert_eq!(admit_n(&s, &limits, &req(), 1, t), 1);
}

#[test]
fn concurrency_leases_expire_renew_and_release() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [Limit::Concurrent(2)];
    let s = MemStore::new();
    let k = key();
    let mut a = admitted(&admit(&s, &k, &limits, &req(), t).unwrap()).unwrap();
    let b = admitted(&admit(&s, &k, &limits, &req(), t).unwrap()).unwrap();
    let r = rejection(&admit(&s, &k, &limits, &req(), t + SEC).unwrap()).unwrap();
    assert_eq!(
        (r.kind, r.retry_after_s, r.should_retry, r.reason()),
        (None, 1, true, "concurrency")
    );

    // Renewal is free until 30 s have passed, then one write.
    let before = s.round_trips();
    assert_eq!(
        renew(&s, &k, &mut a, t + 29 * SEC).unwrap(),
        Settled::Skipped
    );
    assert_eq!(s.round_trips(), before);
    assert_eq!(
        renew(&s, &k, &mut a, t + 60 * SEC).unwrap(),
        Settled::Applied
    );
    assert_eq!(s.round_trips(), (before.0 + 1, before.1 + 1));
    assert_eq!(a.renewed_ms, t + 60 * SEC);

    // b was never renewed: gone after 90 s; a lives until 60 + 90 s.
    assert!(admitted(&admit(&s, &k, &limits, &req(), t + 89 * SEC).unwrap()).is_none());
    let c = admitted(&admit(&s, &k, &limits, &req(), t + 90 * SEC).unwrap()).unwrap();
    assert!(admitted(&admit(&s, &k, &limits, &req(), t + 91 * SEC).unwrap()).is_none());
    // An expired lease is not taken back by renewing it.
    let mut b2 = b;
    assert_eq!(
        renew(&s, &k, &mut b2, t + 95 * SEC).unwrap(),
        Settled::Skipped
    );

    // Release and reconcile both free a lease.
    assert_eq!(release(&s, &k, &c).unwrap(), Settled::Applied);
    assert_eq!(release(&s, &k, &c).unwrap(), Settled::Skipped);
    let d = admitted(&admit(&s, &k, &limits, &req(), t + 100 * SEC).unwrap()).unwrap();
    assert_eq!(
        state_of(&s, "tollgate:q:c:team-a").leases_in_use(t + 100 * SEC),
        2
    );
    reconcile(&s, &k, &limits, &d, &req(), t + 101 * SEC).unwrap();
    let snap = usage_snapshot(&s, &k, &limits, t + 101 * SEC).unwrap();
    assert_eq!(
        (snap.concurrent_in_use, snap.concurrent_limit),
        (1, Some(2))
    );
    assert_eq!(
        usage_snapshot(&s, &k, &limits, t + 150 * SEC + 1)
            .unwrap()
            .concurrent_in_use,
        0
    );
}

#[test]
fn a_lease_frees_itself_once_its_ttl_has_passed_and_not_before() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [Limit::Concurrent(1)];
    for ttl_ms in [1, 250, 2 * SEC, 90 * SEC, DAY_MS] {
        let ttl = Duration::from_millis(ttl_ms);
        let s = MemStore::new();
        let k = key();
        let second = |now| admitted(&super::admit(&s, &k, &limits, &req(), now, ttl).unwrap());
        assert!(second(t).is_some(), "{ttl_ms}: the first is admitted");
        assert!(
            second(t + ttl_ms - 1).is_none(),
            "{ttl_ms}: held 1 ms before"
        );
        assert_eq!(
            state_of(&s, "tollgate:q:c:team-a").leases_in_use(t + ttl_ms - 1),
            1
        );
        assert!(second(t + ttl_ms).is_some(), "{ttl_ms}: free at the ttl");
    }
}

#[test]
fn a_stream_renewing_within_a_short_ttl_keeps_its_lease_until_it_stalls() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let ttl = Duration::from_millis(2 * SEC);
    let limits = [Limit::Concurrent(1)];
    let s = MemStore::new();
    let k = key();
    let taken = super::admit(&s, &k, &limits, &req(), t, ttl).unwrap();
    let mut a = admitted(&taken).unwrap();
    let blocked = |now| rejection(&super::admit(&s, &k, &limits, &req(), now, ttl).unwrap());
    // A chunk every 300 ms for 10 s (five ttls): the lease never lapses, and only every
    // third chunk writes (the last renewal must be 666 ms old).
    let (mut now, mut writes) = (t, 0);
    while now < t + 10 * SEC {
        now += 300;
        if super::renew(&s, &k, &mut a, now, ttl).unwrap() == Settled::Applied {
            writes += 1;
        }
        assert!(blocked(now).is_some(), "at +{} ms", now - t);
    }
    assert_eq!((writes, a.renewed_ms), (11, t + 9_900));
    // The stream stalls: the lease lives one ttl past its last renewal.
    assert!(blocked(t + 11_899).is_some());
    assert!(blocked(t + 11_900).is_none());
}

#[test]
fn the_renewal_interval_is_a_third_of_a_short_ttl_and_at_most_30_s() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [Limit::Concurrent(1)];
    let cases = [
        (DAY_MS, 30 * SEC),
        (90 * SEC, 30 * SEC),
        (60 * SEC, 20 * SEC),
        (2 * SEC, 666),
        (250, 83),
        (1, 0),
    ];
    for (ttl_ms, interval) in cases {
        let ttl = Duration::from_millis(ttl_ms);
        assert_eq!(renew_after_ms(ttl), interval, "{ttl_ms}");
        let s = MemStore::new();
        let k = key();
        let taken = super::admit(&s, &k, &limits, &req(), t, ttl).unwrap();
        let mut a = admitted(&taken).unwrap();
        if let Some(early) = interval.checked_sub(1) {
            let before = s.round_trips();
            let got = super::renew(&s, &k, &mut a, t + early, ttl).unwrap();
            assert_eq!(
                (got, s.round_trips()),
                (Settled::Skipped, before),
                "{ttl_ms}"
            );
        }
        let got = super::renew(&s, &k, &mut a, t + interval, ttl).unwrap();
        assert_eq!(got, Settled::Applied, "{ttl_ms}");
        // Renewed for one whole ttl from the renewal.
        let end = t + interval + ttl_ms;
        let state = state_of(&s, "tollgate:q:c:team-a");
        let in_use = (state.leases_in_use(end - 1), state.leases_in_use(end));
        assert_eq!(in_use, (1, 0), "{ttl_ms}");
    }
}

#[test]
fn admission_costs_one_get_and_one_set_and_rejection_one_get() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [
        rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
        requests(1, Per::Minute, WindowKind::Sliding),
        rate(LimitKind::Tokens, 1000, Per::Day, WindowKind::Fixed),
        rate(LimitKind::CostUsd, 1000, Per::Month, WindowKind::Fixed),
        Limit::Concurrent(4),
    ];
    let s = MemStore::new();
    prepare(&s, ["tollgate:q:c:team-a"]).unwrap();
    let before = s.round_trips();
    admit(&s, &key(), &limits, &toks(10), t).unwrap();
    assert_eq!(s.round_trips(), (before.0 + 1, before.1 + 1));
    assert!(rejection(&admit(&s, &key(), &limits, &toks(10), t).unwrap()).is_some());
    assert_eq!(s.round_trips(), (before.0 + 2, before.1 + 1));
}

#[test]
fn headers_name_the_limit_with_the_least_room_per_kind() {
    let t = at(2024, 5, 20, 12, 0, 30);
    let limits = [
        rate(LimitKind::Tokens, 1000, Per::Minute, WindowKind::Fixed),
        rate(LimitKind::Tokens, 100_000, Per::Day, WindowKind::Fixed),
        rate(LimitKind::OutputTokens, 200, Per::Hour, WindowKind::Fixed),
        requests(10, Per::Minute, WindowKind::Fixed),
        requests(20, Per::Hour, WindowKind::Fixed),
        rate(LimitKind::CostUsd, 1, Per::Day, WindowKind::Fixed),
        Limit::Concurrent(1),
    ];
    let s = MemStore::new();
    let amounts = Amounts {
        tokens: 100,
        output_tokens: 100,
        requests: 1,
        ..Amounts::ZERO
    };
    let Admission::Admitted { headers, .. } = admit(&s, &key(), &limits, &amounts, t).unwrap()
    else {
        panic!("rejected");
    };
    // tokens: 900/1000, 99900/100000, 100/200 → the output limit binds.
    let tok = headers.tokens.unwrap();
    assert_eq!(
        (tok.index, tok.limit, tok.remaining, tok.reset_s),
        (2, 200, 100, 60 * 60 - 30)
    );
    // requests: 9/10 and 19/20 → the hourly limit (0.95) does not bind; 0.9 does.
    let rq = headers.requests.unwrap();
    assert_eq!(
        (rq.index, rq.limit, rq.remaining, rq.reset_s),
        (3, 10, 9, 30)
    );
    // Ties go to the soonest reset; a kind with no limit gets no header.
    let tie = binding([
        LimitStatus {
            index: 0,
            kind: Some(LimitKind::Tokens),
            limit: 10,
            remaining: 5,
            reset_s: 50,
        },
        LimitStatus {
            index: 1,
            kind: Some(LimitKind::InputTokens),
            limit: 100,
            remaining: 50,
            reset_s: 20,
        },
        LimitStatus {
            index: 2,
            kind: Some(LimitKind::CostUsd),
            limit: 100,
            remaining: 0,
            reset_s: 1,
        },
    ]);
    assert_eq!(tie.tokens.map(|s| s.index), Some(1));
    assert_eq!(tie.requests, None);
    assert_eq!(status(&State::default(), &limits, t).len(), limits.len());
}

#[test]
fn usage_snapshot_reports_each_window() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [
        rate(LimitKind::Tokens, 100, Per::Minute, WindowKind::Sliding),
        requests(5, Per::Day, WindowKind::Fixed),
    ];
    let s = MemStore::new();
    admit(&s, &key(), &limits, &toks(40), t).unwrap();
    let snap = usage_snapshot(&s, &key(), &limits, t + MIN + 30 * SEC).unwrap();
    let w: Vec<_> = snap
        .windows
        .iter()
        .map(|w| (w.index, w.limit, w.used, w.remaining, w.reset_s))
        .collect();
    // Half of the previous minute's 40 still counts; it leaves in 30 s.
    assert_eq!(w, [(0, 100, 20, 80, 30), (1, 5, 1, 4, 12 * 3600 - 90)]);
    assert_eq!(snap.concurrent_limit, None);
}

#[test]
fn a_changed_limit_starts_from_zero_and_others_keep_their_counts() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let s = MemStore::new();
    let old = [
        requests(2, Per::Minute, WindowKind::Fixed),
        requests(2, Per::Hour, WindowKind::Fixed),
    ];
    assert_eq!(admit_n(&s, &old, &req(), 3, t), 2);
    let new = [
        requests(2, Per::Minute, WindowKind::Fixed),
        requests(2, Per::Day, WindowKind::Fixed),
    ];
    assert_eq!(admit_n(&s, &new, &req(), 1, t), 0);
    let new = [
        requests(4, Per::Minute, WindowKind::Fixed),
        requests(2, Per::Day, WindowKind::Fixed),
    ];
    assert_eq!(admit_n(&s, &new, &req(), 3, t), 2);
}

/// A store that lets another worker run a whole admission between this worker's `get`
/// and `set`, the worst interleaving Envoy's workers can produce.
struct Racing<'a> {
    inner: &'a MemStore,
    before_set: RefCell<Box<dyn FnMut() + 'a>>,
}

impl Store for Racing<'_> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        (self.before_set.borrow_mut())();
        self.inner.set(key, value, cas)
    }
}

#[test]
fn racing_workers_never_over_admit() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [
        requests(10, Per::Minute, WindowKind::Fixed),
        Limit::Concurrent(8),
    ];
    for prepared in [true, false] {
        let mem = MemStore::new();
        if prepared {
            prepare(&mem, ["tollgate:q:c:team-a"]).unwrap();
        }
        let b_admitted = RefCell::new(0);
        let racing = Racing {
            inner: &mem,
            before_set: RefCell::new(Box::new(|| {
                if admitted(&admit(&mem, &key(), &limits, &req(), t).unwrap()).is_some() {
                    *b_admitted.borrow_mut() += 1;
                }
            })),
        };
        let mut a_admitted = 0;
        for _ in 0..10 {
            match admit(&racing, &key(), &limits, &req(), t) {
                Ok(a) if admitted(&a).is_some() => a_admitted += 1,
                Ok(_) | Err(StoreError::Contended) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        let b = *b_admitted.borrow();
        assert_eq!(
            a_admitted + b,
            8,
            "prepared {prepared}: A {a_admitted} B {b}"
        );
        let st = state_of(&mem, "tollgate:q:c:team-a");
        assert_eq!((st.counters[0].cur, st.leases.len()), (8, 8));
    }
}

#[test]
fn a_worker_always_losing_the_race_gives_up_as_contended() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [requests(100_000, Per::Minute, WindowKind::Fixed)];
    let mem = MemStore::new();
    let racing = Racing {
        inner: &mem,
        before_set: RefCell::new(Box::new(|| {
            admit(&mem, &key(), &limits, &req(), t).unwrap();
        })),
    };
    assert_eq!(
        admit(&racing, &key(), &limits, &req(), t),
        Err(StoreError::Contended)
    );
    let ticket = admitted(&admit(&mem, &key(), &limits, &req(), t).unwrap()).unwrap();
    assert_eq!(
        reconcile(&racing, &key(), &limits, &ticket, &Amounts::ZERO, t),
        Ok(Settled::Dropped)
    );
    assert_eq!(
        state_of(&mem, "tollgate:q:c:team-a").counters[0].cur,
        u64::from(ADMIT_TRIES + MAX_TRIES + 1)
    );
}

#[test]
fn dynamic_names_share_a_fixed_table_and_evict_the_least_recently_used() {
    let t = at(2024, 5, 20, 12, 0, 0);
    let limits = [requests(1, Per::Day, WindowKind::Fixed)];
    let table = dynamic_slots(1);
    let mem = MemStore::new();
    assert_eq!(prepare(&mem, table.keys()).unwrap(), 1);
    let (x, y) = (
        OwnerKey::dynamic(&table, "x"),
        OwnerKey::dynamic(&table, "y"),
    );
    let tx = admitted(&admit(&mem, &x, &limits, &req(), t).unwrap()).unwrap();
    assert!(admitted(&admit(&mem, &x, &limits, &req(), t).unwrap()).is_none());
    // y takes the only slot over, with fresh counts; x's reconcile finds it gone.
    assert!(admitted(&admit(&mem, &y, &limits, &req(), t + 1).unwrap()).is_some());
    assert_eq!(
        reconcile(&mem, &x, &limits, &tx, &Amounts::ZERO, t + 2).unwrap(),
        Settled::OwnerGone
    );
    assert_eq!(mem.len(), 1);

    // Two slots per name: three names, the least recently used goes.
    let table = dynamic_slots(2);
    let mem = MemStore::new();
    prepare(&mem, ["tollgate:q:d:0", "tollgate:q:d:1"]).unwrap();
    let (a, b, c) = (
        OwnerKey::dynamic(&table, "a"),
        OwnerKey::dynamic(&table, "b"),
        OwnerKey::dynamic(&table, "c"),
    );
    admit(&mem, &a, &limits, &req(), t).unwrap();
    admit(&mem, &b, &limits, &req(), t + 1).unwrap();
    // Both keep their own counts.
    assert!(admitted(&admit(&mem, &a, &limits, &req(), t + 2).unwrap()).is_none());
    assert!(admitted(&admit(&mem, &b, &limits, &req(), t + 2).unwrap()).is_none());
    admit(&mem, &c, &limits, &req(), t + 3).unwrap(); // evicts a (older)
    assert!(admitted(&admit(&mem, &b, &limits, &req(), t + 4).unwrap()).is_none());
    assert_eq!(
        usage_snapshot(&mem, &a, &limits, t + 4).unwrap().windows[0].used,
        0
    );
    assert_eq!(
        usage_snapshot(&mem, &c, &limits, t + 4).unwrap().windows[0].used,
        1
    );
    assert_eq!(mem.len(), 2);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Admit { dt: u64, tokens: u64 },
        Reconcile { dt: u64, pick: usize, percent: u64 },
    }

    fn per() -> impl Strategy<Value = Per> {
        prop_oneof![
            Just(Per::Second),
            Just(Per::Minute),
            Just(Per::Hour),
            Just(Per::Day),
            Just(Per::Month)
        ]
    }

    fn limit() -> impl Strategy<Value = Limit> {
        (any::<bool>(), per(), any::<bool>(), 1u64..400).prop_map(|(tokens, per, fixed, amount)| {
            let (kind, amount) = if tokens {
                (LimitKind::Tokens, amount)
            } else {
                (LimitKind::Requests, amount % 12 + 1)
            };
            let window = if fixed {
                WindowKind::Fixed
            } else {
                WindowKind::Sliding
            };
            Limit::Rate {
                kind,
                amount,
                per,
                window,
            }
        })
    }

    fn dt() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => 0u64..1_500,
            3 => 0u64..120_000,
            1 => 0u64..(40 * DAY_MS),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (dt(), 0u64..300).prop_map(|(dt, tokens)| Op::Admit { dt, tokens }),
            2 => (dt(), any::<usize>(), 0u64..=150)
                .prop_map(|(dt, pick, percent)| Op::Reconcile { dt, pick, percent }),
        ]
    }

    /// One charge the model attributes to a window.
    struct Entry {
        idx: u64,
        amount: u64,
    }

    struct Open {
        ticket: Ticket,
        entries: Vec<usize>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// An independent ledger of every charge agrees with each admission decision, so
        /// the reservations admitted per window never exceed a limit.
        #[test]
        fn admissions_agree_with_an_independent_ledger(
            rates in proptest::collection::vec(limit(), 1..4),
            concurrent in proptest::option::of(1u32..5),
            start in 0u64..(60 * 365 * DAY_MS),
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut limits = rates.clone();
            if let Some(n) = concurrent {
                limits.push(Limit::Concurrent(n));
            }
            let store = MemStore::new();
            let k = key();
            let mut ledger: Vec<Vec<Entry>> = rates.iter().map(|_| Vec::new()).collect();
            let mut open: Vec<Open> = Vec::new();
            let mut now = start;
            for op in ops {
                match op {
                    Op::Admit { dt, tokens } => {
                        now += dt;
                        let amounts = toks(tokens);
                        let mut fits = true;
                        for (limit, entries) in rates.iter().zip(&ledger) {
                            let Some(r) = crate::quota::rate(limit) else { continue };
                            let idx = window_index(r.per, r.window, now);
                            let sum = |i: u64| -> u128 {
                                entries.iter().filter(|e| e.idx == i).map(|e| u128::from(e.amount)).sum()
                            };
                            let extra = u128::from(amounts.of(r.kind));
                            let cur = sum(idx) + extra;
                            let ok = match r.window {
                                WindowKind::Fixed => cur <= u128::from(r.amount),
                                WindowKind::Sliding => {
                                    let len = u128::from(r.per.millis());
                                    let e = u128::from(now - idx * r.per.millis());
                                    cur * len + sum(idx.wrapping_sub(1)) * (len - e)
                                        <= u128::from(r.amount) * len
                                }
                            };
                            fits &= ok;
                        }
                        if let Some(n) = concurrent {
                            let live = open.iter().filter(|o| o.ticket.admitted_ms + TTL.millis() > now).count();
                            fits &= live < n as usize;
                        }
                        let got = admit(&store, &k, &limits, &amounts, now).unwrap();
                        prop_assert_eq!(admitted(&got).is_some(), fits, "at {} {:?}", now, got);
                        if let Some(ticket) = admitted(&got) {
                            let mut ids = Vec::new();
                            for (limit, entries) in rates.iter().zip(ledger.iter_mut()) {
                                let idx = crate::quota::rate(limit).map_or(0, |r| window_index(r.per, r.window, now));
                                let amount = crate::quota::rate(limit).map_or(0, |r| amounts.of(r.kind));
                                entries.push(Entry { idx, amount });
                                ids.push(entries.len() - 1);
                            }
                            open.push(Open { ticket, entries: ids });
                        }
                    }
                    Op::Reconcile { dt, pick, percent } => {
                        if open.is_empty() {
                            continue;
                        }
                        now += dt;
                        let o = open.remove(pick % open.len());
                        let reserved = o.ticket.charged.tokens;
                        let actual = toks(reserved * percent / 100);
                        for ((limit, entries), id) in rates.iter().zip(ledger.iter_mut()).zip(&o.entries) {
                            let Some(r) = crate::quota::rate(limit) else { continue };
                            let idx = window_index(r.per, r.window, now);
                            let (res, real) = (o.ticket.charged.of(r.kind), actual.of(r.kind));
                            let e = &mut entries[*id];
                            if e.idx == idx || e.idx + 1 == idx {
                                e.amount = e.amount + real - res;
                            } else if real > res {
                                entries.push(Entry { idx, amount: real - res });
                            }
                        }
                        let done = reconcile(&store, &k, &limits, &o.ticket, &actual, now).unwrap();
                        prop_assert_eq!(done, Settled::Applied);
                    }
                }
            }
        }
    }
}
