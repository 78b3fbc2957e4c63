//! Usage sanity (SPEC "Usage numbers are sane"): insane counts make the usage invalid in
//! every API, in whole bodies, streams and the tails of oversized ones.
#![cfg(test)]

use super::*;

/// Counts no API may report: negative, fractional, not a number, above the bound.
const INSANE: [&str; 12] = [
    "-1",
    "-0.5",
    "1.5",
    "1e30",
    "18446744073709551616",
    "100000001",
    "1e400",
    "\"12\"",
    "true",
    "{}",
    "[3]",
    "{\"n\":1}",
];

/// A response with sane usage, the counts in it that a test may spoil (each occurs once),
/// and the texts its output estimate reads.
struct Sample {
    name: &'static str,
    endpoint: Endpoint,
    ct: &'static str,
    body: String,
    counts: Vec<&'static str>,
    texts: Vec<&'static str>,
}

fn sample(
    name: &'static str,
    endpoint: Endpoint,
    ct: &'static str,
    body: &str,
    counts: &[&'static str],
    texts: &[&'static str],
) -> Sample {
    for c in counts {
        assert_eq!(body.matches(c).count(), 1, "{name}: {c}");
    }
    Sample {
        name,
        endpoint,
        ct,
        body: body.to_string(),
        counts: counts.to_vec(),
        texts: texts.to_vec(),
    }
}

fn samples() -> Vec<Sample> {
    vec![
            sample(
                "anthropic json",
                Endpoint::Messages,
                JSON,
                r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hallo Welt, wie geht es?"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"cache_creation_input_tokens":3,"cache_read_input_tokens":40,"cache_creation":{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":0},"output_tokens":6,"service_tier":"standard","server_tool_use":{"web_search_requests":0}}}"#,
                &[
                    "\"input_tokens\":12",
                    "\"cache_creation_input_tokens\":3",
                    "\"cache_read_input_tokens\":40",
                    "\"ephemeral_5m_input_tokens\":3",
                    "\"output_tokens\":6",
                ],
                &["Hallo Welt, wie geht es?"],
            ),
            sample(
                "anthropic sse",
                Endpoint::Messages,
                SSE,
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-3-5-haiku-20241022\",\"content\":[],\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2048,\"output_tokens\":2}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Grüße aus Köln!\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                &[
                    "\"input_tokens\":472",
                    "\"cache_read_input_tokens\":2048",
                    "\"output_tokens\":2}",
                    "\"output_tokens\":15",
                ],
                &["Grüße aus Köln!"],
            ),
            sample(
                "chat json",
                Endpoint::ChatCompletions,
                JSON,
                CHAT_JSON,
                &[
                    "\"prompt_tokens\":2006",
                    "\"completion_tokens\":300",
                    "\"total_tokens\":2306",
                    "\"cached_tokens\":1920",
                    "\"reasoning_tokens\":100",
                ],
                &["Bonjour à tous"],
            ),
            sample(
                "completions json",
                Endpoint::Completions,
                JSON,
                COMPLETIONS_JSON,
                &["\"completion_tokens\":7", "\"prompt_tokens\":5"],
                &[" the sea."],
            ),
            sample(
                "chat sse",
                Endpoint::ChatCompletions,
                SSE,
                "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Привет, мир\"}}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":176,\"completion_tokens\":9,\"total_tokens\":185,\"prompt_tokens_details\":{\"cached_tokens\":64,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n\
data: [DONE]\n\n",
                &[
                    "\"prompt_tokens\":176",
                    "\"completion_tokens\":9",
                    "\"cached_tokens\":64",
                    "\"accepted_prediction_tokens\":0",
                ],
                &["Привет, мир"],
            ),
            sample(
                "embeddings json",
                Endpoint::Embeddings,
                JSON,
                EMBEDDINGS_JSON,
                &["\"prompt_tokens\":8", "\"total_tokens\":8"],
                &[],
            ),
            sample(
                "responses json",
                Endpoint::Responses,
                JSON,
                RESPONSES_JSON,
                &[
                    "\"input_tokens\":36",
                    "\"cached_tokens\":0",
                    "\"output_tokens\":87",
                    "\"reasoning_tokens\":64",
                    "\"total_tokens\":123",
                ],
                &["42"],
            ),
            sample(
                "responses sse",
                Endpoint::Responses,
                SSE,
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hallo Wält\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-4.1\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hallo Wält\"}]}],\"usage\":{\"input_tokens\":328,\"input_tokens_details\":{\"cached_tokens\":128},\"output_tokens\":52,\"output_tokens_details\":{\"reasoning_tokens\":7},\"total_tokens\":380},\"metadata\":{}}}\n\n",
                &[
                    "\"input_tokens\":328",
                    "\"cached_tokens\":128",
                    "\"output_tokens\":52",
                    "\"reasoning_tokens\":7",
                ],
                &["Hallo Wält"],
            ),
            sample(
                "gemini json",
                gemini(false),
                JSON,
                r#"{"candidates":[{"content":{"parts":[{"text":"Hello there"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"totalTokenCount":45,"cachedContentTokenCount":4,"thoughtsTokenCount":20,"toolUsePromptTokenCount":6,"promptTokensDetails":[{"modality":"TEXT","tokenCount":10}],"trafficType":"ON_DEMAND"},"modelVersion":"gemini-2.5-flash"}"#,
                &[
                    "\"promptTokenCount\":10",
                    "\"candidatesTokenCount\":5",
                    "\"totalTokenCount\":45",
                    "\"cachedContentTokenCount\":4",
                    "\"thoughtsTokenCount\":20",
                    "\"toolUsePromptTokenCount\":6",
                    "\"tokenCount\":10",
                ],
                &["Hello there"],
            ),
            sample(
                "gemini array",
                gemini(true),
                JSON,
                "[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Der Himmel \"}],\"role\":\"model\"}}],\"usageMetadata\":{\"promptTokenCount\":9,\"totalTokenCount\":9},\"modelVersion\":\"gemini-2.5-pro\"}\r\n,\r\n{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"ist blau\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":90,\"candidatesTokenCount\":7,\"totalTokenCount\":116,\"thoughtsTokenCount\":19},\"modelVersion\":\"gemini-2.5-pro\"}\r\n]",
                &[
                    "\"promptTokenCount\":9,",
                    "\"candidatesTokenCount\":7",
                    "\"thoughtsTokenCount\":19",
                ],
                &["Der Himmel ", "ist blau"],
            ),
            sample(
                "gemini sse",
                gemini(true),
                SSE,
                "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Der Himmel \"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 88,\"totalTokenCount\": 88},\"modelVersion\": \"gemini-2.0-flash\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"ist blau\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 89,\"candidatesTokenCount\": 421,\"totalTokenCount\": 1021,\"cachedContentTokenCount\": 512}}\r\n\r\n",
                &[
                    "\"promptTokenCount\": 88",
                    "\"candidatesTokenCount\": 421",
                    "\"cachedContentTokenCount\": 512",
                ],
                &["Der Himmel ", "ist blau"],
            ),
        ]
}

