//! The client side of `envoy.service.ratelimit.v3.RateLimitService` for global limits (SPEC
//! "Global limits"): which descriptors a request sends, the check-only admission request and
//! its decision, the usage charges the root context sends (summed per descriptor per tick,
//! `charges`) and the over-limit answers a worker remembers until their window ends
//! (`refusals`). The protobuf wire format of the few messages involved is written
//! by hand here (field keys over the crate's varint codec, `codec`), so no codegen enters the
//! binary.
//!
//! Field numbers, from envoy `api/envoy/service/ratelimit/v3/rls.proto` and
//! `api/envoy/extensions/common/ratelimit/v3/ratelimit.proto` (as generated into
//! go-control-plane `envoy` v1.32.4, the version envoyproxy/ratelimit builds against):
//!
//! ```text
//! RateLimitRequest    { string domain = 1; repeated RateLimitDescriptor descriptors = 2;
//!                       uint32 hits_addend = 3; }
//! RateLimitDescriptor { repeated Entry entries = 1; RateLimitOverride limit = 2;
//!                       google.protobuf.UInt64Value hits_addend = 3; }
//! Entry               { string key = 1; string value = 2; }
//! RateLimitResponse   { Code overall_code = 1; repeated DescriptorStatus statuses = 2;
//!                       response_headers_to_add = 3; request_headers_to_add = 4;
//!                       raw_body = 5; dynamic_metadata = 6; quota = 7; }
//! DescriptorStatus    { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//!                       google.protobuf.Duration duration_until_reset = 4; quota = 5; }
//! RateLimit           { uint32 requests_per_unit = 1; Unit unit = 2; string name = 3; }
//! Code                { UNKNOWN = 0; OK = 1; OVER_LIMIT = 2; }
//! Unit                { UNKNOWN = 0; SECOND = 1; MINUTE = 2; HOUR = 3; DAY = 4; MONTH = 5;
//!                       YEAR = 6; WEEK = 7; }
//! Duration            { int64 seconds = 1; int32 nanos = 2; }
//! ```

use crate::codec::CodecError;
use crate::limits::{Limit, LimitKind, Per};
use crate::quota::{self, Amounts, LimitStatus, RateHeaders};
use std::fmt;

/// The gRPC service and method the host dispatches to (`dispatch_grpc_call`). The message
/// bodies below are bare protobuf: Envoy adds and strips the gRPC framing itself.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Most statuses accepted in one response: the service returns one per descriptor sent, and
/// tollgate sends at most a handful, so anything larger is garbage (and would cost memory).
const MAX_STATUSES: usize = 256;

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// What a global descriptor counts: the `unit` entry's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// input + cache_read + cache_write + output tokens.
    Tokens,
    /// One per request.
    Requests,
    /// Priced usage in micro-dollars.
    CostMicros,
}

