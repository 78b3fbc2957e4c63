//! The local quota engine: every limit of one owner (a consumer or an account) lives in one
//! shared-data value, and each decision is a pure function over that state and the clock
//! (`decide`, `settle`), run through the store by a short compare-and-swap loop (`admit`,
//! `reconcile`, `renew`, `release`). One admission is one `get` and one `set`.

use crate::civil;
use crate::codec::{self, Reader};
use crate::config::Duration;
use crate::limits::{Limit, LimitKind, Per, Price, Usage, WindowKind};
use crate::store::{self, Round, SlotTable, Store, StoreError, MAX_TRIES};

/// `renew` writes only when the lease was last renewed at least this long ago, or a third of
/// `lease_ttl` when that is shorter (see `renew_after_ms`).
pub const RENEW_AFTER_MS: u64 = 30_000;
/// Default size of the slot table for consumers named by `consumer_header` but not configured.
pub const DEFAULT_DYNAMIC_SLOTS: u32 = 4096;

const VERSION: u8 = 1;
/// Bounds on decoded values: anything larger is garbage and reads as a fresh state.
/// At most this many limits per owner are stored (the configuration should refuse more).
const MAX_ENTRIES: usize = 255;
const MAX_LEASES: usize = 10_000;
const FP_CONCURRENT: u8 = 0x80;

/// What one request counts against each limit kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amounts {
    pub tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub requests: u64,
    pub cost_micros: u64,
}

impl Amounts {
    /// Nothing: reconciling with it cancels a reservation entirely (request included).
    pub const ZERO: Amounts = Amounts {
        tokens: 0,
        input_tokens: 0,
        output_tokens: 0,
        requests: 0,
        cost_micros: 0,
    };

    /// The amount a limit of `kind` counts.
    pub fn of(&self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::Tokens => self.tokens,
            LimitKind::InputTokens => self.input_tokens,
            LimitKind::OutputTokens => self.output_tokens,
            LimitKind::Requests => self.requests,
            LimitKind::CostUsd => self.cost_micros,
        }
    }

    /// The real amounts of one finished request (SPEC "Counting").
    pub fn from_usage(usage: &Usage, price: Option<&Price>) -> Amounts {
        Amounts {
            tokens: usage.total(),
            input_tokens: usage.input_side(),
            output_tokens: usage.output,
            requests: 1,
            cost_micros: price.map_or(0, |p| p.cost_micros(usage)),
        }
    }
}

/// What admission reserves (SPEC "Reservation"): the input estimate plus
/// `min(max_tokens, output_reserve)` of output, one request, and their price.
pub fn reservation(
    estimate: u64,
    max_tokens: Option<u64>,
    output_reserve: u64,
    price: Option<&Price>,
) -> Amounts {
    let output = max_tokens.unwrap_or(output_reserve).min(output_reserve);
    let usage = Usage {
        input: estimate,
        output,
        ..Usage::default()
    };
    Amounts::from_usage(&usage, price)
}

/// Where an owner's state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerKey {
    /// A key made when the configuration loaded (configured consumer or account).
    Fixed(String),
    /// A name chosen outside the configuration: one of two slots of a `SlotTable`, the
    /// value tagged with `owner`.
    Dynamic { slots: [String; 2], owner: u64 },
}

impl OwnerKey {
    pub fn consumer(name: &str) -> OwnerKey {
        OwnerKey::Fixed(store::joined("tollgate:q:c:", name))
    }

    pub fn account(name: &str) -> OwnerKey {
        OwnerKey::Fixed(store::joined("tollgate:q:a:", name))
    }

    /// The state of `name` in `table` (see `dynamic_slots`).
    pub fn dynamic(table: &SlotTable, name: &str) -> OwnerKey {
        let [a, b] = table.slots(name);
        OwnerKey::Dynamic {
            slots: [table.key(a), table.key(b)],
            owner: store::owner_tag(name),
        }
    }

    fn key(&self, slot: u8) -> &str {
        match self {
            OwnerKey::Fixed(k) => k,
            OwnerKey::Dynamic { slots: [a, b], .. } => {
                if slot == 0 {
                    a
                } else {
                    b
                }
            }
        }
    }

    fn owner(&self) -> u64 {
        match self {
            OwnerKey::Fixed(_) => 0,
            OwnerKey::Dynamic { owner, .. } => *owner,
        }
    }
}

