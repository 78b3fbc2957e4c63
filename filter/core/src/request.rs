//! Reads an LLM request body window by window, with no tree and bounded memory: checks it is
//! strict JSON, picks out what tollgate needs (model, max tokens, stream, the conversation
//! fingerprint, how to add `stream_options.include_usage`) and feeds every text to the estimator.
//!
//! Media are counted without keeping them: base64 images are decoded only far enough to read
//! their size from the header (PNG, GIF, WebP, JPEG up to its SOF marker), then priced by the
//! provider's formula. Other payloads count by size; see [`media_tokens`] for the rules.

use core::fmt;

use crate::api::{Api, MODEL_CAP};
use crate::estimate::Estimator;
use crate::json::{Container, JsonError, Path, Scalar, Scanner, Sink};
use crate::provider::Endpoint;

/// Tokens added per message (role and separators), as the providers' chat templates do.
const MESSAGE_OVERHEAD: u64 = 4;
/// Tokens added once per chat-style request (the reply's priming).
const REQUEST_OVERHEAD: u64 = 3;
/// An image whose size is unknown (URL, unreadable header): about the most one image costs.
const IMAGE_ALLOWANCE: u64 = 1600;
/// OpenAI `detail: low` images cost this whatever their size.
const OPENAI_LOW_DETAIL: u64 = 85;
/// Decoded bytes read to find an image's size; beyond this the header is given up.
const SNIFF_LIMIT: usize = 256 * 1024;
/// Bytes of each media payload that go into the conversation fingerprint.
const MEDIA_HASH_BYTES: usize = 1024;
/// Bytes of each text that go into the conversation fingerprint (with the text's length):
/// enough to tell conversations apart without hashing a pasted 256 KB document whole.
const TEXT_HASH_BYTES: usize = 4096;

/// What tollgate needs from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// Body `model` (Gemini: from the endpoint's path). Required for Anthropic; OpenAI-style
    /// endpoints may omit it (vLLM then uses its one served model).
    pub model: Option<String>,
    /// `max_tokens` | `max_completion_tokens` (chat, preferred) | `max_output_tokens`
    /// (responses) | `generationConfig.maxOutputTokens` (Gemini).
    pub max_tokens: Option<u64>,
    /// `stream: true`; Gemini: the endpoint says so.
    pub stream: bool,
    /// `stream_options.include_usage == true`.
    pub include_usage: bool,
    /// Estimated input tokens.
    pub input_estimate: u64,
    /// Stable hash of the model, the system prompt and the messages up to and including the
    /// first user message; `None` without a user message (and for embeddings).
    pub fingerprint: Option<u64>,
    /// Chat/completions with `stream: true` and no `include_usage: true`: how to add it.
    pub usage_splice: Option<Splice>,
}

/// Replace `body[offset..offset + remove]` with `insert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splice {
    pub offset: usize,
    pub remove: usize,
    pub insert: &'static str,
}

impl Splice {
    /// The spliced body, or `None` if the splice does not fit `body`.
    pub fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let head = body.get(..self.offset)?;
        let tail = body.get(self.offset.checked_add(self.remove)?..)?;
        let mut out = Vec::with_capacity(head.len() + self.insert.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(self.insert.as_bytes());
        out.extend_from_slice(tail);
        Some(out)
    }

    /// How much the body grows.
    pub fn growth(&self) -> isize {
        self.insert.len() as isize - self.remove as isize
    }
}

