//! The upstream account pool: which account serves a request, the credential headers it
//! needs, and each account's health (ok / cooling / disabled, learned headroom) as learned
//! from the provider's responses. Pure decisions (`observe_response`, `Health::apply`,
//! `pick`) over state kept in shared data, and thin store loops (`prepare`, `select`,
//! `record`) that the host calls. See SPEC "Accounts" and "Stages and shared state".

use crate::api::Api;
use crate::civil::epoch_ms;
use crate::codec::{self, Reader};
use crate::config::{Account, Affinity, Config, KeyMatcher, Strategy};
pub use crate::key_evidence::{key_rejection, DisableReason};
use crate::provider::{self, RateHeader, StreamError};
use crate::quota::{self, Admission, Amounts, OwnerKey, Ticket};
use crate::store::{self, Decision, SlotTable, Store, StoreError, MAX_TRIES};

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

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

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

    fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == name)
    }

    fn index(self) -> usize {
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
const HEALTH_VERSION: u8 = 2;
/// The flags bit of a paused account (a value without it reads as not paused).
const PAUSED_FLAG: u8 = 0b0100_0000;
/// Largest stored value accepted: anything longer is garbage.
const MAX_HEALTH_BYTES: usize = 256;

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
    fn ready_for(&self, need: &Amounts, now_ms: u64) -> u64 {
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

// ---------------------------------------------------------------------------------------------
// Observations: what a response or a stream error says about the account
// ---------------------------------------------------------------------------------------------

/// How long to cool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cool {
    /// Until this time (epoch ms), clamped to `[now + 1 s, now + MAX_COOLING_MS]`.
    Until(u64),
    /// Rate limited without a time: until the reset of a used-up dimension if one is known
    /// (learned now or earlier), else the latest reset this response reported, else 60 s.
    RateLimited,
    /// 10 s.
    Overloaded,
}

/// One dimension as a response reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DimUpdate {
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    pub reset_ms: Option<u64>,
}

/// What one upstream response (or stream error) says; apply it with `Health::apply` or
/// `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// The HTTP status (0 for a stream error).
    pub status: u32,
    pub cool: Option<Cool>,
    /// The provider said the key is invalid (`observe_error_body`).
    pub disable: Option<DisableReason>,
    /// By `Dimension`.
    pub dims: [Option<DimUpdate>; 4],
}

impl Observation {
    /// Whether applying it changes anything but the last status (the host may skip the
    /// store round trip otherwise).
    pub fn is_empty(&self) -> bool {
        self.cool.is_none() && self.disable.is_none() && self.dims.iter().all(Option::is_none)
    }
}

