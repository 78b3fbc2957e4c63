//! Input-token estimate of request text, before it goes upstream: one pass over the chars that
//! sorts them into scripts and runs (words, digit groups, punctuation, whitespace) the way BPE
//! pre-tokenizers split text, then per-provider weights per feature.

use crate::api::Api;
use crate::simd::{self, V};

/// Scripts that get their own weights: tokenizers treat them very differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Latin = 0,
    Cyrillic,
    Greek,
    Hebrew,
    Arabic,
    Devanagari,
    /// Bengali, Gurmukhi, Gujarati, Oriya, Tamil.
    Indic,
    /// Telugu, Kannada, Malayalam, Sinhala: fewer merges than the northern scripts.
    IndicSouth,
    /// No spaces between words.
    Thai,
    /// Myanmar, Khmer: no spaces either, and few merges in the vocabularies.
    SouthEastAsian,
    /// Lao: next to no merges (close to a token per UTF-8 byte in o200k).
    Lao,
    Hangul,
    Kana,
    Han,
    /// Any other alphabetic char (Armenian, Georgian, Ethiopic, fullwidth Latin, ...).
    Other,
}

const SCRIPTS: usize = 15;

/// What one char is, for the run state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Space,
    Newline,
    Digit,
    Punct,
    /// A letter of a script; `true` when it is not ASCII (accents cost extra in Latin words).
    Letter(Script, bool),
    /// A lowercase-aware ASCII letter: kept apart so camelCase splits like the tokenizers do.
    Upper(u8),
    Lower(u8),
    /// A Latin letter beyond Latin-1 (Polish, Czech, Turkish, Vietnamese): fewer merges.
    LatinExtended,
    /// A combining mark: continues the current word.
    Mark,
    /// Symbols and emoji: cost by UTF-8 length.
    Symbol,
}

/// The run being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    None,
    Word(Script),
    Digits,
    Punct,
    Space,
}

// Feature indices. Per script: words, letters, letters beyond LONG in a word.
const F_WORDS: usize = 0;
const F_LETTERS: usize = SCRIPTS;
const F_LONG: usize = 2 * SCRIPTS;
const F_NONASCII: usize = 3 * SCRIPTS;
const F_DIGIT_GROUPS: usize = F_NONASCII + 1;
const F_PUNCT_RUNS: usize = F_NONASCII + 2;
const F_PUNCT_CHARS: usize = F_NONASCII + 3;
const F_PUNCT_BEFORE_WORD: usize = F_NONASCII + 4;
const F_NEWLINE_RUNS: usize = F_NONASCII + 5;
const F_INDENT_RUNS: usize = F_NONASCII + 6;
const F_SYMBOL_BYTES: usize = F_NONASCII + 7;
const F_SPACE_BEFORE_DIGIT: usize = F_NONASCII + 8;
const F_SHORT_WORDS: usize = F_NONASCII + 9;
const F_CYRILLIC_RARE: usize = F_NONASCII + 10;
const F_COMMON: usize = F_NONASCII + 11;
const F_LATIN_EXTENDED: usize = F_NONASCII + 12;
/// Latin letters beyond HUGE in one word (hashes, blobs): not fitted, a safety net.
const F_HUGE: usize = F_NONASCII + 13;
const FEATURES: usize = F_NONASCII + 14;

/// Letters of a word beyond this count cost extra (long words split into several tokens).
const LONG: u32 = 6;
/// Past this many letters a Latin "word" is no word (hashes, blobs) and costs per letter.
const HUGE: u32 = 16;
/// Latin words up to this length are almost always one token.
const SHORT: u32 = 3;

/// Weights in thousandths of a token per feature.
type Weights = [u32; FEATURES];

/// OpenAI (o200k_base): least squares on relative error per chunk of tests/corpus (40 UDHR
/// languages, Rust, Python, Markdown), features with no data set by hand; `mod calibration`
/// checks the result. cl100k (older OpenAI models) counts 0-80% more outside English and code.
const OPENAI: Weights = [
    // words: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    1396, 1821, 1820, 603, 550, 3, 278, 0, 223, 0, 169, 63, 123, 0, 1487,
    // letters: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    24, 0, 0, 327, 240, 353, 349, 522, 437, 593, 1876, 749, 848, 853, 123,
    // letters beyond LONG: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    0, 0, 353, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // non-ASCII Latin letters, digit groups, punctuation runs, punctuation chars, punctuation before a word, newline runs, indent runs, symbol bytes, space before digits, short words, rare Cyrillic letters, common words, Latin letters beyond Latin-1, Latin letters beyond HUGE
    422, 990, 200, 190, 0, 1200, 1500, 400, 665, 0, 811, 427, 905, 250,
];
/// Anthropic: the tokenizer of Claude 3 and later is not public. Fitted the same way to the
/// one Anthropic published for Claude 2 (npm `@anthropic-ai/tokenizer`), plus 10% because the
/// newer models are reported to count somewhat more. An approximation: the ratio learned per
/// model from real usage corrects its scale.
const ANTHROPIC: Weights = [
    // words: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    2132, 2578, 5138, 938, 4820, 0, 5500, 4203, 0, 0, 1729, 2105, 0, 137, 5500,
    // letters: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    26, 218, 0, 1006, 170, 1510, 1705, 2193, 1999, 1293, 3335, 948, 1039, 1416, 991,
    // letters beyond LONG: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    171, 68, 2498, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // non-ASCII Latin letters, digit groups, punctuation runs, punctuation chars, punctuation before a word, newline runs, indent runs, symbol bytes, space before digits, short words, rare Cyrillic letters, common words, Latin letters beyond Latin-1, Latin letters beyond HUGE
    677, 1089, 220, 10, 844, 330, 1650, 400, 0, 0, 1678, 440, 1650, 250,
];
/// Gemini: a SentencePiece vocabulary of 256k tokens, not available here to fit; its counts are
/// close to o200k's, so it takes the OpenAI weights. An approximation, like Anthropic's.
const GEMINI: Weights = [
    // words: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    1396, 1821, 1820, 603, 550, 3, 278, 0, 223, 0, 169, 63, 123, 0, 1487,
    // letters: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    24, 0, 0, 327, 240, 353, 349, 522, 437, 593, 1876, 749, 848, 853, 123,
    // letters beyond LONG: Latin, Cyrillic, Greek, Hebrew, Arabic, Devanagari, Indic, IndicSouth, Thai, SouthEastAsian, Lao, Hangul, Kana, Han, Other
    0, 0, 353, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // non-ASCII Latin letters, digit groups, punctuation runs, punctuation chars, punctuation before a word, newline runs, indent runs, symbol bytes, space before digits, short words, rare Cyrillic letters, common words, Latin letters beyond Latin-1, Latin letters beyond HUGE
    422, 990, 200, 190, 0, 1200, 1500, 400, 665, 0, 811, 427, 905, 250,
];