impl Unit {
    pub const ALL: [Unit; 3] = [Unit::Tokens, Unit::Requests, Unit::CostMicros];

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Tokens => "tokens",
            Unit::Requests => "requests",
            Unit::CostMicros => "cost_micros",
        }
    }

    /// The global unit of a limit kind; `input_tokens` and `output_tokens` have none (SPEC
    /// names only `tokens`, `requests`, `cost_micros`), so they stay local.
    pub fn of_kind(kind: LimitKind) -> Option<Unit> {
        match kind {
            LimitKind::Tokens => Some(Unit::Tokens),
            LimitKind::Requests => Some(Unit::Requests),
            LimitKind::CostUsd => Some(Unit::CostMicros),
            LimitKind::InputTokens | LimitKind::OutputTokens => None,
        }
    }

    /// What `amounts` counts in this unit (a request always counts 1).
    pub fn amount(self, amounts: &Amounts) -> u64 {
        match self {
            Unit::Tokens => amounts.tokens,
            Unit::Requests => 1,
            Unit::CostMicros => amounts.cost_micros,
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The global units of a set of limits, each once, in `Unit::ALL` order.
pub fn units_for(limits: &[Limit]) -> Vec<Unit> {
    Unit::ALL
        .into_iter()
        .filter(|u| {
            limits.iter().any(|l| match l {
                Limit::Rate { kind, .. } => Unit::of_kind(*kind) == Some(*u),
                Limit::Concurrent(_) => false,
            })
        })
        .collect()
}

/// One `RateLimitDescriptor`: its entries, the unit they count, and the per-descriptor
/// `hits_addend` (always set when sent: unset, the service would count 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    pub unit: Unit,
    pub hits_addend: u64,
}

impl Descriptor {
    fn new(entries: &[(&str, &str)], unit: Unit) -> Descriptor {
        let mut e: Vec<(String, String)> = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        e.push(("unit".to_string(), unit.as_str().to_string()));
        Descriptor {
            entries: e,
            unit,
            hits_addend: 0,
        }
    }

    /// The account this descriptor counts for (`[("account", name), ...]`), if it is one.
    pub fn account(&self) -> Option<&str> {
        match self.entries.first() {
            Some((k, v)) if k == "account" => Some(v),
            _ => None,
        }
    }
}

/// The consumer's descriptors (SPEC): for each unit `[("consumer", name), ("unit", u)]`,
/// then, when a model is given, `[("consumer", name), ("model", model), ("unit", u)]`. The
/// model should be a bounded value (the matched glob, as in metrics) unless the service's
/// configuration matches it by prefix; an empty model sends no model descriptors (the
/// protocol requires non-empty values). `hits_addend` is 0 until a request sets it.
pub fn descriptors_for(consumer: &str, model: Option<&str>, units: &[Unit]) -> Vec<Descriptor> {
    let mut out = Vec::with_capacity(units.len() * 2);
    for &u in units {
        out.push(Descriptor::new(&[("consumer", consumer)], u));
    }
    if let Some(m) = model.filter(|m| !m.is_empty()) {
        for &u in units {
            out.push(Descriptor::new(&[("consumer", consumer), ("model", m)], u));
        }
    }
    out
}

/// An account's descriptors: `[("account", name), ("unit", u)]` for each unit.
pub fn account_descriptors(account: &str, units: &[Unit]) -> Vec<Descriptor> {
    units
        .iter()
        .map(|&u| Descriptor::new(&[("account", account)], u))
        .collect()
}

/// Everything one request sends (SPEC "Global limits"): the consumer's descriptors for the
/// global units of `consumer_limits` (`descriptors_for`), then, when the request is served by
/// an account, that account's descriptors for the global units of the account's own limits.
/// Admission and the charge after the response send the same list, so the account that was
/// checked is the one charged. Empty when neither has a limit with a global unit.
pub fn request_descriptors(
    consumer: &str,
    consumer_limits: &[Limit],
    model: Option<&str>,
    account: Option<(&str, &[Limit])>,
) -> Vec<Descriptor> {
    let mut out = descriptors_for(consumer, model, &units_for(consumer_limits));
    if let Some((name, limits)) = account {
        out.extend(account_descriptors(name, &units_for(limits)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

/// What one descriptor of an admission request must have room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub unit: Unit,
    /// The reservation in this unit (1 for requests, which the service has already counted).
    pub need: u64,
}

/// An encoded admission request and, in descriptor order, what each descriptor must allow;
/// `decide` reads the response against `checks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub body: Vec<u8>,
    pub checks: Vec<Check>,
}

/// The admission request for `descriptors`: token and cost units are checked without being
/// counted (`hits_addend: 0`), requests are counted at once (`hits_addend: 1`).
pub fn admission(domain: &str, descriptors: &mut [Descriptor], reservation: &Amounts) -> Admission {
    let mut checks = Vec::with_capacity(descriptors.len());
    for d in descriptors.iter_mut() {
        let need = d.unit.amount(reservation);
        d.hits_addend = match d.unit {
            Unit::Requests => 1,
            Unit::Tokens | Unit::CostMicros => 0,
        };
        checks.push(Check { unit: d.unit, need });
    }
    Admission {
        body: encode_request(domain, descriptors),
        checks,
    }
}

/// `admission` for a consumer's descriptors (`descriptors_for`).
pub fn admission_request(
    domain: &str,
    consumer: &str,
    model: Option<&str>,
    units: &[Unit],
    reservation: &Amounts,
) -> Admission {
    admission(
        domain,
        &mut descriptors_for(consumer, model, units),
        reservation,
    )
}

/// How much room one limited descriptor has, for the binding-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub unit: Unit,
    /// The service's `requests_per_unit`.
    pub limit: u64,
    /// As the service reported it: before this request for tokens and cost (checked, not
    /// counted), after it for requests.
    pub remaining: u64,
    /// This request's reservation in the unit (what `remaining` still has to hold).
    pub need: u64,
    /// Whole seconds until the service's window resets (≥ 1).
    pub reset_s: u64,
    /// The window, in seconds (a month is 30 days in the reference service).
    pub window_s: u64,
}

/// The caller's binding limits with the global ones in (SPEC "HTTP behaviour": the binding
/// limit is the one with the lowest remaining/limit ratio): every token and requests
/// descriptor the service limits competes with the local limits in `local`. A token
/// descriptor's remaining is net of this request's reservation, as a local limit's is once
/// admitted; a requests descriptor was counted by the admission call itself.
pub fn binding_with(local: RateHeaders, headroom: &[Headroom]) -> RateHeaders {
    let global = headroom.iter().filter_map(|h| {
        let (kind, remaining) = match h.unit {
            Unit::Tokens => (LimitKind::Tokens, h.remaining.saturating_sub(h.need)),
            Unit::Requests => (LimitKind::Requests, h.remaining),
            Unit::CostMicros => return None,
        };
        Some(LimitStatus {
            index: usize::MAX,
            kind: Some(kind),
            limit: h.limit,
            remaining,
            reset_s: h.reset_s,
        })
    });
    quota::binding(local.tokens.into_iter().chain(local.requests).chain(global))
}

/// Why the global limits refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The binding descriptor's unit; `None` when the service said OVER_LIMIT without saying
    /// which descriptor.
    pub unit: Option<Unit>,
    /// Whole seconds (≥ 1) until every refusing window has reset.
    pub retry_after_s: u64,
    /// The binding descriptor's position in the request (`None` when the service said
    /// OVER_LIMIT without saying which descriptor).
    pub index: Option<usize>,
    /// The binding descriptor's limit and window, when the service sent them.
    pub limit: Option<u64>,
    pub per: Option<Per>,
    pub remaining: u64,
    pub need: u64,
    /// `false` when waiting cannot help: the reservation alone exceeds a limit.
    pub should_retry: bool,
}

/// Why a response could not be used; the host applies `failure_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlsError {
    Decode(DecodeError),
    /// `overall_code` UNKNOWN (or an unknown value).
    UnknownCode,
    /// An OK response whose statuses do not match the descriptors sent one to one.
    StatusCount {
        sent: usize,
        got: usize,
    },
}