/// The slot table of consumers named by `consumer_header` that the configuration lacks.
pub fn dynamic_slots(size: u32) -> SlotTable {
    SlotTable::new("tollgate:q:d:", size)
}

/// Creates `keys` (fixed owner keys and every key of the slot table) with an empty state
/// unless they exist; run when the configuration loads. Returns how many it created.
#[inline(never)]
pub fn prepare(
    store: &dyn Store,
    keys: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<usize, StoreError> {
    let mut initial = Vec::new();
    State::default().encode(&mut initial);
    let mut created = 0;
    for key in keys {
        if store::ensure(store, key.as_ref(), &initial)? {
            created += 1;
        }
    }
    Ok(created)
}

/// What an admitted request took, kept by the host until the response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Which slot of a `Dynamic` key held the state (0 for `Fixed`).
    pub slot: u8,
    /// The slot owner's tag at admission (0 for `Fixed`).
    pub owner: u64,
    /// The reservation charged.
    pub charged: Amounts,
    /// Admission time: it names the window each limit charged.
    pub admitted_ms: u64,
    /// The concurrency lease, when a `concurrent` limit applies.
    pub lease: Option<u32>,
    /// Last time the lease was written (admission or `renew`).
    pub renewed_ms: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the binding limit in the limits given to `admit`.
    pub limit: usize,
    /// Its kind; `None` for a `concurrent` limit.
    pub kind: Option<LimitKind>,
    /// Whole seconds (≥ 1) after which this request fits, if nothing else is charged. For
    /// concurrency: 1 (leases end when responses do).
    pub retry_after_s: u64,
    /// `false` when waiting cannot help: the reservation alone exceeds the limit.
    pub should_retry: bool,
}

impl Rejection {
    /// The metrics `reason`: `tokens`, `requests`, `cost` or `concurrency`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            Some(LimitKind::Requests) => "requests",
            Some(LimitKind::CostUsd) => "cost",
            Some(_) => "tokens",
            None => "concurrency",
        }
    }
}

/// One limit's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Index in the limits.
    pub index: usize,
    /// `None` for a `concurrent` limit.
    pub kind: Option<LimitKind>,
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the usage counted now has left the window (0 when none counts).
    pub reset_s: u64,
}

/// The binding limits for `x-ratelimit-{limit,remaining,reset}-{tokens,requests}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateHeaders {
    /// Over `tokens`, `input_tokens` and `output_tokens` limits.
    pub tokens: Option<LimitStatus>,
    /// Over `requests` limits.
    pub requests: Option<LimitStatus>,
}

/// The outcome of `admit`. Both carry the binding limits as of the state just written or
/// read, so the host needs no further round trip for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        ticket: Ticket,
        headers: RateHeaders,
    },
    Rejected {
        rejection: Rejection,
        headers: RateHeaders,
    },
}

/// What became of a `reconcile`, `release` or `renew`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Applied,
    /// Nothing to do (no lease, or a renewal not due yet).
    Skipped,
    /// The dynamic slot went to another name since admission: nothing left to correct.
    OwnerGone,
    /// Gave up after `MAX_TRIES` lost races: the correction is lost; count it as dropped.
    Dropped,
}

/// Per-limit usage for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    pub index: usize,
    pub kind: LimitKind,
    pub per: Per,
    pub window: WindowKind,
    pub limit: u64,
    /// Counted usage (sliding: the weighted sum, rounded up).
    pub used: u64,
    pub remaining: u64,
    pub reset_s: u64,
}

/// One owner's usage for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageSnapshot {
    pub windows: Vec<WindowUsage>,
    /// Live leases.
    pub concurrent_in_use: u32,
    /// The smallest `concurrent` limit, if any.
    pub concurrent_limit: Option<u32>,
}

/// The counters of one limit: its current fixed window and the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counter {
    /// Which limit shape the counter belongs to; a mismatch (configuration changed) resets it.
    fp: u8,
    /// Index of the current window (see `window_index`).
    idx: u64,
    cur: u64,
    /// Usage of window `idx - 1`.
    prev: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    id: u32,
    expires_ms: u64,
}

/// Everything stored for one owner: one counter per limit (in limit order) and the live
/// concurrency leases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    owner: u64,
    touched_ms: u64,
    next_lease: u32,
    counters: Vec<Counter>,
    leases: Vec<Lease>,
}

