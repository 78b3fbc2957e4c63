//! What one worker holds for the current configuration (`Plugin`, shared by the root and
//! every request of the worker), its metric ids (`Stats`), and small facts every phase uses.

use std::cell::{Cell, RefCell};
use std::fmt;

use super::host::{Host, Level, MetricKind};
use crate::accounts;
use crate::analytics::Accumulator;
use crate::config::{self, Config};
use crate::learn;
use crate::metrics;
use crate::quota::{self, OwnerKey, RateHeaders};
use crate::ratelimit::{ChargeBook, Refusals};
use crate::store::{self, FnvMap, SlotTable, Store, StoreError};

/// A log line: the context id first (Envoy's prefix already names the plugin and root id).
#[inline(never)]
pub(crate) fn log(h: &impl Host, level: Level, id: u32, args: fmt::Arguments<'_>) {
    h.log(level, &format!("[{id}] {args}"));
}

/// An account's observed state on its `tollgate_account_state` gauge (every observation sets
/// it: a cooling that ended on time is no transition), and a change of state logged once.
pub(crate) fn show_transition<H: Host>(
    h: &mut H,
    id: u32,
    gauge: u32,
    account: &str,
    t: &accounts::Transition,
) {
    h.record_metric(gauge, t.after.gauge().max(0) as u64);
    if t.changed() {
        let (after, before) = (t.after.as_str(), t.before.as_str());
        log(
            h,
            Level::Warn,
            id,
            format_args!("account {account} is now {after} (was {before})"),
        );
    }
}

/// What one worker's VM holds for the current configuration.
pub struct Plugin {
    pub cfg: Config,
    pub(crate) stats: RefCell<Stats>,
    /// Learned real/estimate input ratios per model, and this worker's cache of them.
    pub(crate) learned: SlotTable,
    /// By the model's `store::owner_tag`.
    ratios: Memo<u64, (f64, u64)>,
    /// The pricing entry (`cfg.pricing_index`) of each model this worker has priced: one
    /// hash lookup per request instead of a glob match per pricing entry.
    prices: Memo<String, Option<usize>>,
    /// Charges for the global rate-limit service, summed per descriptor and sent from the
    /// root tick.
    pub(crate) charges: RefCell<ChargeBook>,
    /// The global service's over-limit answers, until their windows end.
    pub(crate) refusals: RefCell<Refusals>,
    /// Whether the global service is failing (for the log-once-per-transition rule).
    degraded: Cell<bool>,
    /// This worker's analytics facts, merged into shared data from the root tick.
    pub(crate) analytics: RefCell<Accumulator>,
    /// The model names that are label values of their own (bounded per process).
    pub(crate) models: RefCell<metrics::ModelLabels>,
    /// Per account (by index), picks `select` left uncounted and real tokens served; and
    /// learning observations: not yet written to shared data. The request path only queues
    /// them, the root tick writes them.
    served: RefCell<Vec<(u64, u64)>>,
    pub(crate) observed: RefCell<learn::Pending>,
    /// Keys this worker has already matched to a consumer: a known key skips the SHA-256 of
    /// every request. Only matched keys enter (a client cannot fill it), at most `KNOWN_KEYS`.
    pub(crate) known_keys: RefCell<FnvMap<String, usize>>,
}

/// Size of `Plugin::known_keys` (cleared when full).
pub(crate) const KNOWN_KEYS: usize = 1024;

/// A worker's memo of values derived per model name: at most `MEMO_CAP` entries, emptied when
/// full, since the names are the clients' choice.
#[derive(Debug)]
pub(crate) struct Memo<K, V>(RefCell<FnvMap<K, V>>);

const MEMO_CAP: usize = 512;

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo(RefCell::new(FnvMap::default()))
    }
}

impl<K: std::hash::Hash + Eq, V: Copy> Memo<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.borrow().get(key).copied()
    }

    fn put(&self, key: K, value: V) {
        let mut map = self.0.borrow_mut();
        if map.len() >= MEMO_CAP {
            map.clear();
        }
        map.insert(key, value);
    }
}

impl Plugin {
    #[inline(never)]
    pub fn new(cfg: Config) -> Plugin {
        Plugin {
            models: RefCell::new(metrics::ModelLabels::new(cfg.max_models)),
            cfg,
            stats: RefCell::default(),
            learned: learn::table(),
            ratios: Memo::default(),
            prices: Memo::default(),
            charges: RefCell::new(ChargeBook::new(4096, 16)),
            refusals: RefCell::default(),
            degraded: Cell::new(false),
            analytics: RefCell::default(),
            served: RefCell::default(),
            observed: RefCell::default(),
            known_keys: RefCell::default(),
        }
    }

