//! Whether an upstream error body is the provider saying that the pooled key itself is invalid:
//! the only evidence that disables an account (SPEC "Trust boundaries (v2)"). A 401/403 about
//! the request (organization or project headers, region, model access) says nothing about the
//! key and must not take the account away from every other consumer.
//!
//! Only the providers' structured fields count, never message text: a message may echo what the
//! client sent (a model name, a header), a structured field cannot. A body that is truncated,
//! not JSON, repeats a field, or has another shape is no evidence.

use core::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::api::Api;

/// Why an account was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    /// The provider said the key is invalid (unknown, revoked or expired).
    InvalidKey,
}

impl DisableReason {
    /// The name shown by the usage API (`disabled_reason`) and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::InvalidKey => "invalid_key",
        }
    }

    /// The stored code (never 0).
    pub(crate) fn code(self) -> u8 {
        match self {
            DisableReason::InvalidKey => 1,
        }
    }

    pub(crate) fn from_code(code: u64) -> Option<DisableReason> {
        match code {
            1 => Some(DisableReason::InvalidKey),
            _ => None,
        }
    }
}

/// Reads an upstream error answer of an account of `api` (`body`: at most its first 64 KB,
/// decoded) and says whether the provider refused the key itself:
///
/// - Anthropic: 401 `{"type":"error","error":{"type":"authentication_error",…}}`.
/// - OpenAI: 401 whose `error.code` is `invalid_api_key` (not `mismatched_organization`, an
///   unknown project or a missing scope; no 403 is about the key).
/// - Gemini: 400 `INVALID_ARGUMENT` (also 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`) with
///   a `google.rpc.ErrorInfo` detail whose `reason` is `API_KEY_INVALID` (the key is unknown
///   or expired). "API key not valid" in the message without that reason is not enough. The
///   body may be the object or, from `streamGenerateContent`, an array holding it first.
///
/// One `serde_json` pass over the slice, which never builds a tree (other fields are skipped)
/// and stops at 128 levels of nesting; anything malformed is `None`.
pub fn key_rejection(api: Api, status: u32, body: &[u8]) -> Option<DisableReason> {
    let invalid = match (api, status) {
        (Api::Anthropic, 401) => anthropic(body),
        (Api::OpenAi, 401) => openai(body),
        (Api::Gemini, 400 | 401 | 403) => gemini(status, body),
        _ => false,
    };
    invalid.then_some(DisableReason::InvalidKey)
}

#[derive(Deserialize)]
struct AnthropicBody {
    #[serde(rename = "type")]
    kind: String,
    error: AnthropicError,
}

#[derive(Deserialize)]
struct AnthropicError {
    #[serde(rename = "type")]
    kind: String,
}

fn anthropic(body: &[u8]) -> bool {
    serde_json::from_slice::<AnthropicBody>(body)
        .is_ok_and(|b| b.kind == "error" && b.error.kind == "authentication_error")
}

#[derive(Deserialize)]
struct OpenAiBody {
    error: OpenAiError,
}

#[derive(Deserialize)]
struct OpenAiError {
    code: Option<String>,
}

fn openai(body: &[u8]) -> bool {
    serde_json::from_slice::<OpenAiBody>(body)
        .is_ok_and(|b| b.error.code.as_deref() == Some("invalid_api_key"))
}

/// `{"error": …}`, or from `streamGenerateContent` `[{"error": …}, …]` (the first element is
/// read, the rest skipped), without buffering the body as an untagged enum would.
struct GeminiBody(GeminiError);

impl<'de> Deserialize<'de> for GeminiBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = GeminiBody;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Gemini error object or an array starting with one")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<GeminiBody, A::Error> {
                let w = GeminiWrap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(GeminiBody(w.error))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GeminiBody, A::Error> {
                let first: GeminiWrap = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(GeminiBody(first.error))
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Deserialize)]
struct GeminiWrap {
    error: GeminiError,
}

#[derive(Deserialize)]
struct GeminiError {
    status: String,
    #[serde(default)]
    details: Vec<GeminiDetail>,
}

#[derive(Deserialize)]
struct GeminiDetail {
    #[serde(rename = "@type")]
    kind: Option<String>,
    reason: Option<String>,
}

fn gemini(status: u32, body: &[u8]) -> bool {
    // The canonical code that goes with each HTTP status (google.rpc.Code).
    let canonical = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        _ => "PERMISSION_DENIED",
    };
    let Ok(GeminiBody(error)) = serde_json::from_slice::<GeminiBody>(body) else {
        return false;
    };
    error.status == canonical
        && error.details.iter().any(|d| {
            d.kind
                .as_deref()
                .is_some_and(|k| k == "type.googleapis.com/google.rpc.ErrorInfo")
                && d.reason.as_deref() == Some("API_KEY_INVALID")
        })
}

/// Real answers of each provider, for tests here and in `accounts` and `admin`.
#[cfg(test)]
pub(crate) mod samples {
    use crate::api::Api;

    pub const ANTHROPIC_INVALID: &str = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
    pub const OPENAI_INVALID: &str = r#"{
    "error": {
        "message": "Incorrect API key provided: sk-proj-********************************abcd. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }
}
"#;
    pub const GEMINI_INVALID: &str = r#"{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {
          "service": "generativelanguage.googleapis.com"
        }
      },
      {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": "API key not valid. Please pass a valid API key."
      }
    ]
  }
}
"#;

    pub const OPENAI_MISMATCHED_ORG: &str = r#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;

    /// The provider's invalid-key answer to an account of `api`: status and body.
    pub fn invalid_key(api: Api) -> (u32, &'static str) {
        match api {
            Api::Anthropic => (401, ANTHROPIC_INVALID),
            Api::OpenAi => (401, OPENAI_INVALID),
            Api::Gemini => (400, GEMINI_INVALID),
        }
    }
}

#[cfg(test)]
mod tests;
