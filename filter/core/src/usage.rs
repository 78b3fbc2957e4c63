//! Counts the real tokens of one response as its body passes through: JSON or SSE, plain or
//! gzip/deflate, for every metered API, normalised per SPEC "Counting". Bounded memory, never
//! holds the response back (except one partial event while stripping OpenAI's usage chunk).

use std::borrow::Cow;

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::api::Api;
use crate::estimate::Estimator;
use crate::json::{self, Elements};
use crate::limits::Usage;
use crate::provider::{self, Endpoint, ErrorNames, StreamError};
use crate::sse::{Event, SseParser, DEFAULT_EVENT_CAP};

/// Largest JSON body parsed whole; beyond it only a tail is kept and scanned for usage.
const JSON_CAP: usize = 1 << 20;
/// Tail of an over-cap JSON body kept for the usage scan (usage is near the end in every API).
const TAIL_KEEP: usize = 64 << 10;
/// Largest element of a streamed JSON array (Gemini without `alt=sse`).
const ELEMENT_CAP: usize = DEFAULT_EVENT_CAP;
/// Largest partial event held back in strip mode before it is let through unstripped.
const HOLD_CAP: usize = DEFAULT_EVENT_CAP;
/// Longest model name kept.
const MODEL_CAP: usize = 256;
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

// ---------------------------------------------------------------------------------------
// Strip mode: forward whole events only, drop the usage-only chunk.

#[derive(Default)]
struct Strip {
    /// Raw bytes of the unfinished event at the end of the previous chunk.
    held: Vec<u8>,
    /// The current event outgrew `HOLD_CAP` and is being let through as it comes.
    passing: bool,
    /// A dropped event ended in `\r` at a chunk's end: its `\n` may start the next chunk.
    skip_lf: bool,
    /// Cut points of the current chunk and whether the event before each is dropped.
    cuts: Vec<(usize, bool)>,
}

