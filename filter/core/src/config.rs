//! The filter's configuration (SPEC "Configuration"), parsed and validated once in
//! `on_configure` into plain structs; a bad one is reported as `<field path>: <reason>`.
//! Durations, globs, keys and secrets get newtypes so no other module handles raw strings.
//!
//! Layout: this file holds the result (`Config` and its parts) and the entry points;
//! `newtypes` the durations, globs, secrets and keys; `node` the document tree with typed,
//! path-naming getters; `parse` the walk from the tree to a `Config` with every check.
//!
//! Adding a field `x` to a section takes three edits: its name in the section's `Obj::new` list
//! (the list the "unknown field, expected one of …" reason prints), the struct field, and its
//! read-and-check expression in the section's struct literal
//! (`x: match obj.get("x") { Some(n) => …, None => default }`). At the top level the read is
//! `if let Some(n) = top.get("x") { cfg.x = …; }` over `Config::default()`, the one place a
//! top-level default lives (a fourth edit, which a top-level field always needed).
//!
//! Why not serde derive: a derived version (document structs with `deny_unknown_fields`, a
//! path-naming deserializer over the same tree, then a validation pass) said the same messages
//! but made the wasm 41.5 KB larger (39 KB after wasm-opt) and reported a different fault first
//! when a document has several.

use crate::api::Api;
use crate::limits::{Limit, Price};
use std::fmt;

mod newtypes;
mod node;
mod parse;

pub(crate) use newtypes::KNOWN_KEY_PREFIXES;
pub use newtypes::{Duration, Glob, KeyMatcher, Secret};

/// `max_body_bytes` when the configuration sets none: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// The largest `max_body_bytes` accepted: 1 GiB.
pub const MAX_BODY_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// `selection.affinity.max_sessions` (and the size of the other client-keyed tables) by default.
pub const DEFAULT_MAX_SESSIONS: u32 = 65_536;
/// The largest `max_sessions` accepted.
pub const MAX_SESSIONS_LIMIT: u32 = 1_048_576;
/// `estimate.output_reserve` by default.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 1024;
/// `lease_ttl` by default: a concurrency lease not renewed for 90 s frees itself.
pub const DEFAULT_LEASE_TTL_MS: u64 = 90_000;
/// `accounts[].disable_for` by default: a disabled account rests 10 minutes before a probe.
pub const DEFAULT_DISABLE_FOR_MS: u64 = 600_000;
/// `admin.path` by default.
pub const DEFAULT_ADMIN_PATH: &str = "/tollgate";
/// `metrics.max_models` by default: distinct model label values per process before `other`.
pub const DEFAULT_MAX_MODELS: u32 = 50;
/// The largest `metrics.max_models` accepted (each value mints a few stats per consumer).
pub const MAX_MODELS_LIMIT: u64 = 1000;
/// The consumer name requests run under when `anonymous` is set (reserved then).
pub const ANONYMOUS: &str = "anonymous";

// ---------------------------------------------------------------------------------------------
// The result
// ---------------------------------------------------------------------------------------------

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub stage: Stage,
    pub consumers: Vec<Consumer>,
    /// Lowercased header name carrying a consumer name set by a trusted filter. It may be set
    /// together with consumer `keys`: a request presenting a known key is that key's consumer;
    /// otherwise the header names the consumer (a name matching no consumer gets 403, or runs
    /// as `anonymous` when that is configured). Consumers without keys are only reachable
    /// through this header.
    pub consumer_header: Option<String>,
    /// `None`: a request with no known key gets 401.
    pub anonymous: Option<Anonymous>,
    /// Default limits, for consumers that list none.
    pub limits: Vec<Limit>,
    pub accounts: Vec<Account>,
    pub selection: Selection,
    pub global: Option<Global>,
    pub estimate: EstimateCfg,
    /// The configured entries in their order, then the built-in table, then configured `"*"`
    /// defaults: the first match wins (see `pricing::with_builtins`).
    pub pricing: Vec<(Glob, Price)>,
    pub admin: Option<Admin>,
    /// Extra path prefixes proxied with identity only, each starting with `/`, with the API
    /// whose first healthy account serves them.
    pub passthrough_paths: Vec<Passthrough>,
    pub max_body_bytes: u64,
    /// Extra lowercased client headers removed before the upstream when a pooled key is used
    /// (besides the built-in credential-scoping ones).
    pub strip_request_headers: Vec<String>,
    /// The consumer's name from a JWT payload that Envoy's `jwt_authn` verified.
    pub consumer_claim: Option<ConsumerClaim>,
    /// How long a concurrency lease lives without renewal (default 90s).
    pub lease_ttl: Duration,
    /// `metrics.max_models`: distinct model label values per process before `other`.
    pub max_models: u32,
    /// Whether the per-request filter-state facts that only an access log reads are written
    /// (default true); false skips them (see `facts::logged_only`).
    pub access_log_facts: bool,
}

