//! The answer: error heads held and cleared of the pooled key, the account's health from
//! the answer, and the metering per API (JSON, SSE, gzip, undecodable, absurd, refused).
#![cfg(test)]

use super::upstream::{one_account, ANT_1};
use super::*;
use crate::facts;
use crate::flow::Action;
use crate::key_evidence::samples;
use crate::sse::tests::{ANTHROPIC, GEMINI_SSE, OPENAI_CHAT_USAGE};

const JSON: (&str, &str) = ("content-type", "application/json");
const SSE: (&str, &str) = ("content-type", "text/event-stream");

/// One consumer with an allow-list, so the model label is the matched glob.
const LABELLED: &str = r#"{"consumers":[{"name":"team-a","keys":["key-a"],"models":["claude-*","gpt-*","gemini-*"]}]}"#;

fn usage(tg: &Tg) -> (Option<&str>, Option<&str>, Option<&str>) {
    let h = &tg.host;
    (
        h.fact(facts::INPUT_TOKENS),
        h.fact(facts::OUTPUT_TOKENS),
        h.fact(facts::USAGE),
    )
}

fn tokens(tg: &Tg, model: &str, ty: &str) -> u64 {
    let labels = [
        ("consumer", "team-a"),
        ("model", model),
        ("account", "none"),
        ("type", ty),
    ];
    tg.metric_value("tollgate_tokens_total", &labels)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend_from_slice(&[0; 8]);
    out
}

#[test]
fn an_upstream_error_that_echoes_the_pooled_key_is_masked_in_its_body_and_headers() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let body = format!(
        r#"{{"type":"error","error":{{"type":"invalid_request_error","message":"key {ANT_1} may not use this model"}}}}"#
    );
    let (head, tail) = body.as_bytes().split_at(20);
    let echo = format!("key={ANT_1}");
    let delivered = tg.respond(&mut req, 400, &[JSON, ("x-echo", &echo)], &[head, tail]);
    let delivered = String::from_utf8(delivered).unwrap();
    assert_eq!(delivered.len(), body.len());
    assert!(!delivered.contains(ANT_1), "{delivered}");
    assert!(delivered.contains("sk-ant-*****"), "{delivered}");
    assert!(
        delivered.ends_with("AAAA may not use this model\"}}"),
        "{delivered}"
    );
    let shown = tg.host.client_header("x-echo").unwrap();
    assert_eq!(shown.len(), echo.len());
    assert!(!shown.contains(ANT_1));
    // Not about the key: the account stays ok; the request costs nothing.
    assert!(tg.host.logged("is now").is_empty());
    assert_eq!(usage(&tg), (Some("0"), Some("0"), Some("refused")));
}

#[test]
fn the_first_chunk_of_an_error_is_held_until_its_head_is_in() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    tg.host.response = vec![(":status".into(), "500".into())];
    req.flow.on_response_headers(&mut tg.host, false);
    tg.host.response_body = b"{\"error\":".to_vec();
    assert_eq!(
        req.flow.on_response_body(&mut tg.host, 9, false),
        Action::Pause
    );
}

#[test]
fn an_error_ending_in_trailers_is_still_read_and_masked() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let (status, body) = samples::invalid_key(crate::api::Api::Anthropic);
    let body = body.replace("invalid x-api-key", &format!("invalid x-api-key {ANT_1}"));
    tg.respond_open(&mut req, status, &[JSON], &[body.as_bytes()], false);
    assert!(tg.host.logged("is now disabled").is_empty());
    assert_eq!(
        req.flow.on_response_trailers(&mut tg.host),
        Action::Continue
    );
    let held = String::from_utf8(tg.host.response_body.clone()).unwrap();
    assert!(!held.contains(ANT_1), "{held}");
    assert_eq!(
        tg.host.logged_count("account anthropic-1 is now disabled"),
        1
    );
}

#[test]
fn the_providers_invalid_key_answer_disables_the_account_until_a_reset() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let (status, body) = samples::invalid_key(crate::api::Api::Anthropic);
    tg.respond(&mut req, status, &[JSON], &[body.as_bytes()]);
    assert_eq!(
        tg.host
            .logged_count("account anthropic-1 is now disabled (was ok)"),
        1
    );
    let gauge = tg.host.account_state("anthropic-1");
    assert_eq!(gauge, crate::accounts::StateKind::Disabled.gauge() as u64);
    tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(tg.host.reply().status, 503);
    assert_eq!(
        tg.host.reply().json()["error"]["message"],
        "no usable anthropic account is configured"
    );
}

