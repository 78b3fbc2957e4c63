//! Response bodies in the providers' own wire formats (Anthropic, OpenAI chat/completions/
//! embeddings/responses, Gemini), JSON and streamed. Streams are a `Plan`: a few fixed events
//! around `n` text deltas that are formatted one at a time, so 500-event streams cost nothing
//! up front.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;

use crate::script::{SseError, UsageRaw, Words};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAi,
    Gemini,
}

/// Final usage of a response in tollgate's normalised terms (SPEC "Counting"); `reasoning` is
/// the part of `output` spent on reasoning/thoughts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

/// The generating endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Messages,
    Chat,
    Completions,
    Responses,
    /// Gemini generateContent; `array` is the streamed JSON array (no `alt=sse`).
    Gemini {
        array: bool,
    },
}

impl Kind {
    pub fn api(self) -> Api {
        match self {
            Kind::Messages => Api::Anthropic,
            Kind::Chat | Kind::Completions | Kind::Responses => Api::OpenAi,
            Kind::Gemini { .. } => Api::Gemini,
        }
    }
}

/// Everything a body needs about one request.
pub struct Req {
    pub id: u64,
    pub created: u64,
    /// JSON-escaped model name (no quotes).
    pub model: String,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// Number of text deltas (words) in the answer.
    pub n: usize,
    /// The answer was cut by the request's max tokens.
    pub capped: bool,
    pub usage: Usage,
    /// `usage_raw`: literal texts written in place of the usage numbers.
    pub raw: Arc<UsageRaw>,
    pub words: Arc<Words>,
}

/// A stream: `pre` events, `n` generated deltas, then `tail` events.
pub struct Plan {
    pub pre: Vec<Bytes>,
    pub n: usize,
    pub delta: Delta,
    pub tail: Vec<Bytes>,
    pub words: Arc<Words>,
}

pub struct Delta {
    prefix: String,
    suffix: String,
    kind: DeltaKind,
}

enum DeltaKind {
    /// prefix + word + suffix.
    Plain,
    /// prefix + word + suffix + (base + i) + end: OpenAI Responses sequence numbers.
    Seq { base: u64, end: &'static str },
    /// Gemini chunks carry a running usage; arrays separate elements with `,\r\n`.
    Gemini {
        prompt: u64,
        /// What is written as `promptTokenCount` (the number, or `usage_raw.input`).
        prompt_text: String,
        candidates: u64,
        array: bool,
        end: String,
    },
}

/// Which part of the plan a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Pre,
    Delta,
    Tail,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.pre.len() + self.n + self.tail.len()
    }

    pub fn part(&self, i: usize) -> Option<Part> {
        if i < self.pre.len() {
            Some(Part::Pre)
        } else if i < self.pre.len() + self.n {
            Some(Part::Delta)
        } else if i < self.len() {
            Some(Part::Tail)
        } else {
            None
        }
    }

    /// The i-th frame of the stream.
    pub fn frame(&self, i: usize) -> Option<Bytes> {
        if let Some(b) = self.pre.get(i) {
            return Some(b.clone());
        }
        let d = i - self.pre.len();
        if d < self.n {
            return Some(self.delta.render(d, &self.words));
        }
        self.tail.get(d - self.n).cloned()
    }

    /// The whole stream as one buffer (tests and small helpers).
    #[cfg(test)]
    pub fn concat(&self) -> Vec<u8> {
        (0..self.len())
            .filter_map(|i| self.frame(i))
            .flat_map(|b| b.to_vec())
            .collect()
    }
}

impl Delta {
    fn render(&self, i: usize, words: &Words) -> Bytes {
        let word = words.piece(i);
        let mut s = String::with_capacity(self.prefix.len() + self.suffix.len() + word.len() + 64);
        match &self.kind {
            DeltaKind::Plain => {
                s.push_str(&self.prefix);
                s.push_str(word);
                s.push_str(&self.suffix);
            }
            DeltaKind::Seq { base, end } => {
                s.push_str(&self.prefix);
                s.push_str(word);
                s.push_str(&self.suffix);
                let _ = write!(s, "{}{end}", base.saturating_add(i as u64));
            }
            DeltaKind::Gemini {
                prompt,
                prompt_text,
                candidates,
                array,
                end,
            } => {
                if *array {
                    s.push_str(if i == 0 { "[" } else { ",\r\n" });
                } else {
                    s.push_str("data: ");
                }
                s.push_str(&self.prefix);
                s.push_str(word);
                let k = (i as u64).saturating_add(1).min(*candidates);
                let _ = write!(
                    s,
                    "{}{prompt_text},\"candidatesTokenCount\":{k},\"totalTokenCount\":{}{end}",
                    self.suffix,
                    prompt.saturating_add(k)
                );
                if !*array {
                    s.push_str("\r\n\r\n");
                }
            }
        }
        Bytes::from(s)
    }
}

