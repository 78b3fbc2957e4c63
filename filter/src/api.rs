//! Which API a request speaks, which endpoint it hits, and how errors are written in that
//! API's own format so that the official SDKs raise their usual exceptions.

/// The provider API family of a request (also the `provider` of an account).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Anthropic,
    OpenAi,
    Gemini,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::OpenAi => "openai",
            Api::Gemini => "gemini",
        }
    }
}

/// A metered endpoint: its request and response formats differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metered {
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions` (vLLM and other OpenAI-compatible servers)
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent`
    Gemini { model: String, stream: bool },
}

impl Metered {
    pub fn api(&self) -> Api {
        match self {
            Metered::Messages => Api::Anthropic,
            Metered::Gemini { .. } => Api::Gemini,
            _ => Api::OpenAi,
        }
    }
}

/// What the filter does with a request, decided from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Read the body, meter, enforce quotas.
    Metered(Metered),
    /// Identify the caller and pass through with the account credential (count_tokens,
    /// model lists, `passthrough_paths`), pinned to the first account of `api`.
    Identity(Api),
    /// The filter's own endpoints; the string is the path below `admin.path` ("" or "/usage").
    Admin(String),
    /// Not served: 404 in the API's error format.
    NotFound(Api),
}

/// Decides the route. `path` is the `:path` pseudo-header (query included).
/// `hint` is the API the client's headers suggest (see [`api_hint`]), used where the
/// path alone does not say.
#[inline(never)]
pub fn classify(
    method: &str,
    path: &str,
    hint: Api,
    admin_path: Option<&str>,
    passthrough: &[crate::config::Passthrough],
) -> Route {
    let bare = path.split(['?', '#']).next().unwrap_or("");
    if let Some(admin) = admin_path {
        if let Some(rest) = bare.strip_prefix(admin) {
            if rest.is_empty() || rest.starts_with('/') {
                return Route::Admin(rest.to_string());
            }
        }
    }
    let post = method.eq_ignore_ascii_case("POST");
    let get = method.eq_ignore_ascii_case("GET");
    let metered = match bare {
        "/v1/messages" if post => Some(Metered::Messages),
        "/v1/chat/completions" if post => Some(Metered::ChatCompletions),
        "/v1/completions" if post => Some(Metered::Completions),
        "/v1/embeddings" if post => Some(Metered::Embeddings),
        "/v1/responses" if post => Some(Metered::Responses),
        _ => None,
    };
    if let Some(m) = metered {
        return Route::Metered(m);
    }
    if post && bare == "/v1/messages/count_tokens" {
        return Route::Identity(Api::Anthropic);
    }
    if get && (bare == "/v1/models" || bare.starts_with("/v1/models/")) {
        return Route::Identity(hint);
    }
    if let Some(rest) = bare.strip_prefix("/v1beta/models/") {
        if post {
            if let Some((model, verb)) = rest.rsplit_once(':') {
                let stream = match verb {
                    "generateContent" => Some(false),
                    "streamGenerateContent" => Some(true),
                    _ => None,
                };
                if let Some(stream) = stream {
                    if !model.is_empty() && !model.contains('/') {
                        return Route::Metered(Metered::Gemini {
                            model: model.to_string(),
                            stream,
                        });
                    }
                }
                if verb == "countTokens" {
                    return Route::Identity(Api::Gemini);
                }
            }
        } else if get {
            return Route::Identity(Api::Gemini);
        }
    }
    if get && bare == "/v1beta/models" {
        return Route::Identity(Api::Gemini);
    }
    if let Some(p) = passthrough
        .iter()
        .find(|p| !p.prefix.is_empty() && bare.starts_with(p.prefix.as_str()))
    {
        return Route::Identity(p.api);
    }
    Route::NotFound(path_api(bare).unwrap_or(hint))
}

/// The API a path clearly belongs to, if any.
fn path_api(bare: &str) -> Option<Api> {
    if bare.starts_with("/v1beta/") {
        Some(Api::Gemini)
    } else if bare.starts_with("/v1/messages") {
        Some(Api::Anthropic)
    } else {
        None
    }
}

/// The API the client's headers suggest: Anthropic SDKs send `anthropic-version` and
/// `x-api-key`, Gemini clients `x-goog-api-key`, OpenAI SDKs a bearer token.
pub fn api_hint(has_anthropic_version: bool, has_x_api_key: bool, has_goog_key: bool) -> Api {
    if has_anthropic_version || (has_x_api_key && !has_goog_key) {
        Api::Anthropic
    } else if has_goog_key {
        Api::Gemini
    } else {
        Api::OpenAi
    }
}

