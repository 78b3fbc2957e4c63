//! The counting itself: turns each parsed document or event into normalised usage, model
//! and output text as SPEC "Counting" defines them.

use serde::Deserialize;

use super::*;
use crate::api::Api;
use crate::estimate::Estimator;
use crate::json;
use crate::limits::Usage;
use crate::provider::{Endpoint, StreamError};
use crate::sse::Event;

/// Usage fields as last reported; each field replaces its earlier value when present.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Raw {
    pub(super) prompt: Option<u64>,
    pub(super) cached: Option<u64>,
    pub(super) cache_write: Option<u64>,
    pub(super) output: Option<u64>,
    pub(super) thoughts: Option<u64>,
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

pub(super) struct Counter {
    pub(super) endpoint: Endpoint,
    raw: Raw,
    /// The final usage arrived: `output` is real.
    pub(super) final_seen: bool,
    /// Some usage in the response was insane: none of it counts.
    insane: bool,
    model: Option<String>,
    error: Option<StreamError>,
    est: Estimator,
    /// Output text not yet given to `est`.
    deferred: Deferred,
    oversized: u64,
}

/// Most text bytes deferred before they go to the estimator (a bound on the memory of one
/// response's meter).
const DEFER_CAP: usize = 8 << 10;

/// Output text whose estimate may never be needed: the output is estimated only when no
/// final usage comes, and in most streams it does come, last. The texts wait here as the
/// pieces they came in and go to the estimator in that order, piece by piece (so its answer
/// is the one it would have given had each been pushed at once), when the estimate is
/// needed, before raw bytes go to it, or when `DEFER_CAP` bytes wait.
#[derive(Default)]
struct Deferred {
    text: String,
    /// Where each piece ends in `text`.
    ends: Vec<u16>,
}

/// The start of an Anthropic content delta event's data, as Anthropic sends it (compact).
const DELTA_HEAD: &[u8] = b"{\"type\":\"content_block_delta\",\"index\":";
/// What follows the index: each delta type with its text field, up to the string's quote.
const DELTA_KINDS: [&[u8]; 3] = [
    b",\"delta\":{\"type\":\"text_delta\",\"text\":\"",
    b",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"",
    b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"",
];

/// The text of a Messages content delta (`text_delta`, `thinking_delta`, `input_json_delta`)
/// in exactly the compact shape Anthropic streams it, string without escapes, read without
/// parsing the document. What it returns is what the full parse would push to the estimate
/// for that document, and such a document carries nothing else the counter reads. Any other
/// shape (spaces, other keys, escapes, invalid UTF-8, another endpoint) is `None`: the
/// document is parsed.
pub(super) fn anthropic_delta_text(endpoint: Endpoint, data: &[u8]) -> Option<&str> {
    if endpoint != Endpoint::Messages {
        return None;
    }
    let rest = data.strip_prefix(DELTA_HEAD)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (digits > 1 && rest.first() == Some(&b'0')) {
        return None;
    }
    let rest = rest.get(digits..)?;
    let text = DELTA_KINDS.iter().find_map(|k| rest.strip_prefix(*k))?;
    let end = text
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if text.get(end..)? != b"\"}}" {
        return None;
    }
    std::str::from_utf8(text.get(..end)?).ok()
}

/// One response document, or why it does not parse. Not inlined: each document type's
/// deserializer stays a function of its own, so `Counter::doc` does not grow huge (V8 compiles
/// every function whole when the filter loads; see lib.rs).
#[inline(never)]
fn parse_doc<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    serde_json::from_slice(bytes)
}