/// `count` (`"key":value`, maybe followed by `}` or `,`) with its value replaced by `value`.
fn spoil(body: &str, count: &str, value: &str) -> String {
    let key = &count[..=count.find(':').unwrap()];
    let suffix = count
        .strip_suffix(['}', ','])
        .map_or("", |c| &count[c.len()..]);
    body.replacen(count, &format!("{key}{value}{suffix}"), 1)
}

/// Asserts that `m` is what a response with invalid usage meters to.
fn assert_invalid(m: &Metering, endpoint: &Endpoint, texts: &[&str], exact: bool, what: &str) {
    assert!(m.invalid_usage, "{what}: flagged");
    assert!(!m.complete, "{what}: the host uses its own input estimate");
    assert_eq!(m.usage.input_side(), 0, "{what}: no input reported");
    assert!(m.output_estimated, "{what}: output is an estimate");
    let want = if *endpoint == Endpoint::Embeddings {
        0
    } else {
        estimate(endpoint.api(), texts)
    };
    if exact {
        assert_eq!(
            m.usage.output, want,
            "{what}: output from the streamed text"
        );
    } else {
        // The document holding the usage did not parse: its raw bytes were read too.
        assert!(
            m.usage.output >= want && m.usage.output < 2_000,
            "{what}: output {} from the text",
            m.usage.output
        );
    }
}

