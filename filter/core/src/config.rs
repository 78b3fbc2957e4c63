//! The filter's configuration (SPEC "Configuration"), parsed and validated once in
//! `on_configure` into plain structs; a bad one is reported as `<field path>: <reason>`.
//! Durations, globs, keys and secrets get newtypes so no other module handles raw strings.

use crate::api::Api;
use crate::limits::{Limit, LimitKind, Per, Price, WindowKind};
use node::Node;
use sha2::{Digest, Sha256};
use std::fmt;

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
/// `metrics.max_models` by default: distinct model label values per process before `other`.
pub const DEFAULT_MAX_MODELS: u32 = 50;
/// The largest `metrics.max_models` accepted (each value mints a few stats per consumer).
pub const MAX_MODELS_LIMIT: u64 = 1000;
/// `accounts[].disable_for` by default: a disabled account rests 10 minutes before a probe.
pub const DEFAULT_DISABLE_FOR_MS: u64 = 600_000;
/// `admin.path` by default.
pub const DEFAULT_ADMIN_PATH: &str = "/tollgate";
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
    /// otherwise the header names the consumer (a name matching no consumer runs under the
    /// default `limits`). Consumers without keys are only reachable through this header.
    pub consumer_header: Option<String>,
    /// `None`: a request with no known key gets 401.
    pub anonymous: Option<Anonymous>,
    /// Default limits, for consumers that list none and for unlisted `consumer_header` names.
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
// Newtypes
// ---------------------------------------------------------------------------------------------

/// A configured duration, in milliseconds. Written `"250ms"`, `"30s"`, `"5m"`, `"5h"`, `"1d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Duration {
    pub const fn from_millis(millis: u64) -> Self {
        Duration(millis)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds, rounded up.
    pub const fn secs_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }

    /// Parses `<digits><unit>` with unit `ms`, `s`, `m`, `h` or `d`; zero is refused.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "expected a duration like \"250ms\", \"30s\", \"5m\", \"5h\" or \"1d\", got {}",
                quote(text)
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let scale: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| "is too long".to_string())?;
        let millis = n
            .checked_mul(scale)
            .ok_or_else(|| "is too long".to_string())?;
        if millis == 0 {
            return Err("must be greater than zero".to_string());
        }
        Ok(Duration(millis))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact spelling, as the configuration would write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (scale, unit) in [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ] {
            if ms != 0 && ms % scale == 0 {
                return write!(f, "{}{unit}", ms / scale);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A model glob: `*` matches any run of characters, `?` exactly one; everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("a glob must not be empty".to_string());
        }
        if pattern.chars().any(char::is_control) {
            return Err("a glob must not contain control characters".to_string());
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches. Iterative, remembering only the last `*` to backtrack to, so it
    /// runs in O(pattern × text) at worst with no allocation (no exponential blow-up).
    pub fn matches(&self, text: &str) -> bool {
        let p = self.0.as_bytes();
        let t = text.as_bytes();
        let (mut pi, mut ti) = (0usize, 0usize);
        // (pattern index just after the last `*`, text index that `*` has swallowed up to)
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    pi += 1;
                    star = Some((pi, ti));
                    continue;
                }
                Some(b'?') => {
                    pi += 1;
                    ti += utf8_len_at(t, ti);
                    continue;
                }
                Some(c) if t.get(ti) == Some(c) => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((after_star, swallowed)) => {
                    // Let the `*` swallow one more character and retry the rest from there.
                    let next = swallowed + utf8_len_at(t, swallowed);
                    star = Some((after_star, next));
                    pi = after_star;
                    ti = next;
                }
                None => return false,
            }
        }
        p.get(pi..)
            .is_some_and(|rest| rest.iter().all(|&b| b == b'*'))
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Length of the UTF-8 character starting at `i` (1 past the end), so `?` and `*` step over
/// whole characters and indices stay on character boundaries.
fn utf8_len_at(t: &[u8], i: usize) -> usize {
    match t.get(i) {
        Some(&b) if b >= 0xF0 => 4,
        Some(&b) if b >= 0xE0 => 3,
        Some(&b) if b >= 0xC0 => 2,
        _ => 1,
    }
}

/// An upstream credential. `Debug` and `Display` print a mask (`sk-ant-…x7Qa`), never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Public key prefixes of the providers, longest first; shown in masks because they only say
/// which kind of key it is.
const KNOWN_KEY_PREFIXES: &[&str] = &["sk-ant-", "sk-proj-", "sk-", "AIza"];

impl Secret {
    pub fn new(key: impl Into<String>) -> Secret {
        Secret(key.into())
    }

    /// The key itself: only for writing the credential header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `<known prefix>…<last 4>`; the last four only when at least 12 other characters stay
    /// hidden, so a short key is never half-revealed.
    pub fn mask(&self) -> String {
        let key = self.0.as_str();
        let prefix = KNOWN_KEY_PREFIXES
            .iter()
            .copied()
            .find(|p| key.starts_with(p) && key.len() > p.len())
            .unwrap_or("");
        let chars = key.chars().count();
        let mut out = String::with_capacity(prefix.len() + 8);
        out.push_str(prefix);
        out.push('…');
        if chars >= prefix.len() + 4 + 12 {
            out.extend(key.chars().skip(chars - 4));
        }
        out
    }
}

