//! The validation pass: the document structs (`raw`) become a [`Config`], with the defaults
//! filled in, every value checked and cross-field rules applied; a refusal names the field path
//! the way the type errors of `de` do.

use super::de::{field_path, index_path, key_path, Ordered};
use super::newtypes::check_key_text;
use super::raw::*;
use super::*;
use crate::api::Api;
use crate::limits::{Limit, LimitKind, Per, Price, WindowKind};

/// `<parent>.<name>` of a field, and the `missing required field` refusal there.
fn required<T>(value: Option<T>, parent: &str, name: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| err(&field_path(parent, name), "missing required field"))
}

/// Checks the document and builds the configuration; `env` looks up `key_env`.
pub(super) fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let stage = raw.stage.unwrap_or_default();
    let limits = limits(&raw.limits, "limits")?;
    let consumer_header = match &raw.consumer_header {
        Some(h) => Some(header_name(h).map_err(|r| err("consumer_header", r))?),
        None => None,
    };
    let anonymous = match raw.anonymous {
        Some(a) => {
            let own = self::limits(&a.limits, "anonymous.limits")?;
            let default_limits = own.is_empty();
            Some(Anonymous {
                limits: if default_limits { limits.clone() } else { own },
                default_limits,
            })
        }
        None => None,
    };
    let consumers = consumers(
        raw.consumers,
        &limits,
        consumer_header.is_some() || raw.consumer_claim.is_some(),
        anonymous.is_some(),
    )?;
    let accounts = accounts(raw.accounts, stage, env)?;
    let selection = match raw.selection {
        Some(s) => selection(s)?,
        None => Selection::default(),
    };
    let global = match raw.global {
        Some(g) => Some(global(g)?),
        None => None,
    };
    let estimate = raw.estimate.unwrap_or_default();
    let pricing = crate::pricing::with_builtins(match raw.pricing {
        Some(p) => pricing(p)?,
        None => Vec::new(),
    });
    let admin = match raw.admin {
        Some(a) => Some(admin(a)?),
        None => None,
    };
    let passthrough_paths = raw
        .passthrough_paths
        .into_iter()
        .enumerate()
        .map(|(i, item)| passthrough(item, &index_path("passthrough_paths", i)))
        .collect::<Result<_, _>>()?;
    let max_body_bytes = match raw.max_body_bytes {
        Some(v) if !(1..=MAX_BODY_BYTES_LIMIT).contains(&v) => {
            return Err(err(
                "max_body_bytes",
                format!("must be between 1 and {MAX_BODY_BYTES_LIMIT} (1 GiB), got {v}"),
            ));
        }
        v => v.unwrap_or(DEFAULT_MAX_BODY_BYTES),
    };
    let mut strip_request_headers: Vec<String> = Vec::new();
    for (i, h) in raw.strip_request_headers.iter().enumerate() {
        let ipath = index_path("strip_request_headers", i);
        let h = header_name(h).map_err(|r| err(&ipath, r))?;
        if h.starts_with(':') || RESERVED_ACCOUNT_HEADERS.contains(&h.as_str()) {
            return Err(err(&ipath, "this header cannot be stripped"));
        }
        if !strip_request_headers.contains(&h) {
            strip_request_headers.push(h);
        }
    }
    let consumer_claim = match raw.consumer_claim {
        Some(c) => Some(consumer_claim(c)?),
        None => None,
    };
    if consumer_claim.is_some() && consumer_header.is_some() {
        return Err(err(
            "consumer_claim",
            "set only one of consumer_claim and consumer_header",
        ));
    }
    let lease_ttl = match raw.lease_ttl {
        // A lease renews at a third of its life: shorter would write on every chunk.
        Some(d) if d.millis() < 1_000 => return Err(err("lease_ttl", "must be at least 1s")),
        d => d.unwrap_or(Duration::from_millis(DEFAULT_LEASE_TTL_MS)),
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

fn consumer_claim(raw: RawConsumerClaim) -> Result<ConsumerClaim, ConfigError> {
    let field = |name: &str, value: Option<String>| -> Result<String, ConfigError> {
        let v = required(value, "consumer_claim", name)?;
        if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                &field_path("consumer_claim", name),
                format!(
                    "expected 1 to 128 printable ASCII characters, got {}",
                    quote(&v)
                ),
            ));
        }
        Ok(v)
    };
    Ok(ConsumerClaim {
        metadata: field("metadata", raw.metadata)?,
        claim: field("claim", raw.claim.or_else(|| Some("sub".to_string())))?,
    })
}

fn api(raw: RawApi) -> Api {
    match raw {
        RawApi::Anthropic => Api::Anthropic,
        RawApi::OpenAi => Api::OpenAi,
        RawApi::Gemini => Api::Gemini,
    }
}

