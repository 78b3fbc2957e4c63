//! Tests of key evidence, probes of disabled accounts and reset.
#![cfg(test)]

use super::*;

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
pub(super) fn lone(api: Api, disable_for_ms: u64) -> Config {
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