fn weights(api: Api) -> &'static Weights {
    match api {
        Api::OpenAi => &OPENAI,
        Api::Anthropic => &ANTHROPIC,
        Api::Gemini => &GEMINI,
    }
}

/// Streaming input-token estimator: feed it the request's text values, piece by piece.
#[derive(Debug, Clone)]
pub struct Estimator {
    counts: Counts,
    /// Fixed allowances (images, per-message overhead), in tokens.
    extra: u64,
    run: Run,
    /// Letters (words), digits, chars (punctuation) of the current run.
    len: u32,
    nonascii: u32,
    /// Latin letters beyond Latin-1 in the current word.
    extended: u32,
    /// Whitespace run: saw a newline; spaces since the last newline.
    newline: bool,
    tail: u32,
    /// Last letter of the current word was lowercase ASCII (an uppercase one then starts a word).
    lower: bool,
    /// The current Latin word, lowercased and packed little-endian while it is ASCII and at
    /// most 8 letters long (0 otherwise): to look it up among the common words.
    packed: u64,
    /// Long strings are sampled (see `push_str`): bytes of the current string so far, and
    /// the block under way past the first `SAMPLE_FULL` bytes.
    seen: u64,
    block_left: u64,
    block_no: u64,
    block_sampled: bool,
    block_start_milli: u64,
    block_bytes: u64,
    /// Bytes the sampled block before took from this one to end on a word boundary.
    block_debt: u64,
    /// Bytes a sampled block may still skip to start on a word boundary, or read on to end
    /// on one; whether the block before was sampled.
    align_left: u64,
    extend_left: u64,
    last_sampled: bool,
    /// Milli-tokens and bytes of every sampled block, and the bytes skipped.
    sample_milli: u64,
    sample_bytes: u64,
    /// Milli-tokens and bytes of long strings' heads: the rate for skipped bytes when no
    /// block was sampled yet (a head is where a prompt's preamble sits, often unlike the
    /// rest, so it does not join the blocks' sample).
    head_milli: u64,
    head_bytes: u64,
    skipped: u64,
    /// Milli-tokens when the current string started (see `HEAD_SNAPSHOT`).
    head_start_milli: Option<u64>,
}

/// The first bytes of a string are always read whole; past them, the string is cut into
/// blocks of `SAMPLE_BLOCK` bytes, one block in 8 (later one in 32, see `sampled_block`) is
/// read, and the others are counted at the sampled blocks' tokens per byte. Many small blocks
/// spread over the whole string follow a text that changes (a prompt that pastes several
/// files) better than a long head: a 32 KB string is read about 5.75 KB in 30 blocks (the
/// request's cost at that size is mostly what the estimator reads), a 256 KB one about
/// 13 KB, and the estimate stays within a few percent of reading it all (tested on code,
/// prose and scripts; `sampling::sampling_errors` prints the errors per kind of text and size).
const SAMPLE_FULL: u64 = 2 * 1024;
const SAMPLE_BLOCK: u64 = 128;
/// Blocks past the head read one in `DENSE_EVERY` (32 KB of text); later blocks, one in
/// `SPARSE_EVERY`.
const DENSE_BLOCKS: u64 = 256;
const DENSE_EVERY: u64 = 8;
const SPARSE_EVERY: u64 = 32;
/// A string whose first piece is this long has its head's rate (the first `SAMPLE_FULL`
/// bytes) kept for skipped bytes when no block gets sampled (a snapshot of the running total
/// costs a little per string).
const HEAD_SNAPSHOT: u64 = 256;
/// How far a sampled block looks for a word boundary to start or end on.
const ALIGN_MAX: u64 = 24;
/// Milli-tokens per byte for skipped text before any block was sampled (4 bytes a token).
const DEFAULT_MILLI_PER_BYTE: u64 = 250;
/// The least skipped text counts, whatever the sampled blocks' rate: which blocks are read is
/// public, so a client could fill them with cheap text (spaces) and the skipped ones with
/// dear text (digits) to be under-reserved. Real text runs 0.2-0.4 tokens a byte (code and
/// prose), so only whitespace-heavy text is counted higher, on the safe side.
const MIN_MILLI_PER_BYTE: u64 = 100;

/// `n * w` without overflow and without a 128-bit multiply (which wasm32 lacks): counts past
/// 2^32 (a 4 GB text) saturate first.
#[inline(always)]
fn weighted(n: u64, w: u32) -> u64 {
    n.min(u64::from(u32::MAX)) * u64::from(w)
}

/// Whether block `n` past the head is read: one in `every`, at a pseudo-random place in each
/// group of `every` blocks (fixed places could keep landing on the same part of a text that
/// repeats, e.g. a file pasted several times).
fn sampled_block(n: u64) -> bool {
    next_sampled(n) == n
}

/// The first block from `n` on that is read. Groups of blocks never straddle `DENSE_BLOCKS`
/// (a multiple of both group sizes), so each group has its one pick.
fn next_sampled(n: u64) -> u64 {
    let mut n = n;
    loop {
        let every: u64 = if n < DENSE_BLOCKS {
            DENSE_EVERY
        } else {
            SPARSE_EVERY
        };
        let group = n / every;
        let pick = group.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
        let at = group * every + pick % every;
        if at >= n {
            return at;
        }
        n = (group + 1) * every;
    }
}

/// Bytes that may continue a word: ASCII letters and digits, and any byte of a non-ASCII char.
#[inline(always)]
fn in_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// The largest prefix of `s` of at most `max` bytes that ends on a char boundary, or the
/// first char when even that is longer.
fn char_prefix(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    if i == 0 {
        s.chars().next().map_or(s.len(), char::len_utf8)
    } else {
        i
    }
}

