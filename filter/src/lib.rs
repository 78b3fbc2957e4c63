//! tollgate: an Envoy proxy-wasm filter that meters LLM tokens, enforces quotas and pools
//! upstream credentials. This crate is the host side only: the proxy-wasm contexts, which
//! forward each callback to `tollgate_core::flow`, and `ffi`, the flow's `Host` over the raw
//! ABI. Every decision is made in `tollgate-core` (filter/core).

#[cfg(target_arch = "wasm32")]
mod contexts;
#[cfg(target_arch = "wasm32")]
mod ffi;