#[test]
fn insane_usage_counts_make_the_usage_invalid_in_every_api() {
    for s in samples() {
        let sane = run(&s.endpoint, s.ct, "", false, s.body.as_bytes(), &[]).1;
        assert!(
            sane.complete && !sane.invalid_usage,
            "{}: sane as given",
            s.name
        );
        for count in &s.counts {
            for value in INSANE {
                let body = spoil(&s.body, count, value);
                let what = format!("{} {count} = {value}", s.name);
                let b = body.as_bytes();
                let m = run(&s.endpoint, s.ct, "", false, b, &[]).1;
                assert_invalid(&m, &s.endpoint, &s.texts, value != "1e400", &what);
                // The same answer at any split point and compressed.
                for i in (0..=b.len()).step_by(37) {
                    let split = run(&s.endpoint, s.ct, "", false, b, &[i]).1;
                    assert_eq!(split, m, "{what} split at {i}");
                }
                let gz = run(&s.endpoint, s.ct, "gzip", false, &gzip(b, false), &[5]).1;
                assert_eq!(gz, m, "{what} gzip");
            }
        }
    }
}

#[test]
fn a_usage_cut_short_hides_no_earlier_object_named_usage() {
    // An echoed tool schema with a property named `usage`, then the real usage, cut.
    let body = r#"{"model":"gpt-4.1","tools":[{"type":"function","parameters":{"properties":{"usage":{"type":"object"}}}}],"output":[{"content":[{"text":"Hallo Welt"}]}],"usage":{"input_tokens":5,"output_tok"#;
    let m = run(&Endpoint::Responses, JSON, "", false, body.as_bytes(), &[]).1;
    assert!(
        !m.complete && m.output_estimated && !m.invalid_usage,
        "{m:?}"
    );
    assert!(m.usage.output > 0);
    assert_eq!(m.model.as_deref(), Some("gpt-4.1"));
}

#[test]
fn usage_that_is_not_an_object_is_invalid() {
    for value in ["5", "\"x\"", "[1,2]", "true", "-3"] {
        for (endpoint, body, texts) in [
            (
                Endpoint::ChatCompletions,
                CHAT_JSON.replacen(
                    &CHAT_JSON[CHAT_JSON.find("\"usage\":").unwrap()..CHAT_JSON.len() - 1],
                    &format!("\"usage\":{value}"),
                    1,
                ),
                vec!["Bonjour à tous"],
            ),
            (
                gemini(false),
                GEMINI_JSON.replacen(
                    &GEMINI_JSON[GEMINI_JSON.find("\"usageMetadata\":").unwrap()
                        ..GEMINI_JSON.find(",\"modelVersion\"").unwrap()],
                    &format!("\"usageMetadata\":{value}"),
                    1,
                ),
                vec!["Hello"],
            ),
        ] {
            let m = run(&endpoint, JSON, "", false, body.as_bytes(), &[]).1;
            assert_invalid(&m, &endpoint, &texts, true, &body);
        }
    }
}

#[test]
fn null_or_missing_counts_are_absent_not_invalid() {
    let cases = [
        (
            Endpoint::ChatCompletions,
            r#"{"model":"m","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":null,"prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":null}}"#,
            usage(5, 0, 0, 2),
        ),
        (
            Endpoint::Responses,
            r#"{"model":"m","output":[],"usage":{"input_tokens":5,"input_tokens_details":null,"output_tokens":2}}"#,
            usage(5, 0, 0, 2),
        ),
        (
            Endpoint::Messages,
            r#"{"model":"m","content":[],"usage":{"input_tokens":5,"cache_creation_input_tokens":null,"cache_read_input_tokens":null,"cache_creation":null,"output_tokens":2,"server_tool_use":null,"service_tier":null}}"#,
            usage(5, 0, 0, 2),
        ),
        (
            gemini(false),
            r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"thoughtsTokenCount":null,"promptTokensDetails":null},"modelVersion":"m"}"#,
            usage(5, 0, 0, 2),
        ),
    ];
    for (endpoint, body, want) in cases {
        let m = run(&endpoint, JSON, "", false, body.as_bytes(), &[]).1;
        assert_eq!(m, real(want, "m"), "{body}");
    }
}

#[test]
fn sane_counts_are_accepted_up_to_the_bound() {
    let cases = [
        (
            Endpoint::Messages,
            r#"{"model":"m","content":[],"usage":{"input_tokens":100000000,"cache_creation_input_tokens":100000000,"cache_read_input_tokens":100000000,"output_tokens":100000000,"service_tier":"priority"}}"#,
            usage(100_000_000, 100_000_000, 100_000_000, 100_000_000),
        ),
        (
            gemini(false),
            r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100000000,"cachedContentTokenCount":100000000,"candidatesTokenCount":100000000,"thoughtsTokenCount":100000000,"totalTokenCount":100000000,"trafficType":"ON_DEMAND","promptTokensDetails":[{"modality":"TEXT","tokenCount":100000000}]},"modelVersion":"m"}"#,
            usage(0, 100_000_000, 0, 200_000_000),
        ),
        // A whole number written as a float is that number; an unknown non-count field
        // (OpenRouter's `cost`) is not a count.
        (
            Endpoint::ChatCompletions,
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":12.0,"completion_tokens":1e2,"total_tokens":112,"cost":0.0012,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            usage(10, 2, 0, 100),
        ),
    ];
    for (endpoint, body, want) in cases {
        let m = run(&endpoint, JSON, "", false, body.as_bytes(), &[]).1;
        assert_eq!(m, real(want, "m"), "{body}");
        assert_eq!(
            m.usage.total(),
            want.input + want.cache_read + want.cache_write + want.output
        );
    }
}

