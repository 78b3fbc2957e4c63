//! Gemini (the Generative Language API): the model and the verb in the path, `x-goog-api-key`
//! (or `?key=` from clients), no rate-limit headers, errors as
//! `{"error":{"code":…,"message":…,"status":…}}`.

use core::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Endpoint, Marker, Method, Provider, StreamError};
use crate::api::{Api, Reason, Route, MODEL_CAP};

pub struct Gemini;

const MODELS: &str = "/v1beta/models";

impl Provider for Gemini {
    fn api(&self) -> Api {
        Api::Gemini
    }

    /// `POST …/models/{model}:{verb}` under `/v1beta` or `/v1` (Google's own SDK,
    /// google-genai, speaks `/v1` unless told `v1beta`), `GET` of a model or the model list.
    fn route(&self, method: Method, bare: &str) -> Option<Route> {
        let rest = bare
            .strip_prefix("/v1beta/models/")
            .or_else(|| bare.strip_prefix("/v1/models/"));
        match (method, rest) {
            (Method::Post, Some(rest)) => {
                let (model, verb) = rest.rsplit_once(':')?;
                verb_route(model, verb)
            }
            (Method::Get, Some(_)) => Some(Route::Identity(Api::Gemini)),
            (Method::Get, None) if bare == MODELS => Some(Route::Identity(Api::Gemini)),
            _ => None,
        }
    }

    fn owns_path(&self, bare: &str) -> bool {
        bare.starts_with("/v1beta/")
    }

    fn owns_passthrough_prefix(&self, prefix: &str) -> bool {
        prefix.starts_with("/v1beta/") || prefix == "/v1beta"
    }

    fn served_paths(&self) -> &'static [&'static str] {
        &[MODELS]
    }

    fn credential_header(&self) -> &'static str {
        "x-goog-api-key"
    }

    /// Whoever pays for the request (`x-goog-user-project`).
    fn scoping_headers(&self) -> &'static [&'static str] {
        &["x-goog-user-project"]
    }

    fn error_body(&self, reason: Reason, message: &str) -> String {
        let status = match reason {
            Reason::Auth => "UNAUTHENTICATED",
            Reason::Model | Reason::UnknownConsumer => "PERMISSION_DENIED",
            Reason::NotFound => "NOT_FOUND",
            Reason::BadRequest | Reason::TooLarge => "INVALID_ARGUMENT",
            Reason::GlobalUnavailable | Reason::NoAccount => "UNAVAILABLE",
            Reason::Tokens
            | Reason::Requests
            | Reason::Cost
            | Reason::Concurrency
            | Reason::AccountsCooling
            | Reason::Global => "RESOURCE_EXHAUSTED",
        };
        format!(
            r#"{{"error":{{"code":{},"message":{message},"status":"{status}"}}}}"#,
            reason.status()
        )
    }

    /// 400 `INVALID_ARGUMENT` (also 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`) with a
    /// `google.rpc.ErrorInfo` detail whose `reason` is `API_KEY_INVALID` (the key is unknown
    /// or expired). "API key not valid" in the message without that reason is not enough.
    /// The body may be the object or, from `streamGenerateContent`, an array holding it first.
    fn key_invalid(&self, status: u32, body: &[u8]) -> bool {
        // The canonical code that goes with each HTTP status (google.rpc.Code).
        let canonical = match status {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            _ => return false,
        };
        let Ok(ErrorBody(error)) = serde_json::from_slice::<ErrorBody>(body) else {
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

    /// `RESOURCE_EXHAUSTED` (429) and `UNAVAILABLE` (503), as status and code.
    fn stream_errors(&self) -> &'static [(Marker, StreamError)] {
        &[
            (Marker::Is("RESOURCE_EXHAUSTED"), StreamError::RateLimited),
            (Marker::Code(429), StreamError::RateLimited),
            (Marker::Is("UNAVAILABLE"), StreamError::Overloaded),
            (Marker::Code(503), StreamError::Overloaded),
        ]
    }
}

/// The route of `POST …/models/{model}:{verb}` (decoded) for the verbs tollgate knows;
/// other verbs (`embedContent`, ...) may be `passthrough_paths`.
fn verb_route(model: &str, verb: &str) -> Option<Route> {
    let endpoint = match verb {
        "generateContent" => Some(Endpoint::GenerateContent),
        "streamGenerateContent" => Some(Endpoint::StreamGenerateContent),
        "countTokens" => None,
        _ => return None,
    };
    Some(match (path_model(model), endpoint) {
        (Err(message), _) => Route::BadRequest {
            api: Api::Gemini,
            message,
        },
        (Ok(model), Some(endpoint)) => Route::Metered {
            endpoint,
            model: Some(model.to_string()),
        },
        (Ok(_), None) => Route::Identity(Api::Gemini),
    })
}

/// A decoded model name from the path, or why it names no model. A `:` would make the
/// verb's colon the upstream's guess; `/` would address another resource; `%` is a second
/// encoding; the others end or split a path.
fn path_model(model: &str) -> Result<&str, &'static str> {
    if model.is_empty() {
        return Err("the model name in the path is empty");
    }
    if model.len() > MODEL_CAP {
        return Err("the model name in the path is too long");
    }
    if model.contains('/') {
        return Err("the model name in the path has a '/'");
    }
    if model.chars().any(|c| {
        c.is_control() || c.is_whitespace() || matches!(c, '\\' | ':' | ';' | '?' | '#' | '%')
    }) {
        return Err("the model name in the path has a character that model names never have");
    }
    Ok(model)
}

// ---- the invalid-key answer -----------------------------------------------------------------

/// `{"error": …}`, or from `streamGenerateContent` `[{"error": …}, …]` (the first element is
/// read, the rest skipped), without buffering the body as an untagged enum would.
struct ErrorBody(ErrorObject);

impl<'de> Deserialize<'de> for ErrorBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = ErrorBody;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Gemini error object or an array starting with one")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ErrorBody, A::Error> {
                let w = ErrorWrap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ErrorBody(w.error))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ErrorBody, A::Error> {
                let first: ErrorWrap = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ErrorBody(first.error))
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Deserialize)]
struct ErrorWrap {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "@type")]
    kind: Option<String>,
    reason: Option<String>,
}
