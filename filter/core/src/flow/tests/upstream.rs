//! The account and its credential: the pick, the swap, the headers that must not travel
//! with a pooled key, refusals when no account can serve, and the upstream stage's attempts.
#![cfg(test)]

use super::*;
use crate::facts;
use crate::flow::Action;

pub const ANT_1: &str = "sk-ant-FAKE-pooled-one-AAAAAAAAAAAA";
pub const ANT_2: &str = "sk-ant-FAKE-pooled-two-BBBBBBBBBBBB";
pub const OAI: &str = "sk-proj-FAKE-pooled-oai-CCCCCCCCCCCC";
pub const GEM: &str = "AIzaFAKE-pooled-gemini-DDDDDDDDDDDD";

/// Two Anthropic accounts, one OpenAI account with its own headers (and, downstream, its
/// own route), one Gemini.
pub fn pool(stage: &str) -> String {
    let route = if stage == "downstream" {
        r#","route":"openai-cluster""#
    } else {
        ""
    };
    format!(
        r#"{{"stage":"{stage}",
        "consumers":[{{"name":"team-a","keys":["key-a"],"models":["claude-*","gpt-*","gemini-*"]}}],
        "accounts":[
          {{"name":"anthropic-1","provider":"anthropic","key":"{ANT_1}"}},
          {{"name":"anthropic-2","provider":"anthropic","key":"{ANT_2}"}},
          {{"name":"openai-1","provider":"openai","key":"{OAI}","headers":{{"x-tenant":"blue"}}{route}}},
          {{"name":"gemini-1","provider":"gemini","key":"{GEM}"}}],
        "strip_request_headers":["x-internal-billing"]}}"#
    )
}

/// One Anthropic account.
pub fn one_account() -> String {
    format!(
        r#"{{"consumers":[{{"name":"team-a","keys":["key-a"],"models":["claude-*"]}}],
        "accounts":[{{"name":"anthropic-1","provider":"anthropic","key":"{ANT_1}"}}]}}"#
    )
}

#[test]
fn a_pooled_key_replaces_the_clients_and_nothing_may_scope_it() {
    let mut tg = Tg::new(&pool("downstream"));
    let headers = [
        ("authorization", "Bearer key-a"),
        ("openai-organization", "org-FAKE-attacker"),
        ("openai-project", "proj-FAKE"),
        ("x-internal-billing", "team-z"),
        ("accept-encoding", "br"),
    ];
    let req = tg.post(CHAT, &headers, &gpt(false));
    assert_eq!(req.action, Action::Continue);
    let h = &tg.host;
    assert_eq!(
        h.upstream_header("authorization"),
        Some(format!("Bearer {OAI}").as_str())
    );
    assert_eq!(h.upstream_header("openai-organization"), None);
    assert_eq!(h.upstream_header("openai-project"), None);
    assert_eq!(h.upstream_header("x-internal-billing"), None);
    assert_eq!(h.upstream_header("accept-encoding"), Some("identity"));
    assert_eq!(h.upstream_header("x-tenant"), Some("blue"));
    assert_eq!(
        h.upstream_header("x-tollgate-route"),
        Some("openai-cluster")
    );
    assert_eq!(h.route_cache_cleared, 1);
    assert_eq!(h.fact(facts::ACCOUNT), Some("openai-1"));
    // The credential is written in one host call, after the client's was removed.
    let writes: Vec<&str> = h
        .request_writes
        .iter()
        .filter(|w| w.1 == "authorization")
        .map(|w| w.0)
        .collect();
    assert_eq!(writes, ["set"]);
}

#[test]
fn an_anthropic_request_without_a_version_gets_the_accounts_default() {
    let mut tg = Tg::new(&pool("downstream"));
    let headers = [("x-api-key", "key-a")];
    tg.post(MESSAGES, &headers, &claude(10));
    let h = &tg.host;
    let key = h.upstream_header("x-api-key").unwrap();
    assert!(key == ANT_1 || key == ANT_2, "{key}");
    assert_eq!(h.upstream_header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(h.upstream_header("authorization"), None);
}

#[test]
fn a_gemini_key_in_the_query_never_travels_with_the_pooled_key() {
    let mut tg = Tg::new(&pool("downstream"));
    let path = format!("{FLASH}?key=key-a&alt=json");
    tg.post(&path, &[], &gemini());
    let h = &tg.host;
    assert!(h.replies.is_empty(), "{:?}", h.replies);
    assert_eq!(h.upstream_header("x-goog-api-key"), Some(GEM));
    let upstream_path = h.upstream_header(":path").unwrap();
    assert!(!upstream_path.contains("key-a"), "{upstream_path}");
    assert!(upstream_path.starts_with(FLASH), "{upstream_path}");
}

#[test]
fn the_least_loaded_pick_spreads_requests_over_both_accounts() {
    let mut tg = Tg::new(&pool("downstream"));
    let mut seen = Vec::new();
    for _ in 0..4 {
        tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
        seen.push(tg.host.fact(facts::ACCOUNT).unwrap().to_string());
    }
    assert!(seen.contains(&"anthropic-1".to_string()), "{seen:?}");
    assert!(seen.contains(&"anthropic-2".to_string()), "{seen:?}");
}

#[test]
fn with_no_account_for_the_api_the_answer_is_503_no_account() {
    let mut tg = Tg::new(&one_account());
    let body = r#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#;
    tg.post(CHAT, &[("authorization", "Bearer key-a")], body);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json()["error"]["message"],
        "no usable openai account is configured"
    );
    assert_eq!(reply.json()["error"]["code"], "service_unavailable");
}

