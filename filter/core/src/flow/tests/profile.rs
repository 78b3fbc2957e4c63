//! A profiling loop, not a test: the bench's (c) request cycle `TG_PROFILE_N` times over the
//! fake host, for `valgrind --tool=callgrind` (instructions per function, natively).
//! `TG_CFG` and `TG_BODY` are the bench's configuration and body (see tests/bench/wasm-host.mjs).
#![cfg(test)]

use super::*;

#[test]
#[ignore = "a profiling loop run by hand under callgrind"]
fn callgrind_request_cycle() {
    let (Ok(config), Ok(body)) = (std::env::var("TG_CFG"), std::env::var("TG_BODY")) else {
        eprintln!("set TG_CFG and TG_BODY (files) to run the loop");
        return;
    };
    let read = |path: &str| std::fs::read_to_string(path).unwrap();
    let (config, body) = (read(&config), read(&body));
    let n: u32 = std::env::var("TG_PROFILE_N").map_or(1000, |v| v.parse().unwrap());
    let answer = r#"{"id":"msg_mock_000000000001","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Hello from the mock upstream"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":256,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":5,"service_tier":"standard"}}"#;
    let length = body.len().to_string();
    let headers = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "tg-bench-key"),
        ("content-length", length.as_str()),
    ];
    let mut tg = Tg::new(&config);
    for _ in 0..n {
        let mut req = tg.post(MESSAGES, &headers, &body);
        assert_eq!(req.action, crate::flow::Action::Continue);
        let json = [("content-type", "application/json")];
        tg.respond(&mut req, 200, &json, &[answer.as_bytes()]);
        tg.host.logs.borrow_mut().clear();
    }
}
