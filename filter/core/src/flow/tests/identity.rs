//! Identity and routing: keys, trusted names and claims, anonymous callers, and every
//! refusal that comes before admission.
#![cfg(test)]

use super::*;
use crate::facts;
use crate::flow::Action;

const TWO_TEAMS: &str = r#"{"consumers":[
    {"name":"team-a","keys":["key-a"],"models":["claude-*"]},
    {"name":"team-b","keys":["key-b"]}]}"#;

fn rejections(tg: &Tg, consumer: &str, reason: &str) -> u64 {
    let labels = [("consumer", consumer), ("reason", reason)];
    tg.metric_value("tollgate_rejections_total", &labels)
}

#[test]
fn a_consumer_key_names_the_consumer_and_never_goes_upstream() {
    let mut tg = Tg::new(TWO_TEAMS);
    let body = claude(100);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    assert_eq!(req.action, Action::Continue);
    assert!(tg.host.replies.is_empty());
    assert_eq!(tg.host.fact(facts::CONSUMER), Some("team-a"));
    assert_eq!(
        tg.host.fact(facts::MODEL),
        Some("claude-3-5-haiku-20241022")
    );
    let estimate = raw_estimate(&body);
    assert!(estimate > 10, "{estimate}");
    assert_eq!(
        tg.host.fact(facts::ESTIMATE),
        Some(estimate.to_string().as_str())
    );
    // No accounts: the tollgate key is removed, the caller's other headers stay.
    assert_eq!(tg.host.upstream_header("x-api-key"), None);
    assert_eq!(
        tg.host.upstream_header("anthropic-version"),
        Some("2023-06-01")
    );
    tg.answer(&mut req, 12, 3);
    assert_eq!(tg.host.fact(facts::DECISION), Some("admitted"));
}

#[test]
fn a_request_without_a_key_gets_401_in_the_anthropic_format() {
    let mut tg = Tg::new(TWO_TEAMS);
    let headers = [("anthropic-version", "2023-06-01")];
    let req = tg.post(MESSAGES, &headers, &claude(10));
    assert_eq!(req.action, Action::Pause);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json = reply.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "authentication_error");
    assert_eq!(
        json["error"]["message"],
        "no API key: send it in x-api-key or Authorization: Bearer"
    );
    assert_eq!(rejections(&tg, "unknown", "auth"), 1);
    let labels = [
        ("consumer", "unknown"),
        ("model", "other"),
        ("outcome", "auth"),
    ];
    assert_eq!(tg.metric_value("tollgate_requests_total", &labels), 1);
}

#[test]
fn an_unknown_bearer_key_gets_401_invalid_api_key_in_the_openai_format() {
    let mut tg = Tg::new(TWO_TEAMS);
    let headers = [("authorization", "Bearer sk-FAKE-not-configured")];
    tg.post(CHAT, &headers, &gpt(false));
    let json = tg.host.reply().json();
    assert_eq!(tg.host.reply().status, 401);
    assert_eq!(json["error"]["message"], "invalid API key");
    assert_eq!(json["error"]["code"], "invalid_api_key");
    assert_eq!(json["error"]["type"], "invalid_request_error");
}

#[test]
fn a_gemini_key_in_the_query_is_refused_in_the_gemini_format() {
    let mut tg = Tg::new(TWO_TEAMS);
    let path = format!("{FLASH}?key=not-a-key");
    tg.post(&path, &[], &gemini());
    let json = tg.host.reply().json();
    assert_eq!(tg.host.reply().status, 401);
    assert_eq!(json["error"]["code"], 401);
    assert_eq!(json["error"]["status"], "UNAUTHENTICATED");
}

#[test]
fn a_claim_that_jwt_authn_verified_names_the_consumer() {
    let config = r#"{"consumers":[{"name":"team-b","keys":["key-b"]}],
        "consumer_claim":{"metadata":"tollgate_jwt","claim":"sub"}}"#;
    let mut tg = Tg::new(config);
    let path = [
        "metadata",
        "filter_metadata",
        "envoy.filters.http.jwt_authn",
        "tollgate_jwt",
        "sub",
    ];
    tg.host.put_property(&path, "team-b");
    let req = tg.post(
        CHAT,
        &[("authorization", "Bearer eyJ-FAKE.jwt.token")],
        &gpt(false),
    );
    assert_eq!(req.action, Action::Continue);
    assert_eq!(tg.host.fact(facts::CONSUMER), Some("team-b"));
}

