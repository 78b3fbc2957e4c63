#![cfg(test)]
use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

fn gemini(stream: bool) -> Endpoint {
    if stream {
        Endpoint::StreamGenerateContent
    } else {
        Endpoint::GenerateContent
    }
}

/// A scanner for `ep` as the filter makes one: a Gemini endpoint's path names the model.
fn scanner(ep: &Endpoint) -> RequestScanner {
    let path_model = (ep.api() == Api::Gemini).then(|| "gemini-2.0-flash".to_string());
    RequestScanner::new(*ep, path_model)
}

fn scan(ep: &Endpoint, body: &[u8]) -> Result<RequestInfo, RequestError> {
    let mut s = scanner(ep);
    s.feed(body)?;
    s.finish()
}

fn scan_split(ep: &Endpoint, windows: &[&[u8]]) -> Result<RequestInfo, RequestError> {
    let mut s = scanner(ep);
    for w in windows {
        s.feed(w)?;
    }
    s.finish()
}

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.extend(std::iter::repeat_n(0x55, 200));
    v
}

/// SOI, APP0, a 70 KB APP1 (EXIF-like) segment, DQT, then SOF0.
fn jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    v.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    for _ in 0..2 {
        v.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xFF]);
        v.extend(std::iter::repeat_n(0xAB, 0xFFFF - 2));
    }
    v.extend_from_slice(&[0xFF, 0xFF, 0xDB, 0x00, 0x04, 0x00, 0x01]);
    v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&w.to_be_bytes());
    v.extend(std::iter::repeat_n(0x11, 5000));
    v
}

fn gif(w: u16, h: u16) -> Vec<u8> {
    let mut v = b"GIF89a".to_vec();
    v.extend_from_slice(&w.to_le_bytes());
    v.extend_from_slice(&h.to_le_bytes());
    v.extend(std::iter::repeat_n(0, 100));
    v
}

fn webp_vp8x(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
    v.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    v.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    v.extend(std::iter::repeat_n(0, 100));
    v
}

fn info(
    model: &str,
    max: Option<u64>,
    stream: bool,
    fp: bool,
) -> (Option<String>, Option<u64>, bool, bool) {
    (Some(model.to_string()), max, stream, fp)
}

/// What the estimator gives for these texts (in body order) plus `extra` tokens: tests
/// name the texts that count and stay right whatever the estimator's weights are.
fn est(api: Api, texts: &[&str], extra: u64) -> u64 {
    let mut e = Estimator::new(api);
    for t in texts {
        e.push_str(t);
        e.end_text();
    }
    e.add_tokens(extra);
    e.tokens()
}

/// Endpoint, body, (model, max_tokens, stream, has fingerprint), estimate.
type Case = (
    Endpoint,
    Value,
    (Option<String>, Option<u64>, bool, bool),
    u64,
);