/// Reads an upstream response's status and headers (names in any case).
///
/// - 429: cooling until `retry-after` (seconds or HTTP date), else a rejected
///   `anthropic-ratelimit-unified-*` window's reset, else `anthropic-ratelimit-unified-reset`
///   unless `-unified-status` says `allowed…`, else `Cool::RateLimited` (the
///   `anthropic-ratelimit-*-reset` / `x-ratelimit-reset-*` times, else 60 s).
/// - 529, 503: cooling for `retry-after` if sent, else 10 s.
/// - 401, 403: nothing by itself (the body decides: `observe_error_body`).
/// - 2xx: a disabled account is ok again once this is recorded (see `Picked::probe`).
/// - Any status with `anthropic-ratelimit-unified-status: rejected` (or a rejected
///   `-unified-<window>-status`): cooling until that window's reset (epoch seconds).
/// - Headroom from `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
///   {remaining,limit,reset}` and `x-ratelimit-{remaining,limit,reset}-{requests,tokens}`.
pub fn observe_response<K: AsRef<str>, V: AsRef<str>>(
    status: u32,
    headers: &[(K, V)],
    now_ms: u64,
) -> Observation {
    let mut obs = Observation {
        status,
        ..Observation::default()
    };
    let mut retry_after = None;
    let mut unified_rejected = false;
    // The provider said the unified limit still allows (`allowed`, `allowed_warning`).
    let mut unified_allowed = false;
    let mut unified_reset = None;
    // Rejected unified windows (`5h`, `7d`, …) and each window's reset, matched by name.
    let mut windows: Vec<(String, bool, Option<u64>)> = Vec::new();
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref().trim());
        if name.len() > 96 || value.len() > 128 {
            continue;
        }
        let name = name.to_ascii_lowercase();
        if name == "retry-after" {
            retry_after = parse_retry_after(value, now_ms);
            continue;
        }
        match provider::rate_header(&name) {
            Some(RateHeader::Unified {
                window: None,
                field,
            }) => match field {
                "status" => {
                    unified_rejected = value.eq_ignore_ascii_case("rejected");
                    unified_allowed = starts_with_ignore_case(value.as_bytes(), b"allowed");
                }
                "reset" => unified_reset = parse_reset(value, now_ms),
                _ => {}
            },
            Some(RateHeader::Unified {
                window: Some(window),
                field,
            }) => {
                let entry = match windows.iter().position(|w| w.0 == window) {
                    Some(i) => windows.get_mut(i),
                    None if windows.len() < 8 => {
                        windows.push((window.to_owned(), false, None));
                        windows.last_mut()
                    }
                    None => None,
                };
                let Some(entry) = entry else { continue };
                match field {
                    "status" => entry.1 = value.eq_ignore_ascii_case("rejected"),
                    "reset" => entry.2 = parse_reset(value, now_ms),
                    _ => {}
                }
            }
            Some(RateHeader::Dim { dim, field }) => learn(&mut obs, dim, field, value, now_ms),
            None => {}
        }
    }
    let rejected_window_reset = windows
        .iter()
        .filter(|w| w.1)
        .map(|w| w.2.or(unified_reset))
        .max()
        .flatten();
    let any_rejected = unified_rejected || windows.iter().any(|w| w.1);
    let unified_until = if unified_rejected {
        rejected_window_reset.max(unified_reset)
    } else {
        rejected_window_reset
    };
    match status {
        // A bare unified reset names when this 429 ends, unless the unified limit allows.
        429 => {
            obs.cool = Some(
                retry_after
                    .or(unified_until)
                    .or(unified_reset.filter(|_| !unified_allowed))
                    .map_or(Cool::RateLimited, Cool::Until),
            )
        }
        503 | 529 => obs.cool = Some(retry_after.map_or(Cool::Overloaded, Cool::Until)),
        _ if any_rejected => obs.cool = Some(unified_until.map_or(Cool::RateLimited, Cool::Until)),
        _ => {}
    }
    obs
}

/// Reads an error answer's body (status ≥ 400, its first 64 KB, decoded; see `key_rejection`)
/// from an account of `api`: an observation that disables the account when the provider said
/// the key is invalid, else an empty one. Record it (`record`) when it is not empty.
pub fn observe_error_body(api: Api, status: u32, body: &[u8]) -> Observation {
    Observation {
        status,
        disable: key_rejection(api, status, body),
        ..Observation::default()
    }
}

/// Not inlined into `observe_response` (its one caller): the wasm is smaller so.
#[inline(never)]
fn learn(obs: &mut Observation, dim: &str, field: &str, value: &str, now_ms: u64) {
    let Some(d) = Dimension::from_name(dim) else {
        return;
    };
    let Some(slot) = obs.dims.get_mut(d.index()) else {
        return;
    };
    let u = slot.get_or_insert_with(DimUpdate::default);
    match field {
        "remaining" => u.remaining = parse_count(value),
        "limit" => u.limit = parse_count(value),
        "reset" => u.reset_ms = parse_reset(value, now_ms),
        _ => {}
    }
}

/// What an error event inside a 200 stream says (its class: `provider::classify_stream_error`):
/// a rate limit cools 60 s or until a known reset, an overload 10 s; anything else changes
/// nothing.
pub fn observe_stream_error(class: StreamError) -> Observation {
    let cool = match class {
        StreamError::RateLimited => Some(Cool::RateLimited),
        StreamError::Overloaded => Some(Cool::Overloaded),
        StreamError::Other => None,
    };
    Observation {
        cool,
        ..Observation::default()
    }
}

// ---- header value formats (total functions: bounded work, no panics) ------------------------