impl Secret {
    /// `text` with every occurrence of the key replaced by a mask of the same length (the
    /// known prefix, `*`s, the last four when at least 12 characters stay hidden), or `None`
    /// when the key does not occur. The same length lets a body whose `content-length` has
    /// already gone out be rewritten in place.
    pub fn redact(&self, text: &[u8]) -> Option<Vec<u8>> {
        let key = self.0.as_bytes();
        if key.is_empty() || text.len() < key.len() || !text.windows(key.len()).any(|w| w == key) {
            return None;
        }
        let prefix = KNOWN_KEY_PREFIXES
            .iter()
            .find(|p| key.starts_with(p.as_bytes()) && key.len() > p.len())
            .map_or(0, |p| p.len());
        let tail = if key.len() >= prefix + 4 + 12 { 4 } else { 0 };
        let mask: Vec<u8> = key
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i < prefix || i + tail >= key.len() {
                    *b
                } else {
                    b'*'
                }
            })
            .collect();
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        while at < text.len() {
            if text.get(at..at + key.len()) == Some(key) {
                out.extend_from_slice(&mask);
                at += key.len();
            } else {
                out.extend(text.get(at).copied());
                at += 1;
            }
        }
        Some(out)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.mask())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mask())
    }
}

/// A client or admin key, held only as its SHA-256 digest. Configured as `sha256:<64 hex>` or
/// as the plain key (hashed at load). Matching hashes the presented key once
/// ([`KeyMatcher::digest`]) and compares digests in constant time.
#[derive(Clone)]
pub struct KeyMatcher([u8; 32]);

impl KeyMatcher {
    /// The digest a presented key is compared by.
    pub fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    pub fn from_digest(digest: [u8; 32]) -> KeyMatcher {
        KeyMatcher(digest)
    }

    pub fn from_plain(key: &str) -> KeyMatcher {
        KeyMatcher(Self::digest(key))
    }

    /// `sha256:<64 hex digits>` or a plain key of printable ASCII without spaces. The reason
    /// never repeats the key.
    pub fn parse(text: &str) -> Result<KeyMatcher, String> {
        if let Some(hex) = text.strip_prefix("sha256:") {
            let mut digest = [0u8; 32];
            let bytes = hex.as_bytes();
            if bytes.len() != 64 {
                return Err("a sha256: key needs exactly 64 hex digits".to_string());
            }
            for (i, out) in digest.iter_mut().enumerate() {
                let hi = bytes.get(2 * i).copied().and_then(hex_value);
                let lo = bytes.get(2 * i + 1).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => *out = (hi << 4) | lo,
                    _ => return Err("a sha256: key needs exactly 64 hex digits".to_string()),
                }
            }
            return Ok(KeyMatcher(digest));
        }
        check_key_text(text)?;
        Ok(Self::from_plain(text))
    }

    /// Constant-time comparison with a presented key's digest.
    pub fn matches(&self, presented_digest: &[u8; 32]) -> bool {
        ct_eq(&self.0, presented_digest)
    }
}

