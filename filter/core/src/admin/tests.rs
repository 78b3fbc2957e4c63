use super::*;
use crate::accounts::{AccountState, Dim, DisableReason};
use crate::analytics::{Accumulator, Fact};
use crate::limits::{Per, Usage};
use crate::store::MemStore;
use serde_json::Value;

const NOW: u64 = 1_714_564_830_000; // 2024-05-01T12:00:30Z

#[test]
fn reads_the_password_of_basic_auth() {
    // "admin:s3cret"
    assert_eq!(
        basic_password("Basic YWRtaW46czNjcmV0"),
        Some("s3cret".into())
    );
    assert_eq!(basic_password("Bearer YWRtaW46czNjcmV0"), None);
    assert_eq!(basic_password("Basic !!"), None);
    assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
}

fn traffic() -> Totals {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    let usage = Usage {
        input: 100,
        cache_read: 10,
        cache_write: 5,
        output: 20,
    };
    let facts = [
        ("team-a", "claude-haiku-*", Some("org-1"), 30, true),
        ("team-a", "claude-haiku-*", Some("org-1"), 50, true),
        ("team-a", "gpt-4o-mini", Some("org-2"), 70, false),
        ("header-name", "other", None, 90, true),
    ];
    for (consumer, model, account, ms, ok) in facts {
        acc.record(&Fact {
            consumer,
            model_label: model,
            account,
            usage,
            cost_micros: 208,
            response_ms: ms,
            ok,
            now_ms: NOW - 5_000,
        });
    }
    acc.flush(&store, NOW).unwrap();
    crate::analytics::load(&store)
}