/// A count such as `"4000"` (a fraction, `"4000.0"`, is truncated).
pub fn parse_count(v: &str) -> Option<u64> {
    let v = v.trim();
    let int = v.split_once('.').map_or(v, |(a, _)| a);
    if int.is_empty() || int.len() > 20 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(int.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// `<digits>[.<digits>]` seconds as milliseconds, rounded up.
pub fn parse_seconds_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut ms = int
        .bytes()
        .fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
        .saturating_mul(1000);
    let mut scale = 100;
    for (i, b) in frac.bytes().enumerate() {
        let d = u64::from(b - b'0');
        if i < 3 {
            ms = ms.saturating_add(d * scale);
            scale /= 10;
        } else if d != 0 {
            ms = ms.saturating_add(1);
            break;
        }
    }
    Some(ms)
}

/// A Go-style duration as OpenAI sends it (`1s`, `6m0s`, `20ms`, `1h2m3.5s`, `0.5s`), in
/// milliseconds rounded up. Units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, `d`. A bare number is
/// seconds.
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 64 {
        return None;
    }
    if let Some(ms) = parse_seconds_ms(v) {
        return Some(ms);
    }
    let mut rest = v;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        // The number in milliseconds-of-seconds precision is enough: scale its
        // `parse_seconds_ms` reading (1/1000 units) by the unit.
        let thousandths = u128::from(parse_seconds_ms(num)?);
        total_ns = total_ns.saturating_add(thousandths.saturating_mul(unit_ns) / 1000);
        rest = after;
    }
    Some(u64::try_from(total_ns.div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(n)?)?;
    if !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0')))
}