/// Why a body is refused (400, in the API's error format). `Display` is the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    Json(JsonError),
    NotObject,
    /// The named field is missing.
    Missing(&'static str),
    /// The named field is not a string.
    NotString(&'static str),
    /// The named field is not a non-negative integer.
    NotCount(&'static str),
    /// The named field is not a boolean.
    NotBool(&'static str),
    /// The named field is too long.
    TooLong(&'static str),
    /// A policy-relevant key is repeated in one object: tollgate and the upstream could read
    /// different values (first-wins against last-wins).
    Duplicate(&'static str),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Json(e) => write!(f, "request body is not valid JSON: {e}"),
            RequestError::NotObject => f.write_str("request body must be a JSON object"),
            RequestError::Missing(k) => write!(f, "{k} is required"),
            RequestError::NotString(k) => write!(f, "{k} must be a string"),
            RequestError::NotCount(k) => write!(f, "{k} must be a non-negative integer"),
            RequestError::NotBool(k) => write!(f, "{k} must be a boolean"),
            RequestError::TooLong(k) => write!(f, "{k} is too long"),
            RequestError::Duplicate(k) => write!(f, "duplicate key \"{k}\""),
        }
    }
}

impl std::error::Error for RequestError {}

/// Where a text belongs, for the fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    System,
    Message,
    Other,
}

/// What the string being read is. `part` is the path length of the content part holding a
/// medium: the medium is priced when that part closes (its `detail` may come after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Ignore,
    Model,
    Text(Dest),
    Media {
        part: usize,
    },
    Url {
        part: usize,
    },
    Detail {
        part: usize,
    },
    /// A message's `role`.
    Speaker,
}

/// Top-level fields whose type tollgate checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Model,
    MaxTokens(&'static str),
    Stream,
    StreamOptions,
    IncludeUsage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamOptions {
    Absent,
    Object { open: usize, empty: bool },
    Null(usize),
    Other,
}

/// A medium read, waiting for its part to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    part: usize,
    media: Media,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Image(Option<(u32, u32)>),
    Pdf(u64),
    TextData(u64),
    Binary(u64),
    Url,
}

/// Reads a request body. See the module docs.
pub struct RequestScanner {
    json: Scanner,
    c: Collector,
}

impl RequestScanner {
    /// `path_model`: the model the path names (Gemini), else `None`.
    pub fn new(endpoint: Endpoint, path_model: Option<String>) -> Self {
        let api = endpoint.api();
        let stream = endpoint == Endpoint::StreamGenerateContent;
        RequestScanner {
            json: Scanner::new(),
            c: Collector {
                endpoint,
                api,
                est: Estimator::new(api),
                err: None,
                cur: Role::Ignore,
                model: path_model,
                max_tokens: None,
                max_completion: None,
                stream,
                include_usage: false,
                usage_literal: None,
                usage_other: false,
                stream_options: StreamOptions::Absent,
                root_keys: 0,
                policy_keys: 0,
                root_open: None,
                root_close: None,
                in_message: false,
                role: Small::default(),
                fingerprint: true,
                msg_hash: Fp::new(),
                sys_hash: Fp::new(),
                text_hashed: 0,
                prefix: Fp::new(),
                first_user: None,
                media: MediaReader::new(),
                pending: None,
                detail: None,
                small: Small::default(),
            },
        }
    }

    /// Skips the conversation fingerprint (`RequestInfo::fingerprint` is then `None`): for a
    /// filter with no affinity and no upstream stage that would use it.
    pub fn without_fingerprint(mut self) -> Self {
        self.c.fingerprint = false;
        self
    }

    /// Reads the next window of the body.
    #[inline(never)]
    pub fn feed(&mut self, window: &[u8]) -> Result<(), RequestError> {
        if let Some(e) = self.c.err {
            return Err(e);
        }
        self.json
            .feed(window, &mut self.c)
            .map_err(RequestError::Json)?;
        match self.c.err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The body is complete.
    #[inline(never)]
    pub fn finish(mut self) -> Result<RequestInfo, RequestError> {
        if let Some(e) = self.c.err {
            return Err(e);
        }
        self.json.finish(&mut self.c).map_err(RequestError::Json)?;
        self.c.finish()
    }
}

/// A short string captured from pieces (role names, `detail`); longer ones only say so.
#[derive(Debug, Clone, Copy, Default)]
struct Small {
    buf: [u8; 16],
    len: usize,
    long: bool,
}

impl Small {
    fn clear(&mut self) {
        self.len = 0;
        self.long = false;
    }

    fn push(&mut self, s: &str) {
        match self.buf.get_mut(self.len..self.len + s.len()) {
            Some(dst) if !self.long => {
                dst.copy_from_slice(s.as_bytes());
                self.len += s.len();
            }
            _ => self.long = true,
        }
    }

    fn get(&self) -> &[u8] {
        if self.long {
            b"\xff"
        } else {
            self.buf.get(..self.len).unwrap_or_default()
        }
    }
}

struct Collector {
    endpoint: Endpoint,
    api: Api,
    est: Estimator,
    err: Option<RequestError>,
    cur: Role,
    model: Option<String>,
    max_tokens: Option<u64>,
    max_completion: Option<u64>,
    stream: bool,
    include_usage: bool,
    /// `include_usage: false` or `null`: offset and length of the literal.
    usage_literal: Option<(usize, usize)>,
    usage_other: bool,
    stream_options: StreamOptions,
    /// Policy keys seen in the root object and in the policy object open in it
    /// (`stream_options`, Gemini `generationConfig`): bits of [`policy_key`].
    root_keys: u16,
    policy_keys: u16,
    /// Offsets of the root object's `{` and `}`.
    root_open: Option<usize>,
    root_close: Option<usize>,
    in_message: bool,
    role: Small,
    /// Whether the fingerprint is computed at all.
    fingerprint: bool,
    msg_hash: Fp,
    sys_hash: Fp,
    /// Bytes of the current text hashed so far (at most `TEXT_HASH_BYTES`).
    text_hashed: usize,
    /// The messages before and including the first user message.
    prefix: Fp,
    first_user: Option<u64>,
    media: MediaReader,
    pending: Option<Pending>,
    /// `detail` of an image part: (part, is low).
    detail: Option<(usize, bool)>,
    small: Small,
}

impl Collector {
    fn fail(&mut self, e: RequestError) {
        if self.err.is_none() {
            self.err = Some(e);
        }
    }

    /// The message array of this API (`messages`, `contents`, `input`).
    fn messages_key(&self) -> &'static [u8] {
        match self.endpoint {
            Endpoint::Messages | Endpoint::ChatCompletions => b"messages",
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => b"contents",
            Endpoint::Responses => b"input",
            Endpoint::Completions | Endpoint::Embeddings => b"",
        }
    }

    fn is_message(&self, p: &Path) -> bool {
        p.len() == 2 && p.index(1).is_some() && p.is_key(0, self.messages_key())
    }

    fn field(&self, p: &Path) -> Field {
        let Some(k0) = p.key(0) else {
            return Field::None;
        };
        match (p.len(), self.endpoint, k0) {
            (2, Endpoint::GenerateContent | Endpoint::StreamGenerateContent, _) => {
                match (k0, p.key(1)) {
                    (
                        b"generationConfig" | b"generation_config",
                        Some(b"maxOutputTokens" | b"max_output_tokens"),
                    ) => Field::MaxTokens("generationConfig.maxOutputTokens"),
                    _ => Field::None,
                }
            }
            (_, Endpoint::GenerateContent | Endpoint::StreamGenerateContent, _) => Field::None,
            (1, _, b"model") => Field::Model,
            (
                1,
                Endpoint::Messages | Endpoint::ChatCompletions | Endpoint::Completions,
                b"max_tokens",
            ) => Field::MaxTokens("max_tokens"),
            (1, Endpoint::ChatCompletions, b"max_completion_tokens") => {
                Field::MaxTokens("max_completion_tokens")
            }
            (1, Endpoint::Responses, b"max_output_tokens") => Field::MaxTokens("max_output_tokens"),
            (1, _, b"stream") => Field::Stream,
            (1, Endpoint::ChatCompletions | Endpoint::Completions, b"stream_options") => {
                Field::StreamOptions
            }
            (2, Endpoint::ChatCompletions | Endpoint::Completions, b"stream_options")
                if p.is_key(1, b"include_usage") =>
            {
                Field::IncludeUsage
            }
            _ => Field::None,
        }
    }

    /// Where a subtree whose keys and values all count starts (tool definitions, tool-call
    /// inputs), with the destination of its text.
    fn raw_start(&self, p: &Path) -> Option<(usize, Dest)> {
        let k0 = p.key(0)?;
        match (self.endpoint, k0) {
            (Endpoint::Completions | Endpoint::Embeddings, _) => None,
            (_, b"tools" | b"functions" | b"response_format") => Some((0, Dest::Other)),
            (Endpoint::Responses, b"text") => Some((0, Dest::Other)),
            (Endpoint::Messages, b"messages")
                if p.index(1).is_some()
                    && p.is_key(2, b"content")
                    && p.index(3).is_some()
                    && p.is_key(4, b"input") =>
            {
                Some((4, Dest::Message))
            }
            (_, b"contents")
                if self.api == Api::Gemini
                    && p.index(1).is_some()
                    && p.is_key(2, b"parts")
                    && p.index(3).is_some()
                    && matches!(
                        p.key(4),
                        Some(
                            b"functionCall"
                                | b"function_call"
                                | b"functionResponse"
                                | b"function_response"
                        )
                    ) =>
            {
                Some((4, Dest::Message))
            }
            _ => None,
        }
    }

    /// What a string value at `p` is.
    fn classify(&self, p: &Path) -> Role {
        let n = p.len();
        let Some(k0) = p.key(0) else {
            return Role::Ignore;
        };
        if let Some((_, d)) = self.raw_start(p) {
            return Role::Text(d);
        }
        match self.endpoint {
            Endpoint::Messages => match k0 {
                b"model" if n == 1 => Role::Model,
                b"system" if n == 1 || (n == 3 && p.index(1).is_some() && p.is_key(2, b"text")) => {
                    Role::Text(Dest::System)
                }
                b"messages" => message(p, 2),
                _ => Role::Ignore,
            },
            Endpoint::ChatCompletions => match k0 {
                b"model" if n == 1 => Role::Model,
                b"messages" => message(p, 2),
                _ => Role::Ignore,
            },
            Endpoint::Completions => match k0 {
                b"model" if n == 1 => Role::Model,
                b"prompt" if n == 1 || (n == 2 && p.index(1).is_some()) => {
                    Role::Text(Dest::Message)
                }
                b"suffix" if n == 1 => Role::Text(Dest::Other),
                _ => Role::Ignore,
            },
            Endpoint::Embeddings => match k0 {
                b"model" if n == 1 => Role::Model,
                b"input" if n == 1 || (n == 2 && p.index(1).is_some()) => Role::Text(Dest::Other),
                _ => Role::Ignore,
            },
            Endpoint::Responses => match k0 {
                b"model" if n == 1 => Role::Model,
                b"instructions" if n == 1 => Role::Text(Dest::System),
                b"input" if n == 1 => Role::Text(Dest::Message),
                b"input" => message(p, 2),
                _ => Role::Ignore,
            },
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => match k0 {
                b"contents" => message(p, 2),
                b"systemInstruction" | b"system_instruction"
                    if n == 1
                        || (n == 4
                            && p.is_key(1, b"parts")
                            && p.index(2).is_some()
                            && p.is_key(3, b"text")) =>
                {
                    Role::Text(Dest::System)
                }
                _ => Role::Ignore,
            },
        }
    }

    /// A message ended: fold it into the fingerprint's prefix until the first user message.
    fn close_message(&mut self, user: bool) {
        if self.first_user.is_none() {
            self.prefix.write(self.role.get());
            self.prefix.write_u64(self.msg_hash.finish());
            if user {
                self.first_user = Some(self.prefix.finish());
            }
        }
        self.msg_hash = Fp::new();
        self.role.clear();
    }

    fn hash_text(&mut self, d: Dest, s: &str) {
        if !self.fingerprint {
            return;
        }
        let take = s.len().min(TEXT_HASH_BYTES - self.text_hashed);
        if take == 0 {
            return;
        }
        let head = s.as_bytes().get(..take).unwrap_or_default();
        self.text_hashed += take;
        match d {
            Dest::System => self.sys_hash.write(head),
            Dest::Message if self.first_user.is_none() => self.msg_hash.write(head),
            _ => {}
        }
    }

    fn settle_media(&mut self) {
        if let Some(p) = self.pending.take() {
            let low = self.detail.is_some_and(|(part, low)| part == p.part && low);
            self.est.add_tokens(media_tokens(self.api, p.media, low));
        }
    }

    /// A key of the root object or of a policy object in it has been read: a policy key
    /// seen twice in one object is refused. Deeper objects (tool schemas, metadata) hold
    /// nothing tollgate meters by, so their keys are the upstream's business.
    fn note_key(&mut self, p: &Path) {
        let seen = match (p.len(), p.key(0)) {
            (1, _) => self.root_keys,
            (2, Some(k)) if policy_key(self.api, k).is_some_and(|(_, _, obj)| obj) => {
                self.policy_keys
            }
            _ => return,
        };
        let Some((bit, name, _)) = p.key(p.len() - 1).and_then(|k| policy_key(self.api, k)) else {
            return;
        };
        if seen & bit != 0 {
            self.fail(RequestError::Duplicate(name));
        } else if p.len() == 1 {
            self.root_keys |= bit;
        } else {
            self.policy_keys |= bit;
        }
    }

    fn type_error(&mut self, f: Field) {
        match f {
            Field::None => {}
            Field::Model => self.fail(RequestError::NotString("model")),
            Field::MaxTokens(k) => self.fail(RequestError::NotCount(k)),
            Field::Stream => self.fail(RequestError::NotBool("stream")),
            Field::StreamOptions => self.stream_options = StreamOptions::Other,
            Field::IncludeUsage => self.usage_other = true,
        }
    }

    fn finish(mut self) -> Result<RequestInfo, RequestError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        self.settle_media();
        if self.model.is_none() && self.endpoint == Endpoint::Messages {
            return Err(RequestError::Missing("model"));
        }
        if matches!(
            self.endpoint,
            Endpoint::Messages
                | Endpoint::ChatCompletions
                | Endpoint::Responses
                | Endpoint::GenerateContent
                | Endpoint::StreamGenerateContent
        ) {
            self.est.add_tokens(REQUEST_OVERHEAD);
        }
        let fingerprint = self.first_user.filter(|_| self.fingerprint).map(|h| {
            let mut f = Fp::new();
            f.write(self.model.as_deref().unwrap_or_default().as_bytes());
            f.write_u64(self.sys_hash.finish());
            f.write_u64(h);
            f.finish()
        });
        let usage_splice = if matches!(
            self.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        ) && self.stream
            && !self.include_usage
        {
            self.splice()
        } else {
            None
        };
        Ok(RequestInfo {
            model: self.model,
            max_tokens: self.max_completion.or(self.max_tokens),
            stream: self.stream,
            include_usage: self.include_usage,
            input_estimate: self.est.tokens(),
            fingerprint,
            usage_splice,
        })
    }

    fn splice(&self) -> Option<Splice> {
        if self.usage_other {
            return None;
        }
        if let Some((offset, remove)) = self.usage_literal {
            return Some(Splice {
                offset,
                remove,
                insert: "true",
            });
        }
        match self.stream_options {
            StreamOptions::Object { open, empty } => Some(Splice {
                offset: open + 1,
                remove: 0,
                insert: if empty {
                    "\"include_usage\":true"
                } else {
                    "\"include_usage\":true,"
                },
            }),
            StreamOptions::Null(at) => Some(Splice {
                offset: at,
                remove: 4,
                insert: "{\"include_usage\":true}",
            }),
            StreamOptions::Other => None,
            // Right after the root `{`: Envoy can only replace a body's head (drain, then
            // prepend), so a splice near the start costs the host almost no copying. A
            // streaming request has `stream`, so the root is never empty here.
            StreamOptions::Absent => self.root_close.and(self.root_open).map(|open| Splice {
                offset: open + 1,
                remove: 0,
                insert: "\"stream_options\":{\"include_usage\":true},",
            }),
        }
    }
}

