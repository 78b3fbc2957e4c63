//! Sorting chars into the classes and scripts the estimator counts, and the table of common
//! short words that BPE vocabularies hold as one token.

use super::{Class, Script};

pub(super) fn ascii_class(b: u8) -> Class {
    match b {
        b'a'..=b'z' => Class::Lower(b),
        b'A'..=b'Z' => Class::Upper(b),
        b'0'..=b'9' => Class::Digit,
        b'\n' | b'\r' => Class::Newline,
        b' ' | b'\t' | 0x0b | 0x0c => Class::Space,
        0x21..=0x7e => Class::Punct,
        // Control chars: rare; each is a token of its own.
        _ => Class::Symbol,
    }
}

pub(super) fn classify(c: char) -> Class {
    use Script::*;
    if c.is_ascii() {
        return ascii_class(c as u8);
    }
    let u = c as u32;
    let letter = |s| Class::Letter(s, true);
    // The commonest blocks of CJK text first (the full table below has them too).
    if (0x4e00..=0x9fff).contains(&u) {
        return letter(Han);
    }
    if (0xac00..=0xd7af).contains(&u) {
        return letter(Hangul);
    }
    if (0x3041..=0x30ff).contains(&u) {
        return letter(Kana);
    }
    match u {
        0x00a0 | 0x2000..=0x200a | 0x202f | 0x205f | 0x3000 => Class::Space,
        0x0085 | 0x2028 | 0x2029 => Class::Newline,
        0x00a1..=0x00bf | 0x00d7 | 0x00f7 => Class::Punct,
        0x00c0..=0x00ff => letter(Latin),
        0x0100..=0x024f | 0x1e00..=0x1eff => Class::LatinExtended,
        0x0300..=0x036f | 0x200c | 0x200d => Class::Mark,
        0x0370..=0x03ff | 0x1f00..=0x1fff => letter(Greek),
        // Letters beyond the Russian alphabet (Ukrainian, Serbian, ...) have fewer merges.
        0x0401 | 0x0410..=0x044f | 0x0451 => Class::Letter(Cyrillic, false),
        0x0400..=0x052f => letter(Cyrillic),
        0x0590..=0x05ff => letter(Hebrew),
        0x0600..=0x06ff | 0x0750..=0x077f | 0x08a0..=0x08ff | 0xfb50..=0xfdff | 0xfe70..=0xfeff => {
            if c.is_numeric() {
                Class::Digit
            } else if c.is_alphabetic() || (0x064b..=0x065f).contains(&u) {
                letter(Arabic)
            } else {
                Class::Punct
            }
        }
        0x0900..=0x097f => script_char(c, Devanagari),
        0x0980..=0x0bff => script_char(c, Indic),
        0x0c00..=0x0dff => script_char(c, IndicSouth),
        0x0e00..=0x0e7f => script_char(c, Thai),
        0x0e80..=0x0eff => script_char(c, Lao),
        0x1000..=0x109f | 0x1780..=0x17ff => script_char(c, SouthEastAsian),
        0x1100..=0x11ff | 0x3130..=0x318f | 0xac00..=0xd7af => letter(Hangul),
        0x3040..=0x30ff | 0x31f0..=0x31ff | 0xff66..=0xff9f => letter(Kana),
        0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xf900..=0xfaff | 0x20000..=0x3ffff => letter(Han),
        0x2010..=0x2027 | 0x2030..=0x205e | 0x3001..=0x303f | 0xff01..=0xff0f | 0xff1a..=0xff20 => {
            Class::Punct
        }
        _ => {
            if c.is_alphabetic() {
                letter(Other)
            } else if c.is_numeric() {
                Class::Digit
            } else if c.is_whitespace() {
                Class::Space
            } else {
                Class::Symbol
            }
        }
    }
}

/// A char of a Brahmic or South-East Asian block: its digits and punctuation are not letters.
pub(super) fn script_char(c: char, script: Script) -> Class {
    if c.is_numeric() {
        Class::Digit
    } else if c.is_alphabetic() || !c.is_ascii_punctuation() && is_mark_range(c) {
        Class::Letter(script, true)
    } else {
        Class::Punct
    }
}

