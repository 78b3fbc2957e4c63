//! What the wire says: minimal borrowed serde structs for each API's usage, errors and
//! text, everything else skipped unparsed.

use std::borrow::Cow;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::*;
use crate::provider::{self, Endpoint, ErrorNames, StreamError};

/// A JSON scalar; arrays and objects are skipped (so a surprising type never fails a parse).
#[derive(Debug, Default)]
pub(super) enum Scalar<'a> {
    #[default]
    Null,
    Num(u64),
    Str(Cow<'a, str>),
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(u64::try_from(v).unwrap_or(0)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // `as` saturates; NaN becomes 0.
        Ok(Scalar::Num(if v > 0.0 { v as u64 } else { 0 }))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Null)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A string field (anything else reads as absent).
#[derive(Debug, Default)]
pub(super) struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(match Scalar::deserialize(d)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }))
    }
}

impl Text<'_> {
    pub(super) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A token count as reported. Null or a missing field is absent; a count that is negative,
/// fractional, above `MAX_COUNT` or not a number is insane (SPEC "Usage numbers are sane").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    #[default]
    Absent,
    Sane(u64),
    Insane,
}

impl Count {
    fn of(n: u64) -> Count {
        if n <= MAX_COUNT {
            Count::Sane(n)
        } else {
            Count::Insane
        }
    }

    fn get(self) -> Option<u64> {
        match self {
            Count::Sane(n) => Some(n),
            Count::Absent | Count::Insane => None,
        }
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a token count")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count::of(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(u64::try_from(v).map_or(Count::Insane, Count::of))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
        // A whole number written as a float (`12.0`, `1e2`) is that number; NaN and the
        // infinities fail both tests.
        Ok(
            if v.fract() == 0.0 && (0.0..=MAX_COUNT as f64).contains(&v) {
                Count::Sane(v as u64)
            } else {
                Count::Insane
            },
        )
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
        Ok(Count::Insane)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
        Ok(Count::Insane)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count::Absent)
    }
    fn visit_none<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count::Absent)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
        d.deserialize_any(CountVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count::Insane)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count::Insane)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

/// A key that names a token count in some API's usage: `*_tokens` (Anthropic, OpenAI,
/// their `*_details`, `cache_creation`), `*TokenCount` and `tokenCount` (Gemini and its
/// per-modality details). Such a value must be a sane count even where nothing reads it.
fn is_count_key(key: &str) -> bool {
    key.ends_with("_tokens") || key.ends_with("TokenCount") || key == "tokenCount"
}

/// Every usage shape at once; `raw` picks the fields of the API at hand.
#[derive(Debug, Default)]
pub(super) struct WireUsage {
    pub(super) input_tokens: Count,
    pub(super) output_tokens: Count,
    pub(super) cache_creation_input_tokens: Count,
    pub(super) cache_read_input_tokens: Count,
    pub(super) prompt_tokens: Count,
    pub(super) completion_tokens: Count,
    /// Inside a `*_details` object.
    pub(super) cached_tokens: Count,
    /// `prompt_tokens_details.cached_tokens` (Chat, Embeddings).
    pub(super) prompt_cached: Count,
    /// `input_tokens_details.cached_tokens` (Responses).
    pub(super) input_cached: Count,
    pub(super) prompt_token_count: Count,
    pub(super) candidates_token_count: Count,
    pub(super) thoughts_token_count: Count,
    pub(super) cached_content_token_count: Count,
    /// Some count in it, read or not, is insane; or the usage is not an object at all.
    pub(super) insane: bool,
}

impl WireUsage {
    /// The field a count key fills, if any.
    fn slot(&mut self, key: &str) -> Option<&mut Count> {
        Some(match key {
            "input_tokens" => &mut self.input_tokens,
            "output_tokens" => &mut self.output_tokens,
            "cache_creation_input_tokens" => &mut self.cache_creation_input_tokens,
            "cache_read_input_tokens" => &mut self.cache_read_input_tokens,
            "prompt_tokens" => &mut self.prompt_tokens,
            "completion_tokens" => &mut self.completion_tokens,
            "cached_tokens" => &mut self.cached_tokens,
            "promptTokenCount" => &mut self.prompt_token_count,
            "candidatesTokenCount" => &mut self.candidates_token_count,
            "thoughtsTokenCount" => &mut self.thoughts_token_count,
            "cachedContentTokenCount" => &mut self.cached_content_token_count,
            _ => return None,
        })
    }

