#![cfg(test)]
use super::*;
use crate::config::{Affinity, Config, Duration, Selection, Strategy};
use crate::key_evidence::samples;
use crate::limits::{Limit, LimitKind, Per, WindowKind};
use crate::provider::StreamError;
use crate::quota::Amounts;
use crate::store::{MemStore, StoreError};
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

mod evidence;
mod formats;
mod observe;
mod pause;
mod pick;
mod props;
mod select;
