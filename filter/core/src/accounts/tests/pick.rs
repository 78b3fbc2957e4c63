//! Tests of the pure selection under each strategy.
#![cfg(test)]

use super::*;

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