/// A `passthrough_paths` entry; its API, when not given, is inferred from the prefix.
fn passthrough(item: RawPassthrough, path: &str) -> Result<Passthrough, ConfigError> {
    let (prefix, api, ppath) = match item {
        RawPassthrough::Prefix(p) => (p, None, path.to_string()),
        RawPassthrough::Entry(e) => (
            required(e.prefix, path, "prefix")?,
            e.api.map(api),
            field_path(path, "prefix"),
        ),
    };
    check_path_prefix(&prefix).map_err(|r| err(&ppath, r))?;
    Ok(Passthrough {
        api: api.unwrap_or_else(|| passthrough_api(&prefix)),
        prefix,
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
fn consumers(
    raw: Vec<RawConsumer>,
    defaults: &[Limit],
    has_consumer_header: bool,
    has_anonymous: bool,
) -> Result<Vec<Consumer>, ConfigError> {
    let mut consumers: Vec<Consumer> = Vec::new();
    // Every key seen so far with the consumer that owns it, to refuse a key used twice.
    let mut seen: Vec<(KeyMatcher, usize)> = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let cpath = index_path("consumers", i);
        let name_path = field_path(&cpath, "name");
        let name = required(c.name, &cpath, "name")?;
        check_name(&name).map_err(|r| err(&name_path, r))?;
        if consumers.iter().any(|c| c.name == name) {
            return Err(err(
                &name_path,
                format!("duplicate consumer name {}", quote(&name)),
            ));
        }
        if has_anonymous && name == ANONYMOUS {
            return Err(err(
                &name_path,
                "\"anonymous\" is reserved for requests without a key while anonymous is set",
            ));
        }

        let keys_path = field_path(&cpath, "keys");
        for (k, key) in c.keys.iter().enumerate() {
            if let Some(&(_, owner)) = seen.iter().find(|(d, _)| d == key) {
                let owner = consumers.get(owner).map_or(name.as_str(), |c| c.name.as_str());
                return Err(err(
                    &index_path(&keys_path, k),
                    format!("key is already used by consumer {}", quote(owner)),
                ));
            }
            seen.push((key.clone(), i));
        }
        if c.keys.is_empty() && !has_consumer_header {
            return Err(err(
                &keys_path,
                "a consumer needs at least one key unless consumer_header or consumer_claim is set",
            ));
        }

        let own = limits(&c.limits, &field_path(&cpath, "limits"))?;
        let default_limits = own.is_empty();
        if c.models.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(
                &field_path(&cpath, "models"),
                "must not be empty (leave it out to allow every model)",
            ));
        }

        consumers.push(Consumer {
            name,
            keys: c.keys,
            limits: if default_limits {
                defaults.to_vec()
            } else {
                own
            },
            default_limits,
            models: c.models,
        });
    }
    Ok(consumers)
}

