#![cfg(test)]
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

// ---------------------------------------------------------------------------------------------
// Model labels
// ---------------------------------------------------------------------------------------------

use crate::store::MemStore;

fn cfg(json: &str) -> Config {
    crate::config::parse(json.as_bytes()).unwrap()
}

/// `labels.admits` with eligibility from `cfg` (no allow-list).
fn label<'m>(labels: &mut ModelLabels, store: &MemStore, cfg: &Config, model: &'m str) -> &'m str {
    if labels.admits(store, model, || eligible(cfg, None, model)) {
        model
    } else {
        OTHER_MODEL
    }
}

#[test]
fn a_model_is_its_own_label_until_the_process_has_max_models_then_other() {
    let c = cfg(r#"{"metrics":{"max_models":3}}"#);
    let store = MemStore::new();
    // Two workers of one Envoy: the bound is the process's, not each worker's.
    let (mut w1, mut w2) = (ModelLabels::new(3), ModelLabels::new(3));
    assert_eq!(
        label(&mut w1, &store, &c, "claude-haiku-4-5"),
        "claude-haiku-4-5"
    );
    assert_eq!(label(&mut w2, &store, &c, "gpt-4o-mini"), "gpt-4o-mini");
    assert_eq!(
        label(&mut w2, &store, &c, "claude-haiku-4-5"),
        "claude-haiku-4-5"
    );
    assert_eq!(label(&mut w1, &store, &c, "gpt-4.1"), "gpt-4.1");
    // The fourth distinct name, from either worker, is `other`; listed names stay labels.
    assert_eq!(label(&mut w2, &store, &c, "gpt-4o"), OTHER_MODEL);
    assert_eq!(label(&mut w1, &store, &c, "claude-sonnet-4-5"), OTHER_MODEL);
    assert_eq!(label(&mut w2, &store, &c, "gpt-4.1"), "gpt-4.1");
    assert_eq!(label(&mut w1, &store, &c, "gpt-4o-mini"), "gpt-4o-mini");
    // Once a worker knows the list is full, it asks shared data no more.
    let before = store.round_trips();
    for m in [
        "gpt-4o",
        "claude-sonnet-4-5",
        "gpt-4.1",
        "claude-haiku-4-5",
        "gpt-4o-mini",
    ] {
        label(&mut w1, &store, &c, m);
        label(&mut w2, &store, &c, m);
    }
    assert_eq!(store.round_trips(), before);
}

#[test]
fn names_no_glob_matches_are_other_and_cost_no_shared_data() {
    let c = cfg(
        r#"{"consumers":[{"name":"team-b","keys":["k-FAKE"],"models":["my-llm-*"]}],
            "pricing":{"house-model":{"input":1,"output":1}}}"#,
    );
    let store = MemStore::new();
    let mut w = ModelLabels::new(50);
    for i in 0..100 {
        let m = format!("rnd-{i}");
        assert_eq!(label(&mut w, &store, &c, &m), OTHER_MODEL);
    }
    assert_eq!(store.round_trips(), (0, 0));
    // The caller's allow-list makes a name eligible for that caller.
    let allow = c.consumers[0].models.as_deref();
    assert!(w.admits(&store, "my-llm-7b", || eligible(&c, allow, "my-llm-7b")));
    assert!(!eligible(&c, None, "my-llm-13b"));
    assert!(eligible(&c, None, "house-model"));
    // Too long, empty, or with a control character: never a label of its own.
    let long = "claude-haiku-4-".to_owned() + &"x".repeat(MODEL_NAME_CAP);
    for m in [long.as_str(), "", "claude-haiku-4\n5"] {
        assert!(!w.admits(&store, m, || true), "{m:?}");
    }
}