/// RFC 3339 (`2024-05-01T12:00:30Z`, `…30.123+02:00`, `t`/space separator, no zone = UTC)
/// as epoch ms.
pub fn parse_rfc3339_ms(v: &str) -> Option<u64> {
    let b = v.trim().as_bytes();
    if b.len() < 19 || b.len() > 40 {
        return None;
    }
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let y = i64::from(digits(b, 0, 4)?);
    let (mo, d) = (digits(b, 5, 2)?, digits(b, 8, 2)?);
    let (h, mi, s) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    let mut at = 19;
    let mut ms = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                ms = ms * 10 + u32::from(b.get(at).copied().unwrap_or(b'0') - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    let offset_s: i64 = match b.get(at) {
        None => 0,
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) => {
            let oh = i64::from(digits(b, at + 1, 2)?);
            let om = match (b.get(at + 3), b.len() - at) {
                (Some(b':'), 6) => i64::from(digits(b, at + 4, 2)?),
                (_, 5) => i64::from(digits(b, at + 3, 2)?),
                (_, 3) => 0,
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *c == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let local = epoch_ms(y, mo, d, h, mi, s, ms)?;
    let off_ms = offset_s.unsigned_abs() * 1000;
    if offset_s >= 0 {
        local.checked_sub(off_ms)
    } else {
        local.checked_add(off_ms)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month_of(tok: &str) -> Option<u32> {
    if tok.len() < 3 || tok.len() > 9 {
        return None;
    }
    let t = tok.to_ascii_lowercase();
    let full = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    (0u32..12)
        .find(|&i| {
            let i = i as usize;
            MONTHS.get(i).is_some_and(|m| *m == t) || full.get(i).is_some_and(|m| *m == t)
        })
        .map(|i| i + 1)
}

/// An HTTP date (RFC 9110: IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, obsolete RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`) as epoch ms.
pub fn parse_http_date_ms(v: &str) -> Option<u64> {
    if v.len() > 64 {
        return None;
    }
    let (mut day, mut month, mut year, mut time) = (None, None, None, None);
    for tok in v.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        let b = tok.as_bytes();
        if tok.contains(':') {
            if b.len() != 8 || b.get(2) != Some(&b':') || b.get(5) != Some(&b':') || time.is_some()
            {
                return None;
            }
            time = Some((digits(b, 0, 2)?, digits(b, 3, 2)?, digits(b, 6, 2)?));
        } else if b.iter().all(u8::is_ascii_digit) {
            let n = i64::from(digits(b, 0, b.len().min(4))?);
            match (day, year, b.len()) {
                (None, _, 1 | 2) => day = Some(u32::try_from(n).ok()?),
                (Some(_), None, 4) => year = Some(n),
                // RFC 9110: a two-digit year more than 50 years ahead is in the past.
                (Some(_), None, 2) => year = Some(if n < 70 { 2000 + n } else { 1900 + n }),
                _ => return None,
            }
        } else if b.iter().all(u8::is_ascii_alphabetic) {
            if let Some(m) = month_of(tok) {
                if month.replace(m).is_some() {
                    return None;
                }
            }
            // Weekday names and `GMT` carry nothing.
        } else {
            return None;
        }
    }
    let (h, mi, s) = time?;
    epoch_ms(year?, month?, day?, h, mi, s, 0)
}

/// `retry-after`: seconds (fractions tolerated) or an HTTP date, as an absolute epoch ms.
pub fn parse_retry_after(v: &str, now_ms: u64) -> Option<u64> {
    match parse_seconds_ms(v) {
        Some(ms) => Some(now_ms.saturating_add(ms)),
        None => parse_http_date_ms(v),
    }
}

/// Any reset header as an absolute epoch ms: RFC 3339 (`anthropic-ratelimit-*-reset`), a
/// duration (`x-ratelimit-reset-*`: `6m0s`), an HTTP date, or a bare number, read as epoch
/// ms above 10^12, epoch seconds above 10^9 (`anthropic-ratelimit-unified-reset`), else
/// seconds from now.
pub fn parse_reset(v: &str, now_ms: u64) -> Option<u64> {
    let v = v.trim();
    if let Some(ms) = parse_seconds_ms(v) {
        return Some(if ms > 1_000_000_000_000_000 {
            ms / 1000
        } else if ms > 1_000_000_000_000 {
            ms
        } else {
            now_ms.saturating_add(ms)
        });
    }
    parse_rfc3339_ms(v)
        .or_else(|| parse_duration_ms(v).map(|d| now_ms.saturating_add(d)))
        .or_else(|| parse_http_date_ms(v))
}

// ---------------------------------------------------------------------------------------------
// Selection (pure)
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Shared data: keys, preparation, and the per-request loops
// ---------------------------------------------------------------------------------------------

/// The health key of an account (names are `[A-Za-z0-9_.-]`, so no two keys collide).
pub fn health_key(name: &str) -> String {
    format!("tollgate:acct:{name}")
}

/// The shared round-robin counter of one API (a little-endian u64).
pub fn rr_key(api: Api) -> String {
    format!("tollgate:rr:{}", api.as_str())
}

/// The bounded session table: `tollgate:aff:<i>` for `i < max_sessions`.
pub fn affinity_table(affinity: &Affinity) -> SlotTable {
    SlotTable::new("tollgate:aff:", affinity.max_sessions)
}

/// The session id of a request, or `None` when affinity is off or the request names no
/// session: the `affinity.header` value if sent (non-empty), else with `conversation: true`
/// the request scanner's conversation fingerprint. The downstream stage publishes it as
/// `wasm.tollgate.session`; the value is a hash (`h…` / `c…` + 16 hex digits), never the
/// raw header.
pub fn session_id(
    affinity: Option<&Affinity>,
    header_value: Option<&str>,
    fingerprint: Option<u64>,
) -> Option<String> {
    let aff = affinity?;
    if let Some(v) = header_value.map(str::trim).filter(|v| !v.is_empty()) {
        if aff.header.is_some() {
            return Some(format!("h{:016x}", store::owner_tag(v)));
        }
    }
    if aff.conversation {
        return fingerprint.map(|f| format!("c{f:016x}"));
    }
    None
}

/// One session's pin, stored in an affinity slot (21 bytes; a free slot is `[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pin {
    /// `store::owner_tag(session id)`, never 0.
    session: u64,
    /// `account_tag(name)` of the pinned account.
    account: u32,
    expires_ms: u64,
}

const PIN_VERSION: u8 = 1;
const FREE_SLOT: &[u8] = &[0];

impl Pin {
    fn decode(b: &[u8]) -> Option<Pin> {
        if b.len() != 21 || b.first() != Some(&PIN_VERSION) {
            return None;
        }
        let u64_at = |at: usize| {
            b.get(at..at + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_le_bytes)
        };
        let account = b
            .get(9..13)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_le_bytes)?;
        Some(Pin {
            session: u64_at(1)?,
            account,
            expires_ms: u64_at(13)?,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21);
        out.push(PIN_VERSION);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.account.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out
    }
}

/// How an account's name is recorded in a pin (robust to reordering the configuration).
fn account_tag(name: &str) -> u32 {
    let h = store::owner_tag(name);
    (h ^ (h >> 32)) as u32
}

/// Creates every key the pool uses, unless it exists: each account's health key (and
/// resets one whose key tag differs: the account's key changed), the round-robin counter
/// of each API with accounts (strategy `round_robin` only), with affinity every slot of
/// the session table, and the roster (`publish_roster`). Returns how many keys it created or
/// reset. Run in `on_configure`.
///
/// Cost: one `get` per key plus one `set` per key created; the session table is
/// `max_sessions` keys (65536 by default).
pub fn prepare(store: &dyn Store, cfg: &Config) -> Result<usize, StoreError> {
    let mut created = 0;
    let mut fresh = Vec::with_capacity(32);
    for a in &cfg.accounts {
        let key = health_key(&a.name);
        let tag = key_tag(a);
        fresh.clear();
        Health::fresh(a).encode(&mut fresh);
        // A key still lost to other workers after `MAX_TRIES` races is theirs: left as is.
        let wrote = store::update(store, &key, MAX_TRIES, |old, out| {
            if old.is_some_and(|v| Health::decode(v).key_tag == tag) {
                return Decision::Keep(false);
            }
            out.extend_from_slice(&fresh);
            Decision::Write(true)
        });
        match wrote {
            Ok(true) => created += 1,
            Ok(false) | Err(StoreError::Contended) => {}
            Err(e) => return Err(e),
        }
    }
    if cfg.selection.strategy == Strategy::RoundRobin {
        for api in Api::ALL {
            if first_for(&cfg.accounts, api).is_some()
                && store::ensure(store, &rr_key(api), &0u64.to_le_bytes())?
            {
                created += 1;
            }
        }
    }
    if let (Some(aff), false) = (&cfg.selection.affinity, cfg.accounts.is_empty()) {
        for key in affinity_table(aff).keys() {
            if store::ensure(store, &key, FREE_SLOT)? {
                created += 1;
            }
        }
    }
    if publish_roster(store, &cfg.accounts)? {
        created += 1;
    }
    Ok(created)
}

/// What became of the session's pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityUse {
    /// Affinity is off, or the request has no session.
    Off,
    /// The pinned account served.
    Hit,
    /// No live pin: the session is now pinned to the account picked.
    Miss,
    /// The pinned account was cooling, disabled, lacking headroom, already tried, or of
    /// another API: the session moved to the account picked.
    Broken,
}

impl AffinityUse {
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityUse::Off => "off",
            AffinityUse::Hit => "hit",
            AffinityUse::Miss => "miss",
            AffinityUse::Broken => "broken",
        }
    }
}

