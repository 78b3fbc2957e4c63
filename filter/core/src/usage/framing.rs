//! Framing of a response body for counting: SSE events, a streamed JSON array (Gemini
//! without `alt=sse`), or one JSON document kept whole up to a cap, then its tail.

use super::*;
use crate::api::Api;
use crate::json::Elements;
use crate::sse::SseParser;

pub(super) enum Parser {
    Sse(SseParser),
    Array(Box<Elements>),
    Json(JsonBuffer),
}

impl Parser {
    pub(super) fn feed(
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

    pub(super) fn finish(&mut self, counter: &mut Counter) {
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

    pub(super) fn after_cr(&self) -> bool {
        matches!(self, Parser::Sse(p) if p.after_cr())
    }

    pub(super) fn oversized(&self) -> u64 {
        match self {
            Parser::Sse(p) => p.oversized(),
            Parser::Array(a) => a.oversized(),
            Parser::Json(j) => u64::from(j.truncated),
        }
    }
}

/// A JSON body: kept whole up to `JSON_CAP`, then only its tail.
#[derive(Default)]
pub(super) struct JsonBuffer {
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