impl State {
    /// Decodes a stored value; anything malformed, of another version or out of bounds
    /// reads as a fresh state (losing counts beats refusing every request).
    pub fn decode(bytes: &[u8]) -> State {
        decode(bytes).unwrap_or_default()
    }

    /// Appends the binary encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.extend_from_slice(&self.owner.to_le_bytes());
        codec::put_varint(out, self.touched_ms);
        codec::put_varint(out, u64::from(self.next_lease));
        out.push(self.counters.len().min(MAX_ENTRIES) as u8);
        for c in self.counters.iter().take(MAX_ENTRIES) {
            out.push(c.fp);
            if c.fp != FP_CONCURRENT {
                codec::put_varint(out, c.idx);
                codec::put_varint(out, c.cur);
                codec::put_varint(out, c.prev);
            }
        }
        let leases = self.leases.len().min(MAX_LEASES);
        codec::put_varint(out, leases as u64);
        for l in self.leases.iter().take(MAX_LEASES) {
            codec::put_varint(out, u64::from(l.id));
            codec::put_varint(out, l.expires_ms);
        }
    }

    /// Live concurrency leases at `now_ms`.
    pub fn leases_in_use(&self, now_ms: u64) -> u32 {
        self.leases.iter().filter(|l| l.expires_ms > now_ms).count() as u32
    }

    /// Makes one counter per limit, resetting those whose limit changed shape.
    fn align(&mut self, limits: &[Limit]) {
        self.counters.truncate(limits.len());
        for (i, limit) in limits.iter().enumerate() {
            let fp = fingerprint(limit);
            match self.counters.get_mut(i) {
                Some(c) if c.fp == fp => {}
                Some(c) => {
                    *c = Counter {
                        fp,
                        ..Counter::default()
                    }
                }
                None => self.counters.push(Counter {
                    fp,
                    ..Counter::default()
                }),
            }
        }
    }

    /// Aligns to `limits`, moves every counter to the window of `now_ms` and drops expired
    /// leases.
    fn advance(&mut self, limits: &[Limit], now_ms: u64) {
        self.align(limits);
        for (c, limit) in self.counters.iter_mut().zip(limits) {
            if let Limit::Rate { per, window, .. } = limit {
                *c = rolled(c, *per, *window, now_ms);
            }
        }
        self.leases.retain(|l| l.expires_ms > now_ms);
    }
}

fn decode(bytes: &[u8]) -> Option<State> {
    let mut r = Reader::new(bytes);
    if r.byte().ok()? != VERSION {
        return None;
    }
    let owner = u64::from_le_bytes(r.array().ok()?);
    let touched_ms = r.varint().ok()?;
    let next_lease = u32::try_from(r.varint().ok()?).ok()?;
    let n = usize::from(r.byte().ok()?);
    if n > MAX_ENTRIES {
        return None;
    }
    let mut counters = Vec::with_capacity(n);
    for _ in 0..n {
        let fp = r.byte().ok()?;
        counters.push(if fp == FP_CONCURRENT {
            Counter {
                fp,
                ..Counter::default()
            }
        } else {
            Counter {
                fp,
                idx: r.varint().ok()?,
                cur: r.varint().ok()?,
                prev: r.varint().ok()?,
            }
        });
    }
    let n = usize::try_from(r.varint().ok()?).ok()?;
    if n > MAX_LEASES {
        return None;
    }
    let mut leases = Vec::with_capacity(n);
    for _ in 0..n {
        leases.push(Lease {
            id: u32::try_from(r.varint().ok()?).ok()?,
            expires_ms: r.varint().ok()?,
        });
    }
    if !r.is_empty() {
        return None;
    }
    Some(State {
        owner,
        touched_ms,
        next_lease,
        counters,
        leases,
    })
}

fn fingerprint(limit: &Limit) -> u8 {
    match limit {
        Limit::Concurrent(_) => FP_CONCURRENT,
        Limit::Rate {
            kind, per, window, ..
        } => {
            let k = match kind {
                LimitKind::Tokens => 0,
                LimitKind::InputTokens => 1,
                LimitKind::OutputTokens => 2,
                LimitKind::Requests => 3,
                LimitKind::CostUsd => 4,
            };
            let p = match per {
                Per::Second => 0,
                Per::Minute => 1,
                Per::Hour => 2,
                Per::Day => 3,
                Per::Month => 4,
            };
            let w = match window {
                WindowKind::Sliding => 0,
                WindowKind::Fixed => 1,
            };
            1 + k * 16 + p * 2 + w
        }
    }
}

