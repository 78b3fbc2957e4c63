//! The upstream account pool: which account serves a request, the credential headers it
//! needs, and each account's health (ok / cooling / disabled, learned headroom) as learned
//! from the provider's responses. Pure decisions (`observe_response`, `Health::apply`,
//! `pick`) over state kept in shared data, and thin store loops (`prepare`, `select`,
//! `record`) that the host calls. See SPEC "Accounts" and "Stages and shared state".

use crate::api::Api;
use crate::config::{Account, Affinity, Config, KeyMatcher, Strategy};
pub use crate::key_evidence::{key_rejection, DisableReason};
use crate::quota::{self, Admission, Amounts, OwnerKey, Ticket};
use crate::store::{self, SlotTable, Store, StoreError, MAX_TRIES};

/// The `anthropic-version` sent when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Headers a client may use to carry a credential; all are removed before the upstream
/// when accounts are configured.
pub const CLIENT_CREDENTIAL_HEADERS: &[&str] = &["x-api-key", "authorization", "x-goog-api-key"];

/// Client headers that scope or re-target a credential (an organization, a project, a billed
/// project): removed before the upstream whenever a pooled key is used, so one client cannot
/// make the provider refuse, or bill elsewhere, the key every consumer shares. The config's
/// `strip_request_headers` adds to them; an account's own `headers` are set after.
pub const CREDENTIAL_SCOPING_HEADERS: &[&str] = &[
    "openai-organization",
    "openai-project",
    "x-goog-user-project",
];

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
            && read_health(store, a).map_or(true, |h| h.kind_at(now_ms) != StateKind::Disabled)
    })
}

/// The credential header an account's provider expects, with its value.
pub fn credential(account: &Account) -> (&'static str, String) {
    let key = account.key.expose();
    match account.provider {
        Api::Anthropic => ("x-api-key", key.to_string()),
        Api::OpenAi => ("authorization", format!("Bearer {key}")),
        Api::Gemini => ("x-goog-api-key", key.to_string()),
    }
}