impl Strip {
    fn feed(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        parser: &mut Parser,
        counter: &mut Counter,
    ) -> Option<Vec<u8>> {
        // A `\n` completing a `\r\n` split across chunks belongs to the bytes before it:
        // to a whole event already dealt with when nothing is held.
        let mut start = 0;
        let mut lead_lf = false;
        if !chunk.is_empty() {
            if chunk.first() == Some(&b'\n') && parser.after_cr() && self.held.is_empty() {
                start = 1;
                lead_lf = !self.skip_lf;
            }
            self.skip_lf = false;
        }
        self.cuts.clear();
        parser.feed(chunk, counter, Some(&mut self.cuts));

        // The common case: whole events, nothing dropped, nothing held back.
        let ends_at_cut = self.cuts.last().map(|c| c.0) == Some(chunk.len());
        if start == 0 && self.held.is_empty() && self.cuts.iter().all(|c| !c.1) {
            if ends_at_cut || end_of_stream {
                self.passing = false;
                return None;
            }
            if chunk.is_empty() || (self.passing && self.cuts.is_empty()) {
                return None;
            }
        }

        let mut out = Vec::with_capacity(self.held.len().saturating_add(chunk.len()));
        if lead_lf {
            out.push(b'\n');
        }
        let mut pos = start;
        for &(end, drop) in &self.cuts {
            let end = end.max(pos);
            if drop && !self.passing {
                self.held.clear();
                if end == chunk.len() && parser.after_cr() {
                    self.skip_lf = true;
                }
            } else {
                out.append(&mut self.held);
                out.extend_from_slice(chunk.get(pos..end).unwrap_or_default());
            }
            // A cut ends the event that was passing.
            self.passing = false;
            pos = end;
        }
        let tail = chunk.get(pos..).unwrap_or_default();
        if end_of_stream {
            out.append(&mut self.held);
            out.extend_from_slice(tail);
            self.passing = false;
        } else if self.passing {
            out.extend_from_slice(tail);
        } else if self.held.len().saturating_add(tail.len()) > HOLD_CAP {
            // Too big to be a usage chunk: let it through as it comes.
            out.append(&mut self.held);
            out.extend_from_slice(tail);
            self.passing = true;
        } else {
            self.held.extend_from_slice(tail);
        }
        if out.as_slice() == chunk {
            None
        } else {
            Some(out)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Framing: SSE, streamed JSON array, or one JSON document.

enum Parser {
    Sse(SseParser),
    Array(Box<Elements>),
    Json(JsonBuffer),
}

impl Parser {
    fn feed(
        &mut self,
        bytes: &[u8],
        counter: &mut Counter,
        mut cuts: Option<&mut Vec<(usize, bool)>>,
    ) {
        if let Parser::Json(j) = self {
            // Gemini's streamed array can arrive without the streaming path in the URL
            // we were told about: recognise it by its first byte.
            if counter.endpoint.api() == Api::Gemini
                && !j.truncated
                && j.buf.iter().all(u8::is_ascii_whitespace)
            {
                if let Some(&b'[') = bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                    *self = Parser::Array(Box::new(Elements::new(ELEMENT_CAP)));
                }
            }
        }
        match self {
            Parser::Sse(p) => p.feed(bytes, |end, ev| {
                let drop = ev.is_some_and(|e| counter.event(e, false));
                if let Some(c) = cuts.as_deref_mut() {
                    c.push((end, drop));
                }
            }),
            Parser::Array(a) => a.feed(bytes, |doc| {
                counter.doc(doc, false, false);
            }),
            Parser::Json(j) => j.feed(bytes, counter),
        }
    }

    fn finish(&mut self, counter: &mut Counter) {
        match self {
            Parser::Sse(p) => p.finish(|ev| {
                if let Some(e) = ev {
                    counter.event(e, true);
                }
            }),
            Parser::Array(_) => {}
            Parser::Json(j) => j.finish(counter),
        }
    }

    fn after_cr(&self) -> bool {
        matches!(self, Parser::Sse(p) if p.after_cr())
    }

    fn oversized(&self) -> u64 {
        match self {
            Parser::Sse(p) => p.oversized(),
            Parser::Array(a) => a.oversized(),
            Parser::Json(j) => u64::from(j.truncated),
        }
    }
}

/// A JSON body: kept whole up to `JSON_CAP`, then only its tail.
#[derive(Default)]
struct JsonBuffer {
    buf: Vec<u8>,
    truncated: bool,
}

impl JsonBuffer {
    fn feed(&mut self, bytes: &[u8], counter: &mut Counter) {
        if !self.truncated {
            if self.buf.len().saturating_add(bytes.len()) <= JSON_CAP {
                self.buf.extend_from_slice(bytes);
                return;
            }
            self.truncated = true;
            counter.model_near_start(&self.buf);
            // Start a small buffer: the big one's capacity would otherwise stay allocated.
            let old = std::mem::replace(&mut self.buf, Vec::with_capacity(3 * TAIL_KEEP));
            let cut = old.len().saturating_sub(TAIL_KEEP);
            counter.push_raw(old.get(..cut).unwrap_or_default());
            self.buf
                .extend_from_slice(old.get(cut..).unwrap_or_default());
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * TAIL_KEEP {
            let cut = self.buf.len().saturating_sub(TAIL_KEEP);
            // Should the tail hold no usage, the dropped bytes are the only text we saw.
            counter.push_raw(self.buf.get(..cut).unwrap_or_default());
            self.buf.drain(..cut);
        }
    }

    fn finish(&mut self, counter: &mut Counter) {
        if self.truncated {
            counter.tail(&self.buf);
            counter.push_raw(&self.buf);
        } else if !self.buf.is_empty() {
            counter.doc(&self.buf, true, false);
        }
        self.buf = Vec::new();
    }
}

// ---------------------------------------------------------------------------------------
// Content decoding (for counting only: the bytes sent on are never changed).

enum Decoder {
    Identity,
    Inflate(Box<Inflater>),
    Unsupported,
}

impl Decoder {
    /// `identity` entries (and empty ones) are no coding; one gzip, x-gzip or deflate is
    /// decoded; anything else, stacked codings included (`gzip, gzip`, `gzip, br`), is not.
    fn new(content_encoding: &str) -> Decoder {
        let mut codings = content_encoding
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        match (codings.next(), codings.next()) {
            (None, _) => Decoder::Identity,
            (Some(c), None)
                if c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip") =>
            {
                Decoder::Inflate(Box::new(Inflater::new(Gz::Fixed { got: 0, flags: 0 })))
            }
            (Some(c), None) if c.eq_ignore_ascii_case("deflate") => {
                Decoder::Inflate(Box::new(Inflater::new(Gz::Sniff)))
            }
            _ => Decoder::Unsupported,
        }
    }

    /// The compressed bytes turned out not to be gzip/deflate, or corrupt: the rest of the
    /// body was not decoded.
    fn broken(&self) -> bool {
        matches!(self, Decoder::Inflate(i) if i.gz == Gz::Broken)
    }

    fn decode<F: FnMut(&[u8])>(&mut self, input: &[u8], mut sink: F) {
        match self {
            Decoder::Identity => sink(input),
            Decoder::Inflate(i) => i.decode(input, &mut sink),
            Decoder::Unsupported => {}
        }
    }
}

/// Where the gzip/deflate decoder is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gz {
    /// deflate: the first byte tells zlib from raw deflate (both are sent as "deflate").
    Sniff,
    /// The 10 fixed gzip header bytes.
    Fixed {
        got: u8,
        flags: u8,
    },
    ExtraLen {
        flags: u8,
        got: u8,
        len: u16,
    },
    Extra {
        flags: u8,
        left: u16,
    },
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    HeaderCrc {
        left: u8,
    },
    Body {
        gzip: bool,
    },
    /// CRC32 and size: not checked, counting does not need them.
    Trailer {
        left: u8,
    },
    /// Finished: the rest is ignored.
    Stop,
    /// Not gzip/deflate, or corrupt: the rest is ignored.
    Broken,
}

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

/// The header part that follows once the parts in `done` (flag bits) are read.
fn after_header(flags: u8, done: u8) -> Gz {
    let todo = flags & !done;
    if todo & FEXTRA != 0 {
        Gz::ExtraLen {
            flags,
            got: 0,
            len: 0,
        }
    } else if todo & FNAME != 0 {
        Gz::Name { flags }
    } else if todo & FCOMMENT != 0 {
        Gz::Comment { flags }
    } else if todo & FHCRC != 0 {
        Gz::HeaderCrc { left: 2 }
    } else {
        Gz::Body { gzip: true }
    }
}

struct Inflater {
    state: Box<InflateState>,
    out: Vec<u8>,
    gz: Gz,
    /// A whole gzip member was read: bytes after it that start no member are ignored.
    member_done: bool,
}

impl Inflater {
    fn new(gz: Gz) -> Self {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Raw),
            out: vec![0; INFLATE_OUT],
            gz,
            member_done: false,
        }
    }

