//! The walk from the document tree to a [`Config`]: each section is read into its struct
//! literal field by field, every value checked where it is read, so a refusal names the field
//! path (`consumers[1].limits[0].per: expected one of …, got "fortnight"`).
//!
//! Fields are read in the order of the struct literals below; when a document has several
//! faults, the first one read is the one reported.

use super::newtypes::check_key_text;
use super::node::{
    as_array, as_bool, as_duration, as_items, as_number, as_str, as_uint, index_path, key_path,
    one_of, Node, Obj, MAX_WHOLE_F64,
};
use super::*;
use crate::limits::{LimitKind, Per, WindowKind};

const STAGES: &[(&str, Stage)] = &[
    ("downstream", Stage::Downstream),
    ("upstream", Stage::Upstream),
];

const APIS: &[(&str, Api)] = &[
    ("anthropic", Api::Anthropic),
    ("openai", Api::OpenAi),
    ("gemini", Api::Gemini),
];

const STRATEGIES: &[(&str, Strategy)] = &[
    ("least_loaded", Strategy::LeastLoaded),
    ("round_robin", Strategy::RoundRobin),
    ("priority", Strategy::Priority),
];

const FAILURE_MODES: &[(&str, FailureMode)] =
    &[("allow", FailureMode::Allow), ("deny", FailureMode::Deny)];

const PERS: &[(&str, Per)] = &[
    ("second", Per::Second),
    ("minute", Per::Minute),
    ("hour", Per::Hour),
    ("day", Per::Day),
    ("month", Per::Month),
];

const WINDOWS: &[(&str, WindowKind)] = &[
    ("sliding", WindowKind::Sliding),
    ("fixed", WindowKind::Fixed),
];

/// The whole configuration from the document's root object.
pub(super) fn config(
    root: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let top = Obj::new(
        root,
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
    // Read first: the sections below depend on them.
    let stage = top.field("stage", Stage::Downstream, |n, p| one_of(n, p, STAGES))?;
    let limits = top.field("limits", Vec::new(), parse_limits)?;
    let consumer_header = top.optional("consumer_header", as_header_name)?;
    let anonymous = top.optional("anonymous", |n, p| parse_anonymous(n, p, &limits))?;
    let names_without_keys = consumer_header.is_some() || top.get("consumer_claim").is_some();
    Ok(Config {
        consumers: top.field("consumers", Vec::new(), |n, p| {
            parse_consumers(n, p, &limits, names_without_keys, anonymous.is_some())
        })?,
        accounts: top.field("accounts", Vec::new(), |n, p| {
            parse_accounts(n, p, stage, env)
        })?,
        selection: top.field("selection", Selection::default(), parse_selection)?,
        global: top.optional("global", parse_global)?,
        estimate: top.field("estimate", EstimateCfg::default(), |n, p| {
            let obj = Obj::new(n, p, &["output_reserve"])?;
            Ok(EstimateCfg {
                output_reserve: obj.field("output_reserve", DEFAULT_OUTPUT_RESERVE, as_uint)?,
            })
        })?,
        pricing: crate::pricing::with_builtins(top.field("pricing", Vec::new(), parse_pricing)?),
        admin: top.optional("admin", parse_admin)?,
        passthrough_paths: top.field("passthrough_paths", Vec::new(), |n, p| {
            as_items(n, p, parse_passthrough)
        })?,
        max_body_bytes: top.field("max_body_bytes", DEFAULT_MAX_BODY_BYTES, |n, p| {
            let v = as_uint(n, p)?;
            if !(1..=MAX_BODY_BYTES_LIMIT).contains(&v) {
                return Err(err(
                    p,
                    format!("must be between 1 and {MAX_BODY_BYTES_LIMIT} (1 GiB), got {v}"),
                ));
            }
            Ok(v)
        })?,
        strip_request_headers: top.field("strip_request_headers", Vec::new(), |n, p| {
            let mut out: Vec<String> = Vec::new();
            for h in as_items(n, p, |item, ipath| {
                let h = as_header_name(item, ipath)?;
                if h.starts_with(':') || RESERVED_ACCOUNT_HEADERS.contains(&h.as_str()) {
                    return Err(err(ipath, "this header cannot be stripped"));
                }
                Ok(h)
            })? {
                if !out.contains(&h) {
                    out.push(h);
                }
            }
            Ok(out)
        })?,
        consumer_claim: top.optional("consumer_claim", |n, p| {
            parse_consumer_claim(n, p, consumer_header.is_some())
        })?,
        lease_ttl: top.field(
            "lease_ttl",
            Duration::from_millis(DEFAULT_LEASE_TTL_MS),
            |n, p| {
                let d = as_duration(n, p)?;
                // A lease renews at a third of its life: shorter would write on every chunk.
                if d.millis() < 1_000 {
                    return Err(err(p, "must be at least 1s"));
                }
                Ok(d)
            },
        )?,
        stage,
        consumer_header,
        anonymous,
        limits,
    })
}

/// `consumer_claim`: `metadata` (required) and `claim` (default `sub`); not together with
/// `consumer_header`.
fn parse_consumer_claim(
    node: &Node,
    path: &str,
    has_consumer_header: bool,
) -> Result<ConsumerClaim, ConfigError> {
    let obj = Obj::new(node, path, &["metadata", "claim"])?;
    let text = |n: &Node, p: &str| -> Result<String, ConfigError> {
        let v = as_str(n, p)?;
        if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                p,
                format!(
                    "expected 1 to 128 printable ASCII characters, got {}",
                    quote(v)
                ),
            ));
        }
        Ok(v.to_string())
    };
    let claim = ConsumerClaim {
        metadata: obj.required("metadata", text)?,
        claim: obj.field("claim", "sub".to_string(), text)?,
    };
    if has_consumer_header {
        return Err(err(
            path,
            "set only one of consumer_claim and consumer_header",
        ));
    }
    Ok(claim)
}