#[test]
fn reads_every_api_request_shape() {
    use Api::{Anthropic as A, Gemini as G, OpenAi as O};
    // serde_json writes keys in sorted order: the text lists follow that order.
    let cases: Vec<Case> = vec![
        (
            Endpoint::Messages,
            json!({"model":"claude-3-5-haiku","max_tokens":1024,"system":"You are terse.",
                       "messages":[{"role":"user","content":"Hello there, how are you?"}]}),
            info("claude-3-5-haiku", Some(1024), false, true),
            est(A, &["Hello there, how are you?", "You are terse."], 4 + 3),
        ),
        (
            Endpoint::Messages,
            json!({"model":"claude","max_tokens":10,"stream":true,
                       "system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}],
                       "tools":[{"name":"get","description":"Gets","input_schema":{"type":"object"}}],
                       "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},
                                   {"role":"assistant","content":[
                                       {"type":"thinking","thinking":"hmm","signature":"SIG"},
                                       {"type":"tool_use","id":"t1","name":"get","input":{"q":"cats","n":3}}]},
                                   {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"r1"}]},
                                                              {"type":"tool_result","tool_use_id":"t1","content":"r2"}]}]}),
            info("claude", Some(10), true, true),
            est(
                A,
                &[
                    "hi",
                    "hmm",
                    "n",
                    "q",
                    "cats",
                    "r1",
                    "r2",
                    "sys",
                    "description",
                    "Gets",
                    "input_schema",
                    "type",
                    "object",
                    "name",
                    "get",
                ],
                1 + 3 * 4 + 3,
            ),
        ),
        (
            Endpoint::ChatCompletions,
            json!({"model":"gpt-4o-mini","max_tokens":50,"max_completion_tokens":70,
                       "messages":[{"role":"system","content":"Be brief"},{"role":"user","content":[{"type":"text","text":"Hi there"}]},
                                   {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                                   {"role":"tool","tool_call_id":"c","content":"sunny"}],
                       "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}),
            info("gpt-4o-mini", Some(70), false, true),
            est(
                O,
                &[
                    "Be brief",
                    "Hi there",
                    "{\"a\":1}",
                    "f",
                    "sunny",
                    "function",
                    "name",
                    "f",
                    "parameters",
                    "type",
                    "object",
                    "type",
                    "function",
                ],
                4 * 4 + 3,
            ),
        ),
        (
            Endpoint::Completions,
            json!({"model":"llama","prompt":"Once upon a time","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}),
            (Some("llama".into()), Some(5), true, true),
            est(O, &["Once upon a time"], 0),
        ),
        (
            Endpoint::Completions,
            json!({"model":"llama","prompt":[1,2,3,4]}),
            (Some("llama".into()), None, false, true),
            est(O, &[], 4),
        ),
        (
            Endpoint::Embeddings,
            json!({"model":"text-embedding-3-small","input":["one","two words"]}),
            (Some("text-embedding-3-small".into()), None, false, false),
            est(O, &["one", "two words"], 0),
        ),
        (
            Endpoint::Responses,
            json!({"model":"gpt-4.1","instructions":"Be kind","input":"Hello","max_output_tokens":99,"stream":true}),
            info("gpt-4.1", Some(99), true, true),
            est(O, &["Hello", "Be kind"], 3),
        ),
        (
            Endpoint::Responses,
            json!({"model":"gpt-4.1","input":[{"role":"user","content":[{"type":"input_text","text":"Hello"}]},
                                                   {"type":"function_call","name":"f","arguments":"{}","call_id":"x"},
                                                   {"type":"function_call_output","call_id":"x","output":"done"}]}),
            info("gpt-4.1", None, false, true),
            est(O, &["Hello", "{}", "f", "done"], 3 * 4 + 3),
        ),
        (
            gemini(true),
            json!({"systemInstruction":{"parts":[{"text":"Be kind"}]},
                       "contents":[{"parts":[{"text":"Hello"}]}],
                       "tools":[{"functionDeclarations":[{"name":"f"}]}],
                       "generationConfig":{"maxOutputTokens":256}}),
            info("gemini-2.0-flash", Some(256), true, true),
            est(
                G,
                &["Hello", "Be kind", "functionDeclarations", "name", "f"],
                4 + 3,
            ),
        ),
        (
            gemini(false),
            json!({"contents":[{"role":"model","parts":[{"text":"Hi"},{"functionCall":{"name":"f","args":{"x":1}}}]}],
                       "generation_config":{"max_output_tokens":7}}),
            info("gemini-2.0-flash", Some(7), false, false),
            est(G, &["Hi", "args", "x", "name", "f"], 1 + 4 + 3),
        ),
    ];
    for (ep, body, (model, max, stream, fp), tokens) in cases {
        let b = serde_json::to_vec(&body).unwrap();
        let got = scan(&ep, &b).unwrap();
        assert_eq!(
            (
                got.model.clone(),
                got.max_tokens,
                got.stream,
                got.fingerprint.is_some()
            ),
            (model, max, stream, fp),
            "{body}"
        );
        assert_eq!(got.input_estimate, tokens, "{body}");
        // Same answer at every split point, and byte by byte.
        for cut in 0..=b.len() {
            let (l, r) = b.split_at(cut);
            assert_eq!(
                scan_split(&ep, &[l, r]),
                Ok(got.clone()),
                "{body} cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(scan_split(&ep, &singles), Ok(got.clone()));
    }
}

#[test]
fn refuses_bodies_tollgate_cannot_use() {
    let chat = Endpoint::ChatCompletions;
    let cases: Vec<(Endpoint, &str, &str)> = vec![
        (
            chat,
            r#"{"model":"m","messages":[]"#,
            "request body is not valid JSON: unexpected end of input at byte 26",
        ),
        (
            chat,
            r#"{"model":"m"} x"#,
            "request body is not valid JSON: unexpected data after the JSON value at byte 14",
        ),
        (
            chat,
            "",
            "request body is not valid JSON: unexpected end of input at byte 0",
        ),
        (
            chat,
            r#"[{"model":"m"}]"#,
            "request body must be a JSON object",
        ),
        (chat, r#""hi""#, "request body must be a JSON object"),
        (chat, r#"42"#, "request body must be a JSON object"),
        (chat, r#"{"model":42}"#, "model must be a string"),
        (chat, r#"{"model":null}"#, "model must be a string"),
        (chat, r#"{"model":["a"]}"#, "model must be a string"),
        (
            Endpoint::Messages,
            r#"{"max_tokens":5,"messages":[]}"#,
            "model is required",
        ),
        (
            Endpoint::Messages,
            r#"{"model":"m","max_tokens":-5}"#,
            "max_tokens must be a non-negative integer",
        ),
        (
            Endpoint::Messages,
            r#"{"model":"m","max_tokens":"5"}"#,
            "max_tokens must be a non-negative integer",
        ),
        (
            Endpoint::Messages,
            r#"{"model":"m","max_tokens":1.5}"#,
            "max_tokens must be a non-negative integer",
        ),
        (
            chat,
            r#"{"model":"m","max_completion_tokens":{}}"#,
            "max_completion_tokens must be a non-negative integer",
        ),
        (
            chat,
            r#"{"model":"m","stream":"yes"}"#,
            "stream must be a boolean",
        ),
        (
            chat,
            r#"{"model":"m","stream":1}"#,
            "stream must be a boolean",
        ),
        (
            gemini(false),
            r#"{"generationConfig":{"maxOutputTokens":"x"}}"#,
            "generationConfig.maxOutputTokens must be a non-negative integer",
        ),
        (
            chat,
            "{\"model\":\"m\",\"messages\":[{\"content\":\"\u{7}\"}]}",
            "request body is not valid JSON: control character in string at byte 37",
        ),
        (
            chat,
            r#"{"model":"m","messages":[{"content":"\ud83d"}]}"#,
            "request body is not valid JSON: unpaired surrogate in \\u escape at byte 43",
        ),
    ];
    for (ep, body, want) in cases {
        let got = scan(&ep, body.as_bytes()).unwrap_err();
        assert_eq!(got.to_string(), want, "{body}");
    }
    let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MODEL_CAP + 1));
    assert_eq!(
        scan(&chat, long.as_bytes()),
        Err(RequestError::TooLong("model"))
    );
    let bad_utf8 = b"{\"model\":\"m\xff\"}";
    assert!(matches!(scan(&chat, bad_utf8), Err(RequestError::Json(_))));
    let deep = format!(r#"{{"model":"m","tools":{}}}"#, "[".repeat(1000));
    assert_eq!(
        scan(&chat, deep.as_bytes()).unwrap_err().to_string(),
        "request body is not valid JSON: nesting too deep at byte 532"
    );
}

#[test]
fn refuses_a_policy_key_repeated_in_one_object() {
    // First-wins here and last-wins upstream (or the reverse) would let a client pass an
    // allow-list with one model and be served another, or switch off the usage chunk.
    let (chat, msgs, gem) = (
        &Endpoint::ChatCompletions,
        &Endpoint::Messages,
        &gemini(false),
    );
    let cases: &[(&Endpoint, &str, &str)] = &[
        (
            chat,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"include_usage":false}}"#,
            "include_usage",
        ),
        (chat, r#"{"model":"gpt-4o-mini","model":"o1"}"#, "model"),
        (
            chat,
            r#"{"model":"gpt-4o-mini","mod\u0065l":"o1"}"#,
            "model",
        ),
        (
            chat,
            r#"{"\u006dodel":"a","messages":[],"model":"b"}"#,
            "model",
        ),
        (
            chat,
            r#"{"model":"m","stream":false,"stream":true}"#,
            "stream",
        ),
        (
            chat,
            r#"{"stream_options":null,"stream_options":{"include_usage":false}}"#,
            "stream_options",
        ),
        (
            chat,
            r#"{"model":"m","max_tokens":1,"max_tokens":99999}"#,
            "max_tokens",
        ),
        (
            chat,
            r#"{"max_completion_tokens":1,"max_completion_tokens":9}"#,
            "max_completion_tokens",
        ),
        (chat, r#"{"model":"m","n":1,"messages":[],"n":128}"#, "n"),
        (
            chat,
            r#"{"include_usage":true,"include_usage":false}"#,
            "include_usage",
        ),
        (
            &Endpoint::Completions,
            r#"{"prompt":"p","stream_options":{"include_usage":true,"include_\u0075sage":false}}"#,
            "include_usage",
        ),
        (
            msgs,
            r#"{"model":"claude-3-5-haiku","model":"claude-opus-4"}"#,
            "model",
        ),
        (
            msgs,
            r#"{"model":"c","stream":true,"stream":false}"#,
            "stream",
        ),
        (
            msgs,
            r#"{"model":"c","max_tokens":1,"max_tokens":64000}"#,
            "max_tokens",
        ),
        (
            &Endpoint::Responses,
            r#"{"max_output_tokens":1,"max_output_tokens":100000}"#,
            "max_output_tokens",
        ),
        (
            &Endpoint::Embeddings,
            r#"{"model":"a","input":"x","model":"b"}"#,
            "model",
        ),
        (
            gem,
            r#"{"generationConfig":{"maxOutputTokens":1,"maxOutputTokens":65536}}"#,
            "maxOutputTokens",
        ),
        (
            gem,
            r#"{"generationConfig":{"maxOutputTokens":1,"max_output_tokens":65536}}"#,
            "max_output_tokens",
        ),
        (
            &gemini(true),
            r#"{"generation_config":{"candidateCount":1,"candidate_count":8}}"#,
            "candidate_count",
        ),
        (
            gem,
            r#"{"generationConfig":{"maxOutputTokens":1},"contents":[],"generation_config":{}}"#,
            "generation_config",
        ),
        (
            gem,
            r#"{"generationConfig":{},"generationConfig":{"maxOutputTokens":9}}"#,
            "generationConfig",
        ),
    ];
    for &(ep, body, key) in cases {
        let want = format!("duplicate key \"{key}\"");
        assert_eq!(
            scan(ep, body.as_bytes()).map_err(|e| e.to_string()),
            Err(want.clone()),
            "{body}"
        );
        // Refused at every split point, keys and escapes cut anywhere, before the end.
        let b = body.as_bytes();
        for cut in 0..=b.len() {
            let (l, r) = b.split_at(cut);
            assert_eq!(
                scan_split(ep, &[l, r]).map_err(|e| e.to_string()),
                Err(want.clone()),
                "{body} cut at {cut}"
            );
        }
    }
}

#[test]
fn accepts_policy_names_once_per_object_and_repeated_outside_policy_positions() {
    // A tool's JSON schema may name a property `model` or `n` in many objects; those
    // objects are the upstream's business, not tollgate's metering.
    let cases: Vec<(Endpoint, &str)> = vec![
        (
            Endpoint::ChatCompletions,
            r#"{"model":"m","n":1,"stream":true,"stream_options":{"include_usage":true},
                "max_tokens":5,"max_completion_tokens":5,
                "messages":[{"role":"user","content":"hi","name":"model"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",
                  "properties":{"model":{"type":"string"},"n":{"type":"integer"},
                  "stream":{"type":"object","properties":{"model":{},"stream":{}}}}}}}],
                "metadata":{"model":"x","model":"y"}}"#,
        ),
        (
            Endpoint::Messages,
            r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":[
                {"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"x"}]}]}],
                "tools":[{"name":"t","input_schema":{"properties":{"max_tokens":{},"model":{}}}}]}"#,
        ),
        (
            gemini(false),
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],
                "generationConfig":{"maxOutputTokens":5,"candidateCount":1,"stopSequences":["a","a"]},
                "model":"ignored","tools":[{"functionDeclarations":[{"name":"f","parameters":
                {"properties":{"maxOutputTokens":{},"n":{}}}}]}]}"#,
        ),
        // Outside Gemini, camelCase names are not policy keys.
        (
            Endpoint::Responses,
            r#"{"model":"m","max_output_tokens":5,"maxOutputTokens":7}"#,
        ),
    ];
    for (ep, body) in cases {
        assert!(scan(&ep, body.as_bytes()).is_ok(), "{body}");
    }
}

#[test]
fn openai_endpoints_may_leave_the_model_to_the_server() {
    // vLLM serves one model and accepts requests without `model`.
    let got = scan(
        &Endpoint::ChatCompletions,
        br#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    assert_eq!(got.model, None);
}

#[test]
fn adds_include_usage_to_streaming_openai_requests() {
    let cases = [
        (
            r#"{"model":"m","stream":true}"#,
            Some(Splice {
                offset: 1,
                remove: 0,
                insert: "\"stream_options\":{\"include_usage\":true},",
            }),
        ),
        (
            r#" { "model" : "m" , "stream" : true }"#,
            Some(Splice {
                offset: 2,
                remove: 0,
                insert: "\"stream_options\":{\"include_usage\":true},",
            }),
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{}}"#,
            Some(Splice {
                offset: 45,
                remove: 0,
                insert: "\"include_usage\":true",
            }),
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{ }}"#,
            Some(Splice {
                offset: 45,
                remove: 0,
                insert: "\"include_usage\":true",
            }),
        ),
        (
            r#"{"model":"m","stream_options":{"x":1},"stream":true}"#,
            Some(Splice {
                offset: 31,
                remove: 0,
                insert: "\"include_usage\":true,",
            }),
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            Some(Splice {
                offset: 61,
                remove: 5,
                insert: "true",
            }),
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":null,"y":2}}"#,
            Some(Splice {
                offset: 61,
                remove: 4,
                insert: "true",
            }),
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":null}"#,
            Some(Splice {
                offset: 44,
                remove: 4,
                insert: "{\"include_usage\":true}",
            }),
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            None,
        ),
        (r#"{"model":"m","stream":false}"#, None),
        (r#"{"model":"m"}"#, None),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":"yes"}}"#,
            None,
        ),
        (r#"{"model":"m","stream":true,"stream_options":[]}"#, None),
    ];
    for ep in [Endpoint::ChatCompletions, Endpoint::Completions] {
        for (body, want) in &cases {
            let got = scan(&ep, body.as_bytes()).unwrap();
            assert_eq!(got.usage_splice, *want, "{body}");
            let Some(sp) = got.usage_splice else { continue };
            let out = sp.apply(body.as_bytes()).unwrap();
            assert_eq!(out.len() as isize, body.len() as isize + sp.growth());
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(v["stream_options"]["include_usage"], json!(true), "{body}");
            assert_eq!(v["model"], json!("m"));
            // Rescanning the rewritten body finds nothing left to do.
            let again = scan(&ep, &out).unwrap();
            assert!(
                again.include_usage && again.usage_splice.is_none(),
                "{body}"
            );
        }
    }
    // Other endpoints are never rewritten.
    for ep in [
        Endpoint::Messages,
        Endpoint::Responses,
        Endpoint::Embeddings,
    ] {
        let got = scan(&ep, br#"{"model":"m","stream":true}"#).unwrap();
        assert_eq!(got.usage_splice, None);
    }
}

#[test]
fn long_texts_count_as_the_estimator_counts_them_at_any_split() {
    // Long enough to be sampled, with every one-char escape, `\u` escapes and non-ASCII
    // text: plain text in skipped blocks goes by without pieces, and the count stays the
    // estimator's for the decoded text.
    let unit =
        "fn main() {\n\tprintln!(\"a \\\\ b / c\");\r\n}\u{8}\u{c} na\u{ef}ve \u{4eba} \u{1F600} x";
    let text = unit.repeat(2500) + &"plain words only ".repeat(4000);
    let body = |content: &str| {
        serde_json::to_vec(&json!({"model":"c","max_tokens":5,
                "messages":[{"role":"user","content":content}]}))
        .unwrap()
    };
    let extra = scan(&Endpoint::Messages, &body("")).unwrap().input_estimate;
    let long = body(&text);
    let whole = scan(&Endpoint::Messages, &long).unwrap();
    assert_eq!(whole.input_estimate, est(Api::Anthropic, &[&text], extra));
    // Windows that end anywhere: inside a run, after a backslash, inside a `\u` escape.
    for step in [1000, 4093, 65536] {
        let windows: Vec<&[u8]> = long.chunks(step).collect();
        assert_eq!(
            scan_split(&Endpoint::Messages, &windows),
            Ok(whole.clone()),
            "{step}"
        );
    }
    let at = 70_000 + long[70_000..].iter().position(|&b| b == b'\\').unwrap() + 1;
    let (l, r) = long.split_at(at);
    assert_eq!(scan_split(&Endpoint::Messages, &[l, r]), Ok(whole.clone()));
}

#[test]
fn without_fingerprint_reads_the_same_but_the_fingerprint() {
    let body = serde_json::to_vec(&json!({"model":"c","system":"S","max_tokens":9,
            "messages":[{"role":"user","content":[{"type":"text","text":"first"},
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}))
        .unwrap();
    let with = scan(&Endpoint::Messages, &body).unwrap();
    let mut s = scanner(&Endpoint::Messages).without_fingerprint();
    s.feed(&body).unwrap();
    let without = s.finish().unwrap();
    assert!(with.fingerprint.is_some());
    assert_eq!(
        without,
        RequestInfo {
            fingerprint: None,
            ..with
        }
    );
}

#[test]
fn fingerprint_follows_the_conversation_not_its_later_turns() {
    let fp = |ep: &Endpoint, v: Value| {
        scan(ep, &serde_json::to_vec(&v).unwrap())
            .unwrap()
            .fingerprint
    };
    let a = Endpoint::Messages;
    let base = fp(
        &a,
        json!({"model":"c","system":"S","messages":[{"role":"user","content":"first"}]}),
    );
    let later = fp(
        &a,
        json!({"model":"c","system":"S","max_tokens":9,"messages":[{"role":"user","content":"first"},
                                   {"role":"assistant","content":"reply"},{"role":"user","content":"second"}]}),
    );
    let reordered = fp(
        &a,
        json!({"messages":[{"content":"first","role":"user"}],"system":"S","model":"c"}),
    );
    let blocks = fp(
        &a,
        json!({"model":"c","system":"S","messages":[{"role":"user","content":[{"type":"text","text":"first"}]}]}),
    );
    assert!(base.is_some());
    assert_eq!(base, later);
    assert_eq!(base, reordered);
    assert_eq!(base, blocks);
    assert_ne!(
        base,
        fp(
            &a,
            json!({"model":"c","system":"T","messages":[{"role":"user","content":"first"}]})
        )
    );
    assert_ne!(
        base,
        fp(
            &a,
            json!({"model":"d","system":"S","messages":[{"role":"user","content":"first"}]})
        )
    );
    assert_ne!(
        base,
        fp(
            &a,
            json!({"model":"c","system":"S","messages":[{"role":"user","content":"other"}]})
        )
    );
    assert_eq!(
        fp(
            &a,
            json!({"model":"c","messages":[{"role":"assistant","content":"x"}]})
        ),
        None
    );
    // OpenAI: the system message is part of the prefix.
    let o = Endpoint::ChatCompletions;
    let s1 = fp(
        &o,
        json!({"model":"g","messages":[{"role":"system","content":"S"},{"role":"user","content":"q"}]}),
    );
    let s2 = fp(
        &o,
        json!({"model":"g","messages":[{"role":"system","content":"T"},{"role":"user","content":"q"}]}),
    );
    assert!(s1.is_some());
    assert_ne!(s1, s2);
    // Images in the first message matter.
    let img = |d: &str| {
        fp(
            &o,
            json!({"model":"g","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":d}}]}]}),
        )
    };
    assert_ne!(
        img("data:image/png;base64,AAAA"),
        img("data:image/png;base64,BBBB")
    );
}

/// Estimate of a one-message body whose single part is `part`, minus the same with an
/// empty part: the part's own tokens.
fn part_tokens(ep: &Endpoint, part: Value) -> u64 {
    let body = |p: Value| match ep {
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent => {
            json!({"contents":[{"parts":[p]}]})
        }
        Endpoint::Responses => json!({"model":"m","input":[{"role":"user","content":[p]}]}),
        _ => json!({"model":"m","messages":[{"role":"user","content":[p]}]}),
    };
    let with = scan(ep, &serde_json::to_vec(&body(part)).unwrap())
        .unwrap()
        .input_estimate;
    let without = scan(ep, &serde_json::to_vec(&body(json!({}))).unwrap())
        .unwrap()
        .input_estimate;
    with - without
}

#[test]
fn prices_images_by_their_decoded_size() {
    let anth = |data: &[u8]| json!({"type":"image","source":{"type":"base64","media_type":"image/png","data":b64(data)}});
    let oai = |data: &[u8], detail: &str| json!({"type":"image_url","image_url":{"url":format!("data:image/jpeg;base64,{}", b64(data)),"detail":detail}});
    let oai_detail_first = |data: &[u8]| json!({"type":"image_url","image_url":{"detail":"low","url":format!("data:image/jpeg;base64,{}", b64(data))}});
    let gem = |data: &[u8]| json!({"inlineData":{"mimeType":"image/png","data":b64(data)}});
    let m = Endpoint::Messages;
    let c = Endpoint::ChatCompletions;
    let cases: Vec<(&str, Endpoint, Value, u64)> = vec![
        ("png 1000²", m, anth(&png(1000, 1000)), 1334),
        ("png 200x100", m, anth(&png(200, 100)), 27),
        (
            "png 4000x3000 resized then capped",
            m,
            anth(&png(4000, 3000)),
            1600,
        ),
        ("jpeg with a 128 KB APP1", m, anth(&jpeg(640, 480)), 410),
        ("gif", m, anth(&gif(300, 150)), 60),
        ("webp", m, anth(&webp_vp8x(750, 100)), 100),
        ("unknown bytes", m, anth(&[0u8; 1000]), 100),
        ("truncated png", m, anth(&png(10, 10)[..10]), 1600),
        (
            "url",
            m,
            json!({"type":"image","source":{"type":"url","url":"https://x/y.png"}}),
            1600,
        ),
        ("openai high 1000²", c, oai(&jpeg(1000, 1000), "high"), 765),
        (
            "openai auto 2048x4096",
            c,
            oai(&png(2048, 4096), "auto"),
            85 + 170 * 6,
        ),
        ("openai low", c, oai(&png(4096, 4096), "low"), 85),
        (
            "openai low before url",
            c,
            oai_detail_first(&png(4096, 4096)),
            85,
        ),
        (
            "anthropic file",
            m,
            json!({"type":"document","source":{"type":"file","file_id":"file_1"}}),
            1600,
        ),
        (
            "openai file",
            c,
            json!({"type":"file","file":{"file_id":"file-1"}}),
            1600,
        ),
        (
            "openai plain url",
            c,
            json!({"type":"image_url","image_url":{"url":"https://x/y.png"}}),
            1600,
        ),
        (
            "openai url string low",
            Endpoint::Responses,
            json!({"type":"input_image","image_url":"https://x","detail":"low"}),
            85,
        ),
        ("gemini small", gemini(false), gem(&png(300, 300)), 258),
        (
            "gemini tiles",
            gemini(false),
            gem(&png(1000, 1000)),
            258 * 4,
        ),
    ];
    for (name, ep, part, want) in cases {
        assert_eq!(part_tokens(&ep, part), want, "{name}");
    }
}

#[test]
fn prices_documents_and_other_payloads_by_size() {
    let m = Endpoint::Messages;
    let doc = |data: &[u8]| json!({"type":"document","source":{"type":"base64","media_type":"application/pdf","data":b64(data)}});
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.resize(160_000, b'x');
    assert_eq!(part_tokens(&m, doc(&pdf)), 10_000);
    assert_eq!(part_tokens(&m, doc(b"%PDF-1.4 tiny")), 1500);
    let text = "plain words ".repeat(100);
    assert_eq!(part_tokens(&m, doc(text.as_bytes())), 1200 / 4);
    // Not base64 at all: the base64-looking head counts a token per four characters,
    // the rest as text.
    let audio =
        json!({"type":"input_audio","input_audio":{"data":b64(&[0u8; 100_000]),"format":"wav"}});
    assert_eq!(part_tokens(&Endpoint::ChatCompletions, audio), 200);
    // Anthropic plain-text documents carry text, not base64, in `data`.
    let plain = json!({"type":"document","source":{"type":"text","media_type":"text/plain","data":"abcd abcd abcd"}});
    assert_eq!(
        part_tokens(&m, plain),
        est(Api::Anthropic, &[" abcd abcd"], 1)
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), cut in any::<prop::sample::Index>()) {
        let c = cut.index(body.len() + 1);
        let (l, r) = body.split_at(c);
        for ep in [Endpoint::Messages, Endpoint::ChatCompletions, Endpoint::Responses, gemini(true)] {
            let _ = scan_split(&ep, &[l, r]);
        }
    }

    #[test]
    fn random_chat_bodies_give_the_same_answer_at_any_split(
        texts in prop::collection::vec(".{0,40}", 1..5),
        stream in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let msgs: Vec<Value> = texts.iter().enumerate().map(|(i, t)| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": t})).collect();
        let body = serde_json::to_vec(&json!({"model":"gpt","stream":stream,"messages":msgs})).unwrap();
        let whole = scan(&Endpoint::ChatCompletions, &body).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        points.sort_unstable();
        let mut windows = vec![];
        let mut last = 0;
        for p in points {
            windows.push(&body[last..p]);
            last = p;
        }
        windows.push(&body[last..]);
        prop_assert_eq!(scan_split(&Endpoint::ChatCompletions, &windows), Ok(whole.clone()));
        if let Some(sp) = whole.usage_splice {
            let out = sp.apply(&body).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&v["stream_options"]["include_usage"], &json!(true));
        }
    }
}

/// `cargo test --release -- --ignored --nocapture bench` prints throughput.
#[test]
#[ignore]
fn bench_scanning_throughput() {
    let words = "The quick brown fox jumps over the lazy dog, again and again. ";
    let mut msgs = vec![];
    while serde_json::to_vec(&msgs).unwrap().len() < 256 * 1024 {
        msgs.push(json!({"role":"user","content":words.repeat(20)}));
        msgs.push(json!({"role":"assistant","content":[{"type":"text","text":words.repeat(10)}]}));
    }
    let chat =
        serde_json::to_vec(&json!({"model":"claude","max_tokens":100,"messages":msgs})).unwrap();
    let mut img = png(3000, 2000);
    img.resize(22 * 1024 * 1024, 0x5A);
    let big = serde_json::to_vec(
        &json!({"model":"claude","max_tokens":100,"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":b64(&img)}},
            {"type":"text","text":"What is this?"}]}]}),
    )
    .unwrap();
    for (name, body, reps) in [("256 KB chat", &chat, 200), ("30 MB base64 image", &big, 5)] {
        let t = std::time::Instant::now();
        let mut tokens = 0;
        for _ in 0..reps {
            let mut s = scanner(&Endpoint::Messages);
            for w in body.chunks(64 * 1024) {
                s.feed(w).unwrap();
            }
            tokens = s.finish().unwrap().input_estimate;
        }
        let secs = t.elapsed().as_secs_f64();
        let mbs = (body.len() * reps) as f64 / secs / 1e6;
        println!(
            "{name}: {} bytes, {tokens} tokens, {mbs:.0} MB/s",
            body.len()
        );
    }
}