/// A key whose value tollgate meters or limits by, or the upstream bills by: its bit, the
/// name to report, and whether its value is an object holding more of them. Repeated in one
/// object, tollgate (first-wins or last-wins) and the upstream (either) could read different
/// values. Gemini's JSON mapping accepts both spellings of a field, so they share a bit.
fn policy_key(api: Api, k: &[u8]) -> Option<(u16, &'static str, bool)> {
    let (bit, name, obj) = match k {
        b"model" => (0, "model", false),
        b"stream" => (1, "stream", false),
        b"stream_options" => (2, "stream_options", true),
        b"include_usage" => (3, "include_usage", false),
        b"max_tokens" => (4, "max_tokens", false),
        b"max_completion_tokens" => (5, "max_completion_tokens", false),
        b"max_output_tokens" => (6, "max_output_tokens", false),
        b"n" => (7, "n", false),
        _ if api != Api::Gemini => return None,
        b"maxOutputTokens" => (6, "maxOutputTokens", false),
        b"candidateCount" => (8, "candidateCount", false),
        b"candidate_count" => (8, "candidate_count", false),
        b"generationConfig" => (9, "generationConfig", true),
        b"generation_config" => (9, "generation_config", true),
        _ => return None,
    };
    Some((1 << bit, name, obj))
}