/// An account chosen by `select`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Picked {
    pub account: usize,
    /// The reservation taken from the account's own `limits` (when it has any): reconcile it
    /// with `quota::reconcile(store, &OwnerKey::account(name), &account.limits, …)` when the
    /// attempt ends (real usage, or `Amounts::ZERO` for an attempt that served nothing).
    pub ticket: Option<Ticket>,
    pub affinity: AffinityUse,
    /// Whether the pick was charged to the account's health already; if not, add it to the
    /// account's `requests` later (`record_totals`).
    pub counted: bool,
    /// The account is disabled and this attempt is its one probe: the host must `record` the
    /// answer's `observe_response` even when `is_empty()` (a 2xx makes the account ok
    /// again), and `observe_error_body` for an error answer.
    pub probe: bool,
}

/// The answer of `select`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Picked(Picked),
    /// 429 with `retry-after` (SPEC: "every account is cooling down"). Also when every
    /// remaining account refused `need` under its own `limits`.
    AllCooling {
        retry_after_s: u64,
    },
    /// No account serves the API, or all of them are disabled.
    NoAccount,
}

/// One attempt's request, as `select` needs it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub api: Api,
    /// The reservation (`quota::reservation`): headroom is checked against `tokens`,
    /// `input_tokens`, `output_tokens` and one request; account `limits` are charged with it.
    pub need: &'a Amounts,
    /// `session_id(…)`, when affinity applies.
    pub session: Option<&'a str>,
    /// Accounts already tried by earlier attempts of this request.
    pub exclude: &'a [usize],
    pub now_ms: u64,
}

