//! A request's end: aborts before and after the upstream answered, reconciliation of the
//! reservation, concurrency leases, learning, an upstream attempt's end; and the root's
//! configuration and tick.
#![cfg(test)]

use super::*;
use crate::facts;
use crate::flow::{Action, Root};

const SSE: (&str, &str) = ("content-type", "text/event-stream");

/// One request at a time; a lease not renewed for 3 s frees itself.
const LEASED: &str = r#"{"consumers":[{"name":"team-a","keys":["key-a"],"limits":[{"concurrent":1}]}],"lease_ttl":"3s"}"#;

fn usage(tg: &Tg) -> (Option<&str>, Option<&str>, Option<&str>) {
    let h = &tg.host;
    (
        h.fact(facts::INPUT_TOKENS),
        h.fact(facts::OUTPUT_TOKENS),
        h.fact(facts::USAGE),
    )
}

fn remaining_tokens(tg: &Tg) -> u64 {
    tg.host
        .client_header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_client_that_leaves_before_any_answer_is_charged_its_prompt() {
    let mut tg = Tg::new(&team_a(r#"[{"tokens":100000,"per":"minute"}]"#));
    let body = claude(500);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    assert_eq!(req.action, Action::Continue);
    req.flow.on_log(&mut tg.host);
    let estimate = raw_estimate(&body);
    let input = estimate.to_string();
    assert_eq!(
        usage(&tg),
        (Some(input.as_str()), Some("0"), Some("estimated"))
    );
    assert_eq!(tg.host.fact(facts::DECISION), Some("admitted"));
    // The reservation (prompt + 500 output) was replaced by the prompt alone.
    let mut next = tg.post(MESSAGES, &anthropic("key-a"), &body);
    tg.answer(&mut next, 0, 0);
    assert_eq!(remaining_tokens(&tg), 100_000 - estimate - (estimate + 500));
}

#[test]
fn a_stream_cut_after_its_first_event_is_charged_what_it_reported_and_estimated() {
    let mut tg = Tg::new(&team_a(r#"[{"tokens":100000,"per":"minute"}]"#));
    let body = claude_stream(500);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    let partial = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n\
                   event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"The weather in Cologne is\"}}\n\n";
    tg.respond_open(&mut req, 200, &[SSE], &[partial.as_bytes()], false);
    assert_eq!(tg.host.fact(facts::USAGE), None);
    req.flow.on_log(&mut tg.host);
    let (input, output, source) = usage(&tg);
    assert_eq!(input, Some("40"));
    let output: u64 = output.unwrap().parse().unwrap();
    assert!((1..=10).contains(&output), "{output}");
    assert_eq!(source, Some("estimated"));
}

#[test]
fn an_upstream_that_never_answers_charges_nothing() {
    let mut tg = Tg::new(&team_a(r#"[{"tokens":100000,"per":"minute"}]"#));
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &claude(500));
    // Envoy's own 504 after the route timeout.
    tg.host
        .put_property(&facts::RESPONSE_CODE_DETAILS, "upstream_response_timeout");
    tg.respond(
        &mut req,
        504,
        &[("content-type", "text/plain")],
        &[b"upstream request timeout"],
    );
    assert_eq!(usage(&tg), (Some("0"), Some("0"), Some("none")));
    assert_eq!(upstream_responses(&tg, "none", "504"), 1);
}

#[test]
fn the_reservation_is_replaced_by_the_reported_usage() {
    let mut tg = Tg::new(&team_a(r#"[{"tokens":100000,"per":"minute"}]"#));
    let body = claude(1000);
    let reserved = raw_estimate(&body) + 1000;
    let mut first = tg.post(MESSAGES, &anthropic("key-a"), &body);
    tg.answer(&mut first, 20, 4);
    assert_eq!(remaining_tokens(&tg), 100_000 - reserved);
    let mut second = tg.post(MESSAGES, &anthropic("key-a"), &body);
    tg.answer(&mut second, 20, 4);
    assert_eq!(remaining_tokens(&tg), 100_000 - 24 - reserved);
}

#[test]
fn a_flowing_response_renews_its_lease_and_keeps_its_slot() {
    let mut tg = Tg::new(LEASED);
    let mut first = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    tg.respond_open(
        &mut first,
        200,
        &[SSE],
        &[b"event: ping\ndata: {}\n\n"],
        false,
    );
    tg.host.now = T0 + 2_000;
    let ping = b"event: ping\ndata: {}\n\n";
    assert_eq!(tg.more(&mut first, ping, false), Action::Continue);
    // Without the renewal the lease would have ended at T0 + 3 s.
    tg.host.now = T0 + 4_000;
    tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(tg.host.reply().status, 429);
    let labels = [("consumer", "team-a"), ("reason", "concurrency")];
    assert_eq!(tg.metric_value("tollgate_rejections_total", &labels), 1);
}

#[test]
fn a_lease_nobody_renews_frees_itself_after_lease_ttl() {
    let mut tg = Tg::new(LEASED);
    let first = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(first.action, Action::Continue);
    tg.host.now = T0 + 2_999;
    tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(tg.host.reply().status, 429);
    tg.host.now = T0 + 3_001;
    let third = tg.post(MESSAGES, &anthropic("key-a"), &claude(10));
    assert_eq!(third.action, Action::Continue);
    assert!(tg.host.replies.is_empty());
}

#[test]
fn the_real_input_count_teaches_the_next_estimate() {
    let mut tg = Tg::new(&team_a("[]"));
    let body = claude(10);
    let raw = raw_estimate(&body);
    let mut req = tg.post(MESSAGES, &anthropic("key-a"), &body);
    assert_eq!(
        tg.host.fact(facts::ESTIMATE),
        Some(raw.to_string().as_str())
    );
    tg.answer(&mut req, 2 * raw, 3);
    // The estimate was half the real count: 50 % off.
    assert_eq!(tg.metric_value("tollgate_estimate_error_percent", &[]), 50);
    // The tick writes the observation; the worker's cached ratio is older than 2 s.
    tg.root.on_tick(&mut tg.host);
    tg.host.now = T0 + 2_500;
    tg.post(MESSAGES, &anthropic("key-a"), &body);
    let plugin = tg.root.plugin().unwrap();
    let ratio =
        crate::learn::lookup(&tg.host, &plugin.learned, "claude-3-5-haiku-20241022").unwrap();
    assert!(ratio > 1.0, "{ratio}");
    let learned = crate::learn::apply(raw, ratio);
    assert!(learned > raw);
    assert_eq!(
        tg.host.fact(facts::ESTIMATE),
        Some(learned.to_string().as_str())
    );
}

#[test]
fn an_attempts_end_frees_its_accounts_concurrency_slot() {
    let config = r#"{"stage":"upstream",
        "accounts":[{"name":"anthropic-1","provider":"anthropic","key":"sk-ant-FAKE-slot-AAAAAAAAAAAA","limits":[{"concurrent":1}]}]}"#;
    let mut tg = Tg::new(config);
    tg.host.set_property_for_test(facts::CONSUMER, "team-a");
    tg.host.set_property_for_test(facts::ESTIMATE, "40");
    let mut first = tg.send("POST", MESSAGES, &[], "");
    assert_eq!(first.action, Action::Continue);
    tg.host.properties.remove(facts::TRIED);
    let busy = tg.send("POST", MESSAGES, &[], "");
    assert_eq!(busy.action, Action::Pause);
    assert_eq!(tg.host.reply().status, 429);
    assert!(first.flow.on_done(&mut tg.host));
    tg.host.properties.remove(facts::TRIED);
    let again = tg.send("POST", MESSAGES, &[], "");
    assert_eq!(again.action, Action::Continue);
    assert_eq!(tg.host.fact(facts::ACCOUNT), Some("anthropic-1"));
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let config =
        r#"{"consumers":[{"name":"a","keys":["k"],"limits":[{"tokens":1,"per":"fortnight"}]}]}"#;
    let (tg, ok) = Tg::try_new(config);
    assert!(!ok);
    assert_eq!(
        tg.host.logged("invalid configuration"),
        [
            r#"[1] invalid configuration: consumers[0].limits[0].per: expected one of second, minute, hour, day, month, got "fortnight""#
        ]
    );
    assert!(tg.root.plugin().is_none());
    assert!(tg.root.new_request(&tg.host, 2).is_none());
}

#[test]
fn a_blank_configuration_loads_the_defaults_and_ticks_every_100_ms() {
    let mut host = Fake::new();
    host.config = b"  \n".to_vec();
    let mut root = Root::new(7);
    assert!(root.configure(&mut host, 3));
    assert_eq!(
        host.logged("configured"),
        ["[7] configured (0 consumers, 0 accounts, stage Downstream)"]
    );
    assert_eq!(host.tick_ms, Some(100));
    // Every key exists once the configuration loads: the analytics key among them.
    assert!(host.shared(crate::analytics::KEY).is_some());
}

#[test]
fn every_filter_state_key_the_flow_writes_is_one_named_in_facts() {
    // A failover setup: the downstream stage (no accounts, conversations kept together)
    // and the upstream stage that picks the account; an answered request touches every key.
    let down = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],
        "selection":{"affinity":{"conversation":true}}}"#;
    let mut downstream = Tg::new(down);
    let mut req = downstream.post(MESSAGES, &anthropic("key-a"), &claude(10));
    downstream.answer(&mut req, 10, 2);
    let mut upstream = Tg::new(&super::upstream::pool("upstream"));
    upstream.host.properties = downstream.host.properties.clone();
    let attempt = upstream.send("POST", MESSAGES, &[("anthropic-version", "2023-06-01")], "");
    assert_eq!(attempt.action, Action::Continue);
    let written: std::collections::BTreeSet<&str> = downstream
        .host
        .written
        .iter()
        .chain(&upstream.host.written)
        .map(String::as_str)
        .collect();
    let named: std::collections::BTreeSet<&str> = facts::ALL.into_iter().collect();
    assert_eq!(written, named);
    for key in facts::ALL {
        assert!(key.starts_with("tollgate.") && !key.contains('\0'), "{key}");
    }
}

/// `config` with `"access_log_facts": false` added at its top level.
fn without_facts(config: &str) -> String {
    let body = config.trim_start().strip_prefix('{').unwrap();
    format!(r#"{{"access_log_facts": false, {body}"#)
}

#[test]
fn with_access_log_facts_off_a_single_stage_writes_no_filter_state() {
    let config = super::upstream::one_account();
    let mut on = Tg::new(&config);
    let mut req = on.post(MESSAGES, &anthropic("key-a"), &claude(10));
    on.answer(&mut req, 10, 2);
    let all = [
        facts::CONSUMER,
        facts::ACCOUNT,
        facts::ESTIMATE,
        facts::MODEL,
        facts::DECISION,
        facts::INPUT_TOKENS,
        facts::OUTPUT_TOKENS,
        facts::USAGE,
    ];
    for key in all {
        assert!(on.host.written.contains(key), "default: {key} written");
    }
    let mut off = Tg::new(&without_facts(&config));
    let mut req = off.post(MESSAGES, &anthropic("key-a"), &claude(10));
    off.answer(&mut req, 10, 2);
    assert_eq!(off.host.written, Default::default());
    // The request itself is served and metered as before.
    let model = "claude-3-5-haiku-20241022";
    assert_eq!(admitted(&off, "team-a", model), 1);
    assert_eq!(admitted(&on, "team-a", model), 1);
    assert_eq!(
        off.host.upstream_header("x-api-key"),
        on.host.upstream_header("x-api-key")
    );
}

#[test]
fn with_access_log_facts_off_the_stages_still_hand_each_other_what_they_read() {
    // A failover setup: the downstream stage publishes the caller, the estimate and the
    // conversation; the upstream stage the account and the accounts tried.
    let down = r#"{"consumers":[{"name":"team-a","keys":["key-a"]}],
        "selection":{"affinity":{"conversation":true}}}"#;
    let mut downstream = Tg::new(&without_facts(down));
    let mut req = downstream.post(MESSAGES, &anthropic("key-a"), &claude(10));
    let mut upstream = Tg::new(&without_facts(&super::upstream::pool("upstream")));
    upstream.host.properties = downstream.host.properties.clone();
    let attempt = upstream.send("POST", MESSAGES, &[("anthropic-version", "2023-06-01")], "");
    assert_eq!(attempt.action, Action::Continue);
    assert!(upstream.host.upstream_header("x-api-key").is_some());
    downstream
        .host
        .properties
        .extend(upstream.host.properties.clone());
    downstream.answer(&mut req, 10, 2);
    let written = |tg: &Tg| tg.host.written.iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        written(&downstream),
        [
            facts::CONSUMER,
            facts::ESTIMATE,
            facts::FINGERPRINT,
            facts::SESSION
        ]
    );
    assert_eq!(written(&upstream), [facts::ACCOUNT, facts::TRIED]);
}