impl PartialEq for KeyMatcher {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for KeyMatcher {}

impl fmt::Debug for KeyMatcher {
    /// Not even the digest: for a short plain key it would allow a brute-force search.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMatcher(…)")
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the loop into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Keys travel in headers: printable ASCII, no spaces. The reason never repeats the key.
fn check_key_text(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".to_string());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "a key must be printable ASCII without spaces or control characters".to_string(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parsing
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
    let root: Node = if json.iter().all(u8::is_ascii_whitespace) {
        Node::Object(Vec::new())
    } else {
        serde_json::from_slice(json)
            .map_err(|e| err("", format!("configuration is not valid JSON: {e}")))?
    };
    if !matches!(root, Node::Object(_)) {
        return Err(err(
            "",
            format!("configuration must be a JSON object, got {}", root.kind()),
        ));
    }
    let top = Obj::new(
        &root,
        "",
        &[
            "stage",
            "consumers",
            "consumer_header",
            "anonymous",
            "limits",
            "accounts",
            "selection",
            "global",
            "estimate",
            "pricing",
            "admin",
            "passthrough_paths",
            "max_body_bytes",
            "strip_request_headers",
            "consumer_claim",
            "lease_ttl",
            "metrics",
        ],
    )?;

    let stage = match top.get("stage") {
        Some(n) => one_of(
            n,
            &top.path("stage"),
            &[
                ("downstream", Stage::Downstream),
                ("upstream", Stage::Upstream),
            ],
        )?,
        None => Stage::Downstream,
    };
    let limits = match top.get("limits") {
        Some(n) => parse_limits(n, &top.path("limits"))?,
        None => Vec::new(),
    };
    let consumer_header = match top.get("consumer_header") {
        Some(n) => {
            let path = top.path("consumer_header");
            Some(header_name(as_str(n, &path)?).map_err(|r| err(&path, r))?)
        }
        None => None,
    };
    let anonymous = match top.get("anonymous") {
        Some(n) => Some(parse_anonymous(n, &top.path("anonymous"), &limits)?),
        None => None,
    };
    let consumers = match top.get("consumers") {
        Some(n) => parse_consumers(
            n,
            &top.path("consumers"),
            &limits,
            consumer_header.is_some() || top.get("consumer_claim").is_some(),
            anonymous.is_some(),
        )?,
        None => Vec::new(),
    };
    let accounts = match top.get("accounts") {
        Some(n) => parse_accounts(n, &top.path("accounts"), stage, env)?,
        None => Vec::new(),
    };
    let selection = match top.get("selection") {
        Some(n) => parse_selection(n, &top.path("selection"))?,
        None => Selection::default(),
    };
    let global = match top.get("global") {
        Some(n) => Some(parse_global(n, &top.path("global"))?),
        None => None,
    };
    let estimate = match top.get("estimate") {
        Some(n) => {
            let obj = Obj::new(n, &top.path("estimate"), &["output_reserve"])?;
            EstimateCfg {
                output_reserve: match obj.get("output_reserve") {
                    Some(n) => as_uint(n, &obj.path("output_reserve"))?,
                    None => DEFAULT_OUTPUT_RESERVE,
                },
            }
        }
        None => EstimateCfg::default(),
    };
    let pricing = crate::pricing::with_builtins(match top.get("pricing") {
        Some(n) => parse_pricing(n, &top.path("pricing"))?,
        None => Vec::new(),
    });
    let admin = match top.get("admin") {
        Some(n) => Some(parse_admin(n, &top.path("admin"))?),
        None => None,
    };
    let passthrough_paths = match top.get("passthrough_paths") {
        Some(n) => {
            let path = top.path("passthrough_paths");
            let mut out = Vec::new();
            for (i, item) in as_array(n, &path)?.iter().enumerate() {
                out.push(parse_passthrough(item, &index_path(&path, i))?);
            }
            out
        }
        None => Vec::new(),
    };
    let max_body_bytes = match top.get("max_body_bytes") {
        Some(n) => {
            let path = top.path("max_body_bytes");
            let v = as_uint(n, &path)?;
            if !(1..=MAX_BODY_BYTES_LIMIT).contains(&v) {
                return Err(err(
                    &path,
                    format!("must be between 1 and {MAX_BODY_BYTES_LIMIT} (1 GiB), got {v}"),
                ));
            }
            v
        }
        None => DEFAULT_MAX_BODY_BYTES,
    };
    let strip_request_headers = match top.get("strip_request_headers") {
        Some(n) => {
            let path = top.path("strip_request_headers");
            let mut out: Vec<String> = Vec::new();
            for (i, item) in as_array(n, &path)?.iter().enumerate() {
                let ipath = index_path(&path, i);
                let h = header_name(as_str(item, &ipath)?).map_err(|r| err(&ipath, r))?;
                if h.starts_with(':') || RESERVED_ACCOUNT_HEADERS.contains(&h.as_str()) {
                    return Err(err(&ipath, "this header cannot be stripped"));
                }
                if !out.contains(&h) {
                    out.push(h);
                }
            }
            out
        }
        None => Vec::new(),
    };
    let consumer_claim = match top.get("consumer_claim") {
        Some(n) => {
            let path = top.path("consumer_claim");
            let obj = Obj::new(n, &path, &["metadata", "claim"])?;
            let field = |name: &str, default: Option<&str>| -> Result<String, ConfigError> {
                let fpath = obj.path(name);
                let v = match (obj.get(name), default) {
                    (Some(n), _) => as_str(n, &fpath)?,
                    (None, Some(d)) => d,
                    (None, None) => return Err(err(&fpath, "missing required field")),
                };
                if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(err(
                        &fpath,
                        format!(
                            "expected 1 to 128 printable ASCII characters, got {}",
                            quote(v)
                        ),
                    ));
                }
                Ok(v.to_string())
            };
            Some(ConsumerClaim {
                metadata: field("metadata", None)?,
                claim: field("claim", Some("sub"))?,
            })
        }
        None => None,
    };
    if consumer_claim.is_some() && consumer_header.is_some() {
        return Err(err(
            "consumer_claim",
            "set only one of consumer_claim and consumer_header",
        ));
    }
    let lease_ttl = match top.get("lease_ttl") {
        Some(n) => {
            let path = top.path("lease_ttl");
            let d = as_duration(n, &path)?;
            // A lease renews at a third of its life: shorter would write on every chunk.
            if d.millis() < 1_000 {
                return Err(err(&path, "must be at least 1s"));
            }
            d
        }
        None => Duration::from_millis(DEFAULT_LEASE_TTL_MS),
    };
    let max_models = match top.get("metrics") {
        Some(n) => {
            let obj = Obj::new(n, &top.path("metrics"), &["max_models"])?;
            match obj.get("max_models") {
                Some(n) => {
                    let path = obj.path("max_models");
                    let v = as_uint(n, &path)?;
                    if v > MAX_MODELS_LIMIT {
                        return Err(err(
                            &path,
                            format!("must be at most {MAX_MODELS_LIMIT}, got {v}"),
                        ));
                    }
                    v as u32
                }
                None => DEFAULT_MAX_MODELS,
            }
        }
        None => DEFAULT_MAX_MODELS,
    };