/// Why the filter answered a request itself. The names are the metric `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Auth,
    Model,
    NotFound,
    BadRequest,
    TooLarge,
    Tokens,
    Requests,
    Cost,
    Concurrency,
    AccountsCooling,
    Global,
    GlobalUnavailable,
    /// No account serves the API, or every one that does is disabled.
    NoAccount,
    /// A trusted consumer name (`consumer_header`, `consumer_claim`) that no consumer has,
    /// with no `anonymous` to fall back on.
    UnknownConsumer,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Model => "model",
            Reason::NotFound => "not_found",
            Reason::BadRequest => "bad_request",
            Reason::TooLarge => "too_large",
            Reason::Tokens => "tokens",
            Reason::Requests => "requests",
            Reason::Cost => "cost",
            Reason::Concurrency => "concurrency",
            Reason::AccountsCooling => "accounts_cooling",
            Reason::Global => "global",
            Reason::GlobalUnavailable => "global_unavailable",
            Reason::NoAccount => "no_account",
            Reason::UnknownConsumer => "unknown_consumer",
        }
    }

    pub fn status(self) -> u32 {
        match self {
            Reason::Auth => 401,
            Reason::Model | Reason::UnknownConsumer => 403,
            Reason::NotFound => 404,
            Reason::BadRequest => 400,
            Reason::TooLarge => 413,
            Reason::GlobalUnavailable | Reason::NoAccount => 503,
            _ => 429,
        }
    }

    /// (Anthropic error type, OpenAI error type, OpenAI code, Gemini status)
    fn names(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Reason::Auth => (
                "authentication_error",
                "invalid_request_error",
                "invalid_api_key",
                "UNAUTHENTICATED",
            ),
            Reason::Model => (
                "permission_error",
                "invalid_request_error",
                "model_not_allowed",
                "PERMISSION_DENIED",
            ),
            Reason::UnknownConsumer => (
                "permission_error",
                "invalid_request_error",
                "permission_denied",
                "PERMISSION_DENIED",
            ),
            Reason::NotFound => (
                "not_found_error",
                "invalid_request_error",
                "not_found",
                "NOT_FOUND",
            ),
            Reason::BadRequest => (
                "invalid_request_error",
                "invalid_request_error",
                "invalid_request",
                "INVALID_ARGUMENT",
            ),
            Reason::TooLarge => (
                "request_too_large",
                "invalid_request_error",
                "request_too_large",
                "INVALID_ARGUMENT",
            ),
            Reason::GlobalUnavailable | Reason::NoAccount => (
                "api_error",
                "server_error",
                "service_unavailable",
                "UNAVAILABLE",
            ),
            _ => (
                "rate_limit_error",
                "rate_limit_error",
                "rate_limit_exceeded",
                "RESOURCE_EXHAUSTED",
            ),
        }
    }
}

/// An error body in the format of `api`, so the provider SDKs raise their usual exceptions.
pub fn error_body(api: Api, reason: Reason, message: &str) -> String {
    let (anthropic, openai_type, openai_code, gemini) = reason.names();
    let msg = json_string(message);
    match api {
        Api::Anthropic => {
            format!(r#"{{"type":"error","error":{{"type":"{anthropic}","message":{msg}}}}}"#)
        }
        Api::OpenAi => format!(
            r#"{{"error":{{"message":{msg},"type":"{openai_type}","param":null,"code":"{openai_code}"}}}}"#
        ),
        Api::Gemini => format!(
            r#"{{"error":{{"code":{},"message":{msg},"status":"{gemini}"}}}}"#,
            reason.status()
        ),
    }
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> Route {
        classify(
            method,
            path,
            Api::OpenAi,
            Some("/tollgate"),
            &[crate::config::Passthrough {
                prefix: "/v1/files".into(),
                api: Api::OpenAi,
            }],
        )
    }

    #[test]
    fn classifies_every_served_endpoint() {
        let cases: &[(&str, &str, Route)] = &[
            ("POST", "/v1/messages", Route::Metered(Metered::Messages)),
            (
                "POST",
                "/v1/messages?beta=true",
                Route::Metered(Metered::Messages),
            ),
            (
                "POST",
                "/v1/chat/completions",
                Route::Metered(Metered::ChatCompletions),
            ),
            (
                "POST",
                "/v1/completions",
                Route::Metered(Metered::Completions),
            ),
            (
                "POST",
                "/v1/embeddings",
                Route::Metered(Metered::Embeddings),
            ),
            ("POST", "/v1/responses", Route::Metered(Metered::Responses)),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:generateContent",
                Route::Metered(Metered::Gemini {
                    model: "gemini-2.0-flash".into(),
                    stream: false,
                }),
            ),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                Route::Metered(Metered::Gemini {
                    model: "gemini-2.0-flash".into(),
                    stream: true,
                }),
            ),
            (
                "POST",
                "/v1/messages/count_tokens",
                Route::Identity(Api::Anthropic),
            ),
            ("GET", "/v1/models", Route::Identity(Api::OpenAi)),
            ("GET", "/v1beta/models", Route::Identity(Api::Gemini)),
            ("GET", "/v1/files/abc", Route::Identity(Api::OpenAi)),
            ("GET", "/tollgate/health", Route::Admin("/health".into())),
            ("GET", "/tollgate", Route::Admin("".into())),
            ("GET", "/tollgatex", Route::NotFound(Api::OpenAi)),
            ("GET", "/v1/messages", Route::NotFound(Api::Anthropic)),
            ("POST", "/v1/unknown", Route::NotFound(Api::OpenAi)),
            (
                "POST",
                "/v1beta/models/x:deleteEverything",
                Route::NotFound(Api::Gemini),
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(&route(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn writes_errors_in_each_apis_format() {
        let a: serde_json::Value =
            serde_json::from_str(&error_body(Api::Anthropic, Reason::Auth, "bad \"key\"")).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "authentication_error");
        assert_eq!(a["error"]["message"], "bad \"key\"");
        let o: serde_json::Value =
            serde_json::from_str(&error_body(Api::OpenAi, Reason::Tokens, "slow down")).unwrap();
        assert_eq!(o["error"]["code"], "rate_limit_exceeded");
        let g: serde_json::Value =
            serde_json::from_str(&error_body(Api::Gemini, Reason::NotFound, "nope")).unwrap();
        assert_eq!(g["error"]["code"], 404);
        assert_eq!(g["error"]["status"], "NOT_FOUND");
    }

    #[test]
    fn guesses_the_api_from_client_headers() {
        assert_eq!(api_hint(true, false, false), Api::Anthropic);
        assert_eq!(api_hint(false, true, false), Api::Anthropic);
        assert_eq!(api_hint(false, false, true), Api::Gemini);
        assert_eq!(api_hint(false, false, false), Api::OpenAi);
    }
}
