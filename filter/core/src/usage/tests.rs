#![cfg(test)]
use super::*;
use crate::api::Api;
use crate::estimate::Estimator;
use miniz_oxide::{MZFlush, MZStatus};

#[test]
fn accept_encoding_keeps_only_codings_the_meter_decodes() {
    for (client, sent) in [
        (None, "identity"),
        (Some(""), "identity"),
        (Some("br"), "identity"),
        (Some("zstd, br;q=1.0"), "identity"),
        (Some("*"), "identity"),
        (Some("gzip, deflate, br, zstd"), "gzip, deflate"),
        (Some("BR, GZip;q=0.5"), "gzip"),
        (Some("gzip;q=0, br"), "identity"),
        (Some("identity;q=0, br"), "identity"),
        (Some("deflate , gzip , gzip"), "deflate, gzip"),
        (Some("x-gzip"), "x-gzip"),
    ] {
        assert_eq!(decodable_accept_encoding(client), sent, "{client:?}");
    }
}
use crate::sse::tests::{
    ANTHROPIC, GEMINI_SSE, OPENAI_CHAT_NO_USAGE, OPENAI_CHAT_USAGE, OPENAI_RESPONSES,
};
use proptest::prelude::*;

const SSE: &str = "text/event-stream; charset=utf-8";
const JSON: &str = "application/json";

fn gemini(stream: bool) -> Endpoint {
    if stream {
        Endpoint::StreamGenerateContent
    } else {
        Endpoint::GenerateContent
    }
}

/// Feeds `body` split at `splits`; returns what the client received and the metering.
fn run(
    endpoint: &Endpoint,
    ct: &str,
    enc: &str,
    strip: bool,
    body: &[u8],
    splits: &[usize],
) -> (Vec<u8>, Metering) {
    let mut m = ResponseMeter::new(*endpoint, ct, enc, strip);
    let mut client = Vec::new();
    let mut bounds = splits.to_vec();
    bounds.push(body.len());
    let mut from = 0;
    for (n, &to) in bounds.iter().enumerate() {
        let chunk = &body[from..to];
        let out = if n + 1 == bounds.len() {
            m.feed_last(chunk)
        } else {
            m.feed(chunk)
        };
        match out {
            Some(out) => client.extend_from_slice(&out),
            None => client.extend_from_slice(chunk),
        }
        from = to;
    }
    (client, m.finish())
}

fn usage(input: u64, cache_read: u64, cache_write: u64, output: u64) -> Usage {
    Usage {
        input,
        cache_read,
        cache_write,
        output,
    }
}

fn real(u: Usage, model: &str) -> Metering {
    Metering {
        usage: u,
        complete: true,
        model: Some(model.into()),
        ..Metering::default()
    }
}

/// What the estimator makes of these deltas, pushed one by one as the meter does.
fn estimate(api: Api, deltas: &[&str]) -> u64 {
    let mut e = Estimator::new(api);
    for d in deltas {
        e.push_str(d);
    }
    e.end_text();
    e.tokens()
}