    Ok(Config {
        stage,
        consumers,
        consumer_header,
        anonymous,
        limits,
        accounts,
        selection,
        global,
        estimate,
        pricing,
        admin,
        passthrough_paths,
        max_body_bytes,
        strip_request_headers,
        consumer_claim,
        lease_ttl,
        max_models,
    })
}

/// A `passthrough_paths` entry: a prefix (its API inferred from it) or
/// `{"prefix": "...", "api": "anthropic|openai|gemini"}`.
fn parse_passthrough(item: &Node, path: &str) -> Result<Passthrough, ConfigError> {
    let (prefix, api) = match item {
        Node::Object(_) => {
            let obj = Obj::new(item, path, &["prefix", "api"])?;
            let ppath = obj.path("prefix");
            let prefix = match obj.get("prefix") {
                Some(n) => as_str(n, &ppath)?,
                None => return Err(err(&ppath, "missing required field")),
            };
            let api = match obj.get("api") {
                Some(n) => Some(one_of(
                    n,
                    &obj.path("api"),
                    &[
                        ("anthropic", Api::Anthropic),
                        ("openai", Api::OpenAi),
                        ("gemini", Api::Gemini),
                    ],
                )?),
                None => None,
            };
            check_path_prefix(prefix).map_err(|r| err(&ppath, r))?;
            (prefix, api)
        }
        _ => {
            let p = as_str(item, path)?;
            check_path_prefix(p).map_err(|r| err(path, r))?;
            (p, None)
        }
    };
    Ok(Passthrough {
        prefix: prefix.to_string(),
        api: api.unwrap_or_else(|| passthrough_api(prefix)),
    })
}

/// The API a pass-through prefix belongs to when the entry does not say: `/v1beta/` is
/// Gemini, `/v1/messages`… and `/v1/complete` are Anthropic, any other path OpenAI.
fn passthrough_api(prefix: &str) -> Api {
    if prefix.starts_with("/v1beta/") || prefix == "/v1beta" {
        Api::Gemini
    } else if prefix.starts_with("/v1/messages")
        || prefix.starts_with("/v1/complete") && !prefix.starts_with("/v1/completions")
    {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

#[inline(never)]
fn parse_anonymous(node: &Node, path: &str, defaults: &[Limit]) -> Result<Anonymous, ConfigError> {
    let obj = Obj::new(node, path, &["limits"])?;
    let own = match obj.get("limits") {
        Some(n) => parse_limits(n, &obj.path("limits"))?,
        None => Vec::new(),
    };
    let default_limits = own.is_empty();
    Ok(Anonymous {
        limits: if default_limits {
            defaults.to_vec()
        } else {
            own
        },
        default_limits,
    })
}

#[inline(never)]
fn parse_consumers(
    node: &Node,
    path: &str,
    defaults: &[Limit],
    has_consumer_header: bool,
    has_anonymous: bool,
) -> Result<Vec<Consumer>, ConfigError> {
    let mut consumers: Vec<Consumer> = Vec::new();
    // Every key seen so far with the consumer that owns it, to refuse a key used twice.
    let mut seen: Vec<([u8; 32], usize)> = Vec::new();
    for (i, item) in as_array(node, path)?.iter().enumerate() {
        let cpath = index_path(path, i);
        let obj = Obj::new(item, &cpath, &["name", "keys", "limits", "models"])?;

        let name_path = obj.path("name");
        let name = match obj.get("name") {
            Some(n) => as_str(n, &name_path)?,
            None => return Err(err(&name_path, "missing required field")),
        };
        check_name(name).map_err(|r| err(&name_path, r))?;
        if consumers.iter().any(|c| c.name == name) {
            return Err(err(
                &name_path,
                format!("duplicate consumer name {}", quote(name)),
            ));
        }
        if has_anonymous && name == ANONYMOUS {
            return Err(err(
                &name_path,
                "\"anonymous\" is reserved for requests without a key while anonymous is set",
            ));
        }

        let keys_path = obj.path("keys");
        let mut keys = Vec::new();
        if let Some(n) = obj.get("keys") {
            for (k, key) in as_array(n, &keys_path)?.iter().enumerate() {
                let kpath = index_path(&keys_path, k);
                let matcher =
                    KeyMatcher::parse(as_str(key, &kpath)?).map_err(|r| err(&kpath, r))?;
                if let Some(&(_, owner)) = seen.iter().find(|(d, _)| *d == matcher.0) {
                    let owner = consumers.get(owner).map_or(name, |c| c.name.as_str());
                    return Err(err(
                        &kpath,
                        format!("key is already used by consumer {}", quote(owner)),
                    ));
                }
                seen.push((matcher.0, i));
                keys.push(matcher);
            }
        }
        if keys.is_empty() && !has_consumer_header {
            return Err(err(
                &keys_path,
                "a consumer needs at least one key unless consumer_header or consumer_claim is set",
            ));
        }

        let own = match obj.get("limits") {
            Some(n) => parse_limits(n, &obj.path("limits"))?,
            None => Vec::new(),
        };
        let default_limits = own.is_empty();

        let models = match obj.get("models") {
            Some(n) => {
                let mpath = obj.path("models");
                let list = as_array(n, &mpath)?;
                if list.is_empty() {
                    return Err(err(
                        &mpath,
                        "must not be empty (leave it out to allow every model)",
                    ));
                }
                let mut globs = Vec::with_capacity(list.len());
                for (m, g) in list.iter().enumerate() {
                    let gpath = index_path(&mpath, m);
                    globs.push(Glob::new(as_str(g, &gpath)?).map_err(|r| err(&gpath, r))?);
                }
                Some(globs)
            }
            None => None,
        };

        consumers.push(Consumer {
            name: name.to_string(),
            keys,
            limits: if default_limits {
                defaults.to_vec()
            } else {
                own
            },
            default_limits,
            models,
        });
    }
    Ok(consumers)
}

#[inline(never)]
fn parse_accounts(
    node: &Node,
    path: &str,
    stage: Stage,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Account>, ConfigError> {
    let mut accounts: Vec<Account> = Vec::new();
    for (i, item) in as_array(node, path)?.iter().enumerate() {
        let apath = index_path(path, i);
        let obj = Obj::new(
            item,
            &apath,
            &[
                "name",
                "provider",
                "key",
                "key_env",
                "headers",
                "route",
                "weight",
                "limits",
                "disable_for",
            ],
        )?;

        let name_path = obj.path("name");
        let name = match obj.get("name") {
            Some(n) => as_str(n, &name_path)?,
            None => return Err(err(&name_path, "missing required field")),
        };
        check_name(name).map_err(|r| err(&name_path, r))?;
        if accounts.iter().any(|a| a.name == name) {
            return Err(err(
                &name_path,
                format!("duplicate account name {}", quote(name)),
            ));
        }

        let provider_path = obj.path("provider");
        let provider = match obj.get("provider") {
            Some(n) => one_of(
                n,
                &provider_path,
                &[
                    ("anthropic", Api::Anthropic),
                    ("openai", Api::OpenAi),
                    ("gemini", Api::Gemini),
                ],
            )?,
            None => return Err(err(&provider_path, "missing required field")),
        };

        let key = match (obj.get("key"), obj.get("key_env")) {
            (Some(_), Some(_)) => {
                return Err(err(&apath, "set only one of key and key_env"));
            }
            (None, None) => return Err(err(&apath, "needs key or key_env")),
            (Some(n), None) => {
                let kpath = obj.path("key");
                let key = as_str(n, &kpath)?;
                check_key_text(key).map_err(|r| err(&kpath, r))?;
                Secret::new(key)
            }
            (None, Some(n)) => {
                let epath = obj.path("key_env");
                let var = as_str(n, &epath)?;
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(err(&epath, "expected an environment variable name"));
                }
                // A key file often ends in a newline; nothing else around a key is meaningful.
                let value = env(var).map(|v| v.trim().to_string()).unwrap_or_default();
                if value.is_empty() {
                    return Err(err(
                        &epath,
                        format!(
                            "environment variable {var} is not set in the VM \
                             (vm_config.environment_variables.host_env_keys)"
                        ),
                    ));
                }
                check_key_text(&value)
                    .map_err(|r| err(&epath, format!("environment variable {var}: {r}")))?;
                Secret::new(value)
            }
        };

        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(n) = obj.get("headers") {
            let hpath = obj.path("headers");
            let Node::Object(entries) = n else {
                return Err(err(&hpath, format!("expected an object, got {}", n.kind())));
            };
            for (raw_name, value) in entries {
                let vpath = key_path(&hpath, raw_name);
                let hname = header_name(raw_name).map_err(|r| err(&vpath, r))?;
                if RESERVED_ACCOUNT_HEADERS.contains(&hname.as_str())
                    || hname == credential_header(provider)
                {
                    return Err(err(&vpath, "this header is set by tollgate itself"));
                }
                if headers.iter().any(|(h, _)| *h == hname) {
                    return Err(err(&vpath, "duplicate header"));
                }
                let value = as_str(value, &vpath)?;
                check_header_value(value).map_err(|r| err(&vpath, r))?;
                headers.push((hname, value.to_string()));
            }
        }

        let route = match obj.get("route") {
            Some(n) => {
                let rpath = obj.path("route");
                let route = as_str(n, &rpath)?;
                if stage == Stage::Upstream {
                    return Err(err(
                        &rpath,
                        "not allowed with stage upstream (routing has already happened there)",
                    ));
                }
                if route.is_empty() {
                    return Err(err(&rpath, "must not be empty"));
                }
                check_header_value(route).map_err(|r| err(&rpath, r))?;
                Some(route.to_string())
            }
            None => None,
        };

        let weight = match obj.get("weight") {
            Some(n) => {
                let wpath = obj.path("weight");
                let w = as_uint(n, &wpath)?;
                match u32::try_from(w) {
                    Ok(w) if (1..=1_000_000).contains(&w) => w,
                    _ => {
                        return Err(err(
                            &wpath,
                            format!("must be between 1 and 1000000, got {w}"),
                        ))
                    }
                }
            }
            None => 1,
        };

        let limits = match obj.get("limits") {
            Some(n) => parse_limits(n, &obj.path("limits"))?,
            None => Vec::new(),
        };
        let disable_for = match obj.get("disable_for") {
            Some(n) => as_duration(n, &obj.path("disable_for"))?,
            None => Duration::from_millis(DEFAULT_DISABLE_FOR_MS),
        };

        accounts.push(Account {
            name: name.to_string(),
            provider,
            key,
            headers,
            route,
            weight,
            limits,
            disable_for,
        });
    }
    Ok(accounts)
}

/// Headers an account's `headers` may not set: framing and routing belong to Envoy and to
/// tollgate (`route` sets `x-tollgate-route`).
const RESERVED_ACCOUNT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-tollgate-route",
];

fn credential_header(provider: Api) -> &'static str {
    match provider {
        Api::Anthropic => "x-api-key",
        Api::OpenAi => "authorization",
        Api::Gemini => "x-goog-api-key",
    }
}

#[inline(never)]
fn parse_selection(node: &Node, path: &str) -> Result<Selection, ConfigError> {
    let obj = Obj::new(node, path, &["strategy", "affinity"])?;
    let strategy = match obj.get("strategy") {
        Some(n) => one_of(
            n,
            &obj.path("strategy"),
            &[
                ("least_loaded", Strategy::LeastLoaded),
                ("round_robin", Strategy::RoundRobin),
                ("priority", Strategy::Priority),
            ],
        )?,
        None => Strategy::LeastLoaded,
    };
    let affinity = match obj.get("affinity") {
        Some(n) => {
            let a = Obj::new(
                n,
                &obj.path("affinity"),
                &["header", "conversation", "ttl", "max_sessions"],
            )?;
            let header = match a.get("header") {
                Some(n) => {
                    let hpath = a.path("header");
                    Some(header_name(as_str(n, &hpath)?).map_err(|r| err(&hpath, r))?)
                }
                None => None,
            };
            let conversation = match a.get("conversation") {
                Some(n) => as_bool(n, &a.path("conversation"))?,
                None => false,
            };
            let ttl = match a.get("ttl") {
                Some(n) => as_duration(n, &a.path("ttl"))?,
                None => Duration::from_millis(5 * 3_600_000),
            };
            let max_sessions = match a.get("max_sessions") {
                Some(n) => {
                    let mpath = a.path("max_sessions");
                    let v = as_uint(n, &mpath)?;
                    match u32::try_from(v) {
                        Ok(v) if (1..=MAX_SESSIONS_LIMIT).contains(&v) => v,
                        _ => {
                            return Err(err(
                                &mpath,
                                format!("must be between 1 and {MAX_SESSIONS_LIMIT}, got {v}"),
                            ))
                        }
                    }
                }
                None => DEFAULT_MAX_SESSIONS,
            };
            Some(Affinity {
                header,
                conversation,
                ttl,
                max_sessions,
            })
        }
        None => None,
    };
    Ok(Selection { strategy, affinity })
}

#[inline(never)]
fn parse_global(node: &Node, path: &str) -> Result<Global, ConfigError> {
    let obj = Obj::new(
        node,
        path,
        &["cluster", "domain", "timeout", "failure_mode"],
    )?;
    let cpath = obj.path("cluster");
    let cluster = match obj.get("cluster") {
        Some(n) => as_str(n, &cpath)?,
        None => return Err(err(&cpath, "missing required field")),
    };
    check_identifier(cluster).map_err(|r| err(&cpath, r))?;
    let domain = match obj.get("domain") {
        Some(n) => {
            let dpath = obj.path("domain");
            let d = as_str(n, &dpath)?;
            check_identifier(d).map_err(|r| err(&dpath, r))?;
            d.to_string()
        }
        None => "tollgate".to_string(),
    };
    let timeout = match obj.get("timeout") {
        Some(n) => as_duration(n, &obj.path("timeout"))?,
        None => Duration::from_millis(50),
    };
    let failure_mode = match obj.get("failure_mode") {
        Some(n) => one_of(
            n,
            &obj.path("failure_mode"),
            &[("allow", FailureMode::Allow), ("deny", FailureMode::Deny)],
        )?,
        None => FailureMode::Allow,
    };
    Ok(Global {
        cluster: cluster.to_string(),
        domain,
        timeout,
        failure_mode,
    })
}

#[inline(never)]
fn parse_pricing(node: &Node, path: &str) -> Result<Vec<(Glob, Price)>, ConfigError> {
    let Node::Object(entries) = node else {
        return Err(err(
            path,
            format!("expected an object, got {}", node.kind()),
        ));
    };
    let mut out: Vec<(Glob, Price)> = Vec::with_capacity(entries.len());
    for (pattern, value) in entries {
        let ppath = key_path(path, pattern);
        let glob = Glob::new(pattern).map_err(|r| err(&ppath, r))?;
        if out.iter().any(|(g, _)| *g == glob) {
            return Err(err(&ppath, "duplicate field"));
        }
        let obj = Obj::new(
            value,
            &ppath,
            &["input", "output", "cache_write", "cache_read"],
        )?;
        let price_of = |field: &str| -> Result<Option<f64>, ConfigError> {
            let fpath = obj.path(field);
            match obj.get(field) {
                Some(n) => {
                    let v = as_number(n, &fpath)?;
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(err(
                            &fpath,
                            format!("expected a non-negative price, got {v}"),
                        ));
                    }
                    Ok(Some(v))
                }
                None => Ok(None),
            }
        };
        let required = |field: &str| -> Result<f64, ConfigError> {
            price_of(field)?.ok_or_else(|| err(&obj.path(field), "missing required field"))
        };
        let input = required("input")?;
        let output = required("output")?;
        // Unset cache prices fall back to the input price: a cached token rarely costs more.
        let cache_write = price_of("cache_write")?.unwrap_or(input);
        let cache_read = price_of("cache_read")?.unwrap_or(input);
        out.push((
            glob,
            Price {
                input,
                output,
                cache_write,
                cache_read,
            },
        ));
    }
    Ok(out)
}