fn sse(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

// ---------------------------------------------------------------- usage in each format

/// The usage numbers as the JSON texts written on the wire: the real numbers, or the script's
/// `usage_raw` literals in their place.
pub struct Nums {
    /// Anthropic `input_tokens`.
    input: Cow<'static, str>,
    cache_read: Cow<'static, str>,
    cache_write: Cow<'static, str>,
    /// Anthropic `output_tokens`, OpenAI `completion_tokens`/`output_tokens`.
    output: Cow<'static, str>,
    reasoning: Cow<'static, str>,
    /// OpenAI `prompt_tokens`/`input_tokens`, Gemini `promptTokenCount` (cache reads included).
    prompt: Cow<'static, str>,
    total: Cow<'static, str>,
    /// Gemini `candidatesTokenCount` (output less thoughts).
    candidates: Cow<'static, str>,
    /// Gemini and vLLM leave zero cache/thought counts out.
    has_cache_read: bool,
    has_reasoning: bool,
}

fn num(raw: &Option<String>, n: u64) -> Cow<'static, str> {
    match raw {
        Some(t) => Cow::Owned(t.clone()),
        None => Cow::Owned(n.to_string()),
    }
}

impl Nums {
    pub fn new(u: &Usage, raw: &UsageRaw) -> Nums {
        let prompt = prompt_tokens(u);
        Nums {
            input: num(&raw.input, u.input),
            cache_read: num(&raw.cache_read, u.cache_read),
            cache_write: num(&raw.cache_write, u.cache_write),
            output: num(&raw.output, u.output),
            reasoning: num(&raw.reasoning, u.reasoning),
            prompt: num(&raw.input, prompt),
            total: num(&raw.total, prompt.saturating_add(u.output)),
            candidates: num(&raw.output, u.output.saturating_sub(u.reasoning)),
            has_cache_read: u.cache_read > 0 || raw.cache_read.is_some(),
            has_reasoning: u.reasoning > 0 || raw.reasoning.is_some(),
        }
    }
}

impl Req {
    fn nums(&self) -> Nums {
        Nums::new(&self.usage, &self.raw)
    }
}

fn anthropic_usage(n: &Nums) -> String {
    format!(
        "{{\"input_tokens\":{},\"cache_creation_input_tokens\":{},\"cache_read_input_tokens\":{},\"output_tokens\":{},\"service_tier\":\"standard\"}}",
        n.input, n.cache_write, n.cache_read, n.output
    )
}

/// OpenAI counts cached tokens inside `prompt_tokens`.
fn prompt_tokens(u: &Usage) -> u64 {
    u.input.saturating_add(u.cache_read)
}

fn chat_usage(n: &Nums) -> String {
    format!(
        "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{},\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":{},\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}",
        n.prompt, n.output, n.total, n.cache_read, n.reasoning
    )
}

/// vLLM style: `prompt_tokens_details` is null unless prefix caching hit.
fn completions_usage(n: &Nums) -> String {
    let details = if n.has_cache_read {
        format!("{{\"cached_tokens\":{}}}", n.cache_read)
    } else {
        "null".into()
    };
    format!(
        "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{},\"prompt_tokens_details\":{details}}}",
        n.prompt, n.total, n.output
    )
}

fn responses_usage(n: &Nums) -> String {
    format!(
        "{{\"input_tokens\":{},\"input_tokens_details\":{{\"cached_tokens\":{}}},\"output_tokens\":{},\"output_tokens_details\":{{\"reasoning_tokens\":{}}},\"total_tokens\":{}}}",
        n.prompt, n.cache_read, n.output, n.reasoning, n.total
    )
}

/// Gemini leaves zero cache/thought counts out, as the real API does.
fn gemini_usage(n: &Nums) -> String {
    let mut s = format!(
        "{{\"promptTokenCount\":{},\"candidatesTokenCount\":{},\"totalTokenCount\":{}",
        n.prompt, n.candidates, n.total
    );
    if n.has_cache_read {
        let _ = write!(s, ",\"cachedContentTokenCount\":{}", n.cache_read);
    }
    if n.has_reasoning {
        let _ = write!(s, ",\"thoughtsTokenCount\":{}", n.reasoning);
    }
    let _ = write!(
        s,
        ",\"promptTokensDetails\":[{{\"modality\":\"TEXT\",\"tokenCount\":{}}}]}}",
        n.prompt
    );
    s
}

// ---------------------------------------------------------------- JSON bodies

pub fn json_body(kind: Kind, r: &Req) -> String {
    json_body_with(kind, r, &r.words.text(r.n))
}

/// The JSON answer with `text` (JSON-escaped) as its content.
fn json_body_with(kind: Kind, r: &Req, text: &str) -> String {
    let m = &r.model;
    match kind {
        Kind::Messages => format!(
            "{{\"id\":\"msg_mock_{:012}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{m}\",\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}}],\"stop_reason\":\"{}\",\"stop_sequence\":null,\"usage\":{}}}",
            r.id,
            if r.capped { "max_tokens" } else { "end_turn" },
            anthropic_usage(&r.nums())
        ),
        Kind::Chat => format!(
            "{{\"id\":\"chatcmpl-mock{}\",\"object\":\"chat.completion\",\"created\":{},\"model\":\"{m}\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{text}\",\"refusal\":null,\"annotations\":[]}},\"logprobs\":null,\"finish_reason\":\"{}\"}}],\"usage\":{},\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\"}}",
            r.id,
            r.created,
            if r.capped { "length" } else { "stop" },
            chat_usage(&r.nums())
        ),
        Kind::Completions => format!(
            "{{\"id\":\"cmpl-mock{}\",\"object\":\"text_completion\",\"created\":{},\"model\":\"{m}\",\"choices\":[{{\"index\":0,\"text\":\"{text}\",\"logprobs\":null,\"finish_reason\":\"{}\",\"stop_reason\":null,\"prompt_logprobs\":null}}],\"usage\":{}}}",
            r.id,
            r.created,
            if r.capped { "length" } else { "stop" },
            completions_usage(&r.nums())
        ),
        Kind::Responses => response_object(r, ResponseState::Done, text),
        Kind::Gemini { .. } => format!(
            "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}],\"role\":\"model\"}},\"finishReason\":\"{}\",\"index\":0}}],\"usageMetadata\":{},\"modelVersion\":\"{m}\",\"responseId\":\"mock{}\"}}",
            if r.capped { "MAX_TOKENS" } else { "STOP" },
            gemini_usage(&r.nums()),
            r.id
        ),
    }
}