#[test]
fn when_every_account_is_cooling_the_answer_is_429_with_its_end() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    tg.respond(
        &mut req,
        429,
        &[("retry-after", "20"), ("content-type", "application/json")],
        &[body],
    );
    assert_eq!(
        tg.host
            .logged_count("account anthropic-1 is now cooling (was ok)"),
        1
    );
    let gauge = tg.host.account_state("anthropic-1");
    assert_eq!(gauge, crate::accounts::StateKind::Cooling.gauge() as u64);
    tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("20"));
    assert_eq!(
        reply.json()["error"]["message"],
        "every anthropic account is cooling down; retry in 20s"
    );
    // The reservation of the refused request went back: nothing is left in flight.
    let labels = [("consumer", "team-a"), ("reason", "accounts_cooling")];
    assert_eq!(tg.metric_value("tollgate_rejections_total", &labels), 1);
}

#[test]
fn a_passthrough_request_takes_the_first_account_of_its_api() {
    let mut tg = Tg::new(&pool("downstream"));
    let req = tg.send(
        "GET",
        "/v1/models",
        &[("x-api-key", "key-a"), ("anthropic-version", "2023-06-01")],
        "",
    );
    assert_eq!(req.action, Action::Continue);
    assert_eq!(tg.host.upstream_header("x-api-key"), Some(ANT_1));
    assert_eq!(tg.host.fact(facts::ACCOUNT), Some("anthropic-1"));
    assert_eq!(tg.host.fact(facts::ESTIMATE), None);
}

#[test]
fn an_upstream_stage_refuses_a_request_the_downstream_stage_did_not_admit() {
    let mut tg = Tg::new(&pool("upstream"));
    tg.post(
        MESSAGES,
        &[("x-api-key", "sk-ant-FAKE-callers-own")],
        &claude(10),
    );
    let reply = tg.host.reply();
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.json()["error"]["message"],
        "this request was not admitted by tollgate's downstream stage"
    );
    assert_eq!(
        tg.host.upstream_header("x-api-key"),
        Some("sk-ant-FAKE-callers-own")
    );
}

#[test]
fn each_upstream_attempt_takes_an_account_no_earlier_attempt_used() {
    let mut tg = Tg::new(&pool("upstream"));
    tg.host.set_property_for_test(facts::CONSUMER, "team-a");
    tg.host.set_property_for_test(facts::ESTIMATE, "40");
    let mut first = tg.send("POST", MESSAGES, &[("anthropic-version", "2023-06-01")], "");
    assert_eq!(first.action, Action::Continue);
    let picked = tg.host.fact(facts::ACCOUNT).unwrap().to_string();
    let tried = tg.host.fact(facts::TRIED).unwrap().to_string();
    assert!(tried == "0" || tried == "1", "{tried}");
    // The first attempt got a 503 from its account; Envoy retries.
    tg.respond_open(&mut first, 503, &[], &[b"overloaded"], true);
    first.flow.on_done(&mut tg.host);
    let second = tg.send("POST", MESSAGES, &[("anthropic-version", "2023-06-01")], "");
    assert_eq!(second.action, Action::Continue);
    let other = tg.host.fact(facts::ACCOUNT).unwrap().to_string();
    assert_ne!(other, picked);
    assert_eq!(
        tg.host.fact(facts::TRIED),
        Some(if tried == "0" { "0,1" } else { "1,0" })
    );
    let labels = [("account", other.as_str())];
    assert_eq!(tg.metric_value("tollgate_failovers_total", &labels), 1);
    assert_eq!(upstream_responses(&tg, &picked, "503"), 1);
}

/// Two Anthropic accounts; a session named by `x-session-id` stays on one.
fn sticky() -> String {
    pool("downstream").replacen(
        '{',
        r#"{"selection":{"strategy":"least_loaded","affinity":{"header":"x-session-id","conversation":false,"ttl":"5m"}},"#,
        1,
    )
}

