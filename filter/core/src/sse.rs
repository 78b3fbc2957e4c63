//! Incremental Server-Sent Events parser: bytes go in chunk by chunk, complete events come
//! out. It never needs the whole stream, never decodes text per chunk (so a UTF-8 character
//! split across chunks is harmless) and keeps at most `cap` bytes of one event.

use crate::simd::{self, V};

/// Default largest event kept whole (data of one event).
pub const DEFAULT_EVENT_CAP: usize = 1 << 20;
/// Largest `event:` name kept; longer names are cut (they never matter for metering).
const NAME_CAP: usize = 256;

/// One complete event, borrowed from the parser until the callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, empty if the event had none.
    pub name: &'a [u8],
    /// The `data:` lines joined by `\n`.
    pub data: &'a [u8],
    /// The data outgrew the cap: `data` holds only its last bytes (a tail that still shows
    /// a trailing `usage` object, but no longer a whole JSON document).
    pub truncated: bool,
}

impl Event<'_> {
    /// OpenAI's end-of-stream sentinel.
    pub fn is_done(&self) -> bool {
        self.data == b"[DONE]"
    }
}

/// What happens to the bytes of the line being read when it outgrew the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineMode {
    /// Bytes collect in `line` until the line ends.
    Normal,
    /// A huge `data:` line: its bytes go straight into the (trimmed) data buffer.
    Data,
    /// A huge line of another field: dropped until it ends.
    Skip,
}

/// The parser state. Memory: `line` and `data` each stay below `cap` (plus one chunk
/// while a line is appended).
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    mode: LineMode,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    truncated: bool,
    /// The previous chunk ended in `\r`: a `\n` first in the next one ends nothing.
    after_cr: bool,
    cap: usize,
    oversized: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_CAP)
    }
}

impl SseParser {
    /// A parser keeping at most `cap` bytes of an event's data (at least 16).
    pub fn new(cap: usize) -> Self {
        SseParser {
            line: Vec::new(),
            mode: LineMode::Normal,
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            truncated: false,
            after_cr: false,
            cap: cap.max(16),
            oversized: 0,
        }
    }

    /// Events whose data outgrew the cap so far.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    /// True when the last byte seen was a `\r` whose line end may still get its `\n`.
    pub fn after_cr(&self) -> bool {
        self.after_cr
    }

    /// Parses `chunk`. `on` is called at every blank line with the offset just past that
    /// line's end in `chunk` (a safe place to cut the raw stream) and the event it completed,
    /// or `None` when the blank line completed no event with data.
    pub fn feed<F>(&mut self, chunk: &[u8], mut on: F)
    where
        F: FnMut(usize, Option<Event<'_>>),
    {
        let mut i = 0;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                i = 1;
            }
        }
        // The data of the event being read while it is one `data:` line of this chunk: left
        // in the chunk (not copied) until the blank line delivers it, or copied into `data`
        // as soon as anything else happens to the event or the chunk ends.
        let mut borrowed: Option<(usize, usize)> = None;
        while let Some(rest) = chunk.get(i..) {
            if rest.is_empty() {
                break;
            }
            let Some(p) = line_end(rest) else {
                self.keep_borrowed(chunk, borrowed.take());
                self.push_partial(rest);
                break;
            };
            let mut next = i.saturating_add(p).saturating_add(1);
            if rest.get(p) == Some(&b'\r') {
                match chunk.get(next) {
                    Some(b'\n') => next = next.saturating_add(1),
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            let segment = rest.get(..p).unwrap_or_default();
            if self.mode == LineMode::Normal && self.line.is_empty() {
                if let (false, Some(value)) = (self.has_data, segment.strip_prefix(b"data:")) {
                    if segment.len() <= self.cap {
                        let skip = usize::from(value.first() == Some(&b' '));
                        let from = i.saturating_add(p).saturating_sub(value.len()) + skip;
                        borrowed = Some((from, i.saturating_add(p)));
                        self.has_data = true;
                        i = next;
                        continue;
                    }
                }
                if let (true, Some((from, to))) = (segment.is_empty(), borrowed) {
                    borrowed = None;
                    let event = Event {
                        name: &self.name,
                        data: chunk.get(from..to).unwrap_or_default(),
                        truncated: false,
                    };
                    on(next, Some(event));
                    self.reset_event();
                    i = next;
                    continue;
                }
            }
            self.keep_borrowed(chunk, borrowed.take());
            self.end_line(segment, next, &mut on);
            i = next;
        }
        self.keep_borrowed(chunk, borrowed);
    }

    /// Copies the data left in the chunk (see `feed`) into the event's data.
    fn keep_borrowed(&mut self, chunk: &[u8], borrowed: Option<(usize, usize)>) {
        if let Some((from, to)) = borrowed {
            self.data
                .extend_from_slice(chunk.get(from..to).unwrap_or_default());
        }
    }

    /// End of stream: an event not closed by a blank line is still delivered (leniently:
    /// a truncated stream's last complete `data:` line may carry the usage).
    pub fn finish<F>(&mut self, mut on: F)
    where
        F: FnMut(Option<Event<'_>>),
    {
        if self.mode != LineMode::Normal || !self.line.is_empty() {
            self.end_line(&[], 0, &mut |_, _| {});
        }
        if self.has_data {
            on(Some(self.event()));
        }
        self.reset_event();
        self.after_cr = false;
    }

    fn event(&self) -> Event<'_> {
        Event {
            name: &self.name,
            data: &self.data,
            truncated: self.truncated,
        }
    }

    fn reset_event(&mut self) {
        self.name.clear();
        self.data.clear();
        self.has_data = false;
        self.truncated = false;
    }

    /// Bytes of a line whose end is not in this chunk.
    fn push_partial(&mut self, bytes: &[u8]) {
        match self.mode {
            LineMode::Skip => {}
            LineMode::Data => self.append_data(bytes),
            LineMode::Normal => {
                self.line.extend_from_slice(bytes);
                if self.line.len() > self.cap {
                    self.overflow_line();
                }
            }
        }
    }

    /// The partial line outgrew the cap: keep streaming it only if it is data.
    fn overflow_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        match split_field(&line) {
            (b"data", value) => {
                self.start_data_line();
                self.append_data(value);
                self.mode = LineMode::Data;
            }
            _ => self.mode = LineMode::Skip,
        }
        self.line = line;
        self.line.clear();
    }

