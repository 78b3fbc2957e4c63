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
mod tests {
    use super::samples::*;
    use super::*;
    use proptest::prelude::{any, proptest};

    fn says(api: Api, status: u32, body: &str) -> bool {
        key_rejection(api, status, body.as_bytes()) == Some(DisableReason::InvalidKey)
    }

    #[test]
    fn each_providers_invalid_key_answer_is_evidence() {
        let expired = GEMINI_INVALID.replace(
            "API key not valid. Please pass a valid API key.",
            "API key expired. Please renew the API key.",
        );
        let streamed = format!("[{}]", GEMINI_INVALID.trim());
        let unauthenticated = GEMINI_INVALID
            .replace("400", "401")
            .replace("INVALID_ARGUMENT", "UNAUTHENTICATED");
        let cases: [(Api, u32, &str); 6] = [
            (Api::Anthropic, 401, ANTHROPIC_INVALID),
            (Api::OpenAi, 401, OPENAI_INVALID),
            (Api::Gemini, 400, GEMINI_INVALID),
            (Api::Gemini, 400, &expired),
            (Api::Gemini, 400, &streamed),
            (Api::Gemini, 401, &unauthenticated),
        ];
        for (api, status, body) in cases {
            assert!(says(api, status, body), "{api:?} {status} {body}");
        }
    }

    #[test]
    fn errors_about_the_request_rather_than_the_key_are_no_evidence() {
        let cases: [(Api, u32, &str); 14] = [
            // A client's `OpenAI-Organization` that the key does not belong to.
            (Api::OpenAi, 401, OPENAI_MISMATCHED_ORG),
            (
                Api::OpenAi,
                401,
                r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"invalid_project"}}"#,
            ),
            // A restricted key lacking a scope: the key is fine for other endpoints.
            (
                Api::OpenAi,
                401,
                r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: model.request.","type":"invalid_request_error","param":null,"code":null}}"#,
            ),
            (
                Api::OpenAi,
                403,
                r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#,
            ),
            // Even the invalid-key code counts only on a 401.
            (Api::OpenAi, 403, OPENAI_INVALID),
            (Api::OpenAi, 400, OPENAI_INVALID),
            (
                Api::Anthropic,
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
            ),
            (
                Api::Anthropic,
                401,
                r#"{"type":"error","error":{"type":"permission_error","message":"invalid x-api-key"}}"#,
            ),
            (Api::Anthropic, 403, ANTHROPIC_INVALID),
            // A client's `x-goog-user-project` the key may not bill.
            (
                Api::Gemini,
                403,
                r#"{"error":{"code":403,"message":"Caller does not have required permission to use project x. Grant the caller the roles/serviceusage.serviceUsageConsumer role","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"USER_PROJECT_DENIED","domain":"googleapis.com","metadata":{"consumer":"projects/x","service":"generativelanguage.googleapis.com"}}]}}"#,
            ),
            // A bad request: INVALID_ARGUMENT without the key's reason.
            (
                Api::Gemini,
                400,
                r#"{"error":{"code":400,"message":"* GenerateContentRequest.contents: contents is not specified","status":"INVALID_ARGUMENT"}}"#,
            ),
            // The reason outside an ErrorInfo, or with a status that does not go with it.
            (
                Api::Gemini,
                400,
                r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","reason":"API_KEY_INVALID"}]}}"#,
            ),
            (Api::Gemini, 403, GEMINI_INVALID),
            (Api::Gemini, 500, GEMINI_INVALID),
        ];
        for (api, status, body) in cases {
            assert!(!says(api, status, body), "{api:?} {status} {body}");
        }
    }

    #[test]
    fn another_providers_invalid_key_shape_is_no_evidence() {
        for (api, status, body) in [
            (Api::OpenAi, 401, ANTHROPIC_INVALID),
            (Api::Gemini, 401, ANTHROPIC_INVALID),
            (Api::Anthropic, 401, OPENAI_INVALID),
            (Api::Gemini, 400, OPENAI_INVALID),
            (Api::OpenAi, 400, GEMINI_INVALID),
            // Anthropic's error without its envelope, or in another envelope.
            (
                Api::Anthropic,
                401,
                r#"{"error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            ),
            (
                Api::Anthropic,
                401,
                r#"{"type":"message","error":{"type":"authentication_error"}}"#,
            ),
        ] {
            assert!(!says(api, status, body), "{api:?} {status}");
        }
    }

    #[test]
    fn the_message_alone_never_disables() {
        // Gemini's words without the structured reason: the message may echo client input.
        let bare = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#;
        assert!(!says(Api::Gemini, 400, bare));
        // A client-chosen string that spells the evidence sits escaped inside a message.
        let echoed = r#"{"error":{"message":"The model `\"code\":\"invalid_api_key\"` does not exist","type":"invalid_request_error","param":null,"code":null}}"#;
        assert!(!says(Api::OpenAi, 401, echoed));
        let echoed = r#"{"type":"error","error":{"type":"not_found_error","message":"model: {\"type\":\"authentication_error\"}"}}"#;
        assert!(!says(Api::Anthropic, 401, echoed));
    }

    #[test]
    fn a_repeated_field_is_no_evidence() {
        let twice = r#"{"error":{"code":"mismatched_organization","code":"invalid_api_key"}}"#;
        assert!(!says(Api::OpenAi, 401, twice));
        let twice =
            r#"{"type":"error","error":{"type":"permission_error","type":"authentication_error"}}"#;
        assert!(!says(Api::Anthropic, 401, twice));
    }

    #[test]
    fn truncated_bodies_are_no_evidence_at_any_cut() {
        for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
            let (status, body) = invalid_key(api);
            let bytes = body.trim_end().as_bytes();
            for cut in 0..bytes.len() {
                assert_eq!(
                    key_rejection(api, status, &bytes[..cut]),
                    None,
                    "{api:?} cut at {cut}"
                );
            }
            assert!(key_rejection(api, status, bytes).is_some());
        }
    }

    #[test]
    fn garbage_is_no_evidence() {
        let deep = "[".repeat(100_000);
        let deep_obj = format!(
            "{}{}",
            r#"{"error":"#.repeat(10_000),
            r#"{"code":"invalid_api_key"}"#
        );
        let trailing = format!("{OPENAI_INVALID}xyz");
        let gzip: &[u8] = &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03, 0xab, 0x56];
        for body in [
            &b""[..],
            b"Unauthorized",
            b"<html><body>401 Authorization Required</body></html>",
            b"{\"error\":\"Unauthorized\"}",
            b"null",
            b"[]",
            gzip,
            deep.as_bytes(),
            deep_obj.as_bytes(),
            trailing.as_bytes(),
        ] {
            for (api, status) in [
                (Api::Anthropic, 401),
                (Api::OpenAi, 401),
                (Api::Gemini, 400),
            ] {
                assert_eq!(key_rejection(api, status, body), None, "{api:?}");
            }
        }
    }

    #[test]
    fn reasons_round_trip_their_codes() {
        let r = DisableReason::InvalidKey;
        assert_eq!(DisableReason::from_code(u64::from(r.code())), Some(r));
        assert_eq!(DisableReason::from_code(0), None);
        assert_eq!(DisableReason::from_code(2), None);
        assert_eq!(r.as_str(), "invalid_key");
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), status in 0u32..600) {
            for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
                let _ = key_rejection(api, status, &bytes);
            }
        }
    }
}
