//! Which API a request speaks and what the filter does with it: the path is normalised here,
//! then the providers (`provider`) say which endpoint it hits; tollgate's own answers are
//! written in that API's error format so that the official SDKs raise their usual exceptions.

use std::borrow::Cow;

use crate::provider::{self, Endpoint, Method};

/// The provider API family of a request (also the `provider` of an account).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Anthropic,
    OpenAi,
    Gemini,
}

impl Api {
    pub const ALL: [Api; 3] = [Api::Anthropic, Api::OpenAi, Api::Gemini];

    /// The API of a name (`provider` of an account, `api` of a pass-through path).
    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::OpenAi => "openai",
            Api::Gemini => "gemini",
        }
    }
}

/// What the filter does with a request, decided from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Read the body, meter, enforce quotas. `model`: the model the path names (Gemini).
    Metered {
        endpoint: Endpoint,
        model: Option<String>,
    },
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
            let api = provider::path_api(raw)
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
    if let Some(route) = provider::route(Method::of(method), bare, hint) {
        return route;
    }
    if let Some(api) = passthrough_api(bare, passthrough) {
        return Route::Identity(api);
    }
    Route::NotFound(provider::path_api(bare).unwrap_or(hint))
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
}

/// An error body in the format of `api`, so the provider SDKs raise their usual exceptions.
pub fn error_body(api: Api, reason: Reason, message: &str) -> String {
    provider::of(api).error_body(reason, &json_string(message))
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests;
