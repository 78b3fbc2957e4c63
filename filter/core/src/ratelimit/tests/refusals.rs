//! Remembered refusals: what a hostile or odd service can make a worker remember, and that
//! a remembered answer only ever refuses what the live one would.
#![cfg(test)]

use super::*;

const NOW: u64 = 1_700_000_000_000;
const HOUR: u64 = 3;

/// team-a's tokens and requests descriptors, and the checks of a reservation of `tokens`.
fn request(tokens: u64) -> (Vec<Descriptor>, Vec<Check>) {
    let a = admission_request(
        "tollgate",
        "team-a",
        None,
        &[Unit::Tokens, Unit::Requests],
        &amounts(tokens, 0),
    );
    (
        descriptors_for("team-a", None, &[Unit::Tokens, Unit::Requests]),
        a.checks,
    )
}

/// Learns the answer `statuses` to a request of `tokens` at `now`; returns the decision.
fn answer(rf: &mut Refusals, tokens: u64, statuses: &[St], now: u64) -> Decision {
    let (d, checks) = request(tokens);
    let body = encode_response(
        if statuses.iter().any(|s| s.code == OVER) {
            OVER
        } else {
            OK
        },
        statuses,
    );
    let (decision, seen) = read_answer(&body, &checks);
    rf.learn(&d, &checks, &seen, now);
    decision
}

fn check(rf: &mut Refusals, tokens: u64, now: u64) -> Option<Rejection> {
    let (d, checks) = request(tokens);
    rf.check(&d, &checks, now)
}

/// tokens 1000/minute with `remaining`, `code`, reset in `reset` s; requests OK.
fn tokens(code: u64, remaining: u64, reset: i64) -> [St; 2] {
    [
        st(code, Some((1000, MINUTE)), remaining, reset),
        st(OK, Some((50, MINUTE)), 40, reset),
    ]
}

