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
mod tests {
    use super::*;

    #[test]
    fn encodes_labels_in_the_stat_name() {
        assert_eq!(
            name(
                "tollgate_requests_total",
                &[
                    ("consumer", "team-a"),
                    ("model", "claude-3.5*"),
                    ("outcome", "admitted")
                ]
            ),
            "tollgate_requests_total.consumer.team-a.model.claude-3_5_.outcome.admitted"
        );
        assert_eq!(
            name("tollgate_global_degraded_total", &[]),
            "tollgate_global_degraded_total"
        );
        assert_eq!(name("m", &[("consumer", "")]), "m.consumer._");
    }

    #[test]
    fn keys_tell_label_sets_apart() {
        let m = "tollgate_tokens_total";
        let sets: &[&[(&str, &str)]] = &[
            &[],
            &[("consumer", "ab"), ("model", "c")],
            &[("consumer", "a"), ("model", "bc")],
            &[("consumer", "a"), ("model", "b"), ("type", "c")],
            &[("consumer", "a.b")],
            &[("consumer", "a_b")],
            &[("consumer", "")],
            &[("model", "")],
        ];
        let keys: std::collections::HashSet<u64> = sets.iter().map(|l| key(m, l)).collect();
        assert_eq!(keys.len(), sets.len());
        assert_ne!(key("a", &[]), key("b", &[]));
        assert_eq!(
            key(m, sets[1]),
            key(m, &[("consumer", "ab"), ("model", "c")])
        );
    }

    #[test]
    fn decimal_writes_what_to_string_does() {
        let mut buf = [0u8; 20];
        for v in [0, 7, 10, 99, 100, 4_000_000_000, u64::MAX - 1, u64::MAX] {
            assert_eq!(decimal(v, &mut buf), v.to_string());
        }
    }
}
