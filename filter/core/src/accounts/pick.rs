//! Selection (pure): which account serves a request under the configured strategy, given
//! every account's health, the shared counter and the accounts already tried.

use super::*;
use crate::api::Api;
use crate::config::{Account, Strategy};
use crate::quota::Amounts;

/// The pure selection's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Index into the configured accounts.
    Pick { account: usize },
    /// Every account of the API that is not disabled is cooling: 429 with this
    /// `retry-after` (whole seconds ≥ 1 until the earliest recovery).
    AllCooling { retry_after_s: u64 },
    /// No account serves the API, or all that do are disabled (none with a probe due).
    NoAccount,
}

/// Chooses an account for one attempt.
///
/// Only accounts of `api` that are usable (ok, or cooling that has ended) or disabled with a
/// probe due (`Health::probe_due`: the caller must claim the probe) are candidates,
/// in three tiers tried in order: (0) not in `exclude` and with learned headroom for `need`
/// (unknown headroom counts as full); (1) not in `exclude` but lacking learned headroom
/// (the provider may still take it: learned headroom is a forecast, so this beats a
/// self-made 429), soonest ready first; (2) in `exclude` (already tried by an earlier
/// attempt of this request): reused rather than failing the request. Within tiers 0 and 2:
///
/// - `least_loaded`: the highest `weight × (0.05 + headroom fraction) / (1 + recent load)`,
///   so with no headroom learned picks spread in proportion to weight; ties to list order.
/// - `round_robin`: weighted rotation over the API's accounts by `rr_counter` (account `i`
///   owns `weight_i` consecutive counter values); an unavailable account's turn goes to the
///   next available one in list order.
/// - `priority`: the first in list order.
///
/// `states` is indexed like `accounts` (a missing entry reads as fresh).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub fn pick(
    accounts: &[Account],
    api: Api,
    need: &Amounts,
    strategy: Strategy,
    states: &[Health],
    rr_counter: u64,
    exclude: &[usize],
    now_ms: u64,
) -> Choice {
    let fresh = Health::default();
    let state = |i: usize| states.get(i).unwrap_or(&fresh);
    let ours = || {
        accounts
            .iter()
            .enumerate()
            .filter(move |(_, a)| a.provider == api)
    };
    let tier = |i: usize| -> Option<u8> {
        let h = state(i);
        if !h.pickable(now_ms) {
            None
        } else if exclude.contains(&i) {
            Some(2)
        } else if h.headroom(need, now_ms).is_none() {
            Some(1)
        } else {
            Some(0)
        }
    };
    for t in 0..3u8 {
        let members = || ours().filter(|(i, _)| tier(*i) == Some(t));
        let chosen = match (t, strategy) {
            (1, _) => members()
                .min_by_key(|(i, _)| (state(*i).ready_for(need, now_ms), *i))
                .map(|(i, _)| i),
            (_, Strategy::Priority) => members().next().map(|(i, _)| i),
            (_, Strategy::RoundRobin) => {
                let total: u64 = ours().map(|(_, a)| u64::from(a.weight.max(1))).sum();
                let mut pos = rr_counter.checked_rem(total).unwrap_or(0);
                let start = ours()
                    .position(|(_, a)| {
                        let w = u64::from(a.weight.max(1));
                        if pos < w {
                            true
                        } else {
                            pos -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                let n = ours().count();
                ours()
                    .cycle()
                    .skip(start)
                    .take(n)
                    .find(|(i, _)| tier(*i) == Some(t))
                    .map(|(i, _)| i)
            }
            (_, Strategy::LeastLoaded) => {
                let score = |i: usize, a: &Account| {
                    let h = state(i);
                    let fraction = h.headroom(need, now_ms).unwrap_or(0.0);
                    f64::from(a.weight.max(1)) * (0.05 + fraction) / (1.0 + h.load_at(now_ms))
                };
                let mut best: Option<(usize, f64)> = None;
                for (i, a) in members() {
                    let s = score(i, a);
                    if best.is_none_or(|(_, b)| s > b) {
                        best = Some((i, s));
                    }
                }
                best.map(|(i, _)| i)
            }
        };
        if let Some(account) = chosen {
            return Choice::Pick { account };
        }
    }
    match ours()
        .filter_map(|(i, _)| state(i).cooling_until(now_ms))
        .min()
    {
        Some(until) => Choice::AllCooling {
            retry_after_s: until.saturating_sub(now_ms).div_ceil(1000).max(1),
        },
        None => Choice::NoAccount,
    }
}
