//! The floor of `make bench`'s row (f): a proxy-wasm filter with tollgate's shape on a
//! metered request and none of its work. It holds the request headers until the body is read,
//! reads the body and the response body into the VM, and makes the host calls tollgate makes
//! per 200 answer in the bench (counted with tests/bench/wasm-host.mjs): 4 clock reads,
//! 2 header-map reads, 2 body reads, 3 shared-data reads and 2 writes, 8 filter-state writes,
//! 7 header writes (the credential, six rate-limit headers) and a histogram record; its 5
//! counts go to a per-worker sum that the root tick (100 ms) sends in one increment, as
//! tollgate's counters do. What (c) costs beyond (f) is tollgate's own work; what (f) costs beyond
//! (b) is what any filter that must read a body before it forwards pays in this Envoy.
//!
//! Row (fd) runs it with (d)'s configuration: when the configuration has a `global` section,
//! the floor also makes (d)'s one ratelimit round trip per request — the same
//! `ShouldRateLimit` message tollgate sends for the bench consumer (its four descriptors,
//! encoded by tollgate-core), request held until the answer, which is decoded — and charges
//! the summed tokens from the root tick as tollgate does. What (fd) keeps of plain Envoy is
//! what any body-reading wasm filter that asks a rate-limit service per request can keep.
//! Not shipped; of its configuration it reads only whether `"global"` is there.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls as host;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use tollgate_core::quota::Amounts;
use tollgate_core::ratelimit::{self, Unit};

/// (d)'s settings for the bench: its `global` cluster, domain and timeout, the bench
/// consumer's global units, and a model name of the bench body's length.
const RL_CLUSTER: &str = "ratelimit";
const RL_DOMAIN: &str = "tollgate";
const RL_TIMEOUT: Duration = Duration::from_millis(250);
const CONSUMER: &str = "bench";
const MODEL: &str = "claude-bench-model";
const UNITS: [Unit; 2] = [Unit::Tokens, Unit::Requests];
/// tollgate's root tick (flow/root.rs `TICK_MS`).
const TICK: Duration = Duration::from_millis(100);
/// A reservation and a charge of the bench's size.
const TOKENS: u64 = 300;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    counter: u32,
    histogram: u32,
    /// Counts since the last tick.
    pending: Rc<Cell<u64>>,
    /// (fd): the configuration has a `global` section.
    global: bool,
    /// (fd): tokens used since the last tick, charged from the tick.
    tokens: Rc<Cell<u64>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.counter =
            host::define_metric(MetricType::Counter, "tollgate_floor_total").unwrap_or(0);
        self.histogram =
            host::define_metric(MetricType::Histogram, "tollgate_floor_ms").unwrap_or(0);
        let _ = host::set_tick_period(TICK);
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let config = host::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.global = config.windows(8).any(|w| w == b"\"global\"");
        true
    }

    fn on_tick(&mut self) {
        let n = self.pending.replace(0);
        if n > 0 {
            let _ = host::increment_metric(self.counter, n as i64);
        }
        let tokens = self.tokens.replace(0);
        if tokens > 0 {
            let mut charges = ratelimit::descriptors_for(CONSUMER, Some(MODEL), &[Unit::Tokens]);
            for d in charges.iter_mut() {
                d.hits_addend = tokens;
            }
            let body = ratelimit::encode_request(RL_DOMAIN, &charges);
            let _ = host::dispatch_grpc_call(
                RL_CLUSTER,
                ratelimit::SERVICE,
                ratelimit::METHOD,
                Vec::new(),
                Some(&body),
                RL_TIMEOUT,
            );
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            pending: self.pending.clone(),
            histogram: self.histogram,
            global: self.global,
            tokens: self.tokens.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    pending: Rc<Cell<u64>>,
    histogram: u32,
    global: bool,
    tokens: Rc<Cell<u64>>,
}

impl Context for Floor {
    fn on_grpc_call_response(&mut self, _: u32, status: u32, size: usize) {
        let answer = host::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let admitted = status == 0 && ratelimit::decode_response(&answer).is_ok();
        let _ = host::get_current_time();
        self.forward(admitted);
        let _ = host::resume_http_request();
    }
}

impl Floor {
    /// What tollgate does once a request is admitted: quota and account state, the facts,
    /// the credential.
    fn forward(&mut self, admitted: bool) {
        for key in ["floor:q:a", "floor:q:b", "floor:acct"] {
            let _ = host::get_shared_data(key);
        }
        let value: &[u8] = if admitted { b"admitted" } else { b"allowed!" };
        for key in ["floor:q:a", "floor:acct"] {
            let _ = host::set_shared_data(key, Some(value), None);
        }
        for name in ["tollgate.estimate", "tollgate.account", "tollgate.session"] {
            let _ = host::set_property(vec![name], Some(b"1"));
        }
        let _ = host::set_map_value(MapType::HttpRequestHeaders, "x-floor", Some("1"));
    }

    /// (fd): (d)'s admission call for the bench consumer; whether it went out.
    fn ask(&self) -> bool {
        let reservation = Amounts {
            tokens: TOKENS,
            input_tokens: TOKENS,
            output_tokens: 0,
            requests: 1,
            cost_micros: 0,
        };
        let admission =
            ratelimit::admission_request(RL_DOMAIN, CONSUMER, Some(MODEL), &UNITS, &reservation);
        host::dispatch_grpc_call(
            RL_CLUSTER,
            ratelimit::SERVICE,
            ratelimit::METHOD,
            Vec::new(),
            Some(&admission.body),
            RL_TIMEOUT,
        )
        .is_ok()
    }
}

const RATE_HEADERS: [&str; 6] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let _ = host::get_current_time();
        let _ = host::get_map(MapType::HttpRequestHeaders);
        let _ = host::set_property(vec!["tollgate.consumer"], Some(b"bench"));
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = host::get_current_time();
        let body = host::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        if self.global && self.ask() {
            return Action::Pause;
        }
        self.forward(body.len() > 8);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = host::get_current_time();
        let _ = host::get_map(MapType::HttpResponseHeaders);
        for name in RATE_HEADERS {
            let _ = host::set_map_value(MapType::HttpResponseHeaders, name, Some("1"));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let _ = host::get_current_time();
        let _ = host::get_buffer(BufferType::HttpResponseBody, 0, body_size);
        if end_of_stream {
            for name in [
                "tollgate.input_tokens",
                "tollgate.output_tokens",
                "tollgate.usage",
            ] {
                let _ = host::set_property(vec![name], Some(b"1"));
            }
            self.pending.set(self.pending.get() + 5);
            if self.global {
                self.tokens.set(self.tokens.get() + TOKENS);
            }
            let _ = host::record_metric(self.histogram, 1);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let _ = host::set_property(vec!["tollgate.decision"], Some(b"admitted"));
    }
}