impl Estimator {
    pub fn new(api: Api) -> Self {
        Estimator {
            counts: Counts {
                n: [0; FEATURES],
                milli: 0,
                weights: weights(api),
            },
            extra: 0,
            run: Run::None,
            len: 0,
            nonascii: 0,
            extended: 0,
            newline: false,
            tail: 0,
            lower: false,
            packed: 0,
            seen: 0,
            block_left: 0,
            block_no: 0,
            block_sampled: false,
            block_start_milli: 0,
            block_bytes: 0,
            block_debt: 0,
            align_left: 0,
            extend_left: 0,
            last_sampled: false,
            sample_milli: 0,
            sample_bytes: 0,
            head_milli: 0,
            head_bytes: 0,
            skipped: 0,
            head_start_milli: None,
        }
    }

    /// Text of the current string value, sampled past its first `SAMPLE_FULL` bytes.
    pub fn push_str(&mut self, s: &str) {
        let len = s.len() as u64;
        if len < self.block_left && self.in_skipped_block() {
            // Inside a skipped block, which goes on past this piece (the pieces between a
            // long text's escapes are mostly that): counted, as the loop below would.
            self.skip(len);
            return;
        }
        if self.seen == 0 && len >= HEAD_SNAPSHOT {
            // A string that may grow long: its head joins the tokens-per-byte sample.
            self.head_start_milli = Some(self.milli());
        }
        if self.seen.saturating_add(len) <= SAMPLE_FULL {
            self.seen += len;
            self.push_all(s);
            return;
        }
        let mut rest = s;
        while !rest.is_empty() {
            if self.seen < SAMPLE_FULL {
                let take = char_prefix(rest, (SAMPLE_FULL - self.seen) as usize);
                let (head, tail) = rest.split_at(take);
                self.push_all(head);
                self.seen += take as u64;
                rest = tail;
                if self.seen >= SAMPLE_FULL {
                    if let Some(start) = self.head_start_milli.take() {
                        let m = self.milli();
                        self.head_milli = self.head_milli.saturating_add(m.saturating_sub(start));
                        self.head_bytes = self.head_bytes.saturating_add(self.seen);
                    }
                }
                continue;
            }
            if self.extend_left > 0 {
                // A sampled block before a skipped one reads on to the end of its last word
                // (taking those bytes from the next block), whatever the pieces' sizes.
                let limit = (self.extend_left as usize).min(rest.len());
                let window = rest.as_bytes().get(..limit).unwrap_or_default();
                let (n, found) = match window.iter().position(|&b| !in_word(b)) {
                    Some(i) => (i, true),
                    None => (char_prefix(rest, limit), false),
                };
                let (word, tail) = rest.split_at(n);
                self.push_all(word);
                self.seen += n as u64;
                self.block_bytes += n as u64;
                self.block_debt += n as u64;
                self.extend_left = if found {
                    0
                } else {
                    self.extend_left.saturating_sub(n as u64)
                };
                rest = tail;
                if self.extend_left == 0 {
                    self.close_block();
                }
                continue;
            }
            if self.block_left == 0 {
                let after_gap = self.block_no > 0 && !self.last_sampled;
                self.block_sampled = sampled_block(self.block_no);
                self.block_no += 1;
                self.block_left = SAMPLE_BLOCK.saturating_sub(self.block_debt).max(1);
                self.block_debt = 0;
                self.block_bytes = 0;
                if self.block_sampled {
                    self.block_start_milli = self.milli();
                    // After a gap, the sample starts on a word boundary: a word cut in two
                    // would count as two.
                    self.align_left = if after_gap { ALIGN_MAX } else { 0 };
                } else {
                    // A skipped block ends the run: no word joins across the gap.
                    self.cut();
                }
            }
            let mut take = char_prefix(rest, self.block_left as usize);
            if self.block_sampled && self.align_left > 0 {
                let limit = take.min(self.align_left as usize);
                let window = rest.as_bytes().get(..limit).unwrap_or_default();
                let (skip, found) = match window.iter().position(|&b| !in_word(b)) {
                    Some(i) => (i, true),
                    // No boundary yet: skip to the last char boundary in reach (none when
                    // the first char reaches past it: then the sample starts here).
                    None => match char_prefix(rest, limit) {
                        n if n <= limit => (n, false),
                        _ => (0, true),
                    },
                };
                // The reach spent with no boundary: the sample starts here, whatever comes
                // in later pieces (a remainder left when a char straddles the reach's end
                // would skip more at the next piece's start, so a cut would change the count).
                self.align_left = if found || limit as u64 >= self.align_left {
                    0
                } else {
                    self.align_left.saturating_sub(skip as u64)
                };
                self.skipped += skip as u64;
                self.seen += skip as u64;
                self.block_left = self.block_left.saturating_sub(skip as u64);
                rest = rest.get(skip..).unwrap_or_default();
                take -= skip;
                if self.block_left == 0 {
                    self.close_block();
                    continue;
                }
                if take == 0 {
                    continue;
                }
            }
            let (head, tail) = rest.split_at(take);
            if self.block_sampled {
                self.push_all(head);
            } else {
                self.skipped += take as u64;
            }
            self.seen += take as u64;
            self.block_bytes += take as u64;
            self.block_left = self.block_left.saturating_sub(take as u64);
            rest = tail;
            if self.block_left == 0 {
                let last_in_word = head.as_bytes().last().is_some_and(|&b| in_word(b));
                if self.block_sampled && last_in_word && !sampled_block(self.block_no) {
                    self.extend_left = ALIGN_MAX;
                } else {
                    self.close_block();
                }
            }
        }
    }

