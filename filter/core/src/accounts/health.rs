//! An account's health: its standing (ok / cooling / disabled), learned headroom per
//! dimension, the transitions observations cause, and its compact shared-data encoding.

use super::*;
use crate::codec::{self, Reader};
use crate::config::{Account, KeyMatcher};
use crate::key_evidence::DisableReason;
use crate::quota::Amounts;

/// An account's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccountState {
    #[default]
    Ok,
    /// Rests until this time (epoch ms); usable again from then on without any write.
    Cooling { until_ms: u64 },
    /// The provider said the key is invalid (`key_rejection`). Not picked until
    /// `probe_after_ms`; then one request at a time probes it (`select` moves `probe_after_ms`
    /// `PROBE_RETRY_MS` ahead as it sends one), and a 2xx makes it ok again.
    Disabled {
        reason: DisableReason,
        /// The status of the answer that disabled it.
        status: u16,
        /// When (epoch ms).
        since_ms: u64,
        /// From when a probe may go (epoch ms): `since_ms + accounts[].disable_for`, or
        /// `PROBE_RETRY_MS` after the last probe was sent.
        probe_after_ms: u64,
    },
}

/// `AccountState` without its data, as seen at some time: what the admin API and the
/// `tollgate_account_state` gauge show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    Ok,
    Cooling,
    Disabled,
    /// Paused by the admin API: never picked until resumed, whatever else it learns.
    Paused,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Ok => "ok",
            StateKind::Cooling => "cooling",
            StateKind::Disabled => "disabled",
            StateKind::Paused => "paused",
        }
    }

    /// The `tollgate_account_state` gauge value: 0 ok, 1 cooling, 2 disabled, 3 paused.
    pub fn gauge(self) -> i64 {
        match self {
            StateKind::Ok => 0,
            StateKind::Cooling => 1,
            StateKind::Disabled => 2,
            StateKind::Paused => 3,
        }
    }
}

/// The dimensions of learned headroom, in `Health::dims` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::Requests,
        Dimension::Tokens,
        Dimension::InputTokens,
        Dimension::OutputTokens,
    ];

    /// The name used in the provider headers and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::InputTokens => "input-tokens",
            Dimension::OutputTokens => "output-tokens",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == name)
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// What one request needs of this dimension.
    fn need(self, need: &Amounts) -> u64 {
        match self {
            Dimension::Requests => need.requests.max(1),
            Dimension::Tokens => need.tokens,
            Dimension::InputTokens => need.input_tokens,
            Dimension::OutputTokens => need.output_tokens,
        }
    }
}

/// One dimension of headroom as the provider last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dim {
    pub remaining: u64,
    /// The provider's limit, when it sent one.
    pub limit: Option<u64>,
    /// When the provider's window resets (epoch ms), when it said.
    pub reset_ms: Option<u64>,
    /// When this was learned (epoch ms).
    pub seen_ms: u64,
}

impl Dim {
    /// Still describes the account: before its reset, or fresh enough without one.
    pub fn valid(&self, now_ms: u64) -> bool {
        match self.reset_ms {
            Some(r) => now_ms < r,
            None => now_ms < self.seen_ms.saturating_add(HEADROOM_STALE_MS),
        }
    }

    /// When this dimension is known to be full again.
    fn ready_ms(&self) -> u64 {
        self.reset_ms
            .unwrap_or_else(|| self.seen_ms.saturating_add(HEADROOM_STALE_MS))
    }
}

/// Everything kept for one account under `tollgate:acct:<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    pub state: AccountState,
    /// Learned headroom by `Dimension` (`None`: never reported).
    pub dims: [Option<Dim>; 4],
    /// Attempts sent to the account (counted when picked, or by `record_totals`).
    pub requests: u64,
    /// Real tokens it served (counted by `record_totals`).
    pub tokens: u64,
    /// Recent picks, decaying with `LOAD_HALF_LIFE_MS`, in thousandths, as of `load_ms`.
    pub load_milli: u64,
    pub load_ms: u64,
    /// Tag of the key the state belongs to (see `key_tag`): a changed key resets the state.
    pub key_tag: u32,
    /// The last upstream status seen (0: none).
    pub last_status: u16,
    /// Paused by the admin API (`POST {admin.path}/accounts/{name}/pause`): the state above
    /// goes on being learned, but the account is not picked until it is resumed.
    pub paused: bool,
}