#[inline(never)]
fn parse_admin(node: &Node, path: &str) -> Result<Admin, ConfigError> {
    let obj = Obj::new(node, path, &["path", "keys"])?;
    let admin_path = match obj.get("path") {
        Some(n) => {
            let ppath = obj.path("path");
            let p = as_str(n, &ppath)?;
            check_path_prefix(p).map_err(|r| err(&ppath, r))?;
            if p.ends_with('/') {
                return Err(err(
                    &ppath,
                    format!("must not end with \"/\", got {}", quote(p)),
                ));
            }
            if API_PATHS.iter().any(|api| {
                api.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }) {
                return Err(err(
                    &ppath,
                    format!("{} would cover the provider API paths", quote(p)),
                ));
            }
            p.to_string()
        }
        None => DEFAULT_ADMIN_PATH.to_string(),
    };
    let kpath = obj.path("keys");
    let list = match obj.get("keys") {
        Some(n) => as_array(n, &kpath)?,
        None => return Err(err(&kpath, "missing required field")),
    };
    if list.is_empty() {
        return Err(err(&kpath, "must list at least one key"));
    }
    let mut keys = Vec::with_capacity(list.len());
    for (i, key) in list.iter().enumerate() {
        let path = index_path(&kpath, i);
        keys.push(KeyMatcher::parse(as_str(key, &path)?).map_err(|r| err(&path, r))?);
    }
    Ok(Admin {
        path: admin_path,
        keys,
    })
}