impl fmt::Display for RlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RlsError::Decode(e) => write!(f, "undecodable rate-limit response: {e}"),
            RlsError::UnknownCode => f.write_str("rate-limit response with code UNKNOWN"),
            RlsError::StatusCount { sent, got } => {
                write!(
                    f,
                    "rate-limit response has {got} statuses for {sent} descriptors"
                )
            }
        }
    }
}

/// The outcome of an admission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every limited descriptor has room; its standing, in descriptor order (descriptors the
    /// service has no limit for are left out).
    Admit(Vec<Headroom>),
    Reject(Rejection),
    Error(RlsError),
}

/// Reads the service's answer to `admission`: admit only if no descriptor is OVER_LIMIT and
/// every token and cost descriptor with a limit has `limit_remaining ≥ need`. A descriptor
/// the service has no limit for comes back OK without `current_limit`: no constraint.
pub fn decide(response: &[u8], checks: &[Check]) -> Decision {
    read_answer(response, checks).0
}

/// `decide`, and the statuses it read when they match `checks` one to one (empty
/// otherwise), for `Refusals::learn`.
pub fn read_answer(response: &[u8], checks: &[Check]) -> (Decision, Vec<DescriptorStatus>) {
    let resp = match decode_response(response) {
        Ok(r) => r,
        Err(e) => return (Decision::Error(RlsError::Decode(e)), Vec::new()),
    };
    if resp.overall == Code::Unknown {
        return (Decision::Error(RlsError::UnknownCode), Vec::new());
    }
    if resp.statuses.len() != checks.len() {
        if resp.overall == Code::OverLimit {
            return (Decision::Reject(Binding::unnamed(1)), Vec::new());
        }
        let e = RlsError::StatusCount {
            sent: checks.len(),
            got: resp.statuses.len(),
        };
        return (Decision::Error(e), Vec::new());
    }
    let mut admit = Vec::new();
    let mut binding = Binding::default();
    for (index, (st, ck)) in resp.statuses.iter().zip(checks).enumerate() {
        let reset_s = st.reset_s();
        if !refuses(st, ck) {
            if let Some(l) = st.current_limit {
                admit.push(Headroom {
                    unit: ck.unit,
                    limit: l.requests_per_unit,
                    remaining: st.limit_remaining,
                    need: ck.need,
                    reset_s,
                    window_s: l.unit.window_s(),
                });
            }
            continue;
        }
        let limit = st.current_limit.map(|l| l.requests_per_unit);
        binding.add(Rejection {
            unit: Some(ck.unit),
            retry_after_s: reset_s,
            index: Some(index),
            limit,
            per: st.current_limit.and_then(|l| l.unit.per()),
            remaining: st.limit_remaining,
            need: ck.need,
            should_retry: !hopeless(ck, limit),
        });
    }
    let wait = binding.retry_after_s;
    let decision = match binding.finish() {
        Some(r) => Decision::Reject(r),
        None if resp.overall == Code::OverLimit => Decision::Reject(Binding::unnamed(wait)),
        None => Decision::Admit(admit),
    };
    (decision, resp.statuses)
}

