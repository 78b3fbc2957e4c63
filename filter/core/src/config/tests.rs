#![cfg(test)]
use super::newtypes::ct_eq;
use super::*;
use crate::api::Api;
use crate::limits::{LimitKind, Per, WindowKind};

#[test]
fn redaction_keeps_the_length_and_hides_every_occurrence() {
    let key = "sk-proj-FAKE-redaction-test-not-a-key-BBBB";
    let s = Secret::new(key);
    let text = format!("{{\"message\":\"bad key {key}\",\"again\":\"{key}\"}}");
    let out = String::from_utf8(s.redact(text.as_bytes()).unwrap()).unwrap();
    assert_eq!(out.len(), text.len());
    assert!(!out.contains(key));
    assert!(out.contains("sk-proj-*****"));
    assert!(out.contains("*BBBB\""));
    assert_eq!(s.redact(b"nothing here"), None);
    let short = Secret::new("abc123");
    assert_eq!(short.redact(b"[abc123]").unwrap(), b"[******]");
}
use proptest::prelude::{prop_assert_eq, proptest};

const TEST_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const ADMIN_SHA: &str = "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918";
const K1_SHA: &str = "6ab9f1eb8f7d3388f4f9d586f66e99fd54080df2c446f0e58668b09c08a16dd0";

fn test_env(name: &str) -> Option<String> {
    match name {
        "ANTHROPIC_KEY_1" => Some("sk-ant-FAKE00-AAAAAAAAAAAAAAAAAAAAx7Qa\n".to_string()),
        "ANTHROPIC_KEY_2" => Some("sk-ant-FAKE00-BBBBBBBBBBBBBBBBBBBBzzzz".to_string()),
        "EMPTY_KEY" => Some("  \n".to_string()),
        "SPACED_KEY" => Some("sk-ant bad key".to_string()),
        _ => None,
    }
}

fn parse_test(json: &str) -> Result<Config, ConfigError> {
    parse_with_env(json.as_bytes(), &test_env)
}

fn spec_sample() -> String {
    r#"{
          "stage": "downstream",
          "consumers": [
            { "name": "team-a",
              "keys": ["sha256:TEST_SHA", "plain-secret-key"],
              "limits": [ {"tokens": 100000, "per": "minute"},
                          {"requests": 60, "per": "minute"},
                          {"tokens": 2000000, "per": "day", "window": "fixed"},
                          {"cost_usd": 25.0, "per": "day"},
                          {"concurrent": 4} ],
              "models": ["claude-*", "gpt-4o-mini"] }
          ],
          "consumer_header": null,
          "anonymous": null,
          "limits": [ {"tokens": 50000, "per": "minute"} ],
          "accounts": [
            { "name": "org-1", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_1" },
            { "name": "org-2", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_2", "weight": 2,
              "limits": [ {"tokens": 400000, "per": "minute"}, {"concurrent": 20} ] },
            { "name": "vllm", "provider": "openai", "key": "token-abc",
              "headers": {"x-tenant": "blue"}, "route": "vllm-cluster" }
          ],
          "selection": { "strategy": "least_loaded",
                         "affinity": {"header": "x-session-id", "conversation": true, "ttl": "5h"} },
          "global": { "cluster": "ratelimit", "domain": "tollgate", "timeout": "50ms",
                      "failure_mode": "allow" },
          "estimate": { "output_reserve": 1024 },
          "pricing": { "claude-3-5-haiku-*": {"input": 0.8, "output": 4.0, "cache_write": 1.0, "cache_read": 0.08} },
          "admin": { "path": "/tollgate", "keys": ["sha256:ADMIN_SHA"] }
        }"#
        .replace("TEST_SHA", TEST_SHA)
        .replace("ADMIN_SHA", ADMIN_SHA)
}

/// Asserts what a good configuration parsed to.
type Check = fn(&Config);

fn rate(kind: LimitKind, amount: u64, per: Per) -> Limit {
    Limit::Rate {
        kind,
        amount,
        per,
        window: WindowKind::Sliding,
    }
}