/// A string inside a message object; `s` indexes the step after the message's index.
fn message(p: &Path, s: usize) -> Role {
    let n = p.len();
    if p.index(s - 1).is_none() {
        return Role::Ignore;
    }
    let Some(k) = p.key(s) else {
        return Role::Ignore;
    };
    if n == s + 1 {
        return match k {
            b"role" => Role::Speaker,
            b"content" | b"name" | b"arguments" | b"output" => Role::Text(Dest::Message),
            _ => Role::Ignore,
        };
    }
    match k {
        b"content" | b"output" => part(p, s + 1),
        b"parts" => gemini_part(p, s + 1),
        b"tool_calls"
            if n == s + 4
                && p.index(s + 1).is_some()
                && p.is_key(s + 2, b"function")
                && matches!(p.key(s + 3), Some(b"name" | b"arguments")) =>
        {
            Role::Text(Dest::Message)
        }
        b"function_call" if n == s + 2 && matches!(p.key(s + 1), Some(b"name" | b"arguments")) => {
            Role::Text(Dest::Message)
        }
        b"summary" if n == s + 3 && p.index(s + 1).is_some() && p.is_key(s + 2, b"text") => {
            Role::Text(Dest::Message)
        }
        _ => Role::Ignore,
    }
}

/// A string inside a content part; `s` indexes the part's index. Tool results and documents
/// nest parts in parts, so this walks down rather than recursing.
fn part(p: &Path, mut s: usize) -> Role {
    let n = p.len();
    loop {
        if p.index(s).is_none() {
            return Role::Ignore;
        }
        let part = s + 1;
        let Some(k) = p.key(s + 1) else {
            return Role::Ignore;
        };
        if n == s + 2 {
            return match k {
                b"text" | b"thinking" | b"content" | b"title" | b"context" => {
                    Role::Text(Dest::Message)
                }
                // Uploaded files are priced like a URL: their size is not in the body.
                b"image_url" | b"file_data" | b"file_id" => Role::Url { part },
                b"detail" => Role::Detail { part },
                _ => Role::Ignore,
            };
        }
        let k2 = p.key(s + 2);
        return match (k, k2) {
            (b"content", _) => {
                s += 2;
                continue;
            }
            (b"source", Some(b"content")) => {
                s += 3;
                continue;
            }
            (b"source", Some(b"data")) | (b"input_audio", Some(b"data")) if n == s + 3 => {
                Role::Media { part }
            }
            (b"source", Some(b"url" | b"file_id"))
            | (b"image_url", Some(b"url"))
            | (b"file", Some(b"file_data" | b"file_id"))
                if n == s + 3 =>
            {
                Role::Url { part }
            }
            (b"image_url", Some(b"detail")) if n == s + 3 => Role::Detail { part },
            _ => Role::Ignore,
        };
    }
}