const ANTHROPIC_JSON: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hi \u00e9t\u00e9!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":3,"cache_read_input_tokens":40,"output_tokens":6,"service_tier":"standard"}}"#;
const CHAT_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Bonjour à tous","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920},"completion_tokens_details":{"reasoning_tokens":100}}}"#;
const COMPLETIONS_JSON: &str = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"meta-llama/Llama-3.1-8B","choices":[{"index":0,"text":" the sea.","logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7,"prompt_tokens_details":null}}"#;
const EMBEDDINGS_JSON: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,0.0151]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
const RESPONSES_JSON: &str = r#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","error":null,"model":"o4-mini-2025-04-16","output":[{"type":"reasoning","id":"rs_1","summary":[]},{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"42","annotations":[]}]}],"tools":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123},"user":null,"metadata":{}}"#;
const GEMINI_JSON: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Hello"}],"role":"model"},"finishReason":"STOP","avgLogprobs":-0.1}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"totalTokenCount":15,"promptTokensDetails":[{"modality":"TEXT","tokenCount":10}]},"modelVersion":"gemini-1.5-flash-002"}"#;
const GEMINI_ARRAY: &str = "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Ein {Satz} mit \\\"Klammern]\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-pro\"}\r\n,\r\n{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"und Ümläute 日本\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 7,\"totalTokenCount\": 116,\"thoughtsTokenCount\": 100},\"modelVersion\": \"gemini-2.5-pro\"}\r\n]";

#[test]
fn normalises_json_bodies_of_every_api() {
    let cases = [
        (
            "anthropic",
            Endpoint::Messages,
            ANTHROPIC_JSON,
            real(usage(12, 40, 3, 6), "claude-sonnet-4-20250514"),
        ),
        (
            "chat",
            Endpoint::ChatCompletions,
            CHAT_JSON,
            real(usage(86, 1920, 0, 300), "gpt-4o-2024-08-06"),
        ),
        (
            "completions",
            Endpoint::Completions,
            COMPLETIONS_JSON,
            real(usage(5, 0, 0, 7), "meta-llama/Llama-3.1-8B"),
        ),
        (
            "embeddings",
            Endpoint::Embeddings,
            EMBEDDINGS_JSON,
            real(usage(8, 0, 0, 0), "text-embedding-3-small"),
        ),
        (
            "responses",
            Endpoint::Responses,
            RESPONSES_JSON,
            real(usage(36, 0, 0, 87), "o4-mini-2025-04-16"),
        ),
        (
            "gemini",
            gemini(false),
            GEMINI_JSON,
            real(usage(10, 0, 0, 5), "gemini-1.5-flash-002"),
        ),
        (
            "gemini array",
            gemini(true),
            GEMINI_ARRAY,
            real(usage(9, 0, 0, 107), "gemini-2.5-pro"),
        ),
        (
            "gemini array as json",
            gemini(false),
            GEMINI_ARRAY,
            real(usage(9, 0, 0, 107), "gemini-2.5-pro"),
        ),
    ];
    for (name, endpoint, body, want) in cases {
        let b = body.as_bytes();
        let (client, whole) = run(&endpoint, JSON, "", false, b, &[]);
        assert_eq!(whole, want, "{name}");
        assert_eq!(client, b, "{name}");
        for i in 0..=b.len() {
            assert_eq!(
                run(&endpoint, JSON, "", false, b, &[i]).1,
                want,
                "{name} split at {i}"
            );
        }
    }
}

fn stream_cases() -> Vec<(&'static str, Endpoint, &'static str, Metering)> {
    vec![
        (
            "anthropic",
            Endpoint::Messages,
            ANTHROPIC,
            real(usage(472, 2048, 100, 15), "claude-3-5-haiku-20241022"),
        ),
        (
            "chat with usage",
            Endpoint::ChatCompletions,
            OPENAI_CHAT_USAGE,
            real(usage(176, 1024, 0, 9), "gpt-4o-mini-2024-07-18"),
        ),
        (
            "chat without usage",
            Endpoint::ChatCompletions,
            OPENAI_CHAT_NO_USAGE,
            Metering {
                usage: usage(
                    0,
                    0,
                    0,
                    estimate(Api::OpenAi, &["Ça va très bien, ", "merci ✨"]),
                ),
                output_estimated: true,
                model: Some("gpt-4o-2024-08-06".into()),
                ..Metering::default()
            },
        ),
        (
            "responses",
            Endpoint::Responses,
            OPENAI_RESPONSES,
            real(usage(200, 128, 0, 52), "gpt-4.1-2025-04-14"),
        ),
        (
            "gemini alt=sse",
            gemini(true),
            GEMINI_SSE,
            real(usage(88, 512, 0, 421), "gemini-2.0-flash"),
        ),
    ]
}

#[test]
fn normalises_streams_of_every_api_at_every_split_point() {
    for (name, endpoint, body, want) in stream_cases() {
        let b = body.as_bytes();
        let (client, whole) = run(&endpoint, SSE, "", false, b, &[]);
        assert_eq!(whole, want, "{name}");
        assert_eq!(client, b, "{name}");
        for i in 0..=b.len() {
            assert_eq!(
                run(&endpoint, SSE, "", false, b, &[i]).1,
                want,
                "{name} split at {i}"
            );
        }
        let all: Vec<usize> = (1..b.len()).collect();
        assert_eq!(
            run(&endpoint, SSE, "", false, b, &all).1,
            want,
            "{name} byte by byte"
        );
    }
}

#[test]
fn gemini_array_stream_gives_the_same_usage_at_every_split_point() {
    let b = GEMINI_ARRAY.as_bytes();
    let want = real(usage(9, 0, 0, 107), "gemini-2.5-pro");
    for i in 0..=b.len() {
        for j in (i..=b.len()).step_by(13) {
            assert_eq!(
                run(&gemini(true), JSON, "", false, b, &[i, j]).1,
                want,
                "split {i},{j}"
            );
        }
    }
}

/// The usage-only chunk of `OPENAI_CHAT_USAGE` and the stream without it.
fn without_usage_chunk(stream: &str) -> String {
    let start = stream.find("data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[],").unwrap();
    let end = start + stream[start..].find("data: [DONE]").unwrap();
    format!("{}{}", &stream[..start], &stream[end..])
}

#[test]
fn strip_mode_drops_exactly_the_usage_chunk_at_every_split_point() {
    let variants = [
        ("lf", OPENAI_CHAT_USAGE.to_string()),
        ("crlf", OPENAI_CHAT_USAGE.replace('\n', "\r\n")),
        ("cr", OPENAI_CHAT_USAGE.replace('\n', "\r")),
    ];
    let want_usage = real(usage(176, 1024, 0, 9), "gpt-4o-mini-2024-07-18");
    for (name, stream) in variants {
        let b = stream.as_bytes();
        let want = without_usage_chunk(&stream);
        let (client, m) = run(&Endpoint::ChatCompletions, SSE, "", true, b, &[]);
        assert_eq!(String::from_utf8(client).unwrap(), want, "{name}");
        assert_eq!(m, want_usage, "{name}");
        for i in 0..=b.len() {
            for j in (i..=b.len()).step_by(61) {
                let (client, m) = run(&Endpoint::ChatCompletions, SSE, "", true, b, &[i, j]);
                let client = String::from_utf8(client).unwrap();
                assert_eq!(client, want, "{name} split at {i},{j}");
                assert_eq!(m, want_usage, "{name} split at {i},{j}");
            }
        }
    }
}

#[test]
fn strip_mode_passes_whole_events_unchanged_without_copying() {
    let mut m = ResponseMeter::new(Endpoint::ChatCompletions, SSE, "", true);
    let events: Vec<&str> = OPENAI_CHAT_USAGE.split_inclusive("\n\n").collect();
    for (i, e) in events.iter().enumerate() {
        let out = if i + 1 == events.len() {
            m.feed_last(e.as_bytes())
        } else {
            m.feed(e.as_bytes())
        };
        if e.contains("\"choices\":[]") {
            assert_eq!(out, Some(Vec::new()));
        } else {
            assert_eq!(out, None, "{e}");
        }
    }
}

#[test]
fn strip_mode_drops_a_usage_chunk_without_choices_too() {
    let body = "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
data: [DONE]\n\n";
    let (client, m) = run(
        &Endpoint::ChatCompletions,
        SSE,
        "",
        true,
        body.as_bytes(),
        &[],
    );
    assert_eq!(
            String::from_utf8(client).unwrap(),
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"
        );
    assert_eq!(m, real(usage(3, 0, 0, 1), "m"));
}

#[test]
fn strip_mode_is_off_for_other_apis_and_for_compressed_bodies() {
    for (endpoint, enc) in [
        (Endpoint::ChatCompletions, "gzip"),
        (Endpoint::Messages, ""),
    ] {
        let m = ResponseMeter::new(endpoint, SSE, enc, true);
        assert!(m.strip.is_none());
    }
    assert!(ResponseMeter::new(Endpoint::Completions, SSE, "", true)
        .strip
        .is_some());
}

#[test]
fn strip_mode_lets_a_huge_event_through_as_it_comes() {
    let mut big = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', HOLD_CAP + 10));
    big.extend_from_slice(b"\"}}]}\n\n");
    let mut m = ResponseMeter::new(Endpoint::ChatCompletions, SSE, "", true);
    let mut client = Vec::new();
    for c in big.chunks(64 * 1024) {
        let out = m.feed(c);
        assert!(m.strip.as_ref().unwrap().held.len() <= HOLD_CAP);
        client.extend(out.unwrap_or_else(|| c.to_vec()));
    }
    assert_eq!(client, big);
}

fn gzip(data: &[u8], header_extras: bool) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8];
    if header_extras {
        out.extend_from_slice(&[FEXTRA | FNAME | FCOMMENT | FHCRC, 0, 0, 0, 0, 0, 3]);
        out.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        out.extend_from_slice(b"name.txt\0a comment\0");
        out.extend_from_slice(&[0xaa, 0xbb]);
    } else {
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 3]);
    }
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend_from_slice(&[0; 8]); // CRC and size: not checked
    out
}