#[test]
fn a_trusted_name_nobody_configured_gets_403_unknown_consumer() {
    let config = r#"{"consumers":[{"name":"team-a"}],"consumer_header":"x-consumer"}"#;
    let mut tg = Tg::new(config);
    tg.post(CHAT, &[("x-consumer", "intruder")], &gpt(false));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.json()["error"]["message"],
        "this consumer is not configured here"
    );
    assert_eq!(reply.json()["error"]["code"], "permission_denied");
    assert_eq!(rejections(&tg, "unknown", "unknown_consumer"), 1);
}

#[test]
fn a_trusted_name_from_the_consumer_header_is_admitted_as_that_consumer() {
    let config = r#"{"consumers":[{"name":"team-a"}],"consumer_header":"x-consumer"}"#;
    let mut tg = Tg::new(config);
    let req = tg.post(CHAT, &[("x-consumer", " team-a ")], &gpt(false));
    assert_eq!(req.action, Action::Continue);
    assert_eq!(tg.host.fact(facts::CONSUMER), Some("team-a"));
}

#[test]
fn anonymous_callers_share_the_anonymous_limits() {
    let config = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],
        "anonymous":{"limits":[{"requests":1,"per":"minute"}]}}"#;
    let mut tg = Tg::new(config);
    let first = tg.post(CHAT, &[], &gpt(false));
    assert_eq!(first.action, Action::Continue);
    assert_eq!(tg.host.fact(facts::CONSUMER), Some("anonymous"));
    tg.post(CHAT, &[], &gpt(false));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("1"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(rejections(&tg, "anonymous", "requests"), 1);
}

#[test]
fn a_path_with_dot_segments_gets_400_before_identity() {
    let mut tg = Tg::new(TWO_TEAMS);
    tg.post("/v1/../v1/messages", &anthropic("key-a"), &claude(10));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(tg.host.fact(facts::CONSUMER), None);
}

#[test]
fn an_unserved_path_gets_404_that_never_repeats_the_query() {
    let mut tg = Tg::new(TWO_TEAMS);
    tg.send(
        "GET",
        "/v1/unknown/thing?key=SECRET-FAKE",
        &anthropic("key-a"),
        "",
    );
    let reply = tg.host.reply();
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json()["error"]["message"],
        "GET /v1/unknown/thing is not served here"
    );
    assert!(!reply.body.contains("SECRET"));
}

#[test]
fn a_client_never_picks_the_route_cluster() {
    let mut tg = Tg::new(TWO_TEAMS);
    let headers = [
        ("authorization", "Bearer key-b"),
        ("x-tollgate-route", "internal"),
    ];
    tg.post(CHAT, &headers, &gpt(false));
    assert_eq!(tg.host.upstream_header("x-tollgate-route"), None);
    assert!(tg
        .host
        .request_writes
        .contains(&("remove", "x-tollgate-route".into(), String::new())));
}

#[test]
fn a_metered_request_without_a_body_gets_400() {
    let mut tg = Tg::new(TWO_TEAMS);
    tg.send("POST", MESSAGES, &anthropic("key-a"), "");
    let reply = tg.host.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["message"], "request body is required");
}

#[test]
fn a_declared_length_over_the_limit_gets_413_before_the_body() {
    let config = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],"max_body_bytes":1000}"#;
    let mut tg = Tg::new(config);
    let mut headers = anthropic("key-a").to_vec();
    headers.push(("content-length", "1001"));
    let req = tg.post(MESSAGES, &headers, &claude(10));
    assert_eq!(req.action, Action::Pause);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 413);
    assert_eq!(
        reply.json()["error"]["message"],
        "request body is larger than 1000 bytes"
    );
    assert_eq!(reply.json()["error"]["type"], "request_too_large");
}