fn window(kind: LimitKind, per: Per, limit: u64, used: u64) -> WindowUsage {
    WindowUsage {
        index: 0,
        kind,
        per,
        window: WindowKind::Sliding,
        limit,
        used,
        remaining: limit.saturating_sub(used),
        reset_s: 42,
    }
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

#[test]
fn usage_json_shows_windows_totals_accounts_and_analytics() {
    let totals = traffic();
    let cooling = Health {
        state: AccountState::Cooling {
            until_ms: NOW + 12_345,
        },
        requests: 7,
        tokens: 900,
        dims: [
            Some(Dim {
                remaining: 49,
                limit: Some(50),
                reset_ms: Some(NOW + 60_000),
                seen_ms: NOW,
            }),
            None,
            None,
            None,
        ],
        ..Health::default()
    };
    let disabled = Health {
        state: AccountState::Disabled {
            reason: DisableReason::InvalidKey,
            status: 400,
            since_ms: NOW - 60_500,
            probe_after_ms: NOW + 539_500,
        },
        ..Health::default()
    };
    let report = UsageReport {
        now_ms: NOW,
        consumers: vec![
            ConsumerView {
                name: "team-a",
                usage: UsageSnapshot {
                    windows: vec![
                        window(LimitKind::Tokens, Per::Minute, 100_000, 405),
                        window(LimitKind::CostUsd, Per::Day, 25_000_000, 624),
                    ],
                    concurrent_in_use: 1,
                    concurrent_limit: Some(4),
                },
            },
            ConsumerView {
                name: "team-b",
                usage: UsageSnapshot::default(),
            },
        ],
        accounts: vec![
            AccountView::from_health("org-1", "anthropic", &Health::default(), NOW),
            AccountView::from_health("org-2", "openai", &cooling, NOW),
            AccountView::from_health("org-3", "gemini", &disabled, NOW),
        ],
        totals: &totals,
        recent: &[],
    };
    let v = parse(&usage_json(&report));

    assert_eq!(v["total_requests"], 4);
    assert_eq!(v["total_tokens"], 4 * 135);
    assert_eq!(v["average_response_time_ms"], 60.0);
    assert_eq!(v["cost_estimate_usd"], 4.0 * 208e-6);
    assert_eq!(v["active_accounts"], 2);
    assert_eq!(v["rate_limited_accounts"], 1);
    assert_eq!(v["disabled_accounts"], 1);
    assert_eq!(v["requests_last_hour"], 4);
    assert_eq!(v["now_s"], NOW / 1000);
    assert_eq!(v["since_s"], (NOW - 5_000) / 1000);
    assert_eq!(v["totals"]["errors"], 1);
    assert_eq!(
        v["top_models"],
        parse(
            r#"[{"model":"claude-haiku-*","requests":2,"tokens":270},
                    {"model":"gpt-4o-mini","requests":1,"tokens":135},
                    {"model":"other","requests":1,"tokens":135}]"#
        )
    );

    let a = &v["consumers"][0];
    assert_eq!(a["name"], "team-a");
    assert_eq!(
        a["windows"][0],
        parse(
            r#"{"kind":"tokens","limit":100000,"per":"minute","window":"sliding",
                    "used":405,"remaining":99595,"reset_s":42}"#
        )
    );
    assert_eq!(a["windows"][1]["kind"], "cost_usd");
    assert_eq!(a["windows"][1]["limit"], 25.0);
    assert_eq!(a["windows"][1]["used"], 0.000624);
    assert_eq!(a["concurrency"], parse(r#"{"in_use":1,"limit":4}"#));
    assert_eq!(
        a["totals"],
        parse(
            r#"{"requests":3,"errors":1,"input_tokens":300,"output_tokens":60,
                    "cache_read_tokens":30,"cache_write_tokens":15,"tokens":405,
                    "cost_usd":0.000624}"#
        )
    );
    // Configured but idle: zeros. Counted but not configured: appended, without windows.
    assert_eq!(v["consumers"][1]["name"], "team-b");
    assert_eq!(v["consumers"][1]["totals"]["requests"], 0);
    assert_eq!(v["consumers"][1]["concurrency"]["limit"], Value::Null);
    assert_eq!(v["consumers"][2]["name"], "header-name");
    assert_eq!(v["consumers"][2]["windows"], parse("[]"));
    assert_eq!(v["consumers"][2]["totals"]["requests"], 1);
    assert_eq!(v["consumers"].as_array().map(Vec::len), Some(3));

    assert_eq!(
        v["accounts"][0],
        parse(
            r#"{"name":"org-1","provider":"anthropic","state":"ok","cooling_until":null,
                    "disabled_reason":null,"disabled_status":null,"disabled_since":null,
                    "probe_after":null,"headroom":{"requests":null,"tokens":null,"input_tokens":null,
                    "output_tokens":null},"requests":0,"tokens":0}"#
        )
    );
    let org2 = &v["accounts"][1];
    assert_eq!(org2["state"], "cooling");
    assert_eq!(org2["cooling_until"], (NOW + 12_345).div_ceil(1000));
    assert_eq!(org2["headroom"]["requests"], 49);
    assert_eq!(
        (org2["requests"].clone(), org2["tokens"].clone()),
        (7.into(), 900.into())
    );
    let org3 = &v["accounts"][2];
    assert_eq!(org3["state"], "disabled");
    assert_eq!(org3["disabled_reason"], "invalid_key");
    assert_eq!(org3["disabled_status"], 400);
    assert_eq!(org3["disabled_since"], (NOW - 60_500) / 1000);
    assert_eq!(org3["probe_after"], (NOW + 539_500).div_ceil(1000));
    assert_eq!(org3["cooling_until"], Value::Null);
    assert_eq!(org2["disabled_reason"], Value::Null);

    let minutes = v["last_hour"]["minutes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(minutes.len(), 60);
    assert_eq!(minutes[59]["start_s"], (NOW / 60_000) * 60);
    assert_eq!(minutes[59]["requests"], 4);
    assert_eq!(v["last_hour"]["tokens"], 540);
}

#[test]
fn usage_json_before_any_traffic_has_zeros_and_no_start_time() {
    let totals = Totals::default();
    let v = parse(&usage_json(&UsageReport {
        now_ms: NOW,
        consumers: Vec::new(),
        accounts: Vec::new(),
        totals: &totals,
        recent: &[],
    }));
    assert_eq!(v["total_requests"], 0);
    assert_eq!(v["average_response_time_ms"], 0.0);
    assert_eq!(v["since_s"], Value::Null);
    assert_eq!(v["top_models"], parse("[]"));
    assert_eq!(v["last_hour"]["minutes"].as_array().map(Vec::len), Some(60));
}