/// A `passthrough_paths` entry: a prefix (its API inferred from it) or
/// `{"prefix": "...", "api": "anthropic|openai|gemini"}`.
fn parse_passthrough(item: &Node, path: &str) -> Result<Passthrough, ConfigError> {
    let (prefix, api) = match item {
        Node::Object(_) => {
            let obj = Obj::new(item, path, &["prefix", "api"])?;
            let prefix = obj.required("prefix", as_str)?;
            let api = obj.optional("api", |n, p| one_of(n, p, APIS))?;
            check_path_prefix(prefix).map_err(|r| err(&obj.path("prefix"), r))?;
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
    let own = obj.field("limits", Vec::new(), parse_limits)?;
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
    let mut seen: Vec<(KeyMatcher, usize)> = Vec::new();
    for (i, item) in as_array(node, path)?.iter().enumerate() {
        let cpath = index_path(path, i);
        let obj = Obj::new(item, &cpath, &["name", "keys", "limits", "models"])?;

        let name_path = obj.path("name");
        let name = obj.required("name", as_str)?;
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

        let keys = obj.field("keys", Vec::new(), |n, keys_path| {
            as_items(n, keys_path, |key, kpath| {
                let matcher = as_key_matcher(key, kpath)?;
                if let Some(&(_, owner)) = seen.iter().find(|(m, _)| *m == matcher) {
                    let owner = consumers.get(owner).map_or(name, |c| c.name.as_str());
                    return Err(err(
                        kpath,
                        format!("key is already used by consumer {}", quote(owner)),
                    ));
                }
                seen.push((matcher.clone(), i));
                Ok(matcher)
            })
        })?;
        if keys.is_empty() && !has_consumer_header {
            return Err(err(
                &obj.path("keys"),
                "a consumer needs at least one key unless consumer_header or consumer_claim is set",
            ));
        }

        let own = obj.field("limits", Vec::new(), parse_limits)?;
        let default_limits = own.is_empty();
        consumers.push(Consumer {
            name: name.to_string(),
            keys,
            limits: if default_limits {
                defaults.to_vec()
            } else {
                own
            },
            default_limits,
            models: obj.optional("models", |n, mpath| {
                if as_array(n, mpath)?.is_empty() {
                    return Err(err(
                        mpath,
                        "must not be empty (leave it out to allow every model)",
                    ));
                }
                as_items(n, mpath, |g, gpath| {
                    Glob::new(as_str(g, gpath)?).map_err(|r| err(gpath, r))
                })
            })?,
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
        let name = obj.required("name", as_str)?;
        check_name(name).map_err(|r| err(&name_path, r))?;
        if accounts.iter().any(|a| a.name == name) {
            return Err(err(
                &name_path,
                format!("duplicate account name {}", quote(name)),
            ));
        }
        let provider = obj.required("provider", |n, p| one_of(n, p, APIS))?;
        let key = match (obj.get("key"), obj.get("key_env")) {
            (Some(_), Some(_)) => return Err(err(&apath, "set only one of key and key_env")),
            (None, None) => return Err(err(&apath, "needs key or key_env")),
            (Some(n), None) => {
                let kpath = obj.path("key");
                let key = as_str(n, &kpath)?;
                check_key_text(key).map_err(|r| err(&kpath, r))?;
                Secret::new(key)
            }
            (None, Some(n)) => key_from_env(n, &obj.path("key_env"), env)?,
        };

        accounts.push(Account {
            name: name.to_string(),
            provider,
            key,
            headers: obj.field("headers", Vec::new(), |n, hpath| {
                parse_account_headers(n, hpath, provider)
            })?,
            route: obj.optional("route", |n, rpath| {
                let route = as_str(n, rpath)?;
                if stage == Stage::Upstream {
                    return Err(err(
                        rpath,
                        "not allowed with stage upstream (routing has already happened there)",
                    ));
                }
                if route.is_empty() {
                    return Err(err(rpath, "must not be empty"));
                }
                check_header_value(route).map_err(|r| err(rpath, r))?;
                Ok(route.to_string())
            })?,
            weight: obj.field("weight", 1, |n, wpath| {
                let w = as_uint(n, wpath)?;
                match u32::try_from(w) {
                    Ok(w) if (1..=1_000_000).contains(&w) => Ok(w),
                    _ => Err(err(
                        wpath,
                        format!("must be between 1 and 1000000, got {w}"),
                    )),
                }
            })?,
            limits: obj.field("limits", Vec::new(), parse_limits)?,
            disable_for: obj.field(
                "disable_for",
                Duration::from_millis(DEFAULT_DISABLE_FOR_MS),
                as_duration,
            )?,
        });
    }
    Ok(accounts)
}

/// The key in the VM environment variable named by `key_env`.
fn key_from_env(
    node: &Node,
    epath: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let var = as_str(node, epath)?;
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

/// An account's extra headers: lowercased names it may set, values without control characters.
fn parse_account_headers(
    node: &Node,
    hpath: &str,
    provider: Api,
) -> Result<Vec<(String, String)>, ConfigError> {
    let Node::Object(entries) = node else {
        return Err(err(
            hpath,
            format!("expected an object, got {}", node.kind()),
        ));
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for (raw_name, value) in entries {
        let vpath = key_path(hpath, raw_name);
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
    Ok(headers)
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
    Ok(Selection {
        strategy: obj.field("strategy", Strategy::LeastLoaded, |n, p| {
            one_of(n, p, STRATEGIES)
        })?,
        affinity: obj.optional("affinity", |n, p| {
            let a = Obj::new(n, p, &["header", "conversation", "ttl", "max_sessions"])?;
            Ok(Affinity {
                header: a.optional("header", as_header_name)?,
                conversation: a.field("conversation", false, as_bool)?,
                ttl: a.field("ttl", Duration::from_millis(5 * 3_600_000), as_duration)?,
                max_sessions: a.field("max_sessions", DEFAULT_MAX_SESSIONS, |n, mpath| {
                    let v = as_uint(n, mpath)?;
                    match u32::try_from(v) {
                        Ok(v) if (1..=MAX_SESSIONS_LIMIT).contains(&v) => Ok(v),
                        _ => Err(err(
                            mpath,
                            format!("must be between 1 and {MAX_SESSIONS_LIMIT}, got {v}"),
                        )),
                    }
                })?,
            })
        })?,
    })
}

#[inline(never)]
fn parse_global(node: &Node, path: &str) -> Result<Global, ConfigError> {
    let obj = Obj::new(
        node,
        path,
        &["cluster", "domain", "timeout", "failure_mode"],
    )?;
    Ok(Global {
        cluster: obj.required("cluster", as_identifier)?,
        domain: obj.field("domain", "tollgate".to_string(), as_identifier)?,
        timeout: obj.field("timeout", Duration::from_millis(50), as_duration)?,
        failure_mode: obj.field("failure_mode", FailureMode::Allow, |n, p| {
            one_of(n, p, FAILURE_MODES)
        })?,
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
        let price = |n: &Node, fpath: &str| -> Result<f64, ConfigError> {
            let v = as_number(n, fpath)?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(
                    fpath,
                    format!("expected a non-negative price, got {v}"),
                ));
            }
            Ok(v)
        };
        let input = obj.required("input", price)?;
        let output = obj.required("output", price)?;
        // Unset cache prices fall back to the input price: a cached token rarely costs more.
        let cache_write = obj.field("cache_write", input, price)?;
        let cache_read = obj.field("cache_read", input, price)?;
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
    Ok(Admin {
        path: obj.field("path", DEFAULT_ADMIN_PATH.to_string(), |n, ppath| {
            let p = as_str(n, ppath)?;
            check_path_prefix(p).map_err(|r| err(ppath, r))?;
            if p.ends_with('/') {
                return Err(err(
                    ppath,
                    format!("must not end with \"/\", got {}", quote(p)),
                ));
            }
            if API_PATHS.iter().any(|api| {
                api.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }) {
                return Err(err(
                    ppath,
                    format!("{} would cover the provider API paths", quote(p)),
                ));
            }
            Ok(p.to_string())
        })?,
        keys: obj.required("keys", |n, kpath| {
            if as_array(n, kpath)?.is_empty() {
                return Err(err(kpath, "must list at least one key"));
            }
            as_items(n, kpath, as_key_matcher)
        })?,
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
    as_items(node, path, parse_limit)
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

    let per = obj.required("per", |n, p| one_of(n, p, PERS))?;
    let window = obj.field("window", WindowKind::Sliding, |n, p| one_of(n, p, WINDOWS))?;
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

/// A client or admin key (`sha256:<hex>` or plain); the reason never repeats it.
fn as_key_matcher(node: &Node, path: &str) -> Result<KeyMatcher, ConfigError> {
    KeyMatcher::parse(as_str(node, path)?).map_err(|r| err(path, r))
}

/// A header name, lowercased.
fn as_header_name(node: &Node, path: &str) -> Result<String, ConfigError> {
    header_name(as_str(node, path)?).map_err(|r| err(path, r))
}

/// A cluster or domain name.
fn as_identifier(node: &Node, path: &str) -> Result<String, ConfigError> {
    let s = as_str(node, path)?;
    check_identifier(s).map_err(|r| err(path, r))?;
    Ok(s.to_string())
}

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