    fn decode(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !input.is_empty() {
            let Some((&b, rest)) = input.split_first() else {
                return;
            };
            match self.gz {
                Gz::Stop | Gz::Broken => return,
                Gz::Body { gzip } => {
                    input = self.inflate(input, gzip, sink);
                    continue;
                }
                Gz::Sniff => {
                    // zlib: CM = 8 and a window of at most 32 KiB; anything else is raw.
                    let zlib = b & 0x0f == 8 && b >> 4 <= 7;
                    let format = if zlib {
                        DataFormat::Zlib
                    } else {
                        DataFormat::Raw
                    };
                    self.state.reset(format);
                    self.gz = Gz::Body { gzip: false };
                    continue;
                }
                Gz::Fixed { got, flags } => {
                    let ok = match got {
                        0 => b == 0x1f,
                        1 => b == 0x8b,
                        2 => b == 8,
                        _ => true,
                    };
                    let flags = if got == 3 { b } else { flags };
                    self.gz = if !ok && self.member_done {
                        // Padding or garbage after the body, not a next member.
                        Gz::Stop
                    } else if !ok {
                        Gz::Broken
                    } else if got == 9 {
                        self.state.reset(DataFormat::Raw);
                        after_header(flags, 0)
                    } else {
                        Gz::Fixed {
                            got: got.saturating_add(1),
                            flags,
                        }
                    };
                }
                Gz::ExtraLen { flags, got, len } => {
                    let len = if got == 0 {
                        u16::from(b)
                    } else {
                        len | u16::from(b) << 8
                    };
                    self.gz = match (got, len) {
                        (0, _) => Gz::ExtraLen { flags, got: 1, len },
                        (_, 0) => after_header(flags, FEXTRA),
                        _ => Gz::Extra { flags, left: len },
                    };
                }
                Gz::Extra { flags, left } => {
                    let left = left.saturating_sub(1);
                    self.gz = if left == 0 {
                        after_header(flags, FEXTRA)
                    } else {
                        Gz::Extra { flags, left }
                    };
                }
                Gz::Name { flags } => {
                    if b == 0 {
                        self.gz = after_header(flags, FEXTRA | FNAME);
                    }
                }
                Gz::Comment { flags } => {
                    if b == 0 {
                        self.gz = after_header(flags, FEXTRA | FNAME | FCOMMENT);
                    }
                }
                Gz::HeaderCrc { left } => {
                    self.gz = if left <= 1 {
                        Gz::Body { gzip: true }
                    } else {
                        Gz::HeaderCrc {
                            left: left.saturating_sub(1),
                        }
                    };
                }
                Gz::Trailer { left } => {
                    // A next gzip member may follow (concatenated gzip is legal).
                    self.gz = if left <= 1 {
                        Gz::Fixed { got: 0, flags: 0 }
                    } else {
                        Gz::Trailer {
                            left: left.saturating_sub(1),
                        }
                    };
                }
            }
            input = rest;
        }
    }