/// A `passthrough_paths` entry: a path prefix and the API it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passthrough {
    pub prefix: String,
    pub api: Api,
}

/// Where `consumer_claim` reads the consumer's name: `jwt_authn`'s `payload_in_metadata`
/// entry and the claim in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerClaim {
    pub metadata: String,
    pub claim: String,
}

impl Config {
    /// The first pricing entry (configured, then built-in) whose glob matches `model`.
    pub fn price_for(&self, model: &str) -> Option<(&Glob, &Price)> {
        self.pricing_index(model)
            .and_then(|i| self.pricing.get(i))
            .map(|(glob, price)| (glob, price))
    }

    /// Where in `pricing` the entry of `price_for` is (for a caller that keeps the match).
    pub fn pricing_index(&self, model: &str) -> Option<usize> {
        self.pricing
            .iter()
            .position(|(glob, _)| glob.matches(model))
    }

    /// Size of each bounded table keyed by a client-chosen value (sessions, `consumer_header`
    /// names, learned models): `selection.affinity.max_sessions`, else 65536.
    pub fn max_sessions(&self) -> u32 {
        self.selection
            .affinity
            .as_ref()
            .map_or(DEFAULT_MAX_SESSIONS, |a| a.max_sessions)
    }
}

impl Default for Config {
    /// What the empty configuration `{}` means.
    fn default() -> Self {
        Config {
            stage: Stage::Downstream,
            consumers: Vec::new(),
            consumer_header: None,
            anonymous: None,
            limits: Vec::new(),
            accounts: Vec::new(),
            selection: Selection::default(),
            global: None,
            estimate: EstimateCfg::default(),
            pricing: crate::pricing::builtin_pricing(),
            admin: None,
            passthrough_paths: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            strip_request_headers: Vec::new(),
            consumer_claim: None,
            lease_ttl: Duration::from_millis(DEFAULT_LEASE_TTL_MS),
            max_models: DEFAULT_MAX_MODELS,
            access_log_facts: true,
        }
    }
}

/// Where the filter instance sits (SPEC "Stages and shared state").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// In the HTTP connection manager's chain: identity, quotas, metering.
    #[default]
    Downstream,
    /// In a cluster's upstream `http_filters`: account work per retry attempt.
    Upstream,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Downstream => "downstream",
            Stage::Upstream => "upstream",
        }
    }
}

/// A client of the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// `[A-Za-z0-9_.-]{1,64}`: it goes into shared-data keys and metric names.
    pub name: String,
    /// Empty only when `consumer_header` is set.
    pub keys: Vec<KeyMatcher>,
    /// The effective limits: the consumer's own, or the defaults when it lists none.
    pub limits: Vec<Limit>,
    /// True when `limits` are the defaults (the consumer listed none).
    pub default_limits: bool,
    /// Allow-list of model globs; `None` allows every model.
    pub models: Option<Vec<Glob>>,
}

impl Consumer {
    /// Whether the presented key's digest is one of this consumer's keys. Every key is
    /// compared, so timing does not tell which one matched.
    pub fn has_key(&self, presented_digest: &[u8; 32]) -> bool {
        self.keys
            .iter()
            .fold(false, |found, k| k.matches(presented_digest) | found)
    }

