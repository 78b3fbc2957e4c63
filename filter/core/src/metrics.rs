//! Metric names. Wasm stats carry no labels, so each label is encoded in the name as
//! `tollgate_<metric>.<label>.<value>…` with values mapped to `[A-Za-z0-9_-]`; the shipped
//! Envoy configs carry the `stats_tags` that turn them back into Prometheus labels.

/// Appends `.label.value` to `name`, mapping every byte outside `[A-Za-z0-9_-]` to `_`.
fn push_label(name: &mut String, label: &str, value: &str) {
    name.push('.');
    name.push_str(label);
    name.push('.');
    if value.is_empty() {
        name.push('_');
    }
    for c in value.chars().take(64) {
        name.push(if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        });
    }
}

/// `metric` with its labels encoded in order.
pub fn name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut n = String::with_capacity(metric.len() + 16 * labels.len());
    n.push_str(metric);
    for (l, v) in labels {
        push_label(&mut n, l, v);
    }
    n
}

/// A 64-bit FNV-1a digest of `metric` and its raw labels, with a separator byte between
/// parts that no `&str` contains (0xff), so `("ab", "c")` and `("a", "bc")` differ. The hot
/// path looks a metric id up by this key instead of formatting [`name`] on every count.
pub fn key(metric: &str, labels: &[(&str, &str)]) -> u64 {
    use crate::store::{fnv1a64_more, FNV_START};
    let part = |h: u64, bytes: &[u8]| fnv1a64_more(fnv1a64_more(h, bytes), &[0xff]);
    labels
        .iter()
        .fold(part(FNV_START, metric.as_bytes()), |h, (l, v)| {
            part(part(h, l.as_bytes()), v.as_bytes())
        })
}

/// Every label a tollgate metric may carry, for the `stats_tags` of the Envoy configs.
pub const LABELS: &[&str] = &[
    "consumer", "model", "outcome", "account", "type", "reason", "code",
];

/// `v` in decimal, written into `buf` (no allocation on the response path).
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(i..).unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