    /// Writes the queued account counts and learning observations (root tick, and before
    /// the admin API reads them).
    pub(crate) fn flush_pending(&self, store: &dyn Store) {
        let served = std::mem::take(&mut *self.served.borrow_mut());
        for (i, (account, (picks, tokens))) in self.cfg.accounts.iter().zip(served).enumerate() {
            if accounts::record_totals(store, account, picks, tokens).is_err() {
                // Contended past the retries: queued again for the next tick.
                self.queue_served(i, picks, tokens);
            }
        }
        let mut observed = std::mem::take(&mut *self.observed.borrow_mut());
        observed.flush(store, &self.learned);
    }

    /// Queues uncounted picks of account `i` and real tokens it served.
    pub(crate) fn queue_served(&self, i: usize, picks: u64, tokens: u64) {
        let mut served = self.served.borrow_mut();
        if served.len() <= i {
            served.resize(self.cfg.accounts.len().max(i + 1), (0, 0));
        }
        if let Some((p, t)) = served.get_mut(i) {
            *p = p.saturating_add(picks);
            *t = t.saturating_add(tokens);
        }
    }

    /// The learned ratio for `model`, from this worker's cache (refreshed every 2 s).
    pub(crate) fn ratio(&self, store: &dyn Store, model: &str, now: u64) -> f64 {
        const FRESH_MS: u64 = 2_000;
        let tag = store::owner_tag(model);
        if let Some((r, at)) = self.ratios.get(&tag) {
            if now.saturating_sub(at) < FRESH_MS {
                return r;
            }
        }
        let r = learn::lookup(store, &self.learned, model).unwrap_or(1.0);
        self.ratios.put(tag, (r, now));
        r
    }

    /// `cfg.pricing_index(model)`, remembered per worker (the model is the client's choice:
    /// a `Memo`).
    pub(crate) fn pricing_index(&self, model: &str) -> Option<usize> {
        if let Some(i) = self.prices.get(model) {
            return i;
        }
        let i = self.cfg.pricing_index(model);
        self.prices.put(model.to_owned(), i);
        i
    }

    /// Records whether the global service answered, logging each transition once.
    pub(crate) fn set_degraded(&self, h: &impl Host, id: u32, degraded: bool, why: &str) {
        if self.degraded.replace(degraded) != degraded {
            if degraded {
                let msg =
                    format_args!("global rate-limit service failing ({why}); failure_mode applies");
                log(h, Level::Warn, id, msg);
            } else {
                let msg = format_args!("global rate-limit service answering again");
                log(h, Level::Warn, id, msg);
            }
        }
    }

    /// Creates every quota key now, so no two workers race to create one later.
    #[inline(never)]
    pub(crate) fn prepare_store(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let cfg = &self.cfg;
        let mut keys: Vec<String> = Vec::new();
        for c in &cfg.consumers {
            if !c.limits.is_empty() {
                keys.push(fixed_key(OwnerKey::consumer(&c.name)));
            }
        }
        if cfg.anonymous.as_ref().is_some_and(|a| !a.limits.is_empty()) {
            keys.push(fixed_key(OwnerKey::consumer(config::ANONYMOUS)));
        }
        for a in &cfg.accounts {
            if !a.limits.is_empty() {
                keys.push(fixed_key(OwnerKey::account(&a.name)));
            }
        }
        let n = quota::prepare(store, keys)? + accounts::prepare(store, cfg)?;
        for key in self.learned.keys() {
            store::ensure(store, &key, b"-")?;
        }
        // Made now like every other key, so the key set is complete once the config loads.
        crate::analytics::prepare(store, cfg)?;
        Ok(n)
    }
}

fn fixed_key(k: OwnerKey) -> String {
    match k {
        OwnerKey::Fixed(s) => s,
        OwnerKey::Dynamic {
            slots: [first, _], ..
        } => first,
    }
}

/// Metric ids by name, defined on first use (the label sets are bounded: configured names,
/// matched globs and fixed reasons).
#[derive(Default)]
pub(crate) struct Stats {
    ids: FnvMap<String, u32>,
    /// Counters by [`metrics::key`] of their metric and raw labels (an index into
    /// `pending`): a count on the hot path neither formats the name nor hashes a string.
    counters: FnvMap<u64, usize>,
    /// Each counter's id and what this worker counted since the last flush: counts reach
    /// the host from the root tick, at most one tick late (SPEC "Benchmark rules", v2), in
    /// one host call per counter that moved instead of one per count.
    pending: Vec<(u32, u64)>,
    /// `tollgate_account_state` gauge ids by account index.
    account_gauges: Vec<Option<u32>>,
    /// When this worker last looked whether a gauge still shows a cooling that ended, by
    /// account index.
    gauges_checked: Vec<u64>,
}

impl Stats {
    /// The id of metric `name`, defined on first use.
    fn id<H: Host>(&mut self, h: &mut H, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = h.define_metric(kind, name)?;
        self.ids.insert(name.to_string(), id);
        Some(id)
    }