// ---- windows -------------------------------------------------------------------------------

/// The window holding `now_ms`: epoch-aligned windows of `per.millis()` (a sliding month is
/// 30 days), except fixed months, numbered as calendar months since January 1970 (UTC).
fn window_index(per: Per, window: WindowKind, now_ms: u64) -> u64 {
    match (window, per) {
        (WindowKind::Fixed, Per::Month) => civil::month_index(now_ms),
        _ => now_ms / per.millis(),
    }
}

/// Start of window `idx` in unix millis.
fn window_start(per: Per, window: WindowKind, idx: u64) -> u64 {
    match (window, per) {
        (WindowKind::Fixed, Per::Month) => civil::month_start_ms(idx),
        _ => idx.saturating_mul(per.millis()),
    }
}

/// The counter moved to the window of `now_ms`. A clock behind the stored window (another
/// worker wrote a moment later) keeps the stored window.
fn rolled(c: &Counter, per: Per, window: WindowKind, now_ms: u64) -> Counter {
    let idx = window_index(per, window, now_ms);
    if idx <= c.idx {
        *c
    } else if idx == c.idx + 1 {
        Counter {
            fp: c.fp,
            idx,
            cur: 0,
            prev: c.cur,
        }
    } else {
        Counter {
            fp: c.fp,
            idx,
            cur: 0,
            prev: 0,
        }
    }
}

/// A rate limit's parts.
#[derive(Clone, Copy)]
struct Rate {
    kind: LimitKind,
    amount: u64,
    per: Per,
    window: WindowKind,
}

fn rate(limit: &Limit) -> Option<Rate> {
    match *limit {
        Limit::Rate {
            kind,
            amount,
            per,
            window,
        } => Some(Rate {
            kind,
            amount,
            per,
            window,
        }),
        Limit::Concurrent(_) => None,
    }
}

impl Rate {
    /// Milliseconds of window `c.idx` elapsed at `now_ms`, and the window length.
    fn elapsed(&self, c: &Counter, now_ms: u64) -> (u64, u64) {
        let len = self.per.millis();
        let start = window_start(self.per, self.window, c.idx);
        (now_ms.saturating_sub(start).min(len), len)
    }

    /// Whether `extra` more fits at `now_ms` (`c` rolled to `now_ms`). Sliding windows
    /// compare exactly: `(cur + extra)·L + prev·(L − e) ≤ amount·L`.
    fn fits(&self, c: &Counter, extra: u64, now_ms: u64) -> bool {
        match self.window {
            WindowKind::Fixed => c.cur.saturating_add(extra) <= self.amount,
            WindowKind::Sliding => {
                let (e, len) = self.elapsed(c, now_ms);
                let used = (u128::from(c.cur) + u128::from(extra)) * u128::from(len)
                    + u128::from(c.prev) * u128::from(len - e);
                used <= u128::from(self.amount) * u128::from(len)
            }
        }
    }

    /// Counted usage at `now_ms`, sliding windows rounded up.
    fn used(&self, c: &Counter, now_ms: u64) -> u64 {
        match self.window {
            WindowKind::Fixed => c.cur,
            WindowKind::Sliding => {
                let (e, len) = self.elapsed(c, now_ms);
                let weighted = (u128::from(c.prev) * u128::from(len - e)).div_ceil(u128::from(len));
                c.cur
                    .saturating_add(u64::try_from(weighted).unwrap_or(u64::MAX))
            }
        }
    }

    /// The first instant at which `extra` fits if nothing else is charged (`extra` ≤ amount).
    /// Usage only falls as time passes, so this is exact.
    fn ready_at(&self, c: &Counter, extra: u64, now_ms: u64) -> u64 {
        let start = window_start(self.per, self.window, c.idx);
        let end = window_start(self.per, self.window, c.idx.saturating_add(1));
        match self.window {
            WindowKind::Fixed => {
                if c.cur.saturating_add(extra) <= self.amount {
                    now_ms
                } else {
                    end
                }
            }
            WindowKind::Sliding => {
                let len = self.per.millis();
                // Within window idx the usage is cur + prev·(L − e)/L; it fits once
                // L − e ≤ room·L / prev.
                let need = |room: u64, weight: u64| -> u64 {
                    if weight == 0 {
                        return 0;
                    }
                    let allowed = u128::from(room) * u128::from(len) / u128::from(weight);
                    len - u64::try_from(allowed.min(u128::from(len))).unwrap_or(len)
                };
                let t = match self.amount.checked_sub(c.cur.saturating_add(extra)) {
                    Some(room) => start.saturating_add(need(room, c.prev)),
                    // Not this window: in the next, cur becomes the weighted previous.
                    None => end.saturating_add(need(self.amount.saturating_sub(extra), c.cur)),
                };
                t.max(now_ms)
            }
        }
    }

