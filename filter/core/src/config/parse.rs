//! The walk from the document tree to a [`Config`]: each section is read field by field and
//! every value checked where it is read, so a refusal names the field path
//! (`consumers[1].limits[0].per: expected one of …, got "fortnight"`). When a document has
//! several faults, the first one read is the one reported.

use super::newtypes::check_key_text;
use super::node::{
    as_array, as_bool, as_duration, as_number, as_str, as_uint, display_f64, index_path, key_path,
    one_of, Node, Obj, MAX_WHOLE_F64,
};
use super::*;
use crate::limits::{LimitKind, Per, WindowKind};
use crate::provider;

/// The whole configuration from the document's root object.
#[inline(never)]
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
            "metrics",
            "access_log_facts",
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
    let mut cfg = Config {
        stage,
        consumer_header,
        anonymous,
        limits,
        ..Config::default()
    };
    if let Some(n) = top.get("consumers") {
        cfg.consumers = parse_consumers(
            n,
            &top.path("consumers"),
            &cfg.limits,
            cfg.consumer_header.is_some() || top.get("consumer_claim").is_some(),
            cfg.anonymous.is_some(),
        )?;
    }
    if let Some(n) = top.get("accounts") {
        cfg.accounts = parse_accounts(n, &top.path("accounts"), stage, env)?;
    }
    if let Some(n) = top.get("selection") {
        cfg.selection = parse_selection(n, &top.path("selection"))?;
    }
    if let Some(n) = top.get("global") {
        cfg.global = Some(parse_global(n, &top.path("global"))?);
    }
    parse_rest(&top, &mut cfg)?;
    Ok(cfg)
}

/// The sections after the callers, accounts and limits: estimate, pricing, admin, paths,
/// body size, headers to strip, the consumer claim, leases and metrics (in that order, so
/// the first fault read is the one reported).
#[inline(never)]
fn parse_rest(top: &Obj<'_>, cfg: &mut Config) -> Result<(), ConfigError> {
    if let Some(n) = top.get("estimate") {
        cfg.estimate.output_reserve =
            parse_estimate(n, &top.path("estimate"))?.unwrap_or(cfg.estimate.output_reserve);
    }
    if let Some(n) = top.get("pricing") {
        cfg.pricing = crate::pricing::with_builtins(parse_pricing(n, &top.path("pricing"))?);
    }
    if let Some(n) = top.get("admin") {
        cfg.admin = Some(parse_admin(n, &top.path("admin"))?);
    }
    if let Some(n) = top.get("passthrough_paths") {
        cfg.passthrough_paths = parse_passthrough_paths(n, &top.path("passthrough_paths"))?;
    }
    if let Some(n) = top.get("max_body_bytes") {
        cfg.max_body_bytes = parse_max_body_bytes(n, &top.path("max_body_bytes"))?;
    }
    if let Some(n) = top.get("access_log_facts") {
        cfg.access_log_facts = as_bool(n, &top.path("access_log_facts"))?;
    }
    if let Some(n) = top.get("strip_request_headers") {
        cfg.strip_request_headers =
            parse_strip_request_headers(n, &top.path("strip_request_headers"))?;
    }
    if let Some(n) = top.get("consumer_claim") {
        cfg.consumer_claim = Some(parse_consumer_claim(
            n,
            &top.path("consumer_claim"),
            cfg.consumer_header.is_some(),
        )?);
    }
    if let Some(n) = top.get("lease_ttl") {
        cfg.lease_ttl = parse_lease_ttl(n, &top.path("lease_ttl"))?;
    }
    if let Some(n) = top.get("metrics") {
        if let Some(v) = parse_metrics(n, &top.path("metrics"))? {
            cfg.max_models = v;
        }
    }
    Ok(())
}

/// `estimate`: its `output_reserve`, if set.
#[inline(never)]
fn parse_estimate(node: &Node, path: &str) -> Result<Option<u64>, ConfigError> {
    let obj = Obj::new(node, path, &["output_reserve"])?;
    match obj.get("output_reserve") {
        Some(n) => Ok(Some(as_uint(n, &obj.path("output_reserve"))?)),
        None => Ok(None),
    }
}

/// `passthrough_paths`: an array of [`parse_passthrough`] entries.
#[inline(never)]
fn parse_passthrough_paths(node: &Node, path: &str) -> Result<Vec<Passthrough>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in as_array(node, path)?.iter().enumerate() {
        out.push(parse_passthrough(item, &index_path(path, i))?);
    }
    Ok(out)
}

