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
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_the_length_and_hides_every_occurrence() {
        let key = "sk-proj-FAKE-redaction-test-not-a-key-BBBB";
        let s = Secret::new(key);
        let text = format!("{{\"message\":\"bad key {key}\",\"again\":\"{key}\"}}");
        let out = String::from_utf8(s.redact(text.as_bytes()).unwrap()).unwrap();
        assert_eq!(out.len(), text.len());
        assert!(!out.contains(key));
        assert!(out.contains("sk-proj-*****"));
        assert!(out.contains("*BBBB\""));
        assert_eq!(s.redact(b"nothing here"), None);
        let short = Secret::new("abc123");
        assert_eq!(short.redact(b"[abc123]").unwrap(), b"[******]");
    }
    use proptest::prelude::{prop_assert_eq, proptest};

    const TEST_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const ADMIN_SHA: &str = "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918";
    const K1_SHA: &str = "6ab9f1eb8f7d3388f4f9d586f66e99fd54080df2c446f0e58668b09c08a16dd0";

    fn test_env(name: &str) -> Option<String> {
        match name {
            "ANTHROPIC_KEY_1" => Some("sk-ant-test03-AAAAAAAAAAAAAAAAAAAAx7Qa\n".to_string()),
            "ANTHROPIC_KEY_2" => Some("sk-ant-test03-BBBBBBBBBBBBBBBBBBBBzzzz".to_string()),
            "EMPTY_KEY" => Some("  \n".to_string()),
            "SPACED_KEY" => Some("sk-ant bad key".to_string()),
            _ => None,
        }
    }

    fn parse_test(json: &str) -> Result<Config, ConfigError> {
        parse_with_env(json.as_bytes(), &test_env)
    }

    fn spec_sample() -> String {
        r#"{
          "stage": "downstream",
          "consumers": [
            { "name": "team-a",
              "keys": ["sha256:TEST_SHA", "plain-secret-key"],
              "limits": [ {"tokens": 100000, "per": "minute"},
                          {"requests": 60, "per": "minute"},
                          {"tokens": 2000000, "per": "day", "window": "fixed"},
                          {"cost_usd": 25.0, "per": "day"},
                          {"concurrent": 4} ],
              "models": ["claude-*", "gpt-4o-mini"] }
          ],
          "consumer_header": null,
          "anonymous": null,
          "limits": [ {"tokens": 50000, "per": "minute"} ],
          "accounts": [
            { "name": "org-1", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_1" },
            { "name": "org-2", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_2", "weight": 2,
              "limits": [ {"tokens": 400000, "per": "minute"}, {"concurrent": 20} ] },
            { "name": "vllm", "provider": "openai", "key": "token-abc",
              "headers": {"x-tenant": "blue"}, "route": "vllm-cluster" }
          ],
          "selection": { "strategy": "least_loaded",
                         "affinity": {"header": "x-session-id", "conversation": true, "ttl": "5h"} },
          "global": { "cluster": "ratelimit", "domain": "tollgate", "timeout": "50ms",
                      "failure_mode": "allow" },
          "estimate": { "output_reserve": 1024 },
          "pricing": { "claude-3-5-haiku-*": {"input": 0.8, "output": 4.0, "cache_write": 1.0, "cache_read": 0.08} },
          "admin": { "path": "/tollgate", "keys": ["sha256:ADMIN_SHA"] }
        }"#
        .replace("TEST_SHA", TEST_SHA)
        .replace("ADMIN_SHA", ADMIN_SHA)
    }

    /// Asserts what a good configuration parsed to.
    type Check = fn(&Config);

    fn rate(kind: LimitKind, amount: u64, per: Per) -> Limit {
        Limit::Rate {
            kind,
            amount,
            per,
            window: WindowKind::Sliding,
        }
    }

    #[test]
    fn parses_the_spec_sample() {
        let cfg = parse_test(&spec_sample()).unwrap();
        assert_eq!(cfg.stage, Stage::Downstream);
        assert_eq!(
            cfg.limits,
            vec![rate(LimitKind::Tokens, 50_000, Per::Minute)]
        );

        let team = &cfg.consumers[0];
        assert_eq!(team.name, "team-a");
        assert!(!team.default_limits);
        assert!(team.has_key(&KeyMatcher::digest("test")));
        assert!(team.has_key(&KeyMatcher::digest("plain-secret-key")));
        assert!(!team.has_key(&KeyMatcher::digest("other")));
        assert_eq!(
            team.limits,
            vec![
                rate(LimitKind::Tokens, 100_000, Per::Minute),
                rate(LimitKind::Requests, 60, Per::Minute),
                Limit::Rate {
                    kind: LimitKind::Tokens,
                    amount: 2_000_000,
                    per: Per::Day,
                    window: WindowKind::Fixed
                },
                rate(LimitKind::CostUsd, 25_000_000, Per::Day),
                Limit::Concurrent(4),
            ]
        );
        let glob_of = |model| team.model_glob(model).map(Glob::as_str);
        assert_eq!(glob_of("claude-sonnet-4-5"), Some("claude-*"));
        assert_eq!(glob_of("gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(glob_of("gpt-4o"), None);
        assert!(team.allows_model("gpt-4o-mini") && !team.allows_model("gpt-4o"));

        assert_eq!(cfg.consumer_header, None);
        assert_eq!(cfg.anonymous, None);

        let [org1, org2, vllm] = &cfg.accounts[..] else {
            panic!("three accounts")
        };
        assert_eq!(org1.provider, Api::Anthropic);
        assert_eq!(org1.key.expose(), "sk-ant-test03-AAAAAAAAAAAAAAAAAAAAx7Qa");
        assert_eq!((org1.weight, org1.limits.len()), (1, 0));
        assert_eq!(org2.weight, 2);
        assert_eq!(
            org2.limits,
            vec![
                rate(LimitKind::Tokens, 400_000, Per::Minute),
                Limit::Concurrent(20)
            ]
        );
        assert_eq!(vllm.provider, Api::OpenAi);
        assert_eq!(vllm.key.expose(), "token-abc");
        assert_eq!(
            vllm.headers,
            vec![("x-tenant".to_string(), "blue".to_string())]
        );
        assert_eq!(vllm.route.as_deref(), Some("vllm-cluster"));

        assert_eq!(cfg.selection.strategy, Strategy::LeastLoaded);
        let affinity = cfg.selection.affinity.as_ref().unwrap();
        assert_eq!(affinity.header.as_deref(), Some("x-session-id"));
        assert!(affinity.conversation);
        assert_eq!(affinity.ttl.millis(), 5 * 3_600_000);
        assert_eq!(affinity.max_sessions, DEFAULT_MAX_SESSIONS);

        let global = cfg.global.as_ref().unwrap();
        assert_eq!(global.cluster, "ratelimit");
        assert_eq!(global.domain, "tollgate");
        assert_eq!(global.timeout.millis(), 50);
        assert_eq!(global.failure_mode, FailureMode::Allow);

        assert_eq!(cfg.estimate.output_reserve, 1024);
        let (glob, price) = cfg.price_for("claude-3-5-haiku-20241022").unwrap();
        assert_eq!(glob.as_str(), "claude-3-5-haiku-*");
        assert_eq!(price.cache_read, 0.08);
        assert_eq!(cfg.pricing.len(), 1 + crate::pricing::BUILTIN_PRICES.len());

        let admin = cfg.admin.as_ref().unwrap();
        assert_eq!(admin.path, "/tollgate");
        assert!(admin.accepts(&KeyMatcher::digest("admin")));
        assert!(!admin.accepts(&KeyMatcher::digest("test")));
        assert_eq!(cfg.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn empty_configurations_mean_the_defaults() {
        for json in [
            "{}",
            "",
            " \n\t",
            r#"{"consumer_header": null, "anonymous": null}"#,
        ] {
            let cfg = parse_test(json).unwrap();
            assert_eq!(cfg, Config::default(), "{json:?}");
        }
        let cfg = Config::default();
        assert_eq!(cfg.stage, Stage::Downstream);
        assert!(cfg.consumers.is_empty() && cfg.accounts.is_empty() && cfg.limits.is_empty());
        assert_eq!(cfg.selection.strategy, Strategy::LeastLoaded);
        assert_eq!(cfg.estimate.output_reserve, 1024);
        assert_eq!(cfg.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(cfg.max_sessions(), 65_536);
        assert!(cfg.admin.is_none() && cfg.global.is_none() && cfg.anonymous.is_none());
        assert_eq!(cfg.pricing.len(), crate::pricing::BUILTIN_PRICES.len());
    }

    #[test]
    fn accepts_each_good_configuration() {
        let good: &[(&str, Check)] = &[
            (
                r#"{"consumer_header": "X-User", "consumers": [{"name": "svc.a_1"}],
                    "limits": [{"requests": 10, "per": "second"}]}"#,
                |c| {
                    assert_eq!(c.consumer_header.as_deref(), Some("x-user"));
                    assert!(c.consumers[0].keys.is_empty());
                    assert!(c.consumers[0].default_limits);
                    assert_eq!(c.consumers[0].limits, c.limits);
                    assert!(c.consumers[0].allows_model("anything"));
                    assert_eq!(c.consumers[0].model_glob("anything"), None);
                },
            ),
            (
                r#"{"consumer_header": "x-user", "consumers": [{"name": "a", "keys": ["k1"], "limits": []}]}"#,
                |c| {
                    assert!(
                        c.consumers[0].default_limits
                            && c.consumers[0].has_key(&KeyMatcher::digest("k1"))
                    )
                },
            ),
            (
                r#"{"anonymous": {}, "limits": [{"input_tokens": 7, "per": "hour"}]}"#,
                |c| {
                    let a = c.anonymous.as_ref().unwrap();
                    assert!(a.default_limits);
                    assert_eq!(a.limits, vec![rate(LimitKind::InputTokens, 7, Per::Hour)]);
                },
            ),
            (
                r#"{"anonymous": {"limits": [{"output_tokens": 1e6, "per": "month", "window": "fixed"}]}}"#,
                |c| {
                    let a = c.anonymous.as_ref().unwrap();
                    assert!(!a.default_limits);
                    assert_eq!(
                        a.limits,
                        vec![Limit::Rate {
                            kind: LimitKind::OutputTokens,
                            amount: 1_000_000,
                            per: Per::Month,
                            window: WindowKind::Fixed
                        }]
                    );
                },
            ),
            (
                r#"{"stage": "upstream", "accounts": [
                    {"name": "g", "provider": "gemini", "key": "AIza-FAKE-test-key",
                     "headers": {"X-Goog-User-Project": "p1", "anthropic-version": "2023-06-01"}}]}"#,
                |c| {
                    assert_eq!(c.stage, Stage::Upstream);
                    assert_eq!(c.accounts[0].provider, Api::Gemini);
                    assert_eq!(c.accounts[0].headers[0].0, "x-goog-user-project");
                    assert_eq!(c.accounts[0].route, None);
                },
            ),
            (
                r#"{"accounts": [], "limits": [{"cost_usd": 0.5, "per": "hour"}, {"cost_usd": 0.0000015, "per": "second"}]}"#,
                |c| {
                    assert!(c.accounts.is_empty());
                    assert_eq!(c.limits[0], rate(LimitKind::CostUsd, 500_000, Per::Hour));
                    assert_eq!(c.limits[1], rate(LimitKind::CostUsd, 2, Per::Second));
                },
            ),
            (
                r#"{"selection": {"strategy": "priority", "affinity": {"max_sessions": 1048576, "ttl": "1d"}},
                    "global": {"cluster": "rl"}}"#,
                |c| {
                    assert_eq!(c.selection.strategy, Strategy::Priority);
                    assert_eq!(c.max_sessions(), 1_048_576);
                    let a = c.selection.affinity.as_ref().unwrap();
                    assert_eq!(
                        (a.header.as_deref(), a.conversation, a.ttl.millis()),
                        (None, false, 86_400_000)
                    );
                    let g = c.global.as_ref().unwrap();
                    assert_eq!(
                        (g.domain.as_str(), g.timeout.millis(), g.failure_mode),
                        ("tollgate", 50, FailureMode::Allow)
                    );
                },
            ),
            (
                r#"{"selection": {"strategy": "round_robin"}, "global": {"cluster": "rl", "domain": "d", "timeout": "2s", "failure_mode": "deny"}}"#,
                |c| {
                    assert_eq!(c.selection.strategy, Strategy::RoundRobin);
                    let g = c.global.as_ref().unwrap();
                    assert_eq!(
                        (g.domain.as_str(), g.timeout.millis(), g.failure_mode),
                        ("d", 2000, FailureMode::Deny)
                    );
                },
            ),
            (
                r#"{"admin": {"keys": ["admin"]}, "passthrough_paths": ["/v1/files", "/v1/batches"],
                    "max_body_bytes": 1073741824, "estimate": {"output_reserve": 0}}"#,
                |c| {
                    let admin = c.admin.as_ref().unwrap();
                    assert_eq!(admin.path, "/tollgate");
                    assert!(admin.accepts(&KeyMatcher::digest("admin")));
                    let prefixes: Vec<(&str, Api)> = c
                        .passthrough_paths
                        .iter()
                        .map(|p| (p.prefix.as_str(), p.api))
                        .collect();
                    assert_eq!(
                        prefixes,
                        vec![("/v1/files", Api::OpenAi), ("/v1/batches", Api::OpenAi)]
                    );
                    assert_eq!(c.max_body_bytes, 1 << 30);
                    assert_eq!(c.estimate.output_reserve, 0);
                },
            ),
            (
                r#"{"pricing": {"gpt-4o*": {"input": 1, "output": 2}, "my-model": {"input": 0, "output": 0, "cache_read": 0}}}"#,
                |c| {
                    let (g, p) = c.price_for("gpt-4o-mini").unwrap();
                    assert_eq!(g.as_str(), "gpt-4o*");
                    assert_eq!(
                        *p,
                        Price {
                            input: 1.0,
                            output: 2.0,
                            cache_write: 1.0,
                            cache_read: 1.0
                        }
                    );
                    assert_eq!(c.pricing[1].0.as_str(), "my-model");
                },
            ),
        ];
        for (json, check) in good {
            match parse_test(json) {
                Ok(cfg) => check(&cfg),
                Err(e) => panic!("{json}\nrejected: {e}"),
            }
        }
    }

    #[test]
    fn rejects_each_bad_configuration_naming_the_field() {
        let top_fields = "stage, consumers, consumer_header, anonymous, limits, accounts, \
                          selection, global, estimate, pricing, admin, passthrough_paths, \
                          max_body_bytes, strip_request_headers, consumer_claim, lease_ttl";
        let acct = |extra: &str| {
            format!(r#"{{"accounts": [{{"name": "a", "provider": "openai", "key": "t"{extra}}}]}}"#)
        };
        let bad: Vec<(String, String)> = vec![
            // document
            ("{\"stage\":".into(), "configuration is not valid JSON: EOF while parsing a value at line 1 column 9".into()),
            ("[]".into(), "configuration must be a JSON object, got an array".into()),
            (r#"{"stage": "upstream", "stage": "downstream"}"#.into(), "stage: duplicate field".into()),
            // unknown fields, at every depth
            (r#"{"stages": "upstream"}"#.into(), format!("stages: unknown field, expected one of {top_fields}")),
            (r#"{"a b": 1}"#.into(), format!("[\"a b\"]: unknown field, expected one of {top_fields}")),
            (
                r#"{"consumers": [{"name": "a", "keys": ["k"], "limits": [{"tokens": 1, "per": "minute", "burst": 2}]}]}"#.into(),
                "consumers[0].limits[0].burst: unknown field, expected one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent, per, window".into(),
            ),
            (r#"{"selection": {"affinity": {"ttl": "5h", "size": 3}}}"#.into(), "selection.affinity.size: unknown field, expected one of header, conversation, ttl, max_sessions".into()),
            (r#"{"anonymous": {"limit": []}}"#.into(), "anonymous.limit: unknown field, expected one of limits".into()),
            (r#"{"pricing": {"m*": {"input": 1, "output": 2, "cached": 1}}}"#.into(), "pricing[\"m*\"].cached: unknown field, expected one of input, output, cache_write, cache_read".into()),
            (acct(r#", "region": "eu""#), "accounts[0].region: unknown field, expected one of name, provider, key, key_env, headers, route, weight, limits, disable_for".into()),
            // limits grammar
            (
                r#"{"consumers": [{"name": "a", "keys": ["k"]}, {"name": "b", "keys": ["k2"], "limits": [{"tokens": 5, "per": "fortnight"}]}]}"#.into(),
                "consumers[1].limits[0].per: expected one of second, minute, hour, day, month, got \"fortnight\"".into(),
            ),
            (r#"{"limits": [{"tokens": 5, "per": 60}]}"#.into(), "limits[0].per: expected one of second, minute, hour, day, month, got a number".into()),
            (r#"{"limits": [{"tokens": 5, "window": "fixed"}]}"#.into(), "limits[0].per: missing required field".into()),
            (r#"{"limits": [{"concurrent": 2, "window": "fixed"}]}"#.into(), "limits[0].window: not allowed with concurrent".into()),
            (r#"{"limits": [{"concurrent": 2, "per": "minute"}]}"#.into(), "limits[0].per: not allowed with concurrent".into()),
            (r#"{"limits": [{"concurrent": 0}]}"#.into(), "limits[0].concurrent: must be between 1 and 4294967295, got 0".into()),
            (r#"{"limits": [{"tokens": 5, "requests": 3, "per": "minute"}]}"#.into(), "limits[0]: a limit has exactly one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent, got tokens and requests".into()),
            (r#"{"limits": [{"per": "minute"}]}"#.into(), "limits[0]: expected one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent".into()),
            (r#"{"limits": [{"tokens": 0, "per": "minute"}]}"#.into(), "limits[0].tokens: must be greater than zero".into()),
            (r#"{"limits": [{"requests": 1.5, "per": "minute"}]}"#.into(), "limits[0].requests: expected a non-negative whole number, got 1.5".into()),
            (r#"{"limits": [{"tokens": -1, "per": "minute"}]}"#.into(), "limits[0].tokens: expected a non-negative whole number, got -1".into()),
            (r#"{"limits": [{"tokens": "5", "per": "minute"}]}"#.into(), "limits[0].tokens: expected a whole number, got a string".into()),
            (r#"{"limits": [{"cost_usd": 0, "per": "day"}]}"#.into(), "limits[0].cost_usd: must be a positive amount of USD, got 0".into()),
            (r#"{"limits": [{"cost_usd": 0.0000001, "per": "day"}]}"#.into(), "limits[0].cost_usd: must be at least 0.000001 (one micro-dollar)".into()),
            (r#"{"limits": [{"tokens": 5, "per": "minute", "window": "rolling"}]}"#.into(), "limits[0].window: expected one of sliding, fixed, got \"rolling\"".into()),
            (r#"{"limits": {"tokens": 5}}"#.into(), "limits: expected an array, got an object".into()),
            (r#"{"limits": [5]}"#.into(), "limits[0]: expected an object, got a number".into()),
            // durations
            (r#"{"selection": {"affinity": {"ttl": "5 min"}}}"#.into(), "selection.affinity.ttl: expected a duration like \"250ms\", \"30s\", \"5m\", \"5h\" or \"1d\", got \"5 min\"".into()),
            (r#"{"global": {"cluster": "rl", "timeout": "0s"}}"#.into(), "global.timeout: must be greater than zero".into()),
            (r#"{"global": {"cluster": "rl", "timeout": 50}}"#.into(), "global.timeout: expected a string, got a number".into()),
            // consumers
            (r#"{"consumers": [{"name": "a", "keys": ["k1"]}, {"name": "a", "keys": ["k2"]}]}"#.into(), "consumers[1].name: duplicate consumer name \"a\"".into()),
            (
                format!(r#"{{"consumers": [{{"name": "a", "keys": ["k1"]}}, {{"name": "b", "keys": ["k2", "sha256:{K1_SHA}"]}}]}}"#),
                "consumers[1].keys[1]: key is already used by consumer \"a\"".into(),
            ),
            (r#"{"consumers": [{"name": "a", "keys": ["k1", "k1"]}]}"#.into(), "consumers[0].keys[1]: key is already used by consumer \"a\"".into()),
            (r#"{"consumers": [{"name": "team a", "keys": ["k"]}]}"#.into(), "consumers[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"team a\"".into()),
            (r#"{"consumers": [{"name": "", "keys": ["k"]}]}"#.into(), "consumers[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"\"".into()),
            (format!(r#"{{"consumers": [{{"name": "{}", "keys": ["k"]}}]}}"#, "x".repeat(65)), format!("consumers[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"{}\"", "x".repeat(65))),
            (r#"{"consumers": [{"keys": ["k"]}]}"#.into(), "consumers[0].name: missing required field".into()),
            (r#"{"consumers": [{"name": "a"}]}"#.into(), "consumers[0].keys: a consumer needs at least one key unless consumer_header or consumer_claim is set".into()),
            (r#"{"consumers": [{"name": "a", "keys": []}]}"#.into(), "consumers[0].keys: a consumer needs at least one key unless consumer_header or consumer_claim is set".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["sha256:abc"]}]}"#.into(), "consumers[0].keys[0]: a sha256: key needs exactly 64 hex digits".into()),
            (format!(r#"{{"consumers": [{{"name": "a", "keys": ["sha256:{}"]}}]}}"#, "g".repeat(64)), "consumers[0].keys[0]: a sha256: key needs exactly 64 hex digits".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["my key"]}]}"#.into(), "consumers[0].keys[0]: a key must be printable ASCII without spaces or control characters".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["k"], "models": []}]}"#.into(), "consumers[0].models: must not be empty (leave it out to allow every model)".into()),
            (r#"{"consumers": [{"name": "a", "keys": ["k"], "models": [""]}]}"#.into(), "consumers[0].models[0]: a glob must not be empty".into()),
            (r#"{"anonymous": {}, "consumers": [{"name": "anonymous", "keys": ["k"]}]}"#.into(), "consumers[0].name: \"anonymous\" is reserved for requests without a key while anonymous is set".into()),
            (r#"{"consumer_header": "x user"}"#.into(), "consumer_header: header name has an invalid character ' '".into()),
            (r#"{"consumer_header": ":authority"}"#.into(), "consumer_header: header name has an invalid character ':'".into()),
            (r#"{"anonymous": true}"#.into(), "anonymous: expected an object, got a boolean".into()),
            // stage and accounts
            (r#"{"stage": "sidecar"}"#.into(), "stage: expected one of downstream, upstream, got \"sidecar\"".into()),
            (r#"{"stage": "upstream", "accounts": [{"name": "v", "provider": "openai", "key": "t", "route": "c"}]}"#.into(), "accounts[0].route: not allowed with stage upstream (routing has already happened there)".into()),
            (acct(r#", "route": "c\r\nx-evil: 1""#), "accounts[0].route: must not contain control characters such as CR, LF or NUL".into()),
            (acct(r#", "route": """#), "accounts[0].route: must not be empty".into()),
            (acct(r#", "headers": {"x-tenant": "blue\nx-evil: 1"}"#), "accounts[0].headers[\"x-tenant\"]: must not contain control characters such as CR, LF or NUL".into()),
            (acct(r#", "headers": {"x-tenant": "a\u0000b"}"#), "accounts[0].headers[\"x-tenant\"]: must not contain control characters such as CR, LF or NUL".into()),
            (acct(r#", "headers": {"x tenant": "blue"}"#), "accounts[0].headers[\"x tenant\"]: header name has an invalid character ' '".into()),
            (acct(r#", "headers": {"x-a\r\nb": "blue"}"#), "accounts[0].headers[\"x-a\\r\\nb\"]: header name has an invalid character '\\r'".into()),
            (acct(r#", "headers": {"Host": "x"}"#), "accounts[0].headers[\"Host\"]: this header is set by tollgate itself".into()),
            (acct(r#", "headers": {"Authorization": "Bearer x"}"#), "accounts[0].headers[\"Authorization\"]: this header is set by tollgate itself".into()),
            (acct(r#", "headers": {"x-t": 1}"#), "accounts[0].headers[\"x-t\"]: expected a string, got a number".into()),
            (acct(r#", "weight": 0"#), "accounts[0].weight: must be between 1 and 1000000, got 0".into()),
            (acct(r#", "key_env": "X""#), "accounts[0]: set only one of key and key_env".into()),
            (r#"{"accounts": [{"name": "a", "provider": "openai"}]}"#.into(), "accounts[0]: needs key or key_env".into()),
            (r#"{"accounts": [{"name": "a", "provider": "azure", "key": "t"}]}"#.into(), "accounts[0].provider: expected one of anthropic, openai, gemini, got \"azure\"".into()),
            (r#"{"accounts": [{"name": "a", "key": "t"}]}"#.into(), "accounts[0].provider: missing required field".into()),
            (r#"{"accounts": [{"name": "a", "provider": "openai", "key": "t"}, {"name": "a", "provider": "openai", "key": "u"}]}"#.into(), "accounts[1].name: duplicate account name \"a\"".into()),
            (r#"{"accounts": [{"name": "a/b", "provider": "openai", "key": "t"}]}"#.into(), "accounts[0].name: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"a/b\"".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_9"}]}"#.into(), "accounts[0].key_env: environment variable ANTHROPIC_KEY_9 is not set in the VM (vm_config.environment_variables.host_env_keys)".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "EMPTY_KEY"}]}"#.into(), "accounts[0].key_env: environment variable EMPTY_KEY is not set in the VM (vm_config.environment_variables.host_env_keys)".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "SPACED_KEY"}]}"#.into(), "accounts[0].key_env: environment variable SPACED_KEY: a key must be printable ASCII without spaces or control characters".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key": "sk-ant secret"}]}"#.into(), "accounts[0].key: a key must be printable ASCII without spaces or control characters".into()),
            (r#"{"accounts": [{"name": "a", "provider": "anthropic", "key": 12345}]}"#.into(), "accounts[0].key: expected a string, got a number".into()),
            // selection, global, estimate
            (r#"{"selection": {"strategy": "random"}}"#.into(), "selection.strategy: expected one of least_loaded, round_robin, priority, got \"random\"".into()),
            (r#"{"selection": {"affinity": {"conversation": "yes"}}}"#.into(), "selection.affinity.conversation: expected true or false, got a string".into()),
            (r#"{"selection": {"affinity": {"max_sessions": 0}}}"#.into(), "selection.affinity.max_sessions: must be between 1 and 1048576, got 0".into()),
            (r#"{"selection": {"affinity": {"max_sessions": 1048577}}}"#.into(), "selection.affinity.max_sessions: must be between 1 and 1048576, got 1048577".into()),
            (r#"{"selection": {"affinity": {"header": "x\nid"}}}"#.into(), "selection.affinity.header: header name has an invalid character '\\n'".into()),
            (r#"{"global": {"cluster": "rl", "failure_mode": "open"}}"#.into(), "global.failure_mode: expected one of allow, deny, got \"open\"".into()),
            (r#"{"global": {"timeout": "1s"}}"#.into(), "global.cluster: missing required field".into()),
            (r#"{"global": {"cluster": "rl", "domain": ""}}"#.into(), "global.domain: expected a non-empty name of printable characters without spaces, got \"\"".into()),
            (r#"{"estimate": {"output_reserve": -5}}"#.into(), "estimate.output_reserve: expected a non-negative whole number, got -5".into()),
            // pricing
            (r#"{"pricing": {"m*": {"input": -1, "output": 1}}}"#.into(), "pricing[\"m*\"].input: expected a non-negative price, got -1".into()),
            (r#"{"pricing": {"m*": {"input": 1}}}"#.into(), "pricing[\"m*\"].output: missing required field".into()),
            (r#"{"pricing": {"": {"input": 1, "output": 1}}}"#.into(), "pricing[\"\"]: a glob must not be empty".into()),
            (r#"{"pricing": {"m*": {"input": 1, "output": 1}, "m*": {"input": 2, "output": 2}}}"#.into(), "pricing[\"m*\"]: duplicate field".into()),
            (r#"{"pricing": [1]}"#.into(), "pricing: expected an object, got an array".into()),
            // admin and paths
            (r#"{"admin": {"path": "tollgate", "keys": ["k"]}}"#.into(), "admin.path: must start with \"/\", got \"tollgate\"".into()),
            (r#"{"admin": {"path": "/tollgate/", "keys": ["k"]}}"#.into(), "admin.path: must not end with \"/\", got \"/tollgate/\"".into()),
            (r#"{"admin": {"path": "/", "keys": ["k"]}}"#.into(), "admin.path: must not end with \"/\", got \"/\"".into()),
            (r#"{"admin": {"path": "/v1", "keys": ["k"]}}"#.into(), "admin.path: \"/v1\" would cover the provider API paths".into()),
            (r#"{"admin": {"path": "/a b", "keys": ["k"]}}"#.into(), "admin.path: must be printable ASCII without spaces, \"?\" or \"#\", got \"/a b\"".into()),
            (r#"{"admin": {"path": "/t"}}"#.into(), "admin.keys: missing required field".into()),
            (r#"{"admin": {"keys": []}}"#.into(), "admin.keys: must list at least one key".into()),
            (r#"{"passthrough_paths": ["/v1/files", "v2"]}"#.into(), "passthrough_paths[1]: must start with \"/\", got \"v2\"".into()),
            (r#"{"passthrough_paths": "/v1/files"}"#.into(), "passthrough_paths: expected an array, got a string".into()),
            (r#"{"lease_ttl": "500ms"}"#.into(), "lease_ttl: must be at least 1s".into()),
            (r#"{"max_body_bytes": 0}"#.into(), "max_body_bytes: must be between 1 and 1073741824 (1 GiB), got 0".into()),
            (r#"{"max_body_bytes": 1073741825}"#.into(), "max_body_bytes: must be between 1 and 1073741824 (1 GiB), got 1073741825".into()),
        ];
        let mut failures = Vec::new();
        for (json, want) in &bad {
            match parse_test(json) {
                Ok(_) => failures.push(format!("{json}\n  accepted, want: {want}")),
                Err(e) if e.to_string() != *want => {
                    failures.push(format!("{json}\n  got:  {e}\n  want: {want}"))
                }
                Err(_) => {}
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} wrong:\n{}",
            failures.len(),
            bad.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn error_messages_never_contain_a_key() {
        for json in [
            r#"{"accounts": [{"name": "a", "provider": "anthropic", "key": "sk-ant secret-value"}]}"#,
            r#"{"consumers": [{"name": "a", "keys": ["secret-value x"]}]}"#,
            r#"{"consumers": [{"name": "a", "keys": ["secret-value"]}, {"name": "b", "keys": ["secret-value"]}]}"#,
        ] {
            let e = parse_test(json).unwrap_err().to_string();
            assert!(!e.contains("secret-value"), "{e}");
        }
        let cfg = parse_test(&spec_sample()).unwrap();
        let dump = format!("{cfg:?}");
        for secret in [
            "AAAAAAAAAAAAAAAAAAAA",
            "token-abc",
            "plain-secret-key",
            TEST_SHA,
            ADMIN_SHA,
        ] {
            assert!(!dump.contains(secret), "Debug shows {secret}");
        }
    }

    #[test]
    fn config_error_display_is_path_colon_reason() {
        assert_eq!(err("a.b[0]", "why").to_string(), "a.b[0]: why");
        assert_eq!(err("", "why").to_string(), "why");
    }

    #[test]
    fn parses_durations() {
        let table: &[(&str, Result<u64, &str>)] = &[
            ("250ms", Ok(250)),
            ("30s", Ok(30_000)),
            ("5m", Ok(300_000)),
            ("5h", Ok(18_000_000)),
            ("1d", Ok(86_400_000)),
            ("007s", Ok(7_000)),
            ("0ms", Err("must be greater than zero")),
            ("99999999999999999999d", Err("is too long")),
            ("999999999999999999d", Err("is too long")),
            ("5", Err("bad")),
            ("s", Err("bad")),
            ("5 s", Err("bad")),
            ("-5s", Err("bad")),
            ("1.5h", Err("bad")),
            ("5S", Err("bad")),
            ("5w", Err("bad")),
            ("", Err("bad")),
        ];
        for &(text, want) in table {
            let got = Duration::parse(text);
            match (got, want) {
                (Ok(d), Ok(ms)) => assert_eq!(d.millis(), ms, "{text}"),
                (Err(e), Err("bad")) => {
                    assert!(e.starts_with("expected a duration like"), "{text}: {e}")
                }
                (Err(e), Err(reason)) => assert_eq!(e, reason, "{text}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(Duration::from_millis(18_000_000).to_string(), "5h");
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(Duration::from_millis(1500).secs_ceil(), 2);
    }

    #[test]
    fn matches_globs() {
        let table: &[(&str, &str, bool)] = &[
            ("claude-*", "claude-sonnet-4-5", true),
            ("claude-*", "claude-", true),
            ("claude-*", "claude", false),
            ("gpt-4o-mini", "gpt-4o-mini", true),
            ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", false),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("*", "", true),
            ("*", "anything", true),
            ("?", "", false),
            ("?", "é", true),
            ("a?c", "abc", true),
            ("a?c", "a€c", true),
            ("a?c", "ac", false),
            ("*-mini*", "o4-mini-2025", true),
            ("*a*b*c", "xaybzc", true),
            ("*a*b*c", "xaybzcd", false),
            ("a*b*c", "abcbc", true),
            ("é*", "éa", true),
            ("*é", "aé", true),
            ("**", "x", true),
            ("x*", "", false),
        ];
        for &(pattern, text, want) in table {
            assert_eq!(
                Glob::new(pattern).unwrap().matches(text),
                want,
                "{pattern} vs {text}"
            );
        }
    }

    #[test]
    fn glob_matching_stays_fast_on_adversarial_patterns() {
        let glob = Glob::new(&format!("{}b", "a*".repeat(50))).unwrap();
        let text = "a".repeat(10_000);
        let start = std::time::Instant::now();
        assert!(!glob.matches(&text));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    /// Plain recursive matcher over chars, as the reference for the iterative one.
    fn reference_match(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => {
                reference_match(&p[1..], t) || (!t.is_empty() && reference_match(p, &t[1..]))
            }
            (Some('?'), Some(_)) => reference_match(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => reference_match(&p[1..], &t[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_a_recursive_reference(p in "[ab*?é]{1,8}", t in "[abé]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(Glob::new(&p).unwrap().matches(&t), reference_match(&pc, &tc));
        }
    }

    #[test]
    fn masks_secrets() {
        let table = [
            ("sk-ant-test03-abcdefghijklmnopx7Qa", "sk-ant-…x7Qa"),
            ("sk-proj-abcdefghijklmnWXYZ", "sk-proj-…WXYZ"),
            ("sk-abcdefghijklmnop1234", "sk-…1234"),
            ("AIzaSyabcdefghijklmnop9876", "AIza…9876"),
            ("token-abc", "…"),
            ("sk-ant-short", "sk-ant-…"),
            ("0123456789abcdefWXYZ", "…WXYZ"),
            ("sk-", "…"),
        ];
        for (key, mask) in table {
            let s = Secret::new(key);
            assert_eq!(s.to_string(), mask, "{key}");
            assert_eq!(format!("{s:?}"), format!("Secret({mask})"));
            assert_eq!(s.expose(), key);
        }
    }

    #[test]
    fn key_matchers_compare_digests() {
        let plain = KeyMatcher::parse("test").unwrap();
        let hashed = KeyMatcher::parse(&format!("sha256:{}", TEST_SHA.to_uppercase())).unwrap();
        let presented = KeyMatcher::digest("test");
        assert!(plain.matches(&presented) && hashed.matches(&presented));
        assert_eq!(plain, hashed);
        assert!(!plain.matches(&KeyMatcher::digest("test ")));
        assert_eq!(format!("{plain:?}"), "KeyMatcher(…)");
        assert!(KeyMatcher::parse("").is_err());
        assert!(ct_eq(&[7; 32], &[7; 32]) && !ct_eq(&[7; 32], &[8; 32]));
    }

    #[test]
    fn reads_key_env_through_the_injected_lookup() {
        let json = br#"{"accounts": [{"name": "a", "provider": "anthropic", "key_env": "K"}]}"#;
        let cfg =
            parse_with_env(json, &|n| (n == "K").then(|| "sk-ant-xyz\n".to_string())).unwrap();
        assert_eq!(cfg.accounts[0].key.expose(), "sk-ant-xyz");
        let e = parse_with_env(json, &|_| None).unwrap_err();
        assert_eq!(e.path, "accounts[0].key_env");
    }
    /// A full configuration with every section, for mutation.
    const FULL: &str = r#"{"stage":"downstream",
      "consumers":[{"name":"team-a","keys":["plain-secret-key"],
        "limits":[{"tokens":100000,"per":"minute"},{"requests":60,"per":"minute"},
                  {"tokens":2000000,"per":"day","window":"fixed"},{"cost_usd":25.0,"per":"day"},
                  {"concurrent":4}],
        "models":["claude-*","gpt-4o-mini"]}],
      "consumer_header":null,"anonymous":null,"limits":[{"tokens":50000,"per":"minute"}],
      "accounts":[{"name":"org-1","provider":"anthropic","key_env":"ANTHROPIC_KEY_1"},
        {"name":"vllm","provider":"openai","key":"token-abc","headers":{"x-tenant":"blue"},
         "weight":2,"limits":[{"concurrent":20}]}],
      "selection":{"strategy":"least_loaded",
        "affinity":{"header":"x-session-id","conversation":true,"ttl":"5h"}},
      "global":{"cluster":"ratelimit","domain":"tollgate","timeout":"50ms","failure_mode":"allow"},
      "estimate":{"output_reserve":1024},
      "pricing":{"claude-3-5-haiku-*":{"input":0.8,"output":4.0,"cache_write":1.0,"cache_read":0.08}},
      "admin":{"path":"/tollgate","keys":["plain-admin"]},"max_body_bytes":1048576}"#;

    #[test]
    fn the_mutation_base_parses() {
        parse_test(FULL).unwrap();
    }

    proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Arbitrary bytes: an error (naming a path that exists in the message), never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Err(e) = parse_with_env(&bytes, &test_env) {
                let _ = e.to_string();
            }
        }

        /// A valid configuration with a few bytes replaced: parses or names a field.
        #[test]
        fn mutated_configurations_never_panic(
            flips in proptest::collection::vec((0usize..1400, proptest::sample::select(
                b"{}[]:,\"0123456789-.eE abtrufnl\\\xc3\xa9\x00".to_vec())), 1..6),
        ) {
            let mut bytes = FULL.as_bytes().to_vec();
            for (at, b) in flips {
                if let Some(x) = bytes.get_mut(at % FULL.len()) {
                    *x = b;
                }
            }
            match parse_with_env(&bytes, &test_env) {
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
