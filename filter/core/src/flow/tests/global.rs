//! Global limits: the admission call to the rate-limit service and each of its answers
//! (admit, over the limit, an error, a timeout, a failed dispatch) under both failure
//! modes; the charge the root sends after the response.
#![cfg(test)]

use super::*;
use crate::facts;
use crate::flow::Action;
use crate::limits::Limit;
use crate::ratelimit;

const OK: u64 = 1;
const OVER: u64 = 2;
const MINUTE: u64 = 2;

fn config(failure_mode: &str) -> String {
    format!(
        r#"{{"consumers":[{{"name":"team-a","keys":["key-a"],"limits":[{{"tokens":1000,"per":"minute"}}]}}],
            "global":{{"cluster":"ratelimit","domain":"tollgate","timeout":"50ms","failure_mode":"{failure_mode}"}}}}"#
    )
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A `RateLimitResponse`: the overall code, then per descriptor (code, limit per minute,
/// remaining, seconds until reset).
fn rls_reply(overall: u64, statuses: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    field_varint(&mut out, 1, overall);
    for &(code, limit, remaining, reset) in statuses {
        let mut st = Vec::new();
        field_varint(&mut st, 1, code);
        let mut l = Vec::new();
        field_varint(&mut l, 1, limit);
        field_varint(&mut l, 2, MINUTE);
        field_bytes(&mut l, 3, b"tokens");
        field_bytes(&mut st, 2, &l);
        field_varint(&mut st, 3, remaining);
        let mut d = Vec::new();
        field_varint(&mut d, 1, reset);
        field_bytes(&mut st, 4, &d);
        field_bytes(&mut out, 2, &st);
    }
    out
}

/// How many descriptors team-a's request sends.
fn descriptors(tg: &Tg) -> usize {
    let limits: Vec<Limit> = tg.root.plugin().unwrap().cfg.consumers[0].limits.clone();
    ratelimit::request_descriptors("team-a", &limits, Some("claude-3-5-haiku-20241022"), None).len()
}

/// Sends team-a's request; it waits for the service.
fn waiting(tg: &mut Tg) -> Req {
    let req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    assert_eq!(req.action, Action::Pause);
    assert!(tg.host.replies.is_empty());
    req
}

/// Team-a's request, admitted by the service (1000 per minute, 900 left).
fn admitted_globally(tg: &mut Tg) -> Req {
    let mut req = waiting(tg);
    let n = descriptors(tg);
    answer(
        tg,
        &mut req,
        0,
        rls_reply(OK, &vec![(OK, 1000, 900, 30); n]),
    );
    req
}

/// `tollgate_global_charges_total` with `outcome`.
fn charges(tg: &Tg, outcome: &str) -> u64 {
    tg.metric_value("tollgate_global_charges_total", &[("outcome", outcome)])
}

/// Team-a's request, admitted by the service and answered with 20 + 4 tokens.
fn served(tg: &mut Tg) {
    let mut req = admitted_globally(tg);
    let json = [("content-type", "application/json")];
    tg.respond(&mut req, 200, &json, &[anthropic_answer(20, 4).as_bytes()]);
}

fn answer(tg: &mut Tg, req: &mut Req, status: u32, reply: Vec<u8>) {
    let token = tg.host.grpc.last().unwrap().token;
    tg.host.grpc_reply = reply;
    let size = tg.host.grpc_reply.len();
    req.flow.on_grpc_response(&mut tg.host, token, status, size);
}

#[test]
fn admission_asks_the_service_and_waits_for_its_answer() {
    let mut tg = Tg::new(&config("allow"));
    waiting(&mut tg);
    let sent = tg.host.grpc.last().unwrap();
    assert_eq!(sent.cluster, "ratelimit");
    assert_eq!(sent.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(sent.method, "ShouldRateLimit");
    assert_eq!(sent.timeout_ms, 50);
    assert!(sent.message.windows(8).any(|w| w == b"tollgate"));
    assert_eq!(tg.host.tick_ms, Some(100));
}

#[test]
fn an_ok_answer_resumes_the_request_with_the_tighter_headroom_in_its_headers() {
    let mut tg = Tg::new(&config("allow"));
    let mut req = waiting(&mut tg);
    let n = descriptors(&tg);
    answer(
        &mut tg,
        &mut req,
        0,
        rls_reply(OK, &vec![(OK, 800, 600, 30); n]),
    );
    assert_eq!(tg.host.resumed, 1);
    assert!(tg.host.replies.is_empty());
    tg.answer(&mut req, 20, 4);
    assert_eq!(
        tg.host.client_header("x-ratelimit-limit-tokens"),
        Some("800")
    );
    assert_eq!(tg.host.fact(facts::DECISION), Some("admitted"));
}

#[test]
fn an_over_limit_answer_is_429_global_naming_the_limit_and_its_reset() {
    let mut tg = Tg::new(&config("allow"));
    let mut req = waiting(&mut tg);
    let n = descriptors(&tg);
    let mut statuses = vec![(OK, 1000, 900, 10); n];
    statuses[0] = (OVER, 1000, 0, 30);
    answer(&mut tg, &mut req, 0, rls_reply(OVER, &statuses));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(
        reply.json()["error"]["message"],
        "team-a: 1000 tokens per minute (global); retry in 30s"
    );
    assert_eq!(tg.host.resumed, 0);
    let labels = [("consumer", "team-a"), ("reason", "global")];
    assert_eq!(tg.metric_value("tollgate_rejections_total", &labels), 1);
    // The local reservation went back: the next request sees the whole local limit (once
    // the global window that refused has ended, or this worker answers it from memory).
    tg.host.now += 30_000;
    let mut next = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    answer(
        &mut tg,
        &mut next,
        0,
        rls_reply(OK, &vec![(OK, 5000, 5000, 30); n]),
    );
    assert_eq!(tg.host.resumed, 1);
}

#[test]
fn a_failing_service_under_allow_lets_the_request_through_and_logs_the_transition_once() {
    let mut tg = Tg::new(&config("allow"));
    let mut req = waiting(&mut tg);
    answer(&mut tg, &mut req, 14, Vec::new());
    assert_eq!(tg.host.resumed, 1);
    assert!(tg.host.replies.is_empty());
    assert_eq!(tg.metric_value("tollgate_global_degraded_total", &[]), 1);
    let mut again = waiting(&mut tg);
    answer(&mut tg, &mut again, 14, Vec::new());
    assert_eq!(tg.metric_value("tollgate_global_degraded_total", &[]), 2);
    let failing = tg
        .host
        .logged("global rate-limit service failing (gRPC status 14); failure_mode applies");
    assert_eq!(failing.len(), 1);
    let mut healthy = waiting(&mut tg);
    let n = descriptors(&tg);
    answer(
        &mut tg,
        &mut healthy,
        0,
        rls_reply(OK, &vec![(OK, 1000, 900, 30); n]),
    );
    assert_eq!(
        tg.host
            .logged_count("global rate-limit service answering again"),
        1
    );
}

#[test]
fn a_timeout_under_deny_answers_503_global_unavailable() {
    let mut tg = Tg::new(&config("deny"));
    let mut req = waiting(&mut tg);
    // gRPC DEADLINE_EXCEEDED.
    answer(&mut tg, &mut req, 4, Vec::new());
    let reply = tg.host.reply();
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json()["error"]["message"],
        "the global rate-limit service is unavailable"
    );
    assert_eq!(reply.json()["error"]["type"], "api_error");
    assert_eq!(tg.host.resumed, 0);
}

#[test]
fn an_undecodable_answer_counts_as_a_failure() {
    let mut tg = Tg::new(&config("deny"));
    let mut req = waiting(&mut tg);
    answer(&mut tg, &mut req, 0, vec![0xff, 0xff, 0xff]);
    assert_eq!(tg.host.reply().status, 503);
    assert_eq!(
        tg.host.logged_count("global rate-limit service failing ("),
        1
    );
}

#[test]
fn a_failed_dispatch_under_allow_goes_on_at_once() {
    let mut tg = Tg::new(&config("allow"));
    tg.host.grpc_refuses = Some(10);
    let req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    assert_eq!(req.action, Action::Continue);
    assert_eq!(tg.host.resumed, 0);
    assert_eq!(
        tg.host
            .logged_count("failing (dispatch failed: InternalFailure)"),
        1
    );
}

#[test]
fn a_failed_dispatch_under_deny_answers_503_at_once() {
    let mut tg = Tg::new(&config("deny"));
    tg.host.grpc_refuses = Some(4);
    let req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    assert_eq!(req.action, Action::Pause);
    assert_eq!(tg.host.reply().status, 503);
}

#[test]
fn an_answer_to_another_token_is_ignored() {
    let mut tg = Tg::new(&config("deny"));
    let mut req = waiting(&mut tg);
    let token = tg.host.grpc.last().unwrap().token;
    req.flow.on_grpc_response(&mut tg.host, token + 1, 14, 0);
    assert!(tg.host.replies.is_empty());
    assert_eq!(tg.host.resumed, 0);
}

#[test]
fn the_real_usage_is_charged_from_the_tick_and_counted_when_sent() {
    let mut tg = Tg::new(&config("allow"));
    served(&mut tg);
    // One call on the request's path (admission): the response and its end made none.
    assert_eq!(tg.host.grpc.len(), 1);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(tg.host.grpc.len(), 2);
    let charge = tg.host.grpc.last().unwrap().clone();
    assert_eq!(charge.timeout_ms, 1000);
    assert_eq!(charge.method, "ShouldRateLimit");
    tg.root.on_grpc_response(&mut tg.host, charge.token, 0);
    // One count per descriptor charged: team-a's tokens, and team-a's tokens on the model.
    assert_eq!(charges(&tg, "sent"), 2);
    // Nothing more to send.
    tg.root.on_tick(&mut tg.host);
    assert_eq!(tg.host.grpc.len(), 2);
}

#[test]
fn a_charge_that_cannot_be_dispatched_is_counted_as_dropped() {
    let mut tg = Tg::new(&config("allow"));
    served(&mut tg);
    tg.host.grpc_refuses = Some(10);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(charges(&tg, "dropped"), 2, "both descriptors of the call");
}

#[test]
fn a_client_that_leaves_while_the_service_decides_is_charged_nothing() {
    let mut tg = Tg::new(&config("allow"));
    let mut req = waiting(&mut tg);
    req.flow.on_log(&mut tg.host);
    assert_eq!(tg.host.fact(facts::USAGE), Some("none"));
    assert_eq!(tg.host.fact(facts::INPUT_TOKENS), Some("0"));
}

// ---- charges summed per tick ---------------------------------------------------------------

/// (entries' last value, hits) of each descriptor of a charge call.
fn charged(message: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut r = crate::codec::Reader::new(message);
    while !r.is_empty() {
        let key = r.varint().unwrap();
        let b = r.bytes().unwrap();
        if key >> 3 != 2 {
            continue;
        }
        // A descriptor: entries (field 1), then hits_addend (field 3, a UInt64Value).
        let mut d = crate::codec::Reader::new(b);
        while !d.is_empty() {
            let k = d.varint().unwrap();
            let v = d.bytes().unwrap();
            if k >> 3 == 3 {
                let mut h = crate::codec::Reader::new(v);
                let _ = h.varint().unwrap();
                out.push(h.varint().unwrap());
            }
        }
    }
    out
}

#[test]
fn responses_that_end_in_one_tick_are_charged_in_one_call_with_their_usage_summed() {
    let mut tg = Tg::new(&config("allow"));
    for _ in 0..5 {
        served(&mut tg);
    }
    assert_eq!(tg.host.grpc.len(), 5, "five admissions");
    tg.root.on_tick(&mut tg.host);
    assert_eq!(tg.host.grpc.len(), 6, "one charge call for the five");
    let charge = tg.host.grpc.last().unwrap().clone();
    // Each descriptor once, with the five responses' 20 + 4 tokens summed.
    assert_eq!(charged(&charge.message), vec![120, 120]);
    tg.root.on_grpc_response(&mut tg.host, charge.token, 0);
    assert_eq!(charges(&tg, "sent"), 2);
    // A reply to a token the root never sent counts nothing.
    tg.root
        .on_grpc_response(&mut tg.host, charge.token + 50, 14);
    assert_eq!(charges(&tg, "dropped"), 0);
}

#[test]
fn a_failed_charge_call_counts_every_descriptor_it_carried_as_dropped() {
    let mut tg = Tg::new(&config("allow"));
    served(&mut tg);
    served(&mut tg);
    tg.root.on_tick(&mut tg.host);
    let charge = tg.host.grpc.last().unwrap().clone();
    // UNAVAILABLE: the service never counted them.
    tg.root.on_grpc_response(&mut tg.host, charge.token, 14);
    assert_eq!(charges(&tg, "dropped"), 2);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(tg.host.grpc.len(), 3, "nothing is sent twice");
}

#[test]
fn usage_that_ends_while_calls_are_in_flight_waits_and_is_summed_for_a_later_tick() {
    let mut tg = Tg::new(&config("allow"));
    // Sixteen charge calls in flight (a slow service), each from a tick of its own.
    for _ in 0..16 {
        served(&mut tg);
        tg.root.on_tick(&mut tg.host);
    }
    let calls = tg.host.grpc.len();
    served(&mut tg);
    served(&mut tg);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(
        tg.host.grpc.len(),
        calls + 2,
        "two admissions, no charge call yet"
    );
    // One answer frees a place: the two responses go together.
    let first_charge = tg.host.grpc[1].token;
    tg.root.on_grpc_response(&mut tg.host, first_charge, 0);
    tg.root.on_tick(&mut tg.host);
    let last = tg.host.grpc.last().unwrap().clone();
    assert_eq!(charged(&last.message), vec![48, 48]);
}

#[test]
fn a_client_that_leaves_mid_stream_is_still_charged_from_the_tick() {
    let mut tg = Tg::new(&config("allow"));
    let mut req = admitted_globally(&mut tg);
    let sse = [("content-type", "text/event-stream")];
    let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n";
    tg.respond_open(&mut req, 200, &sse, &[start.as_slice()], false);
    // The client is gone: the access log runs, then the context is destroyed.
    req.flow.on_log(&mut tg.host);
    assert!(req.flow.on_done(&mut tg.host));
    drop(req);
    tg.root.on_tick(&mut tg.host);
    let charge = tg.host.grpc.last().unwrap().clone();
    assert_eq!(tg.host.grpc.len(), 2);
    let hits = charged(&charge.message);
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter().all(|&h| h >= 41),
        "the prompt at least: {hits:?}"
    );
}