/// `max_body_bytes`: 1 byte to 1 GiB.
#[inline(never)]
fn parse_max_body_bytes(node: &Node, path: &str) -> Result<u64, ConfigError> {
    let v = as_uint(node, path)?;
    if !(1..=MAX_BODY_BYTES_LIMIT).contains(&v) {
        return Err(err(
            path,
            format!("must be between 1 and {MAX_BODY_BYTES_LIMIT} (1 GiB), got {v}"),
        ));
    }
    Ok(v)
}

/// `strip_request_headers`: header names, deduplicated, none of them pseudo-headers or the
/// headers tollgate sets on the upstream request.
#[inline(never)]
fn parse_strip_request_headers(node: &Node, path: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for (i, item) in as_array(node, path)?.iter().enumerate() {
        let ipath = index_path(path, i);
        let h = header_name(as_str(item, &ipath)?).map_err(|r| err(&ipath, r))?;
        if h.starts_with(':') || RESERVED_ACCOUNT_HEADERS.contains(&h.as_str()) {
            return Err(err(&ipath, "this header cannot be stripped"));
        }
        if !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// `consumer_claim`: where the consumer's name is read from the JWT filter's metadata; refused
/// next to `consumer_header`.
#[inline(never)]
fn parse_consumer_claim(
    node: &Node,
    path: &str,
    has_consumer_header: bool,
) -> Result<ConsumerClaim, ConfigError> {
    let obj = Obj::new(node, path, &["metadata", "claim"])?;
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
    let claim = ConsumerClaim {
        metadata: field("metadata", None)?,
        claim: field("claim", Some("sub"))?,
    };
    if has_consumer_header {
        return Err(err(
            path,
            "set only one of consumer_claim and consumer_header",
        ));
    }
    Ok(claim)
}

/// `lease_ttl`: at least 1s.
#[inline(never)]
fn parse_lease_ttl(node: &Node, path: &str) -> Result<Duration, ConfigError> {
    let d = as_duration(node, path)?;
    // A lease renews at a third of its life: shorter would write on every chunk.
    if d.millis() < 1_000 {
        return Err(err(path, "must be at least 1s"));
    }
    Ok(d)
}

/// `metrics`: its `max_models`, if set.
#[inline(never)]
fn parse_metrics(node: &Node, path: &str) -> Result<Option<u32>, ConfigError> {
    let obj = Obj::new(node, path, &["max_models"])?;
    let Some(n) = obj.get("max_models") else {
        return Ok(None);
    };
    let mpath = obj.path("max_models");
    let v = as_uint(n, &mpath)?;
    if v > MAX_MODELS_LIMIT {
        return Err(err(
            &mpath,
            format!("must be at most {MAX_MODELS_LIMIT}, got {v}"),
        ));
    }
    Ok(Some(v as u32))
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
                Some(n) => Some(one_of(n, &obj.path("api"), API_NAMES)?),
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
        api: api.unwrap_or_else(|| provider::default_passthrough_api(prefix)),
    })
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
            Some(n) => one_of(n, &provider_path, API_NAMES)?,
            None => return Err(err(&provider_path, "missing required field")),
        };

        let key = parse_account_key(&obj, &apath, env)?;
        accounts.push(Account {
            name: name.to_string(),
            provider,
            key,
            headers: parse_account_headers(&obj, provider)?,
            route: parse_account_route(&obj, stage)?,
            weight: parse_account_weight(&obj)?,
            limits: match obj.get("limits") {
                Some(n) => parse_limits(n, &obj.path("limits"))?,
                None => Vec::new(),
            },
            disable_for: match obj.get("disable_for") {
                Some(n) => as_duration(n, &obj.path("disable_for"))?,
                None => Duration::from_millis(DEFAULT_DISABLE_FOR_MS),
            },
        });
    }
    Ok(accounts)
}

/// An account's key: `key` itself or the environment variable `key_env` names (exactly one).
#[inline(never)]
fn parse_account_key(
    obj: &Obj<'_>,
    apath: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    match (obj.get("key"), obj.get("key_env")) {
        (Some(_), Some(_)) => Err(err(apath, "set only one of key and key_env")),
        (None, None) => Err(err(apath, "needs key or key_env")),
        (Some(n), None) => {
            let kpath = obj.path("key");
            let key = as_str(n, &kpath)?;
            check_key_text(key).map_err(|r| err(&kpath, r))?;
            Ok(Secret::new(key))
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
            Ok(Secret::new(value))
        }
    }
}

