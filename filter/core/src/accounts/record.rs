//! Recording what a response said into an account's stored health with compare-and-swap,
//! resetting an account, and reading its health for the admin API.

use super::*;
use crate::config::Account;
use crate::store::{self, Decision, Store, StoreError, MAX_TRIES};

/// Runs `f` on an account's health with compare-and-swap.
pub(super) fn update_health(
    store: &dyn Store,
    account: &Account,
    mut f: impl FnMut(&mut Health),
) -> Result<Health, StoreError> {
    update_health_if(store, account, |h| {
        f(h);
        true
    })
    .map(|(h, _)| h)
}

/// Runs `f` on an account's health and writes the result with compare-and-swap when `f`
/// returns true (on a lost race, `f` runs again on the newer value). Returns the health
/// written, or read when `f` declined, and whether it was written.
pub(super) fn update_health_if(
    store: &dyn Store,
    account: &Account,
    f: impl FnMut(&mut Health) -> bool,
) -> Result<(Health, bool), StoreError> {
    let fresh = Health::fresh(account);
    update_stored_if(store, &health_key(&account.name), Some(fresh), f)
        .map(|r| r.unwrap_or((fresh, false)))
}

/// `update_health_if` on a health key: a missing key reads as `missing`, or (`None`) is left
/// alone (`Ok(None)`).
pub(super) fn update_stored_if(
    store: &dyn Store,
    key: &str,
    missing: Option<Health>,
    mut f: impl FnMut(&mut Health) -> bool,
) -> Result<Option<(Health, bool)>, StoreError> {
    store::update(store, key, MAX_TRIES, |old, out| {
        let Some(mut h) = old.map(Health::decode).or(missing) else {
            return Decision::Keep(None);
        };
        if !f(&mut h) {
            return Decision::Keep(Some((h, false)));
        }
        h.encode(out);
        Decision::Write(Some((h, true)))
    })
}

/// Applies an observation (from `observe_response`, `observe_error_body` or
/// `observe_stream_error`) to the account's health: 1 `get` + 1 `set`. The transition tells
/// the host when to log ("logged once": only when `changed()`) and what to set the
/// `tollgate_account_state` gauge to.
pub fn record(
    store: &dyn Store,
    account: &Account,
    obs: &Observation,
    now_ms: u64,
) -> Result<Transition, StoreError> {
    let mut t = None;
    let disable_for = account.disable_for.millis();
    update_health(store, account, |h| {
        t = Some(h.apply(obs, disable_for, now_ms))
    })?;
    t.ok_or(StoreError::Contended)
}

/// `record` for an account this instance does not configure, known by `name` only: the
/// downstream stage of a failover setup, which meters the stream and so finds its error
/// events, while the upstream stage picked the account (and its attempt ended before the
/// stream's last bytes reached the downstream stage). Only a health key that exists (made by
/// the stage that lists the account) is touched, and an observation that disables (it needs
/// the account's `disable_for`) is not applied: `Ok(None)` then.
pub fn record_named(
    store: &dyn Store,
    name: &str,
    obs: &Observation,
    now_ms: u64,
) -> Result<Option<Transition>, StoreError> {
    if obs.disable.is_some() {
        return Ok(None);
    }
    let mut t = None;
    let written = update_stored_if(store, &health_key(name), None, |h| {
        t = Some(h.apply(obs, 0, now_ms));
        true
    })?;
    Ok(written.and(t))
}

/// Returns an account to ok at once, whatever its state (`POST {admin.path}/accounts/{name}/
/// reset`): 1 `get` + 1 `set`. Learned headroom and counters stay. The transition is for the
/// answer, the log line and the `tollgate_account_state` gauge, as with `record`.
pub fn reset(store: &dyn Store, account: &Account, now_ms: u64) -> Result<Transition, StoreError> {
    let mut before = StateKind::Ok;
    let h = update_health(store, account, |h| {
        before = h.kind_at(now_ms);
        h.state = AccountState::Ok;
    })?;
    // A paused account stays paused: only a resume ends that.
    Ok(Transition {
        before,
        after: h.kind_at(now_ms),
        state: AccountState::Ok,
    })
}

/// Pauses (`paused`) or resumes an account (`POST {admin.path}/accounts/{name}/pause` and
/// `/resume`): 1 `get` + 1 `set`. A paused account keeps learning its health but is never
/// picked (nor probed); resumed, it is what that health says (ok, cooling or disabled). The
/// transition is for the answer, the log line and the `tollgate_account_state` gauge.
pub fn set_paused(
    store: &dyn Store,
    account: &Account,
    paused: bool,
    now_ms: u64,
) -> Result<Transition, StoreError> {
    let key = health_key(&account.name);
    pause_key(store, &key, Some(Health::fresh(account)), paused, now_ms)?
        .ok_or(StoreError::Contended)
}

/// `set_paused` for an account known by name only (from the roster): `Ok(None)` when its
/// health key does not exist.
pub fn set_paused_named(
    store: &dyn Store,
    name: &str,
    paused: bool,
    now_ms: u64,
) -> Result<Option<Transition>, StoreError> {
    pause_key(store, &health_key(name), None, paused, now_ms)
}

fn pause_key(
    store: &dyn Store,
    key: &str,
    missing: Option<Health>,
    paused: bool,
    now_ms: u64,
) -> Result<Option<Transition>, StoreError> {
    let mut before = StateKind::Ok;
    let written = update_stored_if(store, key, missing, |h| {
        before = h.kind_at(now_ms);
        h.paused = paused;
        true
    })?;
    Ok(written.map(|(h, _)| Transition {
        before,
        after: h.kind_at(now_ms),
        state: h.state,
    }))
}

/// Adds picks that `select` did not count (`Picked::counted`) and real tokens served to the
/// account's counters: 1 `get` + 1 `set`, none when both are 0.
pub fn record_totals(
    store: &dyn Store,
    account: &Account,
    requests: u64,
    tokens: u64,
) -> Result<(), StoreError> {
    if requests == 0 && tokens == 0 {
        return Ok(());
    }
    update_health(store, account, |h| {
        h.requests = h.requests.saturating_add(requests);
        h.tokens = h.tokens.saturating_add(tokens);
    })
    .map(|_| ())
}

/// An account's health for the admin API (1 `get`; a missing key reads as fresh).
pub fn read_health(store: &dyn Store, account: &Account) -> Result<Health, StoreError> {
    let (value, _) = store.get(&health_key(&account.name))?;
    Ok(value
        .as_deref()
        .map_or_else(|| Health::fresh(account), Health::decode))
}
