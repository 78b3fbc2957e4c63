//! tollgate's core: everything the Envoy proxy-wasm filter decides, as plain Rust with no
//! knowledge of Envoy. `flow` is a request's life over the `flow::Host` trait; the cdylib
//! `tollgate` (filter/src) forwards each proxy-wasm callback to it and implements `Host` over
//! the raw ABI. The CLI and the fuzz targets use the crate natively.
//!
//! Function size is a memory cost here: Envoy's V8 compiles every function of the module
//! with TurboFan when the filter loads, and the compile memory of the largest functions stays
//! in Envoy's allocator. Functions called from one place (which LLVM would inline whole into
//! their caller) are marked `#[inline(never)]` where that kept a caller past about 14 KB of
//! wasm; it cut Envoy's RSS by about 9 MB at no measurable cost. Most of the largest
//! functions were then split into named steps of about 6 KB at most (cold branches of the
//! hot ones moved out): Envoy's RSS at load fell by about 7 MB more (issue 20;
//! `tests/bench/wasm_functions.py` lists the largest).

pub mod accounts;
pub mod admin;
pub mod analytics;
pub mod api;
pub mod civil;
pub mod codec;
pub mod config;
pub mod estimate;
pub mod facts;
pub mod flow;
pub mod identity;
pub mod json;
pub mod key_evidence;
pub mod learn;
pub mod limits;
pub mod metrics;
pub mod pricing;
pub mod provider;
pub mod quota;
pub mod ratelimit;
pub mod request;
pub mod simd;
pub mod sse;
pub mod store;
pub mod usage;
