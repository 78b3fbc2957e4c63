//! The filter's core, compiled natively. `filter/` is a cdylib only (an rlib would silently drop
//! LTO for the wasm), so the CLI cannot link it: it includes the same source files instead, as
//! modules with the same names at the crate root, so their `crate::` paths resolve unchanged.
//! `host.rs` (the only proxy-wasm code) is left out; only what `check`, `estimate` and
//! `hash-key` need is included.
//!
//! The modules' own tests run in the filter crate (`cargo test -p tollgate`) with its
//! dev-dependencies. This library is never built for tests (`test = false`), and where a tool
//! builds it so anyway (`cargo clippy --all-targets`), `cfg(not(test))` leaves the modules out.

#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/api.rs"]
pub mod api;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/config.rs"]
pub mod config;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/estimate.rs"]
pub mod estimate;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/json.rs"]
pub mod json;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/limits.rs"]
pub mod limits;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/pricing.rs"]
pub mod pricing;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/request.rs"]
pub mod request;
#[cfg(not(test))]
#[allow(dead_code)]
#[path = "../../filter/src/simd.rs"]
pub mod simd;
