//! The configuration document as a tree ([`Node`]: object fields in order, repeated fields
//! kept) and the typed getters the parse walks it with; each names the field path of its
//! error (`limits[0].per: expected one of …, got a number`).

use super::{err, quote, ConfigError, Duration};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Whole numbers written as floats (`1e6`) are accepted up to 2^53, where f64 stays exact.
pub(super) const MAX_WHOLE_F64: f64 = 9_007_199_254_740_992.0;

pub(super) fn field_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain {
        key_path(parent, name)
    } else if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// The path of a free-form map key (`pricing["claude-*"]`).
pub(super) fn key_path(parent: &str, key: &str) -> String {
    format!("{parent}[{}]", quote(key))
}

pub(super) fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// An object whose fields have been checked against the allowed names.
pub(super) struct Obj<'a> {
    path: String,
    entries: &'a [(String, Node)],
}

impl<'a> Obj<'a> {
    /// Refuses a non-object, unknown fields and fields given twice.
    pub(super) fn new(
        node: &'a Node,
        path: &str,
        allowed: &[&str],
    ) -> Result<Obj<'a>, ConfigError> {
        let Node::Object(entries) = node else {
            return Err(err(
                path,
                format!("expected an object, got {}", node.kind()),
            ));
        };
        for (i, (name, _)) in entries.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(err(
                    &field_path(path, name),
                    format!("unknown field, expected one of {}", allowed.join(", ")),
                ));
            }
            if entries.iter().take(i).any(|(earlier, _)| earlier == name) {
                return Err(err(&field_path(path, name), "duplicate field"));
            }
        }
        Ok(Obj {
            path: path.to_string(),
            entries,
        })
    }

    /// The field's value; `null` counts as absent.
    pub(super) fn get(&self, name: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, Node::Null))
    }

    pub(super) fn path(&self, name: &str) -> String {
        field_path(&self.path, name)
    }
}

pub(super) fn as_str<'a>(node: &'a Node, path: &str) -> Result<&'a str, ConfigError> {
    match node {
        Node::String(s) => Ok(s),
        other => Err(err(
            path,
            format!("expected a string, got {}", other.kind()),
        )),
    }
}

pub(super) fn as_bool(node: &Node, path: &str) -> Result<bool, ConfigError> {
    match node {
        Node::Bool(b) => Ok(*b),
        other => Err(err(
            path,
            format!("expected true or false, got {}", other.kind()),
        )),
    }
}

pub(super) fn as_array<'a>(node: &'a Node, path: &str) -> Result<&'a [Node], ConfigError> {
    match node {
        Node::Array(items) => Ok(items),
        other => Err(err(
            path,
            format!("expected an array, got {}", other.kind()),
        )),
    }
}

/// `v` as `format!("{v}")` writes it (plain decimal, the shortest digits that read back as
/// `v`, no exponent) without linking core's float formatting (~18 KB of wasm, for error
/// messages only): the digits come from serde_json's float writer, which the filter links.
pub(super) fn display_f64(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v < 0.0 { "-inf" } else { "inf" }.into();
    }
    // serde_json writes `-1.5e-7`, `1e21`, `100.0`: digits, a point, an exponent.
    let json = serde_json::to_string(&v).unwrap_or_default();
    let unsigned = json.trim_start_matches('-');
    let (mantissa, exp) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().unwrap_or(0)),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    // Where the point goes in `digits`.
    let point = int.len() as i64 - (all.len() - digits.len()) as i64 + exp;
    let mut point = point;
    let mut digits = digits.trim_end_matches('0').to_string();
    // When `v` lies exactly halfway between two shortest candidates, serde_json picks the even
    // one and Display the one further from zero.
    if is_midpoint_above(v, &digits, point) {
        let up = digits
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_add(1)
            .to_string();
        if up.len() > digits.len() {
            point += 1;
        }
        digits = up.trim_end_matches('0').to_string();
    }
    let digits = digits.as_str();
    let mut out = String::with_capacity(digits.len() + 8);
    if v.is_sign_negative() {
        out.push('-');
    }
    let len = digits.len() as i64;
    if digits.is_empty() {
        out.push('0');
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(digits);
    } else if point >= len {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (point - len) as usize));
    } else {
        let (a, b) = digits.split_at(point as usize);
        out.push_str(a);
        out.push('.');
        out.push_str(b);
    }
    out
}