/// Picks the account for one attempt, through the store.
///
/// Round trips, uncontended, with N accounts serving the API:
/// - affinity (when on and a session is given): 1 `get`, or 2 when the session is not in its
///   first slot; plus 1 `set` when the pin is new, moved, or due for refresh (its remaining
///   TTL fell below 7/8 of `ttl`, so a busy session writes at most every `ttl`/8);
/// - N `get`s of the health keys, and 1 `set` charging the chosen one (load, request
///   counter, learned headroom);
/// - `round_robin` without an affinity hit: 1 `get` + 1 `set` of the API's shared counter
///   (shared rather than per worker, so that light traffic spread over workers still
///   rotates);
/// - an account with `limits`: `quota::admit` (a `concurrent` lease lives `cfg.lease_ttl`),
///   1 `get` + 1 `set` (a refusal: 1 `get`, and the next account is tried).
///
/// - a disabled account with a probe due: 1 `get` + 1 `set` claiming the probe (and charging
///   the pick), so that only one worker probes; one that lost the claim drops out.
///
/// Typical: `least_loaded` with affinity, 2 accounts, no account limits: 3 `get`s, 1–2
/// `set`s. Store errors degrade rather than fail: an unreadable health reads as fresh, a
/// lost counter or pin write is skipped, an account whose limits cannot be checked is
/// skipped for this attempt.
#[inline(never)]
pub fn select(store: &dyn Store, cfg: &Config, req: &Attempt<'_>) -> Outcome {
    let accounts = &cfg.accounts;
    let now = req.now_ms;
    // Affinity lookup first: a hit spares the round-robin counter.
    let affinity = cfg
        .selection
        .affinity
        .as_ref()
        .zip(req.session)
        .map(|(aff, session)| {
            let table = affinity_table(aff);
            let tag = store::owner_tag(session);
            let found = lookup_pin(store, &table, session, now);
            (aff, table, tag, found)
        });
    let mut states = vec![Health::default(); accounts.len()];
    let mut cas: Vec<Option<u32>> = vec![None; accounts.len()];
    for (i, a) in accounts.iter().enumerate() {
        if a.provider != req.api {
            continue;
        }
        if let Ok((value, c)) = store.get(&health_key(&a.name)) {
            if let Some(s) = states.get_mut(i) {
                *s = value
                    .as_deref()
                    .map_or_else(|| Health::fresh(a), Health::decode);
            }
            if let Some(slot) = cas.get_mut(i) {
                *slot = Some(c);
            }
        }
    }
    let pinned = affinity
        .as_ref()
        .and_then(|(_, _, _, f)| f.as_ref().ok()?.pin)
        .map(|pin| {
            accounts
                .iter()
                .position(|a| account_tag(&a.name) == pin.account && a.provider == req.api)
        });
    let mut use_pin = match pinned {
        Some(Some(i)) => states.get(i).is_some_and(|h| {
            h.usable(now) && h.headroom(req.need, now).is_some() && !req.exclude.contains(&i)
        }),
        _ => false,
    };
    let mut rr_counter = None;
    let mut chosen = None;
    let mut probe = false;
    for _ in 0..=accounts.len() {
        let choice = match (use_pin, pinned) {
            (true, Some(Some(i))) => Choice::Pick { account: i },
            _ => {
                let counter = match (cfg.selection.strategy, rr_counter) {
                    (Strategy::RoundRobin, None) => {
                        *rr_counter.insert(next_counter(store, req.api))
                    }
                    (_, c) => c.unwrap_or(0),
                };
                pick(
                    accounts,
                    req.api,
                    req.need,
                    cfg.selection.strategy,
                    &states,
                    counter,
                    req.exclude,
                    now,
                )
            }
        };
        let Choice::Pick { account } = choice else {
            return match choice {
                Choice::AllCooling { retry_after_s } => Outcome::AllCooling { retry_after_s },
                _ => Outcome::NoAccount,
            };
        };
        let Some(a) = accounts.get(account) else {
            return Outcome::NoAccount;
        };
        if states.get(account).is_some_and(|h| !h.usable(now)) {
            match claim_probe(store, a, req.need, now) {
                Ok((_, true)) => probe = true,
                // Made ok since it was read (a probe succeeded, or a reset): an ordinary pick.
                Ok((stored, false)) if stored.usable(now) => {}
                lost => {
                    // Another worker's probe is out (or shared state failed us): it drops out.
                    if let Some(h) = states.get_mut(account) {
                        match lost {
                            Ok((stored, _)) => *h = stored,
                            Err(_) => {
                                if let AccountState::Disabled { probe_after_ms, .. } = &mut h.state
                                {
                                    *probe_after_ms = u64::MAX;
                                }
                            }
                        }
                    }
                    use_pin = false;
                    continue;
                }
            }
        }
        if a.limits.is_empty() {
            chosen = Some((account, None));
            break;
        }
        let owner = OwnerKey::account(&a.name);
        let refused_for_s =
            match quota::admit(store, &owner, &a.limits, req.need, now, cfg.lease_ttl) {
                Ok(Admission::Admitted { ticket, .. }) => {
                    chosen = Some((account, Some(ticket)));
                    break;
                }
                Ok(Admission::Rejected { rejection, .. }) => rejection.retry_after_s,
                Err(_) => 1,
            };
        // Refused by its own limits: for this request the account rests until they have
        // room, so it drops out and counts towards `AllCooling`'s earliest recovery (a probe
        // it claimed lapses after `PROBE_RETRY_MS`).
        probe = false;
        if let Some(h) = states.get_mut(account) {
            h.state = AccountState::Cooling {
                until_ms: now
                    .saturating_add(refused_for_s.saturating_mul(1000).max(MIN_COOLING_MS)),
            };
        }
        use_pin = false;
    }
    let Some((account, ticket)) = chosen else {
        return Outcome::AllCooling { retry_after_s: 1 };
    };
    // With one account for the API, its load steers no choice: unless the provider's
    // headroom is known (which concurrent picks must see charged), the pick is only counted,
    // and the count is the host's to add later (`Picked::counted`).
    let alone = accounts.iter().filter(|a| a.provider == req.api).count() == 1;
    let headroom_known = states
        .get(account)
        .is_some_and(|h| Dimension::ALL.iter().any(|&d| h.dim(d, now).is_some()));
    // A probe was charged as it was claimed.
    let counted = !alone || headroom_known || probe;
    // Charge the chosen account: one `set` over the value read above, re-read only if
    // another worker wrote it since.
    if let Some(a) = accounts.get(account).filter(|_| counted && !probe) {
        let mut first = states
            .get(account)
            .copied()
            .zip(cas.get(account).copied().flatten());
        let written = first.as_mut().is_some_and(|(h, c)| {
            h.charge(req.need, now);
            let mut buf = Vec::with_capacity(64);
            h.encode(&mut buf);
            store
                .set(&health_key(&a.name), &buf, store::write_cas(*c))
                .is_ok()
        });
        if !written {
            let _ = update_health(store, a, |h| h.charge(req.need, now));
        }
    }
    let affinity_use = match affinity {
        None => AffinityUse::Off,
        Some((aff, table, tag, found)) => {
            let ttl = aff.ttl.millis();
            let used = match (&found, pinned) {
                (Ok(f), Some(Some(i))) if f.pin.is_some() && use_pin && i == account => {
                    AffinityUse::Hit
                }
                (Ok(f), _) if f.pin.is_some() => AffinityUse::Broken,
                _ => AffinityUse::Miss,
            };
            if let (Ok(f), Some(a)) = (&found, accounts.get(account)) {
                let due = match (used, f.pin) {
                    (AffinityUse::Hit, Some(p)) => p.expires_ms < now.saturating_add(ttl - ttl / 8),
                    _ => true,
                };
                if due {
                    let pin = Pin {
                        session: tag,
                        account: account_tag(&a.name),
                        expires_ms: now.saturating_add(ttl),
                    };
                    let _ = store.set(&table.key(f.slot), &pin.encode(), store::write_cas(f.cas));
                }
            }
            used
        }
    };
    Outcome::Picked(Picked {
        account,
        ticket,
        affinity: affinity_use,
        counted,
        probe,
    })
}

