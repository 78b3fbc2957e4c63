//! A strict, resumable JSON pull scanner. Bytes arrive in windows split at any byte; events go
//! to a [`Sink`] together with the [`Path`] that leads to them. No tree is built, nothing
//! recurses, and memory stays bounded: a 32 MiB string costs what its longest key costs.

use core::fmt;

use crate::simd::{self, V};

/// Nesting beyond this is an error (the scanner keeps one bit per level).
pub const MAX_DEPTH: usize = 512;
/// Levels of [`Path`] that are tracked; deeper values are still validated and reported, but
/// their path only holds its first `PATH_DEPTH` steps ([`Path::is_too_deep`]).
pub const PATH_DEPTH: usize = 64;
/// Keys up to this many bytes are kept in the path; longer ones become [`Step::LongKey`].
pub const KEY_CAP: usize = 64;

/// Why the input is not JSON, and where (absolute byte offset over all windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for JsonError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Object,
    Array,
}

/// A number, classified without keeping its text. Only non-negative integers that fit `u64`
/// carry their value: that is all a request's fields need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number {
    negative: bool,
    integer: bool,
    value: Option<u64>,
}

impl Number {
    /// The value of a non-negative integer literal (no fraction, no exponent) that fits.
    pub fn as_u64(&self) -> Option<u64> {
        if self.negative || !self.integer {
            None
        } else {
            self.value
        }
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// No fraction and no exponent in the literal.
    pub fn is_integer(&self) -> bool {
        self.integer
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Number(Number),
}

/// One step of a path: an object key or an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a [u8]),
    /// A key longer than [`KEY_CAP`] bytes.
    LongKey,
    Index(usize),
}

#[derive(Clone, Copy)]
struct Frame {
    key: [u8; KEY_CAP],
    key_len: u8,
    long: bool,
    array: bool,
    index: usize,
}

/// The steps from the root to the current value. Inside an object, the last step is the key
/// of the current member; while that key is being read it holds the bytes read so far.
pub struct Path {
    frames: Vec<Frame>,
    depth: usize,
}

impl Path {
    fn new() -> Self {
        Path {
            frames: Vec::with_capacity(8),
            depth: 0,
        }
    }

    /// Tracked steps (at most [`PATH_DEPTH`]).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Open containers around the current position (can exceed [`Path::len`]).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The path lost its steps beyond [`PATH_DEPTH`]; its first steps are still right.
    pub fn is_too_deep(&self) -> bool {
        self.depth > self.frames.len()
    }

    pub fn step(&self, i: usize) -> Option<Step<'_>> {
        let f = self.frames.get(i)?;
        Some(if f.array {
            Step::Index(f.index)
        } else if f.long {
            Step::LongKey
        } else {
            Step::Key(f.key.get(..usize::from(f.key_len)).unwrap_or_default())
        })
    }