#[test]
fn insane_usage_in_the_tail_of_an_oversized_body_is_invalid() {
    let filler = "Hallo Welt ".repeat(JSON_CAP / 11 + 100);
    let cases = [
        (
            Endpoint::Messages,
            ANTHROPIC_JSON.replace("Hi \\u00e9t\\u00e9!", &filler),
            "\"output_tokens\":6",
        ),
        (
            Endpoint::ChatCompletions,
            CHAT_JSON.replace("Bonjour à tous", &filler),
            "\"completion_tokens\":300",
        ),
        (
            Endpoint::Responses,
            RESPONSES_JSON.replace("\"42\"", &format!("\"{filler}\"")),
            "\"output_tokens\":87",
        ),
        (
            gemini(false),
            GEMINI_JSON.replace("Hello", &filler),
            "\"candidatesTokenCount\":5",
        ),
        (
            Endpoint::Embeddings,
            EMBEDDINGS_JSON.replace("0.0023,", &"0.0023,".repeat(JSON_CAP / 7 + 10)),
            "\"prompt_tokens\":8",
        ),
    ];
    for (endpoint, body, count) in cases {
        assert!(body.len() > JSON_CAP);
        let sane = run(&endpoint, JSON, "", false, body.as_bytes(), &[1000]).1;
        assert!(sane.complete && !sane.invalid_usage && sane.oversized_events == 1);
        // A count read but insane, and one serde_json cannot read (the other insane
        // values take the first path, see above).
        for value in ["\"12\"", "1e400"] {
            let body = spoil(&body, count, value);
            let what = format!("{endpoint:?} {count} = {value}");
            let m = run(&endpoint, JSON, "", false, body.as_bytes(), &[1000]).1;
            assert!(
                m.invalid_usage && !m.complete && m.output_estimated,
                "{what}"
            );
            assert_eq!(m.usage.input_side(), 0, "{what}");
            if endpoint == Endpoint::Embeddings {
                assert_eq!(m.usage.output, 0, "{what}");
            } else {
                let est = m.usage.output;
                assert!(
                    est > (body.len() / 20) as u64 && est < body.len() as u64,
                    "{what}: {est}"
                );
            }
        }
    }
}

#[test]
fn insane_usage_in_the_tail_of_an_oversized_event_is_invalid() {
    let text = "Hallo Welt ".repeat(DEFAULT_EVENT_CAP / 11 + 100);
    let cases = [
            (
                Endpoint::Responses,
                format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"gpt-4.1\",\"output\":[{{\"content\":[{{\"text\":\"{text}\"}}]}}],\"usage\":{{\"input_tokens\":10,\"input_tokens_details\":{{\"cached_tokens\":4}},\"output_tokens\":300000}}}}}}\n\n"),
                "\"output_tokens\":300000",
            ),
            (
                gemini(true),
                format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}]}},\"finishReason\":\"STOP\"}}],\"usageMetadata\":{{\"promptTokenCount\":10,\"candidatesTokenCount\":300000}}}}\n\n"),
                "\"candidatesTokenCount\":300000",
            ),
        ];
    for (endpoint, body, count) in cases {
        let sane = run(&endpoint, SSE, "", false, body.as_bytes(), &[100]).1;
        assert!(sane.complete && !sane.invalid_usage && sane.oversized_events == 1);
        for value in ["1e30", "-1", "\"12\"", "1e400", "{}"] {
            let body = spoil(&body, count, value);
            let what = format!("{endpoint:?} {value}");
            let m = run(&endpoint, SSE, "", false, body.as_bytes(), &[100]).1;
            assert!(
                m.invalid_usage && !m.complete && m.output_estimated,
                "{what}"
            );
            assert_eq!(m.usage.input_side(), 0, "{what}");
            assert!(m.usage.output < 1_000_000, "{what}: {}", m.usage.output);
        }
    }
}