/// Claims a disabled account's probe: moves `probe_after_ms` `PROBE_RETRY_MS` ahead and
/// charges the pick, in one compare-and-swap, so two workers that both saw the probe due
/// cannot both send one; a probe that never reports back frees the account after that time.
/// Returns the health stored and whether this attempt claimed the probe.
fn claim_probe(
    store: &dyn Store,
    account: &Account,
    need: &Amounts,
    now_ms: u64,
) -> Result<(Health, bool), StoreError> {
    update_health_if(store, account, |h| {
        let AccountState::Disabled { probe_after_ms, .. } = &mut h.state else {
            return false;
        };
        if *probe_after_ms > now_ms {
            return false;
        }
        *probe_after_ms = now_ms.saturating_add(PROBE_RETRY_MS);
        h.charge(need, now_ms);
        true
    })
}

/// A session's slot: its live pin, if any, and the slot (with its cas) to write it to.
struct Found {
    pin: Option<Pin>,
    slot: u32,
    cas: u32,
}

/// Reads the session's two slots (the second only when the first is not the session's).
/// Without a live pin, the slot to take is the session's own expired one, else a free or
/// expired one, else the one whose pin expires first (the least recently used).
fn lookup_pin(
    store: &dyn Store,
    table: &SlotTable,
    session_id: &str,
    now_ms: u64,
) -> Result<Found, StoreError> {
    let session = store::owner_tag(session_id);
    let [a, b] = table.slots(session_id);
    let read = |slot: u32| -> Result<(Option<Pin>, u32), StoreError> {
        let (value, cas) = store.get(&table.key(slot))?;
        Ok((value.as_deref().and_then(Pin::decode), cas))
    };
    let (pa, ca) = read(a)?;
    if let Some(p) = pa.filter(|p| p.session == session) {
        return Ok(Found {
            pin: Some(p).filter(|p| p.expires_ms > now_ms),
            slot: a,
            cas: ca,
        });
    }
    let (pb, cb) = if b == a { (pa, ca) } else { read(b)? };
    if let Some(p) = pb.filter(|p| p.session == session) {
        return Ok(Found {
            pin: Some(p).filter(|p| p.expires_ms > now_ms),
            slot: b,
            cas: cb,
        });
    }
    let expires = |p: Option<Pin>| p.map_or(0, |p| p.expires_ms);
    let (ea, eb) = (expires(pa), expires(pb));
    let take_a = ea <= now_ms || (eb > now_ms && ea <= eb);
    Ok(if take_a {
        Found {
            pin: None,
            slot: a,
            cas: ca,
        }
    } else {
        Found {
            pin: None,
            slot: b,
            cas: cb,
        }
    })
}

/// Fetch-and-increment of the API's round-robin counter; on a store error or lost races,
/// the value read (two requests then share a turn).
fn next_counter(store: &dyn Store, api: Api) -> u64 {
    let key = rr_key(api);
    let mut last = 0;
    let _ = store::update(store, &key, 4, |old, out| {
        last = old
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_le_bytes);
        out.extend_from_slice(&last.wrapping_add(1).to_le_bytes());
        Decision::Write(())
    });
    last
}

/// Runs `f` on an account's health with compare-and-swap.
fn update_health(
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
fn update_health_if(
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
fn update_stored_if(
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

#[cfg(test)]
mod tests;