    /// Whether `model` may be requested (403 otherwise): always, without an allow-list.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| g.matches(model)))
    }

    /// The allow-list glob admitting `model`, if there is an allow-list and one matches.
    pub fn model_glob(&self, model: &str) -> Option<&Glob> {
        self.models.as_ref()?.iter().find(|g| g.matches(model))
    }
}

/// Requests with no known key run as consumer `anonymous` under these limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Anonymous {
    /// The effective limits: `anonymous.limits`, or the defaults when it lists none.
    pub limits: Vec<Limit>,
    /// True when `limits` are the defaults.
    pub default_limits: bool,
}

/// An upstream credential.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// `[A-Za-z0-9_.-]{1,64}`, unique among accounts.
    pub name: String,
    /// The API it serves; decides the credential header.
    pub provider: Api,
    pub key: Secret,
    /// Extra headers set with the key: lowercased names, values free of control characters.
    pub headers: Vec<(String, String)>,
    /// Written to `x-tollgate-route` (downstream stage only).
    pub route: Option<String>,
    /// 1..=1_000_000, default 1.
    pub weight: u32,
    /// Local limits of the account itself.
    pub limits: Vec<Limit>,
    /// How long a disabled account rests before one probe request (default 10m).
    pub disable_for: Duration,
}

/// How an account is chosen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selection {
    pub strategy: Strategy,
    pub affinity: Option<Affinity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The healthy account with the most headroom relative to its weight.
    #[default]
    LeastLoaded,
    RoundRobin,
    /// First healthy account in list order.
    Priority,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastLoaded => "least_loaded",
            Strategy::RoundRobin => "round_robin",
            Strategy::Priority => "priority",
        }
    }
}

/// Keeping a session on one account.
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    /// Lowercased header whose value names the session.
    pub header: Option<String>,
    /// Without the header, fingerprint model + system prompt + first user message.
    pub conversation: bool,
    /// Default 5h.
    pub ttl: Duration,
    /// Default 65536, 1..=1_048_576.
    pub max_sessions: u32,
}

/// The external rate-limit service.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Envoy cluster name (gRPC, HTTP/2).
    pub cluster: String,
    /// Default `tollgate`.
    pub domain: String,
    /// Default 50ms.
    pub timeout: Duration,
    pub failure_mode: FailureMode,
}

/// What to do when the rate-limit service errs or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Admit, keeping the local limits.
    #[default]
    Allow,
    /// Answer 503.
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstimateCfg {
    /// Output tokens reserved at admission when the request's `max_tokens` is above it or absent.
    pub output_reserve: u64,
}

impl Default for EstimateCfg {
    fn default() -> Self {
        EstimateCfg {
            output_reserve: DEFAULT_OUTPUT_RESERVE,
        }
    }
}

/// The filter's own endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Starts with `/`, does not end with `/`; default `/tollgate`.
    pub path: String,
    /// Never empty.
    pub keys: Vec<KeyMatcher>,
}

impl Admin {
    /// Whether the presented key's digest is an admin key (every key compared).
    pub fn accepts(&self, presented_digest: &[u8; 32]) -> bool {
        self.keys
            .iter()
            .fold(false, |found, k| k.matches(presented_digest) | found)
    }
}

/// A configuration error: the field path (empty for the document itself) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(path: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        reason: reason.into(),
    }
}
// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Parses and validates a configuration, reading `key_env` from the process environment.
pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(json, &|name| std::env::var(name).ok())
}

/// Parses and validates a configuration; `env` looks up the VM environment for `key_env`.
/// Empty input (only whitespace) means `{}`.
pub fn parse_with_env(
    json: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let root: node::Node = if json.iter().all(u8::is_ascii_whitespace) {
        node::Node::Object(Vec::new())
    } else {
        serde_json::from_slice(json)
            .map_err(|e| err("", format!("configuration is not valid JSON: {e}")))?
    };
    if !matches!(root, node::Node::Object(_)) {
        return Err(err(
            "",
            format!("configuration must be a JSON object, got {}", root.kind()),
        ));
    }
    parse::config(&root, env)
}

/// JSON spelling of a string, for quoting values in reasons (escapes control characters).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[cfg(test)]
mod tests;
