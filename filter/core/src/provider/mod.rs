//! The provider layer: one file per upstream provider holds everything tollgate knows about
//! it (its paths, how its credential is sent and which client headers scope one, its
//! rate-limit headers, its error bodies, its invalid-key evidence and its stream-error
//! classes); this module holds the types they share and dispatches on [`Api`].
//!
//! A provider is a [`Provider`]; [`of`] gives the one of an API and [`ALL`] lists them, in
//! the order their facts are tried. Adding one is a new file here plus its line in `ALL`.
//! A provider whose clients speak another's API (Azure OpenAI, Bedrock, Anthropic OAuth
//! accounts) says so in `api()` and reuses that API's endpoints and error bodies; what
//! differs is how it is reached (credential, headers, path, rate-limit and error answers).

mod anthropic;
mod gemini;
mod openai;

use crate::api::{Api, Reason, Route};

/// A metered endpoint: the request and response formats tollgate reads. Providers that
/// speak another provider's format (an OpenAI-compatible server, a gateway) reuse its
/// endpoints; only a new wire format would add one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/completions` (vLLM and other OpenAI-compatible servers).
    Completions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// Gemini `POST /v1beta/models/{model}:generateContent` (or `/v1/...`).
    GenerateContent,
    /// Gemini `POST /v1beta/models/{model}:streamGenerateContent` (or `/v1/...`).
    StreamGenerateContent,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Messages,
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::GenerateContent,
        Endpoint::StreamGenerateContent,
    ];

    /// The API whose format the endpoint speaks.
    pub fn api(self) -> Api {
        match self {
            Endpoint::Messages => Api::Anthropic,
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses => Api::OpenAi,
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => Api::Gemini,
        }
    }
}

/// The request method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

impl Method {
    pub fn of(method: &str) -> Method {
        if method.eq_ignore_ascii_case("POST") {
            Method::Post
        } else if method.eq_ignore_ascii_case("GET") {
            Method::Get
        } else {
            Method::Other
        }
    }
}

/// What a provider's rate-limit response header reports (the name after the provider's
/// prefix, lowercased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateHeader<'a> {
    /// Headroom of one dimension (`requests`, `tokens`, `input-tokens`, `output-tokens`):
    /// `field` is `remaining`, `limit` or `reset`.
    Dim { dim: &'a str, field: &'a str },
    /// Anthropic's unified (subscription) limit: its `status` or `reset` (`window` `None`),
    /// or one named window's (`5h`, `7d`, …).
    Unified {
        window: Option<&'a str>,
        field: &'a str,
    },
}

/// The class of an error reported inside a 200 stream; it affects account health like the
/// HTTP status would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    RateLimited,
    Overloaded,
    Other,
}

/// The names an error event carries: its `type`, its `code` (a string, or a number in
/// `code_num`) and its `status`, as the provider wrote them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorNames<'a> {
    pub kind: Option<&'a str>,
    pub code: Option<&'a str>,
    pub code_num: u64,
    pub status: Option<&'a str>,
}

/// How a provider names a class of stream error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A name (type, code or status) holding this text.
    Contains(&'static str),
    /// A name equal to this text.
    Is(&'static str),
    /// This numeric code.
    Code(u64),
}

impl ErrorNames<'_> {
    fn has(&self, marker: Marker) -> bool {
        let names = [self.kind, self.code, self.status];
        let any = |f: &dyn Fn(&str) -> bool| names.iter().flatten().any(|n| f(n));
        match marker {
            Marker::Contains(text) => any(&|n| n.contains(text)),
            Marker::Is(text) => any(&|n| n == text),
            Marker::Code(code) => self.code_num == code,
        }
    }
}

/// Everything tollgate knows about one provider. Methods with a default are facts most
/// providers do not have.
pub trait Provider: Sync {
    /// The API its clients speak (and the `provider` of its accounts).
    fn api(&self) -> Api;

    // ---- paths -------------------------------------------------------------------------

    /// The route of `bare` (percent-decoded, normal, not the admin path) if this provider
    /// serves it: a metered endpoint, an identity-only path, or a path it refuses.
    fn route(&self, method: Method, bare: &str) -> Option<Route>;

    /// Whether an unserved path clearly belongs to this API (its 404 and 400 then speak
    /// this API's format whatever the client's headers suggest).
    fn owns_path(&self, _bare: &str) -> bool {
        false
    }

    /// Whether a `passthrough_paths` prefix that names no `api` belongs to this one.
    fn owns_passthrough_prefix(&self, _prefix: &str) -> bool {
        false
    }