#[test]
fn anthropic_json_usage_is_reported_and_counted_by_model_label() {
    let mut tg = Tg::new(LABELLED);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    let answer = anthropic_answer(31, 77);
    let delivered = tg.respond(&mut req, 200, &[JSON], &[answer.as_bytes()]);
    assert_eq!(delivered, answer.as_bytes());
    assert_eq!(usage(&tg), (Some("31"), Some("77"), Some("reported")));
    assert_eq!(tokens(&tg, "claude-3-5-haiku-20241022", "input"), 31);
    assert_eq!(tokens(&tg, "claude-3-5-haiku-20241022", "output"), 77);
    assert_eq!(admitted(&tg, "team-a", "claude-3-5-haiku-20241022"), 1);
    assert_eq!(upstream_responses(&tg, "none", "200"), 1);
    let cost = [
        ("consumer", "team-a"),
        ("model", "claude-3-5-haiku-20241022"),
    ];
    // Haiku 3.5: $0.80 in, $4 out per million tokens: 24.8 µ$ (rounded up) + 308 µ$.
    assert_eq!(
        tg.metric_value("tollgate_cost_usd_micros_total", &cost),
        25 + 308
    );
}

#[test]
fn anthropic_sse_usage_is_read_across_chunks() {
    let mut tg = Tg::new(LABELLED);
    let body = claude_stream(100);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let chunks: Vec<&[u8]> = ANTHROPIC.as_bytes().chunks(97).collect();
    let delivered = tg.respond(&mut req, 200, &[SSE], &chunks);
    assert_eq!(delivered, ANTHROPIC.as_bytes());
    // 472 input + 100 cache writes + 2048 cache reads; 15 output.
    assert_eq!(usage(&tg), (Some("2620"), Some("15"), Some("reported")));
    assert_eq!(tokens(&tg, "claude-3-5-haiku-20241022", "cache_read"), 2048);
    assert_eq!(tokens(&tg, "claude-3-5-haiku-20241022", "cache_write"), 100);
}

#[test]
fn openai_sse_usage_comes_from_the_last_chunk() {
    let mut tg = Tg::new(LABELLED);
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let mut req = tg.post(CHAT, &[("authorization", "Bearer key-a")], body);
    let chunks: Vec<&[u8]> = OPENAI_CHAT_USAGE.as_bytes().chunks(200).collect();
    let delivered = tg.respond(&mut req, 200, &[SSE], &chunks);
    assert_eq!(delivered, OPENAI_CHAT_USAGE.as_bytes());
    assert_eq!(usage(&tg), (Some("1200"), Some("9"), Some("reported")));
    assert_eq!(tokens(&tg, "gpt-4o-mini", "cache_read"), 1024);
    assert_eq!(tokens(&tg, "gpt-4o-mini", "input"), 176);
}

#[test]
fn a_stream_without_usage_asked_for_gets_it_and_the_client_never_sees_the_usage_chunk() {
    let mut tg = Tg::new(LABELLED);
    let body = gpt(true);
    let mut req = tg.post(CHAT, &[("authorization", "Bearer key-a")], &body);
    let sent = String::from_utf8(tg.host.request_body.clone()).unwrap();
    assert!(sent.contains("\"include_usage\":true"), "{sent}");
    assert_eq!(
        tg.host.upstream_header("content-length"),
        Some(sent.len().to_string().as_str())
    );
    assert_eq!(tg.host.upstream_header("accept-encoding"), Some("identity"));
    let chunks: Vec<&[u8]> = OPENAI_CHAT_USAGE.as_bytes().chunks(150).collect();
    let headers = [SSE, ("content-length", "9999")];
    let delivered = String::from_utf8(tg.respond(&mut req, 200, &headers, &chunks)).unwrap();
    assert_eq!(tg.host.client_header("content-length"), None);
    assert!(!delivered.contains("prompt_tokens"), "{delivered}");
    assert!(delivered.contains("мир! 你好"));
    assert!(delivered.ends_with("data: [DONE]\n\n"), "{delivered}");
    assert_eq!(usage(&tg), (Some("1200"), Some("9"), Some("reported")));
}

#[test]
fn gemini_sse_usage_counts_thoughts_as_output() {
    let mut tg = Tg::new(LABELLED);
    let mut req = tg.post(FLASH_SSE, &[("x-goog-api-key", "key-a")], &gemini());
    assert_eq!(tg.host.fact(facts::MODEL), Some("gemini-2.0-flash"));
    let chunks: Vec<&[u8]> = GEMINI_SSE.as_bytes().chunks(64).collect();
    tg.respond(&mut req, 200, &[SSE], &chunks);
    // 600 prompt tokens (512 cached); 21 candidates + 400 thoughts.
    assert_eq!(usage(&tg), (Some("600"), Some("421"), Some("reported")));
    assert_eq!(tokens(&tg, "gemini-2_0-flash", "cache_read"), 512);
}