// ---- over-limit answers remembered -----------------------------------------------------------

/// Team-a's request refused by the service: its own tokens have `remaining` left of 1000,
/// for `reset` more seconds. Returns the reply.
fn refused_live(tg: &mut Tg, remaining: u64, reset: u64) -> super::fake::Reply {
    let mut req = waiting(tg);
    let n = descriptors(tg);
    let mut statuses = vec![(OK, 1000, 900, reset); n];
    statuses[0] = (
        if remaining == 0 { OVER } else { OK },
        1000,
        remaining,
        reset,
    );
    let overall = if remaining == 0 { OVER } else { OK };
    answer(tg, &mut req, 0, rls_reply(overall, &statuses));
    tg.host.reply().clone()
}

#[test]
fn after_a_refusal_the_worker_refuses_the_same_need_without_a_call_until_the_window_ends() {
    let mut tg = Tg::new(&config("allow"));
    let live = refused_live(&mut tg, 0, 30);
    assert_eq!(live.status, 429);
    let calls = tg.host.grpc.len();
    tg.host.now += 10_000;
    let req = tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    assert_eq!(req.action, Action::Pause);
    assert_eq!(tg.host.grpc.len(), calls, "answered from memory, no call");
    let cached = tg.host.reply().clone();
    assert_eq!(cached.status, 429);
    assert_eq!(cached.header("retry-after"), Some("20"));
    assert_eq!(
        cached.json()["error"]["message"],
        "team-a: 1000 tokens per minute (global); retry in 20s"
    );
    // Everything else as the live refusal said it.
    let without_retry = |r: &super::fake::Reply| {
        let mut h: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| k != "retry-after")
            .cloned()
            .collect();
        h.sort();
        h
    };
    assert_eq!(without_retry(&cached), without_retry(&live));
    assert_eq!(cached.json()["error"]["type"], live.json()["error"]["type"]);
    let labels = [("consumer", "team-a"), ("reason", "global")];
    assert_eq!(tg.metric_value("tollgate_rejections_total", &labels), 2);
    assert_eq!(tg.host.resumed, 0);
    // The window has ended: the service is asked again.
    tg.host.now += 20_000;
    waiting(&mut tg);
    assert_eq!(tg.host.grpc.len(), calls + 1);
}