    /// Bytes of the current text that are only counted from here on, not read: those left
    /// in a skipped block and in the skipped blocks after it, or 0. Fewer than that many
    /// bytes of ASCII text can go to `skip` instead of `push_str` (other text only within
    /// the current block: a block that ends inside a char takes all of it).
    pub fn skippable(&self) -> usize {
        if !self.in_skipped_block() || self.block_left == 0 {
            return 0;
        }
        // `block_no` is the next block's number.
        let after = next_sampled(self.block_no).saturating_sub(self.block_no);
        let n = self
            .block_left
            .saturating_add(after.saturating_mul(SAMPLE_BLOCK));
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Inside a block that is not read (nor a read block's end running on to a word end).
    fn in_skipped_block(&self) -> bool {
        !self.block_sampled && self.extend_left == 0
    }

    /// `n` bytes of text (fewer than `skippable`), counted as `push_str` would count them:
    /// the skipped blocks they end go by as the loop there would close and open them.
    pub fn skip(&mut self, n: u64) {
        self.skipped += n;
        self.seen += n;
        let mut n = n;
        while n >= self.block_left {
            // The block ends and the next one, skipped too, starts (the run was cut when
            // the first of them started, and nothing was read since).
            n -= self.block_left;
            self.last_sampled = false;
            self.block_no += 1;
            self.block_left = SAMPLE_BLOCK;
            self.block_bytes = 0;
            self.block_debt = 0;
        }
        self.block_bytes += n;
        self.block_left -= n;
    }

    /// Ends the block under way, adding a sampled one to the tokens-per-byte sample.
    fn close_block(&mut self) {
        if self.block_sampled && self.block_bytes > 0 {
            let m = self.milli();
            self.sample_milli = self
                .sample_milli
                .saturating_add(m.saturating_sub(self.block_start_milli));
            self.sample_bytes = self.sample_bytes.saturating_add(self.block_bytes);
        }
        self.last_sampled = self.block_sampled;
        self.block_left = 0;
        self.block_sampled = false;
        self.block_bytes = 0;
        self.extend_left = 0;
        self.align_left = 0;
    }

    /// Ends the current run (as the end of a string does).
    fn cut(&mut self) {
        self.flush();
        self.run = Run::None;
        self.len = 0;
    }

    /// Milli-tokens of the text read so far (the open run counted as if it ended here),
    /// from the running sum: no pass over the features.
    fn milli(&self) -> u64 {
        let mut m = Milli {
            total: self.counts.milli,
            weights: self.counts.weights,
        };
        self.open_run().tally(&mut m);
        m.total
    }

    fn milli_of(&self, counts: &[u64; FEATURES]) -> u64 {
        counts
            .iter()
            .zip(self.counts.weights.iter())
            .fold(0u64, |acc, (&n, &w)| acc.saturating_add(weighted(n, w)))
    }

    /// Milli-tokens of the skipped bytes, at the sampled blocks' rate (the heads' before any
    /// block was sampled), and at least `MIN_MILLI_PER_BYTE`.
    fn skipped_milli(&self) -> u64 {
        if self.skipped == 0 {
            return 0;
        }
        let rate = [
            (self.sample_milli, self.sample_bytes),
            (self.head_milli, self.head_bytes),
        ]
        .into_iter()
        .find(|&(_, b)| b > 0);
        let at_rate = match rate {
            Some((m, b)) => (u128::from(self.skipped) * u128::from(m) / u128::from(b)) as u64,
            None => self.skipped.saturating_mul(DEFAULT_MILLI_PER_BYTE),
        };
        at_rate.max(self.skipped.saturating_mul(MIN_MILLI_PER_BYTE))
    }

    /// ASCII goes through `ascii_block` 64 bytes at a time (short stretches a run at a time
    /// through `ascii_runs`), other chars one by one through `classify`.
    fn push_all(&mut self, s: &str) {
        let mut rest = s.as_bytes();
        while let Some(&first) = rest.first() {
            if first < 0x80 {
                let window = rest.get(..64).unwrap_or(rest);
                // Masks pay off from BLOCK_MIN ASCII bytes on (between CJK words, a space
                // alone is common).
                let long = window
                    .get(..BLOCK_MIN)
                    .is_some_and(|head| head.iter().fold(0, |a, &b| a | b) < 0x80);
                let n = if long {
                    let m = Masks::new(window);
                    if m.len >= BLOCK_MIN {
                        self.ascii_block(window.get(..m.len).unwrap_or_default(), &m);
                    } else {
                        self.ascii_runs(window.get(..m.len).unwrap_or_default());
                    }
                    m.len
                } else {
                    let n = window
                        .iter()
                        .position(|&b| b >= 0x80)
                        .unwrap_or(window.len());
                    self.ascii_runs(window.get(..n).unwrap_or_default());
                    n
                };
                rest = rest.get(n..).unwrap_or_default();
            }
            let n = self.non_ascii(rest);
            rest = rest.get(n..).unwrap_or_default();
        }
    }

    /// The non-ASCII chars that start `rest`, one by one; returns their length in bytes.
    #[inline(never)]
    fn non_ascii(&mut self, rest: &[u8]) -> usize {
        let mut at = 0;
        // `rest` is UTF-8, so a whole char follows a lead byte.
        while let Some(c) = rest
            .get(at..)
            .filter(|r| r.first().is_some_and(|&b| b >= 0x80))
            .and_then(decode)
        {
            let n = c.len_utf8();
            self.step(classify(c), n as u32);
            at += n;
        }
        at
    }

    /// ASCII bytes a run at a time: a word's lowercase letters, digits, punctuation, whitespace.
    fn ascii_runs(&mut self, mut rest: &[u8]) {
        while let Some(&b) = rest.first() {
            let used = match ASCII_KIND[usize::from(b)] {
                K_LOWER => self.lowers(rest),
                K_DIGIT => self.digits(rest),
                K_PUNCT => self.puncts(rest),
                K_SPACE => self.spaces(rest),
                _ => {
                    self.step(ascii_class(b), 1);
                    1
                }
            };
            rest = rest.get(used..).unwrap_or_default();
        }
    }

    /// A segment of at most 64 ASCII bytes at once: classes become bit masks (bit j for byte
    /// j), runs and their starts and ends come from shifts, and only the Latin words and digit
    /// groups that end here are visited one by one. Counts exactly as `step` would.
    #[inline(never)]
    fn ascii_block(&mut self, t: &[u8], m: &Masks) {
        let n = m.len;
        if n == 0 {
            return;
        }
        let valid = m.valid;
        let (lw, lo, up, dg, pu, ws, sp, nl, ct) = (
            m.lower | m.upper,
            m.lower,
            m.upper,
            m.digit,
            m.punct,
            m.space | m.newline,
            m.space,
            m.newline,
            m.control,
        );
        let carry = |on: bool| u64::from(on);
        let was = self.run;
        let (cw, cd, cp, cs) = (
            carry(was == Run::Word(Script::Latin)),
            carry(was == Run::Digits),
            carry(was == Run::Punct),
            carry(was == Run::Space),
        );
        // Bit j: byte j continues the run of byte j - 1 (bit 0: the run carried in).
        let cont_w = lw & (lw << 1 | cw) & !(up & (lo << 1 | carry(self.lower)));
        let cont_d = dg & (dg << 1 | cd);
        let cont_p = pu & (pu << 1 | cp);
        let cont_s = ws & (ws << 1 | cs);
        let cont = cont_w | cont_d | cont_p | cont_s;
        let (start_w, start_d) = (lw & !cont_w, dg & !cont_d);
        // Last bytes of runs that end inside the segment (the one at byte n - 1 stays open).
        let inner = valid >> 1;
        let end_w = lw & !(cont_w >> 1) & inner;
        let end_d = dg & !(cont_d >> 1) & inner;
        let end_p = pu & !(cont_p >> 1) & inner;
        let end_s = ws & !(cont_s >> 1) & inner;

        // Transitions between runs.
        let punct_before = start_w & (pu << 1 | cp);
        let space_before = start_d & (sp << 1 | carry(was == Run::Space && self.tail > 0));
        bump(&mut self.counts, F_PUNCT_BEFORE_WORD, ones(punct_before));
        bump(&mut self.counts, F_SPACE_BEFORE_DIGIT, ones(space_before));
        bump(&mut self.counts, F_SYMBOL_BYTES, ones(ct));

        // The carried run, when byte 0 does not continue it, ends before the segment.
        let carried = cont & 1 != 0;
        if !carried {
            self.flush();
        }
        let p0 = if carried { self.len } else { 0 };

        // Punctuation runs: counted at their end, as `flush` would.
        bump(&mut self.counts, F_PUNCT_RUNS, ones(end_p));
        // Whitespace runs: those holding a newline (a newline's carry runs out of its run's
        // top bit when added to the run), and those ending in two spaces.
        let newline_in = nl | carry(carried && was == Run::Space && self.newline);
        let with_newline = ws.wrapping_add(newline_in) & !ws & valid;
        bump(&mut self.counts, F_NEWLINE_RUNS, ones(with_newline));
        let space_prev = sp << 1 | carry(carried && was == Run::Space && self.tail > 0);
        bump(
            &mut self.counts,
            F_INDENT_RUNS,
            ones(end_s & sp & space_prev),
        );

        // Latin words and digit runs, one by one: start and end bits pair up in order.
        let mut starts = start_w;
        let mut ends = end_w;
        let mut open = None;
        if carried && was == Run::Word(Script::Latin) {
            if ends == 0 {
                open = Some((0usize, true));
            } else {
                let e = ends.trailing_zeros() as usize;
                ends &= ends - 1;
                self.len = self.len.saturating_add(clamp32(e + 1));
                self.packed = extend_packed(self.packed, p0, t.get(..=e).unwrap_or_default());
                self.flush();
            }
        }
        // Words inside the segment: ASCII, so only their length and letters matter.
        let (mut words, mut letters, mut long, mut huge, mut short, mut common) =
            (0, 0, 0, 0, 0, 0);
        while starts != 0 {
            let s = starts.trailing_zeros();
            starts &= starts - 1;
            if ends == 0 {
                open = Some((s as usize, false));
                break;
            }
            let e = ends.trailing_zeros();
            ends &= ends - 1;
            let len = u64::from(e - s + 1);
            let is = u64::from(is_common(m.word(s, len)));
            let not = 1 - is;
            common += is;
            words += not;
            letters += not * len;
            long += not * len.saturating_sub(u64::from(LONG));
            huge += len.saturating_sub(u64::from(HUGE));
            short += not * u64::from(len <= u64::from(SHORT));
        }
        let latin = Script::Latin as usize;
        bump(&mut self.counts, F_WORDS + latin, words);
        bump(&mut self.counts, F_LETTERS + latin, letters);
        bump(&mut self.counts, F_LONG + latin, long);
        bump(&mut self.counts, F_HUGE, huge);
        bump(&mut self.counts, F_SHORT_WORDS, short);
        bump(&mut self.counts, F_COMMON, common);
        let mut starts = start_d;
        let mut ends = end_d;
        let mut groups = 0u64;
        if carried && was == Run::Digits {
            if ends == 0 {
                open = Some((0, true));
            } else {
                let e = ends.trailing_zeros() as usize;
                ends &= ends - 1;
                groups += (u64::from(p0) + e as u64 + 1).div_ceil(3);
            }
        }
        while starts != 0 {
            let s = starts.trailing_zeros() as usize;
            starts &= starts - 1;
            if ends == 0 {
                open = Some((s, false));
                break;
            }
            let e = ends.trailing_zeros() as usize;
            ends &= ends - 1;
            groups += (e - s) as u64 / 3 + 1;
        }
        bump(&mut self.counts, F_DIGIT_GROUPS, groups);

        // The run open at byte n - 1 becomes the state.
        let last = n - 1;
        let bit = 1u64 << last;
        let run = if lw & bit != 0 {
            Run::Word(Script::Latin)
        } else if dg & bit != 0 {
            Run::Digits
        } else if pu & bit != 0 {
            Run::Punct
        } else if ws & bit != 0 {
            Run::Space
        } else {
            Run::None
        };
        // Where the open run starts, and whether it is the carried one.
        let (from, same) = match run {
            Run::Word(_) | Run::Digits => open.unwrap_or((0, true)),
            Run::Punct => from_start(pu & !cont_p & valid, carried && was == Run::Punct),
            Run::Space => from_start(ws & !cont_s & valid, carried && was == Run::Space),
            Run::None => (n, false),
        };
        let tail_bytes = t.get(from..).unwrap_or_default();
        let len = clamp32(tail_bytes.len());
        // Punctuation chars of the runs that ended here: all of them but the open run's.
        let carried_punct = if carried && was == Run::Punct { p0 } else { 0 };
        let open_punct = match (run, same) {
            (Run::Punct, true) => u64::from(len) + u64::from(p0),
            (Run::Punct, false) => u64::from(len),
            _ => 0,
        };
        bump(
            &mut self.counts,
            F_PUNCT_CHARS,
            (u64::from(carried_punct) + ones(pu)).saturating_sub(open_punct),
        );
        if same {
            self.len = self.len.saturating_add(len);
        } else {
            self.len = len;
            self.nonascii = 0;
            self.extended = 0;
            self.packed = 0;
            self.newline = false;
            self.tail = 0;
        }
        self.run = run;
        self.lower = run == Run::Word(Script::Latin) && lo & bit != 0;
        match run {
            Run::Word(_) => {
                let before = if same { p0 } else { 0 };
                self.packed = extend_packed(self.packed, before, tail_bytes);
            }
            Run::Space => match tail_bytes.iter().rposition(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.newline = true;
                    self.tail = clamp32(tail_bytes.len() - i - 1);
                }
                None => self.tail = self.tail.saturating_add(len),
            },
            _ => {}
        }
    }

    pub fn push_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.push_str(c.encode_utf8(&mut buf));
    }