    /// Step `i` if it is a (short) key.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        match self.step(i)? {
            Step::Key(k) => Some(k),
            _ => None,
        }
    }

    /// Step `i` if it is an array index.
    pub fn index(&self, i: usize) -> Option<usize> {
        match self.step(i)? {
            Step::Index(n) => Some(n),
            _ => None,
        }
    }

    /// Step `i` is the key `name`.
    pub fn is_key(&self, i: usize, name: &[u8]) -> bool {
        self.key(i) == Some(name)
    }

    fn top_tracked(&mut self) -> Option<&mut Frame> {
        if self.frames.len() == self.depth {
            self.frames.last_mut()
        } else {
            None
        }
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for i in 0..self.len() {
            match self.step(i) {
                Some(Step::Key(k)) => write!(f, ".{}", String::from_utf8_lossy(k))?,
                Some(Step::LongKey) => f.write_str(".<long>")?,
                Some(Step::Index(n)) => write!(f, "[{n}]")?,
                None => {}
            }
        }
        if self.is_too_deep() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Receives the scanner's events. Every method has an empty default.
///
/// Strings (keys and values) arrive as `str_begin`, any number of `str_piece`s of decoded
/// text, then `str_end` with the decoded length. For a key, `path` at `str_begin` ends in
/// the (still empty) key and at `str_end` in the whole key; for a value, `path` leads to it.
pub trait Sink {
    /// `{` or `[` at `offset`; `path` leads to the container.
    fn begin(&mut self, _path: &Path, _kind: Container, _offset: usize) {}
    /// `}` or `]` at `offset`; `path` leads to the container.
    fn end(&mut self, _path: &Path, _kind: Container, _offset: usize) {}
    fn str_begin(&mut self, _path: &Path, _key: bool) {}
    fn str_piece(&mut self, _piece: &str) {}
    /// How many bytes of the current value's text the sink would only count from here on,
    /// without reading them (0: it reads everything). The scanner then may pass fewer than
    /// that many as `str_skip` instead of pieces.
    fn skippable(&self) -> usize {
        0
    }
    /// `n` bytes of decoded string text (fewer than `skippable` said), not handed over.
    fn str_skip(&mut self, _n: usize) {}
    fn str_end(&mut self, _path: &Path, _key: bool, _len: usize) {}
    /// A number, `true`, `false` or `null` whose first byte is at `offset`.
    fn scalar(&mut self, _path: &Path, _value: Scalar, _offset: usize) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value must come: at the root, after `:`, after `,` in an array.
    Value,
    /// After `[`.
    ValueOrClose,
    /// After `{`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    CommaOrClose,
    /// The root value is complete; only whitespace may follow.
    Done,
    Str,
    Num,
    Lit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    /// Inside `\uXXXX`: `n` digits read; `high` is the pending high surrogate, if any.
    Hex {
        n: u8,
        acc: u32,
        high: Option<u32>,
    },
    /// After a high surrogate: `\` of the low one must come.
    LowBackslash(u32),
    /// Then `u`.
    LowU(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    /// After `-`.
    Sign,
    /// After a leading `0`.
    Zero,
    Int,
    /// After `.`.
    Dot,
    Frac,
    /// After `e`/`E`.
    Exp,
    ExpSign,
    ExpDigits,
}

const ERR_END: &str = "unexpected end of input";
const ERR_UTF8: &str = "invalid UTF-8 in string";

/// The scanner. Feed windows in order, then call [`Scanner::finish`].
pub struct Scanner {
    state: State,
    /// Absolute offset of the current window's first byte.
    base: usize,
    path: Path,
    /// One bit per open container: set for arrays.
    kinds: [u64; MAX_DEPTH / 64],
    error: Option<JsonError>,
    key: bool,
    str_len: usize,
    esc: Esc,
    /// A UTF-8 sequence split across windows.
    utf8: [u8; 4],
    utf8_len: u8,
    utf8_need: u8,
    num: Num,
    num_neg: bool,
    num_int: bool,
    num_val: Option<u64>,
    num_start: usize,
    lit: &'static [u8],
    lit_pos: usize,
    lit_start: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            state: State::Value,
            base: 0,
            path: Path::new(),
            kinds: [0; MAX_DEPTH / 64],
            error: None,
            key: false,
            str_len: 0,
            esc: Esc::None,
            utf8: [0; 4],
            utf8_len: 0,
            utf8_need: 0,
            num: Num::Int,
            num_neg: false,
            num_int: true,
            num_val: Some(0),
            num_start: 0,
            lit: b"",
            lit_pos: 0,
            lit_start: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> usize {
        self.base
    }

    /// Scans the next window. After an error, every call returns that error.
    pub fn feed<S: Sink>(&mut self, window: &[u8], sink: &mut S) -> Result<(), JsonError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let r = self.run(window, sink);
        self.base = self.base.saturating_add(window.len());
        if let Err(e) = r {
            self.error = Some(e);
        }
        r
    }

    /// The input is complete: it must have been exactly one JSON value.
    pub fn finish<S: Sink>(&mut self, sink: &mut S) -> Result<(), JsonError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.state == State::Num
            && matches!(self.num, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
        {
            self.end_number(sink);
        }
        if self.state == State::Done {
            Ok(())
        } else {
            let e = JsonError {
                offset: self.base,
                reason: ERR_END,
            };
            self.error = Some(e);
            Err(e)
        }
    }

    fn run<S: Sink>(&mut self, w: &[u8], sink: &mut S) -> Result<(), JsonError> {
        let mut i = 0;
        while let Some(&b) = w.get(i) {
            match self.state {
                State::Str => i = self.string(w, i, sink)?,
                State::Num => i = self.number(w, i, sink)?,
                State::Lit => {
                    if self.lit.get(self.lit_pos) != Some(&b) {
                        return Err(self.err(i, "invalid literal"));
                    }
                    self.lit_pos += 1;
                    i += 1;
                    if self.lit_pos == self.lit.len() {
                        let v = match self.lit.first() {
                            Some(b't') => Scalar::Bool(true),
                            Some(b'f') => Scalar::Bool(false),
                            _ => Scalar::Null,
                        };
                        sink.scalar(&self.path, v, self.lit_start);
                        self.after_value();
                    }
                }
                state => {
                    i += 1;
                    if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                        continue;
                    }
                    let at = self.base + i - 1;
                    match state {
                        State::Value => self.value(b, at, sink)?,
                        State::ValueOrClose if b == b']' => self.close(Container::Array, at, sink),
                        State::ValueOrClose => self.value(b, at, sink)?,
                        State::KeyOrClose if b == b'}' => self.close(Container::Object, at, sink),
                        State::KeyOrClose | State::Key if b == b'"' => self.begin_key(sink),
                        State::KeyOrClose | State::Key => {
                            return Err(JsonError {
                                offset: at,
                                reason: "expected a string key",
                            })
                        }
                        State::Colon if b == b':' => self.state = State::Value,
                        State::Colon => {
                            return Err(JsonError {
                                offset: at,
                                reason: "expected ':'",
                            })
                        }
                        State::CommaOrClose => self.comma_or_close(b, at, sink)?,
                        _ => {
                            return Err(JsonError {
                                offset: at,
                                reason: "unexpected data after the JSON value",
                            })
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn err(&self, i: usize, reason: &'static str) -> JsonError {
        JsonError {
            offset: self.base.saturating_add(i),
            reason,
        }
    }

    fn top_is_array(&self) -> bool {
        let d = self.path.depth.wrapping_sub(1);
        self.kinds
            .get(d / 64)
            .is_some_and(|w| w >> (d % 64) & 1 == 1)
    }

    fn after_value(&mut self) {
        self.state = if self.path.depth == 0 {
            State::Done
        } else {
            State::CommaOrClose
        };
    }

    fn value<S: Sink>(&mut self, b: u8, at: usize, sink: &mut S) -> Result<(), JsonError> {
        match b {
            b'{' => self.open(Container::Object, at, sink)?,
            b'[' => self.open(Container::Array, at, sink)?,
            b'"' => {
                self.key = false;
                self.str_len = 0;
                sink.str_begin(&self.path, false);
                self.state = State::Str;
            }
            b'-' | b'0'..=b'9' => {
                self.num_start = at;
                self.num_neg = b == b'-';
                self.num_int = true;
                self.num_val = Some(u64::from(b.wrapping_sub(b'0')));
                self.num = match b {
                    b'-' => {
                        self.num_val = Some(0);
                        Num::Sign
                    }
                    b'0' => Num::Zero,
                    _ => Num::Int,
                };
                self.state = State::Num;
            }
            b't' | b'f' | b'n' => {
                self.lit = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.lit_pos = 1;
                self.lit_start = at;
                self.state = State::Lit;
            }
            _ => {
                return Err(JsonError {
                    offset: at,
                    reason: "expected a JSON value",
                })
            }
        }
        Ok(())
    }

    fn open<S: Sink>(&mut self, kind: Container, at: usize, sink: &mut S) -> Result<(), JsonError> {
        let d = self.path.depth;
        if d >= MAX_DEPTH {
            return Err(JsonError {
                offset: at,
                reason: "nesting too deep",
            });
        }
        sink.begin(&self.path, kind, at);
        let array = kind == Container::Array;
        if let Some(w) = self.kinds.get_mut(d / 64) {
            let bit = 1u64 << (d % 64);
            if array {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
        if self.path.frames.len() == d && d < PATH_DEPTH {
            self.path.frames.push(Frame {
                key: [0; KEY_CAP],
                key_len: 0,
                long: false,
                array,
                index: 0,
            });
        }
        self.path.depth = d + 1;
        self.state = if array {
            State::ValueOrClose
        } else {
            State::KeyOrClose
        };
        Ok(())
    }

    fn close<S: Sink>(&mut self, kind: Container, at: usize, sink: &mut S) {
        if self.path.frames.len() == self.path.depth {
            self.path.frames.pop();
        }
        self.path.depth = self.path.depth.saturating_sub(1);
        sink.end(&self.path, kind, at);
        self.after_value();
    }

    fn comma_or_close<S: Sink>(&mut self, b: u8, at: usize, sink: &mut S) -> Result<(), JsonError> {
        let array = self.top_is_array();
        match (b, array) {
            (b',', true) => {
                if let Some(f) = self.path.top_tracked() {
                    f.index = f.index.saturating_add(1);
                }
                self.state = State::Value;
            }
            (b',', false) => self.state = State::Key,
            (b']', true) => self.close(Container::Array, at, sink),
            (b'}', false) => self.close(Container::Object, at, sink),
            (_, true) => {
                return Err(JsonError {
                    offset: at,
                    reason: "expected ',' or ']'",
                })
            }
            (_, false) => {
                return Err(JsonError {
                    offset: at,
                    reason: "expected ',' or '}'",
                })
            }
        }
        Ok(())
    }

    fn begin_key<S: Sink>(&mut self, sink: &mut S) {
        if let Some(f) = self.path.top_tracked() {
            f.key_len = 0;
            f.long = false;
        }
        self.key = true;
        self.str_len = 0;
        sink.str_begin(&self.path, true);
        self.state = State::Str;
    }

    fn number<S: Sink>(
        &mut self,
        w: &[u8],
        mut i: usize,
        sink: &mut S,
    ) -> Result<usize, JsonError> {
        while let Some(&b) = w.get(i) {
            self.num = match (self.num, b) {
                (Num::Sign, b'0') => Num::Zero,
                (Num::Sign | Num::Int, b'0'..=b'9') => {
                    let d = u64::from(b - b'0');
                    self.num_val = self
                        .num_val
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(d));
                    Num::Int
                }
                (Num::Zero, b'0'..=b'9') => return Err(self.err(i, "leading zero in number")),
                (Num::Zero | Num::Int, b'.') => {
                    self.num_int = false;
                    Num::Dot
                }
                (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
                (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => {
                    self.num_int = false;
                    Num::Exp
                }
                (Num::Exp, b'+' | b'-') => Num::ExpSign,
                (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
                (Num::Zero | Num::Int | Num::Frac | Num::ExpDigits, _) => {
                    // The delimiter belongs to the enclosing state.
                    self.end_number(sink);
                    return Ok(i);
                }
                _ => return Err(self.err(i, "invalid number")),
            };
            i += 1;
        }
        Ok(i)
    }

    fn end_number<S: Sink>(&mut self, sink: &mut S) {
        let n = Number {
            negative: self.num_neg,
            integer: self.num_int,
            value: self.num_val,
        };
        sink.scalar(&self.path, Scalar::Number(n), self.num_start);
        self.after_value();
    }

    fn string<S: Sink>(
        &mut self,
        w: &[u8],
        mut i: usize,
        sink: &mut S,
    ) -> Result<usize, JsonError> {
        loop {
            if self.esc != Esc::None {
                let Some(&b) = w.get(i) else { return Ok(i) };
                self.escape(b, i, sink)?;
                i += 1;
                continue;
            }
            if !self.key && self.utf8_len == 0 {
                let budget = sink.skippable();
                if budget > 0 {
                    let (next, n) = skip_plain(w, i, budget);
                    if n > 0 {
                        sink.str_skip(n);
                        self.str_len = self.str_len.saturating_add(n);
                        i = next;
                    }
                }
            }
            let (j, nonascii) = find_special(w, i);
            if j > i {
                let run = w.get(i..j).unwrap_or_default();
                if !nonascii && self.utf8_len == 0 {
                    // SAFETY: every byte of `run` is below 0x80 (`find_special` saw no high
                    // bit), and ASCII is UTF-8.
                    self.emit(unsafe { core::str::from_utf8_unchecked(run) }, sink);
                } else {
                    self.text(run, j >= w.len(), i, sink)?;
                }
            }
            i = j;
            let Some(&b) = w.get(i) else { return Ok(i) };
            if self.utf8_len > 0 {
                return Err(self.err(i, ERR_UTF8));
            }
            match b {
                b'"' => {
                    let len = self.str_len;
                    if self.key {
                        sink.str_end(&self.path, true, len);
                        self.state = State::Colon;
                    } else {
                        sink.str_end(&self.path, false, len);
                        self.after_value();
                    }
                    return Ok(i + 1);
                }
                b'\\' => {
                    self.esc = Esc::Backslash;
                    i += 1;
                }
                _ => return Err(self.err(i, "control character in string")),
            }
        }
    }

    /// A run of plain string bytes starting at window index `i`. A UTF-8 sequence cut by the
    /// window's end waits in `utf8` for the next window.
    fn text<S: Sink>(
        &mut self,
        run: &[u8],
        at_end: bool,
        i: usize,
        sink: &mut S,
    ) -> Result<(), JsonError> {
        let mut run = run;
        if self.utf8_len > 0 {
            let need = usize::from(self.utf8_need);
            let mut len = usize::from(self.utf8_len);
            while len < need {
                let Some((&b, rest)) = run.split_first() else {
                    break;
                };
                if let Some(slot) = self.utf8.get_mut(len) {
                    *slot = b;
                }
                len += 1;
                run = rest;
            }
            self.utf8_len = len as u8;
            if len < need {
                // The caller sees the pending bytes if the string ends here.
                return Ok(());
            }
            self.utf8_len = 0;
            let buf = self.utf8;
            match core::str::from_utf8(buf.get(..need).unwrap_or_default()) {
                Ok(s) => self.emit(s, sink),
                Err(_) => return Err(self.err(i, ERR_UTF8)),
            }
        }
        let tail = if at_end { incomplete_tail(run) } else { 0 };
        let Some((head, tail)) = run.split_at_checked(run.len() - tail) else {
            return Ok(());
        };
        match core::str::from_utf8(head) {
            Ok(s) => {
                if !s.is_empty() {
                    self.emit(s, sink);
                }
            }
            Err(e) => return Err(self.err(i + e.valid_up_to(), ERR_UTF8)),
        }
        if let Some(&lead) = tail.first() {
            for (slot, &b) in self.utf8.iter_mut().zip(tail) {
                *slot = b;
            }
            self.utf8_len = tail.len() as u8;
            self.utf8_need = utf8_len_of(lead);
        }
        Ok(())
    }

    fn escape<S: Sink>(&mut self, b: u8, i: usize, sink: &mut S) -> Result<(), JsonError> {
        match self.esc {
            Esc::None => {}
            Esc::Backslash => {
                let c = match b {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        self.esc = Esc::Hex {
                            n: 0,
                            acc: 0,
                            high: None,
                        };
                        return Ok(());
                    }
                    _ => return Err(self.err(i, "invalid escape in string")),
                };
                self.esc = Esc::None;
                self.emit_char(c, sink);
            }
            Esc::Hex { n, acc, high } => {
                let d = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => return Err(self.err(i, "invalid \\u escape")),
                };
                let acc = acc << 4 | u32::from(d);
                if n < 3 {
                    self.esc = Esc::Hex {
                        n: n + 1,
                        acc,
                        high,
                    };
                    return Ok(());
                }
                let c = match high {
                    None if (0xD800..=0xDBFF).contains(&acc) => {
                        self.esc = Esc::LowBackslash(acc);
                        return Ok(());
                    }
                    None if (0xDC00..=0xDFFF).contains(&acc) => {
                        return Err(self.err(i, "unpaired surrogate in \\u escape"))
                    }
                    None => acc,
                    Some(h) if (0xDC00..=0xDFFF).contains(&acc) => {
                        0x10000 + ((h - 0xD800) << 10) + (acc - 0xDC00)
                    }
                    Some(_) => return Err(self.err(i, "unpaired surrogate in \\u escape")),
                };
                let Some(c) = char::from_u32(c) else {
                    return Err(self.err(i, "unpaired surrogate in \\u escape"));
                };
                self.esc = Esc::None;
                self.emit_char(c, sink);
            }
            Esc::LowBackslash(h) => {
                if b != b'\\' {
                    return Err(self.err(i, "unpaired surrogate in \\u escape"));
                }
                self.esc = Esc::LowU(h);
            }
            Esc::LowU(h) => {
                if b != b'u' {
                    return Err(self.err(i, "unpaired surrogate in \\u escape"));
                }
                self.esc = Esc::Hex {
                    n: 0,
                    acc: 0,
                    high: Some(h),
                };
            }
        }
        Ok(())
    }

    fn emit_char<S: Sink>(&mut self, c: char, sink: &mut S) {
        let mut buf = [0u8; 4];
        let s: &str = c.encode_utf8(&mut buf);
        self.emit(s, sink);
    }

    fn emit<S: Sink>(&mut self, s: &str, sink: &mut S) {
        sink.str_piece(s);
        self.str_len = self.str_len.saturating_add(s.len());
        if self.key {
            if let Some(f) = self.path.top_tracked() {
                let len = usize::from(f.key_len);
                match f.key.get_mut(len..len + s.len()) {
                    Some(dst) if !f.long => {
                        dst.copy_from_slice(s.as_bytes());
                        f.key_len = (len + s.len()) as u8;
                    }
                    _ => f.long = true,
                }
            }
        }
    }
}

/// Bytes at the end of `run` that start a UTF-8 sequence the run does not complete.
fn incomplete_tail(run: &[u8]) -> usize {
    for k in 1..=3.min(run.len()) {
        let Some(&c) = run.get(run.len() - k) else {
            return 0;
        };
        if c & 0xC0 == 0x80 {
            continue;
        }
        return if usize::from(utf8_len_of(c)) > k {
            k
        } else {
            0
        };
    }
    0
}

fn utf8_len_of(lead: u8) -> u8 {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Plain string text from `i` that a sink only counts: ASCII runs and one-char escapes (`\n`,
/// `\"`, ...), fewer than `budget` bytes of decoded text. Stops before anything else (the
/// closing quote, `\u`, a control byte, a byte with the high bit set, an escape cut by the
/// window's end), which the checked path then reads. Returns the index reached and the
/// decoded bytes skipped. A long text's many escapes (`\n` every line) then cost no piece
/// each.
fn skip_plain(w: &[u8], mut i: usize, budget: usize) -> (usize, usize) {
    let mut n = 0usize;
    loop {
        let (j, nonascii) = find_special(w, i);
        if nonascii {
            return (i, n);
        }
        // ASCII: any split is on a char boundary.
        let room = budget.saturating_sub(n + 1);
        if j - i > room {
            return (i + room, n + room);
        }
        n += j - i;
        i = j;
        match w.get(j + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't')
                if w.get(j) == Some(&b'\\') && n + 1 < budget =>
            {
                i += 2;
                n += 1;
            }
            _ => return (i, n),
        }
    }
}

/// Index of the first `"`, `\` or control byte at or after `i` (or `w.len()`): sixteen bytes
/// at a time, then eight (the lowest flagged byte of each zero-byte test is always a true
/// match), then one. Also whether a byte with the high bit set was seen on the way (possibly
/// one of the few read past the index): when not, the bytes before the index are ASCII.
fn find_special(w: &[u8], mut i: usize) -> (usize, bool) {
    let (quote, backslash, space) = (V::splat(b'"'), V::splat(b'\\'), V::splat(0x20));
    let mut high = V::splat(0);
    while let Some(c) = simd::chunk(w, i) {
        let v = V::load(c);
        high = high.or(v);
        let special = v.eq(quote).or(v.eq(backslash)).or(v.lt(space)).bitmask();
        if special != 0 {
            return (i + special.trailing_zeros() as usize, high.bitmask() != 0);
        }
        i += 16;
    }
    let mut nonascii = high.bitmask() != 0;
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = w.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(bytes);
        nonascii |= x & HI != 0;
        let q = x ^ (LO * u64::from(b'"'));
        let s = x ^ (LO * u64::from(b'\\'));
        let t = (q.wrapping_sub(LO) & !q)
            | (s.wrapping_sub(LO) & !s)
            | (x.wrapping_sub(LO * 0x20) & !x);
        let t = t & HI;
        if t != 0 {
            return (i + (t.trailing_zeros() / 8) as usize, nonascii);
        }
        i += 8;
    }
    while let Some(&b) = w.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        nonascii |= b >= 0x80;
        i += 1;
    }
    (i, nonascii)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Records events as text; string pieces are joined so that traces do not depend on
    /// where windows split.
    #[derive(Default)]
    struct Trace {
        events: Vec<String>,
        text: String,
        pieces: usize,
    }

    impl Sink for Trace {
        fn begin(&mut self, path: &Path, kind: Container, offset: usize) {
            self.events
                .push(format!("begin {path:?} {kind:?} @{offset}"));
        }
        fn end(&mut self, path: &Path, kind: Container, offset: usize) {
            self.events.push(format!("end {path:?} {kind:?} @{offset}"));
        }
        fn str_begin(&mut self, path: &Path, key: bool) {
            self.events.push(format!("str {path:?} key={key}"));
            self.text.clear();
        }
        fn str_piece(&mut self, piece: &str) {
            self.text.push_str(piece);
            self.pieces += 1;
        }
        fn str_end(&mut self, path: &Path, key: bool, len: usize) {
            assert_eq!(len, self.text.len());
            self.events
                .push(format!("str_end {path:?} key={key} {:?}", self.text));
        }
        fn scalar(&mut self, path: &Path, value: Scalar, offset: usize) {
            self.events
                .push(format!("scalar {path:?} {value:?} @{offset}"));
        }
    }

    /// Rebuilds a serde_json tree from the events (numbers other than u64 become a marker).
    #[derive(Default)]
    struct Tree {
        stack: Vec<(Value, Option<String>)>,
        key: Option<String>,
        text: String,
        root: Option<Value>,
    }

    impl Tree {
        fn put(&mut self, v: Value) {
            match self.stack.last_mut() {
                Some((Value::Array(a), _)) => a.push(v),
                Some((Value::Object(o), _)) => {
                    o.insert(self.key.take().unwrap_or_default(), v);
                }
                _ => self.root = Some(v),
            }
        }
    }

    impl Sink for Tree {
        fn begin(&mut self, _: &Path, kind: Container, _: usize) {
            let v = match kind {
                Container::Object => Value::Object(Map::new()),
                Container::Array => Value::Array(vec![]),
            };
            let key = self.key.take();
            self.stack.push((v, key));
        }
        fn end(&mut self, _: &Path, _: Container, _: usize) {
            let (v, key) = self.stack.pop().unwrap();
            self.key = key;
            self.put(v);
        }
        fn str_begin(&mut self, _: &Path, _: bool) {
            self.text.clear();
        }
        fn str_piece(&mut self, piece: &str) {
            self.text.push_str(piece);
        }
        fn str_end(&mut self, _: &Path, key: bool, _: usize) {
            let s = std::mem::take(&mut self.text);
            if key {
                self.key = Some(s);
            } else {
                self.put(Value::String(s));
            }
        }
        fn scalar(&mut self, _: &Path, value: Scalar, _: usize) {
            self.put(match value {
                Scalar::Null => Value::Null,
                Scalar::Bool(b) => Value::Bool(b),
                Scalar::Number(n) => n
                    .as_u64()
                    .map_or(Value::String("<num>".into()), Value::from),
            });
        }
    }

    fn normalise(v: Value) -> Value {
        match v {
            Value::Number(n) => n
                .as_u64()
                .map_or(Value::String("<num>".into()), Value::from),
            Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, v)| (k, normalise(v))).collect())
            }
            v => v,
        }
    }

    fn scan_in<S: Sink + Default>(windows: &[&[u8]]) -> (Result<(), JsonError>, S) {
        let mut s = Scanner::new();
        let mut sink = S::default();
        for w in windows {
            if let Err(e) = s.feed(w, &mut sink) {
                return (Err(e), sink);
            }
        }
        let r = s.finish(&mut sink);
        (r, sink)
    }

    fn trace(input: &[u8]) -> (Result<(), JsonError>, Vec<String>) {
        let (r, t) = scan_in::<Trace>(&[input]);
        (r, t.events)
    }

    const VALID: &[&str] = &[
        r#"{}"#,
        r#"[]"#,
        r#"0"#,
        r#"-0.5e+10"#,
        r#"  "x"  "#,
        r#"true"#,
        r#"null"#,
        r#"{"a":1,"b":[true,false,null,{"c":"d"}],"e":{"f":[[],[1.5,-2]]}}"#,
        r#"{"model":"claude","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"héllo 中文 😀"}]}"#,
        r#"["\"\\\/\b\f\n\r\t","\u00e9\u4e2d\ud83d\ude00","a\u0000b"]"#,
        r#"{"k\u0065y":"v","":""}"#,
        "[1,\n 2 ,\t3\r]",
        r#"[18446744073709551615,18446744073709551616,1E5,0.0,-1]"#,
    ];

    #[test]
    fn valid_documents_match_serde_json() {
        for doc in VALID {
            let (r, tree) = scan_in::<Tree>(&[doc.as_bytes()]);
            assert_eq!(r, Ok(()), "{doc}");
            let want: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(tree.root, Some(normalise(want)), "{doc}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for doc in VALID.iter().chain(INVALID.iter().map(|(d, _)| d)) {
            let b = doc.as_bytes();
            let (want_r, want) = trace(b);
            for cut in 0..=b.len() {
                let (l, r) = b.split_at(cut);
                let (got_r, got) = scan_in::<Trace>(&[l, r]);
                assert_eq!(got_r, want_r, "{doc} cut at {cut}");
                assert_eq!(got.events, want, "{doc} cut at {cut}");
            }
            // One byte per window.
            let singles: Vec<&[u8]> = b.chunks(1).collect();
            let (got_r, got) = scan_in::<Trace>(&singles);
            assert_eq!(got_r, want_r, "{doc} byte by byte");
            assert_eq!(got.events, want, "{doc} byte by byte");
        }
    }

    const INVALID: &[(&str, &str)] = &[
        ("", "unexpected end of input at byte 0"),
        ("   ", "unexpected end of input at byte 3"),
        (r#"{"a":1"#, "unexpected end of input at byte 6"),
        (r#"{"a":"#, "unexpected end of input"),
        (r#"{"a":"x"#, "unexpected end of input"),
        (r#"[1,]"#, "expected a JSON value at byte 3"),
        (r#"{"a":1,}"#, "expected a string key at byte 7"),
        (r#"{"a" 1}"#, "expected ':' at byte 5"),
        (r#"{"a":1 "b":2}"#, "expected ',' or '}' at byte 7"),
        (r#"[1 2]"#, "expected ',' or ']' at byte 3"),
        (r#"{"a":1]"#, "expected ',' or '}' at byte 6"),
        (r#"[1}"#, "expected ',' or ']' at byte 2"),
        (r#"{} x"#, "unexpected data after the JSON value at byte 3"),
        (r#"{}{}"#, "unexpected data after the JSON value at byte 2"),
        (r#"1 2"#, "unexpected data after the JSON value at byte 2"),
        (r#"["\x"]"#, "invalid escape in string at byte 3"),
        (r#"["\u12g4"]"#, "invalid \\u escape at byte 6"),
        (
            r#"["\ud800"]"#,
            "unpaired surrogate in \\u escape at byte 8",
        ),
        (
            r#"["\udc00"]"#,
            "unpaired surrogate in \\u escape at byte 7",
        ),
        (
            r#"["\ud800\u0041"]"#,
            "unpaired surrogate in \\u escape at byte 13",
        ),
        (
            r#"["\ud800x"]"#,
            "unpaired surrogate in \\u escape at byte 8",
        ),
        ("[\"a\tb\"]", "control character in string at byte 3"),
        ("[\"a\nb\"]", "control character in string at byte 3"),
        (r#"[01]"#, "leading zero in number at byte 2"),
        (r#"[-01]"#, "leading zero in number at byte 3"),
        (r#"[-]"#, "invalid number at byte 2"),
        (r#"[1.]"#, "invalid number at byte 3"),
        (r#"[1.e5]"#, "invalid number at byte 3"),
        (r#"[1e]"#, "invalid number at byte 3"),
        (r#"[.5]"#, "expected a JSON value at byte 1"),
        (r#"[+1]"#, "expected a JSON value at byte 1"),
        (r#"[1x]"#, "expected ',' or ']' at byte 2"),
        (r#"[tru]"#, "invalid literal at byte 4"),
        (r#"[nul"#, "unexpected end of input"),
        (r#"[True]"#, "expected a JSON value at byte 1"),
        (r#"-"#, "unexpected end of input"),
        (r#"1."#, "unexpected end of input"),
        (r#"{'a':1}"#, "expected a string key at byte 1"),
        ("\u{feff}{}", "expected a JSON value at byte 0"),
    ];

    #[test]
    fn invalid_documents_are_rejected_with_offset_and_reason() {
        for (doc, want) in INVALID {
            let (r, _) = trace(doc.as_bytes());
            let e = r.expect_err(doc);
            assert!(
                e.to_string().starts_with(want),
                "{doc}: got {e}, want {want}"
            );
            assert!(
                serde_json::from_str::<Value>(doc).is_err(),
                "serde accepts {doc}"
            );
        }
    }

    #[test]
    fn invalid_utf8_in_strings_is_rejected_at_any_split() {
        let cases: &[&[u8]] = &[
            b"[\"\xff\"]",
            b"[\"\xc3\"]",
            b"[\"\xc3\x28\"]",
            b"[\"\xe2\x82\"]",
            b"[\"\xe2\x82\\n\"]",
            b"[\"\xed\xa0\x80\"]",     // encoded surrogate
            b"[\"\xc0\xaf\"]",         // overlong
            b"[\"\xf4\x90\x80\x80\"]", // above U+10FFFF
            b"[\"ok\xf0\x9f\x98\"]",
        ];
        for doc in cases {
            for cut in 0..=doc.len() {
                let (l, r) = doc.split_at(cut);
                let (res, _) = scan_in::<Trace>(&[l, r]);
                let e = res.expect_err("invalid UTF-8 accepted");
                assert_eq!(e.reason, ERR_UTF8, "{doc:?} cut {cut}");
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let doc = "[".repeat(100_000);
        let (r, _) = trace(doc.as_bytes());
        assert_eq!(
            r,
            Err(JsonError {
                offset: MAX_DEPTH,
                reason: "nesting too deep"
            })
        );

        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let (r, _) = trace(ok.as_bytes());
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn paths_beyond_the_tracked_depth_keep_their_first_steps() {
        #[derive(Default)]
        struct Deep(Vec<(usize, usize, bool, Option<Vec<u8>>)>);
        impl Sink for Deep {
            fn scalar(&mut self, p: &Path, _: Scalar, _: usize) {
                self.0.push((
                    p.len(),
                    p.depth(),
                    p.is_too_deep(),
                    p.key(0).map(<[u8]>::to_vec),
                ));
            }
        }
        let doc = format!("{{\"a\":{}1{}}}", "[".repeat(99), "]".repeat(99));
        let (r, d) = scan_in::<Deep>(&[doc.as_bytes()]);
        assert_eq!(r, Ok(()));
        assert_eq!(d.0, vec![(PATH_DEPTH, 100, true, Some(b"a".to_vec()))]);
    }

    #[test]
    fn long_keys_are_reported_as_long() {
        #[derive(Default)]
        struct Keys(Vec<String>);
        impl Sink for Keys {
            fn scalar(&mut self, p: &Path, _: Scalar, _: usize) {
                self.0.push(format!("{:?}", p.step(0)));
            }
        }
        let long = "k".repeat(KEY_CAP + 1);
        let exact = "é".repeat(KEY_CAP / 2);
        let doc = format!("{{\"{long}\":1,\"{exact}\":2,\"x\":3}}");
        let b = doc.as_bytes();
        for cut in 0..=b.len() {
            let (l, r) = b.split_at(cut);
            let (res, k) = scan_in::<Keys>(&[l, r]);
            assert_eq!(res, Ok(()));
            assert_eq!(
                k.0,
                vec![
                    "Some(LongKey)".to_string(),
                    format!("Some(Key({:?}))", exact.as_bytes()),
                    format!("Some(Key({:?}))", b"x"),
                ]
            );
        }
    }

    #[test]
    fn long_strings_stream_in_few_pieces_with_their_length() {
        let body = "QUJD".repeat(2_500_000); // 10 MB
        let doc = format!("{{\"data\":\"{body}\"}}");
        let mut s = Scanner::new();
        let mut t = Trace::default();
        for w in doc.as_bytes().chunks(1 << 20) {
            s.feed(w, &mut t).unwrap();
        }
        s.finish(&mut t).unwrap();
        assert!(t.pieces <= 11, "{} pieces", t.pieces);
        assert_eq!(t.text.len(), body.len());
    }

    #[test]
    fn numbers_carry_small_integer_values() {
        let cases = [
            ("7", Some(7)),
            ("0", Some(0)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("-7", None),
            ("7.0", None),
            ("7e0", None),
        ];
        for (doc, want) in cases {
            #[derive(Default)]
            struct N(Option<Number>);
            impl Sink for N {
                fn scalar(&mut self, _: &Path, v: Scalar, _: usize) {
                    if let Scalar::Number(n) = v {
                        self.0 = Some(n);
                    }
                }
            }
            let (r, n) = scan_in::<N>(&[doc.as_bytes()]);
            assert_eq!(r, Ok(()));
            assert_eq!(n.0.and_then(|n| n.as_u64()), want, "{doc}");
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_documents_round_trip_at_random_splits(v in arb_json(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6), ascii in any::<bool>()) {
            let text = if ascii { serde_json::to_string(&v).unwrap() } else { serde_json::to_string_pretty(&v).unwrap() };
            let b = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(b.len() + 1)).collect();
            points.sort_unstable();
            let mut windows = vec![];
            let mut last = 0;
            for p in points {
                windows.push(&b[last..p]);
                last = p;
            }
            windows.push(&b[last..]);
            let (r, tree) = scan_in::<Tree>(&windows);
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(tree.root, Some(normalise(v)));
        }

        #[test]
        fn random_bytes_never_panic_and_agree_with_serde_on_validity(
            doc in prop::collection::vec(prop::sample::select(b"{}[]\",:01-9.etrufalsn \\u\xc3\xa9\xffd8".to_vec()), 0..24),
            cut in any::<prop::sample::Index>()
        ) {
            let c = cut.index(doc.len() + 1);
            let (l, r) = doc.split_at(c);
            let (res, _) = scan_in::<Trace>(&[l, r]);
            match serde_json::from_slice::<Value>(&doc) {
                Ok(_) => prop_assert_eq!(res, Ok(())),
                Err(e) if e.to_string().contains("out of range") => {}
                Err(e) => prop_assert!(res.is_err(), "serde: {}", e),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(doc in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
            let c = cut.index(doc.len() + 1);
            let (l, r) = doc.split_at(c);
            let _ = scan_in::<Trace>(&[l, r]);
        }
    }

    /// `cargo test --release -- --ignored --nocapture bench` prints throughput.
    #[test]
    #[ignore]
    fn bench_scanner_throughput() {
        struct Nop;
        impl Sink for Nop {}
        let words = "The quick brown fox jumps over the lazy dog, again and again. ";
        let mut msgs = vec![];
        while serde_json::to_vec(&msgs).unwrap().len() < 256 * 1024 {
            msgs.push(serde_json::json!({"role":"user","content":words.repeat(20)}));
        }
        let body = serde_json::to_vec(&msgs).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..500 {
            let mut s = Scanner::new();
            for w in body.chunks(65536) {
                s.feed(w, &mut Nop).unwrap();
            }
            s.finish(&mut Nop).unwrap();
        }
        let mbs = (body.len() * 500) as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!("scanner alone, 256 KB chat: {mbs:.0} MB/s");
    }
}
