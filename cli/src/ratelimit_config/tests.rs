use super::*;
use yaml_rust2::{Yaml, YamlLoader};

/// `(unit, per, requests_per_unit)`.
type Rated = (String, String, i64);
/// `(key, value, rates)` of one top-level descriptor.
type Described = (String, Option<String>, Vec<Rated>);

fn generate(json: &str) -> Outcome {
    ratelimit_config("cfg.json", json.as_bytes())
}

/// The generated file as the service reads it: `(key, value, [(unit, per, requests_per_unit)])`.
fn descriptors(yaml: &str) -> (String, Vec<Described>) {
    let docs = YamlLoader::load_from_str(yaml).unwrap();
    let doc = &docs[0];
    let list = doc["descriptors"].as_vec().unwrap();
    let out = list
        .iter()
        .map(|d| {
            let units = d["descriptors"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|u| {
                    assert_eq!(u["key"].as_str(), Some("unit"));
                    (
                        u["value"].as_str().unwrap().to_string(),
                        u["rate_limit"]["unit"].as_str().unwrap().to_string(),
                        u["rate_limit"]["requests_per_unit"].as_i64().unwrap(),
                    )
                })
                .collect();
            (
                d["key"].as_str().unwrap().to_string(),
                d["value"].as_str().map(str::to_string),
                units,
            )
        })
        .collect();
    (doc["domain"].as_str().unwrap().to_string(), out)
}

fn t(unit: &str, per: &str, n: i64) -> (String, String, i64) {
    (unit.to_string(), per.to_string(), n)
}

#[test]
fn every_descriptor_the_filter_sends_gets_its_limit() {
    let json = r#"{
        "consumers": [
            {"name": "team-a", "keys": ["k-a"], "limits": [
                {"cost_usd": 25, "per": "day"}, {"requests": 120, "per": "minute"},
                {"tokens": 200000, "per": "minute"}, {"concurrent": 4}]},
            {"name": "team-b", "keys": ["k-b"]},
            {"name": "team-c", "keys": ["k-c"], "limits": [{"concurrent": 2}]}],
        "limits": [{"tokens": 20000, "per": "minute"}],
        "anonymous": {"limits": [{"requests": 5, "per": "hour"}]},
        "accounts": [
            {"name": "org-1", "provider": "anthropic", "key_env": "UNSET_FOR_SURE",
             "limits": [{"tokens": 400000, "per": "minute"}]},
            {"name": "org-2", "provider": "openai", "key": "sk-FAKE"}],
        "global": {"cluster": "ratelimit", "domain": "tollgate-prod"}}"#;
    let out = generate(json);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let (domain, d) = descriptors(&out.stdout);
    assert_eq!(domain, "tollgate-prod");
    let consumer = |v: Option<&str>| ("consumer".to_string(), v.map(str::to_string));
    assert_eq!(
        d,
        [
            // Units in the order the filter sends them: tokens, requests, cost_micros.
            (
                consumer(Some("team-a")).0,
                consumer(Some("team-a")).1,
                vec![
                    t("tokens", "minute", 200000),
                    t("requests", "minute", 120),
                    t("cost_micros", "day", 25_000_000)
                ]
            ),
            // team-b uses the defaults (the valueless entry); team-c has no global unit.
            (
                "consumer".into(),
                Some("anonymous".into()),
                vec![t("requests", "hour", 5)]
            ),
            ("consumer".into(), None, vec![t("tokens", "minute", 20000)]),
            (
                "account".into(),
                Some("org-1".into()),
                vec![t("tokens", "minute", 400000)]
            ),
        ]
    );
    // The keys play no part, and never appear.
    assert!(!out.stdout.contains("sk-FAKE"));
}

#[test]
fn a_second_window_of_a_unit_stays_local_and_a_note_says_which() {
    let json = r#"{"consumers": [{"name": "a", "keys": ["k"], "limits": [
        {"tokens": 1000, "per": "minute"}, {"input_tokens": 10, "per": "minute"},
        {"tokens": 50000, "per": "day", "window": "fixed"}]}],
        "global": {"cluster": "rl", "domain": "d"}}"#;
    let out = generate(json);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        descriptors(&out.stdout).1[0].2,
        [t("tokens", "minute", 1000)]
    );
    assert_eq!(
        out.stderr,
        "note: consumers[0].limits[1]: 10 input_tokens per minute stays local to each Envoy: \
         the global units are tokens, requests and cost\n\
         note: consumers[0].limits[2]: 50000 tokens per day stays local to each Envoy: the \
         rate-limit service holds one limit per descriptor, and consumers[0].limits[0] is the \
         global tokens limit\n"
    );
}

