//! Native flow tests: every branch of a request's life over a recording fake host
//! (`fake`), grouped by phase. Each asserts the figures a client or operator would see:
//! statuses, header values, token counts, metric values, filter state.
#![cfg(test)]

mod admin;
mod admission;
mod fake;
mod global;
mod headers;
mod identity;
mod lifecycle;
mod profile;
mod response;
mod upstream;

use crate::provider::Endpoint;
use crate::request::RequestScanner;

pub use fake::{Fake, Req, Tg, T0};

pub const MESSAGES: &str = "/v1/messages";
pub const CHAT: &str = "/v1/chat/completions";
pub const FLASH: &str = "/v1beta/models/gemini-2.0-flash:generateContent";
pub const FLASH_SSE: &str = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse";

/// An Anthropic Messages body.
pub fn claude(max_tokens: u64) -> String {
    format!(
        r#"{{"model":"claude-3-5-haiku-20241022","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"Tell me about the weather in Cologne today, please."}}]}}"#
    )
}

/// A streamed Anthropic Messages body.
pub fn claude_stream(max_tokens: u64) -> String {
    claude(max_tokens).replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\"")
}

/// An OpenAI Chat Completions body.
pub fn gpt(stream: bool) -> String {
    format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"Say hello in three languages."}}]}}"#
    )
}

/// A Gemini generateContent body.
pub fn gemini() -> String {
    r#"{"contents":[{"role":"user","parts":[{"text":"Why is the sky blue?"}]}]}"#.to_string()
}

/// Anthropic request headers with a key.
pub fn anthropic(key: &str) -> [(&str, &str); 3] {
    [
        ("x-api-key", key),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ]
}

/// The raw input estimate the request scanner gives a Messages `body` (the one place the
/// tests name an endpoint type).
pub fn raw_estimate(body: &str) -> u64 {
    let mut s = RequestScanner::new(Endpoint::Messages, None);
    s.feed(body.as_bytes()).unwrap();
    s.finish().unwrap().input_estimate
}

/// One consumer `team-a` (key `key-a`) with `limits` (a JSON array), nothing else.
pub fn team_a(limits: &str) -> String {
    format!(r#"{{"consumers":[{{"name":"team-a","keys":["key-a"],"limits":{limits}}}]}}"#)
}

/// The usage JSON of an Anthropic Messages answer.
pub fn anthropic_answer(input: u64, output: u64) -> String {
    format!(
        r#"{{"id":"msg_1","type":"message","role":"assistant","content":[{{"type":"text","text":"Sunny."}}],"model":"claude-3-5-haiku-20241022","usage":{{"input_tokens":{input},"output_tokens":{output}}}}}"#
    )
}

/// `tollgate_requests_total` of admitted requests by `consumer` and `model` label.
pub fn admitted(tg: &Tg, consumer: &str, model: &str) -> u64 {
    let labels = [
        ("consumer", consumer),
        ("model", model),
        ("outcome", "admitted"),
    ];
    tg.metric_value("tollgate_requests_total", &labels)
}

/// `tollgate_upstream_responses_total` by account and status code.
pub fn upstream_responses(tg: &Tg, account: &str, code: &str) -> u64 {
    let labels = [("account", account), ("code", code)];
    tg.metric_value("tollgate_upstream_responses_total", &labels)
}