/// A string inside a Gemini part; `s` indexes the part's index.
fn gemini_part(p: &Path, s: usize) -> Role {
    let n = p.len();
    if p.index(s).is_none() {
        return Role::Ignore;
    }
    let part = s + 1;
    match (p.key(s + 1), p.key(s + 2)) {
        (Some(b"text"), _) if n == s + 2 => Role::Text(Dest::Message),
        (Some(b"inlineData" | b"inline_data"), Some(b"data")) if n == s + 3 => Role::Media { part },
        (Some(b"fileData" | b"file_data"), Some(b"fileUri" | b"file_uri")) if n == s + 3 => {
            Role::Url { part }
        }
        _ => Role::Ignore,
    }
}

impl Sink for Collector {
    fn begin(&mut self, p: &Path, kind: Container, offset: usize) {
        if p.is_empty() {
            if kind != Container::Object {
                self.fail(RequestError::NotObject);
            }
            self.root_open = Some(offset);
            return;
        }
        if kind == Container::Object && p.len() == 1 {
            self.policy_keys = 0;
        }
        match (self.field(p), kind) {
            (Field::StreamOptions, Container::Object) => {
                self.stream_options = StreamOptions::Object {
                    open: offset,
                    empty: true,
                }
            }
            (f, _) => self.type_error(f),
        }
        if kind == Container::Object && self.is_message(p) {
            self.in_message = true;
            self.msg_hash = Fp::new();
            self.role.clear();
        }
    }

    fn end(&mut self, p: &Path, kind: Container, offset: usize) {
        let n = p.len();
        if n == 0 {
            self.root_close = Some(offset);
            return;
        }
        if kind == Container::Object {
            if self.pending.is_some_and(|m| m.part == n) {
                self.settle_media();
            }
            if self.detail.is_some_and(|(part, _)| part == n) {
                self.detail = None;
            }
            if self.in_message && self.is_message(p) {
                self.in_message = false;
                self.est.add_tokens(MESSAGE_OVERHEAD);
                let user = match self.role.get() {
                    b"user" => true,
                    b"" => self.api == Api::Gemini,
                    _ => false,
                };
                self.close_message(user);
            }
        } else if n == 1 && self.endpoint == Endpoint::Completions && p.is_key(0, b"prompt") {
            self.role.clear();
            self.close_message(true);
        }
    }

    fn str_begin(&mut self, p: &Path, key: bool) {
        let n = p.len();
        if key {
            if n == 2 && p.is_key(0, b"stream_options") {
                if let StreamOptions::Object { empty, .. } = &mut self.stream_options {
                    *empty = false;
                }
            }
            // Keys count inside raw subtrees only (not the key that names the subtree).
            self.cur = match self.raw_start(p) {
                Some((start, d)) if start + 1 < n => Role::Text(d),
                _ => Role::Ignore,
            };
            return;
        }
        if n == 0 {
            self.fail(RequestError::NotObject);
            return;
        }
        match self.field(p) {
            Field::Model | Field::None => {}
            f => self.type_error(f),
        }
        self.cur = self.classify(p);
        match self.cur {
            Role::Model => self.small.clear(),
            Role::Speaker => self.role.clear(),
            Role::Detail { .. } => self.small.clear(),
            Role::Media { .. } => {
                self.settle_media();
                self.media.start(false);
            }
            Role::Url { .. } => {
                self.settle_media();
                self.media.start(true);
            }
            Role::Ignore | Role::Text(_) => {}
        }
        if self.cur == Role::Model {
            self.model = Some(String::new());
        }
    }

    fn str_piece(&mut self, piece: &str) {
        match self.cur {
            Role::Ignore => {}
            Role::Text(d) => {
                self.est.push_str(piece);
                self.hash_text(d, piece);
            }
            Role::Model => {
                if let Some(m) = &mut self.model {
                    if m.len() + piece.len() > MODEL_CAP {
                        self.fail(RequestError::TooLong("model"));
                    } else {
                        m.push_str(piece);
                    }
                }
            }
            Role::Speaker => self.role.push(piece),
            Role::Detail { .. } => self.small.push(piece),
            Role::Media { .. } | Role::Url { .. } => {
                if self.fingerprint
                    && self.first_user.is_none()
                    && self.in_message
                    && self.media.hashed < MEDIA_HASH_BYTES
                {
                    let take = piece.len().min(MEDIA_HASH_BYTES - self.media.hashed);
                    self.msg_hash
                        .write(piece.as_bytes().get(..take).unwrap_or_default());
                    self.media.hashed += take;
                }
                self.media.push(piece, &mut self.est);
            }
        }
    }