    fn end_line<F>(&mut self, segment: &[u8], end: usize, on: &mut F)
    where
        F: FnMut(usize, Option<Event<'_>>),
    {
        match self.mode {
            LineMode::Skip => self.mode = LineMode::Normal,
            LineMode::Data => {
                self.append_data(segment);
                self.mode = LineMode::Normal;
            }
            // A whole line over the cap is treated as if it had arrived in pieces (streamed
            // if data, else dropped), so the events never depend on where chunks fall.
            LineMode::Normal if self.line.is_empty() && segment.len() > self.cap => {
                if let (b"data", value) = split_field(segment) {
                    self.start_data_line();
                    self.append_data(value);
                }
            }
            LineMode::Normal if self.line.is_empty() => self.process_line(segment, end, on),
            LineMode::Normal => {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(segment);
                if line.len() > self.cap {
                    self.line = line;
                    self.overflow_line();
                    self.mode = LineMode::Normal;
                } else {
                    self.process_line(&line, end, on);
                    line.clear();
                    self.line = line;
                }
            }
        }
    }

    fn process_line<F>(&mut self, line: &[u8], end: usize, on: &mut F)
    where
        F: FnMut(usize, Option<Event<'_>>),
    {
        if line.is_empty() {
            if self.has_data {
                on(end, Some(self.event()));
            } else {
                on(end, None);
            }
            self.reset_event();
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        match split_field(line) {
            (b"data", value) => {
                self.start_data_line();
                self.append_data(value);
            }
            (b"event", value) => {
                self.name.clear();
                self.name
                    .extend_from_slice(value.get(..NAME_CAP).unwrap_or(value));
            }
            // id, retry and unknown fields do not matter for metering.
            _ => {}
        }
    }

    fn start_data_line(&mut self) {
        if self.has_data {
            self.append_data(b"\n");
        }
        self.has_data = true;
    }

    /// Appends to the event's data, keeping only a tail once the cap is passed.
    fn append_data(&mut self, bytes: &[u8]) {
        let keep = self.cap / 16;
        if self.data.len().saturating_add(bytes.len()) <= self.cap {
            self.data.extend_from_slice(bytes);
            return;
        }
        if !self.truncated {
            self.truncated = true;
            self.oversized = self.oversized.saturating_add(1);
        }
        if bytes.len() >= keep {
            self.data.clear();
            let from = bytes.len().saturating_sub(keep);
            self.data
                .extend_from_slice(bytes.get(from..).unwrap_or_default());
        } else {
            let drop = self
                .data
                .len()
                .saturating_sub(keep.saturating_sub(bytes.len()));
            self.data.drain(..drop);
            self.data.extend_from_slice(bytes);
        }
    }
}

/// The first `\n` or `\r` in `bytes`, sixteen bytes at a time.
fn line_end(bytes: &[u8]) -> Option<usize> {
    let (lf, cr) = (V::splat(b'\n'), V::splat(b'\r'));
    let mut i = 0;
    while let Some(c) = simd::chunk(bytes, i) {
        let x = V::load(c);
        let hits = x.eq(lf).or(x.eq(cr)).bitmask();
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize);
        }
        i += 16;
    }
    let tail = bytes.get(i..)?;
    tail.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|p| i + p)
}

/// Splits `field: value` (one leading space of the value removed); a line without a colon
/// is a field with an empty value.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(c) => {
            let field = line.get(..c).unwrap_or_default();
            let value = line.get(c.saturating_add(1)..).unwrap_or_default();
            (field, value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

#[cfg(test)]
pub(crate) mod tests;