    /// Whole seconds until what counts now has left the window.
    fn reset_s(&self, c: &Counter, now_ms: u64) -> u64 {
        let end = window_start(self.per, self.window, c.idx.saturating_add(1));
        let at = match self.window {
            WindowKind::Fixed if c.cur > 0 => end,
            WindowKind::Sliding if c.cur > 0 => end.saturating_add(self.per.millis()),
            WindowKind::Sliding if c.prev > 0 => end,
            _ => now_ms,
        };
        seconds_until(at, now_ms)
    }

    fn status(&self, index: usize, c: &Counter, now_ms: u64) -> LimitStatus {
        LimitStatus {
            index,
            kind: Some(self.kind),
            limit: self.amount,
            remaining: self.amount.saturating_sub(self.used(c, now_ms)),
            reset_s: self.reset_s(c, now_ms),
        }
    }
}

fn seconds_until(at: u64, now_ms: u64) -> u64 {
    at.saturating_sub(now_ms).div_ceil(1000)
}

// ---- pure decisions ------------------------------------------------------------------------

/// The pure admission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit(Ticket),
    Reject(Rejection),
}

/// Decides one admission at `now_ms` and, when admitted, charges `amounts` to every rate
/// limit and takes a lease into `state` that lives `lease_ttl` unless renewed (the caller
/// writes the state back). The ticket's `slot` and `owner` are left for the caller. A
/// rejection leaves the counters as they were (rolled).
pub fn decide(
    state: &mut State,
    limits: &[Limit],
    amounts: &Amounts,
    now_ms: u64,
    lease_ttl: Duration,
) -> Decision {
    state.advance(limits, now_ms);
    let mut worst: Option<Rejection> = None;
    let mut needs_lease = false;
    for (i, (limit, c)) in limits.iter().zip(&state.counters).enumerate() {
        let refusal = match limit {
            Limit::Rate { .. } => rate(limit).and_then(|r| {
                let extra = amounts.of(r.kind);
                if extra > r.amount {
                    Some(Rejection {
                        limit: i,
                        kind: Some(r.kind),
                        retry_after_s: r.reset_s(c, now_ms).max(1),
                        should_retry: false,
                    })
                } else if r.fits(c, extra, now_ms) {
                    None
                } else {
                    Some(Rejection {
                        limit: i,
                        kind: Some(r.kind),
                        retry_after_s: seconds_until(r.ready_at(c, extra, now_ms), now_ms).max(1),
                        should_retry: true,
                    })
                }
            }),
            Limit::Concurrent(n) => {
                needs_lease = true;
                let full = state.leases.len() >= (*n as usize).min(MAX_LEASES);
                full.then_some(Rejection {
                    limit: i,
                    kind: None,
                    retry_after_s: 1,
                    should_retry: *n > 0,
                })
            }
        };
        worst = match (worst, refusal) {
            (None, r) | (r, None) => r,
            // The request fits once every limit has room: the latest limit binds, and one
            // that waiting cannot help binds above all.
            (Some(a), Some(b)) => Some(
                if (!b.should_retry, b.retry_after_s) > (!a.should_retry, a.retry_after_s) {
                    b
                } else {
                    a
                },
            ),
        };
    }
    if let Some(rejection) = worst {
        return Decision::Reject(rejection);
    }
    for (c, limit) in state.counters.iter_mut().zip(limits) {
        if let Some(r) = rate(limit) {
            c.cur = c.cur.saturating_add(amounts.of(r.kind));
        }
    }
    let lease = needs_lease.then(|| {
        let id = state.next_lease;
        state.next_lease = state.next_lease.wrapping_add(1);
        state.leases.push(Lease {
            id,
            expires_ms: now_ms.saturating_add(lease_ttl.millis()),
        });
        id
    });
    state.touched_ms = now_ms;
    Decision::Admit(Ticket {
        slot: 0,
        owner: state.owner,
        charged: *amounts,
        admitted_ms: now_ms,
        lease,
        renewed_ms: now_ms,
    })
}