/// The endpoints tollgate serves for the providers (SPEC "Endpoints"); `admin.path` must not
/// swallow them.
const API_PATHS: &[&str] = &[
    "/v1/messages/count_tokens",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/v1beta/models",
];

const LIMIT_FIELDS: &[(&str, Option<LimitKind>)] = &[
    ("tokens", Some(LimitKind::Tokens)),
    ("input_tokens", Some(LimitKind::InputTokens)),
    ("output_tokens", Some(LimitKind::OutputTokens)),
    ("requests", Some(LimitKind::Requests)),
    ("cost_usd", Some(LimitKind::CostUsd)),
    ("concurrent", None),
];

#[inline(never)]
fn parse_limits(node: &Node, path: &str) -> Result<Vec<Limit>, ConfigError> {
    as_array(node, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| parse_limit(item, &index_path(path, i)))
        .collect()
}

#[inline(never)]
fn parse_limit(node: &Node, path: &str) -> Result<Limit, ConfigError> {
    let obj = Obj::new(
        node,
        path,
        &[
            "tokens",
            "input_tokens",
            "output_tokens",
            "requests",
            "cost_usd",
            "concurrent",
            "per",
            "window",
        ],
    )?;
    let mut present = LIMIT_FIELDS
        .iter()
        .filter_map(|&(field, kind)| obj.get(field).map(|n| (field, kind, n)));
    let Some((field, kind, amount)) = present.next() else {
        return Err(err(
            path,
            "expected one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent",
        ));
    };
    if let Some((other, _, _)) = present.next() {
        return Err(err(
            path,
            format!(
                "a limit has exactly one of tokens, input_tokens, output_tokens, requests, \
                 cost_usd, concurrent, got {field} and {other}"
            ),
        ));
    }
    let amount_path = obj.path(field);

    let Some(kind) = kind else {
        for extra in ["per", "window"] {
            if obj.get(extra).is_some() {
                return Err(err(&obj.path(extra), "not allowed with concurrent"));
            }
        }
        let n = as_uint(amount, &amount_path)?;
        return match u32::try_from(n) {
            Ok(n) if n > 0 => Ok(Limit::Concurrent(n)),
            _ => Err(err(
                &amount_path,
                format!("must be between 1 and {}, got {n}", u32::MAX),
            )),
        };
    };

    let per_path = obj.path("per");
    let per = match obj.get("per") {
        Some(n) => one_of(
            n,
            &per_path,
            &[
                ("second", Per::Second),
                ("minute", Per::Minute),
                ("hour", Per::Hour),
                ("day", Per::Day),
                ("month", Per::Month),
            ],
        )?,
        None => return Err(err(&per_path, "missing required field")),
    };
    let window = match obj.get("window") {
        Some(n) => one_of(
            n,
            &obj.path("window"),
            &[
                ("sliding", WindowKind::Sliding),
                ("fixed", WindowKind::Fixed),
            ],
        )?,
        None => WindowKind::Sliding,
    };
    let amount = if kind == LimitKind::CostUsd {
        let usd = as_number(amount, &amount_path)?;
        if !(usd.is_finite() && usd > 0.0) {
            return Err(err(
                &amount_path,
                format!("must be a positive amount of USD, got {usd}"),
            ));
        }
        let micros = (usd * 1e6).round();
        if micros < 1.0 {
            return Err(err(
                &amount_path,
                "must be at least 0.000001 (one micro-dollar)",
            ));
        }
        if micros >= MAX_WHOLE_F64 {
            return Err(err(&amount_path, format!("is too large, got {usd}")));
        }
        micros as u64
    } else {
        let n = as_uint(amount, &amount_path)?;
        if n == 0 {
            return Err(err(&amount_path, "must be greater than zero"));
        }
        n
    };
    Ok(Limit::Rate {
        kind,
        amount,
        per,
        window,
    })
}