/// Whether a descriptor's status refuses its check: OVER_LIMIT, or a limited token or cost
/// descriptor with less remaining than the reservation (a requests descriptor needs 1 and
/// has already been counted, so only OVER_LIMIT refuses it).
fn refuses(st: &DescriptorStatus, ck: &Check) -> bool {
    let short = match (ck.unit, st.current_limit) {
        (Unit::Requests, _) | (_, None) => false,
        (_, Some(_)) => st.limit_remaining < ck.need,
    };
    st.code == Code::OverLimit || short
}

/// Whether waiting cannot help: the reservation alone exceeds the limit (for requests, a
/// limit of 0).
fn hopeless(ck: &Check, limit: Option<u64>) -> bool {
    match (ck.unit, limit) {
        (Unit::Requests, Some(l)) => l == 0,
        (_, Some(l)) => ck.need > l,
        (_, None) => false,
    }
}

/// The binding refusal among a request's refusing descriptors (one waiting cannot help,
/// else the one that lasts longest), with the wait until every one of them has reset.
#[derive(Debug)]
struct Binding {
    worst: Option<Rejection>,
    retry_after_s: u64,
    should_retry: bool,
}

impl Default for Binding {
    fn default() -> Self {
        Binding {
            worst: None,
            retry_after_s: 1,
            should_retry: true,
        }
    }
}

impl Binding {
    fn add(&mut self, r: Rejection) {
        let hopeless = !r.should_retry;
        self.retry_after_s = self.retry_after_s.max(r.retry_after_s);
        self.should_retry &= !hopeless;
        let replace = match &self.worst {
            None => true,
            // Same kind (both hopeless or both not): the longer wait binds.
            Some(w) => {
                (w.should_retry && hopeless)
                    || (w.should_retry != hopeless && r.retry_after_s > w.retry_after_s)
            }
        };
        if replace {
            self.worst = Some(r);
        }
    }

    fn finish(self) -> Option<Rejection> {
        let mut w = self.worst?;
        w.retry_after_s = self.retry_after_s;
        w.should_retry = self.should_retry;
        Some(w)
    }