#[test]
fn a_short_window_refuses_a_larger_reservation_locally_as_the_service_did() {
    let mut rf = Refusals::default();
    let live = match answer(&mut rf, 300, &tokens(OK, 120, 30), NOW) {
        Decision::Reject(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(rf.len(), 1, "only the refusing descriptor is remembered");
    let cached = check(&mut rf, 300, NOW).expect("refused without a call");
    assert_eq!(
        cached, live,
        "the same refusal: unit, limit, window, remaining, retry"
    );
    // Ten seconds on, the retry is ten seconds shorter.
    let later = check(&mut rf, 300, NOW + 10_000).unwrap();
    assert_eq!(later.retry_after_s, 20);
    assert_eq!(check(&mut rf, 121, NOW + 29_999).unwrap().retry_after_s, 1);
}

#[test]
fn a_reservation_that_might_fit_still_asks_the_service() {
    let mut rf = Refusals::default();
    answer(&mut rf, 300, &tokens(OK, 120, 30), NOW);
    assert_eq!(check(&mut rf, 120, NOW), None);
    assert_eq!(check(&mut rf, 1, NOW), None);
}

#[test]
fn the_memory_ends_with_the_window() {
    let mut rf = Refusals::default();
    answer(&mut rf, 300, &tokens(OVER, 0, 30), NOW);
    assert!(check(&mut rf, 300, NOW + 29_999).is_some());
    assert_eq!(check(&mut rf, 300, NOW + 30_000), None);
    assert!(rf.is_empty(), "an expired entry is dropped when met");
}

#[test]
fn an_absurd_duration_is_capped_at_the_window_and_trusted_a_minute_at_most() {
    let mut rf = Refusals::default();
    // Ten years for a per-minute limit.
    answer(&mut rf, 300, &tokens(OVER, 0, 315_360_000), NOW);
    assert_eq!(check(&mut rf, 300, NOW).unwrap().retry_after_s, 60);
    assert_eq!(check(&mut rf, 300, NOW + 60_000), None);
    // An hour's window: the retry says the window's end, but the service is asked again
    // after a minute (a limit raised there reaches this worker).
    let mut rf = Refusals::default();
    let (d, checks) = request(300);
    let body = encode_response(
        OVER,
        &[
            st(OVER, Some((1000, HOUR)), 0, 3000),
            st(OK, Some((50, HOUR)), 40, 3000),
        ],
    );
    let (_, seen) = read_answer(&body, &checks);
    rf.learn(&d, &checks, &seen, NOW);
    assert_eq!(
        rf.check(&d, &checks, NOW + 59_999).unwrap().retry_after_s,
        2941
    );
    assert_eq!(rf.check(&d, &checks, NOW + TRUST_MS), None);
}

#[test]
fn zero_negative_absent_or_unbounded_durations_are_not_remembered() {
    let cases: Vec<(&str, St)> = vec![
        ("zero", st(OVER, Some((1000, MINUTE)), 0, 0)),
        ("negative", st(OVER, Some((1000, MINUTE)), 0, -5)),
        (
            "absent",
            St {
                reset: None,
                ..st(OVER, Some((1000, MINUTE)), 0, 30)
            },
        ),
        (
            "negative nanos",
            St {
                reset: Some((0, -1)),
                ..st(OVER, Some((1000, MINUTE)), 0, 30)
            },
        ),
        ("no limit said", st(OVER, None, 0, 30)),
        ("unknown window", st(OVER, Some((1000, 0)), 0, 30)),
        (
            "window unit past the enum",
            st(OVER, Some((1000, 99)), 0, 30),
        ),
    ];
    for (what, s) in cases {
        let mut rf = Refusals::default();
        let d = answer(&mut rf, 300, &[s, st(OK, Some((50, MINUTE)), 40, 30)], NOW);
        assert!(matches!(d, Decision::Reject(_)), "{what}: live refusal");
        assert!(rf.is_empty(), "{what}: remembered");
        assert_eq!(check(&mut rf, 300, NOW), None, "{what}");
    }
    // Nanos alone are a positive duration: one millisecond, rounded up.
    let mut rf = Refusals::default();
    let s = St {
        reset: Some((0, 1)),
        ..st(OVER, Some((1000, MINUTE)), 0, 30)
    };
    answer(&mut rf, 300, &[s, st(OK, Some((50, MINUTE)), 40, 30)], NOW);
    assert!(check(&mut rf, 300, NOW).is_some());
    assert_eq!(check(&mut rf, 300, NOW + 1), None);
}

#[test]
fn a_status_count_mismatch_or_an_error_remembers_nothing() {
    let mut rf = Refusals::default();
    let (d, checks) = request(300);
    let short = encode_response(OVER, &[st(OVER, Some((1000, MINUTE)), 0, 30)]);
    let (decision, seen) = read_answer(&short, &checks);
    assert!(matches!(
        decision,
        Decision::Reject(Rejection { index: None, .. })
    ));
    rf.learn(&d, &checks, &seen, NOW);
    assert!(rf.is_empty());
    let (decision, seen) = read_answer(&[0xff, 0xff], &checks);
    assert!(matches!(decision, Decision::Error(_)));
    rf.learn(&d, &checks, &seen, NOW);
    // Statuses for other descriptors than those asked about are not trusted either.
    let (_, seen) = read_answer(&encode_response(OK, &tokens(OVER, 0, 30)), &checks);
    rf.learn(&d[..1], &checks, &seen, NOW);
    assert!(rf.is_empty());
}

#[test]
fn the_latest_live_answer_wins_when_the_service_changes_its_mind() {
    let mut rf = Refusals::default();
    answer(&mut rf, 300, &tokens(OK, 200, 30), NOW);
    assert!(check(&mut rf, 250, NOW).is_some());
    // A smaller reservation asks; the service now says the window is full.
    assert!(check(&mut rf, 150, NOW).is_none());
    answer(&mut rf, 150, &tokens(OVER, 0, 29), NOW + 1000);
    assert_eq!(check(&mut rf, 150, NOW + 1000).unwrap().remaining, 0);
    // Its counters were reset (or the limit raised): it admits with room to spare, and the
    // memory follows it rather than refusing what the service would now admit.
    let mut rf2 = Refusals::default();
    answer(&mut rf2, 300, &tokens(OK, 200, 30), NOW);
    answer(&mut rf2, 100, &tokens(OK, 900, 30), NOW + 1000);
    assert_eq!(check(&mut rf2, 800, NOW + 1000), None);
    assert!(check(&mut rf2, 901, NOW + 1000).is_some());
    // It stops limiting the descriptor at all: forgotten.
    answer(
        &mut rf2,
        100,
        &[st(OK, None, 0, 0), st(OK, Some((50, MINUTE)), 40, 30)],
        NOW + 2000,
    );
    assert!(rf2.is_empty());
    assert_eq!(check(&mut rf2, 5000, NOW + 2000), None);
}

#[test]
fn an_over_limit_answer_with_room_left_refuses_only_what_does_not_fit() {
    // OVER_LIMIT with 4e9 remaining is nonsense; the memory never refuses a reservation
    // that fits the remaining it was told (it can refuse less than the service, never more).
    let mut rf = Refusals::default();
    answer(&mut rf, 300, &tokens(OVER, 4_000_000_000, 30), NOW);
    assert_eq!(check(&mut rf, 300, NOW), None);
}

#[test]
fn a_full_request_limit_refuses_the_next_request() {
    let mut rf = Refusals::default();
    let statuses = [
        st(OK, Some((1000, MINUTE)), 900, 30),
        st(OVER, Some((3, MINUTE)), 0, 30),
    ];
    answer(&mut rf, 10, &statuses, NOW);
    let r = check(&mut rf, 10, NOW).unwrap();
    assert_eq!(
        (r.unit, r.index, r.limit),
        (Some(Unit::Requests), Some(1), Some(3))
    );
    assert!(r.should_retry);
    // A requests limit of 0 cannot be waited out.
    let mut rf = Refusals::default();
    answer(
        &mut rf,
        10,
        &[statuses[0].clone(), st(OVER, Some((0, MINUTE)), 0, 30)],
        NOW,
    );
    assert!(!check(&mut rf, 10, NOW).unwrap().should_retry);
}

#[test]
fn a_reservation_larger_than_the_limit_is_refused_as_hopeless() {
    let mut rf = Refusals::default();
    answer(&mut rf, 300, &tokens(OK, 120, 30), NOW);
    let r = check(&mut rf, 5000, NOW).unwrap();
    assert!(!r.should_retry);
    assert_eq!(r.need, 5000);
}

#[test]
fn the_map_is_bounded_and_makes_room_only_from_expired_entries() {
    let mut rf = Refusals::default();
    let checks = [Check {
        unit: Unit::Tokens,
        need: 10,
    }];
    let over = encode_response(OVER, &[st(OVER, Some((1000, MINUTE)), 0, 30)]);
    let (_, seen) = read_answer(&over, &checks);
    for i in 0..REMEMBERED + 10 {
        let d = descriptors_for("team-a", Some(&format!("m{i}")), &[Unit::Tokens]);
        let d = &d[1..];
        rf.learn(d, &checks, &seen, NOW);
    }
    assert_eq!(rf.len(), REMEMBERED);
    // Past the windows of the first ones, a new refusal finds room again.
    let d = descriptors_for("team-a", Some("late"), &[Unit::Tokens]);
    rf.learn(&d[1..], &checks, &seen, NOW + 30_000);
    assert_eq!(rf.len(), 1);
    assert!(rf.check(&d[1..], &checks, NOW + 30_001).is_some());
}
