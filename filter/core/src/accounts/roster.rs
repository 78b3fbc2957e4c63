//! The pool's roster in shared data, so that an instance without the accounts (a failover
//! stage serving the admin API) can show and reset them by name.

use super::*;
use crate::api::Api;
use crate::config::Account;
use crate::store::{Store, StoreError};

/// The shared-data key of the pool's roster: `<name> <provider>` lines written at
/// configuration load by the instance that lists the accounts, so that an instance that does
/// not (the downstream stage of a failover setup, which serves the admin API) can show them.
pub const ROSTER_KEY: &str = "tollgate:accounts";

/// The most accounts a roster read returns (a configuration lists far fewer).
const MAX_ROSTER: usize = 1024;

/// An account as the roster names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub provider: Api,
}

fn roster_bytes(accounts: &[Account]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in accounts {
        out.extend_from_slice(a.name.as_bytes());
        out.push(b' ');
        out.extend_from_slice(a.provider.as_str().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Writes the roster of `accounts` unless it is stored already (1 `get`, and 1 `set` when it
/// changed); nothing when `accounts` is empty. Returns whether it wrote. Run in `on_configure`
/// (`prepare` does).
pub fn publish_roster(store: &dyn Store, accounts: &[Account]) -> Result<bool, StoreError> {
    if accounts.is_empty() {
        return Ok(false);
    }
    let want = roster_bytes(accounts);
    let (have, _) = store.get(ROSTER_KEY)?;
    if have.as_deref() == Some(want.as_slice()) {
        return Ok(false);
    }
    store.set(ROSTER_KEY, &want, 0).map(|()| true)
}

/// The roster another instance published (empty if none): lines that do not read as
/// `<name> <provider>` with a valid account name are skipped.
pub fn read_roster(store: &dyn Store) -> Vec<Listed> {
    let Ok((Some(bytes), _)) = store.get(ROSTER_KEY) else {
        return Vec::new();
    };
    let name_ok = |n: &str| {
        (1..=64).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| {
            let (name, provider) = line.split_once(' ')?;
            let provider = Api::from_name(provider)?;
            name_ok(name).then(|| Listed {
                name: name.to_owned(),
                provider,
            })
        })
        .take(MAX_ROSTER)
        .collect()
}

/// An account's health by name (1 `get`; a missing or unreadable key reads as fresh), for an
/// instance that knows it from the roster only.
pub fn read_health_named(store: &dyn Store, name: &str) -> Health {
    match store.get(&health_key(name)) {
        Ok((Some(v), _)) => Health::decode(&v),
        _ => Health::default(),
    }
}

/// `reset` for an account known by name only (from the roster): `Ok(None)` when its health
/// key does not exist.
pub fn reset_named(
    store: &dyn Store,
    name: &str,
    now_ms: u64,
) -> Result<Option<Transition>, StoreError> {
    let mut before = StateKind::Ok;
    let written = update_stored_if(store, &health_key(name), None, |h| {
        before = h.kind_at(now_ms);
        h.state = AccountState::Ok;
        true
    })?;
    Ok(written.map(|(h, _)| Transition {
        before,
        after: h.kind_at(now_ms),
        state: AccountState::Ok,
    }))
}
