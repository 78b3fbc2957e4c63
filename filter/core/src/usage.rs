//! Counts the real tokens of one response as its body passes through: JSON or SSE, plain or
//! gzip/deflate, for every metered API, normalised per SPEC "Counting". Bounded memory, never
//! holds the response back (except one partial event while stripping OpenAI's usage chunk).

use crate::api::MODEL_CAP;
use crate::json::Elements;
use crate::limits::Usage;
use crate::provider::{Endpoint, StreamError};
use crate::sse::{SseParser, DEFAULT_EVENT_CAP};

/// Largest JSON body parsed whole; beyond it only a tail is kept and scanned for usage.
const JSON_CAP: usize = 1 << 20;
/// Tail of an over-cap JSON body kept for the usage scan (usage is near the end in every API).
const TAIL_KEEP: usize = 64 << 10;
/// Largest element of a streamed JSON array (Gemini without `alt=sse`).
const ELEMENT_CAP: usize = DEFAULT_EVENT_CAP;
/// Largest partial event held back in strip mode before it is let through unstripped.
const HOLD_CAP: usize = DEFAULT_EVENT_CAP;
/// Inflate output window: a compressed body is decoded to its end through it, each window
/// scanned and dropped (SPEC "Decoding runs to the end in bounded memory").
const INFLATE_OUT: usize = 16 << 10;
/// The largest token count a response may report (SPEC "Usage numbers are sane"). Every
/// normalised field is then at most twice this (Gemini's output adds thoughts), so no sum or
/// cost over one response can come near `u64::MAX`.
pub const MAX_COUNT: u64 = 100_000_000;

/// How a response body is framed, decided from its content type and endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// One JSON document.
    Json,
    /// `text/event-stream`.
    Sse,
    /// Gemini `:streamGenerateContent` without `alt=sse`: a JSON array sent element by element.
    JsonArrayStream,
}

impl Body {
    pub fn detect(endpoint: Endpoint, content_type: &str) -> Body {
        let ct = content_type.trim_start().as_bytes();
        let sse = b"text/event-stream";
        if ct.len() >= sse.len()
            && ct
                .get(..sse.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(sse))
        {
            Body::Sse
        } else if endpoint == Endpoint::StreamGenerateContent {
            Body::JsonArrayStream
        } else {
            Body::Json
        }
    }
}

/// The `accept-encoding` to send upstream for a metered request: the client's list cut to
/// the codings the meter decodes (`gzip`, `deflate`, `identity`), so no client can switch
/// metering off by asking for `br` or `zstd`. No header, or nothing decodable left, is
/// `identity` (no header would let the upstream pick any coding).
pub fn decodable_accept_encoding(client: Option<&str>) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for item in client.unwrap_or_default().split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.get(..2).is_some_and(|k| k.eq_ignore_ascii_case("q="))
                && p.get(2..)
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
        });
        let known = ["gzip", "x-gzip", "deflate", "identity"]
            .iter()
            .find(|c| c.eq_ignore_ascii_case(coding));
        if let (Some(c), false) = (known, refused) {
            if !kept.contains(c) {
                kept.push(c);
            }
        }
    }
    if kept.is_empty() || kept == ["identity"] {
        "identity".to_string()
    } else {
        kept.join(", ")
    }
}

/// What one response used, and how far to trust it.
///
/// What the host charges (`charged`): the input side as reported when `complete`, else its
/// own input estimate; the output as given, except for an `undecodable()` response, where it
/// charges at least the output it reserved (`usage.output` is then only what could be
/// estimated, often nothing). `tollgate.usage` is then `undecodable`; else `invalid` for
/// `invalid_usage`; else `estimated` when `output_estimated` or not `complete`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metering {
    pub usage: Usage,
    /// The upstream reported the input side (`input`, `cache_read`, `cache_write`). When
    /// false they are 0 and the caller should use its own input estimate.
    pub complete: bool,
    /// `output` is estimated from the streamed text (the final usage never came, was
    /// invalid, or the body could not be decoded). Always true when `invalid_usage` or
    /// `undecodable()`.
    pub output_estimated: bool,
    /// The model the response names (`model`, or Gemini's `modelVersion`).
    pub model: Option<String>,
    /// The first error event seen in the body.
    pub stream_error: Option<StreamError>,
    /// `content-encoding` was not identity, gzip, x-gzip or deflate (br, zstd, stacked
    /// codings such as `gzip, gzip`): nothing could be counted; `usage` is all zero,
    /// `complete` false, `output_estimated` true.
    pub unsupported_encoding: bool,
    /// The body claimed gzip/deflate but was not, or broke off into corrupt data, before its
    /// final usage was read: the rest was not counted; `output_estimated` is true.
    pub corrupt_encoding: bool,
    /// The upstream reported a count that is negative, fractional, not a number or above
    /// `MAX_COUNT` (in any usage field, read or not), or a usage that is not an object: none
    /// of its usage counts. `complete` is false (no input reported) and `output` is estimated
    /// from the streamed text, as if the final usage never came.
    pub invalid_usage: bool,
    /// Events or array elements too large to parse whole (their usage, if any, was looked
    /// for in their tail).
    pub oversized_events: u64,
}