/// The JSON answer cut where its content text ends, for padding the text with `filler`
/// bytes there: (head with the real text, tail with everything after, usage included).
pub fn json_parts(kind: Kind, r: &Req) -> (String, String) {
    // U+0001 is escaped everywhere else in the body, so it marks the cut unambiguously.
    let body = json_body_with(kind, r, &format!("{}\u{1}", r.words.text(r.n)));
    match body.split_once('\u{1}') {
        Some((head, tail)) => (head.to_owned(), tail.to_owned()),
        None => (body, String::new()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ResponseState {
    InProgress,
    Done,
}

fn response_item(r: &Req, text: &str, status: &str) -> String {
    format!(
        "{{\"id\":\"msg_mock{}\",\"type\":\"message\",\"status\":\"{status}\",\"content\":[{{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"{text}\"}}],\"role\":\"assistant\"}}",
        r.id
    )
}

fn response_object(r: &Req, state: ResponseState, text: &str) -> String {
    let (status, incomplete, output, usage) = match state {
        ResponseState::InProgress => (
            "in_progress",
            "null".to_owned(),
            String::new(),
            "null".to_owned(),
        ),
        ResponseState::Done if r.capped => (
            "incomplete",
            "{\"reason\":\"max_output_tokens\"}".to_owned(),
            response_item(r, text, "incomplete"),
            responses_usage(&r.nums()),
        ),
        ResponseState::Done => (
            "completed",
            "null".to_owned(),
            response_item(r, text, "completed"),
            responses_usage(&r.nums()),
        ),
    };
    format!(
        "{{\"id\":\"resp_mock{}\",\"object\":\"response\",\"created_at\":{},\"status\":\"{status}\",\"background\":false,\"error\":null,\"incomplete_details\":{incomplete},\"instructions\":null,\"max_output_tokens\":null,\"model\":\"{}\",\"output\":[{output}],\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{{\"effort\":null,\"summary\":null}},\"store\":true,\"temperature\":1.0,\"text\":{{\"format\":{{\"type\":\"text\"}}}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":{usage},\"user\":null,\"metadata\":{{}}}}",
        r.id, r.created, r.model
    )
}

// ---------------------------------------------------------------- streams

/// The stream plan; with `err`, the stream stops after `err.after` deltas with an error event
/// in the provider's stream format (and no proper end).
pub fn stream_plan(kind: Kind, r: &Req, err: Option<&SseError>) -> Plan {
    let n = match err {
        Some(e) => r.n.min(e.after),
        None => r.n,
    };
    let m = &r.model;
    let (pre, delta, mut tail) = match kind {
        Kind::Messages => {
            // message_start reports the input and 1 output token; message_delta the output.
            let start = Nums {
                output: Cow::Borrowed("1"),
                ..r.nums()
            };
            let pre = vec![
                sse(
                    "message_start",
                    &format!(
                        "{{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_mock_{:012}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{m}\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{}}}}}",
                        r.id,
                        anthropic_usage(&start)
                    ),
                ),
                sse(
                    "content_block_start",
                    "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}",
                ),
                sse("ping", "{\"type\": \"ping\"}"),
            ];
            let delta = Delta {
                prefix: "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"".into(),
                suffix: "\"}}\n\n".into(),
                kind: DeltaKind::Plain,
            };
            let tail = vec![
                sse("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}"),
                sse(
                    "message_delta",
                    &format!(
                        "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{}\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{}}}}}",
                        if r.capped { "max_tokens" } else { "end_turn" },
                        r.nums().output
                    ),
                ),
                sse("message_stop", "{\"type\":\"message_stop\"}"),
            ];
            (pre, delta, tail)
        }
        Kind::Chat => {
            let head = format!(
                "{{\"id\":\"chatcmpl-mock{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":\"{m}\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[",
                r.id, r.created
            );
            let usage_null = if r.include_usage {
                ",\"usage\":null"
            } else {
                ""
            };
            let pre = vec![data(&format!(
                "{head}{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}]{usage_null}}}"
            ))];
            let delta = Delta {
                prefix: format!("data: {head}{{\"index\":0,\"delta\":{{\"content\":\""),
                suffix: format!(
                    "\"}},\"logprobs\":null,\"finish_reason\":null}}]{usage_null}}}\n\n"
                ),
                kind: DeltaKind::Plain,
            };
            let mut tail = vec![data(&format!(
                "{head}{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"{}\"}}]{usage_null}}}",
                if r.capped { "length" } else { "stop" }
            ))];
            if r.include_usage {
                tail.push(data(&format!(
                    "{head}],\"usage\":{}}}",
                    chat_usage(&r.nums())
                )));
            }
            tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
            (pre, delta, tail)
        }
        Kind::Completions => {
            let head = format!(
                "{{\"id\":\"cmpl-mock{}\",\"object\":\"text_completion\",\"created\":{},\"model\":\"{m}\",\"choices\":[",
                r.id, r.created
            );
            let delta = Delta {
                prefix: format!("data: {head}{{\"index\":0,\"text\":\""),
                suffix: "\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}\n\n"
                    .into(),
                kind: DeltaKind::Plain,
            };
            let mut tail = vec![data(&format!(
                "{head}{{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"{}\",\"stop_reason\":null}}]}}",
                if r.capped { "length" } else { "stop" }
            ))];
            if r.include_usage {
                tail.push(data(&format!(
                    "{head}],\"usage\":{}}}",
                    completions_usage(&r.nums())
                )));
            }
            tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
            (Vec::new(), delta, tail)
        }
        Kind::Responses => {
            let item = format!("msg_mock{}", r.id);
            let pre = vec![
                sse(
                    "response.created",
                    &format!(
                        "{{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{}}}",
                        response_object(r, ResponseState::InProgress, "")
                    ),
                ),
                sse(
                    "response.in_progress",
                    &format!(
                        "{{\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{}}}",
                        response_object(r, ResponseState::InProgress, "")
                    ),
                ),
                sse(
                    "response.output_item.added",
                    &format!(
                        "{{\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{{\"id\":\"{item}\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}}}"
                    ),
                ),
                sse(
                    "response.content_part.added",
                    &format!(
                        "{{\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"{item}\",\"output_index\":0,\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"\"}}}}"
                    ),
                ),
            ];
            let base = pre.len() as u64;
            let delta = Delta {
                prefix: format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"{item}\",\"output_index\":0,\"content_index\":0,\"delta\":\""),
                suffix: "\",\"logprobs\":[],\"sequence_number\":".into(),
                kind: DeltaKind::Seq { base, end: "}\n\n" },
            };
            let text = r.words.text(n);
            let s = base.saturating_add(n as u64);
            let (done_status, done_event) = if r.capped {
                ("incomplete", "response.incomplete")
            } else {
                ("completed", "response.completed")
            };
            let tail = vec![
                sse(
                    "response.output_text.done",
                    &format!("{{\"type\":\"response.output_text.done\",\"sequence_number\":{s},\"item_id\":\"{item}\",\"output_index\":0,\"content_index\":0,\"text\":\"{text}\",\"logprobs\":[]}}"),
                ),
                sse(
                    "response.content_part.done",
                    &format!("{{\"type\":\"response.content_part.done\",\"sequence_number\":{},\"item_id\":\"{item}\",\"output_index\":0,\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"{text}\"}}}}", s + 1),
                ),
                sse(
                    "response.output_item.done",
                    &format!("{{\"type\":\"response.output_item.done\",\"sequence_number\":{},\"output_index\":0,\"item\":{}}}", s + 2, response_item(r, &text, done_status)),
                ),
                sse(
                    done_event,
                    &format!("{{\"type\":\"{done_event}\",\"sequence_number\":{},\"response\":{}}}", s + 3, response_object(r, ResponseState::Done, &text)),
                ),
            ];
            (pre, delta, tail)
        }
        Kind::Gemini { array } => {
            let candidates = r.usage.output.saturating_sub(r.usage.reasoning);
            let prompt = prompt_tokens(&r.usage);
            let prompt_text = r.nums().prompt.into_owned();
            let end = format!(
                "}},\"modelVersion\":\"{m}\",\"responseId\":\"mock{}\"}}",
                r.id
            );
            let delta = Delta {
                prefix: "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"".into(),
                suffix: "\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":".into(),
                kind: DeltaKind::Gemini { prompt, prompt_text, candidates, array, end },
            };
            let last = format!(
                "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"\"}}],\"role\":\"model\"}},\"finishReason\":\"{}\",\"index\":0}}],\"usageMetadata\":{},\"modelVersion\":\"{m}\",\"responseId\":\"mock{}\"}}",
                if r.capped { "MAX_TOKENS" } else { "STOP" },
                gemini_usage(&r.nums()),
                r.id
            );
            let tail = vec![if array {
                Bytes::from(format!("{}{last}]", if n == 0 { "[" } else { ",\r\n" }))
            } else {
                Bytes::from(format!("data: {last}\r\n\r\n"))
            }];
            (Vec::new(), delta, tail)
        }
    };
    if let Some(e) = err {
        tail = vec![stream_error(kind, e, n)];
    }
    Plan {
        pre,
        n,
        delta,
        tail,
        words: r.words.clone(),
    }
}

/// The error event for `sse_error`, after `n` deltas.
fn stream_error(kind: Kind, e: &SseError, n: usize) -> Bytes {
    let status = match e.kind.as_str() {
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        "authentication_error" => 401,
        "permission_error" => 403,
        "invalid_request_error" => 400,
        _ => 500,
    };
    let msg = e
        .message
        .as_deref()
        .map(crate::script::escape)
        .unwrap_or_else(|| default_message(status).to_owned());
    match kind {
        Kind::Messages => sse(
            "error",
            &format!(
                "{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":\"{msg}\"}}}}",
                crate::script::escape(&e.kind)
            ),
        ),
        Kind::Chat | Kind::Completions => data(&openai_error(status, &msg)),
        Kind::Responses => {
            let (_, code) = openai_type_code(status);
            sse(
                "error",
                &format!(
                    "{{\"type\":\"error\",\"code\":\"{code}\",\"message\":\"{msg}\",\"param\":null,\"sequence_number\":{}}}",
                    4 + n
                ),
            )
        }
        Kind::Gemini { array } => {
            let status = if status == 529 { 503 } else { status };
            let body = gemini_error(status, &msg);
            if array {
                Bytes::from(format!("{}{body}]", if n == 0 { "[" } else { ",\r\n" }))
            } else {
                Bytes::from(format!("data: {body}\r\n\r\n"))
            }
        }
    }
}

// ---------------------------------------------------------------- errors

pub fn default_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid request (mock)",
        401 => "Invalid API key (mock)",
        403 => "Permission denied (mock)",
        404 => "Not found (mock)",
        413 => "Request too large (mock)",
        429 => "Rate limit exceeded (mock)",
        503 | 529 => "Overloaded (mock)",
        _ => "Upstream error (mock)",
    }
}

fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

fn openai_type_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("invalid_request_error", "invalid_request"),
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("invalid_request_error", "permission_denied"),
        404 => ("invalid_request_error", "not_found"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("requests", "rate_limit_exceeded"),
        503 | 529 => ("server_error", "service_unavailable"),
        _ => ("server_error", "server_error"),
    }
}

fn gemini_status(status: u16) -> &'static str {
    match status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn openai_error(status: u16, msg: &str) -> String {
    let (t, code) = openai_type_code(status);
    openai_error_with(t, &format!("\"{code}\""), msg)
}

/// `code_json` is the JSON text of `code` (a quoted string or `null`); `msg` is escaped.
pub fn openai_error_with(kind: &str, code_json: &str, msg: &str) -> String {
    format!("{{\"error\":{{\"message\":\"{msg}\",\"type\":\"{kind}\",\"param\":null,\"code\":{code_json}}}}}")
}

pub fn anthropic_error(kind: &str, msg: &str, id: u64) -> String {
    format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"{msg}\"}},\"request_id\":\"req_mock_{id:012}\"}}"
    )
}

fn gemini_error(status: u16, msg: &str) -> String {
    format!(
        "{{\"error\":{{\"code\":{status},\"message\":\"{msg}\",\"status\":\"{}\"}}}}",
        gemini_status(status)
    )
}