#[test]
fn a_request_that_might_fit_what_was_left_still_asks_the_service() {
    let mut tg = Tg::new(&config("allow"));
    // 60 tokens left: the first request (a 100-token reserve) does not fit.
    assert_eq!(refused_live(&mut tg, 60, 30).status, 429);
    let calls = tg.host.grpc.len();
    let small = claude(5);
    let req = tg.post(MESSAGES, &anthropic("key-a"), &small);
    assert_eq!(req.action, Action::Pause);
    assert_eq!(tg.host.grpc.len(), calls + 1, "a smaller reservation asks");
    assert!(tg.host.replies.is_empty());
    // A larger one is refused without asking.
    tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    assert_eq!(tg.host.grpc.len(), calls + 1);
    assert_eq!(tg.host.reply().status, 429);
}

#[test]
fn a_remembered_refusal_gives_the_local_reservation_back() {
    let cfg = r#"{"consumers":[{"name":"team-a","keys":["key-a"],"limits":[{"tokens":250,"per":"minute"}]}],
        "global":{"cluster":"ratelimit","domain":"tollgate","timeout":"50ms","failure_mode":"allow"}}"#;
    let mut tg = Tg::new(cfg);
    refused_live(&mut tg, 0, 30);
    // Two more refused from memory: had they kept their local reservations (about 120
    // tokens each), the local limit of 250 would now refuse for tokens, not global.
    for _ in 0..2 {
        tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    }
    let labels = [("consumer", "team-a"), ("reason", "global")];
    assert_eq!(tg.metric_value("tollgate_rejections_total", &labels), 3);
    tg.host.now += 30_000;
    admitted_globally(&mut tg);
    assert_eq!(tg.host.resumed, 1, "the whole local limit was there");
}

#[test]
fn a_service_answering_without_a_reset_time_is_asked_every_time() {
    let mut tg = Tg::new(&config("allow"));
    refused_live(&mut tg, 0, 0);
    let calls = tg.host.grpc.len();
    waiting(&mut tg);
    assert_eq!(tg.host.grpc.len(), calls + 1);
}

#[test]
fn a_charge_queued_under_the_previous_configuration_is_still_sent_and_its_answer_counted() {
    let mut tg = Tg::new(&config("allow"));
    served(&mut tg);
    let before = tg.host.grpc.len();
    let size = tg.host.config.len();
    assert!(tg.root.configure(&mut tg.host, size));
    tg.root.on_tick(&mut tg.host);
    assert_eq!(
        tg.host.grpc.len(),
        before + 1,
        "the usage of 20 + 4 tokens is charged"
    );
    let token = tg.host.grpc.last().unwrap().token;
    tg.root.on_grpc_response(&mut tg.host, token, 0);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(
        tg.host
            .metric_value("tollgate_global_charges_total", &[("outcome", "sent")]),
        2
    );
    // Sent and answered, with no request left on it: the old plugin is let go.
    assert_eq!(tg.root.retired(), 0);
}