    /// Inflates as much of `input` as possible; returns what is left after the stream end.
    fn inflate<'a>(
        &mut self,
        mut input: &'a [u8],
        gzip: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> &'a [u8] {
        loop {
            let r = inflate(&mut self.state, input, &mut self.out, MZFlush::None);
            input = input.get(r.bytes_consumed..).unwrap_or_default();
            if r.bytes_written > 0 {
                sink(self.out.get(..r.bytes_written).unwrap_or_default());
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.member_done = true;
                    self.gz = if gzip {
                        Gz::Trailer { left: 8 }
                    } else {
                        Gz::Stop
                    };
                    return input;
                }
                Ok(_) => {
                    let full = r.bytes_written == self.out.len();
                    if (input.is_empty() && !full)
                        || (r.bytes_consumed == 0 && r.bytes_written == 0)
                    {
                        return input;
                    }
                }
                Err(MZError::Buf) => return input,
                Err(_) => {
                    self.gz = Gz::Broken;
                    return &[];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the wire says: minimal borrowed structs, everything else skipped unparsed.

/// A JSON scalar; arrays and objects are skipped (so a surprising type never fails a parse).
#[derive(Debug, Default)]
enum Scalar<'a> {
    #[default]
    Null,
    Num(u64),
    Str(Cow<'a, str>),
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(u64::try_from(v).unwrap_or(0)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // `as` saturates; NaN becomes 0.
        Ok(Scalar::Num(if v > 0.0 { v as u64 } else { 0 }))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Null)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A string field (anything else reads as absent).
#[derive(Debug, Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(match Scalar::deserialize(d)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }))
    }
}

impl Text<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A token count as reported. Null or a missing field is absent; a count that is negative,
/// fractional, above `MAX_COUNT` or not a number is insane (SPEC "Usage numbers are sane").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Count {
    #[default]
    Absent,
    Sane(u64),
    Insane,
}

impl Count {
    fn of(n: u64) -> Count {
        if n <= MAX_COUNT {
            Count::Sane(n)
        } else {
            Count::Insane
        }
    }

    fn get(self) -> Option<u64> {
        match self {
            Count::Sane(n) => Some(n),
            Count::Absent | Count::Insane => None,
        }
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a token count")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count::of(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(u64::try_from(v).map_or(Count::Insane, Count::of))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
        // A whole number written as a float (`12.0`, `1e2`) is that number; NaN and the
        // infinities fail both tests.
        Ok(
            if v.fract() == 0.0 && (0.0..=MAX_COUNT as f64).contains(&v) {
                Count::Sane(v as u64)
            } else {
                Count::Insane
            },
        )
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
        Ok(Count::Insane)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
        Ok(Count::Insane)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count::Absent)
    }
    fn visit_none<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count::Absent)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
        d.deserialize_any(CountVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count::Insane)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count::Insane)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

/// A key that names a token count in some API's usage: `*_tokens` (Anthropic, OpenAI,
/// their `*_details`, `cache_creation`), `*TokenCount` and `tokenCount` (Gemini and its
/// per-modality details). Such a value must be a sane count even where nothing reads it.
fn is_count_key(key: &str) -> bool {
    key.ends_with("_tokens") || key.ends_with("TokenCount") || key == "tokenCount"
}

/// Every usage shape at once; `raw` picks the fields of the API at hand.
#[derive(Debug, Default)]
struct WireUsage {
    input_tokens: Count,
    output_tokens: Count,
    cache_creation_input_tokens: Count,
    cache_read_input_tokens: Count,
    prompt_tokens: Count,
    completion_tokens: Count,
    /// Inside a `*_details` object.
    cached_tokens: Count,
    /// `prompt_tokens_details.cached_tokens` (Chat, Embeddings).
    prompt_cached: Count,
    /// `input_tokens_details.cached_tokens` (Responses).
    input_cached: Count,
    prompt_token_count: Count,
    candidates_token_count: Count,
    thoughts_token_count: Count,
    cached_content_token_count: Count,
    /// Some count in it, read or not, is insane; or the usage is not an object at all.
    insane: bool,
}

impl WireUsage {
    /// The field a count key fills, if any.
    fn slot(&mut self, key: &str) -> Option<&mut Count> {
        Some(match key {
            "input_tokens" => &mut self.input_tokens,
            "output_tokens" => &mut self.output_tokens,
            "cache_creation_input_tokens" => &mut self.cache_creation_input_tokens,
            "cache_read_input_tokens" => &mut self.cache_read_input_tokens,
            "prompt_tokens" => &mut self.prompt_tokens,
            "completion_tokens" => &mut self.completion_tokens,
            "cached_tokens" => &mut self.cached_tokens,
            "promptTokenCount" => &mut self.prompt_token_count,
            "candidatesTokenCount" => &mut self.candidates_token_count,
            "thoughtsTokenCount" => &mut self.thoughts_token_count,
            "cachedContentTokenCount" => &mut self.cached_content_token_count,
            _ => return None,
        })
    }

