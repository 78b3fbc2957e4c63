//! Tests of the shared-data loops: preparation, roster, select, affinity, account limits.
#![cfg(test)]

use super::*;

pub(super) fn names_of(
    store: &MemStore,
    c: &Config,
    n: usize,
    session: Option<&str>,
) -> Vec<String> {
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