    pub(super) fn raw(&self, endpoint: Endpoint) -> Raw {
        match endpoint {
            Endpoint::Messages => Raw {
                prompt: self.input_tokens.get(),
                cached: self.cache_read_input_tokens.get(),
                cache_write: self.cache_creation_input_tokens.get(),
                output: self.output_tokens.get(),
                thoughts: None,
            },
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => Raw {
                prompt: self.prompt_tokens.get(),
                cached: self.prompt_cached.get(),
                cache_write: None,
                output: self.completion_tokens.get(),
                thoughts: None,
            },
            Endpoint::Responses => Raw {
                prompt: self.input_tokens.get(),
                cached: self.input_cached.get(),
                cache_write: None,
                output: self.output_tokens.get(),
                thoughts: None,
            },
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => Raw {
                prompt: self.prompt_token_count.get(),
                cached: self.cached_content_token_count.get(),
                cache_write: None,
                output: self.candidates_token_count.get(),
                thoughts: self.thoughts_token_count.get(),
            },
        }
    }
}

/// Reads a usage object (`top`) or a value nested in one: every count key in it, at any
/// depth (serde_json bounds the depth), is checked; nested objects and arrays are searched.
#[derive(Clone, Copy)]
struct UsageSeed {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for UsageSeed {
    type Value = WireUsage;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireUsage, D::Error> {
        d.deserialize_any(self)
    }
}

impl UsageSeed {
    /// A scalar: a usage that is one is insane; nested under a key that is not a count,
    /// it is something else (`service_tier`, `modality`, OpenRouter's `cost`).
    fn scalar(self) -> WireUsage {
        WireUsage {
            insane: self.top,
            ..WireUsage::default()
        }
    }
}

impl<'de> Visitor<'de> for UsageSeed {
    type Value = WireUsage;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a usage object")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<WireUsage, E> {
        Ok(self.scalar())
    }
    fn visit_unit<E: de::Error>(self) -> Result<WireUsage, E> {
        Ok(WireUsage::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<WireUsage, E> {
        Ok(WireUsage::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<WireUsage, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireUsage, A::Error> {
        let mut insane = self.top;
        while let Some(u) = seq.next_element_seed(UsageSeed { top: false })? {
            insane |= u.insane;
        }
        Ok(WireUsage {
            insane,
            ..WireUsage::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireUsage, A::Error> {
        let mut u = WireUsage::default();
        while let Some(key) = map.next_key::<Text>()? {
            let key = key.get().unwrap_or_default();
            if let Some(slot) = u.slot(key) {
                *slot = map.next_value()?;
                u.insane |= *slot == Count::Insane;
            } else if is_count_key(key) {
                u.insane |= map.next_value::<Count>()? == Count::Insane;
            } else {
                let inner = map.next_value_seed(UsageSeed { top: false })?;
                u.insane |= inner.insane;
                match key {
                    "prompt_tokens_details" => u.prompt_cached = inner.cached_tokens,
                    "input_tokens_details" => u.input_cached = inner.cached_tokens,
                    _ => {}
                }
            }
        }
        Ok(u)
    }
}

impl<'de> Deserialize<'de> for WireUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UsageSeed { top: true }.deserialize(d)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct WireError<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Text<'a>,
    #[serde(borrow)]
    pub(super) code: Scalar<'a>,
    #[serde(borrow)]
    pub(super) status: Text<'a>,
}

impl WireError<'_> {
    /// Not inlined: six call sites share it.
    #[inline(never)]
    pub(super) fn classify(&self) -> StreamError {
        let (code, code_num) = match &self.code {
            Scalar::Str(s) => (Some(s.as_ref()), 0),
            Scalar::Num(n) => (None, *n),
            Scalar::Null => (None, 0),
        };
        provider::classify_stream_error(&ErrorNames {
            kind: self.kind.get(),
            code,
            code_num,
            status: self.status.get(),
        })
    }
}

/// An Anthropic body or SSE event (`message_start`, `content_block_delta`, `message_delta`,
/// `error`, ...): one struct covers them all.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AnthropicDoc<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Text<'a>,
    #[serde(borrow)]
    pub(super) model: Text<'a>,
    pub(super) usage: Option<WireUsage>,
    #[serde(borrow)]
    pub(super) message: Option<AnthropicMessage<'a>>,
    #[serde(borrow)]
    pub(super) delta: Option<AnthropicText<'a>>,
    #[serde(borrow)]
    pub(super) content: Option<Vec<AnthropicText<'a>>>,
    #[serde(borrow)]
    pub(super) error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AnthropicMessage<'a> {
    #[serde(borrow)]
    pub(super) model: Text<'a>,
    pub(super) usage: Option<WireUsage>,
}

/// A content block or a delta of one.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AnthropicText<'a> {
    #[serde(borrow)]
    pub(super) text: Text<'a>,
    #[serde(borrow)]
    pub(super) thinking: Text<'a>,
    #[serde(borrow)]
    pub(super) partial_json: Text<'a>,
}

/// A Chat Completions / Completions / Embeddings body or chunk.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OpenAiDoc<'a> {
    #[serde(borrow)]
    pub(super) model: Text<'a>,
    #[serde(borrow)]
    pub(super) choices: Option<Vec<OpenAiChoice<'a>>>,
    pub(super) usage: Option<WireUsage>,
    #[serde(borrow)]
    pub(super) error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OpenAiChoice<'a> {
    #[serde(borrow)]
    pub(super) delta: Option<OpenAiMessage<'a>>,
    #[serde(borrow)]
    pub(super) message: Option<OpenAiMessage<'a>>,
    /// `/v1/completions`
    #[serde(borrow)]
    pub(super) text: Text<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OpenAiMessage<'a> {
    #[serde(borrow)]
    pub(super) content: Text<'a>,
    /// vLLM, DeepSeek and others stream reasoning under one of these.
    #[serde(borrow)]
    pub(super) reasoning_content: Text<'a>,
    #[serde(borrow)]
    pub(super) reasoning: Text<'a>,
    #[serde(borrow)]
    pub(super) refusal: Text<'a>,
    #[serde(borrow)]
    pub(super) tool_calls: Option<Vec<OpenAiToolCall<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OpenAiToolCall<'a> {
    #[serde(borrow)]
    pub(super) function: Option<OpenAiFunction<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct OpenAiFunction<'a> {
    #[serde(borrow)]
    pub(super) arguments: Text<'a>,
}

/// A Responses body (the response object itself) or SSE event (which wraps the response
/// object in `response`, or carries a `delta`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ResponsesDoc<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Text<'a>,
    #[serde(borrow)]
    pub(super) delta: Text<'a>,
    #[serde(borrow)]
    pub(super) code: Scalar<'a>,
    #[serde(borrow)]
    pub(super) response: Option<ResponsesObject<'a>>,
    #[serde(borrow)]
    pub(super) model: Text<'a>,
    pub(super) usage: Option<WireUsage>,
    #[serde(borrow)]
    pub(super) error: Option<WireError<'a>>,
    #[serde(borrow)]
    pub(super) output: Option<Vec<ResponsesItem<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ResponsesObject<'a> {
    #[serde(borrow)]
    pub(super) model: Text<'a>,
    pub(super) usage: Option<WireUsage>,
    #[serde(borrow)]
    pub(super) error: Option<WireError<'a>>,
    #[serde(borrow)]
    pub(super) output: Option<Vec<ResponsesItem<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ResponsesItem<'a> {
    #[serde(borrow)]
    pub(super) content: Option<Vec<AnthropicText<'a>>>,
    #[serde(borrow)]
    pub(super) arguments: Text<'a>,
}

/// A Gemini body or stream element.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct GeminiDoc<'a> {
    #[serde(borrow)]
    pub(super) candidates: Option<Vec<GeminiCandidate<'a>>>,
    #[serde(rename = "usageMetadata")]
    pub(super) usage: Option<WireUsage>,
    #[serde(rename = "modelVersion", borrow)]
    pub(super) model: Text<'a>,
    #[serde(borrow)]
    pub(super) error: Option<WireError<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct GeminiCandidate<'a> {
    #[serde(borrow)]
    pub(super) content: Option<GeminiContent<'a>>,
    #[serde(rename = "finishReason", borrow)]
    pub(super) finish_reason: Text<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct GeminiContent<'a> {
    #[serde(borrow)]
    pub(super) parts: Option<Vec<AnthropicText<'a>>>,
}