impl Counter {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Counter {
            endpoint,
            raw: Raw::default(),
            final_seen: false,
            insane: false,
            model: None,
            error: None,
            est: Estimator::new(endpoint.api()),
            deferred: Deferred::default(),
            oversized: 0,
        }
    }

    /// One SSE event; `last` when the stream ended without closing it (it may be cut
    /// short). Returns true for OpenAI's usage-only chunk (the one strip mode drops).
    pub(super) fn event(&mut self, e: Event<'_>, last: bool) -> bool {
        if e.truncated {
            self.tail(e.data);
            false
        } else if e.data.is_empty() || e.is_done() {
            false
        } else if let Some(t) = anthropic_delta_text(self.endpoint, e.data) {
            // Almost every event of a Messages stream: its text read without a parse.
            self.push_text(t);
            false
        } else {
            self.doc(e.data, false, last)
        }
    }

    /// One JSON document: a whole body (`whole`), an SSE event's data or an array element;
    /// `may_be_cut` when the stream ended inside it. Returns true for a usage-only Chat chunk.
    pub(super) fn doc(&mut self, bytes: &[u8], whole: bool, may_be_cut: bool) -> bool {
        // One step per API, each a function of its own (parse, count, drop the document):
        // inlined here they made this the largest function of the module.
        let parsed = match self.endpoint {
            Endpoint::Messages => self.parsed(bytes, |c, d: AnthropicDoc| {
                c.anthropic(d);
                false
            }),
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                self.parsed(bytes, Self::openai)
            }
            Endpoint::Responses => self.parsed(bytes, |c, d: ResponsesDoc| {
                c.responses(d);
                false
            }),
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => {
                self.parsed(bytes, |c, d: GeminiDoc| {
                    c.gemini(d, whole);
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

    /// `bytes` parsed as a `T` and counted by `count` (its answer: usage-only). Not inlined:
    /// each document type's step is a function of its own.
    #[inline(never)]
    fn parsed<'a, T: Deserialize<'a>>(
        &mut self,
        bytes: &'a [u8],
        count: impl FnOnce(&mut Self, T) -> bool,
    ) -> serde_json::Result<bool> {
        parse_doc::<T>(bytes).map(|d| count(self, d))
    }

    /// A document that does not parse (cut short, or broken: `1e400` fails serde_json
    /// itself): read like the tail of an over-cap one, its raw bytes feeding the estimate.
    #[cold]
    #[inline(never)]
    fn unparsed(&mut self, bytes: &[u8]) {
        self.model_near_start(bytes);
        self.tail(bytes);
        self.push_raw(bytes);
    }

    /// The model of a document too large (or too broken) to parse: near its start in
    /// OpenAI and Anthropic bodies.
    pub(super) fn model_near_start(&mut self, bytes: &[u8]) {
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
    pub(super) fn tail(&mut self, tail: &[u8]) {
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
        if let Some(s) = t.get() {
            self.push_text(s);
        }
    }

    fn push_text(&mut self, s: &str) {
        // The estimate is only for output that is never reported.
        if self.final_seen || s.is_empty() {
            return;
        }
        let d = &mut self.deferred;
        if d.text.len().saturating_add(s.len()) > DEFER_CAP {
            self.estimate_deferred();
            if s.len() > DEFER_CAP {
                self.est.push_str(s);
                return;
            }
        }
        let d = &mut self.deferred;
        d.text.push_str(s);
        d.ends.push(u16::try_from(d.text.len()).unwrap_or(u16::MAX));
    }

    /// Gives the deferred texts to the estimator, in order, as the pieces they came in.
    fn estimate_deferred(&mut self) {
        let d = &mut self.deferred;
        let mut from = 0;
        for &end in &d.ends {
            let end = usize::from(end);
            self.est.push_str(d.text.get(from..end).unwrap_or_default());
            from = end;
        }
        d.text.clear();
        d.ends.clear();
    }

    /// Raw bytes of an over-cap JSON body, the fallback estimate's only source.
    pub(super) fn push_raw(&mut self, bytes: &[u8]) {
        if self.endpoint == Endpoint::Embeddings || self.final_seen {
            return;
        }
        self.estimate_deferred();
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

    pub(super) fn metering(&mut self) -> Metering {
        if !self.final_seen {
            // Needed: no final usage came (an insane one never counts as final).
            self.estimate_deferred();
        }
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