    fn raw(&self, endpoint: Endpoint) -> Raw {
        match endpoint {
            Endpoint::Messages => Raw {
                prompt: self.input_tokens.get(),
                cached: self.cache_read_input_tokens.get(),
                cache_write: self.cache_creation_input_tokens.get(),
                output: self.output_tokens.get(),
                thoughts: None,
            },
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => Raw {
                prompt: self.prompt_tokens.get(),
                cached: self.prompt_cached.get(),
                cache_write: None,
                output: self.completion_tokens.get(),
                thoughts: None,
            },
            Endpoint::Responses => Raw {
                prompt: self.input_tokens.get(),
                cached: self.input_cached.get(),
                cache_write: None,
                output: self.output_tokens.get(),
                thoughts: None,
            },
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => Raw {
                prompt: self.prompt_token_count.get(),
                cached: self.cached_content_token_count.get(),
                cache_write: None,
                output: self.candidates_token_count.get(),
                thoughts: self.thoughts_token_count.get(),
            },
        }
    }
}

/// Reads a usage object (`top`) or a value nested in one: every count key in it, at any
/// depth (serde_json bounds the depth), is checked; nested objects and arrays are searched.
#[derive(Clone, Copy)]
struct UsageSeed {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for UsageSeed {
    type Value = WireUsage;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireUsage, D::Error> {
        d.deserialize_any(self)
    }
}

impl UsageSeed {
    /// A scalar: a usage that is one is insane; nested under a key that is not a count,
    /// it is something else (`service_tier`, `modality`, OpenRouter's `cost`).
    fn scalar(self) -> WireUsage {
        WireUsage {
            insane: self.top,
            ..WireUsage::default()
        }
    }
}

impl<'de> Visitor<'de> for UsageSeed {
    type Value = WireUsage;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a usage object")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_unit<E: de::Error>(self) -> Result<WireUsage, E> {
        Ok(WireUsage::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<WireUsage, E> {
        Ok(WireUsage::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<WireUsage, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireUsage, A::Error> {
        let mut insane = self.top;
        while let Some(u) = seq.next_element_seed(UsageSeed { top: false })? {
            insane |= u.insane;
        }
        Ok(WireUsage {
            insane,
            ..WireUsage::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireUsage, A::Error> {
        let mut u = WireUsage::default();
        while let Some(key) = map.next_key::<Text>()? {
            let key = key.get().unwrap_or_default();
            if let Some(slot) = u.slot(key) {
                *slot = map.next_value()?;
                u.insane |= *slot == Count::Insane;
            } else if is_count_key(key) {
                u.insane |= map.next_value::<Count>()? == Count::Insane;
            } else {
                let inner = map.next_value_seed(UsageSeed { top: false })?;
                u.insane |= inner.insane;
                match key {
                    "prompt_tokens_details" => u.prompt_cached = inner.cached_tokens,
                    "input_tokens_details" => u.input_cached = inner.cached_tokens,
                    _ => {}
                }
            }
        }
        Ok(u)
    }
}

impl<'de> Deserialize<'de> for WireUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UsageSeed { top: true }.deserialize(d)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    code: Scalar<'a>,
    #[serde(borrow)]
    status: Text<'a>,
}

impl WireError<'_> {
    /// Not inlined: six call sites share it.
    #[inline(never)]
    fn classify(&self) -> StreamError {
        let (code, code_num) = match &self.code {
            Scalar::Str(s) => (Some(s.as_ref()), 0),
            Scalar::Num(n) => (None, *n),
            Scalar::Null => (None, 0),
        };
        provider::classify_stream_error(&ErrorNames {
            kind: self.kind.get(),
            code,
            code_num,
            status: self.status.get(),
        })
    }
}

/// An Anthropic body or SSE event (`message_start`, `content_block_delta`, `message_delta`,
/// `error`, ...): one struct covers them all.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicDoc<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    model: Text<'a>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    message: Option<AnthropicMessage<'a>>,
    #[serde(borrow)]
    delta: Option<AnthropicText<'a>>,
    #[serde(borrow)]
    content: Option<Vec<AnthropicText<'a>>>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicMessage<'a> {
    #[serde(borrow)]
    model: Text<'a>,
    usage: Option<WireUsage>,
}

/// A content block or a delta of one.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicText<'a> {
    #[serde(borrow)]
    text: Text<'a>,
    #[serde(borrow)]
    thinking: Text<'a>,
    #[serde(borrow)]
    partial_json: Text<'a>,
}

/// A Chat Completions / Completions / Embeddings body or chunk.
#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiDoc<'a> {
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    choices: Option<Vec<OpenAiChoice<'a>>>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiChoice<'a> {
    #[serde(borrow)]
    delta: Option<OpenAiMessage<'a>>,
    #[serde(borrow)]
    message: Option<OpenAiMessage<'a>>,
    /// `/v1/completions`
    #[serde(borrow)]
    text: Text<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiMessage<'a> {
    #[serde(borrow)]
    content: Text<'a>,
    /// vLLM, DeepSeek and others stream reasoning under one of these.
    #[serde(borrow)]
    reasoning_content: Text<'a>,
    #[serde(borrow)]
    reasoning: Text<'a>,
    #[serde(borrow)]
    refusal: Text<'a>,
    #[serde(borrow)]
    tool_calls: Option<Vec<OpenAiToolCall<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiToolCall<'a> {
    #[serde(borrow)]
    function: Option<OpenAiFunction<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiFunction<'a> {
    #[serde(borrow)]
    arguments: Text<'a>,
}

/// A Responses body (the response object itself) or SSE event (which wraps the response
/// object in `response`, or carries a `delta`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponsesDoc<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    delta: Text<'a>,
    #[serde(borrow)]
    code: Scalar<'a>,
    #[serde(borrow)]
    response: Option<ResponsesObject<'a>>,
    #[serde(borrow)]
    model: Text<'a>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
    #[serde(borrow)]
    output: Option<Vec<ResponsesItem<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponsesObject<'a> {
    #[serde(borrow)]
    model: Text<'a>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
    #[serde(borrow)]
    output: Option<Vec<ResponsesItem<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponsesItem<'a> {
    #[serde(borrow)]
    content: Option<Vec<AnthropicText<'a>>>,
    #[serde(borrow)]
    arguments: Text<'a>,
}

/// A Gemini body or stream element.
#[derive(Deserialize, Default)]
#[serde(default)]
struct GeminiDoc<'a> {
    #[serde(borrow)]
    candidates: Option<Vec<GeminiCandidate<'a>>>,
    #[serde(rename = "usageMetadata")]
    usage: Option<WireUsage>,
    #[serde(rename = "modelVersion", borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GeminiCandidate<'a> {
    #[serde(borrow)]
    content: Option<GeminiContent<'a>>,
    #[serde(rename = "finishReason", borrow)]
    finish_reason: Text<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GeminiContent<'a> {
    #[serde(borrow)]
    parts: Option<Vec<AnthropicText<'a>>>,
}

// ---------------------------------------------------------------------------------------
// The counting itself.

/// Usage fields as last reported; each field replaces its earlier value when present.
#[derive(Debug, Default, Clone, Copy)]
struct Raw {
    prompt: Option<u64>,
    cached: Option<u64>,
    cache_write: Option<u64>,
    output: Option<u64>,
    thoughts: Option<u64>,
}

impl Raw {
    fn merge(&mut self, o: Raw) {
        self.prompt = o.prompt.or(self.prompt);
        self.cached = o.cached.or(self.cached);
        self.cache_write = o.cache_write.or(self.cache_write);
        self.output = o.output.or(self.output);
        self.thoughts = o.thoughts.or(self.thoughts);
    }
}

struct Counter {
    endpoint: Endpoint,
    raw: Raw,
    /// The final usage arrived: `output` is real.
    final_seen: bool,
    /// Some usage in the response was insane: none of it counts.
    insane: bool,
    model: Option<String>,
    error: Option<StreamError>,
    est: Estimator,
    oversized: u64,
}

/// One response document, or why it does not parse. Not inlined: each document type's
/// deserializer stays a function of its own, so `Counter::doc` does not grow huge (V8 compiles
/// every function whole when the filter loads; see lib.rs).
#[inline(never)]
fn parse_doc<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    serde_json::from_slice(bytes)
}

impl Counter {
    fn new(endpoint: Endpoint) -> Self {
        Counter {
            endpoint,
            raw: Raw::default(),
            final_seen: false,
            insane: false,
            model: None,
            error: None,
            est: Estimator::new(endpoint.api()),
            oversized: 0,
        }
    }