    fn skippable(&self) -> usize {
        match self.cur {
            Role::Ignore => usize::MAX,
            Role::Text(_) if !self.fingerprint || self.text_hashed >= TEXT_HASH_BYTES => {
                self.est.skippable()
            }
            _ => 0,
        }
    }

    fn str_skip(&mut self, n: usize) {
        if let Role::Text(_) = self.cur {
            self.est.skip(n as u64);
        }
    }

    fn str_end(&mut self, p: &Path, key: bool, len: usize) {
        if key && p.len() <= 2 {
            self.note_key(p);
        }
        let role = core::mem::replace(&mut self.cur, Role::Ignore);
        match role {
            Role::Text(d) => {
                self.est.end_text();
                self.text_hashed = 0;
                match d {
                    Dest::Message if self.first_user.is_none() => {
                        self.msg_hash.write_u64(len as u64)
                    }
                    Dest::System => self.sys_hash.write_u64(len as u64),
                    _ => {}
                }
                // A bare string prompt or input is the whole (user) conversation.
                if !key
                    && p.len() == 1
                    && matches!(
                        (self.endpoint, p.key(0)),
                        (Endpoint::Completions, Some(b"prompt"))
                            | (Endpoint::Responses, Some(b"input"))
                    )
                {
                    self.role.clear();
                    self.close_message(true);
                }
            }
            Role::Media { part } | Role::Url { part } => {
                let media = self.media.finish(&mut self.est);
                if let Some(media) = media {
                    self.pending = Some(Pending { part, media });
                }
            }
            Role::Detail { part } => self.detail = Some((part, self.small.get() == b"low")),
            Role::Ignore | Role::Model | Role::Speaker => {}
        }
    }

    fn scalar(&mut self, p: &Path, value: Scalar, offset: usize) {
        let n = p.len();
        if n == 0 {
            self.fail(RequestError::NotObject);
            return;
        }
        if self.raw_start(p).is_some() {
            self.est.add_tokens(1);
            return;
        }
        match (self.field(p), value) {
            (Field::None, Scalar::Number(_)) => {
                // Token-id prompts: one token per id.
                let ids = match self.endpoint {
                    Endpoint::Completions => p.is_key(0, b"prompt"),
                    Endpoint::Embeddings => p.is_key(0, b"input"),
                    _ => false,
                };
                if let (true, Scalar::Number(num)) = (ids, value) {
                    self.est.add_tokens(1);
                    if self.first_user.is_none() {
                        self.msg_hash.write_u64(num.as_u64().unwrap_or(u64::MAX));
                    }
                }
            }
            (Field::None, _) => {}
            (Field::MaxTokens(_), Scalar::Null) => {}
            (Field::MaxTokens(k), Scalar::Number(num)) => match num.as_u64() {
                Some(v) if k == "max_completion_tokens" => self.max_completion = Some(v),
                Some(v) => self.max_tokens = Some(v),
                None => self.fail(RequestError::NotCount(k)),
            },
            (Field::Stream, Scalar::Bool(b)) => self.stream = b,
            (Field::Stream, Scalar::Null) => self.stream = false,
            (Field::StreamOptions, Scalar::Null) => {
                self.stream_options = StreamOptions::Null(offset)
            }
            (Field::IncludeUsage, Scalar::Bool(true)) => self.include_usage = true,
            (Field::IncludeUsage, Scalar::Bool(false)) => self.usage_literal = Some((offset, 5)),
            (Field::IncludeUsage, Scalar::Null) => self.usage_literal = Some((offset, 4)),
            (f, _) => self.type_error(f),
        }
    }
}

/// Tokens for one medium. Images with a known size use the provider's formula:
/// Anthropic `w·h/750` after fitting the long edge to 1568 px, at most 1600; OpenAI tiles
/// (85 + 170 per 512 px tile after fitting 2048² then the short side to 768; `low` = 85);
/// Gemini 258 up to 384×384, else 258 per 768 px tile. Unknown sizes and URLs get
/// [`IMAGE_ALLOWANCE`]. By decoded size: PDFs `bytes/16` within 1500..=200000 (a page is
/// ~1500–3000 tokens and PDFs run ~3–50 KB a page); text `bytes/4`; other binaries (audio,
/// video) `bytes/500`, at least 100 (Gemini's 32 tokens a second of 128 kbit/s audio).
fn media_tokens(api: Api, media: Media, low_detail: bool) -> u64 {
    let openai_low = api == Api::OpenAi && low_detail;
    match media {
        Media::Image(_) | Media::Url if openai_low => OPENAI_LOW_DETAIL,
        Media::Image(Some((w, h))) if w > 0 && h > 0 => {
            image_tokens(api, u64::from(w), u64::from(h))
        }
        Media::Image(_) | Media::Url => IMAGE_ALLOWANCE,
        Media::Pdf(bytes) => (bytes / 16).clamp(1500, 200_000),
        Media::TextData(bytes) => bytes / 4,
        Media::Binary(bytes) => (bytes / 500).max(100),
    }
}

fn image_tokens(api: Api, w: u64, h: u64) -> u64 {
    match api {
        Api::Anthropic => {
            let (w, h) = fit(w, h, 1568);
            (w * h).div_ceil(750).clamp(1, IMAGE_ALLOWANCE)
        }
        Api::OpenAi => {
            let (w, h) = fit(w, h, 2048);
            let short = w.min(h);
            let (w, h) = if short > 768 {
                (w * 768 / short, h * 768 / short)
            } else {
                (w, h)
            };
            85 + 170 * (w.div_ceil(512) * h.div_ceil(512))
        }
        Api::Gemini => {
            if w <= 384 && h <= 384 {
                258
            } else {
                258 * (w.div_ceil(768) * h.div_ceil(768))
            }
        }
    }
}