#[test]
fn a_session_header_keeps_a_conversation_on_its_account() {
    let mut tg = Tg::new(&sticky());
    let mut headers = anthropic("key-a").to_vec();
    headers.push(("x-session-id", "chat-42"));
    tg.post(MESSAGES, &headers, &claude(10));
    let first = tg.host.fact(facts::ACCOUNT).unwrap().to_string();
    let session = format!("h{:016x}", crate::store::owner_tag("chat-42"));
    assert_eq!(tg.host.fact(facts::SESSION), Some(session.as_str()));
    for _ in 0..3 {
        tg.post(MESSAGES, &headers, &claude(10));
        assert_eq!(tg.host.fact(facts::ACCOUNT), Some(first.as_str()));
    }
    let outcome = |o: &str| tg.metric_value("tollgate_affinity_total", &[("outcome", o)]);
    assert_eq!((outcome("miss"), outcome("hit")), (1, 3));
}

#[test]
fn without_accounts_the_fingerprint_is_left_for_an_upstream_stage() {
    let mut tg = Tg::new(LABELLED_NO_ACCOUNTS);
    let req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(req.action, Action::Continue);
    let fp = tg.host.fact(facts::FINGERPRINT).unwrap();
    assert_eq!(fp.len(), 16);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()), "{fp}");
    assert_eq!(tg.host.fact(facts::ACCOUNT), None);
}

const LABELLED_NO_ACCOUNTS: &str = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}]}"#;

#[test]
fn without_accounts_only_codings_the_meter_reads_may_come_back() {
    let mut tg = Tg::new(LABELLED_NO_ACCOUNTS);
    let mut headers = anthropic("key-a").to_vec();
    headers.push(("accept-encoding", "br, gzip;q=0.5, zstd"));
    tg.post(MESSAGES, &headers, &claude(10));
    assert_eq!(tg.host.upstream_header("accept-encoding"), Some("gzip"));
    // Already decodable: not written again.
    let mut plain = anthropic("key-a").to_vec();
    plain.push(("accept-encoding", "gzip, deflate"));
    tg.post(MESSAGES, &plain, &claude(10));
    let writes = tg
        .host
        .request_writes
        .iter()
        .filter(|w| w.1 == "accept-encoding")
        .count();
    assert_eq!(writes, 0);
}

#[test]
fn a_callers_own_key_goes_upstream_but_a_tollgate_key_beside_it_never() {
    let config =
        r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],"consumer_header":"x-consumer"}"#;
    let mut tg = Tg::new(config);
    let path = format!("{FLASH}?key=key-a");
    let headers = [
        ("x-consumer", "team-a"),
        ("x-goog-api-key", "AIzaFAKE-callers-own"),
    ];
    let req = tg.post(&path, &headers, &gemini());
    assert_eq!(req.action, Action::Continue);
    assert_eq!(
        tg.host.upstream_header("x-goog-api-key"),
        Some("AIzaFAKE-callers-own")
    );
    assert_eq!(tg.host.upstream_header(":path"), Some(FLASH));
}

#[test]
fn an_upstream_stage_refuses_a_bad_path_itself() {
    let mut tg = Tg::new(&pool("upstream"));
    tg.host.set_property_for_test(facts::ESTIMATE, "40");
    tg.send(
        "POST",
        "/v1/./messages",
        &[("anthropic-version", "2023-06-01")],
        "",
    );
    assert_eq!(tg.host.reply().status, 400);
    assert_eq!(tg.host.fact(facts::ACCOUNT), None);
}

#[test]
fn an_upstream_stage_lets_an_identified_model_list_through_with_a_pooled_key() {
    let mut tg = Tg::new(&pool("upstream"));
    tg.host.set_property_for_test(facts::CONSUMER, "team-a");
    let req = tg.send(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-FAKE-left-over")],
        "",
    );
    assert_eq!(req.action, Action::Continue);
    assert_eq!(
        tg.host.upstream_header("authorization"),
        Some(format!("Bearer {OAI}").as_str())
    );
    assert_eq!(tg.host.fact(facts::TRIED), Some("2"));
}

#[test]
fn a_request_refused_for_want_of_an_account_gets_its_reservation_back() {
    let config = one_account().replace(
        r#""models":["claude-*"]"#,
        r#""models":["claude-*"],"limits":[{"tokens":100000,"per":"minute"}]"#,
    );
    let mut tg = Tg::new(&config);
    let body = claude(10);
    let reserved = raw_estimate(&body) + 10;
    let mut first = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let limited = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#;
    let headers = [("retry-after", "20"), ("content-type", "application/json")];
    tg.respond(&mut first, 429, &headers, &[limited]);
    tg.post(MESSAGES, &anthropic("key-a"), &body);
    assert_eq!(tg.host.reply().status, 429);
    tg.host.now = T0 + 21_000;
    let mut third = tg.post(MESSAGES, &anthropic("key-a"), &body);
    assert_eq!(third.action, Action::Continue);
    tg.answer(&mut third, 5, 1);
    // Neither the refused upstream answer nor the refusal here kept any tokens.
    let remaining = (100_000 - reserved).to_string();
    assert_eq!(
        tg.host.client_header("x-ratelimit-remaining-tokens"),
        Some(remaining.as_str())
    );
}