    /// One SSE event; `last` when the stream ended without closing it (it may be cut
    /// short). Returns true for OpenAI's usage-only chunk (the one strip mode drops).
    fn event(&mut self, e: Event<'_>, last: bool) -> bool {
        if e.truncated {
            self.tail(e.data);
            false
        } else if e.data.is_empty() || e.is_done() {
            false
        } else {
            self.doc(e.data, false, last)
        }
    }

    /// One JSON document: a whole body (`whole`), an SSE event's data or an array element;
    /// `may_be_cut` when the stream ended inside it. Returns true for a usage-only Chat chunk.
    fn doc(&mut self, bytes: &[u8], whole: bool, may_be_cut: bool) -> bool {
        let parsed = match self.endpoint {
            Endpoint::Messages => parse_doc::<AnthropicDoc>(bytes).map(|d| {
                self.anthropic(d);
                false
            }),
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                parse_doc::<OpenAiDoc>(bytes).map(|d| self.openai(d))
            }
            Endpoint::Responses => parse_doc::<ResponsesDoc>(bytes).map(|d| {
                self.responses(d);
                false
            }),
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => {
                parse_doc::<GeminiDoc>(bytes).map(|d| {
                    self.gemini(d, whole);
                    false
                })
            }
        };
        match parsed {
            Ok(usage_only) => usage_only,
            // The stream ended inside its last event: the half event adds nothing.
            Err(e) if may_be_cut && e.is_eof() => false,
            Err(_) => {
                self.unparsed(bytes);
                false
            }
        }
    }

