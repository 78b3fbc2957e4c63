//! The filter's own endpoints: health, the admin key (header or basic auth, never the
//! query), usage, the dashboard, an account's reset.
#![cfg(test)]

use super::upstream::one_account;
use super::*;
use crate::api::Reason;
use crate::facts;
use crate::flow::Action;
use crate::key_evidence::samples;

fn config() -> String {
    one_account().replacen(
        '{',
        r#"{"admin":{"path":"/tollgate","keys":["FAKE-admin-key"]},"#,
        1,
    )
}

fn get(tg: &mut Tg, path: &str, headers: &[(&str, &str)]) -> Req {
    tg.send("GET", path, headers, "")
}

#[test]
fn health_answers_without_a_key() {
    let mut tg = Tg::new(&config());
    let req = get(&mut tg, "/tollgate/health", &[]);
    assert_eq!(req.action, Action::Pause);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, crate::admin::health_json());
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[test]
fn usage_without_the_admin_key_gets_401_with_a_basic_challenge() {
    let mut tg = Tg::new(&config());
    let mut req = get(&mut tg, "/tollgate/usage", &[("x-api-key", "key-a")]);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Basic realm=\"tollgate\"")
    );
    assert_eq!(reply.body, r#"{"error":"admin key required"}"#);
    req.flow.on_log(&mut tg.host);
    assert_eq!(tg.host.fact(facts::DECISION), Some(Reason::Auth.as_str()));
}

#[test]
fn the_admin_key_is_never_taken_from_the_query() {
    let mut tg = Tg::new(&config());
    get(&mut tg, "/tollgate/usage?key=FAKE-admin-key", &[]);
    assert_eq!(tg.host.reply().status, 401);
}

#[test]
fn usage_with_the_admin_key_lists_consumers_and_accounts() {
    let mut tg = Tg::new(&config());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    tg.answer(&mut req, 31, 77);
    get(
        &mut tg,
        "/tollgate/usage",
        &[("x-api-key", "FAKE-admin-key")],
    );
    let reply = tg.host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let json = reply.json();
    assert_eq!(json["consumers"][0]["name"], "team-a");
    assert_eq!(json["accounts"][0]["name"], "anthropic-1");
    assert_eq!(json["accounts"][0]["state"], "ok");
    assert_eq!(json["now_s"], T0 / 1000);
    // This worker's facts were flushed before the report: the request is in the totals.
    assert_eq!(json["totals"]["requests"], 1);
    assert_eq!(json["totals"]["input_tokens"], 31);
    assert_eq!(json["totals"]["output_tokens"], 77);
    assert_eq!(json["top_models"][0]["model"], "claude-3-5-haiku-20241022");
}

#[test]
fn basic_auth_with_the_admin_key_as_password_opens_the_dashboard() {
    let mut tg = Tg::new(&config());
    // base64("admin:FAKE-admin-key")
    get(
        &mut tg,
        "/tollgate/",
        &[("authorization", "Basic YWRtaW46RkFLRS1hZG1pbi1rZXk=")],
    );
    let reply = tg.host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(reply.body, crate::admin::dashboard_html("/tollgate"));
}

#[test]
fn an_unknown_admin_path_gets_404() {
    let mut tg = Tg::new(&config());
    get(
        &mut tg,
        "/tollgate/secrets",
        &[("x-api-key", "FAKE-admin-key")],
    );
    assert_eq!(tg.host.reply().status, 404);
    assert_eq!(tg.host.reply().body, r#"{"error":"not found"}"#);
}

#[test]
fn a_reset_must_be_a_post() {
    let mut tg = Tg::new(&config());
    get(
        &mut tg,
        "/tollgate/accounts/anthropic-1/reset",
        &[("x-api-key", "FAKE-admin-key")],
    );
    let reply = tg.host.reply();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
}

#[test]
fn a_reset_of_an_unknown_account_gets_404() {
    let mut tg = Tg::new(&config());
    tg.send(
        "POST",
        "/tollgate/accounts/nobody/reset",
        &[("x-api-key", "FAKE-admin-key")],
        "",
    );
    assert_eq!(tg.host.reply().status, 404);
    assert_eq!(tg.host.reply().body, crate::admin::unknown_account_json());
}

#[test]
fn a_reset_returns_a_disabled_account_to_service_at_once() {
    let mut tg = Tg::new(&config());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let (status, body) = samples::invalid_key(crate::api::Api::Anthropic);
    tg.respond(
        &mut req,
        status,
        &[("content-type", "application/json")],
        &[body.as_bytes()],
    );
    assert_eq!(
        tg.host.account_state("anthropic-1"),
        crate::accounts::StateKind::Disabled.gauge() as u64
    );
    tg.send(
        "POST",
        "/tollgate/accounts/anthropic-1/reset",
        &[("x-api-key", "FAKE-admin-key")],
        "",
    );
    let reply = tg.host.reply();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["account"], "anthropic-1");
    assert_eq!(tg.host.account_state("anthropic-1"), 0);
    assert_eq!(
        tg.host
            .logged_count("account anthropic-1 is now ok by the admin API (reset; was disabled)"),
        1
    );
    let again = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(again.action, Action::Continue);
    assert_eq!(
        tg.host.upstream_header("x-api-key"),
        Some(super::upstream::ANT_1)
    );
}

#[test]
fn the_usage_report_counts_each_accounts_attempts_and_tokens() {
    let mut tg = Tg::new(&config());
    for (input, output) in [(10, 2), (20, 4)] {
        let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
        tg.answer(&mut req, input, output);
    }
    get(
        &mut tg,
        "/tollgate/usage",
        &[("x-api-key", "FAKE-admin-key")],
    );
    let json = tg.host.reply().json();
    assert_eq!(json["accounts"][0]["requests"], 2);
    assert_eq!(json["accounts"][0]["tokens"], 36);
}

#[test]
fn a_downstream_stage_without_accounts_reports_and_resets_the_published_pool() {
    let down = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],
        "admin":{"path":"/tollgate","keys":["FAKE-admin-key"]}}"#;
    let mut tg = Tg::new(down);
    // Shared data as the upstream stage of the same VM left it.
    let upstream = Tg::new(&one_account());
    crate::accounts::prepare(&tg.host, &upstream.root.plugin().unwrap().cfg).unwrap();
    let admin = [("x-api-key", "FAKE-admin-key")];
    get(&mut tg, "/tollgate/usage", &admin);
    let json = tg.host.reply().json();
    assert_eq!(json["accounts"][0]["name"], "anthropic-1");
    assert_eq!(json["accounts"][0]["provider"], "anthropic");
    tg.send("POST", "/tollgate/accounts/anthropic-1/reset", &admin, "");
    assert_eq!(tg.host.reply().status, 200);
    tg.send("POST", "/tollgate/accounts/anthropic-9/reset", &admin, "");
    assert_eq!(tg.host.reply().status, 404);
}

/// A page of another site that frames the dashboard (which the browser fills with its Basic
/// credentials) could trick a click on pause or reset: the page's own same-origin request
/// passes the cross-site check. The dashboard refuses to be framed.
#[test]
fn the_dashboard_refuses_to_be_framed_by_another_page() {
    for accept in ["gzip", "identity"] {
        let mut tg = Tg::new(&config());
        get(
            &mut tg,
            "/tollgate/",
            &[
                ("authorization", "Basic YWRtaW46RkFLRS1hZG1pbi1rZXk="),
                ("accept-encoding", accept),
            ],
        );
        let reply = tg.host.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            reply.header("content-security-policy"),
            Some("frame-ancestors 'none'")
        );
    }
}