/// Replaces a ticket's reservation by `actual` and frees its lease. Per limit the
/// difference goes to the window that took the reservation if it is the current or the
/// previous one; otherwise a charge goes to the current window and a refund is dropped.
pub fn settle(state: &mut State, limits: &[Limit], ticket: &Ticket, actual: &Amounts, now_ms: u64) {
    state.advance(limits, now_ms);
    for (c, limit) in state.counters.iter_mut().zip(limits) {
        let Some(r) = rate(limit) else { continue };
        let reserved = ticket.charged.of(r.kind);
        let real = actual.of(r.kind);
        let taken = window_index(r.per, r.window, ticket.admitted_ms);
        let counter = if taken == c.idx {
            &mut c.cur
        } else if taken.saturating_add(1) == c.idx {
            &mut c.prev
        } else if real > reserved {
            &mut c.cur
        } else {
            continue;
        };
        *counter = if real >= reserved {
            counter.saturating_add(real - reserved)
        } else {
            counter.saturating_sub(reserved - real)
        };
    }
    if let Some(id) = ticket.lease {
        state.leases.retain(|l| l.id != id);
    }
}

/// Every limit's standing at `now_ms` (concurrency included, `kind: None`).
pub fn status(state: &State, limits: &[Limit], now_ms: u64) -> Vec<LimitStatus> {
    statuses(state, limits, now_ms).collect()
}

fn statuses<'a>(
    state: &'a State,
    limits: &'a [Limit],
    now_ms: u64,
) -> impl Iterator<Item = LimitStatus> + 'a {
    limits
        .iter()
        .enumerate()
        .map(move |(i, limit)| match (limit, rate(limit)) {
            (_, Some(r)) => r.status(i, &counter_at(state, i, limit, now_ms), now_ms),
            (_, None) => {
                let n = match limit {
                    Limit::Concurrent(n) => *n,
                    Limit::Rate { .. } => 0,
                };
                LimitStatus {
                    index: i,
                    kind: None,
                    limit: u64::from(n),
                    remaining: u64::from(n.saturating_sub(state.leases_in_use(now_ms))),
                    reset_s: 0,
                }
            }
        })
}

/// Limit `i`'s counter moved to `now_ms`, fresh if it belongs to another limit shape.
fn counter_at(state: &State, i: usize, limit: &Limit, now_ms: u64) -> Counter {
    let fp = fingerprint(limit);
    let c = match state.counters.get(i) {
        Some(c) if c.fp == fp => *c,
        _ => Counter {
            fp,
            ..Counter::default()
        },
    };
    match rate(limit) {
        Some(r) => rolled(&c, r.per, r.window, now_ms),
        None => c,
    }
}

/// Picks the binding limit for tokens and for requests: the lowest remaining/limit ratio,
/// ties to the soonest reset. Cost and concurrency limits have no header.
pub fn binding(statuses: impl IntoIterator<Item = LimitStatus>) -> RateHeaders {
    let mut h = RateHeaders::default();
    for s in statuses {
        let slot = match s.kind {
            Some(LimitKind::Tokens | LimitKind::InputTokens | LimitKind::OutputTokens) => {
                &mut h.tokens
            }
            Some(LimitKind::Requests) => &mut h.requests,
            _ => continue,
        };
        let better = match slot {
            None => true,
            Some(b) => {
                // remaining/limit compared by cross-multiplying; a zero limit is ratio 0.
                let ratio = |x: &LimitStatus| match x.limit {
                    0 => (0, 1),
                    l => (u128::from(x.remaining), u128::from(l)),
                };
                let ((rs, ls), (rb, lb)) = (ratio(&s), ratio(b));
                let (lhs, rhs) = (rs * lb, rb * ls);
                lhs < rhs || (lhs == rhs && s.reset_s < b.reset_s)
            }
        };
        if better {
            *slot = Some(s);
        }
    }
    h
}

/// The rate-limit headers of an owner's state: its binding limit's.
#[inline(never)]
fn headers(state: &State, limits: &[Limit], now_ms: u64) -> RateHeaders {
    binding(statuses(state, limits, now_ms))
}