    /// A document that does not parse (cut short, or broken: `1e400` fails serde_json
    /// itself): read like the tail of an over-cap one, its raw bytes feeding the estimate.
    fn unparsed(&mut self, bytes: &[u8]) {
        self.model_near_start(bytes);
        self.tail(bytes);
        self.push_raw(bytes);
    }

    /// The model of a document too large (or too broken) to parse: near its start in
    /// OpenAI and Anthropic bodies.
    fn model_near_start(&mut self, bytes: &[u8]) {
        self.model_at(bytes, b"\"model\"", false);
    }

    /// The model under the first (or last) `key` in `bytes`.
    fn model_at(&mut self, bytes: &[u8], key: &[u8], from_end: bool) {
        if let Some(v) = json::find_value(bytes, key, from_end) {
            if let Ok(t) = Text::deserialize(&mut serde_json::Deserializer::from_slice(v)) {
                self.set_model(&t);
            }
        }
    }

    /// One usage object; `last` when it is the final one (its output is then real).
    fn usage(&mut self, u: &WireUsage, last: bool) {
        self.insane |= u.insane;
        if self.insane {
            // Counted as if no usage came: the texts that follow feed the estimate.
            self.final_seen = false;
            return;
        }
        self.raw.merge(u.raw(self.endpoint));
        self.final_seen |= last;
    }

    fn anthropic(&mut self, d: AnthropicDoc<'_>) {
        self.set_model(&d.model);
        if let Some(m) = &d.message {
            self.set_model(&m.model);
            if let Some(u) = &m.usage {
                self.usage(u, false);
            }
        }
        // Top-level usage: `message_delta` (cumulative) or the whole JSON body.
        if let Some(u) = &d.usage {
            self.usage(u, true);
        }
        if let Some(t) = &d.delta {
            self.push_texts(t);
        }
        for t in d.content.iter().flatten() {
            self.push_texts(t);
        }
        if d.kind.get() == Some("error") {
            let e = d
                .error
                .as_ref()
                .map_or(StreamError::Other, WireError::classify);
            self.set_error(e);
        }
    }

    fn openai(&mut self, d: OpenAiDoc<'_>) -> bool {
        self.set_model(&d.model);
        // Usage first: once the final count is known, texts need no estimate.
        let usage_only = match &d.usage {
            Some(u) => {
                self.usage(u, true);
                // Usage-only: `choices: []` (or, from some servers, no `choices` at all).
                d.choices.as_ref().is_none_or(Vec::is_empty)
            }
            None => false,
        };
        for c in d.choices.iter().flatten() {
            self.text(&c.text);
            for m in [&c.delta, &c.message].into_iter().flatten() {
                self.text(&m.content);
                self.text(&m.reasoning_content);
                self.text(&m.reasoning);
                self.text(&m.refusal);
                for call in m.tool_calls.iter().flatten() {
                    if let Some(f) = &call.function {
                        self.text(&f.arguments);
                    }
                }
            }
        }
        if let Some(e) = &d.error {
            self.set_error(e.classify());
        }
        usage_only
    }

    fn responses(&mut self, d: ResponsesDoc<'_>) {
        let kind = d.kind.get().unwrap_or_default();
        let is_error = kind == "error";
        if kind.ends_with(".delta") && !kind.contains("audio") {
            self.text(&d.delta);
        }
        if is_error {
            let e = match &d.error {
                Some(e) => e.classify(),
                None => WireError {
                    code: d.code,
                    ..WireError::default()
                }
                .classify(),
            };
            self.set_error(e);
        }
        // A stream's output text comes from its deltas; a body's from `output`.
        let body = kind.is_empty();
        let top = ResponsesObject {
            model: d.model,
            usage: d.usage,
            error: if is_error { None } else { d.error },
            output: if body { d.output } else { None },
        };
        for r in [d.response.as_ref(), Some(&top)].into_iter().flatten() {
            self.set_model(&r.model);
            if let Some(u) = &r.usage {
                self.usage(u, true);
            }
            if let Some(e) = &r.error {
                self.set_error(e.classify());
            }
            if body {
                for item in r.output.iter().flatten() {
                    self.text(&item.arguments);
                    for c in item.content.iter().flatten() {
                        self.push_texts(c);
                    }
                }
            }
        }
    }

