//! Observations: what a response's status and headers, an error body or a stream error say
//! about the account that served it (cooling, disabling, learned headroom).

use super::*;
use crate::api::Api;
use crate::key_evidence::{key_rejection, DisableReason};
use crate::provider::{self, RateHeader, StreamError};

/// How long to cool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cool {
    /// Until this time (epoch ms), clamped to `[now + 1 s, now + MAX_COOLING_MS]`.
    Until(u64),
    /// Rate limited without a time: until the reset of a used-up dimension if one is known
    /// (learned now or earlier), else the latest reset this response reported, else 60 s.
    RateLimited,
    /// 10 s.
    Overloaded,
}

/// One dimension as a response reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DimUpdate {
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    pub reset_ms: Option<u64>,
}

/// What one upstream response (or stream error) says; apply it with `Health::apply` or
/// `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// The HTTP status (0 for a stream error).
    pub status: u32,
    pub cool: Option<Cool>,
    /// The provider said the key is invalid (`observe_error_body`).
    pub disable: Option<DisableReason>,
    /// By `Dimension`.
    pub dims: [Option<DimUpdate>; 4],
}

impl Observation {
    /// Whether applying it changes anything but the last status (the host may skip the
    /// store round trip otherwise).
    pub fn is_empty(&self) -> bool {
        self.cool.is_none() && self.disable.is_none() && self.dims.iter().all(Option::is_none)
    }
}

/// Reads an upstream response's status and headers (names in any case).
///
/// - 429: cooling until `retry-after` (seconds or HTTP date), else a rejected
///   `anthropic-ratelimit-unified-*` window's reset, else `anthropic-ratelimit-unified-reset`
///   unless `-unified-status` says `allowed…`, else `Cool::RateLimited` (the
///   `anthropic-ratelimit-*-reset` / `x-ratelimit-reset-*` times, else 60 s).
/// - 529, 503: cooling for `retry-after` if sent, else 10 s.
/// - 401, 403: nothing by itself (the body decides: `observe_error_body`).
/// - 2xx: a disabled account is ok again once this is recorded (see `Picked::probe`).
/// - Any status with `anthropic-ratelimit-unified-status: rejected` (or a rejected
///   `-unified-<window>-status`): cooling until that window's reset (epoch seconds).
/// - Headroom from `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
///   {remaining,limit,reset}` and `x-ratelimit-{remaining,limit,reset}-{requests,tokens}`.
pub fn observe_response<K: AsRef<str>, V: AsRef<str>>(
    status: u32,
    headers: &[(K, V)],
    now_ms: u64,
) -> Observation {
    let mut obs = Observation {
        status,
        ..Observation::default()
    };
    let mut retry_after = None;
    let mut unified_rejected = false;
    // The provider said the unified limit still allows (`allowed`, `allowed_warning`).
    let mut unified_allowed = false;
    let mut unified_reset = None;
    // Rejected unified windows (`5h`, `7d`, …) and each window's reset, matched by name.
    let mut windows: Vec<(String, bool, Option<u64>)> = Vec::new();
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref().trim());
        if name.len() > 96 || value.len() > 128 {
            continue;
        }
        let name = name.to_ascii_lowercase();
        if name == "retry-after" {
            retry_after = parse_retry_after(value, now_ms);
            continue;
        }
        match provider::rate_header(&name) {
            Some(RateHeader::Unified {
                window: None,
                field,
            }) => match field {
                "status" => {
                    unified_rejected = value.eq_ignore_ascii_case("rejected");
                    unified_allowed = starts_with_ignore_case(value.as_bytes(), b"allowed");
                }
                "reset" => unified_reset = parse_reset(value, now_ms),
                _ => {}
            },
            Some(RateHeader::Unified {
                window: Some(window),
                field,
            }) => {
                let entry = match windows.iter().position(|w| w.0 == window) {
                    Some(i) => windows.get_mut(i),
                    None if windows.len() < 8 => {
                        windows.push((window.to_owned(), false, None));
                        windows.last_mut()
                    }
                    None => None,
                };
                let Some(entry) = entry else { continue };
                match field {
                    "status" => entry.1 = value.eq_ignore_ascii_case("rejected"),
                    "reset" => entry.2 = parse_reset(value, now_ms),
                    _ => {}
                }
            }
            Some(RateHeader::Dim { dim, field }) => learn(&mut obs, dim, field, value, now_ms),
            None => {}
        }
    }
    let rejected_window_reset = windows
        .iter()
        .filter(|w| w.1)
        .map(|w| w.2.or(unified_reset))
        .max()
        .flatten();
    let any_rejected = unified_rejected || windows.iter().any(|w| w.1);
    let unified_until = if unified_rejected {
        rejected_window_reset.max(unified_reset)
    } else {
        rejected_window_reset
    };
    match status {
        // A bare unified reset names when this 429 ends, unless the unified limit allows.
        429 => {
            obs.cool = Some(
                retry_after
                    .or(unified_until)
                    .or(unified_reset.filter(|_| !unified_allowed))
                    .map_or(Cool::RateLimited, Cool::Until),
            )
        }
        503 | 529 => obs.cool = Some(retry_after.map_or(Cool::Overloaded, Cool::Until)),
        _ if any_rejected => obs.cool = Some(unified_until.map_or(Cool::RateLimited, Cool::Until)),
        _ => {}
    }
    obs
}

/// Reads an error answer's body (status ≥ 400, its first 64 KB, decoded; see `key_rejection`)
/// from an account of `api`: an observation that disables the account when the provider said
/// the key is invalid, else an empty one. Record it (`record`) when it is not empty.
pub fn observe_error_body(api: Api, status: u32, body: &[u8]) -> Observation {
    Observation {
        status,
        disable: key_rejection(api, status, body),
        ..Observation::default()
    }
}

/// Not inlined into `observe_response` (its one caller): the wasm is smaller so.
#[inline(never)]
fn learn(obs: &mut Observation, dim: &str, field: &str, value: &str, now_ms: u64) {
    let Some(d) = Dimension::from_name(dim) else {
        return;
    };
    let Some(slot) = obs.dims.get_mut(d.index()) else {
        return;
    };
    let u = slot.get_or_insert_with(DimUpdate::default);
    match field {
        "remaining" => u.remaining = parse_count(value),
        "limit" => u.limit = parse_count(value),
        "reset" => u.reset_ms = parse_reset(value, now_ms),
        _ => {}
    }
}

/// What an error event inside a 200 stream says (its class: `provider::classify_stream_error`):
/// a rate limit cools 60 s or until a known reset, an overload 10 s; anything else changes
/// nothing.
pub fn observe_stream_error(class: StreamError) -> Observation {
    let cool = match class {
        StreamError::RateLimited => Some(Cool::RateLimited),
        StreamError::Overloaded => Some(Cool::Overloaded),
        StreamError::Other => None,
    };
    Observation {
        cool,
        ..Observation::default()
    }
}