/// A state change caused by one observation, for the "logged once" rule and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub before: StateKind,
    pub after: StateKind,
    /// The account's state after the change (for the log line: until when it cools).
    pub state: AccountState,
}

impl Transition {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// 2: `Disabled` carries its reason, since and probe time.
pub(super) const HEALTH_VERSION: u8 = 2;
/// The flags bit of a paused account (a value without it reads as not paused).
const PAUSED_FLAG: u8 = 0b0100_0000;
/// Largest stored value accepted: anything longer is garbage.
pub(super) const MAX_HEALTH_BYTES: usize = 256;

impl Health {
    /// A fresh state for `account`.
    pub fn fresh(account: &Account) -> Health {
        Health {
            key_tag: key_tag(account),
            ..Health::default()
        }
    }

    /// The state at `now_ms` (a cooling that has ended reads as ok).
    pub fn kind_at(&self, now_ms: u64) -> StateKind {
        if self.paused {
            return StateKind::Paused;
        }
        match self.state {
            AccountState::Ok => StateKind::Ok,
            AccountState::Cooling { until_ms } if until_ms > now_ms => StateKind::Cooling,
            AccountState::Cooling { .. } => StateKind::Ok,
            AccountState::Disabled { .. } => StateKind::Disabled,
        }
    }

    /// Can take a request at `now_ms` (headroom aside).
    pub fn usable(&self, now_ms: u64) -> bool {
        self.kind_at(now_ms) == StateKind::Ok
    }

    /// Disabled, and a probe may go at `now_ms`.
    pub fn probe_due(&self, now_ms: u64) -> bool {
        !self.paused
            && matches!(self.state, AccountState::Disabled { probe_after_ms, .. } if probe_after_ms <= now_ms)
    }

    /// A candidate for `pick` at `now_ms`: usable, or disabled with a probe due (which
    /// `select` then claims).
    pub fn pickable(&self, now_ms: u64) -> bool {
        self.usable(now_ms) || self.probe_due(now_ms)
    }

    /// The cooling end, while cooling.
    pub fn cooling_until(&self, now_ms: u64) -> Option<u64> {
        match self.state {
            // A paused account is not waiting for a time: it waits for a resume.
            _ if self.paused => None,
            AccountState::Cooling { until_ms } if until_ms > now_ms => Some(until_ms),
            _ => None,
        }
    }

    /// Learned headroom still valid at `now_ms`.
    pub fn dim(&self, d: Dimension, now_ms: u64) -> Option<Dim> {
        self.dims
            .get(d.index())
            .copied()
            .flatten()
            .filter(|x| x.valid(now_ms))
    }

    /// `None` when the learned headroom lacks room for `need`; else the smallest fraction of
    /// a provider window left after it, in `[0, 1]` (1 when nothing is known: assume full).
    pub fn headroom(&self, need: &Amounts, now_ms: u64) -> Option<f64> {
        let mut fraction: f64 = 1.0;
        for d in Dimension::ALL {
            let Some(x) = self.dim(d, now_ms) else {
                continue;
            };
            let n = d.need(need);
            if x.remaining < n {
                return None;
            }
            let limit = x.limit.unwrap_or(x.remaining).max(x.remaining).max(1);
            fraction = fraction.min((x.remaining - n) as f64 / limit as f64);
        }
        Some(fraction.clamp(0.0, 1.0))
    }

    /// When the learned headroom has room for `need` again (for ordering accounts that lack it).
    pub(super) fn ready_for(&self, need: &Amounts, now_ms: u64) -> u64 {
        let mut ready = now_ms;
        for d in Dimension::ALL {
            if let Some(x) = self.dim(d, now_ms) {
                if x.remaining < d.need(need) {
                    ready = ready.max(x.ready_ms());
                }
            }
        }
        ready
    }