/// An account's extra upstream `headers`: none of the ones tollgate sets, no duplicates.
#[inline(never)]
fn parse_account_headers(
    obj: &Obj<'_>,
    provider: Api,
) -> Result<Vec<(String, String)>, ConfigError> {
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
                || hname == provider::of(provider).credential_header()
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
    Ok(headers)
}

/// An account's `route` (downstream stage only).
#[inline(never)]
fn parse_account_route(obj: &Obj<'_>, stage: Stage) -> Result<Option<String>, ConfigError> {
    let Some(n) = obj.get("route") else {
        return Ok(None);
    };
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
    Ok(Some(route.to_string()))
}

/// An account's `weight`: 1 to 1,000,000, 1 by default.
fn parse_account_weight(obj: &Obj<'_>) -> Result<u32, ConfigError> {
    let Some(n) = obj.get("weight") else {
        return Ok(1);
    };
    let wpath = obj.path("weight");
    let w = as_uint(n, &wpath)?;
    match u32::try_from(w) {
        Ok(w) if (1..=1_000_000).contains(&w) => Ok(w),
        _ => Err(err(
            &wpath,
            format!("must be between 1 and 1000000, got {w}"),
        )),
    }
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

#[inline(never)]
fn parse_selection(node: &Node, path: &str) -> Result<Selection, ConfigError> {
    let obj = Obj::new(node, path, &["strategy", "affinity"])?;
    Ok(Selection {
        strategy: match obj.get("strategy") {
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
        },
        affinity: match obj.get("affinity") {
            Some(n) => {
                let a = Obj::new(
                    n,
                    &obj.path("affinity"),
                    &["header", "conversation", "ttl", "max_sessions"],
                )?;
                Some(Affinity {
                    header: match a.get("header") {
                        Some(n) => {
                            let hpath = a.path("header");
                            Some(header_name(as_str(n, &hpath)?).map_err(|r| err(&hpath, r))?)
                        }
                        None => None,
                    },
                    conversation: match a.get("conversation") {
                        Some(n) => as_bool(n, &a.path("conversation"))?,
                        None => false,
                    },
                    ttl: match a.get("ttl") {
                        Some(n) => as_duration(n, &a.path("ttl"))?,
                        None => Duration::from_millis(5 * 3_600_000),
                    },
                    max_sessions: match a.get("max_sessions") {
                        Some(n) => {
                            let mpath = a.path("max_sessions");
                            let v = as_uint(n, &mpath)?;
                            match u32::try_from(v) {
                                Ok(v) if (1..=MAX_SESSIONS_LIMIT).contains(&v) => v,
                                _ => {
                                    return Err(err(
                                        &mpath,
                                        format!(
                                            "must be between 1 and {MAX_SESSIONS_LIMIT}, got {v}"
                                        ),
                                    ))
                                }
                            }
                        }
                        None => DEFAULT_MAX_SESSIONS,
                    },
                })
            }
            None => None,
        },
    })
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
    Ok(Global {
        cluster: cluster.to_string(),
        domain: match obj.get("domain") {
            Some(n) => {
                let dpath = obj.path("domain");
                let d = as_str(n, &dpath)?;
                check_identifier(d).map_err(|r| err(&dpath, r))?;
                d.to_string()
            }
            None => "tollgate".to_string(),
        },
        timeout: match obj.get("timeout") {
            Some(n) => as_duration(n, &obj.path("timeout"))?,
            None => Duration::from_millis(50),
        },
        failure_mode: match obj.get("failure_mode") {
            Some(n) => one_of(
                n,
                &obj.path("failure_mode"),
                &[("allow", FailureMode::Allow), ("deny", FailureMode::Deny)],
            )?,
            None => FailureMode::Allow,
        },
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
                            format!("expected a non-negative price, got {}", display_f64(v)),
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
            if provider::covers_api_path(p) {
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

/// The APIs by their configuration names (`passthrough_paths[].api`, `accounts[].provider`).
const API_NAMES: &[(&str, Api)] = &[
    ("anthropic", Api::Anthropic),
    ("openai", Api::OpenAi),
    ("gemini", Api::Gemini),
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
                format!("must be a positive amount of USD, got {}", display_f64(usd)),
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
            return Err(err(
                &amount_path,
                format!("is too large, got {}", display_f64(usd)),
            ));
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