    /// OVER_LIMIT from the service without saying which descriptor.
    fn unnamed(retry_after_s: u64) -> Rejection {
        Rejection {
            unit: None,
            retry_after_s,
            index: None,
            limit: None,
            per: None,
            remaining: 0,
            need: 0,
            should_retry: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Charges
// ---------------------------------------------------------------------------------------------

mod charges;
mod refusals;

pub use charges::*;
pub use refusals::*;

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit.Unit`, kept as the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlsUnit(pub u64);

impl RlsUnit {
    /// The window in seconds as the reference service counts it (month = 30 days, year = 365
    /// days); 0 for UNKNOWN or an unknown value.
    pub fn window_s(self) -> u64 {
        match self.0 {
            1 => 1,
            2 => 60,
            3 => 3_600,
            4 => 86_400,
            5 => 30 * 86_400,
            6 => 365 * 86_400,
            7 => 7 * 86_400,
            _ => 0,
        }
    }

    /// The tollgate `per` naming this window, for messages; week and year have none.
    pub fn per(self) -> Option<Per> {
        match self.0 {
            1 => Some(Per::Second),
            2 => Some(Per::Minute),
            3 => Some(Per::Hour),
            4 => Some(Per::Day),
            5 => Some(Per::Month),
            _ => None,
        }
    }
}

/// `RateLimitResponse.RateLimit` (its `name` is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentLimit {
    pub requests_per_unit: u64,
    pub unit: RlsUnit,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u64,
    /// `duration_until_reset` as (seconds, nanos).
    pub until_reset: Option<(i64, i64)>,
}

impl DescriptorStatus {
    /// `duration_until_reset` rounded up to whole seconds, at least 1 (also when absent).
    pub fn reset_s(&self) -> u64 {
        match self.until_reset {
            Some((s, n)) if s >= 0 => {
                let s = u64::try_from(s).unwrap_or(0);
                s.saturating_add(u64::from(n > 0)).max(1)
            }
            _ => 1,
        }
    }
}

/// The parts of `RateLimitResponse` tollgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub overall: Code,
    pub statuses: Vec<DescriptorStatus>,
}

/// Encodes a `RateLimitRequest`; every descriptor carries its `hits_addend`, and the
/// request-level `hits_addend` is left unset.
pub fn encode_request(domain: &str, descriptors: &[Descriptor]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + descriptors.len() * 48);
    wire::put_bytes(&mut out, 1, domain.as_bytes());
    let mut desc = Vec::new();
    for d in descriptors {
        desc.clear();
        put_entries(&mut desc, &d.entries);
        put_hits(&mut desc, d.hits_addend);
        wire::put_bytes(&mut out, 2, &desc);
    }
    out
}

/// A descriptor's `entries` fields.
fn put_entries(desc: &mut Vec<u8>, entries: &[(String, String)]) {
    let mut entry = Vec::new();
    for (k, v) in entries {
        entry.clear();
        wire::put_bytes(&mut entry, 1, k.as_bytes());
        wire::put_bytes(&mut entry, 2, v.as_bytes());
        wire::put_bytes(desc, 1, &entry);
    }
}

/// A descriptor's `hits_addend` field, sent even when 0 (an empty UInt64Value): presence is
/// what says "count 0".
fn put_hits(desc: &mut Vec<u8>, hits: u64) {
    let mut value = Vec::new();
    if hits != 0 {
        wire::put_varint_field(&mut value, 1, hits);
    }
    wire::put_bytes(desc, 3, &value);
}

/// Decodes a `RateLimitResponse`; unknown fields are skipped, malformed input is an error.
pub fn decode_response(buf: &[u8]) -> Result<Response, DecodeError> {
    let mut overall = Code::Unknown;
    let mut statuses = Vec::new();
    let mut r = wire::Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, wire::Value::Varint(v)) => overall = Code::from_wire(v),
            (2, wire::Value::Bytes(b)) => {
                if statuses.len() >= MAX_STATUSES {
                    return Err(DecodeError::TooMany);
                }
                statuses.push(decode_status(b)?);
            }
            (1 | 2, _) => return Err(DecodeError::WireType),
            _ => {}
        }
    }
    Ok(Response { overall, statuses })
}

fn decode_status(buf: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut st = DescriptorStatus {
        code: Code::Unknown,
        current_limit: None,
        limit_remaining: 0,
        until_reset: None,
    };
    let mut r = wire::Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, wire::Value::Varint(v)) => st.code = Code::from_wire(v),
            (2, wire::Value::Bytes(b)) => st.current_limit = Some(decode_limit(b)?),
            (3, wire::Value::Varint(v)) => st.limit_remaining = u64::from(v as u32),
            (4, wire::Value::Bytes(b)) => st.until_reset = Some(decode_duration(b)?),
            (1..=4, _) => return Err(DecodeError::WireType),
            _ => {}
        }
    }
    Ok(st)
}

fn decode_limit(buf: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut l = CurrentLimit {
        requests_per_unit: 0,
        unit: RlsUnit(0),
    };
    let mut r = wire::Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, wire::Value::Varint(v)) => l.requests_per_unit = u64::from(v as u32),
            (2, wire::Value::Varint(v)) => l.unit = RlsUnit(v),
            (3, wire::Value::Bytes(_)) => {}
            (1..=3, _) => return Err(DecodeError::WireType),
            _ => {}
        }
    }
    Ok(l)
}

fn decode_duration(buf: &[u8]) -> Result<(i64, i64), DecodeError> {
    let (mut s, mut n) = (0i64, 0i64);
    let mut r = wire::Reader::new(buf);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            // int64 / int32 are two's complement in a varint.
            (1, wire::Value::Varint(v)) => s = v as i64,
            (2, wire::Value::Varint(v)) => n = i64::from(v as i32),
            (1 | 2, _) => return Err(DecodeError::WireType),
            _ => {}
        }
    }
    Ok((s, n))
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside a field.
    Truncated,
    /// A varint longer than 10 bytes.
    VarintTooLong,
    /// Field number 0 or above 2^29 - 1.
    BadField,
    /// A group or an undefined wire type, or a known field with the wrong one.
    WireType,
    /// More statuses than any request of tollgate's could produce.
    TooMany,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "truncated",
            DecodeError::VarintTooLong => "varint too long",
            DecodeError::BadField => "bad field number",
            DecodeError::WireType => "bad wire type",
            DecodeError::TooMany => "too many statuses",
        })
    }
}

impl From<CodecError> for DecodeError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Truncated => DecodeError::Truncated,
            CodecError::VarintTooLong => DecodeError::VarintTooLong,
        }
    }
}

/// The protobuf wire format, just what the messages above need: field keys and values over
/// the crate's varint codec.
mod wire {
    use super::DecodeError;
    use crate::codec;

    const VARINT: u64 = 0;
    const LEN: u64 = 2;

    pub fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
        codec::put_varint(out, field << 3 | VARINT);
        codec::put_varint(out, v);
    }

    pub fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        codec::put_varint(out, field << 3 | LEN);
        codec::put_bytes(out, b);
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Value<'a> {
        Varint(u64),
        Fixed64,
        Bytes(&'a [u8]),
        Fixed32,
    }

    pub struct Reader<'a>(codec::Reader<'a>);

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Reader<'a> {
            Reader(codec::Reader::new(buf))
        }

        /// The next field, or `None` at the end of the input.
        pub fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
            let r = &mut self.0;
            if r.is_empty() {
                return Ok(None);
            }
            let key = r.varint()?;
            let field = key >> 3;
            if field == 0 || field > (1 << 29) - 1 {
                return Err(DecodeError::BadField);
            }
            let value = match key & 7 {
                0 => Value::Varint(r.varint()?),
                1 => {
                    r.take(8)?;
                    Value::Fixed64
                }
                2 => Value::Bytes(r.bytes()?),
                5 => {
                    r.take(4)?;
                    Value::Fixed32
                }
                _ => return Err(DecodeError::WireType),
            };
            Ok(Some((field, value)))
        }
    }
}

#[cfg(test)]
mod tests;