/// The report is built from a real configuration with inline keys of every kind: none of
/// them may reach the JSON.
#[test]
fn usage_json_never_contains_a_configured_key() {
    let secrets = [
        "sk-ant-test03-inline-account-key-AAAA",
        "sk-proj-inline-key-BBBB",
        "plain-consumer-key-CCCC",
        "admin-key-DDDD",
    ];
    let cfg = crate::config::parse(
        format!(
            r#"{{"consumers":[{{"name":"team-a","keys":["{}"],
                     "limits":[{{"tokens":1000,"per":"minute"}},{{"concurrent":2}}]}}],
                   "accounts":[{{"name":"org-1","provider":"anthropic","key":"{}"}},
                               {{"name":"org-2","provider":"openai","key":"{}"}}],
                   "admin":{{"path":"/tollgate","keys":["{}"]}}}}"#,
            secrets[2], secrets[0], secrets[1], secrets[3]
        )
        .as_bytes(),
    )
    .unwrap();
    let store = MemStore::new();
    let totals = traffic();
    let consumers = cfg
        .consumers
        .iter()
        .map(|c| ConsumerView {
            name: &c.name,
            usage: crate::quota::usage_snapshot(
                &store,
                &crate::quota::OwnerKey::consumer(&c.name),
                &c.limits,
                NOW,
            )
            .unwrap(),
        })
        .collect();
    let accounts = cfg
        .accounts
        .iter()
        .map(|a| AccountView::from_health(&a.name, a.provider.as_str(), &Health::fresh(a), NOW))
        .collect();
    let json = usage_json(&UsageReport {
        now_ms: NOW,
        consumers,
        accounts,
        totals: &totals,
        recent: &[],
    });
    for s in secrets {
        assert!(!json.contains(s), "{s} leaked");
        // Not even a recognisable fragment of it.
        assert!(!json.contains(&s[s.len() - 8..]), "{s} leaked in part");
    }
    let v = parse(&json);
    assert_eq!(v["consumers"][0]["windows"][0]["limit"], 1000);
    assert_eq!(v["consumers"][0]["concurrency"]["limit"], 2);
    assert_eq!(v["accounts"][1]["provider"], "openai");
}

#[test]
fn dashboard_is_self_contained_and_reads_the_usage_api() {
    let html = dashboard_html("/tollgate");
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains(r#"const USAGE_URL = "/tollgate/usage";"#));
    assert!(html.contains("setInterval(load, 5000)"));
    for external in ["http://", "https://", "<link", " src=", "@import", "url("] {
        assert!(!html.contains(external), "{external}");
    }
    // Every number the API gives has its place on the page.
    for id in [
        "total_requests",
        "total_tokens",
        "cost_estimate_usd",
        "average_response_time_ms",
        "requests_last_hour",
        "active_accounts",
        "rate_limited_accounts",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }
    // Why and since when an account is disabled.
    for field in ["a.disabled_reason", "a.disabled_since", "a.probe_after"] {
        assert!(html.contains(field), "{field}");
    }
    // Data is written with textContent, never parsed as HTML.
    assert!(!html.contains("innerHTML"));
    assert_eq!(
        dashboard_html("/admin/")
            .matches("\"/admin/usage\"")
            .count(),
        1
    );
}

#[test]
fn dashboard_path_cannot_break_out_of_the_script() {
    let html = dashboard_html("/x</script><script>alert(1)//\"");
    assert!(!html.contains("</script><script>alert"));
    assert!(html.contains(r#""/x\u003c/script\u003e\u003cscript\u003ealert(1)//\"/usage""#));
}

#[test]
fn reset_paths_name_one_account() {
    for (rest, want) in [
        ("/accounts/org-1/reset", Some("org-1")),
        ("/accounts/a.b_c/reset", Some("a.b_c")),
        ("/accounts//reset", None),
        ("/accounts/a/b/reset", None),
        ("/accounts/org-1", None),
        ("/accounts/org-1/reset/", None),
        ("/usage", None),
        ("", None),
    ] {
        assert_eq!(reset_target(rest), want, "{rest}");
    }
}

#[test]
fn reset_answers_say_what_the_account_was_and_is() {
    let store = MemStore::new();
    let cfg = crate::config::parse(
        br#"{"accounts":[{"name":"org-1","provider":"openai","key":"sk-proj-reset-key-EEEE"}]}"#,
    )
    .unwrap();
    let a = &cfg.accounts[0];
    crate::accounts::prepare(&store, &cfg).unwrap();
    let (status, body) = crate::key_evidence::samples::invalid_key(crate::api::Api::OpenAi);
    let invalid =
        crate::accounts::observe_error_body(crate::api::Api::OpenAi, status, body.as_bytes());
    crate::accounts::record(&store, a, &invalid, NOW).unwrap();
    let t = crate::accounts::reset(&store, a, NOW + 1).unwrap();
    let json = reset_json(&a.name, &t);
    assert_eq!(
        parse(&json),
        parse(r#"{"account":"org-1","state":"ok","was":"disabled"}"#)
    );
    assert!(!json.contains("EEEE"));
    let t = crate::accounts::reset(&store, a, NOW + 2).unwrap();
    assert_eq!(parse(&reset_json(&a.name, &t))["was"], "ok");
    assert_eq!(
        parse(unknown_account_json()),
        parse(r#"{"error":"unknown account"}"#)
    );
}

#[test]
fn health_is_ok_json() {
    assert_eq!(parse(health_json()), parse(r#"{"status":"ok"}"#));
}
