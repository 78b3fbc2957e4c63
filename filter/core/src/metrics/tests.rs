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
