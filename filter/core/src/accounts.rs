//! The upstream account pool: which account serves a request, the credential headers it
//! needs, and each account's health (ok / cooling / disabled, learned headroom) as learned
//! from the provider's responses. Pure decisions (`observe_response`, `Health::apply`,
//! `pick`) over state kept in shared data, and thin store loops (`prepare`, `select`,
//! `record`) that the host calls. See SPEC "Accounts" and "Stages and shared state".

use crate::api::Api;
use crate::config::Account;
pub use crate::key_evidence::{key_rejection, DisableReason};
use crate::provider;
use crate::store::Store;

/// Cooling after a 429 (or a rate-limit stream error) that names no time.
pub const RATE_LIMIT_COOLING_MS: u64 = 60_000;
/// Cooling after 529 / 503 overloaded.
pub const OVERLOADED_COOLING_MS: u64 = 10_000;
/// The shortest cooling: a 429 with `retry-after: 0` still rests the account for a second.
pub const MIN_COOLING_MS: u64 = 1_000;
/// The longest cooling any header can ask for (Anthropic's unified 7-day window, plus a day).
/// Anything further is garbage and is clamped.
pub const MAX_COOLING_MS: u64 = 8 * 86_400_000;
/// Learned headroom without a reset time is trusted for this long.
pub const HEADROOM_STALE_MS: u64 = 60_000;
/// A probe of a disabled account that has not reported back holds the account this long;
/// then another request may probe it.
pub const PROBE_RETRY_MS: u64 = 30_000;
/// Half-life of the recent-pick load that `least_loaded` spreads by.
pub const LOAD_HALF_LIFE_MS: u64 = 10_000;

/// The first account that serves `api`, in configuration order.
pub fn first_for(accounts: &[Account], api: Api) -> Option<usize> {
    accounts.iter().position(|a| a.provider == api)
}

/// The account for an unmetered request of `api` (model lists, `count_tokens`, pass-through
/// paths): the first that serves it and is not disabled (cooling is no reason to skip one:
/// these requests spend no rate). `None` when every one is disabled.
pub fn first_usable_for(
    store: &dyn Store,
    accounts: &[Account],
    api: Api,
    now_ms: u64,
) -> Option<usize> {
    accounts.iter().position(|a| {
        a.provider == api
            && read_health(store, a).map_or(true, |h| {
                !matches!(h.kind_at(now_ms), StateKind::Disabled | StateKind::Paused)
            })
    })
}

/// The credential header an account's provider expects, with its value.
pub fn credential(account: &Account) -> (&'static str, String) {
    provider::of(account.provider).credential(account.key.expose())
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

mod formats;
mod health;
mod observe;
mod pick;
mod record;
mod roster;
mod select;

pub use formats::*;
pub use health::*;
pub use observe::*;
pub use pick::*;
pub use record::*;
pub use roster::*;
pub use select::*;

#[cfg(test)]
mod tests;