#[test]
fn counts_gzip_and_deflate_bodies_at_every_split_point() {
    for (name, endpoint, body, want) in stream_cases() {
        let b = body.as_bytes();
        for (enc, packed) in [
            ("gzip", gzip(b, false)),
            ("gzip", gzip(b, true)),
            ("deflate", miniz_oxide::deflate::compress_to_vec_zlib(b, 6)),
            ("deflate", miniz_oxide::deflate::compress_to_vec(b, 6)),
        ] {
            let (client, whole) = run(&endpoint, SSE, enc, false, &packed, &[]);
            assert_eq!(client, packed, "{name} {enc}: bytes go on unchanged");
            assert_eq!(whole, want, "{name} {enc}");
            for i in 0..=packed.len() {
                assert_eq!(
                    run(&endpoint, SSE, enc, false, &packed, &[i]).1,
                    want,
                    "{name} {enc} split at {i}"
                );
            }
        }
    }
}

#[test]
fn counts_a_concatenated_gzip_body() {
    let b = OPENAI_CHAT_USAGE.as_bytes();
    let (first, second) = b.split_at(300);
    let mut packed = gzip(first, false);
    packed.extend(gzip(second, true));
    let want = real(usage(176, 1024, 0, 9), "gpt-4o-mini-2024-07-18");
    assert_eq!(
        run(&Endpoint::ChatCompletions, SSE, "gzip", false, &packed, &[]).1,
        want
    );
}

