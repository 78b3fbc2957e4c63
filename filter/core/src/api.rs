//! Which API a request speaks, which endpoint it hits, and how errors are written in that
//! API's own format so that the official SDKs raise their usual exceptions.

use std::borrow::Cow;

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
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent` (or `/v1/...`)
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
    /// The filter's own endpoints; the string is the (percent-decoded) path below
    /// `admin.path` ("" or "/usage").
    Admin(String),
    /// Not served: 404 in the API's error format.
    NotFound(Api),
    /// A path that is not normal, or a Gemini model in it that no model is named: 400 in the
    /// format of `api`, before identity. `message` names the problem and never quotes the
    /// path (which may carry a secret after `;` or `?`).
    BadRequest { api: Api, message: &'static str },
}

/// The path as an error message may show it: without its query, fragment and `;` parameters.
pub fn display_path(path: &str) -> &str {
    path.split(['?', '#', ';']).next().unwrap_or("")
}

/// Decides the route. `path` is the `:path` pseudo-header (query included).
/// `hint` is the API the client's headers suggest (see [`api_hint`]), used where the
/// path alone does not say.
///
/// A path that is not normal (dot segments, `//`, `\`, `;`, a fragment, control characters,
/// escaped separators, bad escapes) is refused before anything else, the admin path included. The rest is classified after percent-decoding once, as an upstream
/// that decodes before it routes will see it: `/v1/m%65ssages` is metered like `/v1/messages`
/// and never passes through unmetered.
#[inline(never)]
pub fn classify(
    method: &str,
    path: &str,
    hint: Api,
    admin_path: Option<&str>,
    passthrough: &[crate::config::Passthrough],
) -> Route {
    let raw = path.split('?').next().unwrap_or("");
    let decoded = match normal_path(raw) {
        Ok(d) => d,
        Err(message) => {
            let api = path_api(raw)
                .or_else(|| passthrough_api(raw, passthrough))
                .unwrap_or(hint);
            return Route::BadRequest { api, message };
        }
    };
    let bare: &str = &decoded;
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
    // Google's own SDK (google-genai) speaks `/v1` unless told `v1beta`: Gemini serves both.
    // (`GET /v1/models/...` is the model list of any API, answered above.)
    let gemini = bare
        .strip_prefix("/v1beta/models/")
        .or_else(|| bare.strip_prefix("/v1/models/"));
    if let Some(rest) = gemini {
        if post {
            if let Some(route) = rest
                .rsplit_once(':')
                .and_then(|(model, verb)| gemini_route(model, verb))
            {
                return route;
            }
        } else if get {
            return Route::Identity(Api::Gemini);
        }
    }
    if get && bare == "/v1beta/models" {
        return Route::Identity(Api::Gemini);
    }
    if let Some(api) = passthrough_api(bare, passthrough) {
        return Route::Identity(api);
    }
    Route::NotFound(path_api(bare).unwrap_or(hint))
}

/// The route of `POST /v1beta/models/{model}:{verb}` or `/v1/models/...` (decoded) for the verbs tollgate
/// knows; other verbs (`embedContent`, ...) may be `passthrough_paths`.
fn gemini_route(model: &str, verb: &str) -> Option<Route> {
    let stream = match verb {
        "generateContent" => Some(false),
        "streamGenerateContent" => Some(true),
        "countTokens" => None,
        _ => return None,
    };
    Some(match (gemini_model(model), stream) {
        (Err(message), _) => Route::BadRequest {
            api: Api::Gemini,
            message,
        },
        (Ok(model), Some(stream)) => Route::Metered(Metered::Gemini {
            model: model.to_string(),
            stream,
        }),
        (Ok(_), None) => Route::Identity(Api::Gemini),
    })
}

/// The API of the first `passthrough_paths` entry whose prefix starts `bare`.
fn passthrough_api(bare: &str, passthrough: &[crate::config::Passthrough]) -> Option<Api> {
    passthrough
        .iter()
        .find(|p| !p.prefix.is_empty() && bare.starts_with(p.prefix.as_str()))
        .map(|p| p.api)
}

/// `raw` (a path without its query) percent-decoded once, or why it is not normal: a `.` or
/// `..` segment, `//`, `\`, `;` parameters, a fragment, a control character, a malformed
/// escape, an escaped `.`, `/`, `\` or `;` (an upstream that decodes or normalises would
/// route it elsewhere than tollgate did), or bytes that are not UTF-8 once decoded. The
/// decoded path is held to the same rules, so twice-encoded separators are refused too.
fn normal_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if raw.contains('#') {
        return Err("path has a fragment ('#')");
    }
    not_normal(raw.as_bytes())?;
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = percent_decode(raw.as_bytes()).ok_or("path has a malformed percent-encoding")?;
    let decoded = String::from_utf8(bytes).map_err(|_| "path is not UTF-8 once percent-decoded")?;
    not_normal(decoded.as_bytes())?;
    Ok(Cow::Owned(decoded))
}

fn not_normal(p: &[u8]) -> Result<(), &'static str> {
    if p.contains(&b';') {
        return Err("path has ';' parameters");
    }
    if p.contains(&b'\\') {
        return Err("path has a backslash");
    }
    if p.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("path has a control character");
    }
    if p.windows(2).any(|w| w == b"//") {
        return Err("path has an empty segment ('//')");
    }
    if p.split(|&b| b == b'/').any(|s| s == b"." || s == b"..") {
        return Err("path has a '.' or '..' segment");
    }
    let escaped_separator = p.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && matches!(
                p.get(i + 1..i + 3).and_then(hex_pair),
                Some(b'.' | b'/' | b'\\' | b';')
            )
    });
    if escaped_separator {
        return Err("path has a percent-encoded '.', '/', '\\' or ';'");
    }
    Ok(())
}

/// `s` with every `%XX` decoded, or `None` if a `%` is not followed by two hex digits.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            out.push(hex_pair(s.get(i + 1..i + 3)?)?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

fn hex_pair(h: &[u8]) -> Option<u8> {
    let &[hi, lo] = h else {
        return None;
    };
    let digit = |b: u8| char::from(b).to_digit(16);
    Some((digit(hi)? << 4 | digit(lo)?) as u8)
}

/// Longest model name accepted, in a Gemini path or a body's `model`.
pub const MODEL_CAP: usize = 256;

/// A decoded Gemini model name from the path, or why it names no model. A `:` would make
/// the verb's colon the upstream's guess; `/` would address another resource; `%` is a
/// second encoding; the others end or split a path.
fn gemini_model(model: &str) -> Result<&str, &'static str> {
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
mod tests;