// ---- the store loops -------------------------------------------------------------------------

/// An owner's state as read: which slot, its cas, and whether `owner` matched.
struct Located {
    slot: u8,
    cas: u32,
    state: State,
    owned: bool,
}

fn read(store: &dyn Store, key: &str) -> Result<(State, u32), StoreError> {
    let (value, cas) = store.get(key)?;
    Ok((
        value.map_or_else(State::default, |v| State::decode(&v)),
        cas,
    ))
}

/// Finds `key`'s state. For a dynamic key that owns neither slot, returns the slot to take
/// over (a free one, else the least recently used) with `owned: false`.
fn locate(store: &dyn Store, key: &OwnerKey) -> Result<Located, StoreError> {
    match key {
        OwnerKey::Fixed(k) => {
            let (state, cas) = read(store, k)?;
            Ok(Located {
                slot: 0,
                cas,
                state,
                owned: true,
            })
        }
        OwnerKey::Dynamic {
            slots: [a, b],
            owner,
        } => {
            let (sa, ca) = read(store, a)?;
            if sa.owner == *owner {
                return Ok(Located {
                    slot: 0,
                    cas: ca,
                    state: sa,
                    owned: true,
                });
            }
            let (sb, cb) = read(store, b)?;
            if sb.owner == *owner {
                return Ok(Located {
                    slot: 1,
                    cas: cb,
                    state: sb,
                    owned: true,
                });
            }
            let take_b = sa.owner != 0 && (sb.owner == 0 || sb.touched_ms < sa.touched_ms);
            let (slot, cas) = if take_b { (1, cb) } else { (0, ca) };
            Ok(Located {
                slot,
                cas,
                state: State {
                    owner: *owner,
                    ..State::default()
                },
                owned: false,
            })
        }
    }
}

/// Lost races before admission gives up: far more than `MAX_TRIES`, because a request must
/// never be refused for contention (SPEC "Contention is not a refusal"). Each lost race means
/// another worker's write went through, so the loop always makes progress; a thousand losses
/// in a row do not happen with a worker per core.
const ADMIT_TRIES: u32 = 1024;

/// Admits a request if every limit has room for `amounts` and a lease is free, charging it
/// in the same write; the lease frees itself `lease_ttl` after admission unless renewed. One `get` and one `set` when uncontended (a dynamic name not in its
/// first slot costs one more `get`); a rejection costs one `get` and writes nothing.
///
/// Gives up with `Err(StoreError::Contended)` after `ADMIT_TRIES` lost races. The host then
/// refuses the request with 429 and `retry-after: 1`: admitting would break the guarantee
/// that admitted reservations never exceed a limit, and the losing races mean that this
/// owner is being served heavily at this very moment.
pub fn admit(
    store: &dyn Store,
    key: &OwnerKey,
    limits: &[Limit],
    amounts: &Amounts,
    now_ms: u64,
    lease_ttl: Duration,
) -> Result<Admission, StoreError> {
    store::retry(store, ADMIT_TRIES, |out| {
        let mut loc = locate(store, key)?;
        let decision = match decide(&mut loc.state, limits, amounts, now_ms, lease_ttl) {
            Decision::Reject(rejection) => store::Decision::Keep(Admission::Rejected {
                rejection,
                headers: headers(&loc.state, limits, now_ms),
            }),
            Decision::Admit(mut ticket) => {
                ticket.slot = loc.slot;
                ticket.owner = key.owner();
                loc.state.encode(out);
                store::Decision::Write(Admission::Admitted {
                    ticket,
                    headers: headers(&loc.state, limits, now_ms),
                })
            }
        };
        Ok(Round {
            key: key.key(loc.slot),
            cas: loc.cas,
            decision,
        })
    })
}

/// Runs `f` on the state a ticket was admitted against, with compare-and-swap.
fn update(
    store: &dyn Store,
    key: &OwnerKey,
    ticket: &Ticket,
    mut f: impl FnMut(&mut State) -> bool,
) -> Result<Settled, StoreError> {
    let outcome = store::update(store, key.key(ticket.slot), MAX_TRIES, |old, out| {
        let mut state = old.map_or_else(State::default, State::decode);
        if state.owner != ticket.owner {
            return store::Decision::Keep(Settled::OwnerGone);
        }
        if !f(&mut state) {
            return store::Decision::Keep(Settled::Skipped);
        }
        state.encode(out);
        store::Decision::Write(Settled::Applied)
    });
    match outcome {
        Err(StoreError::Contended) => Ok(Settled::Dropped),
        other => other,
    }
}

