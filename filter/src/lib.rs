//! tollgate: an Envoy proxy-wasm filter that meters LLM tokens, enforces quotas and pools
//! upstream credentials. Every module but `host` is plain Rust with no knowledge of Envoy;
//! `host` reads inputs from Envoy, calls the core, and applies the core's decisions.

pub mod accounts;
pub mod admin;
pub mod analytics;
pub mod api;
pub mod config;
pub mod estimate;
pub mod identity;
pub mod json;
pub mod learn;
pub mod limits;
pub mod metrics;
pub mod quota;
pub mod ratelimit;
pub mod request;
pub mod simd;
pub mod sse;
pub mod store;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod host;