#[test]
fn unsupported_encoding_is_reported_as_uncounted() {
    let m = run(
        &Endpoint::Messages,
        SSE,
        "br",
        false,
        ANTHROPIC.as_bytes(),
        &[],
    )
    .1;
    assert!(m.unsupported_encoding && !m.complete && m.output_estimated);
    assert_eq!(m.usage, Usage::default());
}

#[test]
fn aborted_streams_estimate_output_from_the_streamed_text() {
    let cut = |s: &str, before: &str| s[..s.find(before).unwrap()].to_string();
    let cases = [
            // Anthropic told the input at message_start: it stays real.
            (
                "anthropic",
                Endpoint::Messages,
                cut(ANTHROPIC, "event: content_block_stop"),
                Metering {
                    usage: usage(472, 2048, 100, estimate(Api::Anthropic, &["Grüße aus Köln! ", "東京は晴れ 🌤️"]).max(2)),
                    complete: true,
                    output_estimated: true,
                    model: Some("claude-3-5-haiku-20241022".into()),
                    ..Metering::default()
                },
            ),
            (
                "chat",
                Endpoint::ChatCompletions,
                cut(OPENAI_CHAT_USAGE, "data: {\"id\":\"chatcmpl-AZ1\",\"object\":\"chat.completion.chunk\",\"created\":1732000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,\"delta\":{},"),
                Metering {
                    usage: usage(0, 0, 0, estimate(Api::OpenAi, &["Привет, ", "мир! 你好\n"])),
                    output_estimated: true,
                    model: Some("gpt-4o-mini-2024-07-18".into()),
                    ..Metering::default()
                },
            ),
            (
                "responses",
                Endpoint::Responses,
                cut(OPENAI_RESPONSES, "event: response.output_text.done"),
                Metering {
                    usage: usage(0, 0, 0, estimate(Api::OpenAi, &["Hallo Wält, ", "こんにちは"])),
                    output_estimated: true,
                    model: Some("gpt-4.1-2025-04-14".into()),
                    ..Metering::default()
                },
            ),
            (
                "gemini",
                gemini(true),
                cut(GEMINI_SSE, "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}]"),
                Metering {
                    usage: usage(600, 0, 0, estimate(Api::Gemini, &["Der Himmel ist blau, ", "weil Licht 散乱する。"])),
                    complete: true,
                    output_estimated: true,
                    model: Some("gemini-2.0-flash".into()),
                    ..Metering::default()
                },
            ),
        ];
    for (name, endpoint, body, want) in cases {
        // Also cut mid-event: the half event adds nothing.
        for extra in ["", "event: x\ndata: {\"type\":\"content_blo"] {
            let body = format!("{body}{extra}");
            assert_eq!(
                run(&endpoint, SSE, "", false, body.as_bytes(), &[]).1,
                want,
                "{name} {extra:?}"
            );
        }
    }
}

