//! OpenAI and OpenAI-compatible servers (vLLM): `Authorization: Bearer`, `x-ratelimit-*`
//! headers, errors as `{"error":{"message":…,"type":…,"param":null,"code":…}}`.

use serde::Deserialize;

use super::{Endpoint, Marker, Method, Provider, RateHeader, StreamError};
use crate::api::{Api, Reason, Route};

pub struct OpenAi;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const RESPONSES: &str = "/v1/responses";

impl Provider for OpenAi {
    fn api(&self) -> Api {
        Api::OpenAi
    }

    fn route(&self, method: Method, bare: &str) -> Option<Route> {
        let endpoint = match (method, bare) {
            (Method::Post, CHAT) => Endpoint::ChatCompletions,
            (Method::Post, COMPLETIONS) => Endpoint::Completions,
            (Method::Post, EMBEDDINGS) => Endpoint::Embeddings,
            (Method::Post, RESPONSES) => Endpoint::Responses,
            _ => return None,
        };
        Some(Route::Metered {
            endpoint,
            model: None,
        })
    }

    fn served_paths(&self) -> &'static [&'static str] {
        &[CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES]
    }

    fn credential_header(&self) -> &'static str {
        "authorization"
    }

    fn credential(&self, key: &str) -> (&'static str, String) {
        (self.credential_header(), format!("Bearer {key}"))
    }

    fn scoping_headers(&self) -> &'static [&'static str] {
        &["openai-organization", "openai-project"]
    }

    fn rate_limit_prefix(&self) -> Option<&'static str> {
        Some("x-ratelimit-")
    }

    /// `{field}-{dimension}`: `remaining-tokens`, `reset-requests`, …
    fn rate_header<'a>(&self, rest: &'a str) -> Option<RateHeader<'a>> {
        let (field, dim) = rest.split_once('-')?;
        Some(RateHeader::Dim { dim, field })
    }

    fn error_body(&self, reason: Reason, message: &str) -> String {
        let (kind, code) = match reason {
            Reason::Auth => ("invalid_request_error", "invalid_api_key"),
            Reason::Model => ("invalid_request_error", "model_not_allowed"),
            Reason::UnknownConsumer => ("invalid_request_error", "permission_denied"),
            Reason::NotFound => ("invalid_request_error", "not_found"),
            Reason::BadRequest => ("invalid_request_error", "invalid_request"),
            Reason::TooLarge => ("invalid_request_error", "request_too_large"),
            Reason::GlobalUnavailable | Reason::NoAccount => {
                ("server_error", "service_unavailable")
            }
            Reason::Tokens
            | Reason::Requests
            | Reason::Cost
            | Reason::Concurrency
            | Reason::AccountsCooling
            | Reason::Global => ("rate_limit_error", "rate_limit_exceeded"),
        };
        format!(
            r#"{{"error":{{"message":{message},"type":"{kind}","param":null,"code":"{code}"}}}}"#
        )
    }

    /// 401 whose `error.code` is `invalid_api_key` (not `mismatched_organization`, an unknown
    /// project or a missing scope; no 403 is about the key).
    fn key_invalid(&self, status: u32, body: &[u8]) -> bool {
        status == 401
            && serde_json::from_slice::<ErrorBody>(body)
                .is_ok_and(|b| b.error.code.as_deref() == Some("invalid_api_key"))
    }

    /// `rate_limit_exceeded` (and `rate_limit_error`); compatible servers send HTTP codes.
    fn stream_errors(&self) -> &'static [(Marker, StreamError)] {
        &[
            (Marker::Contains("rate_limit"), StreamError::RateLimited),
            (Marker::Code(429), StreamError::RateLimited),
            (Marker::Code(503), StreamError::Overloaded),
        ]
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: Option<String>,
}