#[test]
fn parses_the_spec_sample() {
    let cfg = parse_test(&spec_sample()).unwrap();
    assert_eq!(cfg.stage, Stage::Downstream);
    assert_eq!(
        cfg.limits,
        vec![rate(LimitKind::Tokens, 50_000, Per::Minute)]
    );

    let team = &cfg.consumers[0];
    assert_eq!(team.name, "team-a");
    assert!(!team.default_limits);
    assert!(team.has_key(&KeyMatcher::digest("test")));
    assert!(team.has_key(&KeyMatcher::digest("plain-secret-key")));
    assert!(!team.has_key(&KeyMatcher::digest("other")));
    assert_eq!(
        team.limits,
        vec![
            rate(LimitKind::Tokens, 100_000, Per::Minute),
            rate(LimitKind::Requests, 60, Per::Minute),
            Limit::Rate {
                kind: LimitKind::Tokens,
                amount: 2_000_000,
                per: Per::Day,
                window: WindowKind::Fixed
            },
            rate(LimitKind::CostUsd, 25_000_000, Per::Day),
            Limit::Concurrent(4),
        ]
    );
    let glob_of = |model| team.model_glob(model).map(Glob::as_str);
    assert_eq!(glob_of("claude-sonnet-4-5"), Some("claude-*"));
    assert_eq!(glob_of("gpt-4o-mini"), Some("gpt-4o-mini"));
    assert_eq!(glob_of("gpt-4o"), None);
    assert!(team.allows_model("gpt-4o-mini") && !team.allows_model("gpt-4o"));

    assert_eq!(cfg.consumer_header, None);
    assert_eq!(cfg.anonymous, None);

    let [org1, org2, vllm] = &cfg.accounts[..] else {
        panic!("three accounts")
    };
    assert_eq!(org1.provider, Api::Anthropic);
    assert_eq!(org1.key.expose(), "sk-ant-FAKE00-AAAAAAAAAAAAAAAAAAAAx7Qa");
    assert_eq!((org1.weight, org1.limits.len()), (1, 0));
    assert_eq!(org2.weight, 2);
    assert_eq!(
        org2.limits,
        vec![
            rate(LimitKind::Tokens, 400_000, Per::Minute),
            Limit::Concurrent(20)
        ]
    );
    assert_eq!(vllm.provider, Api::OpenAi);
    assert_eq!(vllm.key.expose(), "token-abc");
    assert_eq!(
        vllm.headers,
        vec![("x-tenant".to_string(), "blue".to_string())]
    );
    assert_eq!(vllm.route.as_deref(), Some("vllm-cluster"));

    assert_eq!(cfg.selection.strategy, Strategy::LeastLoaded);
    let affinity = cfg.selection.affinity.as_ref().unwrap();
    assert_eq!(affinity.header.as_deref(), Some("x-session-id"));
    assert!(affinity.conversation);
    assert_eq!(affinity.ttl.millis(), 5 * 3_600_000);
    assert_eq!(affinity.max_sessions, DEFAULT_MAX_SESSIONS);

    let global = cfg.global.as_ref().unwrap();
    assert_eq!(global.cluster, "ratelimit");
    assert_eq!(global.domain, "tollgate");
    assert_eq!(global.timeout.millis(), 50);
    assert_eq!(global.failure_mode, FailureMode::Allow);

    assert_eq!(cfg.estimate.output_reserve, 1024);
    let (glob, price) = cfg.price_for("claude-3-5-haiku-20241022").unwrap();
    assert_eq!(glob.as_str(), "claude-3-5-haiku-*");
    assert_eq!(price.cache_read, 0.08);
    assert_eq!(cfg.pricing.len(), 1 + crate::pricing::BUILTIN_PRICES.len());

    let admin = cfg.admin.as_ref().unwrap();
    assert_eq!(admin.path, "/tollgate");
    assert!(admin.accepts(&KeyMatcher::digest("admin")));
    assert!(!admin.accepts(&KeyMatcher::digest("test")));
    assert_eq!(cfg.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn empty_configurations_mean_the_defaults() {
    for json in [
        "{}",
        "",
        " \n\t",
        r#"{"consumer_header": null, "anonymous": null}"#,
    ] {
        let cfg = parse_test(json).unwrap();
        assert_eq!(cfg, Config::default(), "{json:?}");
    }
    let cfg = Config::default();
    assert_eq!(cfg.stage, Stage::Downstream);
    assert!(cfg.consumers.is_empty() && cfg.accounts.is_empty() && cfg.limits.is_empty());
    assert_eq!(cfg.selection.strategy, Strategy::LeastLoaded);
    assert_eq!(cfg.estimate.output_reserve, 1024);
    assert_eq!(cfg.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(cfg.max_sessions(), 65_536);
    assert!(cfg.admin.is_none() && cfg.global.is_none() && cfg.anonymous.is_none());
    assert_eq!(cfg.pricing.len(), crate::pricing::BUILTIN_PRICES.len());
}

#[test]
fn accepts_each_good_configuration() {
    let good: &[(&str, Check)] = &[
        (
            r#"{"consumer_header": "X-User", "consumers": [{"name": "svc.a_1"}],
                    "limits": [{"requests": 10, "per": "second"}]}"#,
            |c| {
                assert_eq!(c.consumer_header.as_deref(), Some("x-user"));
                assert!(c.consumers[0].keys.is_empty());
                assert!(c.consumers[0].default_limits);
                assert_eq!(c.consumers[0].limits, c.limits);
                assert!(c.consumers[0].allows_model("anything"));
                assert_eq!(c.consumers[0].model_glob("anything"), None);
            },
        ),
        (
            r#"{"consumer_header": "x-user", "consumers": [{"name": "a", "keys": ["k1"], "limits": []}]}"#,
            |c| {
                assert!(
                    c.consumers[0].default_limits
                        && c.consumers[0].has_key(&KeyMatcher::digest("k1"))
                )
            },
        ),
        (
            r#"{"anonymous": {}, "limits": [{"input_tokens": 7, "per": "hour"}]}"#,
            |c| {
                let a = c.anonymous.as_ref().unwrap();
                assert!(a.default_limits);
                assert_eq!(a.limits, vec![rate(LimitKind::InputTokens, 7, Per::Hour)]);
            },
        ),
        (
            r#"{"anonymous": {"limits": [{"output_tokens": 1e6, "per": "month", "window": "fixed"}]}}"#,
            |c| {
                let a = c.anonymous.as_ref().unwrap();
                assert!(!a.default_limits);
                assert_eq!(
                    a.limits,
                    vec![Limit::Rate {
                        kind: LimitKind::OutputTokens,
                        amount: 1_000_000,
                        per: Per::Month,
                        window: WindowKind::Fixed
                    }]
                );
            },
        ),
        (
            r#"{"stage": "upstream", "accounts": [
                    {"name": "g", "provider": "gemini", "key": "AIza-FAKE-test-key",
                     "headers": {"X-Goog-User-Project": "p1", "anthropic-version": "2023-06-01"}}]}"#,
            |c| {
                assert_eq!(c.stage, Stage::Upstream);
                assert_eq!(c.accounts[0].provider, Api::Gemini);
                assert_eq!(c.accounts[0].headers[0].0, "x-goog-user-project");
                assert_eq!(c.accounts[0].route, None);
            },
        ),
        (
            r#"{"accounts": [], "limits": [{"cost_usd": 0.5, "per": "hour"}, {"cost_usd": 0.0000015, "per": "second"}]}"#,
            |c| {
                assert!(c.accounts.is_empty());
                assert_eq!(c.limits[0], rate(LimitKind::CostUsd, 500_000, Per::Hour));
                assert_eq!(c.limits[1], rate(LimitKind::CostUsd, 2, Per::Second));
            },
        ),
        (
            r#"{"selection": {"strategy": "priority", "affinity": {"max_sessions": 1048576, "ttl": "1d"}},
                    "global": {"cluster": "rl"}}"#,
            |c| {
                assert_eq!(c.selection.strategy, Strategy::Priority);
                assert_eq!(c.max_sessions(), 1_048_576);
                let a = c.selection.affinity.as_ref().unwrap();
                assert_eq!(
                    (a.header.as_deref(), a.conversation, a.ttl.millis()),
                    (None, false, 86_400_000)
                );
                let g = c.global.as_ref().unwrap();
                assert_eq!(
                    (g.domain.as_str(), g.timeout.millis(), g.failure_mode),
                    ("tollgate", 50, FailureMode::Allow)
                );
            },
        ),
        (
            r#"{"selection": {"strategy": "round_robin"}, "global": {"cluster": "rl", "domain": "d", "timeout": "2s", "failure_mode": "deny"}}"#,
            |c| {
                assert_eq!(c.selection.strategy, Strategy::RoundRobin);
                let g = c.global.as_ref().unwrap();
                assert_eq!(
                    (g.domain.as_str(), g.timeout.millis(), g.failure_mode),
                    ("d", 2000, FailureMode::Deny)
                );
            },
        ),
        (
            r#"{"admin": {"keys": ["admin"]}, "passthrough_paths": ["/v1/files", "/v1/batches"],
                    "max_body_bytes": 1073741824, "estimate": {"output_reserve": 0}}"#,
            |c| {
                let admin = c.admin.as_ref().unwrap();
                assert_eq!(admin.path, "/tollgate");
                assert!(admin.accepts(&KeyMatcher::digest("admin")));
                let prefixes: Vec<(&str, Api)> = c
                    .passthrough_paths
                    .iter()
                    .map(|p| (p.prefix.as_str(), p.api))
                    .collect();
                assert_eq!(
                    prefixes,
                    vec![("/v1/files", Api::OpenAi), ("/v1/batches", Api::OpenAi)]
                );
                assert_eq!(c.max_body_bytes, 1 << 30);
                assert_eq!(c.estimate.output_reserve, 0);
            },
        ),
        (
            r#"{"pricing": {"gpt-4o*": {"input": 1, "output": 2}, "my-model": {"input": 0, "output": 0, "cache_read": 0}}}"#,
            |c| {
                let (g, p) = c.price_for("gpt-4o-mini").unwrap();
                assert_eq!(g.as_str(), "gpt-4o*");
                assert_eq!(
                    *p,
                    Price {
                        input: 1.0,
                        output: 2.0,
                        cache_write: 1.0,
                        cache_read: 1.0
                    }
                );
                assert_eq!(c.pricing[1].0.as_str(), "my-model");
            },
        ),
    ];
    for (json, check) in good {
        match parse_test(json) {
            Ok(cfg) => check(&cfg),
            Err(e) => panic!("{json}\nrejected: {e}"),
        }
    }
}

