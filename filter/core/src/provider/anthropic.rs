//! Anthropic (the Messages API): `x-api-key`, `anthropic-ratelimit-*` headers, errors as
//! `{"type":"error","error":{"type":…,"message":…}}`.

use serde::Deserialize;

use super::{Endpoint, Marker, Method, Provider, RateHeader, StreamError};
use crate::api::{Api, Reason, Route};

pub struct Anthropic;

const MESSAGES: &str = "/v1/messages";
const COUNT_TOKENS: &str = "/v1/messages/count_tokens";

/// The `anthropic-version` sent when the client sent none.
const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

impl Provider for Anthropic {
    fn api(&self) -> Api {
        Api::Anthropic
    }

    fn route(&self, method: Method, bare: &str) -> Option<Route> {
        match (method, bare) {
            (Method::Post, MESSAGES) => Some(Route::Metered {
                endpoint: Endpoint::Messages,
                model: None,
            }),
            (Method::Post, COUNT_TOKENS) => Some(Route::Identity(Api::Anthropic)),
            _ => None,
        }
    }

    fn owns_path(&self, bare: &str) -> bool {
        bare.starts_with(MESSAGES)
    }

    /// `/v1/messages…`, and the legacy `/v1/complete` (not OpenAI's `/v1/completions`).
    fn owns_passthrough_prefix(&self, prefix: &str) -> bool {
        prefix.starts_with(MESSAGES)
            || prefix.starts_with("/v1/complete") && !prefix.starts_with("/v1/completions")
    }

    fn served_paths(&self) -> &'static [&'static str] {
        &[MESSAGES, COUNT_TOKENS]
    }

    fn credential_header(&self) -> &'static str {
        "x-api-key"
    }

    fn default_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[VERSION]
    }

    fn rate_limit_prefix(&self) -> Option<&'static str> {
        Some("anthropic-ratelimit-")
    }

    /// `unified-status`, `unified-reset`, `unified-{window}-{field}` (subscription limits)
    /// and `{dimension}-{field}`.
    fn rate_header<'a>(&self, rest: &'a str) -> Option<RateHeader<'a>> {
        if let Some(unified) = rest.strip_prefix("unified-") {
            return Some(match unified.rsplit_once('-') {
                Some((window, field)) => RateHeader::Unified {
                    window: Some(window),
                    field,
                },
                None => RateHeader::Unified {
                    window: None,
                    field: unified,
                },
            });
        }
        let (dim, field) = rest.rsplit_once('-')?;
        Some(RateHeader::Dim { dim, field })
    }

    fn error_body(&self, reason: Reason, message: &str) -> String {
        let kind = match reason {
            Reason::Auth => "authentication_error",
            Reason::Model | Reason::UnknownConsumer => "permission_error",
            Reason::NotFound => "not_found_error",
            Reason::BadRequest => "invalid_request_error",
            Reason::TooLarge => "request_too_large",
            Reason::GlobalUnavailable | Reason::NoAccount => "api_error",
            Reason::Tokens
            | Reason::Requests
            | Reason::Cost
            | Reason::Concurrency
            | Reason::AccountsCooling
            | Reason::Global => "rate_limit_error",
        };
        format!(r#"{{"type":"error","error":{{"type":"{kind}","message":{message}}}}}"#)
    }

    /// 401 `{"type":"error","error":{"type":"authentication_error",…}}`.
    fn key_invalid(&self, status: u32, body: &[u8]) -> bool {
        status == 401
            && serde_json::from_slice::<ErrorBody>(body)
                .is_ok_and(|b| b.kind == "error" && b.error.kind == "authentication_error")
    }

    /// `rate_limit_error`, `overloaded_error` (and HTTP's 529 as a code).
    fn stream_errors(&self) -> &'static [(Marker, StreamError)] {
        &[
            (Marker::Contains("rate_limit"), StreamError::RateLimited),
            (Marker::Contains("overloaded"), StreamError::Overloaded),
            (Marker::Code(529), StreamError::Overloaded),
        ]
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: String,
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: String,
}
