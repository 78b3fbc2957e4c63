#![cfg(test)]
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
    // Rates are 0, percentiles null, and nothing is recent or refused.
    assert_eq!(
        (v["success_rate"].clone(), v["rejection_rate"].clone()),
        (0.0.into(), 0.0.into())
    );
    assert_eq!(
        v["latency_ms"],
        parse(r#"{"p50":null,"p95":null,"p99":null}"#)
    );
    assert_eq!(v["recent"], parse("[]"));
    assert_eq!(v["rejections"], parse("[]"));
    assert_eq!(v["last_day"]["spans"].as_array().map(Vec::len), Some(288));
}

/// The report is built from a real configuration with inline keys of every kind: none of
/// them may reach the JSON.
#[test]
fn usage_json_never_contains_a_configured_key() {
    let secrets = [
        "sk-ant-FAKE00-inline-account-key-AAAA",
        "sk-proj-FAKE-inline-key-BBBB",
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
fn dashboard_is_the_page_source_with_the_usage_url_in_place() {
    let source = include_str!("dashboard.html");
    assert_eq!(
        dashboard_html("/tollgate"),
        source.replace("\"__USAGE_URL__\"", "\"/tollgate/usage\"")
    );
    // A URL longer than one stored block (65,535 bytes) is split over several.
    let long = format!("/{}", "a".repeat(70_000));
    assert_eq!(
        dashboard_html(&long),
        source.replace("\"__USAGE_URL__\"", &format!("\"{long}/usage\""))
    );
}

#[test]
fn dashboard_is_gzip_only_for_clients_that_accept_gzip() {
    use std::io::Read;
    let cases: &[(Option<&str>, bool)] = &[
        (None, false),
        (Some(""), false),
        (Some("identity"), false),
        (Some("br, zstd"), false),
        (Some("gzip;q=0"), false),
        (Some("deflate"), false),
        (Some("gzip"), true),
        (Some("GZIP"), true),
        (Some("x-gzip"), true),
        (Some("gzip, deflate, br, zstd"), true),
        (Some("br;q=1.0, gzip;q=0.5"), true),
    ];
    for &(accept, gzip) in cases {
        let d = dashboard("/admin", accept);
        assert_eq!(d.gzip, gzip, "{accept:?}");
        let html = if gzip {
            // flate2 checks the trailer's CRC-32 and size.
            let mut page = String::new();
            flate2::read::GzDecoder::new(d.body.as_slice())
                .read_to_string(&mut page)
                .unwrap();
            page
        } else {
            String::from_utf8(d.body).unwrap()
        };
        assert_eq!(html, dashboard_html("/admin"), "{accept:?}");
        assert!(html.contains(r#"const USAGE_URL = "/admin/usage";"#));
    }
}

#[test]
fn computes_the_crc32_of_gzip() {
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

#[test]
fn dashboard_path_cannot_break_out_of_the_script() {
    let html = dashboard_html("/x</script><script>alert(1)//\"");
    assert!(!html.contains("</script><script>alert"));
    assert!(html.contains(r#""/x\u003c/script\u003e\u003cscript\u003ealert(1)//\"/usage""#));
}

#[test]
fn reset_paths_name_one_account() {
    use AccountAction::{Pause, Reset, Resume};
    for (rest, want) in [
        ("/accounts/org-1/reset", Some(("org-1", Reset))),
        ("/accounts/a.b_c/reset", Some(("a.b_c", Reset))),
        ("/accounts//reset", None),
        ("/accounts/a/b/reset", None),
        ("/accounts/org-1", None),
        ("/accounts/org-1/reset/", None),
        ("/usage", None),
        ("", None),
        // Pause and resume name an account the same way.
        ("/accounts/org-1/pause", Some(("org-1", Pause))),
        ("/accounts/org-1/resume", Some(("org-1", Resume))),
        ("/accounts/org-1/Pause", None),
        ("/accounts/org-1/pause/", None),
        ("/accounts/a/b/pause", None),
        ("/accounts//pause", None),
    ] {
        assert_eq!(account_target(rest), want, "{rest}");
        let reset = want.filter(|(_, a)| *a == Reset).map(|(name, _)| name);
        assert_eq!(reset_target(rest), reset, "{rest}");
    }
}

#[test]
fn reset_answers_say_what_the_account_was_and_is() {
    let store = MemStore::new();
    let cfg = crate::config::parse(
        br#"{"accounts":[{"name":"org-1","provider":"openai","key":"sk-proj-FAKE-reset-key-EEEE"}]}"#,
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

// ---------------------------------------------------------------------------------------------
// Operator surface v2: rejections, rates, latency, the day, recent requests, account actions
// ---------------------------------------------------------------------------------------------

use crate::analytics::{Recent, Rejection};

/// team-a: 3 requests upstream (one answered 500), 2 refused for tokens; an unknown caller
/// refused once for auth.
fn mixed() -> (Totals, Vec<Recent>) {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    let usage = Usage {
        input: 10,
        output: 5,
        ..Usage::default()
    };
    for (i, (ms, status)) in [(100u64, 200u16), (200, 200), (4000, 500)]
        .into_iter()
        .enumerate()
    {
        acc.served(
            &Fact {
                consumer: "team-a",
                model_label: "claude-haiku-4-5",
                account: Some("org-1"),
                usage,
                cost_micros: 10,
                response_ms: ms,
                ok: status == 200,
                now_ms: NOW - 3_000 + i as u64,
            },
            status,
        );
    }
    for (consumer, reason, status) in [
        ("team-a", "tokens", 429),
        ("team-a", "tokens", 429),
        ("unknown", "auth", 401),
    ] {
        acc.rejected(&Rejection {
            consumer,
            model_label: "other",
            reason,
            status,
            response_ms: 1,
            now_ms: NOW - 1_000,
        });
    }
    acc.flush(&store, NOW).unwrap();
    (
        crate::analytics::load(&store),
        crate::analytics::load_recent(&store),
    )
}

#[test]
fn usage_json_counts_refusals_with_rates_latency_the_day_and_recent_requests() {
    let (totals, recent) = mixed();
    let paused = Health {
        paused: true,
        ..Health::default()
    };
    let v = parse(&usage_json(&UsageReport {
        now_ms: NOW,
        consumers: vec![ConsumerView {
            name: "team-a",
            usage: UsageSnapshot::default(),
        }],
        accounts: vec![AccountView::from_health("org-1", "anthropic", &paused, NOW)],
        totals: &totals,
        recent: &recent,
    }));
    assert_eq!(v["total_requests"], 6, "3 upstream + 3 refused");
    assert_eq!(v["served_requests"], 3);
    assert_eq!(v["rejected_requests"], 3);
    assert_eq!(v["success_rate"], 0.3333);
    assert_eq!(v["error_rate"], 0.1667);
    assert_eq!(v["rejection_rate"], 0.5);
    assert_eq!(
        v["rejections"],
        parse(r#"[{"reason":"tokens","requests":2},{"reason":"auth","requests":1}]"#)
    );
    let p50 = v["latency_ms"]["p50"].as_u64().unwrap_or(0);
    assert!((176..=225).contains(&p50), "{p50}");
    let p99 = v["latency_ms"]["p99"].as_u64().unwrap_or(0);
    assert!((3500..=4500).contains(&p99), "{p99}");
    assert_eq!(v["requests_last_hour"], 6);
    assert_eq!(v["last_hour"]["requests"], 3);
    assert_eq!(v["last_hour"]["rejected"], 3);
    assert_eq!(v["last_hour"]["minutes"][59]["rejected"], 3);
    let day = &v["last_day"];
    assert_eq!(day["span_s"], 300);
    assert_eq!(day["spans"].as_array().map(Vec::len), Some(288));
    assert_eq!(
        (day["requests"].clone(), day["rejected"].clone()),
        (3.into(), 3.into())
    );
    assert_eq!(day["spans"][287]["start_s"], (NOW / 300_000) * 300);
    // Newest first, with every field; a refusal has no account.
    let r = v["recent"].as_array().cloned().unwrap_or_default();
    assert_eq!(r.len(), 6);
    assert_eq!(
        r[0],
        parse(&format!(
            r#"{{"at_ms":{},"consumer":"unknown","model":"other","account":null,"status":401,
                 "tokens":0,"latency_ms":1,"decision":"auth"}}"#,
            NOW - 1_000
        ))
    );
    assert_eq!(
        r[3],
        parse(&format!(
            r#"{{"at_ms":{},"consumer":"team-a","model":"claude-haiku-4-5","account":"org-1",
                 "status":500,"tokens":15,"latency_ms":4000,"decision":"admitted"}}"#,
            NOW - 1_000 - 2_000 + 2
        ))
    );
    // Refusals per consumer, and callers known only from refusals.
    let consumers = v["consumers"].as_array().cloned().unwrap_or_default();
    assert_eq!(consumers[0]["rejected"], 2);
    assert_eq!(consumers[0]["totals"]["requests"], 3);
    assert_eq!(consumers[1]["name"], "unknown");
    assert_eq!(consumers[1]["rejected"], 1);
    assert_eq!(consumers[1]["totals"]["requests"], 0);
    // A paused account says so.
    assert_eq!(v["accounts"][0]["state"], "paused");
    assert_eq!(v["paused_accounts"], 1);
    assert_eq!(v["top_models"][0]["model"], "claude-haiku-4-5");
}

#[test]
fn account_actions_pause_resume_and_reset_with_405_and_404() {
    let store = MemStore::new();
    let cfg = crate::config::parse(
        br#"{"accounts":[{"name":"org-1","provider":"openai","key":"sk-proj-FAKE-action-key-FFFF"},
                         {"name":"org-2","provider":"openai","key":"sk-proj-FAKE-other-key-GGGG"}]}"#,
    )
    .unwrap();
    crate::accounts::prepare(&store, &cfg).unwrap();
    let act = |method: &str, rest: &'static str| {
        account_action(&store, &cfg, method, rest, false, NOW).expect("an account action")
    };
    let a = act("POST", "/accounts/org-1/pause");
    assert_eq!(a.status, 200);
    assert_eq!(
        parse(&a.body),
        parse(r#"{"account":"org-1","state":"paused","was":"ok"}"#)
    );
    let done = a.done.expect("done");
    assert_eq!(
        (done.name, done.index, done.action),
        ("org-1", Some(0), AccountAction::Pause)
    );
    assert_eq!(done.transition.after.gauge(), 3);
    let h = crate::accounts::read_health(&store, &cfg.accounts[0]).unwrap();
    assert_eq!(h.kind_at(NOW), StateKind::Paused);
    // Pausing twice changes nothing more; a reset keeps the pause; resume ends it.
    assert_eq!(
        parse(&act("post", "/accounts/org-1/pause").body)["was"],
        "paused"
    );
    assert_eq!(
        parse(&act("POST", "/accounts/org-1/reset").body)["state"],
        "paused"
    );
    let r = act("POST", "/accounts/org-1/resume");
    assert_eq!(
        parse(&r.body),
        parse(r#"{"account":"org-1","state":"ok","was":"paused"}"#)
    );
    for method in ["GET", "PUT", "DELETE"] {
        let a = act(method, "/accounts/org-1/pause");
        assert_eq!(
            (a.status, a.allow, a.done),
            (405, Some("POST"), None),
            "{method}"
        );
    }
    let unknown = act("POST", "/accounts/nobody/pause");
    assert_eq!((unknown.status, unknown.done), (404, None));
    assert_eq!(unknown.body, unknown_account_json());
    assert!(!unknown.body.contains("nobody"));
    assert!(account_action(&store, &cfg, "POST", "/usage", false, NOW).is_none());
    let body = a_body(&store, &cfg);
    assert_eq!(parse(&body)["state"], "paused");
    assert!(!body.contains("FFFF") && !body.contains("GGGG"));
}

fn a_body(store: &MemStore, cfg: &Config) -> String {
    account_action(store, cfg, "POST", "/accounts/org-2/pause", false, NOW)
        .map(|a| a.body)
        .unwrap_or_default()
}

#[test]
fn an_instance_without_accounts_acts_on_the_roster_only() {
    let store = MemStore::new();
    let pool = crate::config::parse(
        br#"{"stage":"upstream","accounts":[{"name":"org-1","provider":"openai","key":"sk-FAKE-1"}]}"#,
    )
    .unwrap();
    crate::accounts::prepare(&store, &pool).unwrap();
    let bare = crate::config::parse(b"{}").unwrap();
    let a = account_action(&store, &bare, "POST", "/accounts/org-1/pause", false, NOW).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.done.map(|d| d.index), Some(None));
    let h = crate::accounts::read_health(&store, &pool.accounts[0]).unwrap();
    assert!(h.paused);
    let a = account_action(&store, &bare, "POST", "/accounts/org-9/resume", false, NOW).unwrap();
    assert_eq!(a.status, 404);
}

#[test]
fn dashboard_shows_refusals_rates_latency_the_day_recent_requests_and_account_actions() {
    let html = dashboard_html("/tollgate");
    for id in [
        "rejected_requests",
        "success_rate",
        "latency",
        "rejections",
        "recent",
        "bars_rejected",
        "bars_day_requests",
        "bars_day_rejected",
        "day_requests",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }
    for used in [
        "d.rejections",
        "d.recent",
        "d.latency_ms",
        "d.success_rate",
        "d.last_day",
        "d.paused_accounts",
        "\"/accounts/\"",
        "method: \"POST\"",
    ] {
        assert!(html.contains(used), "{used}");
    }
    assert!(!html.contains("innerHTML"));
    // Its own empty icon: no favicon.ico request (it would count as refused traffic).
    assert!(html.contains(r#"icon.href = "data:,";"#));
}

#[test]
fn a_forged_cross_site_post_riding_on_basic_auth_changes_no_account() {
    let host = Some("tollgate.example:10000");
    for (basic_only, origin, site, refused) in [
        // The browser's Basic credentials, sent by another site's form or script.
        (true, Some("https://evil.example"), Some("cross-site"), true),
        (true, None, Some("same-site"), true),
        (true, Some("https://evil.example"), None, true),
        (true, Some("null"), None, true),
        // The dashboard itself, a typed URL, a client that is no browser.
        (
            true,
            Some("http://tollgate.example:10000"),
            Some("same-origin"),
            false,
        ),
        (true, Some("http://TOLLGATE.example:10000"), None, false),
        (true, None, Some("none"), false),
        (true, None, None, false),
        // A key the client sends itself is no ambient credential.
        (
            false,
            Some("https://evil.example"),
            Some("cross-site"),
            false,
        ),
    ] {
        assert_eq!(
            cross_site(basic_only, origin, host, site),
            refused,
            "{basic_only} {origin:?} {site:?}"
        );
    }
    let store = MemStore::new();
    let cfg = crate::config::parse(
        br#"{"accounts":[{"name":"org-1","provider":"openai","key":"sk-FAKE-HHHH"}]}"#,
    )
    .unwrap();
    crate::accounts::prepare(&store, &cfg).unwrap();
    let a = account_action(&store, &cfg, "POST", "/accounts/org-1/pause", true, NOW).unwrap();
    assert_eq!((a.status, a.done), (403, None));
    let h = crate::accounts::read_health(&store, &cfg.accounts[0]).unwrap();
    assert!(!h.paused);
}
