//! The proxy-wasm contexts: each callback starts a fresh `Envoy` host (one clock reading per
//! callback) and hands it to the flow.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use tollgate_core::flow::{self, Flow};

use crate::ffi::{self, Envoy};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        ffi::log(LogLevel::Critical, &format!("panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root(flow::Root::new(id))) });
}}

fn action(a: flow::Action) -> Action {
    match a {
        flow::Action::Continue => Action::Continue,
        flow::Action::Pause => Action::Pause,
    }
}

struct Root(flow::Root);

impl Context for Root {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, _size: usize) {
        self.0.on_grpc_response(&mut Envoy::new(), token, status);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done(&mut Envoy::new());
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        self.0.configure(&mut Envoy::new(), size)
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&mut Envoy::new());
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let flow = self.0.new_request(&Envoy::new(), context_id)?;
        Some(Box::new(Http(flow)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http(Flow);

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.0
            .on_grpc_response(&mut Envoy::new(), token, status, size);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done(&mut Envoy::new())
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&mut Envoy::new(), end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.0
                .on_request_body(&mut Envoy::new(), body_size, end_of_stream),
        )
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        action(self.0.on_request_trailers(&mut Envoy::new()))
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&mut Envoy::new(), end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.0
                .on_response_body(&mut Envoy::new(), body_size, end_of_stream),
        )
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        action(self.0.on_response_trailers(&mut Envoy::new()))
    }

    fn on_log(&mut self) {
        self.0.on_log(&mut Envoy::new());
    }
}