/// An error body in the API's own format.
pub fn error_body(api: Api, status: u16, message: Option<&str>, id: u64) -> String {
    let msg = message
        .map(crate::script::escape)
        .unwrap_or_else(|| default_message(status).to_owned());
    error_body_escaped(api, status, &msg, id)
}

pub fn error_body_escaped(api: Api, status: u16, msg: &str, id: u64) -> String {
    match api {
        Api::Anthropic => anthropic_error(anthropic_type(status), msg, id),
        Api::OpenAi => openai_error(status, msg),
        Api::Gemini => gemini_error(status, msg),
    }
}

// ---------------------------------------------------------------- small endpoints

pub fn count_tokens_body(n: &Nums) -> String {
    format!("{{\"input_tokens\":{}}}", n.input)
}

/// `data[].embedding` in the requested encoding; the OpenAI Python SDK asks for base64 by default.
pub fn embeddings_body(r: &Req, inputs: usize, base64: bool) -> String {
    const VECTOR: [f32; 8] = [
        0.0123, -0.0456, 0.0789, 0.1011, -0.1213, 0.1415, -0.1617, 0.1819,
    ];
    let embedding = if base64 {
        let mut raw = Vec::with_capacity(VECTOR.len() * 4);
        for v in VECTOR {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        format!("\"{}\"", base64_encode(&raw))
    } else {
        let parts: Vec<String> = VECTOR.iter().map(|v| v.to_string()).collect();
        format!("[{}]", parts.join(","))
    };
    let mut items = String::new();
    for i in 0..inputs.max(1) {
        if i > 0 {
            items.push(',');
        }
        let _ = write!(
            items,
            "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":{embedding}}}"
        );
    }
    let n = r.nums();
    format!(
        "{{\"object\":\"list\",\"data\":[{items}],\"model\":\"{}\",\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{}}}}}",
        r.model, n.prompt, n.total
    )
}

