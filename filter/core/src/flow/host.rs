//! The one seam between the request flow and Envoy: everything the flow asks of the host
//! (headers, body windows, filter state, local replies, metrics, gRPC, the clock, logging and
//! shared data) is a method of `Host`. The cdylib implements it over the raw proxy-wasm ABI;
//! the flow tests implement it with a recording fake.

use crate::store::Store;

/// What a callback tells the host to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// A log line's level (proxy-wasm's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// A kind of Envoy metric (one type for the flow and for the series `metrics` lists).
pub use crate::metrics::Kind as MetricKind;

/// A host buffer the flow reads (or replaces a part of).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// The request body buffered so far.
    RequestBody,
    /// The current response body chunk.
    ResponseBody,
    /// The reply of the gRPC call that just finished.
    GrpcReply,
    /// The plugin configuration (in `on_configure`).
    PluginConfig,
}

/// A gRPC unary call to dispatch.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub message: &'a [u8],
    pub timeout_ms: u64,
}

impl<'a> GrpcCall<'a> {
    /// A `ShouldRateLimit` call to the global rate-limit service carrying `message`, with the
    /// configured timeout but at least `min_timeout_ms`.
    pub fn rate_limit(
        global: &'a crate::config::Global,
        message: &'a [u8],
        min_timeout_ms: u64,
    ) -> GrpcCall<'a> {
        GrpcCall {
            cluster: &global.cluster,
            service: crate::ratelimit::SERVICE,
            method: crate::ratelimit::METHOD,
            message,
            timeout_ms: global.timeout.millis().max(min_timeout_ms),
        }
    }
}

/// The host as the flow sees it. Shared data is the host's `Store`. Reads take `&self`,
/// writes `&mut self`; no call can fail loudly: a host status the flow cannot use reads as
/// absent (`None`, `false`) or is ignored, as a panic would kill the VM.
pub trait Host: Store {
    /// Wall-clock milliseconds since the Unix epoch; one reading per callback.
    fn now_ms(&self) -> u64;
    fn log(&self, level: Level, msg: &str);

    /// The request's header map, read in one host call.
    fn request_headers(&self) -> Headers;
    /// The response's header map, read in one host call.
    fn response_headers(&self) -> Headers;
    /// Replaces (or adds) a request header.
    fn set_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    fn set_response_header(&mut self, name: &str, value: &str);
    fn remove_response_header(&mut self, name: &str);

    /// Up to `max` bytes of `buffer` from `start`; `None` when the host has none to give.
    fn read(&self, buffer: Buffer, start: usize, max: usize) -> Option<Vec<u8>>;
    /// Replaces `size` bytes of `buffer` at `start` with `data`; whether the host took it.
    fn replace(&mut self, buffer: Buffer, start: usize, size: usize, data: &[u8]) -> bool;

    /// Sets filter state `name` (readable as `%FILTER_STATE(wasm.<name>:PLAIN)%`).
    fn set_property(&mut self, name: &str, value: &str);
    /// A property by path (filter state, dynamic metadata, stream info); a value that is
    /// empty or not UTF-8 reads as absent.
    fn property(&self, path: &[&str]) -> Option<String>;

    /// Answers the request locally.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Lets a paused request go on.
    fn resume_request(&mut self);
    /// Envoy's `clear_route_cache`, so a header written now picks the route.
    fn clear_route_cache(&mut self);

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&mut self, id: u32, by: i64);
    fn record_metric(&mut self, id: u32, value: u64);
    fn metric(&self, id: u32) -> Option<u64>;

    /// Dispatches a gRPC call; its reply comes back by token (`on_grpc_response`). `Err`
    /// holds the host status.
    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, u32>;
    fn set_tick_period_ms(&mut self, ms: u64);
}

/// A header map as Envoy serialises it, read in one host call (a read that returns data
/// costs a call back into the VM to allocate, so one map read beats several single-header
/// reads). Names are lowercase in Envoy; a name seen twice answers with its first value, as
/// Envoy's single-header read does.
#[derive(Debug, Default, Clone)]
pub struct Headers {
    buf: Vec<u8>,
    /// (name start, name len, value start, value len) into `buf`.
    spans: Vec<(usize, usize, usize, usize)>,
}

impl Headers {
    /// Envoy's serialised header map: count, (name len, value len)×count, then each name and
    /// value followed by a NUL. A malformed map reads as empty.
    pub fn decode(buf: Vec<u8>) -> Headers {
        let word = |at: usize| -> Option<usize> {
            let w: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
            Some(u32::from_le_bytes(w) as usize)
        };
        let spans = (|| {
            let n = word(0)?;
            let mut at = 4usize.checked_add(n.checked_mul(8)?)?;
            let mut spans = Vec::with_capacity(n.min(1024));
            for i in 0..n {
                let (k, v) = (word(4 + i * 8)?, word(8 + i * 8)?);
                let value_at = at.checked_add(k)?.checked_add(1)?;
                let end = value_at.checked_add(v)?;
                if end > buf.len() {
                    return None;
                }
                spans.push((at, k, value_at, v));
                at = end + 1;
            }
            Some(spans)
        })()
        .unwrap_or_default();
        Headers { buf, spans }
    }

    /// The serialised form of `pairs` (for a local reply's headers, and for fakes).
    pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let size = pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>();
        let mut out = Vec::with_capacity(4 + size);
        out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// A map holding `pairs` in order.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Headers {
        Headers::decode(Headers::encode(pairs))
    }

    /// Every (name, value) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.spans.iter().filter_map(|&(n, nl, v, vl)| {
            let name = core::str::from_utf8(self.buf.get(n..n + nl)?).ok()?;
            Some((name, self.buf.get(v..v + vl)?))
        })
    }

    /// The raw first value of `name` (names compared as bytes: no decoding per lookup).
    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.spans.iter().find_map(|&(n, nl, v, vl)| {
            (self.buf.get(n..n + nl)? == name.as_bytes())
                .then(|| self.buf.get(v..v + vl))
                .flatten()
        })
    }

    /// The first value of `name`; a value that is not UTF-8 reads as absent rather than
    /// trusted.
    pub fn get(&self, name: &str) -> Option<&str> {
        core::str::from_utf8(self.raw(name)?).ok()
    }

    pub fn has(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }
}