// ---------------------------------------------------------------------------------------------
// Field checks
// ---------------------------------------------------------------------------------------------

/// Consumer and account names go into shared-data keys and metric names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got {}",
            quote(name)
        ))
    }
}

/// Cluster and domain names: non-empty, printable ASCII without spaces.
fn check_identifier(s: &str) -> Result<(), String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "expected a non-empty name of printable characters without spaces, got {}",
            quote(s)
        ));
    }
    Ok(())
}

/// A header name as HTTP/1.1 `token` (so no `:` pseudo-headers, spaces, CR or LF), lowercased
/// as HTTP/2 and Envoy carry it.
fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("a header name must not be empty".to_string());
    }
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if let Some(c) = name.chars().find(|&c| !is_tchar(c)) {
        return Err(format!("header name has an invalid character {c:?}"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Refuses what would let a configured value inject header lines or break the request.
fn check_header_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c != '\t' && c.is_control()) {
        return Err("must not contain control characters such as CR, LF or NUL".to_string());
    }
    Ok(())
}

/// A URL path prefix: starts with `/`, printable ASCII, no spaces, no query or fragment.
fn check_path_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("must start with \"/\", got {}", quote(p)));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        return Err(format!(
            "must be printable ASCII without spaces, \"?\" or \"#\", got {}",
            quote(p)
        ));
    }
    Ok(())
}

/// JSON spelling of a string, for quoting values in reasons (escapes control characters).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

// ---------------------------------------------------------------------------------------------
// Typed extraction from the parsed document, with field paths
// ---------------------------------------------------------------------------------------------

/// Whole numbers written as floats (`1e6`) are accepted up to 2^53, where f64 stays exact.
const MAX_WHOLE_F64: f64 = 9_007_199_254_740_992.0;

fn field_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain {
        key_path(parent, name)
    } else if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// The path of a free-form map key (`pricing["claude-*"]`).
fn key_path(parent: &str, key: &str) -> String {
    format!("{parent}[{}]", quote(key))
}

fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// An object whose fields have been checked against the allowed names.
struct Obj<'a> {
    path: String,
    entries: &'a [(String, Node)],
}

impl<'a> Obj<'a> {
    /// Refuses a non-object, unknown fields and fields given twice.
    fn new(node: &'a Node, path: &str, allowed: &[&str]) -> Result<Obj<'a>, ConfigError> {
        let Node::Object(entries) = node else {
            return Err(err(
                path,
                format!("expected an object, got {}", node.kind()),
            ));
        };
        for (i, (name, _)) in entries.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(err(
                    &field_path(path, name),
                    format!("unknown field, expected one of {}", allowed.join(", ")),
                ));
            }
            if entries.iter().take(i).any(|(earlier, _)| earlier == name) {
                return Err(err(&field_path(path, name), "duplicate field"));
            }
        }
        Ok(Obj {
            path: path.to_string(),
            entries,
        })
    }

    /// The field's value; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v, Node::Null))
    }

    fn path(&self, name: &str) -> String {
        field_path(&self.path, name)
    }
}

fn as_str<'a>(node: &'a Node, path: &str) -> Result<&'a str, ConfigError> {
    match node {
        Node::String(s) => Ok(s),
        other => Err(err(
            path,
            format!("expected a string, got {}", other.kind()),
        )),
    }
}

fn as_bool(node: &Node, path: &str) -> Result<bool, ConfigError> {
    match node {
        Node::Bool(b) => Ok(*b),
        other => Err(err(
            path,
            format!("expected true or false, got {}", other.kind()),
        )),
    }
}

fn as_array<'a>(node: &'a Node, path: &str) -> Result<&'a [Node], ConfigError> {
    match node {
        Node::Array(items) => Ok(items),
        other => Err(err(
            path,
            format!("expected an array, got {}", other.kind()),
        )),
    }
}

fn as_uint(node: &Node, path: &str) -> Result<u64, ConfigError> {
    match node {
        Node::Uint(v) => Ok(*v),
        Node::Int(v) => Err(err(
            path,
            format!("expected a non-negative whole number, got {v}"),
        )),
        Node::Float(v) if v.fract() == 0.0 && (0.0..=MAX_WHOLE_F64).contains(v) => Ok(*v as u64),
        Node::Float(v) => Err(err(
            path,
            format!("expected a non-negative whole number, got {v}"),
        )),
        other => Err(err(
            path,
            format!("expected a whole number, got {}", other.kind()),
        )),
    }
}

fn as_number(node: &Node, path: &str) -> Result<f64, ConfigError> {
    match node {
        Node::Uint(v) => Ok(*v as f64),
        Node::Int(v) => Ok(*v as f64),
        Node::Float(v) => Ok(*v),
        other => Err(err(
            path,
            format!("expected a number, got {}", other.kind()),
        )),
    }
}

fn as_duration(node: &Node, path: &str) -> Result<Duration, ConfigError> {
    Duration::parse(as_str(node, path)?).map_err(|r| err(path, r))
}

/// One of a fixed set of strings, e.g. `expected one of second, minute, …, got "fortnight"`.
fn one_of<T: Copy>(node: &Node, path: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
    if let Node::String(s) = node {
        if let Some(&(_, v)) = options.iter().find(|(name, _)| name == s) {
            return Ok(v);
        }
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    let got = match node {
        Node::String(s) => quote(s),
        other => other.kind().to_string(),
    };
    Err(err(
        path,
        format!("expected one of {}, got {got}", names.join(", ")),
    ))
}

/// A JSON document tree that keeps object fields in order and keeps repeated fields, so the
/// validation can report duplicates and `pricing` keeps its precedence order (serde_json's
/// `Value` does neither without its `preserve_order` feature).
mod node {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Node {
        Null,
        Bool(bool),
        /// Non-negative integers.
        Uint(u64),
        /// Negative integers.
        Int(i64),
        Float(f64),
        String(String),
        Array(Vec<Node>),
        Object(Vec<(String, Node)>),
    }

    impl Node {
        /// What the node is, for "expected …, got …" reasons (never its content).
        pub(super) fn kind(&self) -> &'static str {
            match self {
                Node::Null => "null",
                Node::Bool(_) => "a boolean",
                Node::Uint(_) | Node::Int(_) | Node::Float(_) => "a number",
                Node::String(_) => "a string",
                Node::Array(_) => "an array",
                Node::Object(_) => "an object",
            }
        }
    }

    struct NodeVisitor;

    impl<'de> Visitor<'de> for NodeVisitor {
        type Value = Node;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_unit<E>(self) -> Result<Node, E> {
            Ok(Node::Null)
        }

        fn visit_none<E>(self) -> Result<Node, E> {
            Ok(Node::Null)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
            Node::deserialize(d)
        }

        fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
            Ok(Node::Bool(v))
        }

        fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
            Ok(Node::Uint(v))
        }

        fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
            Ok(u64::try_from(v).map_or(Node::Int(v), Node::Uint))
        }

        fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
            Ok(Node::Float(v))
        }

        fn visit_str<E>(self, v: &str) -> Result<Node, E> {
            Ok(Node::String(v.to_string()))
        }

        fn visit_string<E>(self, v: String) -> Result<Node, E> {
            Ok(Node::String(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<Node>()? {
                items.push(item);
            }
            Ok(Node::Array(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry::<String, Node>()? {
                entries.push(entry);
            }
            Ok(Node::Object(entries))
        }
    }

    impl<'de> Deserialize<'de> for Node {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
            d.deserialize_any(NodeVisitor)
        }
    }
}

#[cfg(test)]
mod tests;