/// Scales `(w, h)` down so that the long edge is at most `edge`.
fn fit(w: u64, h: u64, edge: u64) -> (u64, u64) {
    let long = w.max(h);
    if long <= edge {
        (w, h)
    } else {
        ((w * edge / long).max(1), (h * edge / long).max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaMode {
    /// Reading a URL's first bytes to see whether it is a base64 `data:` URL.
    Prefix,
    /// A plain URL: the rest is ignored.
    Url,
    Base64,
    /// Turned out not to be base64 (Anthropic plain-text documents): counted as text.
    Text,
}

/// Reads one base64 payload (or URL) as it streams: counts its size, decodes only the first
/// bytes into the header sniffer.
struct MediaReader {
    mode: MediaMode,
    prefix: [u8; 128],
    prefix_len: usize,
    chars: u64,
    pad: u64,
    acc: u32,
    bits: u32,
    sniff: Sniff,
    hashed: usize,
}

impl MediaReader {
    fn new() -> Self {
        MediaReader {
            mode: MediaMode::Base64,
            prefix: [0; 128],
            prefix_len: 0,
            chars: 0,
            pad: 0,
            acc: 0,
            bits: 0,
            sniff: Sniff::new(),
            hashed: 0,
        }
    }

    fn start(&mut self, url: bool) {
        *self = MediaReader::new();
        if url {
            self.mode = MediaMode::Prefix;
        }
    }

    fn push(&mut self, piece: &str, est: &mut Estimator) {
        match self.mode {
            MediaMode::Url => {}
            MediaMode::Text => est.push_str(piece),
            MediaMode::Prefix => self.prefix(piece, est),
            MediaMode::Base64 => self.base64(piece, est),
        }
    }

    fn prefix(&mut self, piece: &str, est: &mut Estimator) {
        for (i, &b) in piece.as_bytes().iter().enumerate() {
            let Some(slot) = self.prefix.get_mut(self.prefix_len) else {
                self.mode = MediaMode::Url;
                return;
            };
            *slot = b;
            self.prefix_len += 1;
            let seen = self.prefix.get(..self.prefix_len).unwrap_or_default();
            let head = seen.len().min(5);
            if !seen
                .get(..head)
                .unwrap_or_default()
                .eq_ignore_ascii_case(b"data:".get(..head).unwrap_or_default())
            {
                self.mode = MediaMode::Url;
                return;
            }
            if b == b',' {
                if seen.windows(7).any(|w| w.eq_ignore_ascii_case(b";base64")) {
                    self.mode = MediaMode::Base64;
                    // i is an ASCII comma, so i + 1 is a char boundary.
                    self.base64(piece.get(i + 1..).unwrap_or_default(), est);
                } else {
                    self.mode = MediaMode::Url;
                }
                return;
            }
        }
    }

    fn base64(&mut self, piece: &str, est: &mut Estimator) {
        if self.sniff.done {
            // Past the header: only the size matters.
            let b = piece.as_bytes();
            self.chars += b.len() as u64;
            self.pad += b.iter().rev().take(2).take_while(|&&c| c == b'=').count() as u64;
            return;
        }
        for (i, &c) in piece.as_bytes().iter().enumerate() {
            let v = match (c, crate::codec::base64_sextet(c)) {
                (_, Some(v)) => v,
                (b'=', _) => {
                    self.pad += 1;
                    continue;
                }
                (b'\n' | b'\r', _) => continue,
                _ => {
                    // Not base64: what was read so far was text too. All bytes before i are
                    // ASCII, so i is a char boundary.
                    self.mode = MediaMode::Text;
                    est.add_tokens(self.chars / 4);
                    est.push_str(piece.get(i..).unwrap_or_default());
                    return;
                }
            };
            self.chars += 1;
            self.acc = (self.acc << 6 | u32::from(v)) & 0xFFFF;
            self.bits += 6;
            if self.bits >= 8 {
                self.bits -= 8;
                self.sniff.push((self.acc >> self.bits) as u8);
                if self.sniff.done {
                    let rest = piece.get(i + 1..).unwrap_or_default();
                    self.base64(rest, est);
                    return;
                }
            }
        }
    }

    /// The payload ended: what it was.
    fn finish(&mut self, est: &mut Estimator) -> Option<Media> {
        match self.mode {
            MediaMode::Text => {
                est.end_text();
                None
            }
            MediaMode::Url | MediaMode::Prefix => Some(Media::Url),
            MediaMode::Base64 => {
                let bytes = (self.chars * 3 / 4).saturating_sub(self.pad);
                Some(match self.sniff.kind() {
                    Format::Image(dims) => Media::Image(dims),
                    Format::Pdf => Media::Pdf(bytes),
                    Format::Text => Media::TextData(bytes),
                    Format::Binary => Media::Binary(bytes),
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Image(Option<(u32, u32)>),
    Pdf,
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jpeg {
    Off,
    Marker,
    Code,
    Len1 { sof: bool },
    Len2 { sof: bool, hi: u8 },
    Skip(usize),
    Sof { n: usize },
}

const HEAD: usize = 32;

/// Reads an image's size from its first decoded bytes.
struct Sniff {
    head: [u8; HEAD],
    n: usize,
    jpeg: Jpeg,
    sof: [u8; 5],
    dims: Option<(u32, u32)>,
    done: bool,
}

impl Sniff {
    fn new() -> Self {
        Sniff {
            head: [0; HEAD],
            n: 0,
            jpeg: Jpeg::Off,
            sof: [0; 5],
            dims: None,
            done: false,
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.head.get_mut(self.n) {
            *slot = b;
        }
        self.n += 1;
        if self.n == 3 && self.head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            self.jpeg = Jpeg::Code;
            return;
        }
        if self.jpeg != Jpeg::Off {
            self.jpeg_byte(b);
        } else if self.n == HEAD {
            self.dims = header_dims(&self.head);
            self.done = true;
        }
        if self.n >= SNIFF_LIMIT {
            self.done = true;
        }
    }

    fn jpeg_byte(&mut self, b: u8) {
        self.jpeg = match self.jpeg {
            Jpeg::Off => Jpeg::Off,
            Jpeg::Marker if b == 0xFF => Jpeg::Code,
            Jpeg::Code => match b {
                0xFF => Jpeg::Code,
                0x01 | 0xD0..=0xD8 => Jpeg::Marker,
                0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => Jpeg::Len1 { sof: true },
                0xD9 | 0xDA | 0x00 => Jpeg::Off,
                _ => Jpeg::Len1 { sof: false },
            },
            Jpeg::Len1 { sof } => Jpeg::Len2 { sof, hi: b },
            Jpeg::Len2 { sof, hi } => {
                let len = usize::from(hi) << 8 | usize::from(b);
                match (sof, len) {
                    (_, 0..=1) => Jpeg::Off,
                    (true, _) => Jpeg::Sof { n: 0 },
                    (false, 2) => Jpeg::Marker,
                    (false, _) => Jpeg::Skip(len - 2),
                }
            }
            Jpeg::Skip(1) => Jpeg::Marker,
            Jpeg::Skip(k) => Jpeg::Skip(k - 1),
            Jpeg::Sof { n } => {
                if let Some(slot) = self.sof.get_mut(n) {
                    *slot = b;
                }
                if n + 1 < self.sof.len() {
                    Jpeg::Sof { n: n + 1 }
                } else {
                    // precision, height, width
                    let [_, h1, h0, w1, w0] = self.sof;
                    self.dims = Some((
                        u32::from(w1) << 8 | u32::from(w0),
                        u32::from(h1) << 8 | u32::from(h0),
                    ));
                    Jpeg::Off
                }
            }
            Jpeg::Marker => Jpeg::Off,
        };
        if self.jpeg == Jpeg::Off {
            self.done = true;
        }
    }

    fn kind(&self) -> Format {
        let head = self.head.get(..self.n.min(HEAD)).unwrap_or_default();
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return Format::Image(self.dims);
        }
        if head.starts_with(b"\x89PNG") || head.starts_with(b"GIF8") || webp(head) {
            return Format::Image(header_dims(head));
        }
        if head.starts_with(b"%PDF") {
            return Format::Pdf;
        }
        if !head.is_empty()
            && head
                .iter()
                .all(|&b| b >= 0x20 || matches!(b, b'\n' | b'\r' | b'\t'))
        {
            return Format::Text;
        }
        Format::Binary
    }
}

fn webp(h: &[u8]) -> bool {
    h.starts_with(b"RIFF") && h.get(8..12) == Some(b"WEBP")
}

fn be32(h: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(h.get(at..at + 4)?.try_into().ok()?))
}

fn le16(h: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        h.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le24(h: &[u8], at: usize) -> Option<u32> {
    let b = h.get(at..at + 3)?;
    Some(b.iter().rev().fold(0u32, |acc, &x| acc << 8 | u32::from(x)))
}

/// Width and height from the first bytes of a PNG, GIF or WebP.
fn header_dims(h: &[u8]) -> Option<(u32, u32)> {
    if h.starts_with(b"\x89PNG\r\n\x1a\n") && h.get(12..16) == Some(b"IHDR") {
        return Some((be32(h, 16)?, be32(h, 20)?));
    }
    if h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a") {
        return Some((le16(h, 6)?, le16(h, 8)?));
    }
    if webp(h) {
        return match h.get(12..16)? {
            b"VP8 " => Some((le16(h, 26)? & 0x3FFF, le16(h, 28)? & 0x3FFF)),
            b"VP8L" => {
                let bits = le24(h, 21)? | (u32::from(*h.get(24)?) << 24);
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"VP8X" => Some((le24(h, 24)? + 1, le24(h, 27)? + 1)),
            _ => None,
        };
    }
    None
}

/// A streaming 64-bit hash, stable across windows, runs and builds (the fingerprint must
/// match between workers and restarts): eight bytes at a time, multiply-rotate, then a
/// splitmix finaliser.
#[derive(Debug, Clone, Copy)]
struct Fp {
    h: u64,
    buf: [u8; 8],
    n: usize,
    len: u64,
}

impl Fp {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new() -> Self {
        Fp {
            h: 0x243F_6A88_85A3_08D3,
            buf: [0; 8],
            n: 0,
            len: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::K).rotate_left(31);
    }

    fn write(&mut self, mut b: &[u8]) {
        self.len = self.len.wrapping_add(b.len() as u64);
        while self.n > 0 {
            let Some((&x, rest)) = b.split_first() else {
                return;
            };
            if let Some(slot) = self.buf.get_mut(self.n) {
                *slot = x;
            }
            self.n += 1;
            b = rest;
            if self.n == 8 {
                self.word(u64::from_le_bytes(self.buf));
                self.n = 0;
            }
        }
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            if let Ok(a) = <[u8; 8]>::try_from(c) {
                self.word(u64::from_le_bytes(a));
            }
        }
        for &x in chunks.remainder() {
            if let Some(slot) = self.buf.get_mut(self.n) {
                *slot = x;
            }
            self.n += 1;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        let mut tail = [0u8; 8];
        for (d, s) in tail.iter_mut().zip(self.buf.iter().take(self.n)) {
            *d = *s;
        }
        let mut h = (self.h ^ u64::from_le_bytes(tail)).wrapping_mul(Self::K) ^ self.len;
        h ^= h >> 30;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }
}

#[cfg(test)]
mod tests;
