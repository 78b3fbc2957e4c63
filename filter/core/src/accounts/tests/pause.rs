//! Tests of pausing and resuming an account (the admin API's account actions).
#![cfg(test)]

use super::evidence::lone;
use super::select::names_of;
use super::*;

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