    /// The current string value ended: runs do not continue into the next one.
    pub fn end_text(&mut self) {
        if self.block_left > 0 || self.extend_left > 0 {
            self.close_block();
        }
        self.block_debt = 0;
        self.last_sampled = false;
        self.block_no = 0;
        self.seen = 0;
        self.head_start_milli = None;
        self.cut();
    }

    pub fn add_tokens(&mut self, n: u64) {
        self.extra = self.extra.saturating_add(n);
    }

    pub fn tokens(&self) -> u64 {
        let counts = self.flushed();
        let milli = self.milli_of(&counts).saturating_add(self.skipped_milli());
        let mut text = milli.saturating_add(500) / 1000;
        // A non-empty text is at least one token.
        if text == 0 && counts.iter().any(|&n| n > 0) {
            text = 1;
        }
        text.saturating_add(self.extra)
    }

    /// The counts with the current run added (it may still continue in the next piece).
    fn flushed(&self) -> [u64; FEATURES] {
        let mut counts = self.counts.clone();
        self.open_run().tally(&mut counts);
        counts.n
    }

    /// The raw feature counts (for the calibration fit).
    #[cfg(test)]
    fn features(&self) -> [u64; FEATURES] {
        self.flushed()
    }

    /// Lowercase ASCII letters at the start of `rest`: they continue the Latin word.
    fn lowers(&mut self, rest: &[u8]) -> usize {
        let n = ascii_run(rest, K_LOWER);
        if self.run != Run::Word(Script::Latin) {
            self.start(Run::Word(Script::Latin));
        }
        let at = self.len as usize;
        if at.saturating_add(n) <= 8 && (at == 0 || self.packed != 0) {
            for (k, &b) in rest.iter().take(n).enumerate() {
                self.packed |= u64::from(b) << (8 * (at + k));
            }
        } else {
            self.packed = 0;
        }
        self.len = self.len.saturating_add(clamp32(n));
        self.lower = true;
        n
    }

