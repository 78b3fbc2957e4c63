//! Strip mode: forward whole SSE events only and drop OpenAI's usage-only chunk, holding
//! back at most one partial event.

use super::*;

#[derive(Default)]
pub(super) struct Strip {
    /// Raw bytes of the unfinished event at the end of the previous chunk.
    pub(super) held: Vec<u8>,
    /// The current event outgrew `HOLD_CAP` and is being let through as it comes.
    passing: bool,
    /// A dropped event ended in `\r` at a chunk's end: its `\n` may start the next chunk.
    skip_lf: bool,
    /// Cut points of the current chunk and whether the event before each is dropped.
    cuts: Vec<(usize, bool)>,
}

impl Strip {
    pub(super) fn feed(
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