    pub(crate) fn histogram<H: Host>(&mut self, h: &mut H, name: &str, value: i64) {
        if let Some(id) = self.id(h, MetricKind::Histogram, name) {
            h.record_metric(id, value.max(0) as u64);
        }
    }

    /// Whether to look at account `i`'s gauge now: at most once a second per worker.
    pub(crate) fn gauge_check_due(&mut self, i: usize, now_ms: u64) -> bool {
        match self.gauges_checked.get_mut(i) {
            Some(at) if now_ms.saturating_sub(*at) < 1000 => false,
            Some(at) => {
                *at = now_ms;
                true
            }
            None => true,
        }
    }

    /// The id of account `i`'s `tollgate_account_state` gauge (named once per worker).
    pub(crate) fn account_gauge<H: Host>(
        &mut self,
        h: &mut H,
        i: usize,
        account: &str,
    ) -> Option<u32> {
        if let Some(Some(id)) = self.account_gauges.get(i) {
            return Some(*id);
        }
        let id = self.account_gauge_named(h, account)?;
        if self.account_gauges.len() <= i {
            self.account_gauges.resize(i + 1, None);
            self.gauges_checked.resize(i + 1, 0);
        }
        if let Some(slot) = self.account_gauges.get_mut(i) {
            *slot = Some(id);
        }
        Some(id)
    }

    /// The `tollgate_account_state` gauge of an account by name (one this instance may not
    /// list: a failover setup's downstream stage knows the pool from the roster).
    pub(crate) fn account_gauge_named<H: Host>(&mut self, h: &mut H, account: &str) -> Option<u32> {
        let name = metrics::name("tollgate_account_state", &[("account", account)]);
        self.id(h, MetricKind::Gauge, &name)
    }

    pub(crate) fn count<H: Host>(
        &mut self,
        h: &mut H,
        metric: &str,
        labels: &[(&str, &str)],
        by: u64,
    ) {
        if by == 0 {
            return;
        }
        let key = metrics::key(metric, labels);
        let at = match self.counters.get(&key) {
            Some(at) => *at,
            None => {
                let Some(id) = self.id(h, MetricKind::Counter, &metrics::name(metric, labels))
                else {
                    return;
                };
                self.pending.push((id, 0));
                let at = self.pending.len() - 1;
                self.counters.insert(key, at);
                at
            }
        };
        if let Some((_, n)) = self.pending.get_mut(at) {
            *n = n.saturating_add(by);
        }
    }

    /// Sends every count made since the last flush to the host (from the root tick).
    pub(crate) fn flush<H: Host>(&mut self, h: &mut H) {
        for (id, n) in &mut self.pending {
            // A count beyond i64 (never in practice) goes in i64-sized steps.
            while *n > 0 {
                let step = i64::try_from(*n).unwrap_or(i64::MAX);
                h.increment_metric(*id, step);
                *n -= step as u64;
            }
        }
    }

    /// What `metric` with `labels` counted that the host does not show yet.
    #[cfg(test)]
    pub(crate) fn unflushed(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        let Some(id) = self.ids.get(&metrics::name(metric, labels)) else {
            return 0;
        };
        self.pending
            .iter()
            .filter(|p| p.0 == *id)
            .map(|p| p.1)
            .sum()
    }
}

/// Where a finished request's usage numbers came from (`wasm.tollgate.usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UsageSource {
    /// The provider reported them.
    Reported,
    /// Estimated: the stream was cut short (abort, reset) before the final usage.
    Estimated,
    /// Estimated: the body came in an encoding tollgate cannot decode, or broken.
    Undecodable,
    /// Estimated: the reported numbers were not sane (negative, fractional, absurd).
    Invalid,
    /// The upstream refused the request (status ≥ 400) without usage: nothing is charged.
    Refused,
    /// The upstream never answered (reset, timeout): nothing was produced.
    None,
}

impl UsageSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::Undecodable => "undecodable",
            UsageSource::Invalid => "invalid",
            UsageSource::Refused => "refused",
            UsageSource::None => "none",
        }
    }
}

/// Calls `f` with each of the caller's rate-limit headers (SPEC: the binding limit for tokens
/// and for requests; a kind without a limit gets none), formatted without allocating.
pub(crate) fn each_rate_header(h: &RateHeaders, mut f: impl FnMut(&'static str, &str)) {
    const TOKENS: [&str; 3] = [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ];
    const REQUESTS: [&str; 3] = [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ];
    let mut buf = [0u8; 20];
    for (names, st) in [(TOKENS, h.tokens), (REQUESTS, h.requests)] {
        if let Some(st) = st {
            for (name, v) in names.into_iter().zip([st.limit, st.remaining, st.reset_s]) {
                f(name, metrics::decimal(v, &mut buf));
            }
        }
    }
}