    fn digits(&mut self, rest: &[u8]) -> usize {
        let n = ascii_run(rest, K_DIGIT);
        if self.run != Run::Digits {
            self.start(Run::Digits);
        }
        self.len = self.len.saturating_add(clamp32(n));
        n
    }

    fn puncts(&mut self, rest: &[u8]) -> usize {
        let n = ascii_run(rest, K_PUNCT);
        if self.run != Run::Punct {
            self.start(Run::Punct);
        }
        self.len = self.len.saturating_add(clamp32(n));
        n
    }

    /// Spaces, tabs and newlines: what counts is whether a newline came and the spaces after
    /// the last one.
    fn spaces(&mut self, rest: &[u8]) -> usize {
        let n = ascii_run(rest, K_SPACE);
        if self.run != Run::Space {
            self.start(Run::Space);
            self.newline = false;
            self.tail = 0;
        }
        let run = rest.get(..n).unwrap_or_default();
        match run.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(last) => {
                self.newline = true;
                self.tail = clamp32(n - last - 1);
            }
            None => self.tail = self.tail.saturating_add(clamp32(n)),
        }
        n
    }

    #[inline(always)]
    fn step(&mut self, class: Class, bytes: u32) {
        match class {
            Class::Lower(b) => {
                self.letter(Script::Latin, false);
                self.pack(b);
                self.lower = true;
            }
            Class::Upper(b) => {
                // camelCase: o200k and cl100k start a new word at an uppercase after a lowercase.
                if self.lower && self.run == Run::Word(Script::Latin) {
                    self.start(Run::Word(Script::Latin));
                }
                self.letter(Script::Latin, false);
                self.pack(b.to_ascii_lowercase());
                self.lower = false;
            }
            Class::Letter(script, nonascii) => {
                self.letter(script, nonascii);
                self.packed = 0;
                self.lower = false;
            }
            Class::LatinExtended => {
                self.letter(Script::Latin, true);
                self.extended = self.extended.saturating_add(1);
                self.packed = 0;
                self.lower = false;
            }
            Class::Mark => match self.run {
                Run::Word(_) => {
                    self.packed = 0;
                    self.len = self.len.saturating_add(1);
                    self.nonascii = self.nonascii.saturating_add(1);
                }
                _ => self.letter(Script::Latin, true),
            },
            Class::Digit => {
                if self.run != Run::Digits {
                    self.start(Run::Digits);
                }
                self.len = self.len.saturating_add(1);
            }
            Class::Punct => {
                if self.run != Run::Punct {
                    self.start(Run::Punct);
                }
                self.len = self.len.saturating_add(1);
            }
            Class::Symbol => {
                // Emoji and symbols: each is its own pre-token, roughly a token per two bytes.
                self.start(Run::None);
                bump(&mut self.counts, F_SYMBOL_BYTES, u64::from(bytes));
            }
            Class::Space | Class::Newline => {
                if self.run != Run::Space {
                    self.start(Run::Space);
                    self.newline = false;
                    self.tail = 0;
                }
                if class == Class::Newline {
                    self.newline = true;
                    self.tail = 0;
                } else {
                    self.tail = self.tail.saturating_add(1);
                }
            }
        }
    }

    #[inline(always)]
    fn letter(&mut self, script: Script, nonascii: bool) {
        let run = Run::Word(script);
        if self.run != run {
            self.start(run);
        }
        self.len = self.len.saturating_add(1);
        if nonascii {
            self.nonascii = self.nonascii.saturating_add(1);
        }
    }

    /// Appends an ASCII letter (the word's `len`-th, already counted) to the packed word.
    fn pack(&mut self, b: u8) {
        // `len` counts this letter already; positions past 8 no longer fit.
        let at = self.len.saturating_sub(1);
        if at < 8 && (at == 0 || self.packed != 0) {
            self.packed |= u64::from(b) << (8 * at);
        } else {
            self.packed = 0;
        }
    }

    /// Ends the current run and starts `run`.
    fn start(&mut self, run: Run) {
        self.flush();
        if let (Run::Word(_), Run::Punct) = (run, self.run) {
            bump(&mut self.counts, F_PUNCT_BEFORE_WORD, 1);
        }
        if let (Run::Digits, Run::Space) = (run, self.run) {
            if self.tail > 0 {
                bump(&mut self.counts, F_SPACE_BEFORE_DIGIT, 1);
            }
        }
        self.run = run;
        self.len = 0;
        self.nonascii = 0;
        self.extended = 0;
        self.lower = false;
        self.packed = 0;
    }

    /// Adds the current run's features to the counts (the run's state stays as it is).
    fn flush(&mut self) {
        let run = self.open_run();
        run.tally(&mut self.counts);
    }

    fn open_run(&self) -> OpenRun {
        OpenRun {
            run: self.run,
            len: self.len,
            packed: self.packed,
            nonascii: self.nonascii,
            extended: self.extended,
            newline: self.newline,
            tail: self.tail,
        }
    }
}