    /// The recent-pick load at `now_ms`.
    pub fn load_at(&self, now_ms: u64) -> f64 {
        let dt = now_ms.saturating_sub(self.load_ms) as f64;
        (self.load_milli as f64 / 1000.0) * 0.5f64.powf(dt / LOAD_HALF_LIFE_MS as f64)
    }

    /// Counts one attempt sent with `need`: the load, the request counter, and the learned
    /// headroom it will use up (so that concurrent picks see it before the response does).
    pub fn charge(&mut self, need: &Amounts, now_ms: u64) {
        let load = self.load_at(now_ms) + 1.0;
        // `as` saturates; the load stays far below u64 anyway.
        self.load_milli = (load * 1000.0) as u64;
        self.load_ms = now_ms;
        self.requests = self.requests.saturating_add(1);
        for d in Dimension::ALL {
            let n = d.need(need);
            if let Some(Some(x)) = self.dims.get_mut(d.index()) {
                if x.valid(now_ms) {
                    x.remaining = x.remaining.saturating_sub(n);
                }
            }
        }
    }

    /// Applies what a response (or a stream error) said; an invalid-key answer disables the
    /// account until `disable_for_ms` from now, a 2xx returns a disabled account to ok, and a
    /// disabled account does not cool. Returns the state change.
    pub fn apply(&mut self, obs: &Observation, disable_for_ms: u64, now_ms: u64) -> Transition {
        let before = self.kind_at(now_ms);
        if obs.status != 0 {
            self.last_status = u16::try_from(obs.status).unwrap_or(u16::MAX);
        }
        let mut reported_reset: Option<u64> = None;
        for (slot, update) in self.dims.iter_mut().zip(obs.dims.iter()) {
            let Some(u) = update else { continue };
            if let Some(r) = u.reset_ms {
                reported_reset = Some(reported_reset.map_or(r, |m| m.max(r)));
            }
            let Some(remaining) = u.remaining else {
                continue;
            };
            // A limit sent once stays known while the window lasts.
            let limit = u
                .limit
                .or_else(|| slot.filter(|x| x.valid(now_ms)).and_then(|x| x.limit));
            *slot = Some(Dim {
                remaining,
                limit,
                reset_ms: u.reset_ms,
                seen_ms: now_ms,
            });
        }
        let disabled = matches!(self.state, AccountState::Disabled { .. });
        match obs.disable {
            Some(reason) => {
                self.state = AccountState::Disabled {
                    reason,
                    status: u16::try_from(obs.status).unwrap_or(u16::MAX),
                    since_ms: now_ms,
                    probe_after_ms: now_ms.saturating_add(disable_for_ms),
                }
            }
            // The key works (a probe's answer, or one to a request sent before the disabling).
            None if disabled && (200..300).contains(&obs.status) => self.state = AccountState::Ok,
            None => {}
        }
        let still_disabled = matches!(self.state, AccountState::Disabled { .. });
        if let (Some(cool), false) = (obs.cool, still_disabled) {
            let until = match cool {
                Cool::Until(t) => t,
                Cool::Overloaded => now_ms.saturating_add(OVERLOADED_COOLING_MS),
                Cool::RateLimited => self
                    .exhausted_reset(now_ms)
                    .or(reported_reset.filter(|r| *r > now_ms))
                    .unwrap_or_else(|| now_ms.saturating_add(RATE_LIMIT_COOLING_MS)),
            };
            let until = until.clamp(
                now_ms.saturating_add(MIN_COOLING_MS),
                now_ms.saturating_add(MAX_COOLING_MS),
            );
            let until = self.cooling_until(now_ms).map_or(until, |u| u.max(until));
            self.state = AccountState::Cooling { until_ms: until };
        }
        Transition {
            before,
            after: self.kind_at(now_ms),
            state: self.state,
        }
    }