#[inline(never)]
fn accounts(
    raw: Vec<RawAccount>,
    stage: Stage,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Account>, ConfigError> {
    let mut accounts: Vec<Account> = Vec::new();
    for (i, a) in raw.into_iter().enumerate() {
        let apath = index_path("accounts", i);
        let name = required(a.name, &apath, "name")?;
        let name_path = field_path(&apath, "name");
        check_name(&name).map_err(|r| err(&name_path, r))?;
        if accounts.iter().any(|a| a.name == name) {
            return Err(err(
                &name_path,
                format!("duplicate account name {}", quote(&name)),
            ));
        }
        let provider = api(required(a.provider, &apath, "provider")?);

        let key = match (a.key, a.key_env) {
            (Some(_), Some(_)) => return Err(err(&apath, "set only one of key and key_env")),
            (None, None) => return Err(err(&apath, "needs key or key_env")),
            (Some(key), None) => key,
            (None, Some(var)) => key_from_env(&var, &field_path(&apath, "key_env"), env)?,
        };

        let mut headers: Vec<(String, String)> = Vec::new();
        let hpath = field_path(&apath, "headers");
        for (raw_name, value) in a.headers.map(|h| h.0).unwrap_or_default() {
            let vpath = key_path(&hpath, &raw_name);
            let hname = header_name(&raw_name).map_err(|r| err(&vpath, r))?;
            if RESERVED_ACCOUNT_HEADERS.contains(&hname.as_str())
                || hname == credential_header(provider)
            {
                return Err(err(&vpath, "this header is set by tollgate itself"));
            }
            if headers.iter().any(|(h, _)| *h == hname) {
                return Err(err(&vpath, "duplicate header"));
            }
            check_header_value(&value).map_err(|r| err(&vpath, r))?;
            headers.push((hname, value));
        }

        if let Some(route) = &a.route {
            let rpath = field_path(&apath, "route");
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
        }

        let weight = match a.weight.map(u32::try_from) {
            None => 1,
            Some(Ok(w)) if (1..=1_000_000).contains(&w) => w,
            Some(_) => {
                return Err(err(
                    &field_path(&apath, "weight"),
                    format!(
                        "must be between 1 and 1000000, got {}",
                        a.weight.unwrap_or_default()
                    ),
                ))
            }
        };

        accounts.push(Account {
            name,
            provider,
            key,
            headers,
            route: a.route,
            weight,
            limits: limits(&a.limits, &field_path(&apath, "limits"))?,
            disable_for: a
                .disable_for
                .unwrap_or(Duration::from_millis(DEFAULT_DISABLE_FOR_MS)),
        });
    }
    Ok(accounts)
}

/// The key in the VM environment variable `var` (`key_env` at `epath`).
fn key_from_env(
    var: &str,
    epath: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    if var.is_empty() || var.contains(['=', '\0']) {
        return Err(err(epath, "expected an environment variable name"));
    }
    // A key file often ends in a newline; nothing else around a key is meaningful.
    let value = env(var).map(|v| v.trim().to_string()).unwrap_or_default();
    if value.is_empty() {
        return Err(err(
            epath,
            format!(
                "environment variable {var} is not set in the VM \
                 (vm_config.environment_variables.host_env_keys)"
            ),
        ));
    }
    check_key_text(&value).map_err(|r| err(epath, format!("environment variable {var}: {r}")))?;
    Ok(Secret::new(value))
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
fn selection(raw: RawSelection) -> Result<Selection, ConfigError> {
    let affinity = match raw.affinity {
        Some(a) => {
            let header = match &a.header {
                Some(h) => Some(header_name(h).map_err(|r| err("selection.affinity.header", r))?),
                None => None,
            };
            let max_sessions = match a.max_sessions.map(u32::try_from) {
                None => DEFAULT_MAX_SESSIONS,
                Some(Ok(v)) if (1..=MAX_SESSIONS_LIMIT).contains(&v) => v,
                Some(_) => {
                    return Err(err(
                        "selection.affinity.max_sessions",
                        format!(
                            "must be between 1 and {MAX_SESSIONS_LIMIT}, got {}",
                            a.max_sessions.unwrap_or_default()
                        ),
                    ))
                }
            };
            Some(Affinity {
                header,
                conversation: a.conversation.unwrap_or(false),
                ttl: a.ttl.unwrap_or(Duration::from_millis(5 * 3_600_000)),
                max_sessions,
            })
        }
        None => None,
    };
    Ok(Selection {
        strategy: raw.strategy.unwrap_or_default(),
        affinity,
    })
}

#[inline(never)]
fn global(raw: RawGlobal) -> Result<Global, ConfigError> {
    let cluster = required(raw.cluster, "global", "cluster")?;
    check_identifier(&cluster).map_err(|r| err("global.cluster", r))?;
    let domain = raw.domain.unwrap_or_else(|| "tollgate".to_string());
    check_identifier(&domain).map_err(|r| err("global.domain", r))?;
    Ok(Global {
        cluster,
        domain,
        timeout: raw.timeout.unwrap_or(Duration::from_millis(50)),
        failure_mode: raw.failure_mode.unwrap_or_default(),
    })
}

#[inline(never)]
fn pricing(raw: Ordered<RawPrice>) -> Result<Vec<(Glob, Price)>, ConfigError> {
    let mut out: Vec<(Glob, Price)> = Vec::with_capacity(raw.0.len());
    for (pattern, p) in raw.0 {
        let ppath = key_path("pricing", &pattern);
        let glob = Glob::new(&pattern).map_err(|r| err(&ppath, r))?;
        if out.iter().any(|(g, _)| *g == glob) {
            return Err(err(&ppath, "duplicate field"));
        }
        let price_of = |field: &str, v: Option<f64>| -> Result<Option<f64>, ConfigError> {
            match v {
                Some(v) if !(v.is_finite() && v >= 0.0) => Err(err(
                    &field_path(&ppath, field),
                    format!("expected a non-negative price, got {v}"),
                )),
                v => Ok(v),
            }
        };
        let input = required(price_of("input", p.input)?, &ppath, "input")?;
        let output = required(price_of("output", p.output)?, &ppath, "output")?;
        // Unset cache prices fall back to the input price: a cached token rarely costs more.
        let cache_write = price_of("cache_write", p.cache_write)?.unwrap_or(input);
        let cache_read = price_of("cache_read", p.cache_read)?.unwrap_or(input);
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
fn admin(raw: RawAdmin) -> Result<Admin, ConfigError> {
    let path = match raw.path {
        Some(p) => {
            check_path_prefix(&p).map_err(|r| err("admin.path", r))?;
            if p.ends_with('/') {
                return Err(err(
                    "admin.path",
                    format!("must not end with \"/\", got {}", quote(&p)),
                ));
            }
            if API_PATHS.iter().any(|api| {
                api.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }) {
                return Err(err(
                    "admin.path",
                    format!("{} would cover the provider API paths", quote(&p)),
                ));
            }
            p
        }
        None => DEFAULT_ADMIN_PATH.to_string(),
    };
    let keys = required(raw.keys, "admin", "keys")?;
    if keys.is_empty() {
        return Err(err("admin.keys", "must list at least one key"));
    }
    Ok(Admin { path, keys })
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

#[inline(never)]
fn limits(raw: &[RawLimit], path: &str) -> Result<Vec<Limit>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, l)| limit(l, &index_path(path, i)))
        .collect()
}

/// A limit's amount as written: a count of its kind, USD, or concurrent requests.
#[derive(Clone, Copy)]
enum Amount {
    Count(LimitKind, u64),
    Usd(f64),
    Concurrent(u64),
}

#[inline(never)]
fn limit(raw: &RawLimit, path: &str) -> Result<Limit, ConfigError> {
    use Amount::{Concurrent, Count, Usd};
    let count = |kind: LimitKind, n: Option<u64>| n.map(|n| Count(kind, n));
    let fields = [
        ("tokens", count(LimitKind::Tokens, raw.tokens)),
        ("input_tokens", count(LimitKind::InputTokens, raw.input_tokens)),
        ("output_tokens", count(LimitKind::OutputTokens, raw.output_tokens)),
        ("requests", count(LimitKind::Requests, raw.requests)),
        ("cost_usd", raw.cost_usd.map(Usd)),
        ("concurrent", raw.concurrent.map(Concurrent)),
    ];
    let mut present = fields
        .into_iter()
        .filter_map(|(field, amount)| amount.map(|a| (field, a)));
    let Some((field, amount)) = present.next() else {
        return Err(err(
            path,
            "expected one of tokens, input_tokens, output_tokens, requests, cost_usd, concurrent",
        ));
    };
    if let Some((other, _)) = present.next() {
        return Err(err(
            path,
            format!(
                "a limit has exactly one of tokens, input_tokens, output_tokens, requests, \
                 cost_usd, concurrent, got {field} and {other}"
            ),
        ));
    }
    let amount_path = field_path(path, field);

    match amount {
        Concurrent(n) => {
            if raw.per.is_some() {
                return Err(err(&field_path(path, "per"), "not allowed with concurrent"));
            }
            if raw.window.is_some() {
                return Err(err(&field_path(path, "window"), "not allowed with concurrent"));
            }
            match u32::try_from(n) {
                Ok(n) if n > 0 => Ok(Limit::Concurrent(n)),
                _ => Err(err(
                    &amount_path,
                    format!("must be between 1 and {}, got {n}", u32::MAX),
                )),
            }
        }
        Count(kind, n) => {
            let (per, window) = per_window(raw, path)?;
            if n == 0 {
                return Err(err(&amount_path, "must be greater than zero"));
            }
            Ok(Limit::Rate {
                kind,
                amount: n,
                per,
                window,
            })
        }
        Usd(usd) => {
            let (per, window) = per_window(raw, path)?;
            Ok(Limit::Rate {
                kind: LimitKind::CostUsd,
                amount: usd_micros(usd, &amount_path)?,
                per,
                window,
            })
        }
    }
}

/// A rate limit's `per` (required) and `window` (default sliding).
fn per_window(raw: &RawLimit, path: &str) -> Result<(Per, WindowKind), ConfigError> {
    let per = match required(raw.per, path, "per")? {
        RawPer::Second => Per::Second,
        RawPer::Minute => Per::Minute,
        RawPer::Hour => Per::Hour,
        RawPer::Day => Per::Day,
        RawPer::Month => Per::Month,
    };
    let window = match raw.window {
        None | Some(RawWindow::Sliding) => WindowKind::Sliding,
        Some(RawWindow::Fixed) => WindowKind::Fixed,
    };
    Ok((per, window))
}

/// A `cost_usd` amount in micro-dollars.
fn usd_micros(usd: f64, path: &str) -> Result<u64, ConfigError> {
    if !(usd.is_finite() && usd > 0.0) {
        return Err(err(
            path,
            format!("must be a positive amount of USD, got {usd}"),
        ));
    }
    let micros = (usd * 1e6).round();
    if micros < 1.0 {
        return Err(err(path, "must be at least 0.000001 (one micro-dollar)"));
    }
    if micros >= MAX_WHOLE_F64 {
        return Err(err(path, format!("is too large, got {usd}")));
    }
    Ok(micros as u64)
}

/// Whole numbers written as floats (`1e6`) are exact up to 2^53.
const MAX_WHOLE_F64: f64 = 9_007_199_254_740_992.0;

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
