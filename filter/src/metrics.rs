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

/// Every label a tollgate metric may carry, for the `stats_tags` of the Envoy configs.
pub const LABELS: &[&str] = &[
    "consumer", "model", "outcome", "account", "type", "reason", "code",
];

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
}
