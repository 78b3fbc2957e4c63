//! The one place that knows Envoy exists: proxy-wasm callbacks read the request and the
//! response, call the pure core, and apply its decisions. Host calls go through `ffi`, which
//! turns every unexpected host status into an error instead of the SDK's panic.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use std::cell::Cell;
use std::time::Duration;
use tollgate_core::accounts;
use tollgate_core::api::{self, Api, Reason, Route};
use tollgate_core::config::{self, Config};
use tollgate_core::identity::{self, Caller};
use tollgate_core::learn;
use tollgate_core::limits::{Limit, Price, Usage};
use tollgate_core::metrics;
use tollgate_core::provider::{self, Endpoint};
use tollgate_core::quota::{self, Admission, Amounts, OwnerKey, RateHeaders, Settled, Ticket};
use tollgate_core::ratelimit::{self, ChargeQueue};
use tollgate_core::request::{RequestInfo, RequestScanner};
use tollgate_core::store::{SlotTable, Store, StoreError};
use tollgate_core::usage::ResponseMeter;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        ffi::log(LogLevel::Critical, &format!("tollgate panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Bytes read from Envoy's body buffer per host call: the body is read in windows, never
/// copied into the VM whole.
const BODY_WINDOW: usize = 64 * 1024;
/// How much of an upstream error body is held, read for evidence about the key and cleared
/// of the key before it goes on.
const ERROR_HEAD: usize = 64 * 1024;
/// The largest response chunk sent on before it is metered (see `on_http_response_body`).
const HELD_CHUNK: usize = BODY_WINDOW;

/// An account's observed state on its `tollgate_account_state` gauge (every observation sets
/// it: a cooling that ended on time is no transition), and a change of state logged once.
fn show_transition(gauge: u32, account: &str, t: &accounts::Transition) {
    ffi::record_metric(gauge, t.after.gauge().max(0) as u64);
    if t.changed() {
        ffi::log(
            LogLevel::Warn,
            &format!(
                "tollgate: account {account} is now {} (was {})",
                t.after.as_str(),
                t.before.as_str()
            ),
        );
    }
}

/// What one worker's VM holds for the current configuration.
struct Plugin {
    cfg: Config,
    stats: RefCell<Stats>,
    store: HostStore,
    /// Learned real/estimate input ratios per model, and this worker's cache of them.
    learned: SlotTable,
    /// By the model's `store::owner_tag`.
    ratios: RefCell<tollgate_core::store::FnvMap<u64, (f64, u64)>>,
    /// Charges for the global rate-limit service, sent from the root context.
    charges: RefCell<ChargeQueue>,
    /// Whether the global service is failing (for the log-once-per-transition rule).
    degraded: Cell<bool>,
    /// This worker's analytics facts, merged into shared data from the root tick.
    analytics: RefCell<tollgate_core::analytics::Accumulator>,
    /// The model names that are label values of their own (bounded per process).
    models: RefCell<metrics::ModelLabels>,
    /// Per account (by index), picks `select` left uncounted and real tokens served; and
    /// learning observations: not yet written to shared data. The request path only queues
    /// them, the root tick writes them.
    served: RefCell<Vec<(u64, u64)>>,
    observed: RefCell<learn::Pending>,
    /// Keys this worker has already matched to a consumer: a known key skips the SHA-256 of
    /// every request. Only matched keys enter (a client cannot fill it), at most `KNOWN_KEYS`.
    known_keys: RefCell<tollgate_core::store::FnvMap<String, usize>>,
}

/// Size of `Plugin::known_keys` (cleared when full).
const KNOWN_KEYS: usize = 1024;

impl Plugin {
    fn new(cfg: Config) -> Plugin {
        Plugin {
            stats: RefCell::default(),
            store: HostStore::default(),
            learned: learn::table(),
            ratios: RefCell::default(),
            charges: RefCell::new(ChargeQueue::new(4096, 16)),
            degraded: Cell::new(false),
            analytics: RefCell::default(),
            models: RefCell::new(metrics::ModelLabels::new(cfg.max_models)),
            served: RefCell::default(),
            observed: RefCell::default(),
            known_keys: RefCell::default(),
            cfg,
        }
    }

    /// Writes the queued account counts and learning observations (root tick, and before
    /// the admin API reads them).
    fn flush_pending(&self) {
        let served = std::mem::take(&mut *self.served.borrow_mut());
        for (i, (account, (picks, tokens))) in self.cfg.accounts.iter().zip(served).enumerate() {
            if accounts::record_totals(&self.store, account, picks, tokens).is_err() {
                // Contended past the retries: queued again for the next tick.
                self.queue_served(i, picks, tokens);
            }
        }
        let mut observed = std::mem::take(&mut *self.observed.borrow_mut());
        observed.flush(&self.store, &self.learned);
    }

    /// Queues uncounted picks of account `i` and real tokens it served.
    fn queue_served(&self, i: usize, picks: u64, tokens: u64) {
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
    fn ratio(&self, model: &str, now: u64) -> f64 {
        const FRESH_MS: u64 = 2_000;
        const CACHED: usize = 512;
        let tag = tollgate_core::store::owner_tag(model);
        if let Some((r, at)) = self.ratios.borrow().get(&tag) {
            if now.saturating_sub(*at) < FRESH_MS {
                return *r;
            }
        }
        let r = learn::lookup(&self.store, &self.learned, model).unwrap_or(1.0);
        let mut cache = self.ratios.borrow_mut();
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(tag, (r, now));
        r
    }

    /// Creates every quota key now, so no two workers race to create one later.
    /// Records whether the global service answered, logging each transition once.
    fn set_degraded(&self, degraded: bool, why: &str) {
        if self.degraded.replace(degraded) != degraded {
            let msg = if degraded {
                format!("tollgate: global rate-limit service failing ({why}); failure_mode applies")
            } else {
                "tollgate: global rate-limit service answering again".to_string()
            };
            ffi::log(LogLevel::Warn, &msg);
        }
    }

    fn prepare_store(&self) -> Result<usize, StoreError> {
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
        let n = quota::prepare(&self.store, keys)? + accounts::prepare(&self.store, cfg)?;
        for key in self.learned.keys() {
            tollgate_core::store::ensure(&self.store, &key, b"-")?;
        }
        // Made now like every other key, so the key set is complete once the config loads.
        tollgate_core::analytics::prepare(&self.store, cfg)?;
        Ok(n)
    }
}

fn fixed_key(k: OwnerKey) -> String {
    match k {
        OwnerKey::Fixed(s) => s,
        OwnerKey::Dynamic { slots, .. } => slots[0].clone(),
    }
}

/// Envoy shared data: one store for all workers of the VM id. Every key tollgate creates is
/// written with `CREATE_CAS` (see `store`), so counting those writes counts the keys: Envoy
/// never frees one, and `tollgate_shared_data_keys_created_total` shows the key set stays
/// bounded (flat after the configuration loads).
#[derive(Default)]
struct HostStore {
    created: Cell<Option<u32>>,
}

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        ffi::get_shared_data(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        ffi::set_shared_data(key, value, cas)?;
        if cas == tollgate_core::store::CREATE_CAS {
            let id = match self.created.get() {
                Some(id) => Some(id),
                None => ffi::define_metric(
                    proxy_wasm::types::MetricType::Counter,
                    "tollgate_shared_data_keys_created_total",
                ),
            };
            self.created.set(id);
            if let Some(id) = id {
                ffi::increment_metric(id, 1);
            }
        }
        Ok(())
    }
}

/// Metric ids by name, defined on first use (the label sets are bounded: configured names,
/// matched globs and fixed reasons).
#[derive(Default)]
struct Stats {
    ids: tollgate_core::store::FnvMap<String, u32>,
    /// Counter ids by [`metrics::key`] of their metric and raw labels: a count on the hot
    /// path neither formats the name nor hashes a string.
    counters: tollgate_core::store::FnvMap<u64, u32>,
    /// `tollgate_account_state` gauge ids by account index.
    account_gauges: Vec<Option<u32>>,
    /// When this worker last looked whether a gauge still shows a cooling that ended, by
    /// account index.
    gauges_checked: Vec<u64>,
}

impl Stats {
    /// The id of metric `name`, defined on first use.
    fn id(&mut self, kind: proxy_wasm::types::MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = ffi::define_metric(kind, name)?;
        self.ids.insert(name.to_string(), id);
        Some(id)
    }

    fn histogram(&mut self, name: &str, value: i64) {
        if let Some(id) = self.id(proxy_wasm::types::MetricType::Histogram, name) {
            ffi::record_metric(id, value.max(0) as u64);
        }
    }

    /// Whether to look at account `i`'s gauge now: at most once a second per worker.
    fn gauge_check_due(&mut self, i: usize, now_ms: u64) -> bool {
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
    fn account_gauge(&mut self, i: usize, account: &str) -> Option<u32> {
        if let Some(Some(id)) = self.account_gauges.get(i) {
            return Some(*id);
        }
        let id = self.account_gauge_named(account)?;
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
    fn account_gauge_named(&mut self, account: &str) -> Option<u32> {
        let name = metrics::name("tollgate_account_state", &[("account", account)]);
        self.id(proxy_wasm::types::MetricType::Gauge, &name)
    }

    fn count(&mut self, metric: &str, labels: &[(&str, &str)], by: u64) {
        if by == 0 {
            return;
        }
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        let key = metrics::key(metric, labels);
        let id = match self.counters.get(&key) {
            Some(id) => *id,
            None => {
                let kind = proxy_wasm::types::MetricType::Counter;
                let Some(id) = self.id(kind, &metrics::name(metric, labels)) else {
                    return;
                };
                self.counters.insert(key, id);
                id
            }
        };
        ffi::increment_metric(id, by);
    }
}

#[derive(Default)]
struct Root {
    plugin: Option<Rc<Plugin>>,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, _size: usize) {
        ffi::fresh_clock();
        let Some(plugin) = &self.plugin else {
            return;
        };
        plugin.charges.borrow_mut().finished(status == 0);
        let mut stats = plugin.stats.borrow_mut();
        let outcome = if status == 0 { "sent" } else { "dropped" };
        stats.count("tollgate_global_charges_total", &[("outcome", outcome)], 1);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        ffi::fresh_clock();
        let raw = ffi::get_buffer(ffi::BUF_PLUGIN_CONFIGURATION, 0, size.max(1 << 20))
            .unwrap_or_default();
        let raw = if raw.iter().all(|b| b.is_ascii_whitespace()) {
            b"{}".to_vec()
        } else {
            raw
        };
        match config::parse(&raw) {
            Ok(cfg) => {
                ffi::log(
                    LogLevel::Info,
                    &format!(
                        "tollgate: configured ({} consumers, {} accounts, stage {:?})",
                        cfg.consumers.len(),
                        cfg.accounts.len(),
                        cfg.stage
                    ),
                );
                let plugin = Plugin::new(cfg);
                // Charges after a response are sent from the tick, never from the request;
                // analytics are flushed from it about once a second.
                let tick = if plugin.cfg.global.is_some() {
                    100
                } else {
                    1000
                };
                let _ = proxy_wasm::hostcalls::set_tick_period(Duration::from_millis(tick));
                if let Err(e) = plugin.prepare_store() {
                    ffi::log(
                        LogLevel::Warn,
                        &format!("tollgate: preparing quota keys: {e:?}"),
                    );
                }
                // Every series exists at 0 before its first event.
                for s in metrics::series(&plugin.cfg) {
                    use proxy_wasm::types::MetricType as T;
                    let kind = match s.kind {
                        metrics::Kind::Counter => T::Counter,
                        metrics::Kind::Gauge => T::Gauge,
                        metrics::Kind::Histogram => T::Histogram,
                    };
                    ffi::define_metric(kind, &s.name);
                }
                self.plugin = Some(Rc::new(plugin));
                true
            }
            Err(e) => {
                ffi::log(
                    LogLevel::Error,
                    &format!("tollgate: invalid configuration: {e}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        ffi::fresh_clock();
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let _ = plugin
            .analytics
            .borrow_mut()
            .flush_if_due(&plugin.store, ffi::now_ms());
        plugin.flush_pending();
        let Some(global) = &plugin.cfg.global else {
            return;
        };
        loop {
            let Some(body) = plugin.charges.borrow_mut().next_to_send() else {
                break;
            };
            let sent = self.dispatch_grpc_call(
                &global.cluster,
                ratelimit::SERVICE,
                ratelimit::METHOD,
                Vec::new(),
                Some(&body),
                Duration::from_millis(global.timeout.millis().max(1000)),
            );
            if sent.is_err() {
                plugin.charges.borrow_mut().dispatch_failed();
                let mut stats = plugin.stats.borrow_mut();
                stats.count(
                    "tollgate_global_charges_total",
                    &[("outcome", "dropped")],
                    1,
                );
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        ffi::fresh_clock();
        let plugin = self.plugin.clone()?;
        Some(Box::new(Req::new(context_id, plugin)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing to do for this request (the filter passes it through untouched).
    Idle,
    /// Reading the request body of a metered endpoint.
    ReadingBody,
    /// Sent upstream; the response is metered.
    Proxied,
    /// Sent upstream with identity only (count_tokens, model lists, passthrough paths).
    Passthrough,
    /// Upstream stage: one retry attempt with its account chosen.
    Attempt,
    /// The filter answered it itself.
    Answered,
}

struct Req {
    id: u32,
    plugin: Rc<Plugin>,
    phase: Phase,
    api: Api,
    endpoint: Option<Endpoint>,
    caller: Option<Caller>,
    scanner: Option<RequestScanner>,
    fed: usize,
    info: Option<RequestInfo>,
    account: Option<usize>,
    meter: Option<ResponseMeter>,
    upstream_status: u32,
    decision: Option<Reason>,
    /// The request identified its consumer by a tollgate key (which must not go upstream).
    presented_tollgate_key: bool,
    /// The client's request headers as they arrived (read once).
    headers: ffi::Headers,
    /// The quota state key of the caller, and what admission charged there.
    owner: Option<OwnerKey>,
    ticket: Option<Ticket>,
    rate_headers: RateHeaders,
    /// The input estimate used at admission (the raw estimate times the learned ratio).
    estimate: u64,
    /// The global admission call under way: its token and what each descriptor must allow.
    global_call: Option<(u32, Vec<ratelimit::Check>)>,
    /// The global descriptors this request is charged on when it ends (those it was admitted on).
    global_descriptors: Vec<ratelimit::Descriptor>,
    /// What the chosen account's own limits charged for this request or attempt.
    account_ticket: Option<Ticket>,
    /// When the request arrived (for the analytics response time).
    started_ms: u64,
    /// tollgate added `stream_options.include_usage`, so the usage-only chunk is removed.
    strip_usage: bool,
    /// The last response chunk sent on but not yet metered (see `on_http_response_body`).
    unmetered: Vec<u8>,
    /// Index of the request's pricing entry in `cfg.pricing`, once matched.
    price_cache: Cell<Option<Option<usize>>>,
    /// An upstream error answer served by an account: its head is held until read.
    error_head: ErrorHead,
    /// Whether the request's model is a label value of its own, once asked.
    model_own: Cell<Option<bool>>,
    /// The chosen account was disabled and this request probes it: its answer is recorded
    /// even when it carries nothing else to learn.
    probe: bool,
}

/// Where an upstream error body served by an account is (see `ERROR_HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorHead {
    /// Not an error served by an account.
    None,
    /// Held in Envoy's buffer until `ERROR_HEAD` bytes or the end are in.
    Holding,
    /// Read and cleared; the rest passes.
    Read,
}

impl Context for Req {
    fn on_done(&mut self) -> bool {
        // Envoy runs no access log (`on_log`) for upstream filters: an attempt ends here.
        if self.phase == Phase::Attempt {
            ffi::fresh_clock();
            self.end_attempt();
        }
        true
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        ffi::fresh_clock();
        let Some((expected, checks)) = self.global_call.take() else {
            return;
        };
        if expected != token {
            return;
        }
        let decision = if status == 0 {
            let body = ffi::get_buffer(ffi::BUF_GRPC_RECEIVE, 0, size).unwrap_or_default();
            ratelimit::decide(&body, &checks)
        } else {
            ratelimit::Decision::Error(ratelimit::RlsError::UnknownCode)
        };
        let why = if status == 0 {
            "bad answer".to_string()
        } else {
            format!("gRPC status {status}")
        };
        match decision {
            ratelimit::Decision::Admit(headroom) => {
                self.plugin.set_degraded(false, "");
                self.rate_headers = ratelimit::binding_with(self.rate_headers, &headroom);
                ffi::resume_http_request();
            }
            ratelimit::Decision::Reject(r) => {
                self.plugin.set_degraded(false, "");
                self.cancel_reservation();
                // An account's limit is named as such: the consumer has no such limit.
                let account = r
                    .index
                    .and_then(|i| self.global_descriptors.get(i))
                    .and_then(|d| d.account())
                    .map(|a| format!("account {a}: "))
                    .unwrap_or_default();
                self.global_descriptors.clear();
                let retry = r.retry_after_s.max(1).to_string();
                let unit = r.unit.map_or("tokens", |u| u.as_str());
                let what = match (r.limit, r.per) {
                    (Some(l), Some(p)) => {
                        format!("{account}{l} {unit} per {} (global)", p.as_str())
                    }
                    _ => format!("{account}global {unit} limit"),
                };
                let msg = if r.should_retry {
                    format!("{}: {what}; retry in {retry}s", self.consumer_name())
                } else {
                    format!(
                        "{}: {what}; this request alone exceeds it",
                        self.consumer_name()
                    )
                };
                let mut extra = vec![("retry-after", retry.as_str())];
                if !r.should_retry {
                    extra.push(("x-should-retry", "false"));
                }
                self.reject(Reason::Global, &msg, &extra);
            }
            ratelimit::Decision::Error(e) => {
                let why = if status == 0 { e.to_string() } else { why };
                self.global_failed(&why, true);
            }
        }
    }
}

impl Req {
    fn new(id: u32, plugin: Rc<Plugin>) -> Self {
        Req {
            id,
            plugin,
            phase: Phase::Idle,
            api: Api::OpenAi,
            endpoint: None,
            caller: None,
            scanner: None,
            fed: 0,
            info: None,
            account: None,
            meter: None,
            upstream_status: 0,
            decision: None,
            presented_tollgate_key: false,
            headers: ffi::Headers::default(),
            owner: None,
            ticket: None,
            rate_headers: RateHeaders::default(),
            estimate: 0,
            global_call: None,
            global_descriptors: Vec::new(),
            account_ticket: None,
            started_ms: ffi::now_ms(),
            strip_usage: false,
            unmetered: Vec::new(),
            price_cache: Cell::new(None),
            error_head: ErrorHead::None,
            probe: false,
            model_own: Cell::new(None),
        }
    }

    fn cfg(&self) -> &Config {
        &self.plugin.cfg
    }

    fn consumer_label(&self) -> &str {
        match &self.caller {
            Some(Caller::Consumer(i)) => self
                .cfg()
                .consumers
                .get(*i)
                .map(|c| c.name.as_str())
                .unwrap_or("unknown"),
            Some(Caller::Anonymous) => "anonymous",
            None => "unknown",
        }
    }

    fn consumer_name(&self) -> &str {
        self.consumer_label()
    }

    /// The pricing entry of the request's model (the globs are matched once per request).
    fn pricing(&self) -> Option<&(config::Glob, Price)> {
        let pricing = &self.plugin.cfg.pricing;
        if let Some(i) = self.price_cache.get() {
            return i.and_then(|i| pricing.get(i));
        }
        let model = self.info.as_ref()?.model.as_deref();
        let i = model.and_then(|m| self.plugin.cfg.pricing_index(m));
        self.price_cache.set(Some(i));
        i.and_then(|i| pricing.get(i))
    }

    /// The price of the request's model.
    fn price(&self) -> Option<Price> {
        self.pricing().map(|(_, p)| *p)
    }

    /// The `model` label: the model name itself when it matches an allow-list or pricing
    /// glob and is among the first `metrics.max_models` names of the process, else `other`,
    /// so a client cannot mint stats without bound.
    fn model_label(&self) -> &str {
        let Some(model) = self.info.as_ref().and_then(|i| i.model.as_deref()) else {
            return metrics::OTHER_MODEL;
        };
        let own = match self.model_own.get() {
            Some(own) => own,
            None => {
                let cfg = self.cfg();
                let allow = match &self.caller {
                    Some(Caller::Consumer(i)) => {
                        cfg.consumers.get(*i).and_then(|c| c.models.as_deref())
                    }
                    _ => None,
                };
                let own = self
                    .plugin
                    .models
                    .borrow_mut()
                    .admits(&self.plugin.store, model, || {
                        metrics::eligible(cfg, allow, model)
                    });
                self.model_own.set(Some(own));
                own
            }
        };
        if own {
            model
        } else {
            metrics::OTHER_MODEL
        }
    }

    /// The caller's limits and where their state lives.
    fn caller_limits<'a>(
        plugin: &'a Plugin,
        caller: Option<&Caller>,
    ) -> (&'a [Limit], Option<OwnerKey>) {
        let cfg = &plugin.cfg;
        match caller {
            Some(Caller::Consumer(i)) => match cfg.consumers.get(*i) {
                Some(c) => (&c.limits, Some(OwnerKey::consumer(&c.name))),
                None => (&[], None),
            },
            Some(Caller::Anonymous) => match &cfg.anonymous {
                Some(a) => (&a.limits, Some(OwnerKey::consumer(config::ANONYMOUS))),
                None => (&[], None),
            },
            None => (&[], None),
        }
    }

    /// Reserves the request's estimate against the caller's limits; `Err` is the answer.
    fn admit(&mut self) -> Result<(), Action> {
        let plugin = self.plugin.clone();
        let (limits, owner) = Self::caller_limits(&plugin, self.caller.as_ref());
        let Some(owner) = owner.filter(|_| !limits.is_empty()) else {
            return Ok(());
        };
        let amounts = self.need();
        let (now, ttl) = (ffi::now_ms(), plugin.cfg.lease_ttl);
        match quota::admit(&plugin.store, &owner, limits, &amounts, now, ttl) {
            Ok(Admission::Admitted { ticket, headers }) => {
                self.ticket = Some(ticket);
                self.rate_headers = headers;
                self.owner = Some(owner);
                Ok(())
            }
            Ok(Admission::Rejected { rejection, headers }) => {
                self.rate_headers = headers;
                let limit = limits.get(rejection.limit).cloned();
                let reason = match rejection.reason() {
                    "requests" => Reason::Requests,
                    "cost" => Reason::Cost,
                    "concurrency" => Reason::Concurrency,
                    _ => Reason::Tokens,
                };
                let retry = rejection.retry_after_s.max(1);
                let what = limit.map_or_else(String::new, |l| l.to_string());
                let msg = if rejection.should_retry {
                    format!("{}: {what}; retry in {retry}s", self.consumer_name())
                } else {
                    format!(
                        "{}: {what}; this request alone exceeds it",
                        self.consumer_name()
                    )
                };
                let retry_s = retry.to_string();
                let mut extra: Vec<(String, String)> = rate_header_pairs(&self.rate_headers);
                extra.push(("retry-after".into(), retry_s));
                if !rejection.should_retry {
                    extra.push(("x-should-retry".into(), "false".into()));
                }
                let extra: Vec<(&str, &str)> = extra
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                Err(self.reject(reason, &msg, &extra))
            }
            Err(e) => {
                ffi::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate[{}]: quota store contended ({e:?}); answering 429",
                        self.id
                    ),
                );
                let msg = format!("{}: quota state is busy; retry in 1s", self.consumer_name());
                Err(self.reject(Reason::Tokens, &msg, &[("retry-after", "1")]))
            }
        }
    }

    /// Asks the global rate-limit service; `Some(action)` when the request waits for it or
    /// was answered, `None` to go on at once.
    fn admit_global(&mut self) -> Option<Action> {
        let plugin = self.plugin.clone();
        let global = plugin.cfg.global.as_ref()?;
        let (limits, _) = Self::caller_limits(&plugin, self.caller.as_ref());
        let model = self.info.as_ref().and_then(|i| i.model.as_deref());
        let account = self
            .account
            .and_then(|i| plugin.cfg.accounts.get(i))
            .map(|a| (a.name.as_str(), a.limits.as_slice()));
        let descriptors =
            ratelimit::request_descriptors(self.consumer_name(), limits, model, account);
        if descriptors.is_empty() {
            return None;
        }
        let adm = ratelimit::admission(&global.domain, descriptors.clone(), &self.need());
        self.global_descriptors = descriptors;
        match self.dispatch_grpc_call(
            &global.cluster,
            ratelimit::SERVICE,
            ratelimit::METHOD,
            Vec::new(),
            Some(&adm.body),
            Duration::from_millis(global.timeout.millis().max(1)),
        ) {
            Ok(token) => {
                self.global_call = Some((token, adm.checks));
                Some(Action::Pause)
            }
            Err(e) => match self.global_failed(&format!("dispatch failed: {e:?}"), false) {
                Action::Continue => None,
                other => Some(other),
            },
        }
    }

    /// The global service did not answer usably: `failure_mode` decides.
    fn global_failed(&mut self, why: &str, paused: bool) -> Action {
        self.plugin.set_degraded(true, why);
        let deny = self
            .plugin
            .cfg
            .global
            .as_ref()
            .is_some_and(|g| g.failure_mode == config::FailureMode::Deny);
        if deny {
            self.cancel_reservation();
            self.global_descriptors.clear();
            let msg = "the global rate-limit service is unavailable";
            return self.reject(Reason::GlobalUnavailable, msg, &[]);
        }
        self.plugin
            .stats
            .borrow_mut()
            .count("tollgate_global_degraded_total", &[], 1);
        if paused {
            ffi::resume_http_request();
        }
        Action::Continue
    }

    /// Gives back the whole local reservation of a request that will not go upstream.
    fn cancel_reservation(&mut self) {
        self.settle_quota(&Amounts::ZERO);
    }

    /// Queues the real usage for the global service (sent by the root context).
    fn charge_global(&mut self, usage: &Usage) {
        let Some(global) = &self.plugin.cfg.global else {
            return;
        };
        if self.global_descriptors.is_empty() {
            return;
        }
        let price = self.price();
        let actual = Amounts::from_usage(usage, price.as_ref());
        let descriptors = std::mem::take(&mut self.global_descriptors);
        let body = ratelimit::charge(&global.domain, descriptors, &actual);
        if let Some(body) = body {
            if !self.plugin.charges.borrow_mut().push(body) {
                self.plugin.stats.borrow_mut().count(
                    "tollgate_global_charges_total",
                    &[("outcome", "dropped")],
                    1,
                );
            }
        }
    }

    /// Replaces the reservation with real usage (or refunds it all when nothing was used).
    fn reconcile(&mut self, usage: &Usage) {
        let actual = Amounts::from_usage(usage, self.price().as_ref());
        self.settle_quota(&actual);
    }

    /// Replaces the caller's reservation with `actual` (once; later calls do nothing).
    fn settle_quota(&mut self, actual: &Amounts) {
        let (Some(ticket), Some(owner)) = (self.ticket.take(), self.owner.take()) else {
            return;
        };
        let plugin = self.plugin.clone();
        let (limits, _) = Self::caller_limits(&plugin, self.caller.as_ref());
        let now = ffi::now_ms();
        match quota::reconcile(&plugin.store, &owner, limits, &ticket, actual, now) {
            Ok(Settled::Dropped) | Err(_) => {
                ffi::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate[{}]: reconciliation dropped after retries",
                        self.id
                    ),
                );
                self.plugin
                    .stats
                    .borrow_mut()
                    .count("tollgate_reconcile_dropped_total", &[], 1);
            }
            _ => {}
        }
    }

    /// Settles what the account's own limits charged: real usage when known, the
    /// reservation for a served attempt whose usage is counted downstream, nothing for a
    /// failed one; and adds the tokens to the account's totals.
    fn settle_account(&mut self, usage: Option<&Usage>) {
        let plugin = self.plugin.clone();
        let Some(account) = self.account.and_then(|i| plugin.cfg.accounts.get(i)) else {
            return;
        };
        let now = ffi::now_ms();
        if let (Some(u), Some(i)) = (usage, self.account) {
            plugin.queue_served(i, 0, u.total());
        }
        let Some(ticket) = self.account_ticket.take() else {
            return;
        };
        let ok = (200..300).contains(&self.upstream_status);
        let actual = match usage {
            Some(u) => Amounts::from_usage(u, None),
            None if ok => ticket.charged,
            None => Amounts::ZERO,
        };
        let owner = OwnerKey::account(&account.name);
        let _ = quota::reconcile(
            &plugin.store,
            &owner,
            &account.limits,
            &ticket,
            &actual,
            now,
        );
    }

    /// Answers the request with an error in the API's own format.
    fn reject(&mut self, reason: Reason, message: &str, extra: &[(&str, &str)]) -> Action {
        // An account's own limits may have been charged before a later check refused.
        self.settle_account(None);
        let body = api::error_body(self.api, reason, message);
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        ffi::send_http_response(reason.status(), &headers, body.as_bytes());
        self.phase = Phase::Answered;
        self.decision = Some(reason);
        let (consumer, model) = (self.consumer_label(), self.model_label());
        if self.plugin.cfg.stage == config::Stage::Downstream {
            let now = ffi::now_ms();
            let r = tollgate_core::analytics::Rejection {
                consumer,
                model_label: model,
                reason: reason.as_str(),
                status: reason.status() as u16,
                response_ms: now.saturating_sub(self.started_ms),
                now_ms: now,
            };
            self.plugin.analytics.borrow_mut().rejected(&r);
        }
        let mut stats = self.plugin.stats.borrow_mut();
        stats.count(
            "tollgate_rejections_total",
            &[("consumer", consumer), ("reason", reason.as_str())],
            1,
        );
        stats.count(
            "tollgate_requests_total",
            &[
                ("consumer", consumer),
                ("model", model),
                ("outcome", reason.as_str()),
            ],
            1,
        );
        Action::Pause
    }

    /// What this request reserves, in every unit (SPEC "Reservation").
    fn need(&self) -> Amounts {
        let cfg = &self.plugin.cfg;
        let info = self.info.as_ref();
        let price = self.price();
        quota::reservation(
            self.estimate,
            info.and_then(|i| i.max_tokens),
            cfg.estimate.output_reserve,
            price.as_ref(),
        )
    }

    /// Replaces the client's credentials with an account's: for a metered request the one
    /// `selection` picks (never one in `exclude`), else the first account of the API. With no
    /// accounts, only a tollgate key is removed, so it never reaches the upstream.
    fn choose_account(
        &mut self,
        path: &str,
        metered: bool,
        session: Option<&str>,
        exclude: &[usize],
    ) -> Result<(), Action> {
        let plugin = self.plugin.clone();
        let cfg = &plugin.cfg;
        let by_key = self.presented_tollgate_key;
        if cfg.accounts.is_empty() && !by_key {
            // The caller's own credentials go upstream as sent; a tollgate key beside them never.
            self.remove_tollgate_keys(path);
            return Ok(());
        }
        if cfg.accounts.is_empty() {
            if let Some(stripped) = identity::strip_query_key(path) {
                ffi::set_request_header(":path", &stripped);
            }
            self.remove_client_credentials("");
            return Ok(());
        }
        // With a pooled key no query parameter may carry, re-target or mask a credential.
        if let Some(stripped) = identity::strip_pooled_query(path) {
            ffi::set_request_header(":path", &stripped);
        }
        let chosen = if metered {
            let need = self.need();
            let attempt = accounts::Attempt {
                api: self.api,
                need: &need,
                session,
                exclude,
                now_ms: ffi::now_ms(),
            };
            match accounts::select(&plugin.store, cfg, &attempt) {
                accounts::Outcome::Picked(p) => {
                    self.account_ticket = p.ticket;
                    self.probe = p.probe;
                    if !p.counted {
                        plugin.queue_served(p.account, 1, 0);
                    }
                    if !matches!(p.affinity, accounts::AffinityUse::Off) {
                        let mut stats = plugin.stats.borrow_mut();
                        stats.count(
                            "tollgate_affinity_total",
                            &[("outcome", p.affinity.as_str())],
                            1,
                        );
                    }
                    Some(p.account)
                }
                accounts::Outcome::AllCooling { retry_after_s } => {
                    let retry = retry_after_s.max(1).to_string();
                    let msg = format!(
                        "every {} account is cooling down; retry in {retry}s",
                        self.api.as_str()
                    );
                    return Err(self.reject(
                        Reason::AccountsCooling,
                        &msg,
                        &[("retry-after", &retry)],
                    ));
                }
                accounts::Outcome::NoAccount => None,
            }
        } else {
            accounts::first_usable_for(&plugin.store, &cfg.accounts, self.api, ffi::now_ms())
        };
        let Some(i) = chosen else {
            let msg = format!("no usable {} account is configured", self.api.as_str());
            return Err(self.reject(Reason::NoAccount, &msg, &[]));
        };
        self.account = Some(i);
        let Some(account) = cfg.accounts.get(i) else {
            self.remove_client_credentials("");
            return Ok(());
        };
        let (name, value) = accounts::credential(account);
        // The account's credential replaces the client's in the same header.
        self.remove_client_credentials(name);
        // A pooled key's answers come back uncompressed: an error that echoes the key is
        // cleared of it, and read for evidence about the key, only in plain bytes.
        ffi::set_request_header("accept-encoding", "identity");
        // Nothing the client sends may scope or re-target the pooled key.
        let scoping = provider::scoping_headers().map(|h| h as &str);
        for h in scoping.chain(cfg.strip_request_headers.iter().map(String::as_str)) {
            if self.headers.has(h) {
                ffi::remove_request_header(h);
            }
        }
        ffi::set_request_header(name, &value);
        for (k, v) in provider::of(account.provider).default_headers() {
            if self.headers.get(k).is_none() {
                ffi::set_request_header(k, v);
            }
        }
        for (k, v) in &account.headers {
            ffi::set_request_header(k, v);
        }
        if let Some(route) = &account.route {
            ffi::set_request_header("x-tollgate-route", route);
            ffi::clear_route_cache();
        }
        ffi::set_filter_state("tollgate.account", &account.name);
        Ok(())
    }

    /// Removes any tollgate key from a request that keeps the caller's own credentials.
    fn remove_tollgate_keys(&self, path: &str) {
        let h = &self.headers;
        let places = identity::tollgate_key_places(
            &self.plugin.cfg,
            h.get("x-api-key"),
            h.get("authorization"),
            h.get("x-goog-api-key"),
            path,
        );
        for place in places {
            match place {
                identity::Place::Header(name) => ffi::remove_request_header(name),
                identity::Place::Query => {
                    if let Some(stripped) = identity::strip_query_key(path) {
                        ffi::set_request_header(":path", &stripped);
                    }
                }
            }
        }
    }

    /// Removes the credentials the client sent (a caller's own or a tollgate key), but for
    /// `except`, which the caller replaces.
    fn remove_client_credentials(&self, except: &str) {
        for h in provider::client_credential_headers() {
            if h != except && self.headers.has(h) {
                ffi::remove_request_header(h);
            }
        }
    }

    /// Learns the account's health from a response (status and rate-limit headers), and
    /// logs a change of state once.
    fn observe_account(&mut self, obs: accounts::Observation) {
        let Some(i) = self.account else {
            return;
        };
        let Some(account) = self.plugin.cfg.accounts.get(i) else {
            return;
        };
        let gauge = self
            .plugin
            .stats
            .borrow_mut()
            .account_gauge(i, &account.name);
        let Some(gauge) = gauge else {
            return;
        };
        if obs.is_empty() && !self.probe {
            // Nothing to learn; but a cooling that ended on time must show as ok again
            // (looked at once a second: the gauge is read back from the host).
            let now = ffi::now_ms();
            if !self.plugin.stats.borrow_mut().gauge_check_due(i, now) {
                return;
            }
            let shown = ffi::get_metric(gauge).unwrap_or(0);
            if shown > 0 {
                if let Ok(h) = accounts::read_health(&self.plugin.store, account) {
                    let now = h.kind_at(ffi::now_ms()).gauge();
                    ffi::record_metric(gauge, now.max(0) as u64);
                }
            }
            return;
        }
        if let Ok(t) = accounts::record(&self.plugin.store, account, &obs, ffi::now_ms()) {
            show_transition(gauge, &account.name, &t);
        }
    }

    /// `observe_account` for an account this instance does not list, by name (a stream
    /// error found by the downstream stage of a failover setup; see `accounts::record_named`).
    fn observe_named_account(&mut self, name: &str, obs: &accounts::Observation) {
        let now = ffi::now_ms();
        let Ok(Some(t)) = accounts::record_named(&self.plugin.store, name, obs, now) else {
            return;
        };
        let gauge = self.plugin.stats.borrow_mut().account_gauge_named(name);
        if let Some(gauge) = gauge {
            show_transition(gauge, name, &t);
        }
    }

    /// The upstream stage: one retry attempt. Picks an account not tried by earlier attempts
    /// of this request (the downstream published consumer, estimate and session).
    #[inline(never)]
    fn upstream_attempt(&mut self) -> Action {
        self.headers = ffi::request_headers();
        let path = self.headers.get(":path").unwrap_or_default().to_string();
        let method = self.headers.get(":method").unwrap_or_default().to_string();
        self.api = api::api_hint(
            self.headers.has("anthropic-version"),
            self.headers.has("x-api-key"),
            self.headers.has("x-goog-api-key"),
        );
        let metered = match api::classify(
            &method,
            &path,
            self.api,
            None,
            &self.plugin.cfg.passthrough_paths,
        ) {
            Route::Metered { endpoint, .. } => {
                self.api = endpoint.api();
                true
            }
            Route::Identity(api) => {
                self.api = api;
                false
            }
            Route::BadRequest { api, message } => {
                // The downstream stage refuses these first; this is defence in depth.
                self.api = api;
                return self.reject(Reason::BadRequest, message, &[]);
            }
            _ => return Action::Continue,
        };
        // Only a request the downstream stage identified (and, when metered, admitted) may
        // leave with a pooled key: anything else skipped it (say, by a path around it).
        let estimate = ffi::get_filter_state("tollgate.estimate");
        let passed = if metered {
            estimate.is_some()
        } else {
            ffi::get_filter_state("tollgate.consumer").is_some()
        };
        if !passed {
            return self.reject(
                Reason::Auth,
                "this request was not admitted by tollgate's downstream stage",
                &[],
            );
        }
        self.estimate = estimate.and_then(|v| v.parse().ok()).unwrap_or(0);
        let affinity = self.plugin.cfg.selection.affinity.as_ref();
        let header = affinity
            .and_then(|a| a.header.as_deref())
            .and_then(|h| self.headers.get(h))
            .map(str::to_string);
        let fingerprint = ffi::get_filter_state("tollgate.fingerprint")
            .and_then(|f| u64::from_str_radix(&f, 16).ok());
        let session = accounts::session_id(affinity, header.as_deref(), fingerprint)
            .or_else(|| ffi::get_filter_state("tollgate.session"));
        let tried_s = ffi::get_filter_state("tollgate.tried").unwrap_or_default();
        let tried: Vec<usize> = tried_s.split(',').filter_map(|t| t.parse().ok()).collect();
        // Credentials the downstream left (a caller's own) never go upstream from a pool.
        self.presented_tollgate_key = true;
        if let Err(answer) = self.choose_account(&path, metered, session.as_deref(), &tried) {
            return answer;
        }
        if let Some(i) = self.account {
            let list = if tried_s.is_empty() {
                i.to_string()
            } else {
                format!("{tried_s},{i}")
            };
            ffi::set_filter_state("tollgate.tried", &list);
            if !tried.is_empty() {
                if let Some(a) = self.plugin.cfg.accounts.get(i) {
                    let name = a.name.clone();
                    self.plugin.stats.borrow_mut().count(
                        "tollgate_failovers_total",
                        &[("account", &name)],
                        1,
                    );
                }
            }
        }
        self.phase = Phase::Attempt;
        Action::Continue
    }
}

impl HttpContext for Req {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        ffi::fresh_clock();
        if self.plugin.cfg.stage == config::Stage::Upstream {
            return self.upstream_attempt();
        }
        let headers = ffi::request_headers();
        let path = headers.get(":path").unwrap_or_default().to_string();
        let method = headers.get(":method").unwrap_or_default();
        let x_api_key = headers.get("x-api-key");
        let authorization = headers.get("authorization");
        let goog = headers.get("x-goog-api-key");
        self.api = api::api_hint(
            headers.get("anthropic-version").is_some(),
            x_api_key.is_some(),
            goog.is_some(),
        );
        // A client never picks the route cluster itself.
        if headers.has("x-tollgate-route") {
            ffi::remove_request_header("x-tollgate-route");
        }
        let plugin = self.plugin.clone();
        let cfg = &plugin.cfg;
        let route = api::classify(
            method,
            &path,
            self.api,
            cfg.admin.as_ref().map(|a| a.path.as_str()),
            &cfg.passthrough_paths,
        );
        let key = identity::presented_key(x_api_key, authorization, goog, &path);
        match route {
            Route::Admin(sub) => {
                // The admin key is never taken from the URL (`?key=`).
                let key = identity::presented_key(x_api_key, authorization, None, "");
                return self.admin(method, &sub, key, authorization);
            }
            Route::BadRequest { api, message } => {
                self.api = api;
                return self.reject(Reason::BadRequest, message, &[]);
            }
            Route::NotFound(api) => {
                self.api = api;
                // Counted under the caller's consumer when its key is valid.
                if let identity::Identity::Known(c, _) = identity::identify(cfg, key, None) {
                    self.caller = Some(c);
                }
                // Never the query or `;` parameters: a client may have put a secret there.
                let msg = format!("{method} {} is not served here", api::display_path(&path));
                return self.reject(Reason::NotFound, &msg, &[]);
            }
            Route::Identity(api) => self.api = api,
            Route::Metered { endpoint, .. } => self.api = endpoint.api(),
        }
        // A name is trusted from a header only when a filter before this one set it, or from
        // the payload of a JWT that `jwt_authn` verified (dynamic metadata no client can set).
        let claimed = cfg.consumer_claim.as_ref().and_then(|c| {
            ffi::get_property(&[
                "metadata",
                "filter_metadata",
                "envoy.filters.http.jwt_authn",
                &c.metadata,
                &c.claim,
            ])
        });
        let trusted_name = match &claimed {
            Some(name) => Some(name.as_str()),
            None => cfg
                .consumer_header
                .as_deref()
                .and_then(|h| headers.get(h))
                .map(str::trim)
                .filter(|n| !n.is_empty()),
        };
        let known = key.and_then(|k| plugin.known_keys.borrow().get(k).copied());
        let identified = match known {
            Some(i) => identity::Identity::Known(Caller::Consumer(i), true),
            None => {
                let found = identity::identify(cfg, key, trusted_name);
                if let (Some(k), identity::Identity::Known(Caller::Consumer(i), true)) =
                    (key, &found)
                {
                    let mut known = plugin.known_keys.borrow_mut();
                    if known.len() >= KNOWN_KEYS {
                        known.clear();
                    }
                    known.insert(k.to_string(), *i);
                }
                found
            }
        };
        match identified {
            identity::Identity::Known(caller, by_key) => {
                self.presented_tollgate_key = by_key;
                self.caller = Some(caller);
            }
            identity::Identity::Unauthenticated => {
                let msg = if key.is_some() {
                    "invalid API key"
                } else {
                    "no API key: send it in x-api-key or Authorization: Bearer"
                };
                return self.reject(Reason::Auth, msg, &[]);
            }
            identity::Identity::UnknownName => {
                let msg = "this consumer is not configured here";
                return self.reject(Reason::UnknownConsumer, msg, &[]);
            }
        }
        ffi::set_filter_state("tollgate.consumer", self.consumer_name());
        match route {
            Route::Metered { endpoint, model } => {
                if end_of_stream {
                    return self.reject(Reason::BadRequest, "request body is required", &[]);
                }
                let max = cfg.max_body_bytes;
                let declared = headers
                    .get("content-length")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if declared.is_some_and(|n| n > max) {
                    return self.too_large();
                }
                // The fingerprint serves affinity here, or an upstream stage (which has the
                // accounts when this stage has none).
                let scanner = RequestScanner::new(endpoint, model);
                let fingerprinted = cfg.selection.affinity.is_some() || cfg.accounts.is_empty();
                self.scanner = Some(if fingerprinted {
                    scanner
                } else {
                    scanner.without_fingerprint()
                });
                self.endpoint = Some(endpoint);
                self.phase = Phase::ReadingBody;
                self.headers = headers;
                // Hold the headers until the body is read: the credential and the quota
                // decision depend on it (needs allow_on_headers_stop_iteration).
                Action::Pause
            }
            _ => {
                self.headers = headers;
                if let Err(answer) = self.choose_account(&path, false, None, &[]) {
                    return answer;
                }
                self.decision = None;
                self.phase = Phase::Passthrough;
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        ffi::fresh_clock();
        if self.phase != Phase::ReadingBody {
            return Action::Continue;
        }
        if body_size as u64 > self.plugin.cfg.max_body_bytes {
            return self.too_large();
        }
        while self.fed < body_size {
            let want = (body_size - self.fed).min(BODY_WINDOW);
            let Some(window) = ffi::get_buffer(ffi::BUF_REQUEST_BODY, self.fed, want) else {
                break;
            };
            if window.is_empty() {
                break;
            }
            self.fed += window.len();
            let fed = match self.scanner.as_mut() {
                Some(s) => s.feed(&window),
                None => Ok(()),
            };
            if let Err(e) = fed {
                return self.reject(Reason::BadRequest, &e.to_string(), &[]);
            }
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(scanner) = self.scanner.take() else {
            return Action::Continue;
        };
        let info = match scanner.finish() {
            Ok(info) => info,
            Err(e) => return self.reject(Reason::BadRequest, &e.to_string(), &[]),
        };
        self.info = Some(info);
        self.admit_and_forward(body_size)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        ffi::fresh_clock();
        if self.phase != Phase::ReadingBody {
            return Action::Continue;
        }
        // No LLM API sends request trailers; they would end the body without an
        // end-of-stream body callback, so admission, the credential and metering would be
        // skipped. Refused rather than trusted.
        self.scanner = None;
        self.reject(
            Reason::BadRequest,
            "request trailers are not supported on this endpoint",
            &[],
        )
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        ffi::fresh_clock();
        // Trailers end the body: no body callback says end of stream.
        if self.error_head == ErrorHead::Holding {
            // Held, so under ERROR_HEAD: the head is the whole body.
            let held = self.read_error_head(ERROR_HEAD);
            if let Some(meter) = self.meter.as_mut() {
                meter.feed(&held);
            }
        }
        if self.meter.is_some() {
            self.finish_response();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        ffi::fresh_clock();
        if !matches!(
            self.phase,
            Phase::Proxied | Phase::Passthrough | Phase::Attempt
        ) {
            return Action::Continue;
        }
        // One read of the header map serves the account, the stripping and the meter.
        let all = ffi::response_headers();
        let status: u32 = all.get(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        self.upstream_status = status;
        // Envoy's own reply (route timeout, failed connection) is no answer of the provider:
        // it neither cools an account nor is metered as a cut-off stream. Envoy answers
        // with an error status, so a 2xx needs no look at the response's details.
        let local_reply = !(200..300).contains(&status)
            && ffi::get_filter_state("response\0code_details").is_some_and(|d| d != "via_upstream");
        if status >= 400 && !local_reply {
            if let Some(account) = self.account.and_then(|i| self.plugin.cfg.accounts.get(i)) {
                // An upstream that echoes the pooled key never shows it to the client.
                for (name, value) in all.iter() {
                    if let Some(masked) = account.key.redact(value) {
                        ffi::set_response_header(name, &String::from_utf8_lossy(&masked));
                    }
                }
                self.error_head = ErrorHead::Holding;
            }
        }
        if self.account.is_some() && !local_reply {
            let headers: Vec<(&str, String)> = all
                .iter()
                .filter(|(k, _)| *k == "retry-after" || provider::is_rate_limit_header(k))
                .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
                .collect();
            self.observe_account(accounts::observe_response(status, &headers, ffi::now_ms()));
        }
        if self.phase == Phase::Attempt {
            // Each attempt's answer is counted here, by the account that got it (a retried
            // 429 included); the downstream stage counts none for a staged account.
            if let (Some(a), false) = (
                self.account.and_then(|i| self.plugin.cfg.accounts.get(i)),
                local_reply,
            ) {
                let mut buf = [0u8; 20];
                let code = metrics::decimal(u64::from(status), &mut buf);
                self.plugin.stats.borrow_mut().count(
                    "tollgate_upstream_responses_total",
                    &[("account", &a.name), ("code", code)],
                    1,
                );
            }
            // The downstream stage strips the provider's headers after it, too.
            return Action::Continue;
        }
        // The provider's rate-limit headers describe the pooled account, not the caller.
        for (name, _) in all.iter() {
            if provider::is_rate_limit_header(name) {
                ffi::remove_response_header(name);
            }
        }
        each_rate_header(&self.rate_headers, ffi::set_response_header);
        if self.phase == Phase::Passthrough || local_reply {
            return Action::Continue;
        }
        let Some(endpoint) = self.endpoint else {
            return Action::Continue;
        };
        let content_type = all.get("content-type").unwrap_or_default();
        let encoding = all.get("content-encoding").unwrap_or_default();
        let strip = self.strip_usage;
        let meter = ResponseMeter::new(endpoint, content_type, encoding, strip);
        if strip {
            // The usage-only chunk is removed from the stream: its length changes.
            ffi::remove_response_header("content-length");
        }
        self.meter = Some(meter);
        if end_of_stream {
            self.finish_response();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        ffi::fresh_clock();
        if self.error_head == ErrorHead::Holding {
            if body_size < ERROR_HEAD && !end_of_stream {
                // Envoy keeps the body until the head is in (bounded by ERROR_HEAD).
                return Action::Pause;
            }
            let _ = self.read_error_head(body_size);
        }
        let Some(meter) = self.meter.as_mut() else {
            // An upstream-stage attempt meters nothing, but its account's lease lives on.
            self.renew_leases();
            return Action::Continue;
        };
        if !meter.rewrites() {
            // A chunk goes on to the client first and is metered when the next one comes
            // (or the stream ends): the first bytes of a stream wait for no parsing. Only a
            // small chunk is held that way; a large one is metered now, read in windows, so
            // the VM never holds more than a window of any body.
            let held = std::mem::take(&mut self.unmetered);
            if !held.is_empty() {
                meter.feed(&held);
            }
            if body_size <= HELD_CHUNK && !end_of_stream {
                self.unmetered =
                    ffi::get_buffer(ffi::BUF_RESPONSE_BODY, 0, body_size).unwrap_or_default();
            } else {
                let mut at = 0;
                while at < body_size {
                    let want = (body_size - at).min(BODY_WINDOW);
                    let Some(window) = ffi::get_buffer(ffi::BUF_RESPONSE_BODY, at, want) else {
                        break;
                    };
                    if window.is_empty() {
                        break;
                    }
                    at += window.len();
                    meter.feed(&window);
                }
                if end_of_stream {
                    meter.feed_last(&[]);
                }
            }
        } else {
            let chunk = if body_size > 0 {
                ffi::get_buffer(ffi::BUF_RESPONSE_BODY, 0, body_size).unwrap_or_default()
            } else {
                Vec::new()
            };
            // Strip mode changes the chunk before it goes on: metered now. The last chunk
            // also flushes whatever it still holds.
            let replacement = if end_of_stream {
                meter.feed_last(&chunk)
            } else {
                meter.feed(&chunk)
            };
            if let Some(replacement) = replacement {
                ffi::set_buffer(ffi::BUF_RESPONSE_BODY, 0, chunk.len(), &replacement);
            }
        }
        self.renew_leases();
        if end_of_stream {
            self.finish_response();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        ffi::fresh_clock();
        if self.phase == Phase::Proxied {
            self.finish_response();
        }
        if self.phase == Phase::Attempt {
            self.end_attempt();
            return;
        }
        let decision = match self.decision {
            Some(r) => r.as_str(),
            None if self.phase == Phase::Idle => return,
            None => "admitted",
        };
        ffi::set_filter_state("tollgate.decision", decision);
    }
}

impl Req {
    /// The end of an upstream-stage attempt (once): the account's reservation is settled and
    /// its concurrency lease freed.
    fn end_attempt(&mut self) {
        self.phase = Phase::Answered;
        self.settle_account(None);
    }

    /// Reads the held head of an upstream error answer: evidence about the key for the
    /// account's health, and every occurrence of the key replaced (same length: the
    /// `content-length` already went out) before the client sees it.
    /// Returns the head as it goes on (masked where it held the key).
    fn read_error_head(&mut self, body_size: usize) -> Vec<u8> {
        self.error_head = ErrorHead::Read;
        let Some(account) = self.account.and_then(|i| self.plugin.cfg.accounts.get(i)) else {
            return Vec::new();
        };
        let want = body_size.min(ERROR_HEAD);
        let Some(head) = ffi::get_buffer(ffi::BUF_RESPONSE_BODY, 0, want) else {
            return Vec::new();
        };
        // Only the provider saying the key itself is invalid disables the account.
        let obs = accounts::observe_error_body(account.provider, self.upstream_status, &head);
        let head = match account.key.redact(&head) {
            Some(masked) => {
                ffi::set_buffer(ffi::BUF_RESPONSE_BODY, 0, head.len(), &masked);
                masked
            }
            None => head,
        };
        if !obs.is_empty() {
            self.observe_account(obs);
        }
        head
    }

    /// A flowing response renews its concurrency leases: the consumer's, and the account's
    /// own (each writes only when due; a lease not renewed for `lease_ttl` frees itself).
    fn renew_leases(&mut self) {
        let ttl = self.plugin.cfg.lease_ttl;
        let now = ffi::now_ms();
        if let (Some(ticket), Some(owner)) = (self.ticket.as_mut(), self.owner.as_ref()) {
            if ticket.lease.is_some() {
                let _ = quota::renew(&self.plugin.store, owner, ticket, now, ttl);
            }
        }
        let account = self.account.and_then(|i| self.plugin.cfg.accounts.get(i));
        if let (Some(ticket), Some(account)) = (self.account_ticket.as_mut(), account) {
            if ticket.lease.is_some() {
                let owner = OwnerKey::account(&account.name);
                let _ = quota::renew(&self.plugin.store, &owner, ticket, now, ttl);
            }
        }
    }

    /// Sends the answer of an account action (reset, pause, resume), and shows a change on
    /// the account's `tollgate_account_state` gauge and in the log.
    fn account_answer(&mut self, answer: &tollgate_core::admin::ActionAnswer<'_>) {
        if let Some(done) = &answer.done {
            let mut stats = self.plugin.stats.borrow_mut();
            let gauge = match done.index {
                Some(i) => stats.account_gauge(i, done.name),
                None => stats.account_gauge_named(done.name),
            };
            drop(stats);
            if let Some(gauge) = gauge {
                ffi::record_metric(gauge, done.transition.after.gauge().max(0) as u64);
            }
            if done.transition.changed() {
                let t = &done.transition;
                ffi::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: account {} is now {} by the admin API ({}; was {})",
                        done.name,
                        t.after.as_str(),
                        done.action.as_str(),
                        t.before.as_str()
                    ),
                );
            }
        }
        let mut headers = vec![("content-type", "application/json")];
        if let Some(allow) = answer.allow {
            headers.push(("allow", allow));
        }
        ffi::send_http_response(answer.status, &headers, answer.body.as_bytes());
    }

    fn too_large(&mut self) -> Action {
        let max = self.plugin.cfg.max_body_bytes;
        self.reject(
            Reason::TooLarge,
            &format!("request body is larger than {max} bytes"),
            &[],
        )
    }

    /// The body is read: check the model, admit, choose the account, rewrite, forward.
    #[inline(never)]
    fn admit_and_forward(&mut self, body_size: usize) -> Action {
        let model = self
            .info
            .as_ref()
            .and_then(|i| i.model.clone())
            .unwrap_or_default();
        if let Some(Caller::Consumer(i)) = &self.caller {
            if let Some(c) = self.plugin.cfg.consumers.get(*i) {
                if let Some(globs) = &c.models {
                    if !globs.iter().any(|g| g.matches(&model)) {
                        let msg = format!("{}: model {model:?} is not allowed", c.name);
                        return self.reject(Reason::Model, &msg, &[]);
                    }
                }
            }
        }
        // A budget binds on every model: one with no price would cost nothing against it.
        let (limits, _) = Self::caller_limits(&self.plugin, self.caller.as_ref());
        let named = self.info.as_ref().and_then(|i| i.model.as_deref());
        if self.plugin.cfg.refuses_unpriced(named, limits) {
            let msg = tollgate_core::pricing::no_price_message(self.consumer_name(), named);
            return self.reject(Reason::Model, &msg, &[]);
        }
        let raw = self.info.as_ref().map_or(0, |i| i.input_estimate);
        self.estimate = if model.is_empty() {
            raw
        } else {
            learn::apply(raw, self.plugin.ratio(&model, ffi::now_ms()))
        };
        if let Err(answer) = self.admit() {
            return answer;
        }
        let path = self.headers.get(":path").unwrap_or_default().to_string();
        let cfg = &self.plugin.cfg;
        let header = cfg
            .selection
            .affinity
            .as_ref()
            .and_then(|a| a.header.as_deref())
            .and_then(|h| self.headers.get(h));
        let session = accounts::session_id(
            cfg.selection.affinity.as_ref(),
            header,
            self.info.as_ref().and_then(|i| i.fingerprint),
        );
        if let Some(s) = &session {
            ffi::set_filter_state("tollgate.session", s);
        }
        if let Some(fp) = self.info.as_ref().and_then(|i| i.fingerprint) {
            // For an upstream stage that keeps conversations on one account (with accounts
            // here, this stage chooses them and no upstream stage needs it).
            if cfg.accounts.is_empty() {
                ffi::set_filter_state("tollgate.fingerprint", &format!("{fp:016x}"));
            }
        }
        // Only codings the meter decodes may come back: metering cannot be switched off.
        // (A pooled key asks for `identity` itself, in `choose_account`.)
        if self.plugin.cfg.accounts.is_empty() {
            let sent = self.headers.get("accept-encoding");
            let encoding = tollgate_core::usage::decodable_accept_encoding(sent);
            if sent != Some(encoding.as_str()) {
                ffi::set_request_header("accept-encoding", &encoding);
            }
        }
        let mut buf = [0u8; 20];
        ffi::set_filter_state(
            "tollgate.estimate",
            metrics::decimal(self.estimate, &mut buf),
        );
        if let Err(answer) = self.choose_account(&path, true, session.as_deref(), &[]) {
            self.cancel_reservation();
            return answer;
        }
        if let Some(info) = &self.info {
            if let Some(splice) = &info.usage_splice {
                // Envoy replaces a body buffer only from its start (or appends), so the
                // bytes before the splice point are copied back with the insertion; the
                // scanner puts the splice right after the root `{` where it can.
                let mut head = if splice.offset == 0 {
                    Vec::new()
                } else {
                    ffi::get_buffer(ffi::BUF_REQUEST_BODY, 0, splice.offset).unwrap_or_default()
                };
                let fits = head.len() == splice.offset;
                head.extend_from_slice(splice.insert.as_bytes());
                if fits
                    && ffi::set_buffer(
                        ffi::BUF_REQUEST_BODY,
                        0,
                        splice.offset + splice.remove,
                        &head,
                    )
                {
                    let len = body_size.saturating_sub(splice.remove) + splice.insert.len();
                    ffi::set_request_header("content-length", &len.to_string());
                    // The usage-only chunk is cut from the stream, which needs it uncompressed.
                    ffi::set_request_header("accept-encoding", "identity");
                    self.strip_usage = true;
                }
            }
            ffi::set_filter_state("tollgate.model", &model);
        }
        self.phase = Phase::Proxied;
        self.admit_global().unwrap_or(Action::Continue)
    }

    /// The response ended (completely, reset or aborted): count it once.
    fn finish_response(&mut self) {
        if let Some(meter) = self.meter.as_mut() {
            // A stream cut short: the chunk already sent is counted too.
            let held = std::mem::take(&mut self.unmetered);
            if !held.is_empty() {
                meter.feed(&held);
            }
        }
        let Some(mut meter) = self.meter.take() else {
            if self.phase == Phase::Proxied {
                self.phase = Phase::Answered;
                if self.upstream_status == 0 && self.global_call.is_none() {
                    // The client left before any answer, after the request went upstream:
                    // the provider still reads (and bills) the prompt.
                    let input = Usage {
                        input: self.estimate,
                        ..Usage::default()
                    };
                    self.record(input, UsageSource::Estimated);
                } else {
                    // The upstream never answered (reset, timeout): nothing was produced.
                    self.record(Usage::default(), UsageSource::None);
                }
            }
            return;
        };
        self.phase = Phase::Answered;
        let m = meter.finish();
        if self.upstream_status >= 400 && !m.complete {
            // The provider refused the request and reports no usage: it bills nothing, so
            // neither do budgets (the reservation is refunded; it still counts as a request).
            self.record(Usage::default(), UsageSource::Refused);
            return;
        }
        // What the upstream did not report (reliably) is charged from the estimates: the
        // input estimate, and for an undecodable body at least the reserved output.
        let usage = m.charged(self.estimate, self.need().output_tokens);
        if m.complete {
            self.learn(usage.input_side());
        }
        // An error event inside a successful stream; an error status was observed already.
        let ok = (200..300).contains(&self.upstream_status);
        if let Some(class) = m.stream_error.filter(|_| ok) {
            let obs = accounts::observe_stream_error(class);
            if self.account.is_some() {
                self.observe_account(obs);
            } else if let Some(name) = ffi::get_filter_state("tollgate.account") {
                // Two stages: the upstream stage picked the account, and its attempt ended
                // before the stream's last bytes got here.
                self.observe_named_account(&name, &obs);
            }
        }
        let flagged = if m.unsupported_encoding {
            Some(("unsupported_encoding", UsageSource::Undecodable))
        } else if m.corrupt_encoding {
            Some(("corrupt_encoding", UsageSource::Undecodable))
        } else if m.invalid_usage {
            Some(("invalid_usage", UsageSource::Invalid))
        } else {
            None
        };
        let source = match flagged {
            Some((reason, source)) => {
                self.plugin.stats.borrow_mut().count(
                    "tollgate_usage_fallbacks_total",
                    &[("reason", reason)],
                    1,
                );
                source
            }
            None if m.output_estimated || !m.complete => UsageSource::Estimated,
            None => UsageSource::Reported,
        };
        self.record(usage, source);
    }

    /// Feeds the real input count back into the per-model ratio, and records the error of
    /// the estimate that was used.
    fn learn(&mut self, real: u64) {
        let raw = self.info.as_ref().map_or(0, |i| i.input_estimate);
        let Some(model) = self.info.as_ref().and_then(|i| i.model.as_deref()) else {
            return;
        };
        if real == 0 || raw == 0 {
            return;
        }
        let plugin = &self.plugin;
        if !plugin.observed.borrow_mut().push(model, real, raw) {
            let _ = learn::observe(&plugin.store, &plugin.learned, model, real, raw);
        }
        let error = (real.abs_diff(self.estimate) as f64 * 100.0 / real as f64).round() as i64;
        plugin
            .stats
            .borrow_mut()
            .histogram("tollgate_estimate_error_percent", error);
    }

    /// Metrics and access-log facts for a finished request.
    fn record(&mut self, usage: Usage, source: UsageSource) {
        self.reconcile(&usage);
        self.charge_global(&usage);
        self.settle_account(Some(&usage));
        let mut buf = [0u8; 20];
        let input = metrics::decimal(usage.input_side(), &mut buf);
        ffi::set_filter_state("tollgate.input_tokens", input);
        let output = metrics::decimal(usage.output, &mut buf);
        ffi::set_filter_state("tollgate.output_tokens", output);
        ffi::set_filter_state("tollgate.usage", source.as_str());
        let (consumer, model) = (self.consumer_label(), self.model_label());
        let account = self.account.and_then(|i| self.plugin.cfg.accounts.get(i));
        // In a failover setup the upstream stage chose the account (a configured name, set
        // only by tollgate) and counted each attempt's answer itself.
        let staged = match account {
            Some(_) => None,
            None => ffi::get_filter_state("tollgate.account"),
        };
        let account = account.map(|a| a.name.as_str()).or(staged.as_deref());
        let now = ffi::now_ms();
        let cost_micros = self.price().map(|p| p.cost_micros(&usage));
        self.plugin.analytics.borrow_mut().served(
            &tollgate_core::analytics::Fact {
                consumer: self.consumer_name(),
                model_label: model,
                account,
                usage,
                cost_micros: cost_micros.unwrap_or(0),
                response_ms: now.saturating_sub(self.started_ms),
                ok: (200..300).contains(&self.upstream_status),
                now_ms: now,
            },
            u16::try_from(self.upstream_status).unwrap_or(0),
        );
        let account = account.unwrap_or("none");
        let code = metrics::decimal(u64::from(self.upstream_status), &mut buf);
        let mut stats = self.plugin.stats.borrow_mut();
        stats.count(
            "tollgate_requests_total",
            &[
                ("consumer", consumer),
                ("model", model),
                ("outcome", "admitted"),
            ],
            1,
        );
        if staged.is_none() {
            stats.count(
                "tollgate_upstream_responses_total",
                &[("account", account), ("code", code)],
                1,
            );
        }
        if let Some(cost) = cost_micros {
            stats.count(
                "tollgate_cost_usd_micros_total",
                &[("consumer", consumer), ("model", model)],
                cost,
            );
        }
        for (ty, n) in [
            ("input", usage.input),
            ("output", usage.output),
            ("cache_read", usage.cache_read),
            ("cache_write", usage.cache_write),
        ] {
            stats.count(
                "tollgate_tokens_total",
                &[
                    ("consumer", consumer),
                    ("model", model),
                    ("account", account),
                    ("type", ty),
                ],
                n,
            );
        }
    }

    /// The filter's own endpoints under `admin.path`.
    #[inline(never)]
    fn admin(
        &mut self,
        method: &str,
        sub: &str,
        key: Option<&str>,
        authorization: Option<&str>,
    ) -> Action {
        self.phase = Phase::Answered;
        if sub == "/health" {
            ffi::send_http_response(
                200,
                &[("content-type", "application/json")],
                tollgate_core::admin::health_json().as_bytes(),
            );
            return Action::Pause;
        }
        let keys = self
            .plugin
            .cfg
            .admin
            .as_ref()
            .map(|a| a.keys.as_slice())
            .unwrap_or(&[]);
        let basic = authorization.and_then(tollgate_core::admin::basic_password);
        let ok = key
            .into_iter()
            .chain(basic.as_deref())
            .any(|k| identity::is_admin_key(keys, k));
        if !ok {
            self.decision = Some(Reason::Auth);
            ffi::send_http_response(
                401,
                &[
                    ("content-type", "application/json"),
                    ("www-authenticate", "Basic realm=\"tollgate\""),
                ],
                br#"{"error":"admin key required"}"#,
            );
            return Action::Pause;
        }
        let plugin = self.plugin.clone();
        let cfg = &plugin.cfg;
        let now = ffi::now_ms();
        // A browser adds Basic credentials to any site's request by itself: an action riding
        // on them alone must come from the same site.
        let cross_site = !key.is_some_and(|k| identity::is_admin_key(keys, k)) && {
            let h = ffi::request_headers();
            tollgate_core::admin::cross_site(
                true,
                h.get("origin"),
                h.get(":authority"),
                h.get("sec-fetch-site"),
            )
        };
        if let Some(answer) =
            tollgate_core::admin::account_action(&plugin.store, cfg, method, sub, cross_site, now)
        {
            self.account_answer(&answer);
            return Action::Pause;
        }
        match sub {
            "/usage" => {
                let now = ffi::now_ms();
                // This worker's facts now; the other workers' within a second.
                let _ = plugin.analytics.borrow_mut().flush(&plugin.store, now);
                plugin.flush_pending();
                let totals = tollgate_core::analytics::load(&plugin.store);
                let recent = tollgate_core::analytics::load_recent(&plugin.store);
                let mut consumers: Vec<tollgate_core::admin::ConsumerView<'_>> = cfg
                    .consumers
                    .iter()
                    .map(|c| tollgate_core::admin::ConsumerView {
                        name: &c.name,
                        usage: quota::usage_snapshot(
                            &plugin.store,
                            &OwnerKey::consumer(&c.name),
                            &c.limits,
                            now,
                        )
                        .unwrap_or_default(),
                    })
                    .collect();
                if let Some(a) = &cfg.anonymous {
                    consumers.push(tollgate_core::admin::ConsumerView {
                        name: config::ANONYMOUS,
                        usage: quota::usage_snapshot(
                            &plugin.store,
                            &OwnerKey::consumer(config::ANONYMOUS),
                            &a.limits,
                            now,
                        )
                        .unwrap_or_default(),
                    });
                }
                // An instance without accounts (the downstream stage of a failover setup)
                // shows the pool its upstream stage published.
                let roster = if cfg.accounts.is_empty() {
                    accounts::read_roster(&plugin.store)
                } else {
                    Vec::new()
                };
                let listed = roster.iter().map(|l| {
                    let h = accounts::read_health_named(&plugin.store, &l.name);
                    (l.name.as_str(), l.provider, h)
                });
                let healths: Vec<(&str, Api, accounts::Health)> = cfg
                    .accounts
                    .iter()
                    .map(|a| {
                        let h = accounts::read_health(&plugin.store, a)
                            .unwrap_or_else(|_| accounts::Health::fresh(a));
                        (a.name.as_str(), a.provider, h)
                    })
                    .chain(listed)
                    .collect();
                let views = healths
                    .iter()
                    .map(|(name, api, h)| {
                        tollgate_core::admin::AccountView::from_health(name, api.as_str(), h, now)
                    })
                    .collect();
                let body = tollgate_core::admin::usage_json(&tollgate_core::admin::UsageReport {
                    now_ms: now,
                    consumers,
                    accounts: views,
                    totals: &totals,
                    recent: &recent,
                });
                ffi::send_http_response(
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                    ],
                    body.as_bytes(),
                );
            }
            "" | "/" => {
                let path = cfg.admin.as_ref().map_or("", |a| a.path.as_str());
                let accept = ffi::request_headers();
                let page = tollgate_core::admin::dashboard(path, accept.get("accept-encoding"));
                let mut headers = vec![
                    ("content-type", "text/html; charset=utf-8"),
                    ("cache-control", "no-store"),
                    ("vary", "accept-encoding"),
                ];
                if page.gzip {
                    headers.push(("content-encoding", "gzip"));
                }
                ffi::send_http_response(200, &headers, &page.body);
            }
            _ => ffi::send_http_response(
                404,
                &[("content-type", "application/json")],
                br#"{"error":"not found"}"#,
            ),
        }
        Action::Pause
    }
}

/// Host calls with every status handled: the SDK's wrappers panic on unexpected statuses,
/// and a panic aborts the VM (every later request then gets 503).
mod ffi {
    use proxy_wasm::types::{LogLevel, MetricType};
    use std::ptr::null_mut;
    use tollgate_core::store::StoreError;

    pub const BUF_REQUEST_BODY: u32 = 0;
    pub const BUF_RESPONSE_BODY: u32 = 1;
    pub const BUF_GRPC_RECEIVE: u32 = 5;
    pub const BUF_PLUGIN_CONFIGURATION: u32 = 7;
    const MAP_REQUEST_HEADERS: u32 = 0;
    const MAP_RESPONSE_HEADERS: u32 = 2;
    const OK: u32 = 0;
    const NOT_FOUND: u32 = 1;
    const CAS_MISMATCH: u32 = 8;

    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        fn proxy_set_buffer_bytes(
            kind: u32,
            start: usize,
            size: usize,
            data: *const u8,
            len: usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_size: *mut usize) -> u32;
        fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        fn proxy_continue_stream(stream: u32) -> u32;
        fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out: *mut u32) -> u32;
        fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        fn proxy_record_metric(id: u32, value: u64) -> u32;
        fn proxy_get_metric(id: u32, out: *mut u64) -> u32;
        fn proxy_call_foreign_function(
            name: *const u8,
            name_size: usize,
            args: *const u8,
            args_size: usize,
            out: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
    }

    /// Takes ownership of a host-allocated buffer (allocated through the SDK's exported
    /// `proxy_on_memory_allocate`, i.e. this module's global allocator).
    unsafe fn owned(ptr: *mut u8, size: usize) -> Vec<u8> {
        if ptr.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(ptr, size, size)
        }
    }

    pub fn log(level: LogLevel, msg: &str) {
        unsafe {
            proxy_log(level as u32, msg.as_ptr(), msg.len());
        }
    }

    pub fn get_buffer(kind: u32, start: usize, max: usize) -> Option<Vec<u8>> {
        let mut ptr = null_mut();
        let mut size = 0;
        unsafe {
            match proxy_get_buffer_bytes(kind, start, max, &mut ptr, &mut size) {
                OK => Some(owned(ptr, size)),
                _ => None,
            }
        }
    }

    pub fn set_buffer(kind: u32, start: usize, size: usize, data: &[u8]) -> bool {
        unsafe { proxy_set_buffer_bytes(kind, start, size, data.as_ptr(), data.len()) == OK }
    }

    fn set_header(map: u32, name: &str, value: &str) {
        unsafe {
            proxy_replace_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    }

    pub fn set_request_header(name: &str, value: &str) {
        set_header(MAP_REQUEST_HEADERS, name, value)
    }

    pub fn set_response_header(name: &str, value: &str) {
        set_header(MAP_RESPONSE_HEADERS, name, value)
    }

    pub fn remove_request_header(name: &str) {
        unsafe {
            proxy_remove_header_map_value(MAP_REQUEST_HEADERS, name.as_ptr(), name.len());
        }
    }

    pub fn remove_response_header(name: &str) {
        unsafe {
            proxy_remove_header_map_value(MAP_RESPONSE_HEADERS, name.as_ptr(), name.len());
        }
    }

    /// A header map read in one host call (a read that returns data costs a call back into
    /// the VM to allocate, so one map read beats several single-header reads). Names are
    /// lowercase in Envoy; a name seen twice answers with its first value, as Envoy's
    /// single-header read does.
    #[derive(Default)]
    pub struct Headers {
        buf: Vec<u8>,
        /// (name start, name len, value start, value len) into `buf`.
        spans: Vec<(usize, usize, usize, usize)>,
    }

    impl Headers {
        /// Envoy's serialised header map: count, (name len, value len)×count, then each
        /// name and value followed by a NUL. A malformed map reads as empty.
        fn decode(buf: Vec<u8>) -> Headers {
            let word = |at: usize| -> Option<usize> {
                let w = buf.get(at..at + 4)?;
                Some(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
            };
            let spans = (|| {
                let n = word(0)?;
                let mut at = 4usize.checked_add(n.checked_mul(8)?)?;
                let mut spans = Vec::with_capacity(n.min(1024));
                for i in 0..n {
                    let (k, v) = (word(4 + i * 8)?, word(8 + i * 8)?);
                    let value_at = at.checked_add(k)?.checked_add(1)?;
                    let end = value_at.checked_add(v)?;
                    if end > buf.len() {
                        return None;
                    }
                    spans.push((at, k, value_at, v));
                    at = end + 1;
                }
                Some(spans)
            })()
            .unwrap_or_default();
            Headers { buf, spans }
        }

        /// Every (name, value) in order.
        pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
            self.spans.iter().filter_map(|&(n, nl, v, vl)| {
                let name = core::str::from_utf8(self.buf.get(n..n + nl)?).ok()?;
                Some((name, self.buf.get(v..v + vl)?))
            })
        }

        /// The raw first value of `name` (names compared as bytes: no decoding per lookup).
        fn raw(&self, name: &str) -> Option<&[u8]> {
            self.spans.iter().find_map(|&(n, nl, v, vl)| {
                (self.buf.get(n..n + nl)? == name.as_bytes())
                    .then(|| self.buf.get(v..v + vl))
                    .flatten()
            })
        }

        /// The first value of `name`; a value that is not UTF-8 reads as absent rather
        /// than trusted.
        pub fn get(&self, name: &str) -> Option<&str> {
            core::str::from_utf8(self.raw(name)?).ok()
        }

        pub fn has(&self, name: &str) -> bool {
            self.raw(name).is_some()
        }
    }

    fn header_map(map: u32) -> Headers {
        let mut ptr = null_mut();
        let mut size = 0;
        let bytes = unsafe {
            match proxy_get_header_map_pairs(map, &mut ptr, &mut size) {
                OK => owned(ptr, size),
                _ => Vec::new(),
            }
        };
        Headers::decode(bytes)
    }

    pub fn request_headers() -> Headers {
        header_map(MAP_REQUEST_HEADERS)
    }

    pub fn response_headers() -> Headers {
        header_map(MAP_RESPONSE_HEADERS)
    }

    fn encode_map(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + pairs
                .iter()
                .map(|(k, v)| k.len() + v.len() + 10)
                .sum::<usize>(),
        );
        out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    pub fn send_http_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let h = encode_map(headers);
        let details = "tollgate";
        unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                h.as_ptr(),
                h.len(),
                -1,
            );
        }
    }

    /// Filter state readable as `%FILTER_STATE(wasm.<name>:PLAIN)%` (one path segment: a
    /// multi-segment path would be joined with NUL and not be readable there).
    pub fn set_filter_state(name: &str, value: &str) {
        unsafe {
            proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
    }

    /// Envoy's `clear_route_cache` foreign function, so a header written now picks the route.
    /// Filter state set by this or another tollgate instance of the same stream.
    pub fn get_filter_state(name: &str) -> Option<String> {
        let mut ptr = null_mut();
        let mut size = 0;
        let bytes = unsafe {
            match proxy_get_property(name.as_ptr(), name.len(), &mut ptr, &mut size) {
                OK => owned(ptr, size),
                _ => return None,
            }
        };
        String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    }

    /// A property at `path` (segments joined by NUL, as the host expects), e.g. a value in
    /// the request's dynamic metadata. A value that is not UTF-8 or empty reads as absent.
    pub fn get_property(path: &[&str]) -> Option<String> {
        let joined = path.join("\0");
        get_filter_state(&joined)
    }

    pub fn clear_route_cache() {
        let name = "clear_route_cache";
        let mut ptr = null_mut();
        let mut size = 0;
        unsafe {
            if proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                null_mut(),
                0,
                &mut ptr,
                &mut size,
            ) == OK
            {
                drop(owned(ptr, size));
            }
        }
    }

    pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        let mut ptr = null_mut();
        let mut size = 0;
        let mut cas = 0;
        unsafe {
            match proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut size, &mut cas) {
                OK => {
                    let v = owned(ptr, size);
                    Ok((if ptr.is_null() { None } else { Some(v) }, cas))
                }
                NOT_FOUND => Ok((None, 0)),
                s => Err(StoreError::Host(s)),
            }
        }
    }

    pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        unsafe {
            match proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) {
                OK => Ok(()),
                CAS_MISMATCH => Err(StoreError::CasMismatch),
                s => Err(StoreError::Host(s)),
            }
        }
    }

    /// Lets a paused request go on.
    pub fn resume_http_request() {
        unsafe {
            proxy_continue_stream(0);
        }
    }

    thread_local! {
        /// The time read once per callback (see `fresh_clock`).
        static NOW_MS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    }

    /// Starts a callback: the next `now_ms` reads the host clock again. Called first thing in
    /// every callback, so one callback's work shares one reading (one host call, not ten).
    pub fn fresh_clock() {
        NOW_MS.with(|c| c.set(None));
    }

    /// Wall-clock milliseconds since the Unix epoch, as of the current callback.
    pub fn now_ms() -> u64 {
        if let Some(ms) = NOW_MS.with(|c| c.get()) {
            return ms;
        }
        let mut ns = 0u64;
        unsafe {
            proxy_get_current_time_nanoseconds(&mut ns);
        }
        let ms = ns / 1_000_000;
        NOW_MS.with(|c| c.set(Some(ms)));
        ms
    }

    pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
        let mut id = 0;
        unsafe {
            match proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) {
                OK => Some(id),
                _ => None,
            }
        }
    }

    pub fn increment_metric(id: u32, by: i64) {
        unsafe {
            proxy_increment_metric(id, by);
        }
    }

    pub fn get_metric(id: u32) -> Option<u64> {
        let mut v = 0u64;
        unsafe { (proxy_get_metric(id, &mut v) == OK).then_some(v) }
    }

    pub fn record_metric(id: u32, value: u64) {
        unsafe {
            proxy_record_metric(id, value);
        }
    }
}

/// Where a finished request's usage numbers came from (`wasm.tollgate.usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UsageSource {
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
    fn as_str(self) -> &'static str {
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

/// The binding limits as `x-ratelimit-*` response headers (a kind without a limit gets none).
fn rate_header_pairs(h: &RateHeaders) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(6);
    each_rate_header(h, |k, v| out.push((k.to_string(), v.to_string())));
    out
}

/// Calls `f` with each of the caller's rate-limit headers (SPEC: the binding limit for tokens
/// and for requests), formatted without allocating.
fn each_rate_header(h: &RateHeaders, mut f: impl FnMut(&'static str, &str)) {
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
