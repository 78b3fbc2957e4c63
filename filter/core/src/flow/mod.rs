//! A request's life as plain code over the `Host` trait: identity and routing
//! (`identity`), admission, local and global (`admit`), the account and its credential
//! (`upstream`), the response and its metering (`response`), the filter's own endpoints
//! (`admin`); `root` holds the configuration and the tick. The cdylib forwards each
//! proxy-wasm callback to the matching method here.

mod admin;
mod admit;
pub mod host;
mod identity;
mod reject;
mod response;
mod root;
mod state;
mod upstream;

use std::cell::Cell;
use std::rc::Rc;

pub use host::{Action, Buffer, GrpcCall, Headers, Host, Level, MetricKind};
pub use root::Root;
pub use state::Plugin;

use crate::api::{Api, Reason};
use crate::config::{self, Config};
use crate::identity::Caller;
use crate::limits::{Limit, Price};
use crate::metrics;
use crate::provider::Endpoint;
use crate::quota::{self, Amounts, OwnerKey, RateHeaders, Ticket};
use crate::ratelimit;
use crate::request::{RequestInfo, RequestScanner};
use crate::store::Store;
use crate::usage::ResponseMeter;

/// Bytes read from Envoy's body buffer per host call: the body is read in windows, never
/// copied into the VM whole.
const BODY_WINDOW: usize = 64 * 1024;
/// How much of an upstream error body is held, read for evidence about the key and cleared
/// of the key before it goes on.
const ERROR_HEAD: usize = 64 * 1024;
/// The largest response chunk sent on before it is metered (see `on_response_body`).
const HELD_CHUNK: usize = BODY_WINDOW;

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

/// One request (or, in an upstream stage, one attempt) from its headers to its end.
pub struct Flow {
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
    headers: Headers,
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
    /// The last response chunk sent on but not yet metered (see `on_response_body`).
    unmetered: Vec<u8>,
    /// Index of the request's pricing entry in `cfg.pricing`, once matched.
    price_cache: Cell<Option<Option<usize>>>,
    /// An upstream error answer served by an account: its head is held until read.
    error_head: ErrorHead,
    /// The chosen account was disabled and this request probes it: its answer is recorded
    /// even when it carries nothing else to learn.
    probe: bool,
    /// Whether the request's model is a label value of its own, once asked.
    model_own: Cell<Option<bool>>,
}

impl Flow {
    pub fn new(id: u32, plugin: Rc<Plugin>, now_ms: u64) -> Flow {
        Flow {
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
            headers: Headers::default(),
            owner: None,
            ticket: None,
            rate_headers: RateHeaders::default(),
            estimate: 0,
            global_call: None,
            global_descriptors: Vec::new(),
            account_ticket: None,
            started_ms: now_ms,
            strip_usage: false,
            unmetered: Vec::new(),
            price_cache: Cell::new(None),
            error_head: ErrorHead::None,
            probe: false,
            model_own: Cell::new(None),
        }
    }

    // ---- the callbacks -------------------------------------------------------------------

    pub fn on_request_headers<H: Host>(&mut self, h: &mut H, end_of_stream: bool) -> Action {
        if self.plugin.cfg.stage == config::Stage::Upstream {
            return self.upstream_attempt(h);
        }
        self.downstream_headers(h, end_of_stream)
    }

    pub fn on_request_body<H: Host>(&mut self, h: &mut H, size: usize, end: bool) -> Action {
        self.request_body(h, size, end)
    }

    pub fn on_request_trailers<H: Host>(&mut self, h: &mut H) -> Action {
        self.request_trailers(h)
    }

    pub fn on_response_headers<H: Host>(&mut self, h: &mut H, end_of_stream: bool) -> Action {
        self.response_headers(h, end_of_stream)
    }

    pub fn on_response_body<H: Host>(&mut self, h: &mut H, size: usize, end: bool) -> Action {
        self.response_body(h, size, end)
    }

    pub fn on_response_trailers<H: Host>(&mut self, h: &mut H) -> Action {
        self.response_trailers(h)
    }