#[test]
fn a_gzip_json_answer_is_decoded_and_metered() {
    let mut tg = Tg::new(LABELLED);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    let packed = gzip(anthropic_answer(31, 77).as_bytes());
    let chunks: Vec<&[u8]> = packed.chunks(16).collect();
    let delivered = tg.respond(
        &mut req,
        200,
        &[JSON, ("content-encoding", "gzip")],
        &chunks,
    );
    assert_eq!(delivered, packed);
    assert_eq!(usage(&tg), (Some("31"), Some("77"), Some("reported")));
}

#[test]
fn an_undecodable_answer_is_charged_its_estimate_and_reserved_output() {
    let mut tg = Tg::new(LABELLED);
    let body = claude(300);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let estimate = raw_estimate(&body);
    tg.respond(
        &mut req,
        200,
        &[JSON, ("content-encoding", "br")],
        &[b"\x0b\x02\x80binary"],
    );
    let (input, output, source) = usage(&tg);
    assert_eq!(input, Some(estimate.to_string().as_str()));
    assert_eq!(output, Some("300"));
    assert_eq!(source, Some("undecodable"));
    let reason = [("reason", "unsupported_encoding")];
    assert_eq!(
        tg.metric_value("tollgate_usage_fallbacks_total", &reason),
        1
    );
}

#[test]
fn absurd_reported_usage_is_replaced_by_the_estimate_and_flagged_invalid() {
    let mut tg = Tg::new(LABELLED);
    let body = claude(100);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let estimate = raw_estimate(&body);
    let answer = r#"{"type":"message","usage":{"input_tokens":-5,"output_tokens":1e30}}"#;
    tg.respond(&mut req, 200, &[JSON], &[answer.as_bytes()]);
    let (input, output, source) = usage(&tg);
    assert_eq!(input, Some(estimate.to_string().as_str()));
    assert!(output.unwrap().parse::<u64>().unwrap() <= 100, "{output:?}");
    assert_eq!(source, Some("invalid"));
    let reason = [("reason", "invalid_usage")];
    assert_eq!(
        tg.metric_value("tollgate_usage_fallbacks_total", &reason),
        1
    );
}

#[test]
fn a_refused_request_costs_no_tokens_but_counts_as_a_request() {
    let mut tg = Tg::new(LABELLED);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    tg.respond(
        &mut req,
        529,
        &[JSON],
        &[br#"{"type":"error","error":{"type":"overloaded_error"}}"#],
    );
    assert_eq!(usage(&tg), (Some("0"), Some("0"), Some("refused")));
    assert_eq!(admitted(&tg, "team-a", "claude-3-5-haiku-20241022"), 1);
    assert_eq!(upstream_responses(&tg, "none", "529"), 1);
    assert_eq!(tokens(&tg, "claude-3-5-haiku-20241022", "input"), 0);
}

#[test]
fn envoys_own_reply_is_neither_metered_nor_held_against_the_account() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    tg.host.put_property(
        &facts::RESPONSE_CODE_DETAILS,
        "upstream_reset_before_response_started",
    );
    let delivered = tg.respond(
        &mut req,
        503,
        &[("content-type", "text/plain")],
        &[b"upstream connect error"],
    );
    assert_eq!(delivered, b"upstream connect error");
    assert_eq!(usage(&tg), (Some("0"), Some("0"), Some("none")));
    assert!(tg.host.logged("is now").is_empty());
}

#[test]
fn an_overload_event_inside_a_successful_stream_cools_the_account() {
    let mut tg = Tg::new(&one_account());
    let body = claude_stream(100);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n\
                  event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    tg.respond(&mut req, 200, &[SSE], &[stream.as_bytes()]);
    assert_eq!(
        tg.host
            .logged_count("account anthropic-1 is now cooling (was ok)"),
        1
    );
}

