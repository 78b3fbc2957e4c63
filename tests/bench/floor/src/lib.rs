//! The floor of `make bench`'s row (f): a proxy-wasm filter with tollgate's shape on a
//! metered request and none of its work. It holds the request headers until the body is read,
//! reads the body and the response body into the VM, and makes the host calls tollgate makes
//! per 200 answer in the bench (counted with tests/bench/wasm-host.mjs): 4 clock reads,
//! 2 header-map reads, 2 body reads, 3 shared-data reads and 2 writes, 8 filter-state writes,
//! 7 header writes (the credential, six rate-limit headers) and a histogram record; its 5
//! counts go to a per-worker sum that the root tick sends in one increment a second, as
//! tollgate's counters do. What (c) costs beyond (f) is tollgate's own work; what (f) costs beyond
//! (b) is what any filter that must read a body before it forwards pays in this Envoy.
//! Not shipped; it ignores its configuration.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls as host;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

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
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.counter =
            host::define_metric(MetricType::Counter, "tollgate_floor_total").unwrap_or(0);
        self.histogram =
            host::define_metric(MetricType::Histogram, "tollgate_floor_ms").unwrap_or(0);
        let _ = host::set_tick_period(Duration::from_secs(1));
        true
    }

    fn on_tick(&mut self) {
        let n = self.pending.replace(0);
        if n > 0 {
            let _ = host::increment_metric(self.counter, n as i64);
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            pending: self.pending.clone(),
            histogram: self.histogram,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    pending: Rc<Cell<u64>>,
    histogram: u32,
}

impl Context for Floor {}

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
        for key in ["floor:q:a", "floor:q:b", "floor:acct"] {
            let _ = host::get_shared_data(key);
        }
        let value = body.get(..8).unwrap_or_default();
        for key in ["floor:q:a", "floor:acct"] {
            let _ = host::set_shared_data(key, Some(value), None);
        }
        for name in ["tollgate.estimate", "tollgate.account", "tollgate.session"] {
            let _ = host::set_property(vec![name], Some(b"1"));
        }
        let _ = host::set_map_value(MapType::HttpRequestHeaders, "x-floor", Some("1"));
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
            let _ = host::record_metric(self.histogram, 1);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let _ = host::set_property(vec!["tollgate.decision"], Some(b"admitted"));
    }
}