#[test]
fn a_limit_past_the_services_uint32_is_refused_with_its_field() {
    for (limit, what) in [
        (
            r#"{"tokens": 4294967296, "per": "day"}"#,
            "4294967296 tokens per day",
        ),
        (
            r#"{"cost_usd": 5000, "per": "month"}"#,
            "5000.00 USD per month",
        ),
    ] {
        let json =
            format!(r#"{{"limits": [{limit}], "global": {{"cluster": "rl", "domain": "d"}}}}"#);
        let out = generate(&json);
        assert_eq!(out.code, 1, "{limit}");
        assert!(
            out.stderr.starts_with(&format!(
                "limits[0]: {what} is more than the rate-limit service can count"
            )),
            "{}",
            out.stderr
        );
        assert_eq!(out.stdout, "");
    }
    let ok = r#"{"limits": [{"tokens": 4294967295, "per": "day"}], "global": {"cluster": "rl", "domain": "d"}}"#;
    assert_eq!(generate(ok).code, 0);
}

#[test]
fn names_that_yaml_would_misread_are_quoted() {
    for name in ["a: b", "#x", "yes", "1e3", "\"q\"", "-", "null", "x\\y"] {
        let json = format!(
            r#"{{"consumers": [{{"name": {}, "keys": ["k"], "limits": [{{"requests": 1, "per": "second"}}]}}],
                "global": {{"cluster": "rl", "domain": {}}}}}"#,
            serde_json::to_string(name).unwrap(),
            serde_json::to_string(name).unwrap()
        );
        let out = generate(&json);
        if out.code != 0 {
            // A name the filter itself refuses is the filter's error, not a bad file.
            assert!(
                out.stderr.starts_with("consumers[0].name"),
                "{name:?}: {}",
                out.stderr
            );
            continue;
        }
        let (domain, d) = descriptors(&out.stdout);
        assert_eq!(domain, name);
        assert_eq!(d[0].1.as_deref(), Some(name), "{name:?}");
    }
}

#[test]
fn no_global_section_or_a_bad_configuration_is_an_error() {
    let out = generate(r#"{"limits": [{"tokens": 1, "per": "minute"}]}"#);
    assert_eq!(out.code, 1);
    assert!(out
        .stderr
        .starts_with("cfg.json: no configuration with a \"global\" section"));
    let out = generate(r#"{"limits": [{"tokens": 1, "per": "fortnight"}]}"#);
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("limits[0].per: "), "{}", out.stderr);
}

#[test]
fn an_envoy_file_merges_its_filters_of_one_domain_and_refuses_two_domains() {
    let wasm = |json: &str| {
        format!(
            "      - name: envoy.filters.http.wasm\n        typed_config:\n          \
             \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n          \
             config:\n            name: tollgate\n            configuration:\n              \
             \"@type\": type.googleapis.com/google.protobuf.StringValue\n              \
             value: '{json}'\n"
        )
    };
    let a = r#"{"limits": [{"tokens": 5, "per": "minute"}], "global": {"cluster": "rl", "domain": "d"}}"#;
    let b = r#"{"consumers": [{"name": "x", "keys": ["k"], "limits": [{"requests": 1, "per": "second"}]}], "limits": [{"tokens": 5, "per": "minute"}], "global": {"cluster": "rl", "domain": "d"}}"#;
    let doc = |x: &str, y: &str| {
        format!(
            "static_resources:\n  listeners:\n  - name: l\n    http_filters:\n{}{}",
            wasm(x),
            wasm(y)
        )
    };
    let out = ratelimit_config("e.yaml", doc(a, b).as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, d) = descriptors(&out.stdout);
    assert_eq!(d.len(), 2, "{}", out.stdout);
    // Another domain, or other limits for the same descriptor: refused.
    for (other, want) in [
        (b.replace("\"d\"", "\"e\""), "global.domain: \"e\""),
        (
            b.replace("\"tokens\": 5", "\"tokens\": 6"),
            "its global limits differ",
        ),
    ] {
        let out = ratelimit_config("e.yaml", doc(a, &other).as_bytes());
        assert_eq!(out.code, 1, "{want}");
        assert!(out.stderr.contains(want), "{}", out.stderr);
    }
}

#[test]
fn the_output_is_yaml_the_service_reads_with_one_limit_per_descriptor() {
    let json = r#"{"consumers": [{"name": "a", "keys": ["k"], "limits": [{"tokens": 9, "per": "month"}]}],
        "global": {"cluster": "rl", "domain": "d"}}"#;
    let out = generate(json);
    let docs = YamlLoader::load_from_str(&out.stdout).unwrap();
    assert_eq!(docs.len(), 1);
    let Yaml::Hash(top) = &docs[0] else { panic!() };
    let keys: Vec<&str> = top.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(keys, ["domain", "descriptors"]);
}