/// Vowel signs and viramas of these blocks are marks, not alphabetic, but belong to the word.
pub(super) fn is_mark_range(c: char) -> bool {
    // Danda and double danda are the only common punctuation of these blocks.
    !matches!(
        c,
        '\u{0964}' | '\u{0965}' | '\u{0e2f}' | '\u{0e46}' | '\u{0e4f}' | '\u{0e5a}' | '\u{0e5b}'
    )
}

/// Frequent short words that are one token in every tokenizer modelled here, whatever their
/// length: English function words, the commonest words of the major Latin-script languages,
/// and programming keywords. Lowercase ASCII, at most 8 letters.
pub(super) const COMMON_WORDS: &[&str] = &[
    // English
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "i", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "they", "you", "were", "her", "she", "there", "one", "all", "we", "can", "has", "been", "if",
    "more", "when", "will", "would", "who", "so", "no", "its", "their", "them", "than", "out",
    "up", "other", "into", "some", "what", "only", "also", "may", "these", "could", "time", "two",
    "first", "do", "any", "my", "new", "over", "such", "like", "our", "most", "made", "after",
    "should", "must", "many", "then", "shall", "each", "those", "well", "between", "under", "how",
    "about", "just", "because", "used", "use", "make", "same", "through", "where", "your", "does",
    "while", "both", "without", "very", "here", "before", "every", "own", "work", "had", "year",
    "way", "even", "back", "good", "see", "get", "set", "file", "code", "please", "thanks", "help",
    "write", "want", "need", "know", "think", "example", "function", "data", "value", "return",
    // Spanish, Portuguese, French, Italian, German, Dutch
    "de", "la", "el", "en", "que", "los", "las", "del", "por", "con", "una", "para", "su", "se",
    "da", "em", "um", "uma", "os", "le", "les", "des", "et", "du", "est", "il", "di", "che", "per",
    "der", "die", "und", "das", "den", "zu", "ist", "von", "mit", "het", "van", "een",
    // code
    "self", "fn", "let", "mut", "pub", "impl", "struct", "enum", "match", "none", "true", "false",
    "null", "import", "class", "else", "elif", "def", "const", "static", "str", "string", "int",
    "len", "name", "type", "args", "result", "error", "ok", "err", "key", "list", "dict", "print",
    "raise", "try", "except", "async", "await", "var", "break", "continue", "yield", "lambda",
    "super", "object", "index", "line", "text", "number", "bool", "char", "usize", "option", "vec",
    "crate",
];

pub(super) const COMMON_LEN: usize = COMMON_WORDS.len();
pub(super) const COMMON_BITS: u32 = 11;
/// A multiplier under which every common word has a slot of its own (the table's builder
/// checks it): a lookup is one load and one compare. Found by trying random odd numbers; a
/// change to the word list may need a new one (the build fails until then).
const COMMON_MUL: u64 = 0xe539_6912_ba7c_f0a1;

pub(super) const fn common_slot(packed: u64) -> usize {
    (packed.wrapping_mul(COMMON_MUL) >> (64 - COMMON_BITS)) as usize
}

/// The common words packed like `Estimator::packed`, each in its own slot (a perfect hash,
/// built at compile time).
pub(super) const COMMON: [u64; 1 << COMMON_BITS] = {
    let mut table = [0u64; 1 << COMMON_BITS];
    let mut i = 0;
    while i < COMMON_LEN {
        let bytes = COMMON_WORDS[i].as_bytes();
        let mut w = 0u64;
        let mut j = 0;
        while j < bytes.len() && j < 8 {
            w |= (bytes[j] as u64) << (8 * j);
            j += 1;
        }
        let slot = common_slot(w);
        assert!(
            table[slot] == 0 || table[slot] == w,
            "two common words share a slot: find a new COMMON_MUL"
        );
        table[slot] = w;
        i += 1;
    }
    table
};

/// Whether `packed` (0: no short ASCII word) is a common word; no branches.
#[inline(always)]
pub(super) fn is_common(packed: u64) -> bool {
    let stored = COMMON.get(common_slot(packed)).copied().unwrap_or(0);
    (stored == packed) & (packed != 0)
}
