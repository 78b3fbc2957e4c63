//! Over-limit answers a worker remembers: the reference service's windows are fixed and
//! epoch-aligned and its counters only grow within one, so a descriptor that refused a
//! reservation with `limit_remaining` left refuses any larger one until its window ends. A
//! request that such a memory refuses is answered without a call; one that might fit asks.

use super::*;
use crate::store::FnvMap;

/// Descriptors remembered per worker (only those that refused; the model entry of a
/// descriptor is the client's, so the map must be bounded).
pub const REMEMBERED: usize = 1024;

/// The longest a remembered answer is trusted without asking the service again, whatever
/// its window: a limit raised, or counters reset, in the service reach a worker within it.
pub const TRUST_MS: u64 = 60_000;

/// What the service last said of one descriptor that refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    remaining: u64,
    limit: CurrentLimit,
    /// When the service's window ends (ms since the epoch), at most one window away.
    window_end_ms: u64,
    /// When this memory stops being used (the window's end or `TRUST_MS`, the sooner).
    trust_until_ms: u64,
}

/// One worker's remembered refusals, by descriptor (its encoded entries).
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    map: FnvMap<Vec<u8>, Remembered>,
}

impl Refusals {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Reads a live answer (`statuses` from `read_answer`, one per descriptor sent, at
    /// `now_ms`): a descriptor that refused is remembered with its `limit_remaining` and
    /// window end, when the service said both its limit's window and a positive
    /// `duration_until_reset` (capped at that window); any other answer for a remembered
    /// descriptor replaces or forgets what was remembered (the latest live answer wins).
    /// Not inlined into the reply's step (see `Flow::global_answer`).
    #[inline(never)]
    pub fn learn(
        &mut self,
        descriptors: &[Descriptor],
        checks: &[Check],
        statuses: &[DescriptorStatus],
        now_ms: u64,
    ) {
        if statuses.len() != checks.len() || descriptors.len() != checks.len() {
            return;
        }
        for ((d, ck), st) in descriptors.iter().zip(checks).zip(statuses) {
            let refused = refuses(st, ck);
            if !refused && self.map.is_empty() {
                continue;
            }
            let key = entries_key(d);
            let Some(m) = remember(st, now_ms) else {
                self.map.remove(&key);
                continue;
            };
            if let Some(old) = self.map.get_mut(&key) {
                *old = m;
            } else if refused {
                if self.map.len() >= REMEMBERED {
                    self.map.retain(|_, r| r.trust_until_ms > now_ms);
                }
                if self.map.len() < REMEMBERED {
                    self.map.insert(key, m);
                }
            }
        }
    }

    /// The refusal a live answer would give `checks` at `now_ms`, when a remembered
    /// descriptor has less remaining than its check needs; `None` to ask the service.
    pub fn check(
        &mut self,
        descriptors: &[Descriptor],
        checks: &[Check],
        now_ms: u64,
    ) -> Option<Rejection> {
        if self.map.is_empty() {
            return None;
        }
        let mut binding = Binding::default();
        for (index, (d, ck)) in descriptors.iter().zip(checks).enumerate() {
            let key = entries_key(d);
            let Some(m) = self.map.get(&key).copied() else {
                continue;
            };
            if now_ms >= m.trust_until_ms {
                self.map.remove(&key);
                continue;
            }
            if ck.need <= m.remaining {
                continue;
            }
            let limit = Some(m.limit.requests_per_unit);
            binding.add(Rejection {
                unit: Some(ck.unit),
                retry_after_s: m.window_end_ms.saturating_sub(now_ms).div_ceil(1000).max(1),
                index: Some(index),
                limit,
                per: m.limit.unit.per(),
                remaining: m.remaining,
                need: ck.need,
                should_retry: !hopeless(ck, limit),
            });
        }
        binding.finish()
    }
}

/// What to remember of a status: its limit's window must be known and the time until reset
/// positive; the window end is capped one window away.
fn remember(st: &DescriptorStatus, now_ms: u64) -> Option<Remembered> {
    let limit = st.current_limit?;
    let window_ms = limit.unit.window_s().saturating_mul(1000);
    let (s, n) = st.until_reset?;
    let (s, n) = (u64::try_from(s).ok()?, u64::try_from(n).ok()?);
    let until_ms = s
        .saturating_mul(1000)
        .saturating_add(n.div_ceil(1_000_000))
        .min(window_ms);
    if until_ms == 0 {
        return None;
    }
    let window_end_ms = now_ms.saturating_add(until_ms);
    Some(Remembered {
        remaining: st.limit_remaining,
        limit,
        window_end_ms,
        trust_until_ms: window_end_ms.min(now_ms.saturating_add(TRUST_MS)),
    })
}