#[test]
fn configured_exact_names_are_listed_first_when_the_configuration_loads() {
    let c = cfg(
        r#"{"consumers":[{"name":"a","keys":["k-FAKE"],"models":["claude-*","gpt-4o-mini"]}],
            "pricing":{"house-model":{"input":1,"output":1},"gpt-5":{"input":1,"output":1}},
            "metrics":{"max_models":2}}"#,
    );
    let store = MemStore::new();
    prepare_models(&store, &c).unwrap();
    let (listed, _) = store.get(MODELS_KEY).unwrap();
    assert_eq!(listed.as_deref(), Some(&b"gpt-4o-mini\nhouse-model"[..]));
    let mut w = ModelLabels::new(c.max_models);
    assert_eq!(label(&mut w, &store, &c, "gpt-4o-mini"), "gpt-4o-mini");
    assert_eq!(label(&mut w, &store, &c, "claude-haiku-4-5"), OTHER_MODEL);
    // Loading again (another worker, a reload) lists nothing twice.
    prepare_models(&store, &c).unwrap();
    assert_eq!(store.get(MODELS_KEY).unwrap().0, listed);
    // With no exact names the key still exists: the key set is complete at load.
    let empty = MemStore::new();
    prepare_models(&empty, &cfg("{}")).unwrap();
    assert_eq!(empty.get(MODELS_KEY).unwrap().0.as_deref(), Some(&b""[..]));
}

