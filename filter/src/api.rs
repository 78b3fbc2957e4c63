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
            (
                "GET",
                "/v1/models/claude-3-5-haiku-20241022",
                Route::Identity(Api::OpenAi),
            ),
            (
                "POST",
                "/v1/chat/completions?x=1",
                Route::Metered(Metered::ChatCompletions),
            ),
            (
                "POST",
                "/v1/chat/completions?next=/a/../b//c;d%2e",
                Route::Metered(Metered::ChatCompletions),
            ),
            (
                "GET",
                "/v1beta/models/gemini-1.5-pro",
                Route::Identity(Api::Gemini),
            ),
            (
                "GET",
                "/v1/files/file-abc.jsonl/content",
                Route::Identity(Api::OpenAi),
            ),
            ("GET", "/v1/files/...", Route::Identity(Api::OpenAi)),
            ("GET", "/v1/files/", Route::Identity(Api::OpenAi)),
            (
                "GET",
                "/tollgate/accounts/a%20b",
                Route::Admin("/accounts/a b".into()),
            ),
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
    fn gemini_generate_verbs_under_v1_are_metered_like_v1beta() {
        // google-genai, Google's own SDK, calls `/v1/models/...` unless told `v1beta`.
        let gemini = |model: &str, stream| {
            Route::Metered(Metered::Gemini {
                model: model.into(),
                stream,
            })
        };
        let cases: &[(&str, &str, Route)] = &[
            (
                "POST",
                "/v1/models/gemini-2.0-flash:generateContent",
                gemini("gemini-2.0-flash", false),
            ),
            (
                "POST",
                "/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                gemini("gemini-2.5-pro", true),
            ),
            (
                "POST",
                "/v1/models/gemini-2.5-pr%6F:generateContent",
                gemini("gemini-2.5-pro", false),
            ),
            (
                "POST",
                "/v1/models/gemini-2.0-flash:countTokens",
                Route::Identity(Api::Gemini),
            ),
            (
                "POST",
                "/v1/models/a:b:generateContent",
                Route::BadRequest {
                    api: Api::Gemini,
                    message:
                        "the model name in the path has a character that model names never have",
                },
            ),
            // Not a Gemini verb: nothing to serve, and never metered as one.
            (
                "POST",
                "/v1/models/gpt-4o:deleteEverything",
                Route::NotFound(Api::OpenAi),
            ),
            ("POST", "/v1/models/gpt-4o", Route::NotFound(Api::OpenAi)),
            // A GET stays the model list of whichever API the client speaks.
            (
                "GET",
                "/v1/models/gemini-2.0-flash:generateContent",
                Route::Identity(Api::OpenAi),
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(&route(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn refuses_paths_that_are_not_normal_before_anything_else() {
        let cases: &[(&str, &str, Api)] = &[
            // Dot segments: an upstream that normalises serves another endpoint with the
            // pooled key.
            ("GET", "/v1/models/../messages/batches", Api::OpenAi),
            ("GET", "/v1beta/models/../files", Api::Gemini),
            ("GET", "/v1/models/..", Api::OpenAi),
            ("POST", "/v1/./messages", Api::OpenAi),
            ("POST", "/v1/messages/.", Api::Anthropic),
            ("GET", "/v1/files/../../admin", Api::OpenAi),
            ("GET", "/tollgate/../v1/models", Api::OpenAi),
            // Empty segments and backslashes.
            ("POST", "//v1/messages", Api::OpenAi),
            ("POST", "/v1//messages", Api::OpenAi),
            ("POST", "/v1/messages//", Api::Anthropic),
            ("POST", "/v1\\messages", Api::OpenAi),
            ("GET", "/v1/models\\..\\files", Api::OpenAi),
            // Matrix parameters and fragments mean nothing to these APIs.
            ("POST", "/v1/messages;key=SECRET", Api::Anthropic),
            ("POST", "/v1/chat/completions;x", Api::OpenAi),
            ("GET", "/tollgate;key=SECRET", Api::OpenAi),
            ("POST", "/v1/messages#/../files", Api::Anthropic),
            // Percent-encoded '.', '/', '\\', ';' in any case, and twice encoded.
            ("GET", "/v1/models/%2e%2e/messages/batches", Api::OpenAi),
            ("GET", "/v1/models/%2E%2E/messages/batches", Api::OpenAi),
            ("GET", "/v1/models/.%2e/messages", Api::OpenAi),
            ("GET", "/v1/models%2f..%2fmessages", Api::OpenAi),
            ("GET", "/v1/models%2F..%2Fmessages", Api::OpenAi),
            ("GET", "/v1/models/x%5c..%5cfiles", Api::OpenAi),
            ("GET", "/v1/models/x%5C..%5Cfiles", Api::OpenAi),
            ("POST", "/v1/messages%3bkey=SECRET", Api::Anthropic),
            ("POST", "/v1/messages%3Bkey=SECRET", Api::Anthropic),
            ("GET", "/v1/models/%252e%252e/messages", Api::OpenAi),
            ("GET", "/v1/models%252fx", Api::OpenAi),
            (
                "POST",
                "/v1beta/models/gemini-2.0-flash%2F..%2Fgemini-2.5-pro:generateContent",
                Api::Gemini,
            ),
            ("GET", "/v1beta/models/gemini%2e..%2fx", Api::Gemini),
            // Malformed escapes, control characters, bytes that are not UTF-8.
            ("POST", "/v1/messages%zz", Api::Anthropic),
            ("POST", "/v1/messages%2", Api::Anthropic),
            ("POST", "/v1/messages%", Api::Anthropic),
            ("POST", "/v1/messages%00", Api::Anthropic),
            ("GET", "/v1/models/x%0A", Api::OpenAi),
            ("GET", "/v1/models/%FF", Api::OpenAi),
        ];
        for &(m, p, api) in cases {
            let got = route(m, p);
            let Route::BadRequest {
                api: got_api,
                message,
            } = got
            else {
                panic!("{m} {p}: {got:?}");
            };
            assert_eq!(got_api, api, "{m} {p}");
            assert!(!message.contains("SECRET"), "{message}");
        }
        // The API of the error body follows the path, then the client's headers.
        let hinted = classify("POST", "/v1//x", Api::Anthropic, None, &[]);
        assert!(matches!(
            hinted,
            Route::BadRequest {
                api: Api::Anthropic,
                ..
            }
        ));
        let gemini = classify("GET", "/v1beta//x", Api::Anthropic, None, &[]);
        assert!(matches!(
            gemini,
            Route::BadRequest {
                api: Api::Gemini,
                ..
            }
        ));
        let files = crate::config::Passthrough {
            prefix: "/v1/files".into(),
            api: Api::OpenAi,
        };
        let passthrough = classify("GET", "/v1/files/../x", Api::Anthropic, None, &[files]);
        assert!(matches!(
            passthrough,
            Route::BadRequest {
                api: Api::OpenAi,
                ..
            }
        ));
    }

    #[test]
    fn says_what_is_wrong_with_a_path_without_quoting_it() {
        let cases: &[(&str, &str)] = &[
            ("/v1/models/../x", "path has a '.' or '..' segment"),
            ("/v1//x", "path has an empty segment ('//')"),
            ("/v1\\x", "path has a backslash"),
            ("/v1/messages;key=SECRET", "path has ';' parameters"),
            ("/v1/messages#x", "path has a fragment ('#')"),
            (
                "/v1/messages%3bkey=SECRET",
                "path has a percent-encoded '.', '/', '\\' or ';'",
            ),
            ("/v1/x%4", "path has a malformed percent-encoding"),
            ("/v1/x%01", "path has a control character"),
            ("/v1/x%C3", "path is not UTF-8 once percent-decoded"),
        ];
        for &(p, want) in cases {
            assert_eq!(
                route("POST", p),
                Route::BadRequest {
                    api: path_api(p).unwrap_or(Api::OpenAi),
                    message: want
                },
                "{p}"
            );
        }
    }

    #[test]
    fn decodes_the_gemini_model_in_the_path_before_anyone_matches_it() {
        let metered = |model: &str, stream: bool| {
            Route::Metered(Metered::Gemini {
                model: model.into(),
                stream,
            })
        };
        let cases: &[(&str, Route)] = &[
            // Pricing and allow-lists see the name the upstream serves.
            (
                "/v1beta/models/gemini-2.5-pr%6F:generateContent",
                metered("gemini-2.5-pro", false),
            ),
            (
                "/v1beta/models/gemini-2.5-pr%6f:streamGenerateContent?alt=sse",
                metered("gemini-2.5-pro", true),
            ),
            (
                "/v1beta/models/%67emini-1.5-flash:generateContent?key=k%2F",
                metered("gemini-1.5-flash", false),
            ),
            (
                "/v1beta/models/caf%C3%A9:generateContent",
                metered("caf\u{e9}", false),
            ),
            // An encoded ':' is a ':' to an upstream that decodes before it routes, and so
            // to tollgate: the request is metered, never passed through unmetered.
            (
                "/v1beta/models/gemini-2.0-flash%3AgenerateContent",
                metered("gemini-2.0-flash", false),
            ),
            (
                "/v1beta/models/gemini-2.0-flash%3astreamGenerateContent",
                metered("gemini-2.0-flash", true),
            ),
            (
                "/v1beta/models/gemini-2.0-flash:generat%65Content",
                metered("gemini-2.0-flash", false),
            ),
            (
                "/v1beta/models/gemini-2.0-flash:countTokens",
                Route::Identity(Api::Gemini),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(&route("POST", p), want, "{p}");
        }
        let refused: &[(&str, &str)] = &[
            (
                "/v1beta/models/a/b:generateContent",
                "the model name in the path has a '/'",
            ),
            (
                "/v1beta/models/:generateContent",
                "the model name in the path is empty",
            ),
            (
                "/v1beta/models/gemini-2.5-pr%FF:generateContent",
                "path is not UTF-8 once percent-decoded",
            ),
            // Which ':' is the verb's would be the upstream's guess.
            (
                "/v1beta/models/a:b:generateContent",
                "the model name in the path has a character that model names never have",
            ),
            (
                "/v1beta/models/gemini-2.0-flash%3AgenerateContent:countTokens",
                "the model name in the path has a character that model names never have",
            ),
            (
                "/v1beta/models/gemini-2.0-flash%20:generateContent",
                "the model name in the path has a character that model names never have",
            ),
            (
                "/v1beta/models/gemini-2.0-flash%3Fx:generateContent",
                "the model name in the path has a character that model names never have",
            ),
            (
                "/v1beta/models/gemini-2.0-flash%2525:generateContent",
                "the model name in the path has a character that model names never have",
            ),
            (
                "/v1beta/models/a/b:countTokens",
                "the model name in the path has a '/'",
            ),
        ];
        for &(p, want) in refused {
            assert_eq!(
                route("POST", p),
                Route::BadRequest {
                    api: Api::Gemini,
                    message: want
                },
                "{p}"
            );
        }
        let long = format!("/v1beta/models/{}:generateContent", "g".repeat(257));
        assert_eq!(
            route("POST", &long),
            Route::BadRequest {
                api: Api::Gemini,
                message: "the model name in the path is too long"
            }
        );
    }

    #[test]
    fn classifies_decoded_paths_as_the_upstream_will_route_them() {
        // An encoded letter must not turn a metered endpoint into a passthrough or a 404.
        let cases: &[(&str, &str, Route)] = &[
            ("POST", "/v1/m%65ssages", Route::Metered(Metered::Messages)),
            (
                "POST",
                "/v1/chat/c%6Fmpletions?x=%2e%2e",
                Route::Metered(Metered::ChatCompletions),
            ),
            ("GET", "/v1/fil%65s/abc", Route::Identity(Api::OpenAi)),
            ("GET", "/tollg%61te/usage", Route::Admin("/usage".into())),
        ];
        for (m, p, want) in cases {
            assert_eq!(&route(m, p), want, "{m} {p}");
        }
        // A broad passthrough keeps other Gemini verbs, never a refused or metered one.
        let v1beta = [crate::config::Passthrough {
            prefix: "/v1beta/".into(),
            api: Api::Gemini,
        }];
        let gemini = |p: &str| classify("POST", p, Api::OpenAi, None, &v1beta);
        assert_eq!(
            gemini("/v1beta/models/text-embedding-004:embedContent"),
            Route::Identity(Api::Gemini)
        );
        assert!(matches!(
            gemini("/v1beta/models/a/b:generateContent"),
            Route::BadRequest { .. }
        ));
        assert!(matches!(
            gemini("/v1beta/models/gemini-2.0-flash:generat%65Content"),
            Route::Metered(_)
        ));
    }

    #[test]
    fn display_path_drops_the_query_fragment_and_parameters() {
        let cases = [
            ("/v1/x?key=SECRET", "/v1/x"),
            ("/v1/x;key=SECRET?a=b", "/v1/x"),
            ("/v1/x#frag", "/v1/x"),
            ("/v1/x", "/v1/x"),
            ("", ""),
        ];
        for (p, want) in cases {
            assert_eq!(display_path(p), want, "{p}");
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