/// `|v|` is exactly `0.{digits}5 × 10^point` (the halfway point above `0.{digits} × 10^point`).
fn is_midpoint_above(v: f64, digits: &str, point: i64) -> bool {
    let bits = v.to_bits();
    let (m, e) = match (bits >> 52) & 0x7ff {
        0 => (bits & ((1 << 52) - 1), -1074),
        exp => ((bits & ((1 << 52) - 1)) | (1 << 52), exp as i64 - 1075),
    };
    if m == 0 {
        return false;
    }
    // |v| = odd · 2^e2; the midpoint = n · 10^j with n odd (it ends in 5), so they are equal
    // only if j == e2 and odd == n · 5^j (or odd · 5^-j == n).
    let (odd, e2) = (m >> m.trailing_zeros(), e + i64::from(m.trailing_zeros()));
    let Some(n) = digits
        .parse::<u64>()
        .ok()
        .and_then(|d| d.checked_mul(10)?.checked_add(5))
    else {
        return false;
    };
    let j = point - digits.len() as i64 - 1;
    let Ok(pow) = u32::try_from(j.unsigned_abs()) else {
        return false;
    };
    let five = 5u64.checked_pow(pow);
    j == e2
        && if j >= 0 {
            five.and_then(|f| n.checked_mul(f)) == Some(odd)
        } else {
            five.and_then(|f| odd.checked_mul(f)) == Some(n)
        }
}

pub(super) fn as_uint(node: &Node, path: &str) -> Result<u64, ConfigError> {
    match node {
        Node::Uint(v) => Ok(*v),
        Node::Int(v) => Err(err(
            path,
            format!("expected a non-negative whole number, got {v}"),
        )),
        Node::Float(v) if v.fract() == 0.0 && (0.0..=MAX_WHOLE_F64).contains(v) => Ok(*v as u64),
        Node::Float(v) => Err(err(
            path,
            format!(
                "expected a non-negative whole number, got {}",
                display_f64(*v)
            ),
        )),
        other => Err(err(
            path,
            format!("expected a whole number, got {}", other.kind()),
        )),
    }
}

pub(super) fn as_number(node: &Node, path: &str) -> Result<f64, ConfigError> {
    match node {
        Node::Uint(v) => Ok(*v as f64),
        Node::Int(v) => Ok(*v as f64),
        Node::Float(v) => Ok(*v),
        other => Err(err(
            path,
            format!("expected a number, got {}", other.kind()),
        )),
    }
}

pub(super) fn as_duration(node: &Node, path: &str) -> Result<Duration, ConfigError> {
    Duration::parse(as_str(node, path)?).map_err(|r| err(path, r))
}

/// One of a fixed set of strings, e.g. `expected one of second, minute, …, got "fortnight"`.
pub(super) fn one_of<T: Copy>(
    node: &Node,
    path: &str,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    if let Node::String(s) = node {
        if let Some(&(_, v)) = options.iter().find(|(name, _)| name == s) {
            return Ok(v);
        }
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    let got = match node {
        Node::String(s) => quote(s),
        other => other.kind().to_string(),
    };
    Err(err(
        path,
        format!("expected one of {}, got {got}", names.join(", ")),
    ))
}

/// A JSON document tree that keeps object fields in order and keeps repeated fields, so the
/// validation can report duplicates and `pricing` keeps its precedence order (serde_json's
/// `Value` does neither without its `preserve_order` feature).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    /// Non-negative integers.
    Uint(u64),
    /// Negative integers.
    Int(i64),
    Float(f64),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    /// What the node is, for "expected …, got …" reasons (never its content).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Uint(_) | Node::Int(_) | Node::Float(_) => "a number",
            Node::String(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(u64::try_from(v).map_or(Node::Int(v), Node::Uint))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Node>()? {
            entries.push(entry);
        }
        Ok(Node::Object(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}