#[test]
fn stat_names_keep_the_model_name_mapping_only_foreign_characters() {
    for (model, shown) in [
        ("claude-haiku-4-5", "claude-haiku-4-5"),
        ("claude-3.5-sonnet@2024", "claude-3_5-sonnet_2024"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("Qwen/Qwen2.5-7B", "Qwen_Qwen2_5-7B"),
        ("modèle", "mod_le"),
    ] {
        assert_eq!(
            name("tollgate_requests_total", &[("model", model)]),
            format!("tollgate_requests_total.model.{shown}")
        );
    }
}

#[test]
fn workers_taking_turns_never_overfill_the_list() {
    let c = cfg(r#"{"pricing":{"*":{"input":1,"output":1}},"metrics":{"max_models":5}}"#);
    let store = MemStore::new();
    let mut workers: Vec<ModelLabels> = (0..4).map(|_| ModelLabels::new(5)).collect();
    let mut own = std::collections::BTreeSet::new();
    for i in 0..40 {
        let m = format!("m{i}");
        let w = &mut workers[i % 4];
        if label(w, &store, &c, &m) != OTHER_MODEL {
            own.insert(m);
        }
    }
    assert_eq!(own.len(), 5);
    let (listed, _) = store.get(MODELS_KEY).unwrap();
    assert_eq!(
        String::from_utf8(listed.unwrap()).unwrap().lines().count(),
        5
    );
}

#[test]
fn max_models_is_read_from_the_configuration() {
    assert_eq!(cfg("{}").max_models, 50);
    assert_eq!(cfg(r#"{"metrics":{}}"#).max_models, 50);
    assert_eq!(cfg(r#"{"metrics":{"max_models":0}}"#).max_models, 0);
    for (json, path) in [
        (r#"{"metrics":{"max_models":1001}}"#, "metrics.max_models"),
        (r#"{"metrics":{"max_models":-1}}"#, "metrics.max_models"),
        (r#"{"metrics":{"models":3}}"#, "metrics.models"),
        (r#"{"metrics":3}"#, "metrics"),
    ] {
        let e = crate::config::parse(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, path, "{json}: {e}");
    }
    // 0: every model is `other`.
    let store = MemStore::new();
    let mut w = ModelLabels::new(0);
    assert!(!w.admits(&store, "gpt-4o", || true));
}

// ---------------------------------------------------------------------------------------------
// Series defined at load
// ---------------------------------------------------------------------------------------------

#[test]
fn every_reason_is_listed_once_in_order() {
    for (i, r) in REASONS.iter().enumerate() {
        assert_eq!(reason_index(*r), i);
    }
    let names: std::collections::HashSet<&str> = REASONS.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), REASONS.len());
}

#[test]
fn series_lists_what_a_configuration_defines_at_load() {
    let c = cfg(
        r#"{"consumers":[{"name":"team-a","keys":["k1-FAKE"]},{"name":"team-b","keys":["k2-FAKE"]}],
            "anonymous":{"limits":[]},
            "accounts":[{"name":"org-1","provider":"anthropic","key":"sk-ant-FAKE-1"},
                        {"name":"org-2","provider":"openai","key":"sk-FAKE-2"}]}"#,
    );
    let s = series(&c);
    let names: std::collections::HashSet<&str> = s.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names.len(), s.len(), "no series twice");
    for want in [
        "tollgate_global_degraded_total",
        "tollgate_reconcile_dropped_total",
        "tollgate_global_charges_total.outcome.sent",
        "tollgate_global_charges_total.outcome.dropped",
        "tollgate_affinity_total.outcome.hit",
        "tollgate_affinity_total.outcome.miss",
        "tollgate_affinity_total.outcome.broken",
        "tollgate_usage_fallbacks_total.reason.invalid_usage",
        "tollgate_failovers_total.account.org-1",
        "tollgate_failovers_total.account.org-2",
        "tollgate_rejections_total.consumer.team-a.reason.tokens",
        "tollgate_rejections_total.consumer.team-b.reason.not_found",
        "tollgate_rejections_total.consumer.anonymous.reason.requests",
        "tollgate_rejections_total.consumer.unknown.reason.auth",
        "tollgate_rejections_total.consumer.unknown.reason.unknown_consumer",
    ] {
        assert!(names.contains(want), "{want}");
    }
    let gauges: Vec<&str> = s
        .iter()
        .filter(|x| x.kind == Kind::Gauge)
        .map(|x| x.name.as_str())
        .collect();
    assert_eq!(
        gauges,
        [
            "tollgate_account_state.account.org-1",
            "tollgate_account_state.account.org-2"
        ]
    );
    let rejections = s
        .iter()
        .filter(|x| x.name.starts_with("tollgate_rejections_total."))
        .count();
    assert_eq!(
        rejections,
        4 * REASONS.len(),
        "team-a, team-b, anonymous, unknown"
    );
    assert!(s
        .iter()
        .any(|x| x.kind == Kind::Histogram && x.name == "tollgate_estimate_error_percent"));
    // No key anywhere.
    assert!(!s.iter().any(|x| x.name.contains("FAKE")));
}

#[test]
fn series_stay_bounded_for_a_huge_configuration() {
    let consumers: Vec<String> = (0..2000)
        .map(|i| format!(r#"{{"name":"c{i}","keys":["k{i}-FAKE"]}}"#))
        .collect();
    let c = cfg(&format!(r#"{{"consumers":[{}]}}"#, consumers.join(",")));
    let s = series(&c);
    assert_eq!(s.len(), MAX_SERIES);
    assert!(s
        .iter()
        .any(|x| x.name == "tollgate_rejections_total.consumer.c0.reason.auth"));
}

/// A careless client that sends a key as its model (a swapped variable), under an allow-list
/// or price glob that admits anything: the key would be a Prometheus label, a `top_models`
/// name and a row of the recent ring. A name that is a configured consumer or admin key, or
/// has a provider key's prefix, is never a label of its own.
#[test]
fn a_key_sent_as_the_model_is_never_a_label() {
    let c = cfg(r#"{"admin":{"path":"/tollgate","keys":["tg-FAKE-admin-9"]},
            "consumers":[{"name":"team-b","keys":["tg-FAKE-team-b-1"],"models":["*"]}],
            "pricing":{"*":{"input":1,"output":1}}}"#);
    let allow = c.consumers[0].models.as_deref();
    for key in [
        "tg-FAKE-team-b-1",
        "tg-FAKE-admin-9",
        "sk-ant-FAKE0-FAKEFAKEFAKEFAKE",
        "sk-proj-FAKEFAKEFAKEFAKE",
        "claude-sk-ant-FAKE0-FAKEFAKEFAKE",
        "AIza-FAKE-FAKEFAKEFAKE",
    ] {
        assert!(!eligible(&c, allow, key), "{key}");
        assert!(!eligible(&c, None, key), "{key}");
    }
    for model in [
        "claude-haiku-4-5",
        "gpt-4o-mini",
        "task-model-7b",
        "gemini-2.0-flash",
    ] {
        assert!(eligible(&c, allow, model), "{model}");
    }
}