/// The run under way, as `flush` counts it.
#[derive(Clone, Copy)]
struct OpenRun {
    run: Run,
    len: u32,
    packed: u64,
    nonascii: u32,
    extended: u32,
    newline: bool,
    tail: u32,
}

impl OpenRun {
    fn tally(self, counts: &mut impl Tally) {
        let len = u64::from(self.len);
        match self.run {
            Run::None => {}
            Run::Word(Script::Latin) => {
                latin_word(counts, self.len, self.packed, self.nonascii, self.extended);
            }
            Run::Word(script) => {
                let s = script as usize;
                bump(counts, F_WORDS + s, 1);
                bump(counts, F_LETTERS + s, len);
                bump(counts, F_LONG + s, u64::from(self.len.saturating_sub(LONG)));
                if script == Script::Cyrillic {
                    bump(counts, F_CYRILLIC_RARE, u64::from(self.nonascii));
                }
            }
            // o200k and cl100k split digit runs into groups of up to three.
            Run::Digits => bump(counts, F_DIGIT_GROUPS, len.div_ceil(3)),
            Run::Punct => {
                bump(counts, F_PUNCT_RUNS, 1);
                bump(counts, F_PUNCT_CHARS, len);
            }
            Run::Space => {
                if self.newline {
                    bump(counts, F_NEWLINE_RUNS, 1);
                }
                // One space merges into the next word; more are a token of their own.
                if self.tail >= 2 {
                    bump(counts, F_INDENT_RUNS, 1);
                }
            }
        }
    }
}

/// Adds one Latin word: a common word counts as such, any other by its letters.
fn latin_word(counts: &mut impl Tally, len: u32, packed: u64, nonascii: u32, extended: u32) {
    if packed != 0 && is_common(packed) {
        bump(counts, F_COMMON, 1);
        return;
    }
    let s = Script::Latin as usize;
    bump(counts, F_WORDS + s, 1);
    bump(counts, F_LETTERS + s, u64::from(len));
    bump(counts, F_LONG + s, u64::from(len.saturating_sub(LONG)));
    bump(counts, F_NONASCII, u64::from(nonascii));
    bump(counts, F_LATIN_EXTENDED, u64::from(extended));
    bump(counts, F_HUGE, u64::from(len.saturating_sub(HUGE)));
    if len <= SHORT {
        bump(counts, F_SHORT_WORDS, 1);
    }
}

/// `packed` (a word's first `at` letters) with the ASCII letters `more` appended.
fn extend_packed(packed: u64, at: u32, more: &[u8]) -> u64 {
    let at = at as usize;
    if at.saturating_add(more.len()) > 8 || (at > 0 && packed == 0) {
        return 0;
    }
    more.iter().enumerate().fold(packed, |w, (k, &b)| {
        w | u64::from(b | 0x20) << (8 * (at + k))
    })
}

fn ones(mask: u64) -> u64 {
    u64::from(mask.count_ones())
}

/// Where the run open at the end starts, given its kind's start bits: the highest one, or the
/// carried run when there is none.
fn from_start(starts: u64, carried: bool) -> (usize, bool) {
    if starts == 0 {
        (0, carried)
    } else {
        (63 - starts.leading_zeros() as usize, false)
    }
}

/// ASCII stretches shorter than this go a run at a time (the masks cost more than they save).
const BLOCK_MIN: usize = 16;

/// Byte classes of up to 64 ASCII bytes, bit j for byte j.
struct Masks {
    /// How many bytes (the ASCII ones at the start).
    len: usize,
    /// Bits 0..len.
    valid: u64,
    /// The bytes, 8 to a lane (high bits cleared), and a zero lane.
    lanes: [u64; 9],
    lower: u64,
    upper: u64,
    digit: u64,
    punct: u64,
    /// Spaces, tabs, vertical tabs, form feeds.
    space: u64,
    /// Line feeds and carriage returns.
    newline: u64,
    control: u64,
}

const HIGH: u64 = 0x8080_8080_8080_8080;