/// Replaces the ticket's reservation by the real `actual` (see `settle`) and releases its
/// lease. `Amounts::ZERO` cancels the reservation (a request refused later, e.g. by the
/// global limit). Gives up after `MAX_TRIES` lost races with `Settled::Dropped`.
pub fn reconcile(
    store: &dyn Store,
    key: &OwnerKey,
    limits: &[Limit],
    ticket: &Ticket,
    actual: &Amounts,
    now_ms: u64,
) -> Result<Settled, StoreError> {
    update(store, key, ticket, |s| {
        settle(s, limits, ticket, actual, now_ms);
        true
    })
}

/// Frees the ticket's lease without touching the counters.
pub fn release(store: &dyn Store, key: &OwnerKey, ticket: &Ticket) -> Result<Settled, StoreError> {
    let Some(id) = ticket.lease else {
        return Ok(Settled::Skipped);
    };
    update(store, key, ticket, |s| {
        let before = s.leases.len();
        s.leases.retain(|l| l.id != id);
        s.leases.len() != before
    })
}

/// How old the last renewal must be before `renew` writes: `RENEW_AFTER_MS`, or a third of
/// `lease_ttl` when that is shorter, so a flowing stream renews its lease a few times per
/// ttl rather than once it has already lapsed.
fn renew_after_ms(lease_ttl: Duration) -> u64 {
    RENEW_AFTER_MS.min(lease_ttl.millis() / 3)
}

/// Extends the ticket's lease to `now_ms + lease_ttl` (the `lease_ttl` it was admitted
/// with). Call it as a stream flows: it touches the store only when the last renewal is
/// `renew_after_ms(lease_ttl)` old. A lease that has already expired is not taken again
/// (that could exceed the limit): `Skipped`.
pub fn renew(
    store: &dyn Store,
    key: &OwnerKey,
    ticket: &mut Ticket,
    now_ms: u64,
    lease_ttl: Duration,
) -> Result<Settled, StoreError> {
    let Some(id) = ticket.lease else {
        return Ok(Settled::Skipped);
    };
    if now_ms < ticket.renewed_ms.saturating_add(renew_after_ms(lease_ttl)) {
        return Ok(Settled::Skipped);
    }
    let outcome = update(store, key, ticket, |s| {
        match s
            .leases
            .iter_mut()
            .find(|l| l.id == id && l.expires_ms > now_ms)
        {
            Some(l) => {
                l.expires_ms = now_ms.saturating_add(lease_ttl.millis());
                true
            }
            None => false,
        }
    })?;
    if outcome != Settled::Dropped {
        ticket.renewed_ms = now_ms;
    }
    Ok(outcome)
}

/// An owner's usage for the admin API (one `get`, or two for a dynamic name; no write).
pub fn usage_snapshot(
    store: &dyn Store,
    key: &OwnerKey,
    limits: &[Limit],
    now_ms: u64,
) -> Result<UsageSnapshot, StoreError> {
    let loc = locate(store, key)?;
    let state = if loc.owned {
        loc.state
    } else {
        State::default()
    };
    let mut snap = UsageSnapshot {
        windows: Vec::with_capacity(limits.len()),
        concurrent_in_use: state.leases_in_use(now_ms),
        concurrent_limit: None,
    };
    for (i, limit) in limits.iter().enumerate() {
        match (limit, rate(limit)) {
            (_, Some(r)) => {
                let c = counter_at(&state, i, limit, now_ms);
                let used = r.used(&c, now_ms);
                snap.windows.push(WindowUsage {
                    index: i,
                    kind: r.kind,
                    per: r.per,
                    window: r.window,
                    limit: r.amount,
                    used,
                    remaining: r.amount.saturating_sub(used),
                    reset_s: r.reset_s(&c, now_ms),
                });
            }
            (Limit::Concurrent(n), None) => {
                snap.concurrent_limit = Some(snap.concurrent_limit.map_or(*n, |m| m.min(*n)));
            }
            _ => {}
        }
    }
    Ok(snap)
}

#[cfg(test)]
mod tests;
