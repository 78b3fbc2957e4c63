//! The configuration's newtypes: durations, model globs, upstream secrets and client keys, each
//! with its own parsing, so no other module handles raw strings.

use super::quote;
use sha2::{Digest, Sha256};
use std::fmt;

/// A configured duration, in milliseconds. Written `"250ms"`, `"30s"`, `"5m"`, `"5h"`, `"1d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Duration {
    pub const fn from_millis(millis: u64) -> Self {
        Duration(millis)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded up.
    pub const fn secs_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }

    /// Parses `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d`; zero is refused.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "expected a duration like \"250ms\", \"30s\", \"5m\", \"5h\" or \"1d\", got {}",
                quote(text)
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let scale: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| "is too long".to_string())?;
        let millis = n
            .checked_mul(scale)
            .ok_or_else(|| "is too long".to_string())?;
        if millis == 0 {
            return Err("must be greater than zero".to_string());
        }
        Ok(Duration(millis))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact spelling, as the configuration would write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (scale, unit) in [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ] {
            if ms != 0 && ms % scale == 0 {
                return write!(f, "{}{unit}", ms / scale);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A model glob: `*` matches any run of characters, `?` exactly one; everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("a glob must not be empty".to_string());
        }
        if pattern.chars().any(char::is_control) {
            return Err("a glob must not contain control characters".to_string());
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches. Iterative, remembering only the last `*` to backtrack to, so it
    /// runs in O(pattern × text) at worst with no allocation (no exponential blow-up).
    pub fn matches(&self, text: &str) -> bool {
        let p = self.0.as_bytes();
        let t = text.as_bytes();
        let (mut pi, mut ti) = (0usize, 0usize);
        // (pattern index just after the last `*`, text index that `*` has swallowed up to)
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    pi += 1;
                    star = Some((pi, ti));
                    continue;
                }
                Some(b'?') => {
                    pi += 1;
                    ti += utf8_len_at(t, ti);
                    continue;
                }
                Some(c) if t.get(ti) == Some(c) => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((after_star, swallowed)) => {
                    // Let the `*` swallow one more character and retry the rest from there.
                    let next = swallowed + utf8_len_at(t, swallowed);
                    star = Some((after_star, next));
                    pi = after_star;
                    ti = next;
                }
                None => return false,
            }
        }
        p.get(pi..)
            .is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Length of the UTF-8 character starting at `i` (1 past the end), so `?` and `*` step over
/// whole characters and indices stay on character boundaries.
fn utf8_len_at(t: &[u8], i: usize) -> usize {
    match t.get(i) {
        Some(&b) if b >= 0xF0 => 4,
        Some(&b) if b >= 0xE0 => 3,
        Some(&b) if b >= 0xC0 => 2,
        _ => 1,
    }
}

/// An upstream credential. `Debug` and `Display` print a mask (`sk-ant-…x7Qa`), never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Public key prefixes of the providers, longest first; shown in masks because they only say
/// which kind of key it is.
pub(crate) const KNOWN_KEY_PREFIXES: &[&str] = &["sk-ant-", "sk-proj-", "sk-", "AIza"];

impl Secret {
    pub fn new(key: impl Into<String>) -> Secret {
        Secret(key.into())
    }

    /// The key itself: only for writing the credential header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `<known prefix>…<last 4>`; the last four only when at least 12 other characters stay
    /// hidden, so a short key is never half-revealed.
    pub fn mask(&self) -> String {
        let key = self.0.as_str();
        let prefix = KNOWN_KEY_PREFIXES
            .iter()
            .copied()
            .find(|p| key.starts_with(p) && key.len() > p.len())
            .unwrap_or("");
        let chars = key.chars().count();
        let mut out = String::with_capacity(prefix.len() + 8);
        out.push_str(prefix);
        out.push('…');
        if chars >= prefix.len() + 4 + 12 {
            out.extend(key.chars().skip(chars - 4));
        }
        out
    }
}

impl Secret {
    /// `text` with every occurrence of the key replaced by a mask of the same length (the
    /// known prefix, `*`s, the last four when at least 12 characters stay hidden), or `None`
    /// when the key does not occur. The same length lets a body whose `content-length` has
    /// already gone out be rewritten in place.
    pub fn redact(&self, text: &[u8]) -> Option<Vec<u8>> {
        let key = self.0.as_bytes();
        if key.is_empty() || text.len() < key.len() || !text.windows(key.len()).any(|w| w == key) {
            return None;
        }
        let prefix = KNOWN_KEY_PREFIXES
            .iter()
            .find(|p| key.starts_with(p.as_bytes()) && key.len() > p.len())
            .map_or(0, |p| p.len());
        let tail = if key.len() >= prefix + 4 + 12 { 4 } else { 0 };
        let mask: Vec<u8> = key
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i < prefix || i + tail >= key.len() {
                    *b
                } else {
                    b'*'
                }
            })
            .collect();
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        while at < text.len() {
            if text.get(at..at + key.len()) == Some(key) {
                out.extend_from_slice(&mask);
                at += key.len();
            } else {
                out.extend(text.get(at).copied());
                at += 1;
            }
        }
        Some(out)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.mask())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mask())
    }
}

/// A client or admin key, held only as its SHA-256 digest. Configured as `sha256:<64 hex>` or
/// as the plain key (hashed at load). Matching hashes the presented key once
/// ([`KeyMatcher::digest`]) and compares digests in constant time.
#[derive(Clone)]
pub struct KeyMatcher(pub(super) [u8; 32]);

impl KeyMatcher {
    /// The digest a presented key is compared by.
    pub fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    pub fn from_digest(digest: [u8; 32]) -> KeyMatcher {
        KeyMatcher(digest)
    }

    pub fn from_plain(key: &str) -> KeyMatcher {
        KeyMatcher(Self::digest(key))
    }

    /// `sha256:<64 hex digits>` or a plain key of printable ASCII without spaces. The reason
    /// never repeats the key.
    pub fn parse(text: &str) -> Result<KeyMatcher, String> {
        if let Some(hex) = text.strip_prefix("sha256:") {
            let mut digest = [0u8; 32];
            let bytes = hex.as_bytes();
            if bytes.len() != 64 {
                return Err("a sha256: key needs exactly 64 hex digits".to_string());
            }
            for (i, out) in digest.iter_mut().enumerate() {
                let hi = bytes.get(2 * i).copied().and_then(hex_value);
                let lo = bytes.get(2 * i + 1).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => *out = (hi << 4) | lo,
                    _ => return Err("a sha256: key needs exactly 64 hex digits".to_string()),
                }
            }
            return Ok(KeyMatcher(digest));
        }
        check_key_text(text)?;
        Ok(Self::from_plain(text))
    }

    /// Constant-time comparison with a presented key's digest.
    pub fn matches(&self, presented_digest: &[u8; 32]) -> bool {
        ct_eq(&self.0, presented_digest)
    }
}

impl PartialEq for KeyMatcher {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for KeyMatcher {}

impl fmt::Debug for KeyMatcher {
    /// Not even the digest: for a short plain key it would allow a brute-force search.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMatcher(…)")
    }
}

/// Equality whose time does not depend on where the inputs differ.
pub(super) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Keys travel in headers: printable ASCII, no spaces. The reason never repeats the key.
pub(super) fn check_key_text(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".to_string());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "a key must be printable ASCII without spaces or control characters".to_string(),
        );
    }
    Ok(())
}