    /// The latest reset among dimensions known to be used up.
    fn exhausted_reset(&self, now_ms: u64) -> Option<u64> {
        Dimension::ALL
            .into_iter()
            .filter_map(|d| self.dim(d, now_ms))
            .filter(|x| x.remaining == 0)
            .filter_map(|x| x.reset_ms)
            .max()
    }

    /// Decodes a stored value; anything malformed, of another version or too long reads as
    /// a fresh state (with key tag 0, which the next `prepare` replaces).
    pub fn decode(bytes: &[u8]) -> Health {
        Health::try_decode(bytes).unwrap_or_default()
    }

    fn try_decode(bytes: &[u8]) -> Option<Health> {
        if bytes.len() > MAX_HEALTH_BYTES {
            return None;
        }
        let mut r = Reader::new(bytes);
        if r.byte().ok()? != HEALTH_VERSION {
            return None;
        }
        let flags = r.byte().ok()?;
        let key_tag = u32::try_from(r.varint().ok()?).ok()?;
        let state = match flags & 0b11 {
            0 => AccountState::Ok,
            1 => AccountState::Cooling {
                until_ms: r.varint().ok()?,
            },
            2 => AccountState::Disabled {
                reason: DisableReason::from_code(r.varint().ok()?)?,
                status: u16::try_from(r.varint().ok()?).ok()?,
                since_ms: r.varint().ok()?,
                probe_after_ms: r.varint().ok()?,
            },
            _ => return None,
        };
        let mut h = Health {
            state,
            key_tag,
            requests: r.varint().ok()?,
            tokens: r.varint().ok()?,
            load_milli: r.varint().ok()?,
            load_ms: r.varint().ok()?,
            last_status: u16::try_from(r.varint().ok()?).ok()?,
            dims: [None; 4],
            paused: flags & PAUSED_FLAG != 0,
        };
        for (i, slot) in h.dims.iter_mut().enumerate() {
            if flags & (0b100 << i) != 0 {
                *slot = Some(Dim {
                    remaining: r.varint().ok()?,
                    limit: r.opt().ok()?,
                    reset_ms: r.opt().ok()?,
                    seen_ms: r.varint().ok()?,
                });
            }
        }
        if flags & 0b1000_0000 != 0 || !r.is_empty() {
            return None;
        }
        Some(h)
    }

    /// Compact encoding: version, flags (state, which dimensions), then LEB128 varints.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(HEALTH_VERSION);
        let mut flags = match self.state {
            AccountState::Ok => 0,
            AccountState::Cooling { .. } => 1,
            AccountState::Disabled { .. } => 2,
        };
        for (i, d) in self.dims.iter().enumerate() {
            if d.is_some() {
                flags |= 0b100 << i;
            }
        }
        if self.paused {
            flags |= PAUSED_FLAG;
        }
        out.push(flags);
        codec::put_varint(out, u64::from(self.key_tag));
        match self.state {
            AccountState::Ok => {}
            AccountState::Cooling { until_ms } => codec::put_varint(out, until_ms),
            AccountState::Disabled {
                reason,
                status,
                since_ms,
                probe_after_ms,
            } => {
                codec::put_varint(out, u64::from(reason.code()));
                codec::put_varint(out, u64::from(status));
                codec::put_varint(out, since_ms);
                codec::put_varint(out, probe_after_ms);
            }
        }
        for v in [self.requests, self.tokens, self.load_milli, self.load_ms] {
            codec::put_varint(out, v);
        }
        codec::put_varint(out, u64::from(self.last_status));
        for d in self.dims.iter().flatten() {
            codec::put_varint(out, d.remaining);
            codec::put_opt(out, d.limit);
            codec::put_opt(out, d.reset_ms);
            codec::put_varint(out, d.seen_ms);
        }
    }
}

/// A short tag of the account's key, stored with its state so that a configuration that
/// changes the key (after a 401, say) starts the account afresh. Not reversible.
pub fn key_tag(account: &Account) -> u32 {
    let d = KeyMatcher::digest(account.key.expose());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}