impl Masks {
    /// Classes of the ASCII bytes that start `t` (at most 64 of them: `len`).
    fn new(t: &[u8]) -> Self {
        let mut m = Masks {
            len: 0,
            valid: 0,
            lanes: [0; 9],
            lower: 0,
            upper: 0,
            digit: 0,
            punct: 0,
            space: 0,
            newline: 0,
            control: 0,
        };
        // Whole 64-byte blocks are read in place, a shorter tail through a NUL-padded copy
        // (NUL is a control char: the padding is masked off below).
        let mut padded = [0u8; 64];
        let block: &[u8; 64] = match t.get(..64).and_then(|b| <&[u8; 64]>::try_from(b).ok()) {
            Some(b) => b,
            None => {
                padded.iter_mut().zip(t).for_each(|(d, &b)| *d = b);
                &padded
            }
        };
        for (lane, chunk) in m.lanes.iter_mut().zip(block.chunks_exact(8)) {
            // High bits cleared: `word` reads letters from here.
            *lane = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) & !HIGH;
        }
        let splat = V::splat;
        let mut nonascii = 0u64;
        for k in 0..4 {
            let Some(c) = simd::chunk(block, 16 * k) else {
                break;
            };
            let v = V::load(c);
            let at = 16 * k;
            nonascii |= u64::from(v.bitmask()) << at;
            let x = v.and(splat(0x7f));
            // Letters fold to lowercase with bit 5; uppercase ones have it clear.
            let letter = simd::within(x.or(splat(0x20)), b'a', b'z');
            let upper = letter.and(x.and(splat(0x20)).eq(splat(0)));
            let digit = simd::within(x, b'0', b'9');
            let print = simd::within(x, 0x21, 0x7e);
            let newline = x.eq(splat(b'\n')).or(x.eq(splat(b'\r')));
            let white = simd::within(x, 0x09, 0x0d).or(x.eq(splat(b' ')));
            let bits = |v: V| u64::from(v.bitmask()) << at;
            m.lower |= bits(letter.and_not(upper));
            m.upper |= bits(upper);
            m.digit |= bits(digit);
            m.punct |= bits(print.and_not(letter.or(digit)));
            m.space |= bits(white.and_not(newline));
            m.newline |= bits(newline);
            m.control |= bits(splat(0xff).and_not(white.or(print)));
        }
        let avail = t.len().min(64);
        let len = (nonascii.trailing_zeros() as usize).min(avail);
        m.len = len;
        m.valid = if len >= 64 { !0 } else { (1u64 << len) - 1 };
        for mask in [
            &mut m.lower,
            &mut m.upper,
            &mut m.digit,
            &mut m.punct,
            &mut m.space,
            &mut m.newline,
            &mut m.control,
        ] {
            *mask &= m.valid;
        }
        m
    }

    /// The `len` (at least 1) letters from byte `at`, lowercased and packed like
    /// `Estimator::packed`; 0 when they are more than 8.
    #[inline(always)]
    fn word(&self, at: u32, len: u64) -> u64 {
        let lane = (at / 8) as usize;
        let lo = self.lanes.get(lane).copied().unwrap_or(0);
        let hi = self.lanes.get(lane + 1).copied().unwrap_or(0);
        let shift = 8 * (at % 8);
        // `hi << (64 - shift)` in two steps, as the shift may be 0.
        let w = lo >> shift | (hi << 1) << (63 - shift);
        let keep = u64::MAX >> (64 - 8 * len.clamp(1, 8));
        let fits = 0u64.wrapping_sub(u64::from(len <= 8));
        (w | 0x2020_2020_2020_2020) & keep & fits
    }
}

fn clamp32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Kinds of bytes for the ASCII runs of `push_str`.
const K_LOWER: u8 = 0;
const K_DIGIT: u8 = 1;
const K_PUNCT: u8 = 2;
/// Spaces, tabs, newlines.
const K_SPACE: u8 = 3;
/// Uppercase letters and control chars: one at a time through `step`.
const K_OTHER: u8 = 4;
/// Bytes of a non-ASCII char.
const K_UTF8: u8 = 5;

const ASCII_KIND: [u8; 256] = {
    let mut t = [K_UTF8; 256];
    let mut b = 0;
    while b < 0x80 {
        t[b] = match b as u8 {
            b'a'..=b'z' => K_LOWER,
            b'0'..=b'9' => K_DIGIT,
            b'\n' | b'\r' | b' ' | b'\t' | 0x0b | 0x0c => K_SPACE,
            b'A'..=b'Z' => K_OTHER,
            0x21..=0x7e => K_PUNCT,
            _ => K_OTHER,
        };
        b += 1;
    }
    t
};

/// Length of the run of `kind` bytes that starts `bytes`.
#[inline(always)]
fn ascii_run(bytes: &[u8], kind: u8) -> usize {
    bytes
        .iter()
        .position(|&b| ASCII_KIND[usize::from(b)] != kind)
        .unwrap_or(bytes.len())
}

/// The char that starts `bytes`, which start at a char boundary of a `str` (so its lead byte
/// and continuation bytes are valid UTF-8).
#[inline]
fn decode(bytes: &[u8]) -> Option<char> {
    let cont = |i: usize| bytes.get(i).map(|&b| u32::from(b & 0x3f));
    let b0 = u32::from(*bytes.first()?);
    let u = match b0 {
        0xc0..=0xdf => (b0 & 0x1f) << 6 | cont(1)?,
        0xe0..=0xef => (b0 & 0x0f) << 12 | cont(1)? << 6 | cont(2)?,
        _ => (b0 & 0x07) << 18 | cont(1)? << 12 | cont(2)? << 6 | cont(3)?,
    };
    char::from_u32(u)
}

/// Feature counts and their weighted sum, kept as they grow: a sampled block's milli-tokens
/// are the difference of two sums.
#[derive(Debug, Clone)]
struct Counts {
    n: [u64; FEATURES],
    milli: u64,
    weights: &'static Weights,
}

/// Where a run's features go: the counts, or only their weighted sum (`Estimator::milli`).
trait Tally {
    fn add(&mut self, i: usize, n: u64);
}

impl Tally for Counts {
    #[inline(always)]
    fn add(&mut self, i: usize, n: u64) {
        if let (Some(c), Some(&w)) = (self.n.get_mut(i), self.weights.get(i)) {
            *c = c.saturating_add(n);
            self.milli = self.milli.saturating_add(weighted(n, w));
        }
    }
}

struct Milli {
    total: u64,
    weights: &'static Weights,
}

impl Tally for Milli {
    #[inline(always)]
    fn add(&mut self, i: usize, n: u64) {
        if let Some(&w) = self.weights.get(i) {
            self.total = self.total.saturating_add(weighted(n, w));
        }
    }
}

#[inline(always)]
fn bump(counts: &mut impl Tally, i: usize, n: u64) {
    counts.add(i, n);
}

/// Estimated input tokens of one text.
pub fn estimate_text(api: Api, s: &str) -> u64 {
    let mut e = Estimator::new(api);
    e.push_str(s);
    e.tokens()
}

mod chars;
use chars::{ascii_class, classify, is_common};

#[cfg(test)]
mod calibration;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bench;

#[cfg(test)]
mod sampling;