impl Metering {
    /// The body could not be decoded (far enough) to count it.
    pub fn undecodable(&self) -> bool {
        self.unsupported_encoding || self.corrupt_encoding
    }

    /// What to charge, given the host's own input estimate and the output it reserved at
    /// admission (SPEC "Trust boundaries (v2)").
    pub fn charged(&self, input_estimate: u64, reserved_output: u64) -> Usage {
        let mut u = self.usage;
        if !self.complete {
            u = Usage {
                input: input_estimate,
                output: u.output,
                ..Usage::default()
            };
        }
        if self.undecodable() {
            u.output = u.output.max(reserved_output);
        }
        u
    }
}

/// Meters one response. Create it when the response headers arrive, `feed` every body chunk,
/// `finish` at the end (or on reset/abort).
pub struct ResponseMeter {
    decoder: Decoder,
    parser: Parser,
    counter: Counter,
    strip: Option<Strip>,
    done: Option<Metering>,
}

impl ResponseMeter {
    /// `strip_usage_chunk`: the filter added `stream_options.include_usage` itself, so the
    /// usage-only chunk is removed from what the client receives. Honoured only for an
    /// uncompressed Chat Completions / Completions SSE body (a compressed one would need
    /// re-compressing: the client then just sees one extra chunk with `choices: []`).
    pub fn new(
        endpoint: Endpoint,
        content_type: &str,
        content_encoding: &str,
        strip_usage_chunk: bool,
    ) -> Self {
        let body = Body::detect(endpoint, content_type);
        let decoder = Decoder::new(content_encoding);
        let parser = match body {
            Body::Sse => Parser::Sse(SseParser::default()),
            Body::JsonArrayStream => Parser::Array(Box::new(Elements::new(ELEMENT_CAP))),
            Body::Json => Parser::Json(JsonBuffer::default()),
        };
        let strip = (strip_usage_chunk
            && body == Body::Sse
            && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
            && matches!(decoder, Decoder::Identity))
        .then(Strip::default);
        ResponseMeter {
            decoder,
            parser,
            counter: Counter::new(endpoint),
            strip,
            done: None,
        }
    }

    /// Whether `feed` may return a replacement (strip mode): then a chunk must be metered
    /// before it goes on. Otherwise metering may lag a chunk behind.
    pub fn rewrites(&self) -> bool {
        self.strip.is_some()
    }

    /// Called per body chunk. Returns what to send to the client instead of `chunk`, or
    /// `None` to send it unchanged. Only strip mode ever returns `Some`: it holds back the
    /// unfinished last event of a chunk until its end arrives.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        self.feed_chunk(chunk, false)
    }

    /// Like `feed`, for the chunk that comes with `end_of_stream` (call it even when that
    /// chunk is empty): in strip mode it also releases whatever is still held back.
    pub fn feed_last(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        self.feed_chunk(chunk, true)
    }

    fn feed_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        if self.done.is_some() {
            return None;
        }
        let ResponseMeter {
            decoder,
            parser,
            counter,
            strip,
            ..
        } = self;
        match strip {
            Some(strip) => strip.feed(chunk, end_of_stream, parser, counter),
            None => {
                decoder.decode(chunk, |bytes| parser.feed(bytes, counter, None));
                None
            }
        }
    }

    /// The usage of the response. Call at the end of the stream, or when it was cut short
    /// (then output may be estimated). Later calls return the same answer.
    pub fn finish(&mut self) -> Metering {
        if let Some(m) = &self.done {
            return m.clone();
        }
        self.parser.finish(&mut self.counter);
        let mut m = self.counter.metering();
        m.unsupported_encoding = matches!(self.decoder, Decoder::Unsupported);
        m.corrupt_encoding = self.decoder.broken() && !self.counter.final_seen;
        if m.undecodable() {
            // Whatever was counted, the output is not known: never a reported zero.
            m.output_estimated = true;
        }
        m.oversized_events = m.oversized_events.saturating_add(self.parser.oversized());
        self.done = Some(m.clone());
        m
    }
}

mod count;
mod decode;
mod framing;
mod strip;
mod wire;

use count::*;
use decode::*;
use framing::*;
use strip::*;
use wire::*;

#[cfg(test)]
mod tests;
