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

/// Team-a's request, admitted by the service (1000 per minute, 900 left) and answered
/// with 20 + 4 tokens.
fn served(tg: &mut Tg) {
    let mut req = waiting(tg);
    let n = descriptors(tg);
    answer(
        tg,
        &mut req,
        0,
        rls_reply(OK, &vec![(OK, 1000, 900, 30); n]),
    );
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
    // The local reservation went back: the next request sees the whole local limit.
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
    assert_eq!(tg.host.grpc.len(), 1);
    tg.root.on_tick(&mut tg.host);
    assert_eq!(tg.host.grpc.len(), 2);
    let charge = tg.host.grpc.last().unwrap().clone();
    assert_eq!(charge.timeout_ms, 1000);
    assert_eq!(charge.method, "ShouldRateLimit");
    tg.root.on_grpc_response(&mut tg.host, charge.token, 0);
    let sent = [("outcome", "sent")];
    assert_eq!(tg.metric_value("tollgate_global_charges_total", &sent), 1);
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
    let dropped = [("outcome", "dropped")];
    assert_eq!(
        tg.metric_value("tollgate_global_charges_total", &dropped),
        1
    );
}

#[test]
fn a_client_that_leaves_while_the_service_decides_is_charged_nothing() {
    let mut tg = Tg::new(&config("allow"));
    let mut req = waiting(&mut tg);
    req.flow.on_log(&mut tg.host);
    assert_eq!(tg.host.fact(facts::USAGE), Some("none"));
    assert_eq!(tg.host.fact(facts::INPUT_TOKENS), Some("0"));
}
