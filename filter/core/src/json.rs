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

    fn run(&mut self, w: &[u8], sink: &mut dyn Sink) -> Result<(), JsonError> {
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

    fn value(&mut self, b: u8, at: usize, sink: &mut dyn Sink) -> Result<(), JsonError> {
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

    fn open(&mut self, kind: Container, at: usize, sink: &mut dyn Sink) -> Result<(), JsonError> {
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

    fn close(&mut self, kind: Container, at: usize, sink: &mut dyn Sink) {
        if self.path.frames.len() == self.path.depth {
            self.path.frames.pop();
        }
        self.path.depth = self.path.depth.saturating_sub(1);
        sink.end(&self.path, kind, at);
        self.after_value();
    }

    fn comma_or_close(&mut self, b: u8, at: usize, sink: &mut dyn Sink) -> Result<(), JsonError> {
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

    fn begin_key(&mut self, sink: &mut dyn Sink) {
        if let Some(f) = self.path.top_tracked() {
            f.key_len = 0;
            f.long = false;
        }
        self.key = true;
        self.str_len = 0;
        sink.str_begin(&self.path, true);
        self.state = State::Str;
    }

    fn number(&mut self, w: &[u8], mut i: usize, sink: &mut dyn Sink) -> Result<usize, JsonError> {
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

    fn end_number(&mut self, sink: &mut dyn Sink) {
        let n = Number {
            negative: self.num_neg,
            integer: self.num_int,
            value: self.num_val,
        };
        sink.scalar(&self.path, Scalar::Number(n), self.num_start);
        self.after_value();
    }

    fn string(&mut self, w: &[u8], mut i: usize, sink: &mut dyn Sink) -> Result<usize, JsonError> {
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
    fn text(
        &mut self,
        run: &[u8],
        at_end: bool,
        i: usize,
        sink: &mut dyn Sink,
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

    fn escape(&mut self, b: u8, i: usize, sink: &mut dyn Sink) -> Result<(), JsonError> {
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

    fn emit_char(&mut self, c: char, sink: &mut dyn Sink) {
        let mut buf = [0u8; 4];
        let s: &str = c.encode_utf8(&mut buf);
        self.emit(s, sink);
    }

    fn emit(&mut self, s: &str, sink: &mut dyn Sink) {
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

// ---- streamed arrays ---------------------------------------------------------------------

/// Splits a streamed JSON array into its elements as they complete (a lone object is its own
/// one element), with the scanner above: bytes arrive in windows, and only an element that
/// spans windows is buffered, up to `cap` bytes (a longer one is counted in
/// [`Elements::oversized`] and skipped). Objects and arrays are elements; scalars and strings
/// at that level are skipped. Invalid JSON ends the splitting where it starts.
pub struct Elements {
    scanner: Scanner,
    spans: Spans,
    buf: Vec<u8>,
    too_big: bool,
    cap: usize,
    oversized: u64,
}

/// Where elements begin and end, in absolute offsets.
#[derive(Default)]
struct Spans {
    root: Option<Container>,
    /// The first byte of the element being read.
    open: Option<usize>,
    /// Elements completed in the current window: first and last byte.
    done: Vec<(usize, usize)>,
}

impl Spans {
    /// The depth of the container an element opens in.
    fn level(&self) -> Option<usize> {
        match self.root? {
            Container::Array => Some(1),
            Container::Object => Some(0),
        }
    }
}

impl Sink for Spans {
    fn begin(&mut self, path: &Path, kind: Container, offset: usize) {
        if path.depth() == 0 && self.root.is_none() {
            self.root = Some(kind);
        }
        if Some(path.depth()) == self.level() {
            self.open = Some(offset);
        }
    }

    fn end(&mut self, path: &Path, _kind: Container, offset: usize) {
        if Some(path.depth()) == self.level() {
            if let Some(first) = self.open.take() {
                self.done.push((first, offset));
            }
        }
    }

    fn skippable(&self) -> usize {
        usize::MAX
    }
}

impl Elements {
    /// Elements that span windows are kept up to `cap` bytes.
    pub fn new(cap: usize) -> Elements {
        Elements {
            scanner: Scanner::new(),
            spans: Spans::default(),
            buf: Vec::new(),
            too_big: false,
            cap,
            oversized: 0,
        }
    }

    /// Elements skipped for being longer than `cap` across windows.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    /// Scans the next window and hands `on` every element it completes, in order.
    pub fn feed(&mut self, window: &[u8], mut on: impl FnMut(&[u8])) {
        let base = self.scanner.offset();
        self.spans.done.clear();
        // On an error, the elements before it were still recorded; nothing follows it.
        let _ = self.scanner.feed(window, &mut self.spans);
        let at = |offset: usize| offset.saturating_sub(base);
        for &(first, last) in &self.spans.done {
            let piece = window.get(at(first)..=at(last)).unwrap_or_default();
            if self.too_big {
                self.oversized = self.oversized.saturating_add(1);
            } else if first >= base {
                on(piece);
            } else if self.buf.len().saturating_add(piece.len()) <= self.cap {
                self.buf.extend_from_slice(piece);
                on(&self.buf);
            } else {
                self.oversized = self.oversized.saturating_add(1);
            }
            self.buf.clear();
            self.too_big = false;
        }
        if let Some(first) = self.spans.open {
            let piece = window.get(at(first)..).unwrap_or_default();
            if self.buf.len().saturating_add(piece.len()) > self.cap {
                self.too_big = true;
                self.buf.clear();
            } else if !self.too_big {
                self.buf.extend_from_slice(piece);
            }
        }
    }
}

// ---- fragments ---------------------------------------------------------------------------

/// The value after `key` (a quoted key, `"usage"`) if `hay` holds `key`, optional whitespace
/// and `:` at `i`. For fragments the scanner cannot read from their start (a body's tail, a
/// cut event): inside valid JSON a string followed by `:` is always a key.
pub fn value_at<'a>(hay: &'a [u8], i: usize, key: &[u8]) -> Option<&'a [u8]> {
    if hay.get(i..i.saturating_add(key.len()))? != key {
        return None;
    }
    let rest = hay.get(i.saturating_add(key.len())..)?;
    let rest = rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)?;
    let rest = rest.strip_prefix(b":")?;
    rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)
}

/// The value of the first (or with `from_end` the last) `key` in the fragment `hay`.
pub fn find_value<'a>(hay: &'a [u8], key: &[u8], from_end: bool) -> Option<&'a [u8]> {
    if from_end {
        (0..hay.len()).rev().find_map(|i| value_at(hay, i, key))
    } else {
        (0..hay.len()).find_map(|i| value_at(hay, i, key))
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
mod tests;