#[test]
fn a_staged_stream_error_cools_the_account_the_upstream_stage_named() {
    // The downstream stage of a failover setup: no accounts here, the upstream stage named
    // the account in filter state.
    let mut tg = Tg::new(LABELLED);
    let upstream = Tg::new(&one_account());
    // Shared data as the upstream stage's configuration left it: the pool's health keys.
    crate::accounts::prepare(&tg.host, &upstream.root.plugin().unwrap().cfg).unwrap();
    tg.host.set_property_for_test(facts::ACCOUNT, "anthropic-1");
    let body = claude_stream(100);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let stream = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow\"}}\n\n";
    tg.respond(&mut req, 200, &[SSE], &[stream.as_bytes()]);
    assert_eq!(
        tg.host
            .logged_count("account anthropic-1 is now cooling (was ok)"),
        1
    );
    let gauge = tg.host.account_state("anthropic-1");
    assert_eq!(gauge, crate::accounts::StateKind::Cooling.gauge() as u64);
    // The upstream stage counted the answer; the downstream stage does not count it again.
    assert_eq!(upstream_responses(&tg, "anthropic-1", "200"), 0);
}

#[test]
fn a_passthrough_answer_loses_the_providers_rate_headers_and_is_not_metered() {
    let mut tg = Tg::new(LABELLED);
    let mut req = tg.send("GET", "/v1/models", &anthropic("key-a"), "");
    assert_eq!(req.action, Action::Continue);
    let headers = [JSON, ("anthropic-ratelimit-requests-remaining", "49")];
    tg.respond(&mut req, 200, &headers, &[br#"{"data":[]}"#]);
    assert_eq!(
        tg.host
            .client_header("anthropic-ratelimit-requests-remaining"),
        None
    );
    assert_eq!(tg.host.fact(facts::USAGE), None);
    assert_eq!(tg.host.fact(facts::DECISION), Some("admitted"));
}

#[test]
fn a_large_answer_in_one_chunk_is_metered_in_windows() {
    let mut tg = Tg::new(LABELLED);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    let text = "sunny ".repeat(40_000);
    let answer = format!(
        r#"{{"type":"message","content":[{{"type":"text","text":"{text}"}}],"usage":{{"input_tokens":12,"output_tokens":40000}}}}"#
    );
    assert!(answer.len() > 3 * 64 * 1024);
    let delivered = tg.respond(&mut req, 200, &[JSON], &[answer.as_bytes()]);
    assert_eq!(delivered.len(), answer.len());
    assert_eq!(usage(&tg), (Some("12"), Some("40000"), Some("reported")));
}

#[test]
fn a_model_no_glob_matches_is_labelled_other() {
    let mut tg = Tg::new(r#"{"consumers":[{"name":"team-a","keys":["key-a"]}]}"#);
    let body = r#"{"model":"my-own-model-7b","messages":[{"role":"user","content":"hi"}]}"#;
    let mut req = tg.post(CHAT, &[("authorization", "Bearer key-a")], body);
    let answer = r#"{"usage":{"prompt_tokens":5,"completion_tokens":6}}"#;
    tg.respond(&mut req, 200, &[JSON], &[answer.as_bytes()]);
    assert_eq!(admitted(&tg, "team-a", "other"), 1);
    assert_eq!(tokens(&tg, "other", "output"), 6);
}

#[test]
fn a_cooling_that_ended_shows_ok_again_on_the_next_quiet_answer() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let limited = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    tg.respond(&mut req, 429, &[("retry-after", "5"), JSON], &[limited]);
    let cooling = crate::accounts::StateKind::Cooling.gauge() as u64;
    assert_eq!(tg.host.account_state("anthropic-1"), cooling);
    tg.host.now = T0 + 6_000;
    let mut quiet = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    tg.answer(&mut quiet, 10, 2);
    assert_eq!(tg.host.account_state("anthropic-1"), 0);
    assert_eq!(tg.host.logged_count("is now"), 1);
}

#[test]
fn a_disabled_account_is_probed_once_its_time_is_up_and_a_good_answer_restores_it() {
    let mut tg = Tg::new(&one_account());
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let (status, body) = samples::invalid_key(crate::api::Api::Anthropic);
    tg.respond(&mut req, status, &[JSON], &[body.as_bytes()]);
    assert_eq!(tg.host.logged_count("is now disabled"), 1);
    // disable_for is 10 minutes by default.
    tg.host.now = T0 + 600_001;
    let mut probe = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(probe.action, Action::Continue);
    assert_eq!(tg.host.upstream_header("x-api-key"), Some(ANT_1));
    tg.answer(&mut probe, 10, 2);
    assert_eq!(
        tg.host
            .logged_count("account anthropic-1 is now ok (was disabled)"),
        1
    );
    assert_eq!(tg.host.account_state("anthropic-1"), 0);
}

#[test]
fn counters_reach_the_host_summed_at_the_next_tick_and_only_once() {
    let mut tg = Tg::new(LABELLED);
    let m = "claude-3-5-haiku-20241022";
    let labels = [
        ("consumer", "team-a"),
        ("model", m),
        ("outcome", "admitted"),
    ];
    let tokens = [
        ("consumer", "team-a"),
        ("model", m),
        ("account", "none"),
        ("type", "output"),
    ];
    let shown = |tg: &Tg| {
        (
            tg.host.metric_value("tollgate_requests_total", &labels),
            tg.host.metric_value("tollgate_tokens_total", &tokens),
        )
    };
    for round in 1..=3u64 {
        for _ in 0..2 {
            let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
            let answer = anthropic_answer(30, 7);
            tg.respond(&mut req, 200, &[JSON], &[answer.as_bytes()]);
        }
        // Counted in the worker, not yet sent: the host still shows the last tick's sums.
        assert_eq!(shown(&tg), (2 * (round - 1), 14 * (round - 1)), "{round}");
        assert_eq!(
            tg.metric_value("tollgate_requests_total", &labels),
            2 * round
        );
        tg.root.on_tick(&mut tg.host);
        assert_eq!(shown(&tg), (2 * round, 14 * round), "{round}");
    }
    // A tick with nothing counted sends nothing.
    tg.root.on_tick(&mut tg.host);
    assert_eq!(shown(&tg), (6, 42));
}

#[test]
fn counts_since_the_last_tick_reach_the_host_on_a_new_configuration_and_when_the_root_ends() {
    let mut tg = Tg::new(LABELLED);
    let labels = [
        ("consumer", "team-a"),
        ("model", "claude-3-5-haiku-20241022"),
        ("outcome", "admitted"),
    ];
    let shown = |tg: &Tg| tg.host.metric_value("tollgate_requests_total", &labels);
    let one = |tg: &mut Tg| {
        let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
        tg.respond(
            &mut req,
            200,
            &[JSON],
            &[anthropic_answer(30, 7).as_bytes()],
        );
    };
    one(&mut tg);
    assert_eq!(shown(&tg), 0);
    // The same configuration loaded again: the old plugin's count is not lost with it.
    let size = tg.host.config.len();
    assert!(tg.root.configure(&mut tg.host, size));
    assert_eq!(shown(&tg), 1);
    one(&mut tg);
    assert_eq!(shown(&tg), 1);
    tg.root.on_done(&mut tg.host);
    assert_eq!(shown(&tg), 2);
}

#[test]
fn counts_of_a_request_in_flight_across_a_new_configuration_reach_the_host() {
    let mut tg = Tg::new(LABELLED);
    let tokens = [
        ("consumer", "team-a"),
        ("model", "claude-3-5-haiku-20241022"),
        ("account", "none"),
        ("type", "output"),
    ];
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    // The configuration is pushed again while the request is upstream.
    let size = tg.host.config.len();
    assert!(tg.root.configure(&mut tg.host, size));
    tg.respond(
        &mut req,
        200,
        &[JSON],
        &[anthropic_answer(30, 7).as_bytes()],
    );
    assert_eq!(
        tg.root.retired(),
        1,
        "the request still holds the old plugin"
    );
    drop(req);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(tg.host.metric_value("tollgate_tokens_total", &tokens), 7);
    assert_eq!(tg.root.retired(), 0);
}

#[test]
fn each_model_on_one_worker_is_charged_its_own_price_whatever_was_priced_before() {
    // One worker keeps the pricing match of the models it has seen: a model must never be
    // charged the price of the one before it, nor an unpriced one a price.
    let config = r#"{"consumers":[{"name":"team-a","keys":["key-a"],"models":["m-*"]}],
        "pricing":{"m-cheap*":{"input":1,"output":2},"m-dear*":{"input":10,"output":20}}}"#;
    let mut tg = Tg::new(config);
    let body = |model: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    for model in [
        "m-cheap-1",
        "m-dear-1",
        "m-cheap-1",
        "m-free",
        "m-dear-1",
        "m-cheap-2",
    ] {
        let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body(model));
        tg.respond(
            &mut req,
            200,
            &[JSON],
            &[anthropic_answer(1_000_000, 1_000_000).as_bytes()],
        );
    }
    let cost = |model: &str| {
        let labels = [("consumer", "team-a"), ("model", model)];
        tg.metric_value("tollgate_cost_usd_micros_total", &labels)
    };
    // $1 + $2 per cheap request, $10 + $20 per dear one; the unpriced model is `other`.
    assert_eq!(cost("m-cheap-1"), 2 * 3_000_000);
    assert_eq!(cost("m-cheap-2"), 3_000_000);
    assert_eq!(cost("m-dear-1"), 2 * 30_000_000);
    assert_eq!(cost("other"), 0);
}