#[test]
fn a_long_stream_cut_short_estimates_its_text_as_pushed_piece_by_piece() {
    // Pieces of every size, one longer than anything the meter defers, mixed scripts, and
    // escaped ones (parsed): the estimate is the one of the deltas pushed one by one.
    let words = [
        "Hello",
        " w\u{f6}rld",
        " 東京",
        " and",
        " more",
        "\n",
        " 🌤️",
        " x",
    ];
    let mut deltas: Vec<String> = Vec::new();
    for i in 0..4000 {
        let w = words[i % words.len()];
        deltas.push(match i % 997 {
            0 => w.repeat(3000),
            1 => format!("{w} \"quoted\""),
            n => w.repeat(n % 4 + 1),
        });
    }
    let mut body = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n");
    for d in &deltas {
        let data = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}});
        body.push_str(&format!("event: content_block_delta\ndata: {data}\n\n"));
    }
    let pieces: Vec<&str> = deltas.iter().map(String::as_str).collect();
    let want = estimate(Api::Anthropic, &pieces);
    assert!(want > 10_000, "{want}");
    for splits in [vec![], vec![body.len() / 3, body.len() / 2]] {
        let m = run(
            &Endpoint::Messages,
            SSE,
            "",
            false,
            body.as_bytes(),
            &splits,
        )
        .1;
        assert_eq!(
            (m.usage.input, m.usage.output, m.output_estimated),
            (9, want, true)
        );
    }
    // With the final usage, the reported output counts.
    body.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":77}}\n\n");
    let m = run(&Endpoint::Messages, SSE, "", false, body.as_bytes(), &[]).1;
    assert_eq!((m.usage.output, m.output_estimated), (77, false));
    // An insane final usage makes the whole text count again, in order.
    body.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":-1}}\n\n");
    let m = run(&Endpoint::Messages, SSE, "", false, body.as_bytes(), &[]).1;
    assert_eq!((m.usage.output, m.invalid_usage), (want, true));
}