/// Whether a response header is the provider's own rate-limit report, which describes the
/// pooled account and not the caller: read for health, then removed (SPEC "HTTP behaviour").
pub fn is_provider_ratelimit_header(name: &str) -> bool {
    let n = name.as_bytes();
    starts_with_ignore_case(n, b"anthropic-ratelimit-")
        || starts_with_ignore_case(n, b"x-ratelimit-")
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
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Ok => "ok",
            StateKind::Cooling => "cooling",
            StateKind::Disabled => "disabled",
        }
    }

    /// The `tollgate_account_state` gauge value: 0 ok, 1 cooling, 2 disabled.
    pub fn gauge(self) -> i64 {
        match self {
            StateKind::Ok => 0,
            StateKind::Cooling => 1,
            StateKind::Disabled => 2,
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
        matches!(self.state, AccountState::Disabled { probe_after_ms, .. } if probe_after_ms <= now_ms)
    }

    /// A candidate for `pick` at `now_ms`: usable, or disabled with a probe due (which
    /// `select` then claims).
    pub fn pickable(&self, now_ms: u64) -> bool {
        self.usable(now_ms) || self.probe_due(now_ms)
    }

    /// The cooling end, while cooling.
    pub fn cooling_until(&self, now_ms: u64) -> Option<u64> {
        match self.state {
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
        let mut r = Reader(bytes);
        if r.byte()? != HEALTH_VERSION {
            return None;
        }
        let flags = r.byte()?;
        let key_tag = u32::try_from(r.var()?).ok()?;
        let state = match flags & 0b11 {
            0 => AccountState::Ok,
            1 => AccountState::Cooling { until_ms: r.var()? },
            2 => AccountState::Disabled {
                reason: DisableReason::from_code(r.var()?)?,
                status: u16::try_from(r.var()?).ok()?,
                since_ms: r.var()?,
                probe_after_ms: r.var()?,
            },
            _ => return None,
        };
        let mut h = Health {
            state,
            key_tag,
            requests: r.var()?,
            tokens: r.var()?,
            load_milli: r.var()?,
            load_ms: r.var()?,
            last_status: u16::try_from(r.var()?).ok()?,
            dims: [None; 4],
        };
        for (i, slot) in h.dims.iter_mut().enumerate() {
            if flags & (0b100 << i) != 0 {
                *slot = Some(Dim {
                    remaining: r.var()?,
                    limit: r.opt()?,
                    reset_ms: r.opt()?,
                    seen_ms: r.var()?,
                });
            }
        }
        if flags & 0b1100_0000 != 0 || !r.0.is_empty() {
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
        out.push(flags);
        put_var(out, u64::from(self.key_tag));
        match self.state {
            AccountState::Ok => {}
            AccountState::Cooling { until_ms } => put_var(out, until_ms),
            AccountState::Disabled {
                reason,
                status,
                since_ms,
                probe_after_ms,
            } => {
                put_var(out, u64::from(reason.code()));
                put_var(out, u64::from(status));
                put_var(out, since_ms);
                put_var(out, probe_after_ms);
            }
        }
        for v in [self.requests, self.tokens, self.load_milli, self.load_ms] {
            put_var(out, v);
        }
        put_var(out, u64::from(self.last_status));
        for d in self.dims.iter().flatten() {
            put_var(out, d.remaining);
            put_opt(out, d.limit);
            put_opt(out, d.reset_ms);
            put_var(out, d.seen_ms);
        }
    }
}

/// A short tag of the account's key, stored with its state so that a configuration that
/// changes the key (after a 401, say) starts the account afresh. Not reversible.
pub fn key_tag(account: &Account) -> u32 {
    let d = KeyMatcher::digest(account.key.expose());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `None` as 0, `Some(v)` as `v + 1` (saturating: `u64::MAX` reads back as `u64::MAX - 1`).
fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    put_var(out, v.map_or(0, |v| v.saturating_add(1)));
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn var(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return None;
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn opt(&mut self) -> Option<Option<u64>> {
        Some(self.var()?.checked_sub(1))
    }
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
        } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-unified-") {
            match rest {
                "status" => {
                    unified_rejected = value.eq_ignore_ascii_case("rejected");
                    unified_allowed = starts_with_ignore_case(value.as_bytes(), b"allowed");
                }
                "reset" => unified_reset = parse_reset(value, now_ms),
                _ => {
                    let (window, field) = match rest.rsplit_once('-') {
                        Some(x) => x,
                        None => continue,
                    };
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
            }
        } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
            if let Some((dim, field)) = rest.rsplit_once('-') {
                learn(&mut obs, dim, field, value, now_ms);
            }
        } else if let Some(rest) = name.strip_prefix("x-ratelimit-") {
            if let Some((field, dim)) = rest.split_once('-') {
                learn(&mut obs, dim, field, value, now_ms);
            }
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

/// Reads an SSE `event: error` by its error type (`rate_limit_error`, `overloaded_error`,
/// OpenAI `rate_limit_exceeded`, Gemini `RESOURCE_EXHAUSTED` / `UNAVAILABLE`): a rate limit
/// cools 60 s or until a known reset, an overload 10 s; anything else changes nothing.
pub fn observe_stream_error(kind: &str) -> Observation {
    let k = kind.trim().to_ascii_lowercase();
    let cool = if k.contains("rate_limit") || k.contains("resource_exhausted") {
        Some(Cool::RateLimited)
    } else if k.contains("overloaded") || k == "unavailable" {
        Some(Cool::Overloaded)
    } else {
        None
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Epoch ms of a UTC civil time, `None` if out of range or before 1970.
fn epoch_ms(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> Option<u64> {
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(s);
    u64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(u64::from(ms))
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
    let mut buf = Vec::with_capacity(32);
    for a in &cfg.accounts {
        let key = health_key(&a.name);
        let tag = key_tag(a);
        buf.clear();
        Health::fresh(a).encode(&mut buf);
        for _ in 0..MAX_TRIES {
            let (value, cas) = store.get(&key)?;
            if value
                .as_deref()
                .is_some_and(|v| Health::decode(v).key_tag == tag)
            {
                break;
            }
            match store.set(&key, &buf, store::write_cas(cas)) {
                Ok(()) => {
                    created += 1;
                    break;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    if cfg.selection.strategy == Strategy::RoundRobin {
        for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
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
    for _ in 0..4 {
        let Ok((value, cas)) = store.get(&key) else {
            return last;
        };
        last = value
            .as_deref()
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_le_bytes);
        match store.set(
            &key,
            &last.wrapping_add(1).to_le_bytes(),
            store::write_cas(cas),
        ) {
            Err(StoreError::CasMismatch) => continue,
            _ => return last,
        }
    }
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
    let mut buf = Vec::with_capacity(64);
    for _ in 0..MAX_TRIES {
        let (value, cas) = store.get(key)?;
        let Some(mut h) = value.as_deref().map(Health::decode).or(missing) else {
            return Ok(None);
        };
        if !f(&mut h) {
            return Ok(Some((h, false)));
        }
        buf.clear();
        h.encode(&mut buf);
        match store.set(key, &buf, store::write_cas(cas)) {
            Ok(()) => return Ok(Some((h, true))),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
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
    update_health(store, account, |h| {
        before = h.kind_at(now_ms);
        h.state = AccountState::Ok;
    })?;
    Ok(Transition {
        before,
        after: StateKind::Ok,
        state: AccountState::Ok,
    })
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
            let provider = match provider {
                "anthropic" => Api::Anthropic,
                "openai" => Api::OpenAi,
                "gemini" => Api::Gemini,
                _ => return None,
            };
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
    Ok(written.map(|_| Transition {
        before,
        after: StateKind::Ok,
        state: AccountState::Ok,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Duration, Selection};
    use crate::key_evidence::samples;
    use crate::limits::{Limit, LimitKind, Per, WindowKind};
    use crate::store::MemStore;
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
            disable_for: crate::config::Duration::from_millis(
                crate::config::DEFAULT_DISABLE_FOR_MS,
            ),
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

    // ---- parsers ----

    #[test]
    fn parses_seconds_with_fractions_rounding_up() {
        assert_eq!(parse_seconds_ms("30"), Some(30_000));
        assert_eq!(parse_seconds_ms(" 1.5 "), Some(1_500));
        assert_eq!(parse_seconds_ms("0.0001"), Some(1));
        assert_eq!(parse_seconds_ms(".25"), Some(250));
        for bad in ["", ".", "-1", "1e3", "abc", "1 2"] {
            assert_eq!(parse_seconds_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_openai_go_durations() {
        for (text, ms) in [
            ("1s", 1_000),
            ("6m0s", 360_000),
            ("20ms", 20),
            ("1h2m3.5s", 3_723_500),
            ("0.5s", 500),
            ("7.66s", 7_660),
            ("100us", 1),
            ("100µs", 1),
            ("1500ns", 1),
            ("2d", 172_800_000),
            ("45", 45_000),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration_ms(text), Some(ms), "{text}");
        }
        for bad in ["", "s", "5x", "1h-2m", "m5", "1.2.3s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_rfc3339_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:30Z"), Some(NOW));
        assert_eq!(parse_rfc3339_ms("2024-05-01t12:00:30z"), Some(NOW));
        assert_eq!(parse_rfc3339_ms("2024-05-01 12:00:30"), Some(NOW));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:30.123456Z"),
            Some(NOW + 123)
        );
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:30.5Z"), Some(NOW + 500));
        assert_eq!(parse_rfc3339_ms("2024-05-01T14:00:30+02:00"), Some(NOW));
        assert_eq!(parse_rfc3339_ms("2024-05-01T10:30:30-01:30"), Some(NOW));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T23:59:59Z"),
            Some(951_868_799_000)
        );
        for bad in [
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:30.Z",
            "2024-05-01T12:00:30Zjunk",
            "1969-12-31T23:59:59Z",
            "2024-05-01",
            "2024-05-01T12:00:30+2",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_all_three_http_date_forms() {
        let t = Some(784_111_777_000);
        assert_eq!(parse_http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"), t);
        assert_eq!(parse_http_date_ms("Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(parse_http_date_ms("Sun Nov  6 08:49:37 1994"), t);
        for bad in [
            "",
            "Sun, 06 Nov 1994",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "06 Nov Nov 1994 08:49:37",
            "x",
        ] {
            assert_eq!(parse_http_date_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_reset_values_in_every_format() {
        assert_eq!(parse_reset("1714564890", NOW), Some(NOW + 60_000));
        assert_eq!(parse_reset("1714564890000", NOW), Some(NOW + 60_000));
        assert_eq!(parse_reset("30", NOW), Some(NOW + 30_000));
        assert_eq!(parse_reset("6m0s", NOW), Some(NOW + 360_000));
        assert_eq!(parse_reset("2024-05-01T12:01:30Z", NOW), Some(NOW + 60_000));
        assert_eq!(
            parse_retry_after("Wed, 01 May 2024 12:01:30 GMT", NOW),
            Some(NOW + 60_000)
        );
        assert_eq!(parse_retry_after("soon", NOW), None);
    }

    // ---- observations ----

    #[test]
    fn rate_limit_cools_until_retry_after_in_seconds_or_date() {
        assert_eq!(cooled(429, &[("retry-after", "30")]), cooling(30_000));
        assert_eq!(
            cooled(429, &[("Retry-After", "Wed, 01 May 2024 12:01:00 GMT")]),
            cooling(30_000)
        );
        // retry-after wins over the reset headers.
        assert_eq!(
            cooled(
                429,
                &[
                    ("retry-after", "5"),
                    ("anthropic-ratelimit-tokens-remaining", "0"),
                    ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:01:30Z"),
                ]
            ),
            cooling(5_000)
        );
    }

    #[test]
    fn rate_limit_without_retry_after_cools_until_the_exhausted_reset() {
        let anthropic = [
            ("anthropic-ratelimit-requests-remaining", "10"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:31Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:50Z"),
        ];
        assert_eq!(cooled(429, &anthropic), cooling(20_000));
        let openai = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1000"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ];
        assert_eq!(cooled(429, &openai), cooling(360_000));
        // Nothing used up: the latest reset reported.
        let none_zero = [
            ("x-ratelimit-remaining-tokens", "10"),
            ("x-ratelimit-reset-tokens", "12s"),
        ];
        assert_eq!(cooled(429, &none_zero), cooling(12_000));
        assert_eq!(cooled(429, &[]), cooling(60_000));
        assert_eq!(cooled(429, &[("retry-after", "garbage")]), cooling(60_000));
    }

    #[test]
    fn cooling_is_clamped_between_one_second_and_eight_days() {
        assert_eq!(cooled(429, &[("retry-after", "0")]), cooling(1_000));
        assert_eq!(
            cooled(429, &[("retry-after", "99999999999999")]),
            cooling(MAX_COOLING_MS)
        );
        assert_eq!(
            cooled(429, &[("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")]),
            cooling(1_000)
        );
    }

    #[test]
    fn overload_cools_ten_seconds_and_a_bare_401_or_403_changes_nothing() {
        assert_eq!(cooled(529, &[]), cooling(10_000));
        assert_eq!(cooled(503, &[]), cooling(10_000));
        assert_eq!(cooled(503, &[("retry-after", "3")]), cooling(3_000));
        for ok in [200, 400, 401, 403, 404, 500, 502] {
            assert_eq!(cooled(ok, &[]), AccountState::Ok, "{ok}");
        }
    }

    #[test]
    fn unified_rejection_cools_until_its_epoch_reset_whatever_the_status() {
        let hdrs = [
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", "1714568430"),
        ];
        assert_eq!(cooled(429, &hdrs), cooling(3_600_000));
        assert_eq!(cooled(200, &hdrs), cooling(3_600_000));
        let window = [
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("anthropic-ratelimit-unified-5h-status", "allowed_warning"),
            ("anthropic-ratelimit-unified-7d-status", "rejected"),
            ("anthropic-ratelimit-unified-7d-reset", "1714651230"),
            ("anthropic-ratelimit-unified-reset", "1714568430"),
        ];
        assert_eq!(cooled(200, &window), cooling(86_400_000));
        let allowed = [
            ("anthropic-ratelimit-unified-status", "allowed_warning"),
            ("anthropic-ratelimit-unified-reset", "1714568430"),
        ];
        assert_eq!(cooled(200, &allowed), AccountState::Ok);
    }

    #[test]
    fn a_429_with_only_the_unified_reset_cools_until_it_unless_the_status_says_allowed() {
        // SPEC "Accounts": a 429 cools until the `anthropic-ratelimit-*-reset` time, the unified
        // one included, as epoch seconds or RFC 3339.
        const RESET: (&str, &str) = ("anthropic-ratelimit-unified-reset", "1714568430");
        const RFC3339: (&str, &str) = ("anthropic-ratelimit-unified-reset", "2024-05-01T13:00:30Z");
        type Case<'a> = (u32, &'a [(&'a str, &'a str)], AccountState);
        let cases: [Case; 5] = [
            (429, &[RESET], cooling(3_600_000)),
            (429, &[RFC3339], cooling(3_600_000)),
            // The unified limit still allows: this 429 is about something else.
            (
                429,
                &[("anthropic-ratelimit-unified-status", "allowed"), RESET],
                cooling(60_000),
            ),
            // `retry-after` still wins.
            (429, &[("retry-after", "5"), RESET], cooling(5_000)),
            // Without a 429 a bare reset is only a report.
            (200, &[RESET], AccountState::Ok),
        ];
        for (status, headers, want) in cases {
            assert_eq!(cooled(status, headers), want, "{status} {headers:?}");
        }
    }

    #[test]
    fn learns_headroom_from_both_header_families() {
        let obs = observe_response(
            200,
            &h(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "49"),
                ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:31Z"),
                ("anthropic-ratelimit-input-tokens-remaining", "39000"),
                ("anthropic-ratelimit-output-tokens-remaining", "7000"),
                ("x-ratelimit-remaining-tokens", "149984"),
                ("x-ratelimit-limit-tokens", "150000"),
                ("x-ratelimit-reset-tokens", "6ms"),
            ]),
            NOW,
        );
        let mut health = Health::default();
        assert!(!health.apply(&obs, DISABLE_FOR, NOW).changed());
        let r = health.dim(Dimension::Requests, NOW).unwrap();
        assert_eq!(
            (r.remaining, r.limit, r.reset_ms),
            (49, Some(50), Some(NOW + 1_000))
        );
        let t = health.dim(Dimension::Tokens, NOW).unwrap();
        assert_eq!(
            (t.remaining, t.limit, t.reset_ms),
            (149_984, Some(150_000), Some(NOW + 6))
        );
        assert_eq!(
            health.dim(Dimension::InputTokens, NOW).unwrap().remaining,
            39_000
        );
        assert_eq!(
            health.dim(Dimension::OutputTokens, NOW).unwrap().remaining,
            7_000
        );
        // After its reset a dimension is forgotten; without a reset it lasts 60 s.
        assert!(health.dim(Dimension::Tokens, NOW + 6).is_none());
        assert!(health.dim(Dimension::InputTokens, NOW + 59_999).is_some());
        assert!(health.dim(Dimension::InputTokens, NOW + 60_000).is_none());
        assert!(is_provider_ratelimit_header(
            "Anthropic-RateLimit-Tokens-Reset"
        ));
        assert!(is_provider_ratelimit_header("x-ratelimit-remaining-tokens"));
        assert!(!is_provider_ratelimit_header("retry-after"));
    }

    #[test]
    fn stream_errors_cool_like_their_statuses() {
        let mut health = Health::default();
        let t = health.apply(&observe_stream_error("overloaded_error"), DISABLE_FOR, NOW);
        assert_eq!((t.before, t.after), (StateKind::Ok, StateKind::Cooling));
        assert_eq!(health.state, cooling(10_000));
        let mut health = Health::default();
        health.apply(&observe_stream_error("rate_limit_error"), DISABLE_FOR, NOW);
        assert_eq!(health.state, cooling(60_000));
        // A known used-up dimension's reset wins over the 60 s default.
        let mut health = Health::default();
        health.apply(
            &observe_response(
                200,
                &h(&[
                    ("anthropic-ratelimit-output-tokens-remaining", "0"),
                    (
                        "anthropic-ratelimit-output-tokens-reset",
                        "2024-05-01T12:00:45Z",
                    ),
                ]),
                NOW,
            ),
            DISABLE_FOR,
            NOW,
        );
        health.apply(
            &observe_stream_error("rate_limit_error"),
            DISABLE_FOR,
            NOW + 1_000,
        );
        assert_eq!(health.state, cooling(15_000));
        for (kind, cools) in [
            ("rate_limit_exceeded", true),
            ("RESOURCE_EXHAUSTED", true),
            ("UNAVAILABLE", true),
            ("invalid_request_error", false),
            ("", false),
        ] {
            assert_eq!(observe_stream_error(kind).cool.is_some(), cools, "{kind}");
        }
    }

    #[test]
    fn cooling_extends_never_shortens_and_disabled_stays() {
        let mut health = Health::default();
        health.apply(
            &observe_response(429, &h(&[("retry-after", "30")]), NOW),
            DISABLE_FOR,
            NOW,
        );
        health.apply(&observe_response(529, &h(&[]), NOW), DISABLE_FOR, NOW);
        assert_eq!(health.state, cooling(30_000));
        assert_eq!(health.kind_at(NOW + 29_999), StateKind::Cooling);
        assert_eq!(health.kind_at(NOW + 30_000), StateKind::Ok);
        let t = health.apply(&invalid_key(Api::Anthropic), DISABLE_FOR, NOW);
        assert_eq!(
            (t.before, t.after),
            (StateKind::Cooling, StateKind::Disabled)
        );
        let t = health.apply(&observe_response(429, &h(&[]), NOW), DISABLE_FOR, NOW);
        assert!(!t.changed());
        assert_eq!(health.state, disabled(401));
        assert_eq!(health.last_status, 429);
    }

    #[test]
    fn health_round_trips_and_garbage_reads_fresh() {
        let mut health = Health {
            state: cooling(5),
            requests: 7,
            tokens: u64::MAX,
            load_milli: 1_500,
            load_ms: NOW,
            key_tag: u32::MAX,
            last_status: 529,
            ..Health::default()
        };
        health.dims[1] = Some(Dim {
            remaining: 3,
            limit: None,
            reset_ms: Some(u64::MAX - 1),
            seen_ms: NOW,
        });
        let mut buf = Vec::new();
        health.encode(&mut buf);
        assert!(buf.len() <= 64, "{} bytes", buf.len());
        assert_eq!(Health::decode(&buf), health);
        for garbage in [
            &b""[..],
            b"\x02",
            b"\x02\x03\x00",
            &[
                2, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            // Version 1 (a disabled state without reason or times).
            &[1, 2, 0, 0x91, 0x03, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(Health::decode(garbage), Health::default());
        }
        buf.push(0);
        assert_eq!(Health::decode(&buf), Health::default());
    }

    #[test]
    fn disabled_health_round_trips_even_at_its_largest_and_an_unknown_reason_reads_fresh() {
        let mut health = Health {
            state: AccountState::Disabled {
                reason: DisableReason::InvalidKey,
                status: u16::MAX,
                since_ms: u64::MAX,
                probe_after_ms: u64::MAX,
            },
            requests: u64::MAX,
            tokens: u64::MAX,
            load_milli: u64::MAX,
            load_ms: u64::MAX,
            key_tag: u32::MAX,
            last_status: u16::MAX,
            ..Health::default()
        };
        health.dims = [Some(Dim {
            remaining: u64::MAX,
            limit: Some(u64::MAX - 1),
            reset_ms: Some(u64::MAX - 1),
            seen_ms: u64::MAX,
        }); 4];
        let mut buf = Vec::new();
        health.encode(&mut buf);
        assert!(buf.len() <= MAX_HEALTH_BYTES, "{} bytes", buf.len());
        assert_eq!(Health::decode(&buf), health);
        // The reason code follows version, flags and the 5-byte key tag.
        assert_eq!(buf[7], DisableReason::InvalidKey.code());
        buf[7] = 9;
        assert_eq!(Health::decode(&buf), Health::default());
    }

    // ---- pick ----

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

    #[test]
    fn priority_takes_the_first_healthy_account_of_the_api() {
        let mut states = vec![Health::default(); 4];
        assert_eq!(
            pick_with(&states, Strategy::Priority, 0, &[]),
            Choice::Pick { account: 0 }
        );
        states[0].state = cooling(5_000);
        assert_eq!(
            pick_with(&states, Strategy::Priority, 0, &[]),
            Choice::Pick { account: 2 }
        );
        assert_eq!(
            pick(
                &pool(),
                Api::OpenAi,
                &need(1),
                Strategy::Priority,
                &states,
                0,
                &[],
                NOW
            ),
            Choice::Pick { account: 1 }
        );
        assert_eq!(
            pick(
                &pool(),
                Api::Gemini,
                &need(1),
                Strategy::Priority,
                &states,
                0,
                &[],
                NOW
            ),
            Choice::NoAccount
        );
    }

    #[test]
    fn all_cooling_reports_the_earliest_recovery_in_whole_seconds() {
        let mut states = vec![Health::default(); 4];
        states[0].state = cooling(30_000);
        states[2].state = cooling(2_001);
        states[3].state = disabled(401);
        for s in [
            Strategy::Priority,
            Strategy::RoundRobin,
            Strategy::LeastLoaded,
        ] {
            assert_eq!(
                pick_with(&states, s, 0, &[]),
                Choice::AllCooling { retry_after_s: 3 }
            );
        }
        states[2].state = cooling(1);
        assert_eq!(
            pick_with(&states, Strategy::Priority, 0, &[]),
            Choice::AllCooling { retry_after_s: 1 }
        );
        states[0].state = disabled(401);
        states[2].state = disabled(400);
        assert_eq!(
            pick_with(&states, Strategy::Priority, 0, &[]),
            Choice::NoAccount
        );
        // The OpenAI account is healthy but serves another API.
        assert_eq!(states[1].state, AccountState::Ok);
    }

    #[test]
    fn round_robin_rotates_by_weight_and_skips_unavailable_turns() {
        let accounts = vec![
            acct("a", Api::Anthropic, 2),
            acct("o", Api::OpenAi, 5),
            acct("b", Api::Anthropic, 1),
        ];
        let mut states = vec![Health::default(); 3];
        let seq: Vec<usize> = (0..6)
            .map(|c| {
                match pick(
                    &accounts,
                    Api::Anthropic,
                    &need(1),
                    Strategy::RoundRobin,
                    &states,
                    c,
                    &[],
                    NOW,
                ) {
                    Choice::Pick { account } => account,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(seq, [0, 0, 2, 0, 0, 2]);
        states[0].state = cooling(1_000);
        for c in 0..3 {
            assert_eq!(
                pick(
                    &accounts,
                    Api::Anthropic,
                    &need(1),
                    Strategy::RoundRobin,
                    &states,
                    c,
                    &[],
                    NOW
                ),
                Choice::Pick { account: 2 }
            );
        }
    }

    #[test]
    fn least_loaded_spreads_by_weight_when_no_headroom_is_known() {
        let accounts = vec![acct("a", Api::Anthropic, 1), acct("b", Api::Anthropic, 3)];
        let mut states = vec![Health::default(); 2];
        let mut counts = [0u32; 2];
        for k in 0..400u64 {
            let now = NOW + k * 10;
            let Choice::Pick { account } = pick(
                &accounts,
                Api::Anthropic,
                &need(10),
                Strategy::LeastLoaded,
                &states,
                0,
                &[],
                now,
            ) else {
                panic!()
            };
            counts[account] += 1;
            states[account].charge(&need(10), now);
        }
        assert!((90..=110).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[0] + counts[1], 400);
    }

    #[test]
    fn least_loaded_prefers_the_most_headroom_relative_to_weight() {
        let learned = |remaining: u64, limit: u64| {
            let mut s = Health::default();
            s.dims[Dimension::Tokens.index()] = Some(Dim {
                remaining,
                limit: Some(limit),
                reset_ms: Some(NOW + 60_000),
                seen_ms: NOW,
            });
            s
        };
        let mut states = vec![
            learned(10_000, 100_000),
            Health::default(),
            learned(90_000, 100_000),
            learned(50_000, 100_000),
        ];
        assert_eq!(
            pick_with(&states, Strategy::LeastLoaded, 0, &[]),
            Choice::Pick { account: 2 }
        );
        let mut accounts = pool();
        accounts[3].weight = 2; // 2 × 0.5 beats 1 × 0.9
        assert_eq!(
            pick(
                &accounts,
                Api::Anthropic,
                &need(100),
                Strategy::LeastLoaded,
                &states,
                0,
                &[],
                NOW
            ),
            Choice::Pick { account: 3 }
        );
        // Unknown headroom counts as full.
        states[2] = Health::default();
        states[3] = Health::default();
        states[0] = learned(99_000, 100_000);
        assert_eq!(
            pick_with(&states, Strategy::LeastLoaded, 0, &[]),
            Choice::Pick { account: 2 }
        );
    }

    #[test]
    fn accounts_lacking_headroom_come_after_healthy_ones_soonest_ready_first() {
        let lacking = |reset: u64| {
            let mut s = Health::default();
            s.dims[Dimension::Requests.index()] = Some(Dim {
                remaining: 0,
                limit: Some(50),
                reset_ms: Some(NOW + reset),
                seen_ms: NOW,
            });
            s
        };
        let mut states = vec![
            lacking(5_000),
            Health::default(),
            Health::default(),
            lacking(2_000),
        ];
        for s in [
            Strategy::Priority,
            Strategy::RoundRobin,
            Strategy::LeastLoaded,
        ] {
            assert_eq!(
                pick_with(&states, s, 0, &[]),
                Choice::Pick { account: 2 },
                "{s:?}"
            );
        }
        states[2].state = cooling(1_000);
        assert_eq!(
            pick_with(&states, Strategy::Priority, 0, &[]),
            Choice::Pick { account: 3 }
        );
        // A token estimate above the learned remaining also lacks room.
        let mut s = Health::default();
        s.dims[Dimension::Tokens.index()] = Some(Dim {
            remaining: 99,
            limit: None,
            reset_ms: None,
            seen_ms: NOW,
        });
        assert_eq!(s.headroom(&need(100), NOW), None);
        assert!(s.headroom(&need(99), NOW).is_some());
    }

    #[test]
    fn excluded_accounts_are_reused_only_as_a_last_resort() {
        let mut states = vec![Health::default(); 4];
        assert_eq!(
            pick_with(&states, Strategy::Priority, 0, &[0]),
            Choice::Pick { account: 2 }
        );
        assert_eq!(
            pick_with(&states, Strategy::LeastLoaded, 0, &[0, 2]),
            Choice::Pick { account: 3 }
        );
        states[3].state = cooling(9_000);
        assert_eq!(
            pick_with(&states, Strategy::RoundRobin, 0, &[0, 2]),
            Choice::Pick { account: 0 }
        );
    }

    // ---- store ----

    fn names_of(store: &MemStore, c: &Config, n: usize, session: Option<&str>) -> Vec<String> {
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
        let t = record_named(&store, "a1", &observe_stream_error("overloaded_error"), NOW);
        let t = t.unwrap().unwrap();
        assert_eq!((t.before, t.after), (StateKind::Ok, StateKind::Cooling));
        assert_eq!(
            read_health(&store, &c.accounts[0])
                .unwrap()
                .cooling_until(NOW),
            Some(NOW + OVERLOADED_COOLING_MS)
        );
        let limited = observe_stream_error("rate_limit_error");
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
        let limited = observe_stream_error("rate_limit_error");
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
            &observe_stream_error("overloaded_error"),
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

    // ---- evidence, probes and reset ----

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
    fn lone(api: Api, disable_for_ms: u64) -> Config {
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
                    *b_got.borrow_mut() =
                        Some(probe_of(attempt_at(&store, &c, Api::Anthropic, later)));
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

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}") {
            let _ = parse_seconds_ms(&s);
            let _ = parse_duration_ms(&s);
            let _ = parse_rfc3339_ms(&s);
            let _ = parse_http_date_ms(&s);
            let _ = parse_reset(&s, NOW);
            let _ = parse_retry_after(&s, u64::MAX);
            let _ = parse_count(&s);
            let _ = observe_stream_error(&s);
        }

        #[test]
        fn parsers_never_panic_on_near_valid_input(s in "[0-9 :.,TZzmsuhd+-]{0,40}") {
            let _ = parse_duration_ms(&s);
            let _ = parse_rfc3339_ms(&s);
            let _ = parse_http_date_ms(&s);
            let _ = parse_reset(&s, NOW);
        }

        #[test]
        fn observing_any_response_never_panics(status in 0u32..1000, name in "(anthropic-ratelimit-|x-ratelimit-|retry-after)[a-z0-9-]{0,30}", value in "\\PC{0,40}") {
            let obs = observe_response(status, &[(name, value)], NOW);
            let mut health = Health::default();
            health.apply(&obs, DISABLE_FOR, NOW);
            if let Some(until) = health.cooling_until(NOW) {
                prop_assert!((NOW + MIN_COOLING_MS..=NOW + MAX_COOLING_MS).contains(&until));
            }
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Health::decode(&bytes);
            let _ = Pin::decode(&bytes);
        }

        #[test]
        fn health_round_trips(tag: u32, req: u64, tok: u64, until: u64, rem: u64, lim: Option<u64>, reset in proptest::option::of(0u64..u64::MAX), state in 0u8..3, status: u16, since: u64) {
            let mut health = Health { key_tag: tag, requests: req, tokens: tok, load_milli: rem, load_ms: until, last_status: status, ..Health::default() };
            health.state = match state {
                0 => AccountState::Ok,
                1 => AccountState::Cooling { until_ms: until },
                _ => AccountState::Disabled { reason: DisableReason::InvalidKey, status, since_ms: since, probe_after_ms: until },
            };
            health.dims[3] = Some(Dim { remaining: rem, limit: lim.map(|l| l.min(u64::MAX - 1)), reset_ms: reset, seen_ms: until });
            let mut buf = Vec::new();
            health.encode(&mut buf);
            prop_assert_eq!(Health::decode(&buf), health);
        }

        #[test]
        fn pick_only_ever_picks_a_usable_account_of_the_api(
            kinds in proptest::collection::vec(0u8..5, 4),
            strategy in 0u8..3,
            counter: u64,
            excl in proptest::collection::vec(0usize..5, 0..3),
        ) {
            let states: Vec<Health> = kinds.iter().map(|k| {
                let mut s = Health::default();
                match k {
                    1 => s.state = cooling(1_000),
                    2 => s.state = disabled(401),
                    3 => s.dims[0] = Some(Dim { remaining: 0, limit: None, reset_ms: Some(NOW + 5), seen_ms: NOW }),
                    // Disabled, its probe due.
                    4 => s.state = AccountState::Disabled { reason: DisableReason::InvalidKey, status: 401, since_ms: NOW - DISABLE_FOR, probe_after_ms: NOW },
                    _ => {}
                }
                s
            }).collect();
            let strategy = [Strategy::Priority, Strategy::RoundRobin, Strategy::LeastLoaded][strategy as usize];
            match pick_with(&states, strategy, counter, &excl) {
                Choice::Pick { account } => {
                    prop_assert!(account != 1);
                    prop_assert!(states[account].pickable(NOW));
                    prop_assert!(kinds[account] != 1 && kinds[account] != 2);
                }
                Choice::AllCooling { retry_after_s } => {
                    prop_assert_eq!(retry_after_s, 1);
                    prop_assert!([0usize, 2, 3].iter().all(|i| !states[*i].pickable(NOW)));
                }
                Choice::NoAccount => {
                    prop_assert!([0usize, 2, 3].iter().all(|i| kinds[*i] == 2));
                }
            }
        }
    }
}
