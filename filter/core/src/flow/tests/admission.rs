//! Local admission: each limit kind refusing with its reason, `retry-after` and the
//! caller's `x-ratelimit-*` headers; those headers on an admitted answer.
#![cfg(test)]

use super::*;
use crate::flow::Action;

fn rejections(tg: &Tg, reason: &str) -> u64 {
    let labels = [("consumer", "team-a"), ("reason", reason)];
    tg.metric_value("tollgate_rejections_total", &labels)
}

#[test]
fn a_request_whose_reservation_alone_exceeds_the_limit_is_told_not_to_retry() {
    let mut tg = Tg::new(&team_a(r#"[{"tokens":50,"per":"minute"}]"#));
    tg.post(MESSAGES, &anthropic("key-a"), &claude(100));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-should-retry"), Some("false"));
    assert_eq!(reply.header("x-ratelimit-limit-tokens"), Some("50"));
    assert_eq!(reply.header("x-ratelimit-remaining-tokens"), Some("50"));
    let msg = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.starts_with("team-a: "), "{msg}");
    assert!(msg.ends_with("; this request alone exceeds it"), "{msg}");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    assert_eq!(rejections(&tg, "tokens"), 1);
}

#[test]
fn a_used_up_request_limit_answers_429_requests_with_retry_after() {
    let mut tg = Tg::new(&team_a(r#"[{"requests":2,"per":"minute"}]"#));
    for _ in 0..2 {
        assert_eq!(
            tg.post(CHAT, &[("authorization", "Bearer key-a")], &gpt(false))
                .action,
            Action::Continue
        );
    }
    tg.post(CHAT, &[("authorization", "Bearer key-a")], &gpt(false));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    // T0 is 20 s into its minute: the sliding window frees a request 70 s on.
    assert_eq!(retry, 70);
    assert_eq!(reply.header("x-should-retry"), None);
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("0"));
    let msg = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.ends_with(&format!("; retry in {retry}s")), "{msg}");
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(rejections(&tg, "requests"), 1);
}

#[test]
fn a_second_request_over_the_concurrency_limit_waits_for_the_first_to_end() {
    let mut tg = Tg::new(&team_a(r#"[{"concurrent":1}]"#));
    let mut first = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(first.action, Action::Continue);
    tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(tg.host.reply().status, 429);
    assert_eq!(tg.host.reply().header("retry-after"), Some("1"));
    assert_eq!(rejections(&tg, "concurrency"), 1);
    let answer = anthropic_answer(20, 4);
    tg.respond(
        &mut first,
        200,
        &[("content-type", "application/json")],
        &[answer.as_bytes()],
    );
    let third = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(third.action, Action::Continue);
    assert!(tg.host.replies.is_empty());
}

#[test]
fn a_spent_budget_answers_429_cost() {
    // Haiku's built-in price: $0.80 per million input tokens; a $0.000001 budget is spent
    // by any request.
    let mut tg = Tg::new(&team_a(r#"[{"cost_usd":0.000001,"per":"day"}]"#));
    tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    assert_eq!(rejections(&tg, "cost"), 1);
    assert_eq!(reply.header("x-should-retry"), Some("false"));
}

#[test]
fn a_store_that_fails_every_write_answers_429_busy_and_logs_once() {
    let mut tg = Tg::new(&team_a(r#"[{"tokens":100000,"per":"minute"}]"#));
    tg.host.store_fails.set(Some(3));
    let req = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let reply = tg.host.reply();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.json()["error"]["message"],
        "team-a: quota state is busy; retry in 1s"
    );
    let logged = tg.host.logged("quota store contended");
    assert_eq!(logged.len(), 1);
    // The line starts with the context id, and names tollgate nowhere (Envoy's prefix does).
    assert!(
        logged[0].starts_with(&format!("[{}] ", req.flow_id())),
        "{}",
        logged[0]
    );
    assert!(!logged[0].contains("tollgate"));
}

#[test]
fn an_admitted_answer_carries_the_callers_rate_limit_headers_not_the_providers() {
    let mut tg = Tg::new(&team_a(
        r#"[{"tokens":100000,"per":"minute"},{"requests":10,"per":"minute"}]"#,
    ));
    let body = claude(100);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let reserved = raw_estimate(&body) + 100;
    let headers = [
        ("content-type", "application/json"),
        ("anthropic-ratelimit-tokens-remaining", "7"),
        ("x-ratelimit-limit-requests", "5000"),
    ];
    tg.respond(
        &mut req,
        200,
        &headers,
        &[anthropic_answer(20, 4).as_bytes()],
    );
    let h = &tg.host;
    assert_eq!(
        h.client_header("anthropic-ratelimit-tokens-remaining"),
        None
    );
    assert_eq!(h.client_header("x-ratelimit-limit-tokens"), Some("100000"));
    let remaining = (100_000 - reserved).to_string();
    assert_eq!(
        h.client_header("x-ratelimit-remaining-tokens"),
        Some(remaining.as_str())
    );
    assert_eq!(h.client_header("x-ratelimit-limit-requests"), Some("10"));
    assert_eq!(h.client_header("x-ratelimit-remaining-requests"), Some("9"));
    assert_eq!(
        h.client_header("x-ratelimit-reset-requests")
            .map(|v| v.parse::<u64>().is_ok()),
        Some(true)
    );
}