#[test]
fn rejects_each_bad_configuration_naming_the_field() {
    let top_fields = "stage, consumers, consumer_header, anonymous, limits, accounts, \
                          selection, global, estimate, pricing, admin, passthrough_paths, \
                          max_body_bytes, strip_request_headers, consumer_claim, lease_ttl, metrics, \
                          access_log_facts";
    let acct = |extra: &str| {
        format!(r#"{{"accounts": [{{"name": "a", "provider": "openai", "key": "t"{extra}}}]}}"#)
    };
    let bad: Vec<(String, String)> = vec![
            // document
            ("{\"stage\":".into(), "configuration is not valid JSON: EOF while parsing a value at line 1 column 9".into()),
            ("[]".into(), "configuration must be a JSON object, got an array".into()),
            (r#"{"stage": "upstream", "stage": "downstream"}"#.into(), "stage: duplicate field".into()),
            // unknown fields, at every depth
            (r#"{"stages": "upstream"}"#.into(), format!("stages: unknown field, expected one of {top_fields}")),
            (r#"{"a b": 1}"#.into(), format!("[\"a b\"]: unknown field, expected one of {top_fields}")),
            (
                r#"{"consumers": [{"name": "a", "keys": ["k"], "limits": [{"tokens": 1, "per": "minute", "burst": 2}]}]}"#.into(),
                "consumers[0].limits[0].burst: unknown field, expected one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent, per, window".into(),
            ),
            (r#"{"selection": {"affinity": {"ttl": "5h", "size": 3}}}"#.into(), "selection.affinity.size: unknown field, expected one of header, conversation, ttl, max_sessions".into()),
            (r#"{"anonymous": {"limit": []}}"#.into(), "anonymous.limit: unknown field, expected one of limits".into()),
            (r#"{"pricing": {"m*": {"input": 1, "output": 2, "cached": 1}}}"#.into(), "pricing[\"m*\"].cached: unknown field, expected one of input, output, cache_write, cache_read".into()),
            (acct(r#", "region": "eu""#), "accounts[0].region: unknown field, expected one of name, provider, key, key_env, headers, route, weight, limits, disable_for".into()),
            // limits grammar
            (
                r#"{"consumers": [{"name": "a", "keys": ["k"]}, {"name": "b", "keys": ["k2"], "limits": [{"tokens": 5, "per": "fortnight"}]}]}"#.into(),
                "consumers[1].limits[0].per: expected one of second, minute, hour, day, month, got \"fortnight\"".into(),
            ),
            (r#"{"limits": [{"tokens": 5, "per": 60}]}"#.into(), "limits[0].per: expected one of second, minute, hour, day, month, got a number".into()),
            (r#"{"limits": [{"tokens": 5, "window": "fixed"}]}"#.into(), "limits[0].per: missing required field".into()),
            (r#"{"limits": [{"concurrent": 2, "window": "fixed"}]}"#.into(), "limits[0].window: not allowed with concurrent".into()),
            (r#"{"limits": [{"concurrent": 2, "per": "minute"}]}"#.into(), "limits[0].per: not allowed with concurrent".into()),
            (r#"{"limits": [{"concurrent": 0}]}"#.into(), "limits[0].concurrent: must be between 1 and 4294967295, got 0".into()),
            (r#"{"limits": [{"tokens": 5, "requests": 3, "per": "minute"}]}"#.into(), "limits[0]: a limit has exactly one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent, got tokens and requests".into()),
            (r#"{"limits": [{"per": "minute"}]}"#.into(), "limits[0]: expected one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent".into()),
            (r#"{"limits": [{"tokens": 0, "per": "minute"}]}"#.into(), "limits[0].tokens: must be greater than zero".into()),
            (r#"{"limits": [{"requests": 1.5, "per": "minute"}]}"#.into(), "limits[0].requests: expected a non-negative whole number, got 1.5".into()),
            (r#"{"limits": [{"tokens": -1, "per": "minute"}]}"#.into(), "limits[0].tokens: expected a non-negative whole number, got -1".into()),
            (r#"{"limits": [{"tokens": "5", "per": "minute"}]}"#.into(), "limits[0].tokens: expected a whole number, got a string".into()),
            (r#"{"limits": [{"cost_usd": 0, "per": "day"}]}"#.into(), "limits[0].cost_usd: must be a positive amount of USD, got 0".into()),
            (r#"{"limits": [{"cost_usd": 0.0000001, "per": "day"}]}"#.into(), "limits[0].cost_usd: must be at least 0.000001 (one micro-dollar)".into()),
            (r#"{"limits": [{"tokens": 5, "per": "minute", "window": "rolling"}]}"#.into(), "limits[0].window: expected one of sliding, fixed, got \"rolling\"".into()),
            (r#"{"limits": {"tokens": 5}}"#.into(), "limits: expected an array, got an object".into()),
            (r#"{"limits": [5]}"#.into(), "limits[0]: expected an object, got a number".into()),
            // durations
            (r#"{"selection": {"affinity": {"ttl": "5 min"}}}"#.into(), "selection.affinity.ttl: expected a duration like \"250ms\", \"30s\", \"5m\", \"5h\" or \"1d\", got \"5 min\"".into()),
            (r#"{"global": {"cluster": "rl", "timeout": "0s"}}"#.into(), "global.timeout: must be greater than zero".into()),
            (r#"{"global": {"cluster": "rl", "timeout": 50}}"#.into(), "global.timeout: expected a string, got a number".into()),
            // consumers
            (r#"{"consumers": [{"name": "a", "keys": ["k1"]}, {"name": "a", "keys": ["k2"]}]}"#.into(), "consumers[1].name: duplicate consumer name \"a\"".into()),
            (
                format!(r#"{{"consumers": [{{"name": "a", "keys": ["k1"]}}, {{"name": "b", "keys": ["k2", "sha256:{K1_SHA}"]}}]}}"#),
                "consumers[1].keys[1]: key is already used by consumer \"a\"".into(),
            ),
            (r#"{"consumers": [{"name": "a", "keys": ["k1", "k1"]}]}"#.into(), "consumers[0].keys[1]: key is already used by consumer \"a\"".into()),
            (r#"{"consumers": [{"name": "team a", "keys": ["k"]}]}"#.into(), "consumers[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"team a\"".into()),
            (r#"{"consumers": [{"name": "", "keys": ["k"]}]}"#.into(), "consumers[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"\"".into()),
            (format!(r#"{{"consumers": [{{"name": "{}", "keys": ["k"]}}]}}"#, "x".repeat(65)), format!("consumers[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"{}\"", "x".repeat(65))),
            (r#"{"consumers": [{"keys": ["k"]}]}"#.into(), "consumers[0].name: missing required field".into()),
            (r#"{"consumers": [{"name": "a"}]}"#.into(), "consumers[0].keys: a consumer needs at least one key unless consumer_header or consumer_claim is set".into()),
            (r#"{"consumers": [{"name": "a", "keys": []}]}"#.into(), "consumers[0].keys: a consumer needs at least one key unless consumer_header or consumer_claim is set".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["sha256:abc"]}]}"#.into(), "consumers[0].keys[0]: a sha256: key needs exactly 64 hex digits".into()),
            (format!(r#"{{"consumers": [{{"name": "a", "keys": ["sha256:{}"]}}]}}"#, "g".repeat(64)), "consumers[0].keys[0]: a sha256: key needs exactly 64 hex digits".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["my key"]}]}"#.into(), "consumers[0].keys[0]: a key must be printable ASCII without spaces or control characters".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["k"], "models": []}]}"#.into(), "consumers[0].models: must not be empty (leave it out to allow every model)".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["k"], "models": [""]}]}"#.into(), "consumers[0].models[0]: a glob must not be empty".into()),
            (r#"{"anonymous": {}, "consumers": [{"name": "anonymous", "keys": ["k"]}]}"#.into(), "consumers[0].name: \"anonymous\" is reserved for requests without a key while anonymous is set".into()),
            (r#"{"consumer_header": "x user"}"#.into(), "consumer_header: header name has an invalid character ' '".into()),
            (r#"{"consumer_header": ":authority"}"#.into(), "consumer_header: header name has an invalid character ':'".into()),
            (r#"{"anonymous": true}"#.into(), "anonymous: expected an object, got a boolean".into()),
            // stage and accounts
            (r#"{"stage": "sidecar"}"#.into(), "stage: expected one of downstream, upstream, got \"sidecar\"".into()),
            (r#"{"stage": "upstream", "accounts": [{"name": "v", "provider": "openai", "key": "t", "route": "c"}]}"#.into(), "accounts[0].route: not allowed with stage upstream (routing has already happened there)".into()),
            (acct(r#", "route": "c\r\nx-evil: 1""#), "accounts[0].route: must not contain control characters such as CR, LF or NUL".into()),
            (acct(r#", "route": """#), "accounts[0].route: must not be empty".into()),
            (acct(r#", "headers": {"x-tenant": "blue\nx-evil: 1"}"#), "accounts[0].headers[\"x-tenant\"]: must not contain control characters such as CR, LF or NUL".into()),
            (acct(r#", "headers": {"x-tenant": "a\u0000b"}"#), "accounts[0].headers[\"x-tenant\"]: must not contain control characters such as CR, LF or NUL".into()),
            (acct(r#", "headers": {"x tenant": "blue"}"#), "accounts[0].headers[\"x tenant\"]: header name has an invalid character ' '".into()),
            (acct(r#", "headers": {"x-a\r\nb": "blue"}"#), "accounts[0].headers[\"x-a\\r\\nb\"]: header name has an invalid character '\\r'".into()),
            (acct(r#", "headers": {"Host": "x"}"#), "accounts[0].headers[\"Host\"]: this header is set by tollgate itself".into()),
            (acct(r#", "headers": {"Authorization": "Bearer x"}"#), "accounts[0].headers[\"Authorization\"]: this header is set by tollgate itself".into()),
            (acct(r#", "headers": {"x-t": 1}"#), "accounts[0].headers[\"x-t\"]: expected a string, got a number".into()),
            (acct(r#", "weight": 0"#), "accounts[0].weight: must be between 1 and 1000000, got 0".into()),
            (acct(r#", "key_env": "X""#), "accounts[0]: set only one of key and key_env".into()),
            (r#"{"accounts": [{"name": "a", "provider": "openai"}]}"#.into(), "accounts[0]: needs key or key_env".into()),
            (r#"{"accounts": [{"name": "a", "provider": "azure", "key": "t"}]}"#.into(), "accounts[0].provider: expected one of anthropic, openai, gemini, got \"azure\"".into()),
            (r#"{"accounts": [{"name": "a", "key": "t"}]}"#.into(), "accounts[0].provider: missing required field".into()),
            (r#"{"accounts": [{"name": "a", "provider": "openai", "key": "t"}, {"name": "a", "provider": "openai", "key": "u"}]}"#.into(), "accounts[1].name: duplicate account name \"a\"".into()),
            (r#"{"accounts": [{"name": "a/b", "provider": "openai", "key": "t"}]}"#.into(), "accounts[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"a/b\"".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_9"}]}"#.into(), "accounts[0].key_env: environment variable ANTHROPIC_KEY_9 is not set in the VM (vm_config.environment_variables.host_env_keys)".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "EMPTY_KEY"}]}"#.into(), "accounts[0].key_env: environment variable EMPTY_KEY is not set in the VM (vm_config.environment_variables.host_env_keys)".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "SPACED_KEY"}]}"#.into(), "accounts[0].key_env: environment variable SPACED_KEY: a key must be printable ASCII without spaces or control characters".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key": "sk-ant secret"}]}"#.into(), "accounts[0].key: a key must be printable ASCII without spaces or control characters".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key": 12345}]}"#.into(), "accounts[0].key: expected a string, got a number".into()),
            // selection, global, estimate
            (r#"{"selection": {"strategy": "random"}}"#.into(), "selection.strategy: expected one of least_loaded, round_robin, priority, got \"random\"".into()),
            (r#"{"selection": {"affinity": {"conversation": "yes"}}}"#.into(), "selection.affinity.conversation: expected true or false, got a string".into()),
            (r#"{"selection": {"affinity": {"max_sessions": 0}}}"#.into(), "selection.affinity.max_sessions: must be between 1 and 1048576, got 0".into()),
            (r#"{"selection": {"affinity": {"max_sessions": 1048577}}}"#.into(), "selection.affinity.max_sessions: must be between 1 and 1048576, got 1048577".into()),
            (r#"{"selection": {"affinity": {"header": "x\nid"}}}"#.into(), "selection.affinity.header: header name has an invalid character '\\n'".into()),
            (r#"{"global": {"cluster": "rl", "failure_mode": "open"}}"#.into(), "global.failure_mode: expected one of allow, deny, got \"open\"".into()),
            (r#"{"global": {"timeout": "1s"}}"#.into(), "global.cluster: missing required field".into()),
            (r#"{"global": {"cluster": "rl", "domain": ""}}"#.into(), "global.domain: expected a non-empty name of printable characters without spaces, got \"\"".into()),
            (r#"{"estimate": {"output_reserve": -5}}"#.into(), "estimate.output_reserve: expected a non-negative whole number, got -5".into()),
            // pricing
            (r#"{"pricing": {"m*": {"input": -1, "output": 1}}}"#.into(), "pricing[\"m*\"].input: expected a non-negative price, got -1".into()),
            (r#"{"pricing": {"m*": {"input": 1}}}"#.into(), "pricing[\"m*\"].output: missing required field".into()),
            (r#"{"pricing": {"": {"input": 1, "output": 1}}}"#.into(), "pricing[\"\"]: a glob must not be empty".into()),
            (r#"{"pricing": {"m*": {"input": 1, "output": 1}, "m*": {"input": 2, "output": 2}}}"#.into(), "pricing[\"m*\"]: duplicate field".into()),
            (r#"{"pricing": [1]}"#.into(), "pricing: expected an object, got an array".into()),
            // admin and paths
            (r#"{"admin": {"path": "tollgate", "keys": ["k"]}}"#.into(), "admin.path: must start with \"/\", got \"tollgate\"".into()),
            (r#"{"admin": {"path": "/tollgate/", "keys": ["k"]}}"#.into(), "admin.path: must not end with \"/\", got \"/tollgate/\"".into()),
            (r#"{"admin": {"path": "/", "keys": ["k"]}}"#.into(), "admin.path: must not end with \"/\", got \"/\"".into()),
            (r#"{"admin": {"path": "/v1", "keys": ["k"]}}"#.into(), "admin.path: \"/v1\" would cover the provider API paths".into()),
            (r#"{"admin": {"path": "/a b", "keys": ["k"]}}"#.into(), "admin.path: must be printable ASCII without spaces, \"?\" or \"#\", got \"/a b\"".into()),
            (r#"{"admin": {"path": "/t"}}"#.into(), "admin.keys: missing required field".into()),
            (r#"{"admin": {"keys": []}}"#.into(), "admin.keys: must list at least one key".into()),
            (r#"{"passthrough_paths": ["/v1/files", "v2"]}"#.into(), "passthrough_paths[1]: must start with \"/\", got \"v2\"".into()),
            (r#"{"passthrough_paths": "/v1/files"}"#.into(), "passthrough_paths: expected an array, got a string".into()),
            (r#"{"lease_ttl": "500ms"}"#.into(), "lease_ttl: must be at least 1s".into()),
            (r#"{"max_body_bytes": 0}"#.into(), "max_body_bytes: must be between 1 and 1073741824 (1 GiB), got 0".into()),
            (r#"{"max_body_bytes": 1073741825}"#.into(), "max_body_bytes: must be between 1 and 1073741824 (1 GiB), got 1073741825".into()),
        ];
    let mut failures = Vec::new();
    for (json, want) in &bad {
        match parse_test(json) {
            Ok(_) => failures.push(format!("{json}\n  accepted, want: {want}")),
            Err(e) if e.to_string() != *want => {
                failures.push(format!("{json}\n  got:  {e}\n  want: {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} wrong:\n{}",
        failures.len(),
        bad.len(),
        failures.join("\n")
    );
}

#[test]
fn error_messages_never_contain_a_key() {
    for json in [
        r#"{"accounts": [{"name": "a", "provider": "anthropic", "key": "sk-ant secret-value"}]}"#,
        r#"{"consumers": [{"name": "a", "keys": ["secret-value x"]}]}"#,
        r#"{"consumers": [{"name": "a", "keys": ["secret-value"]}, {"name": "b", "keys": ["secret-value"]}]}"#,
    ] {
        let e = parse_test(json).unwrap_err().to_string();
        assert!(!e.contains("secret-value"), "{e}");
    }
    let cfg = parse_test(&spec_sample()).unwrap();
    let dump = format!("{cfg:?}");
    for secret in [
        "AAAAAAAAAAAAAAAAAAAA",
        "token-abc",
        "plain-secret-key",
        TEST_SHA,
        ADMIN_SHA,
    ] {
        assert!(!dump.contains(secret), "Debug shows {secret}");
    }
}

#[test]
fn config_error_display_is_path_colon_reason() {
    assert_eq!(err("a.b[0]", "why").to_string(), "a.b[0]: why");
    assert_eq!(err("", "why").to_string(), "why");
}

#[test]
fn parses_durations() {
    let table: &[(&str, Result<u64, &str>)] = &[
        ("250ms", Ok(250)),
        ("30s", Ok(30_000)),
        ("5m", Ok(300_000)),
        ("5h", Ok(18_000_000)),
        ("1d", Ok(86_400_000)),
        ("007s", Ok(7_000)),
        ("0ms", Err("must be greater than zero")),
        ("99999999999999999999d", Err("is too long")),
        ("999999999999999999d", Err("is too long")),
        ("5", Err("bad")),
        ("s", Err("bad")),
        ("5 s", Err("bad")),
        ("-5s", Err("bad")),
        ("1.5h", Err("bad")),
        ("5S", Err("bad")),
        ("5w", Err("bad")),
        ("", Err("bad")),
    ];
    for &(text, want) in table {
        let got = Duration::parse(text);
        match (got, want) {
            (Ok(d), Ok(ms)) => assert_eq!(d.millis(), ms, "{text}"),
            (Err(e), Err("bad")) => {
                assert!(e.starts_with("expected a duration like"), "{text}: {e}")
            }
            (Err(e), Err(reason)) => assert_eq!(e, reason, "{text}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }
    assert_eq!(Duration::from_millis(18_000_000).to_string(), "5h");
    assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
    assert_eq!(Duration::from_millis(1500).secs_ceil(), 2);
}

#[test]
fn matches_globs() {
    let table: &[(&str, &str, bool)] = &[
        ("claude-*", "claude-sonnet-4-5", true),
        ("claude-*", "claude-", true),
        ("claude-*", "claude", false),
        ("gpt-4o-mini", "gpt-4o-mini", true),
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", false),
        ("gpt-4o*", "gpt-4o-mini", true),
        ("*", "", true),
        ("*", "anything", true),
        ("?", "", false),
        ("?", "é", true),
        ("a?c", "abc", true),
        ("a?c", "a€c", true),
        ("a?c", "ac", false),
        ("*-mini*", "o4-mini-2025", true),
        ("*a*b*c", "xaybzc", true),
        ("*a*b*c", "xaybzcd", false),
        ("a*b*c", "abcbc", true),
        ("é*", "éa", true),
        ("*é", "aé", true),
        ("**", "x", true),
        ("x*", "", false),
    ];
    for &(pattern, text, want) in table {
        assert_eq!(
            Glob::new(pattern).unwrap().matches(text),
            want,
            "{pattern} vs {text}"
        );
    }
}

#[test]
fn glob_matching_stays_fast_on_adversarial_patterns() {
    let glob = Glob::new(&format!("{}b", "a*".repeat(50))).unwrap();
    let text = "a".repeat(10_000);
    let start = std::time::Instant::now();
    assert!(!glob.matches(&text));
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}

/// Plain recursive matcher over chars, as the reference for the iterative one.
fn reference_match(p: &[char], t: &[char]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            reference_match(&p[1..], t) || (!t.is_empty() && reference_match(p, &t[1..]))
        }
        (Some('?'), Some(_)) => reference_match(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => reference_match(&p[1..], &t[1..]),
        _ => false,
    }
}

proptest! {
    #[test]
    fn glob_agrees_with_a_recursive_reference(p in "[ab*?é]{1,8}", t in "[abé]{0,10}") {
        let pc: Vec<char> = p.chars().collect();
        let tc: Vec<char> = t.chars().collect();
        prop_assert_eq!(Glob::new(&p).unwrap().matches(&t), reference_match(&pc, &tc));
    }
}

#[test]
fn masks_secrets() {
    let table = [
        ("sk-ant-FAKE00-abcdefghijklmnopx7Qa", "sk-ant-…x7Qa"),
        ("sk-proj-FAKE-fghijklmnWXYZ", "sk-proj-…WXYZ"),
        ("sk-FAKE-fghijklmnop1234", "sk-…1234"),
        ("AIza-FAKE-efghijklmnop9876", "AIza…9876"),
        ("token-abc", "…"),
        ("sk-ant-short", "sk-ant-…"),
        ("0123456789abcdefWXYZ", "…WXYZ"),
        ("sk-", "…"),
    ];
    for (key, mask) in table {
        let s = Secret::new(key);
        assert_eq!(s.to_string(), mask, "{key}");
        assert_eq!(format!("{s:?}"), format!("Secret({mask})"));
        assert_eq!(s.expose(), key);
    }
}

#[test]
fn key_matchers_compare_digests() {
    let plain = KeyMatcher::parse("test").unwrap();
    let hashed = KeyMatcher::parse(&format!("sha256:{}", TEST_SHA.to_uppercase())).unwrap();
    let presented = KeyMatcher::digest("test");
    assert!(plain.matches(&presented) && hashed.matches(&presented));
    assert_eq!(plain, hashed);
    assert!(!plain.matches(&KeyMatcher::digest("test ")));
    assert_eq!(format!("{plain:?}"), "KeyMatcher(…)");
    assert!(KeyMatcher::parse("").is_err());
    assert!(ct_eq(&[7; 32], &[7; 32]) && !ct_eq(&[7; 32], &[8; 32]));
}

#[test]
fn reads_key_env_through_the_injected_lookup() {
    let json = br#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "K"}]}"#;
    let cfg = parse_with_env(json, &|n| (n == "K").then(|| "sk-ant-xyz\n".to_string())).unwrap();
    assert_eq!(cfg.accounts[0].key.expose(), "sk-ant-xyz");
    let e = parse_with_env(json, &|_| None).unwrap_err();
    assert_eq!(e.path, "accounts[0].key_env");
}
/// A full configuration with every section, for mutation.
const FULL: &str = r#"{"stage":"downstream",
      "consumers":[{"name":"team-a","keys":["plain-secret-key"],
        "limits":[{"tokens":100000,"per":"minute"},{"requests":60,"per":"minute"},
                  {"tokens":2000000,"per":"day","window":"fixed"},{"cost_usd":25.0,"per":"day"},
                  {"concurrent":4}],
        "models":["claude-*","gpt-4o-mini"]}],
      "consumer_header":null,"anonymous":null,"limits":[{"tokens":50000,"per":"minute"}],
      "accounts":[{"name":"org-1","provider":"anthropic","key_env":"ANTHROPIC_KEY_1"},
        {"name":"vllm","provider":"openai","key":"token-abc","headers":{"x-tenant":"blue"},
         "weight":2,"limits":[{"concurrent":20}]}],
      "selection":{"strategy":"least_loaded",
        "affinity":{"header":"x-session-id","conversation":true,"ttl":"5h"}},
      "global":{"cluster":"ratelimit","domain":"tollgate","timeout":"50ms","failure_mode":"allow"},
      "estimate":{"output_reserve":1024},
      "pricing":{"claude-3-5-haiku-*":{"input":0.8,"output":4.0,"cache_write":1.0,"cache_read":0.08}},
      "admin":{"path":"/tollgate","keys":["plain-admin"]},"max_body_bytes":1048576}"#;

#[test]
fn the_mutation_base_parses() {
    parse_test(FULL).unwrap();
}

proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

    /// Arbitrary bytes: an error (naming a path that exists in the message), never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        if let Err(e) = parse_with_env(&bytes, &test_env) {
            let _ = e.to_string();
        }
    }

    /// A valid configuration with a few bytes replaced: parses or names a field.
    #[test]
    fn mutated_configurations_never_panic(
        flips in proptest::collection::vec((0usize..1400, proptest::sample::select(
            b"{}[]:,\"0123456789-.eE abtrufnl\\\xc3\xa9\x00".to_vec())), 1..6),
    ) {
        let mut bytes = FULL.as_bytes().to_vec();
        for (at, b) in flips {
            if let Some(x) = bytes.get_mut(at % FULL.len()) {
                *x = b;
            }
        }
        match parse_with_env(&bytes, &test_env) {
            Ok(_) => {}
            Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn writes_floats_in_error_messages_as_display_does() {
    use super::node::display_f64;
    for v in [
        0.0,
        -0.0,
        1.0,
        -3.0,
        1.5,
        -1.5,
        0.1,
        0.000001,
        1.5e-7,
        123456.789,
        1e15,
        1e21,
        1e300,
        -2.5e-300,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::MIN,
        9_007_199_254_740_992.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        // Halfway between two shortest candidates: Display rounds away from zero.
        f64::from_bits(14_055_597_007_310_985_298), // -1108721192801034.25
        0.5,
        2.5e-5,
    ] {
        assert_eq!(display_f64(v), format!("{v}"), "{v:e}");
    }
}

proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
    #[test]
    fn writes_every_float_as_display_does(bits in proptest::prelude::any::<u64>()) {
        let v = f64::from_bits(bits);
        prop_assert_eq!(super::node::display_f64(v), format!("{v}"));
    }

    /// Exponents near 0, where the halfway cases are.
    #[test]
    fn writes_floats_of_everyday_size_as_display_does(
        mantissa in 0u64..1 << 52,
        exponent in 960u64..1100,
        negative in proptest::prelude::any::<bool>(),
    ) {
        let v = f64::from_bits(u64::from(negative) << 63 | exponent << 52 | mantissa);
        prop_assert_eq!(super::node::display_f64(v), format!("{v}"));
    }
}

#[test]
fn access_log_facts_defaults_to_true_and_takes_only_a_boolean() {
    assert!(parse_test("{}").unwrap().access_log_facts);
    assert!(
        parse_test(r#"{"access_log_facts": true}"#)
            .unwrap()
            .access_log_facts
    );
    // null means the default, as for every field.
    assert!(
        parse_test(r#"{"access_log_facts": null}"#)
            .unwrap()
            .access_log_facts
    );
    let off = parse_test(r#"{"access_log_facts": false}"#).unwrap();
    assert!(!off.access_log_facts);
    assert_eq!(
        off,
        Config {
            access_log_facts: false,
            ..Config::default()
        }
    );
    for (json, kind) in [
        (r#"{"access_log_facts": "false"}"#, "a string"),
        (r#"{"access_log_facts": 0}"#, "a number"),
        (r#"{"access_log_facts": []}"#, "an array"),
    ] {
        let e = parse_test(json).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("access_log_facts: expected true or false, got {kind}"),
            "{json}"
        );
    }
}