    /// The paths it serves, which `admin.path` must not cover.
    fn served_paths(&self) -> &'static [&'static str];

    // ---- credentials -------------------------------------------------------------------

    /// The header its credential travels in (clients send theirs there too).
    fn credential_header(&self) -> &'static str;

    /// The credential header for an account's key, with its value.
    fn credential(&self, key: &str) -> (&'static str, String) {
        (self.credential_header(), key.to_string())
    }

    /// Client headers that scope or re-target a credential (an organization, a project).
    fn scoping_headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// Headers sent with a pooled key when the client sent none.
    fn default_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    // ---- rate limits -------------------------------------------------------------------

    /// The prefix of its own rate-limit response headers.
    fn rate_limit_prefix(&self) -> Option<&'static str> {
        None
    }

    /// What a rate-limit header reports, from its name after the prefix (lowercased).
    fn rate_header<'a>(&self, _rest: &'a str) -> Option<RateHeader<'a>> {
        None
    }

    // ---- errors ------------------------------------------------------------------------

    /// tollgate's own error answer in this API's format; `message` is a JSON string
    /// literal (quoted and escaped).
    fn error_body(&self, reason: Reason, message: &str) -> String;

    /// Whether an error answer (`body`: at most its first 64 KB, decoded) is the provider
    /// saying the key itself is invalid; see `key_evidence`.
    fn key_invalid(&self, status: u32, body: &[u8]) -> bool;

    /// How its stream error events name each class.
    fn stream_errors(&self) -> &'static [(Marker, StreamError)];
}

/// Every provider, in the order their facts are tried (paths are disjoint, so the order
/// only decides the order of header lists).
pub static ALL: [&dyn Provider; 3] = [&anthropic::Anthropic, &openai::OpenAi, &gemini::Gemini];

/// The provider of `api`.
pub fn of(api: Api) -> &'static dyn Provider {
    match api {
        Api::Anthropic => &anthropic::Anthropic,
        Api::OpenAi => &openai::OpenAi,
        Api::Gemini => &gemini::Gemini,
    }
}

// ---- paths ------------------------------------------------------------------------------

/// Every API's model list (`GET /v1/models`, and `/v1/models/{model}`).
const MODEL_LIST: &str = "/v1/models";

/// The route of a served path (decoded, normal, not the admin path), or `None` (then it is
/// a pass-through path or not served). `hint`: the API the client's headers suggest, which
/// answers the model list.
pub fn route(method: Method, bare: &str, hint: Api) -> Option<Route> {
    // Before any provider: a GET of `/v1/models/...` is the model list of whichever API the
    // client speaks, Gemini's `/v1/models/{model}` included.
    if method == Method::Get
        && bare
            .strip_prefix(MODEL_LIST)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        return Some(Route::Identity(hint));
    }
    ALL.iter().find_map(|p| p.route(method, bare))
}

/// The API an unserved path clearly belongs to, if any.
pub fn path_api(bare: &str) -> Option<Api> {
    ALL.iter().find(|p| p.owns_path(bare)).map(|p| p.api())
}

/// The API of a `passthrough_paths` prefix that names none: the provider that owns it,
/// else OpenAI (the format of every other compatible server).
pub fn default_passthrough_api(prefix: &str) -> Api {
    ALL.iter()
        .find(|p| p.owns_passthrough_prefix(prefix))
        .map_or(Api::OpenAi, |p| p.api())
}

/// Whether `prefix` (an `admin.path`) would cover a path the providers serve.
pub fn covers_api_path(prefix: &str) -> bool {
    let served = ALL.iter().flat_map(|p| p.served_paths().iter());
    [MODEL_LIST].iter().chain(served).any(|path| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

// ---- credentials ------------------------------------------------------------------------

/// Headers a client may carry a credential in: all are removed before the upstream when
/// accounts are configured.
pub fn client_credential_headers() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|p| p.credential_header())
}

/// Client headers that scope or re-target a credential (an organization, a project, a
/// billed project), of every provider: removed before the upstream whenever a pooled key is
/// used, so one client cannot make the provider refuse, or bill elsewhere, the key every
/// consumer shares. The config's `strip_request_headers` adds to them; an account's own
/// `headers` are set after.
pub fn scoping_headers() -> impl Iterator<Item = &'static str> {
    ALL.iter().flat_map(|p| p.scoping_headers().iter().copied())
}

// ---- rate limits ------------------------------------------------------------------------

/// Whether a response header (name in any case) is a provider's own rate-limit report,
/// which describes the pooled account and not the caller: read for health, then removed
/// (SPEC "HTTP behaviour"). Every provider's prefix counts, whichever answered.
pub fn is_rate_limit_header(name: &str) -> bool {
    ALL.iter()
        .any(|p| strip_prefix_ignore_case(name, p.rate_limit_prefix()).is_some())
}

/// What a provider's rate-limit header reports; `name` is lowercased.
pub fn rate_header(name: &str) -> Option<RateHeader<'_>> {
    for p in ALL {
        if let Some(rest) = strip_prefix_ignore_case(name, p.rate_limit_prefix()) {
            return p.rate_header(rest);
        }
    }
    None
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let prefix = prefix?;
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| name.get(prefix.len()..))
        .flatten()
}

// ---- errors -----------------------------------------------------------------------------

/// The class of a stream error event. Any provider's names count, whichever stream carries
/// them (OpenAI-compatible servers and gateways mix them); a rate limit wins over an
/// overload.
pub fn classify_stream_error(names: &ErrorNames<'_>) -> StreamError {
    let mut class = StreamError::Other;
    for p in ALL {
        for &(marker, c) in p.stream_errors() {
            if names.has(marker) {
                match c {
                    StreamError::RateLimited => return c,
                    StreamError::Overloaded => class = c,
                    StreamError::Other => {}
                }
            }
        }
    }
    class
}

#[cfg(test)]
mod tests;
