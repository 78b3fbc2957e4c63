//! Property tests: parsers, observations, decoding and pick never panic or misbehave.
#![cfg(test)]

use super::*;

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