fn base64_encode(raw: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(T[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn models_body(api: Api) -> String {
    match api {
        Api::Anthropic => "{\"data\":[{\"type\":\"model\",\"id\":\"claude-sonnet-4-5\",\"display_name\":\"Claude Sonnet 4.5\",\"created_at\":\"2025-09-29T00:00:00Z\"},{\"type\":\"model\",\"id\":\"claude-3-5-haiku-20241022\",\"display_name\":\"Claude Haiku 3.5\",\"created_at\":\"2024-10-22T00:00:00Z\"}],\"has_more\":false,\"first_id\":\"claude-sonnet-4-5\",\"last_id\":\"claude-3-5-haiku-20241022\"}".into(),
        Api::OpenAi => "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":1721172741,\"owned_by\":\"system\"},{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1715367049,\"owned_by\":\"system\"},{\"id\":\"text-embedding-3-small\",\"object\":\"model\",\"created\":1705948997,\"owned_by\":\"system\"}]}".into(),
        Api::Gemini => "{\"models\":[{\"name\":\"models/gemini-2.5-flash\",\"version\":\"001\",\"displayName\":\"Gemini 2.5 Flash\",\"inputTokenLimit\":1048576,\"outputTokenLimit\":65536,\"supportedGenerationMethods\":[\"generateContent\",\"countTokens\"]}]}".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::UsageRaw;
    use serde_json::Value;

    fn req(n: usize, usage: Usage, include_usage: bool) -> Req {
        Req {
            id: 7,
            created: 1_700_000_000,
            model: "m-\\\"1".into(),
            include_usage,
            n,
            capped: false,
            usage,
            raw: crate::script::UsageRaw::none(),
            words: Words::default_answer(),
        }
    }

    const U: Usage = Usage {
        input: 100,
        output: 5,
        cache_read: 30,
        cache_write: 20,
        reasoning: 0,
    };

    /// Splits an SSE body into (event name, parsed data) pairs, checking framing on the way.
    fn parse_sse(body: &[u8], sep: &str) -> Vec<(Option<String>, Value)> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with(sep), "stream must end with a blank line");
        text.split(sep)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut name = None;
                let mut data = None;
                for line in e.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(if v == "[DONE]" {
                            Value::String("[DONE]".into())
                        } else {
                            serde_json::from_str(v).unwrap_or_else(|e| panic!("{e}: {v}"))
                        });
                    } else {
                        panic!("unexpected line {line:?}");
                    }
                }
                (name, data.unwrap())
            })
            .collect()
    }

    #[test]
    fn json_bodies_parse_and_report_usage_in_each_format() {
        let r = req(5, U, false);
        let cases: &[(Kind, &str, u64)] = &[
            (Kind::Messages, "/usage/input_tokens", 100),
            (Kind::Messages, "/usage/cache_read_input_tokens", 30),
            (Kind::Messages, "/usage/cache_creation_input_tokens", 20),
            (Kind::Messages, "/usage/output_tokens", 5),
            (Kind::Chat, "/usage/prompt_tokens", 130),
            (Kind::Chat, "/usage/prompt_tokens_details/cached_tokens", 30),
            (Kind::Chat, "/usage/total_tokens", 135),
            (Kind::Completions, "/usage/completion_tokens", 5),
            (Kind::Responses, "/usage/input_tokens", 130),
            (
                Kind::Responses,
                "/usage/input_tokens_details/cached_tokens",
                30,
            ),
            (Kind::Responses, "/usage/total_tokens", 135),
            (
                Kind::Gemini { array: false },
                "/usageMetadata/promptTokenCount",
                130,
            ),
            (
                Kind::Gemini { array: false },
                "/usageMetadata/cachedContentTokenCount",
                30,
            ),
            (
                Kind::Gemini { array: false },
                "/usageMetadata/totalTokenCount",
                135,
            ),
        ];
        for (kind, ptr, want) in cases {
            let v: Value = serde_json::from_str(&json_body(*kind, &r)).unwrap();
            assert_eq!(
                v.pointer(ptr).and_then(Value::as_u64),
                Some(*want),
                "{kind:?} {ptr}"
            );
        }
        let v: Value = serde_json::from_str(&json_body(Kind::Messages, &r)).unwrap();
        assert_eq!(v["content"][0]["text"], "Hello from the mock upstream");
        assert_eq!(v["model"], "m-\"1");
    }

    #[test]
    fn anthropic_stream_has_the_documented_event_order_and_final_usage() {
        let r = req(500, Usage { output: 500, ..U }, false);
        let p = stream_plan(Kind::Messages, &r, None);
        let ev = parse_sse(&p.concat(), "\n\n");
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        assert_eq!(names.len(), 3 + 500 + 3);
        assert_eq!(
            &names[..3],
            ["message_start", "content_block_start", "ping"]
        );
        assert!(names[3..503].iter().all(|n| *n == "content_block_delta"));
        assert_eq!(
            &names[503..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        for (name, data) in &ev {
            assert_eq!(data["type"], name.as_deref().unwrap());
        }
        let start = &ev[0].1["message"]["usage"];
        assert_eq!(start["input_tokens"], 100);
        assert_eq!(start["cache_read_input_tokens"], 30);
        assert_eq!(start["cache_creation_input_tokens"], 20);
        assert_eq!(start["output_tokens"], 1);
        assert_eq!(ev[504].1["usage"]["output_tokens"], 500);
        let text: String = ev[3..503]
            .iter()
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text.split(' ').count(), 500);
    }

    #[test]
    fn openai_streams_end_with_done_and_carry_usage_only_when_asked() {
        for kind in [Kind::Chat, Kind::Completions] {
            for include in [false, true] {
                let p = stream_plan(kind, &req(5, U, include), None);
                let ev = parse_sse(&p.concat(), "\n\n");
                assert_eq!(ev.last().unwrap().1, "[DONE]");
                let usage_chunks: Vec<&Value> = ev
                    .iter()
                    .map(|(_, d)| d)
                    .filter(|d| d["usage"].is_object())
                    .collect();
                if include {
                    assert_eq!(usage_chunks.len(), 1, "{kind:?}");
                    let u = usage_chunks[0];
                    assert_eq!(u["choices"].as_array().unwrap().len(), 0);
                    assert_eq!(u["usage"]["prompt_tokens"], 130);
                    assert_eq!(u["usage"]["completion_tokens"], 5);
                } else {
                    assert!(usage_chunks.is_empty(), "{kind:?}");
                    assert!(ev.iter().all(|(_, d)| d.get("usage").is_none()));
                }
                if kind == Kind::Chat && include {
                    let nulls = ev
                        .iter()
                        .filter(|(_, d)| d.get("usage") == Some(&Value::Null))
                        .count();
                    assert_eq!(nulls, ev.len() - 2, "every other chunk says usage: null");
                }
            }
        }
    }

    #[test]
    fn responses_stream_numbers_events_and_completes_with_usage() {
        let p = stream_plan(Kind::Responses, &req(5, U, false), None);
        let ev = parse_sse(&p.concat(), "\n\n");
        for (i, (name, d)) in ev.iter().enumerate() {
            assert_eq!(d["type"], name.as_deref().unwrap());
            assert_eq!(d["sequence_number"], i as u64);
        }
        assert_eq!(ev[0].0.as_deref(), Some("response.created"));
        let (name, last) = ev.last().unwrap();
        assert_eq!(name.as_deref(), Some("response.completed"));
        assert_eq!(last["response"]["usage"]["input_tokens"], 130);
        assert_eq!(last["response"]["usage"]["output_tokens"], 5);
        let deltas = ev
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"));
        assert_eq!(deltas.count(), 5);
    }

    #[test]
    fn gemini_streams_as_sse_or_json_array_with_complete_final_usage() {
        let u = Usage { reasoning: 2, ..U };
        let sse_ev = parse_sse(
            &stream_plan(Kind::Gemini { array: false }, &req(5, u, false), None).concat(),
            "\r\n\r\n",
        );
        let array: Value = serde_json::from_slice(
            &stream_plan(Kind::Gemini { array: true }, &req(5, u, false), None).concat(),
        )
        .unwrap();
        let array = array.as_array().unwrap().clone();
        for chunks in [
            sse_ev.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
            array,
        ] {
            assert_eq!(chunks.len(), 6);
            let last = &chunks[5]["usageMetadata"];
            assert_eq!(last["promptTokenCount"], 130);
            assert_eq!(last["candidatesTokenCount"], 3);
            assert_eq!(last["thoughtsTokenCount"], 2);
            assert_eq!(last["totalTokenCount"], 135);
            for c in &chunks[..5] {
                let m = &c["usageMetadata"];
                assert!(m["candidatesTokenCount"].as_u64().unwrap() <= 3);
            }
        }
        let empty = stream_plan(Kind::Gemini { array: true }, &req(0, U, false), None).concat();
        assert_eq!(
            serde_json::from_slice::<Value>(&empty)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn sse_error_stops_the_stream_with_the_providers_error_event() {
        let e = SseError {
            after: 2,
            kind: "overloaded_error".into(),
            message: None,
        };
        let p = stream_plan(Kind::Messages, &req(5, U, false), Some(&e));
        let ev = parse_sse(&p.concat(), "\n\n");
        assert_eq!(ev.len(), 3 + 2 + 1);
        let (name, d) = ev.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"));
        assert_eq!(d["error"]["type"], "overloaded_error");
        for kind in [
            Kind::Chat,
            Kind::Completions,
            Kind::Responses,
            Kind::Gemini { array: false },
        ] {
            let p = stream_plan(kind, &req(5, U, true), Some(&e));
            let sep = if matches!(kind, Kind::Gemini { .. }) {
                "\r\n\r\n"
            } else {
                "\n\n"
            };
            let ev = parse_sse(&p.concat(), sep);
            let last = &ev.last().unwrap().1;
            assert!(
                last.get("error").is_some() || last["type"] == "error",
                "{kind:?}: {last}"
            );
        }
        let arr = stream_plan(Kind::Gemini { array: true }, &req(5, U, false), Some(&e)).concat();
        let v: Value = serde_json::from_slice(&arr).unwrap();
        assert_eq!(v[2]["error"]["status"], "UNAVAILABLE");
    }

    #[test]
    fn error_bodies_use_each_apis_format() {
        let cases: &[(Api, u16, &str, &str)] = &[
            (Api::Anthropic, 429, "/error/type", "rate_limit_error"),
            (Api::Anthropic, 529, "/error/type", "overloaded_error"),
            (Api::Anthropic, 401, "/error/type", "authentication_error"),
            (Api::OpenAi, 429, "/error/code", "rate_limit_exceeded"),
            (Api::OpenAi, 401, "/error/code", "invalid_api_key"),
            (Api::Gemini, 429, "/error/status", "RESOURCE_EXHAUSTED"),
            (Api::Gemini, 403, "/error/status", "PERMISSION_DENIED"),
        ];
        for (api, status, ptr, want) in cases {
            let v: Value = serde_json::from_str(&error_body(*api, *status, None, 1)).unwrap();
            assert_eq!(
                v.pointer(ptr).and_then(Value::as_str),
                Some(*want),
                "{api:?} {status}"
            );
        }
        let v: Value =
            serde_json::from_str(&error_body(Api::Anthropic, 429, Some("a \"b\""), 1)).unwrap();
        assert_eq!(v["error"]["message"], "a \"b\"");
    }

    fn raw(input: &str, output: &str, cache_read: &str) -> Arc<UsageRaw> {
        Arc::new(UsageRaw {
            input: Some(input.into()),
            output: Some(output.into()),
            cache_read: Some(cache_read.into()),
            cache_write: Some(input.into()),
            reasoning: Some(output.into()),
            total: Some(cache_read.into()),
        })
    }

    /// Every JSON document of a body: the body itself, SSE `data:` lines, or array elements.
    fn documents(kind: Kind, stream: bool, body: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(body).unwrap();
        if !stream || kind == (Kind::Gemini { array: true }) {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            return match v {
                Value::Array(a) if stream => a,
                v => vec![v],
            };
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{kind:?} {e}: {d}")))
            .collect()
    }

    #[test]
    fn usage_raw_literals_stand_in_every_usage_position_and_keep_valid_literals_valid_json() {
        let kinds = [
            Kind::Messages,
            Kind::Chat,
            Kind::Completions,
            Kind::Responses,
            Kind::Gemini { array: false },
            Kind::Gemini { array: true },
        ];
        // (kind, pointer into the final usage document, which literal lands there)
        let positions: &[(Kind, &[&str])] = &[
            (Kind::Messages, &["input_tokens", "output_tokens"]),
            (
                Kind::Chat,
                &["prompt_tokens", "completion_tokens", "total_tokens"],
            ),
            (
                Kind::Completions,
                &["prompt_tokens", "completion_tokens", "total_tokens"],
            ),
            (
                Kind::Responses,
                &["input_tokens", "output_tokens", "total_tokens"],
            ),
            (
                Kind::Gemini { array: false },
                &[
                    "promptTokenCount",
                    "candidatesTokenCount",
                    "totalTokenCount",
                ],
            ),
        ];
        let literals = [
            ("1e30", "-5", "1.5"),
            ("18446744073709551616", "\"12\"", "0"),
            ("-0.0", "1E+2", "null"),
        ];
        for (a, b, c) in literals {
            let (va, vb, vc): (Value, Value, Value) = (
                serde_json::from_str(a).unwrap(),
                serde_json::from_str(b).unwrap(),
                serde_json::from_str(c).unwrap(),
            );
            for kind in kinds {
                for stream in [false, true] {
                    let mut r = req(5, U, true);
                    r.raw = raw(a, b, c);
                    let body = if stream {
                        stream_plan(kind, &r, None).concat()
                    } else {
                        json_body(kind, &r).into_bytes()
                    };
                    let docs = documents(kind, stream, &body);
                    // The last document with usage holds the final numbers.
                    let usage = docs
                        .iter()
                        .rev()
                        .find_map(|d| {
                            d.pointer("/usage")
                                .or_else(|| d.pointer("/message/usage"))
                                .or_else(|| d.pointer("/response/usage"))
                                .or_else(|| d.pointer("/usageMetadata"))
                                .filter(|u| u.is_object())
                        })
                        .unwrap_or_else(|| panic!("{kind:?} {stream}: no usage"));
                    let names = positions
                        .iter()
                        .find(|(k, _)| {
                            matches!((k, kind), (Kind::Gemini { .. }, Kind::Gemini { .. }))
                                || *k == kind
                        })
                        .unwrap()
                        .1;
                    for (name, want) in names.iter().zip([&va, &vb, &vc]) {
                        if kind == Kind::Messages && stream && *name == "input_tokens" {
                            // message_delta carries only the output; the input is in message_start.
                            let start = &docs[0]["message"]["usage"];
                            assert_eq!(&start["input_tokens"], want, "{kind:?} message_start");
                            continue;
                        }
                        assert_eq!(
                            &usage[*name], want,
                            "{kind:?} stream={stream} {name}: {usage}"
                        );
                    }
                    if kind == Kind::Messages {
                        let want = if stream { Value::Null } else { vc.clone() };
                        assert_eq!(usage["cache_read_input_tokens"], want);
                    }
                    let text = String::from_utf8(body).unwrap();
                    assert!(
                        text.contains(&format!(":{b}")),
                        "{kind:?}: {b} is written verbatim"
                    );
                }
            }
        }
    }

    #[test]
    fn usage_raw_writes_even_invalid_json_verbatim() {
        let mut r = req(2, U, false);
        r.raw = raw("1e", "NaN", "0x10");
        let body = json_body(Kind::Chat, &r);
        assert!(
            body.contains("\"prompt_tokens\":1e,\"completion_tokens\":NaN"),
            "{body}"
        );
        assert!(serde_json::from_str::<Value>(&body).is_err());
    }

    #[test]
    fn embeddings_encode_base64_as_little_endian_floats() {
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_encode(b"M"), "TQ==");
        let v: Value = serde_json::from_str(&embeddings_body(&req(0, U, false), 3, true)).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 3);
        assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44);
        assert_eq!(v["usage"]["prompt_tokens"], 130);
    }
}