    fn gemini(&mut self, d: GeminiDoc<'_>, whole: bool) {
        self.set_model(&d.model);
        let mut finished = whole;
        for c in d.candidates.iter().flatten() {
            finished |= c.finish_reason.get().is_some_and(|r| !r.is_empty());
            let parts = c.content.as_ref().and_then(|c| c.parts.as_ref());
            for p in parts.into_iter().flatten() {
                self.text(&p.text);
            }
        }
        if let Some(u) = &d.usage {
            // Every chunk repeats usageMetadata; only the last one's output is final.
            self.usage(u, finished);
        }
        if let Some(e) = &d.error {
            self.set_error(e.classify());
        }
    }

    /// The tail of a document too large to parse: look for its usage object.
    fn tail(&mut self, tail: &[u8]) {
        let (key, model_key): (&[u8], &[u8]) = if self.endpoint.api() == Api::Gemini {
            (b"\"usageMetadata\"", b"\"modelVersion\"")
        } else {
            (b"\"usage\"", b"\"model\"")
        };
        // The last `"usage":` whose value is an object is the usage (a key named so earlier,
        // in an echoed tool schema say, is not; one in tool arguments is escaped). One parse:
        // cut short inside it (the body ended there), there is none; broken (`1e400`), it is
        // insane.
        let found = (0..tail.len())
            .rev()
            .find_map(|i| json::value_at(tail, i, key).filter(|v| v.first() == Some(&b'{')));
        if let Some(v) = found {
            match WireUsage::deserialize(&mut serde_json::Deserializer::from_slice(v)) {
                Ok(u) => self.usage(&u, true),
                Err(e) if e.is_eof() => {}
                Err(_) => self.usage(
                    &WireUsage {
                        insane: true,
                        ..WireUsage::default()
                    },
                    true,
                ),
            }
        }
        // Gemini names it last; OpenAI's embeddings too, after the vectors.
        if self.model.is_none() {
            self.model_at(tail, model_key, true);
        }
    }

    fn push_texts(&mut self, t: &AnthropicText<'_>) {
        self.text(&t.text);
        self.text(&t.thinking);
        self.text(&t.partial_json);
    }

    fn text(&mut self, t: &Text<'_>) {
        // The estimate is only for output that is never reported.
        if self.final_seen {
            return;
        }
        if let Some(s) = t.get() {
            if !s.is_empty() {
                self.est.push_str(s);
            }
        }
    }

    /// Raw bytes of an over-cap JSON body, the fallback estimate's only source.
    fn push_raw(&mut self, bytes: &[u8]) {
        if self.endpoint == Endpoint::Embeddings || self.final_seen {
            return;
        }
        for c in bytes.utf8_chunks() {
            self.est.push_str(c.valid());
        }
    }

    fn set_model(&mut self, t: &Text<'_>) {
        if self.model.is_some() {
            return;
        }
        if let Some(s) = t.get().filter(|s| !s.is_empty()) {
            let mut end = s.len().min(MODEL_CAP);
            while !s.is_char_boundary(end) {
                end = end.saturating_sub(1);
            }
            self.model = Some(s.get(..end).unwrap_or_default().to_owned());
        }
    }

    fn set_error(&mut self, e: StreamError) {
        self.error.get_or_insert(e);
    }

    fn metering(&mut self) -> Metering {
        self.est.end_text();
        if self.insane {
            // As if the usage never came: the input is the host's estimate, the output the
            // streamed text's.
            let output = if self.endpoint == Endpoint::Embeddings {
                0
            } else {
                self.est.tokens()
            };
            return Metering {
                usage: Usage {
                    output,
                    ..Usage::default()
                },
                output_estimated: true,
                invalid_usage: true,
                model: self.model.clone(),
                stream_error: self.error,
                oversized_events: self.oversized,
                ..Metering::default()
            };
        }
        let r = self.raw;
        let cached = r.cached.unwrap_or(0);
        let (input, cache_write) = match self.endpoint {
            Endpoint::Messages => (r.prompt.unwrap_or(0), r.cache_write.unwrap_or(0)),
            _ => (r.prompt.unwrap_or(0).saturating_sub(cached), 0),
        };
        let reported = r
            .output
            .unwrap_or(0)
            .saturating_add(r.thoughts.unwrap_or(0));
        let (output, output_estimated) = if self.endpoint == Endpoint::Embeddings {
            (0, false)
        } else if self.final_seen {
            (reported, false)
        } else {
            (reported.max(self.est.tokens()), true)
        };
        let complete = r.prompt.is_some();
        Metering {
            usage: Usage {
                input: if complete { input } else { 0 },
                cache_read: if complete { cached } else { 0 },
                cache_write: if complete { cache_write } else { 0 },
                output,
            },
            complete,
            output_estimated,
            model: self.model.clone(),
            stream_error: self.error,
            unsupported_encoding: false,
            corrupt_encoding: false,
            invalid_usage: false,
            oversized_events: self.oversized,
        }
    }
}

#[cfg(test)]
mod tests;