#[test]
fn a_body_that_grows_over_the_limit_gets_413() {
    let config = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],"max_body_bytes":1000}"#;
    let mut tg = Tg::new(config);
    let big = format!(
        r#"{{"model":"claude-3-5-haiku-20241022","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(1200)
    );
    tg.post(MESSAGES, &anthropic("key-a"), &big);
    assert_eq!(tg.host.reply().status, 413);
    assert_eq!(rejections(&tg, "team-a", "too_large"), 1);
}

#[test]
fn a_body_that_is_not_json_gets_400_with_the_scanner_message() {
    let mut tg = Tg::new(TWO_TEAMS);
    tg.post(MESSAGES, &anthropic("key-a"), "{\"model\": [");
    let reply = tg.host.reply();
    assert_eq!(reply.status, 400);
    assert!(!reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(tg.host.fact(facts::ESTIMATE), None);
}

#[test]
fn request_trailers_on_a_metered_endpoint_get_400() {
    let mut tg = Tg::new(TWO_TEAMS);
    tg.host.request = vec![
        (":method".into(), "POST".into()),
        (":path".into(), MESSAGES.into()),
        ("x-api-key".into(), "key-a".into()),
    ];
    let mut flow = tg.flow();
    assert_eq!(flow.on_request_headers(&mut tg.host, false), Action::Pause);
    tg.host.request_body = claude(10).into_bytes();
    let size = tg.host.request_body.len();
    assert_eq!(
        flow.on_request_body(&mut tg.host, size, false),
        Action::Pause
    );
    assert_eq!(flow.on_request_trailers(&mut tg.host), Action::Pause);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["error"]["message"],
        "request trailers are not supported on this endpoint"
    );
    assert_eq!(tg.host.fact(facts::ESTIMATE), None);
}

#[test]
fn a_model_outside_the_consumers_allow_list_gets_403() {
    let mut tg = Tg::new(TWO_TEAMS);
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    tg.post(CHAT, &[("authorization", "Bearer key-a")], body);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.json()["error"]["message"],
        "team-a: model \"gpt-4o\" is not allowed"
    );
    assert_eq!(reply.json()["error"]["code"], "model_not_allowed");
    assert_eq!(rejections(&tg, "team-a", "model"), 1);
}

#[test]
fn a_model_with_no_price_under_a_cost_limit_gets_403() {
    let mut tg = Tg::new(&team_a(r#"[{"cost_usd":5,"per":"day"}]"#));
    let body = r#"{"model":"my-local-llama","messages":[{"role":"user","content":"hi"}]}"#;
    tg.post(CHAT, &[("authorization", "Bearer key-a")], body);
    let reply = tg.host.reply();
    assert_eq!(reply.status, 403);
    let msg = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        msg,
        crate::pricing::no_price_message("team-a", Some("my-local-llama"))
    );
}

#[test]
fn a_known_key_is_matched_again_from_the_worker_cache() {
    let mut tg = Tg::new(TWO_TEAMS);
    for _ in 0..3 {
        let req = tg.post(CHAT, &[("authorization", "Bearer key-b")], &gpt(false));
        assert_eq!(req.action, Action::Continue);
        assert_eq!(tg.host.fact(facts::CONSUMER), Some("team-b"));
    }
    assert_eq!(
        tg.root.plugin().unwrap().known_keys.borrow().get("key-b"),
        Some(&1)
    );
}

#[test]
fn a_body_in_several_chunks_is_read_once_whole() {
    let mut tg = Tg::new(TWO_TEAMS);
    tg.host.request = vec![
        (":method".into(), "POST".into()),
        (":path".into(), MESSAGES.into()),
        ("x-api-key".into(), "key-a".into()),
    ];
    let mut flow = tg.flow();
    assert_eq!(flow.on_request_headers(&mut tg.host, false), Action::Pause);
    let body = claude(10);
    // Envoy buffers the body while the filter pauses: each callback sees all of it so far.
    for end in [7, 50, body.len()] {
        tg.host.request_body = body.as_bytes()[..end].to_vec();
        let last = end == body.len();
        let action = flow.on_request_body(&mut tg.host, end, last);
        assert_eq!(
            action,
            if last {
                Action::Continue
            } else {
                Action::Pause
            }
        );
    }
    let estimate = raw_estimate(&body).to_string();
    assert_eq!(tg.host.fact(facts::ESTIMATE), Some(estimate.as_str()));
}
