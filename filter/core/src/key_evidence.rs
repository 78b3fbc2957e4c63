//! Whether an upstream error body is the provider saying that the pooled key itself is invalid:
//! the only evidence that disables an account (SPEC "Trust boundaries (v2)"). A 401/403 about
//! the request (organization or project headers, region, model access) says nothing about the
//! key and must not take the account away from every other consumer.
//!
//! Only the providers' structured fields count, never message text: a message may echo what the
//! client sent (a model name, a header), a structured field cannot. A body that is truncated,
//! not JSON, repeats a field, or has another shape is no evidence.

use crate::api::Api;
use crate::provider;

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
/// decoded) and says whether the provider refused the key itself; each provider's rule is in
/// its file (`provider::Provider::key_invalid`):
///
/// - Anthropic: 401 `{"type":"error","error":{"type":"authentication_error",…}}`.
/// - OpenAI: 401 whose `error.code` is `invalid_api_key`.
/// - Gemini: 400 `INVALID_ARGUMENT` (also 401, 403) with a `google.rpc.ErrorInfo` detail
///   whose `reason` is `API_KEY_INVALID`.
///
/// One `serde_json` pass over the slice, which never builds a tree (other fields are skipped)
/// and stops at 128 levels of nesting; anything malformed is `None`.
pub fn key_rejection(api: Api, status: u32, body: &[u8]) -> Option<DisableReason> {
    provider::of(api)
        .key_invalid(status, body)
        .then_some(DisableReason::InvalidKey)
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