    /// The reply of the global admission call (`status` 0: `size` bytes of reply).
    pub fn on_grpc_response<H: Host>(&mut self, h: &mut H, token: u32, status: u32, size: usize) {
        self.global_reply(h, token, status, size)
    }

    /// The access log: the request is over (for the downstream stage and for attempts).
    pub fn on_log<H: Host>(&mut self, h: &mut H) {
        if self.phase == Phase::Proxied {
            self.finish_response(h);
        }
        if self.phase == Phase::Attempt {
            self.end_attempt(h);
            return;
        }
        let decision = match self.decision {
            Some(r) => r.as_str(),
            None if self.phase == Phase::Idle => return,
            None => "admitted",
        };
        self.fact(h, crate::facts::DECISION, decision);
    }

    /// The context is done. Envoy runs no access log (`on_log`) for upstream filters: an
    /// attempt ends here.
    pub fn on_done<H: Host>(&mut self, h: &mut H) -> bool {
        if self.phase == Phase::Attempt {
            self.end_attempt(h);
        }
        true
    }

    // ---- what every phase asks -----------------------------------------------------------

    fn cfg(&self) -> &Config {
        &self.plugin.cfg
    }

    fn consumer_name(&self) -> &str {
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

    /// The pricing entry of the request's model (the globs are matched once per request).
    fn pricing(&self) -> Option<&(config::Glob, Price)> {
        let pricing = &self.plugin.cfg.pricing;
        if let Some(i) = self.price_cache.get() {
            return i.and_then(|i| pricing.get(i));
        }
        let model = self.info.as_ref()?.model.as_deref();
        let i = model.and_then(|m| self.plugin.pricing_index(m));
        self.price_cache.set(Some(i));
        i.and_then(|i| pricing.get(i))
    }

    /// The price of the request's model.
    fn price(&self) -> Option<Price> {
        self.pricing().map(|(_, p)| *p)
    }

    /// The `model` label: the matched pricing or allow-list glob, else `other`, so a client
    /// cannot mint stats without bound.
    fn model_label(&self, store: &dyn Store) -> &str {
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
                    .admits(store, model, || metrics::eligible(cfg, allow, model));
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
        let limits = Self::caller_limit_list(plugin, caller);
        let owner = match caller {
            Some(Caller::Consumer(i)) => plugin
                .cfg
                .consumers
                .get(*i)
                .map(|c| OwnerKey::consumer(&c.name)),
            Some(Caller::Anonymous) => plugin
                .cfg
                .anonymous
                .as_ref()
                .map(|_| OwnerKey::consumer(config::ANONYMOUS)),
            None => None,
        };
        (limits, owner)
    }

    /// The caller's limits alone (no state key formatted: most phases need only these).
    fn caller_limit_list<'a>(plugin: &'a Plugin, caller: Option<&Caller>) -> &'a [Limit] {
        let cfg = &plugin.cfg;
        match caller {
            Some(Caller::Consumer(i)) => cfg.consumers.get(*i).map_or(&[], |c| &c.limits),
            Some(Caller::Anonymous) => cfg.anonymous.as_ref().map_or(&[], |a| &a.limits),
            None => &[],
        }
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

    /// The chosen account, if any.
    fn account(&self) -> Option<&config::Account> {
        self.account.and_then(|i| self.plugin.cfg.accounts.get(i))
    }

    /// Sets filter-state fact `key` (one of `facts`), unless `access_log_facts: false` and no
    /// other tollgate stage reads it.
    pub(crate) fn fact<H: Host>(&self, h: &mut H, key: &'static str, value: &str) {
        let cfg = self.cfg();
        if cfg.access_log_facts || crate::facts::read_by_other_stage(key, cfg) {
            h.set_property(key, value);
        }
    }

    /// Counts `by` on a counter.
    fn count<H: Host>(&self, h: &mut H, metric: &str, labels: &[(&str, &str)], by: u64) {
        self.plugin.stats.borrow_mut().count(h, metric, labels, by);
    }
}

#[cfg(test)]
impl Flow {
    /// The context id (for tests of log lines).
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

#[cfg(test)]
mod tests;