#[test]
fn reports_error_events_inside_streams() {
    let cases = [
            (Endpoint::Messages, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", StreamError::Overloaded),
            (Endpoint::Messages, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}\n\n", StreamError::RateLimited),
            (Endpoint::Messages, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n", StreamError::Other),
            (Endpoint::ChatCompletions, "data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n", StreamError::RateLimited),
            (Endpoint::ChatCompletions, "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n", StreamError::Other),
            (Endpoint::Responses, "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"x\",\"param\":null}\n\n", StreamError::RateLimited),
            (Endpoint::Responses, "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"x\"},\"usage\":null}}\n\n", StreamError::Other),
            (gemini(true), "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\n\n", StreamError::Overloaded),
            (gemini(true), "data: {\"error\":{\"code\":429,\"message\":\"quota\",\"status\":\"RESOURCE_EXHAUSTED\"}}\n\n", StreamError::RateLimited),
        ];
    for (endpoint, body, want) in cases {
        let m = run(&endpoint, SSE, "", false, body.as_bytes(), &[]).1;
        assert_eq!(m.stream_error, Some(want), "{body}");
    }
}

#[test]
fn later_usage_replaces_earlier_usage_field_by_field() {
    let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":11,\"output_tokens\":30}}\n\n";
    let m = run(&Endpoint::Messages, SSE, "", false, body.as_bytes(), &[]).1;
    assert_eq!(m, real(usage(11, 5, 0, 30), "m"));
}

#[test]
fn finds_usage_at_the_end_of_an_oversized_json_body() {
    let mut body = br#"{"object":"list","model":"text-embedding-3-large","data":[{"object":"embedding","index":0,"embedding":["#.to_vec();
    while body.len() < JSON_CAP + 300_000 {
        body.extend_from_slice(b"-0.0123456789,");
    }
    body.extend_from_slice(br#"0.1]}],"usage":{"prompt_tokens":8191,"total_tokens":8191}}"#);
    let m = run(
        &Endpoint::Embeddings,
        JSON,
        "",
        false,
        &body,
        &[JSON_CAP - 7, JSON_CAP + 100_000],
    )
    .1;
    assert_eq!(
        m,
        Metering {
            oversized_events: 1,
            ..real(usage(8191, 0, 0, 0), "text-embedding-3-large")
        }
    );
}

#[test]
fn finds_usage_in_the_tail_of_an_oversized_event() {
    let text = "x".repeat(DEFAULT_EVENT_CAP + 1000);
    let body = format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"model\":\"gpt-4.1\",\"output\":[{{\"content\":[{{\"text\":\"{text}\"}}]}}],\"usage\":{{\"input_tokens\":10,\"input_tokens_details\":{{\"cached_tokens\":4}},\"output_tokens\":300000}}}}}}\n\n"
        );
    let m = run(
        &Endpoint::Responses,
        SSE,
        "",
        false,
        body.as_bytes(),
        &[100, 500_000],
    )
    .1;
    assert_eq!(m.usage, usage(6, 4, 0, 300_000));
    assert!(m.complete && !m.output_estimated);
    assert_eq!(m.oversized_events, 1);
}

#[test]
fn garbage_gives_an_incomplete_metering() {
    for (endpoint, ct, body) in [
        (Endpoint::Messages, SSE, "data: {not json\n\n"),
        (
            Endpoint::ChatCompletions,
            JSON,
            "<html>502 Bad Gateway</html>",
        ),
        (gemini(true), JSON, "[{\"a\":}]]]]{{{"),
        (Endpoint::Responses, JSON, ""),
    ] {
        let m = run(&endpoint, ct, "", false, body.as_bytes(), &[]).1;
        assert!(!m.complete, "{body}");
        assert_eq!(m.usage.input_side(), 0);
    }
}

#[test]
fn detects_the_body_framing() {
    assert_eq!(
        Body::detect(Endpoint::Messages, "Text/Event-Stream"),
        Body::Sse
    );
    assert_eq!(
        Body::detect(gemini(true), "application/json"),
        Body::JsonArrayStream
    );
    assert_eq!(Body::detect(gemini(true), "text/event-stream"), Body::Sse);
    assert_eq!(Body::detect(gemini(false), "application/json"), Body::Json);
}

#[test]
fn finish_twice_gives_the_same_answer() {
    let mut m = ResponseMeter::new(Endpoint::Messages, JSON, "", false);
    assert_eq!(m.feed_last(ANTHROPIC_JSON.as_bytes()), None);
    let a = m.finish();
    assert_eq!(m.finish(), a);
}

#[test]
fn the_delta_shortcut_reads_exactly_what_the_full_parse_reads() {
    let delta = |t: &str| {
        format!("{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{t}\"}}}}")
    };
    let mut cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (delta("Hello").into_bytes(), Some("Hello")),
        (delta(" h\u{e9}llo w\u{f6}rld").into_bytes(), Some(" h\u{e9}llo w\u{f6}rld")),
        (delta("").into_bytes(), Some("")),
        (br#"{"type":"content_block_delta","index":12,"delta":{"type":"text_delta","text":"x y"}}"#.to_vec(), Some("x y")),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think"}}"#.to_vec(), Some("Let me think")),
        (br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"[1, 2"}}"#.to_vec(), Some("[1, 2")),
        // Escapes, odd shapes and smuggled fields go to the full parse.
        (delta("say \\\"hi\\\"").into_bytes(), None),
        (delta("two\\nlines").into_bytes(), None),
        (delta("raw\ttab").into_bytes(), None),
        (br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\": 1"}}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"},"usage":{"output_tokens":7}}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}},"usage":{"output_tokens":7}}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","text":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"a"}}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":,"delta":{"type":"text_delta","text":"a"}}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}} "#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}"#.to_vec(), None),
        (br#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#.to_vec(), None),
        (br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#.to_vec(), None),
    ];
    let mut broken = delta("ab").into_bytes();
    let at = broken.len() - 5;
    broken[at] = 0xff;
    cases.push((broken, None));
    for (data, shortcut) in &cases {
        let what = String::from_utf8_lossy(data);
        assert_eq!(
            count::anthropic_delta_text(Endpoint::Messages, data),
            *shortcut,
            "{what}"
        );
        // Whatever the shortcut says, the counter ends where the full parse of the document
        // ends: same usage, same estimated output, same model and error.
        let mut fast = count::Counter::new(Endpoint::Messages);
        let event = crate::sse::Event {
            name: b"content_block_delta",
            data,
            truncated: false,
        };
        assert!(!fast.event(event, false), "{what}");
        let mut full = count::Counter::new(Endpoint::Messages);
        full.doc(data, false, false);
        assert_eq!(fast.metering(), full.metering(), "{what}");
    }
    // Only Messages documents take it.
    let data = delta("Hello").into_bytes();
    for e in [
        Endpoint::ChatCompletions,
        Endpoint::Responses,
        Endpoint::GenerateContent,
    ] {
        assert_eq!(count::anthropic_delta_text(e, &data), None);
    }
}

mod decoding;
mod sanity;
