//! `tollgate check`: the filter's own `on_configure` validation, on a tollgate JSON
//! configuration or on every tollgate filter of an Envoy bootstrap or Istio `EnvoyFilter`, plus
//! what only the surrounding Envoy configuration can tell (the VM's environment, the stage a
//! filter's place calls for, the rate-limit cluster).

use std::cell::RefCell;

use tollgate_core::config::{self, Config, Stage};
use tollgate_core::pricing::NO_PRICE;

use crate::envoy::{self, Document, EnvLookup, Filter, Placement};
use crate::Outcome;

/// What `--no-env` gives every `key_env` read from the shell: a well-formed key, so the rest
/// of the configuration is checked without the secrets.
pub const PLACEHOLDER_KEY: &str = "tollgate-check-placeholder-key";

/// Where `key_env` variables come from.
pub struct Env<'a> {
    /// The shell's environment.
    pub shell: &'a dyn Fn(&str) -> Option<String>,
    /// `--no-env`: every variable the shell would supply counts as set.
    pub skip: bool,
}

impl Env<'_> {
    fn shell(&self, name: &str) -> Option<String> {
        if self.skip {
            Some(PLACEHOLDER_KEY.to_string())
        } else {
            (self.shell)(name)
        }
    }
}

/// `tollgate check FILE` on the file's bytes.
pub fn check(file: &str, raw: &[u8], env: &Env<'_>) -> Outcome {
    let doc = match std::str::from_utf8(raw) {
        Ok(text) => envoy::classify(text),
        // The filter's parser has the message for bytes that are not text.
        Err(_) => Ok(Document::Tollgate),
    };
    match doc {
        Ok(Document::Tollgate) => check_json(raw, env),
        Ok(Document::Envoy(docs)) => check_envoy(file, &docs, env),
        Err(e) => Outcome::fail(1, format!("{file}: {e}\n")),
    }
}

/// A plain tollgate configuration: the output it always had, one `ok:` line and warnings.
fn check_json(raw: &[u8], env: &Env<'_>) -> Outcome {
    let lookup = |name: &str| match env.shell(name) {
        Some(v) => EnvLookup::Shell(v),
        None => EnvLookup::NotInShell,
    };
    match parse(raw, &lookup, false) {
        Ok(cfg) => Outcome {
            code: 0,
            stdout: format!("ok: {}\n", summary(&cfg)),
            stderr: price_warnings(&cfg, ""),
        },
        // The same `<path>: <reason>` the filter logs after "tollgate: invalid configuration: ".
        Err(errors) => Outcome::fail(1, errors.iter().map(|e| format!("{e}\n")).collect()),
    }
}

/// Every tollgate filter of an Envoy or Istio document, each on its own lines.
fn check_envoy(file: &str, docs: &[yaml_rust2::Yaml], env: &Env<'_>) -> Outcome {
    let (filters, skipped) = envoy::filters(docs);
    let mut out = Outcome::default();
    for s in &skipped {
        out.stderr.push_str(&format!(
            "note: {}: not a tollgate filter (its name, root_id, vm_id and module do not say \
             tollgate), not checked\n",
            s.label
        ));
    }
    if filters.is_empty() {
        out.code = 1;
        out.stderr.push_str(&format!(
            "{file}: no tollgate wasm filter (envoy.filters.http.wasm whose name, root_id, \
             vm_id or module names tollgate)\n"
        ));
        return out;
    }
    let clusters = envoy::static_clusters(docs);
    let mut configs: Vec<(&Filter, Config)> = Vec::new();
    for f in &filters {
        let mut errors = Vec::new();
        if !f.stop_iteration {
            errors.push(
                "config.allow_on_headers_stop_iteration must be true: tollgate reads the \
                 request body before it rewrites headers or answers"
                    .to_string(),
            );
        }
        let parsed = match &f.configuration {
            Ok(json) => {
                let lookup = |name: &str| f.lookup(name, &|n| env.shell(n));
                parse(json.as_bytes(), &lookup, true)
                    .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
            }
            Err(e) => Err(vec![e.clone()]),
        };
        match parsed {
            Ok(cfg) => {
                errors.extend(placement_errors(f, &cfg));
                if let (Some(g), Some(names)) = (&cfg.global, &clusters) {
                    if !names.contains(&g.cluster) {
                        errors.push(format!(
                            "global.cluster: {:?} is not a cluster of this file (clusters: {})",
                            g.cluster,
                            names.join(", ")
                        ));
                    }
                }
                if errors.is_empty() {
                    out.stdout
                        .push_str(&format!("ok: {}: {}\n", f.label, summary(&cfg)));
                }
                out.stderr
                    .push_str(&price_warnings(&cfg, &format!("{}: ", f.label)));
                configs.push((f, cfg));
            }
            Err(e) => errors.extend(e),
        }
        if !errors.is_empty() {
            out.code = 1;
        }
        for e in errors {
            out.stderr.push_str(&format!("error: {}: {e}\n", f.label));
        }
    }
    for (f, cfg) in &configs {
        if cfg.stage == Stage::Upstream
            && !configs
                .iter()
                .any(|(d, c)| c.stage == Stage::Downstream && d.vm_id == f.vm_id)
        {
            out.code = 1;
            out.stderr.push_str(&format!(
                "error: {}: an upstream-stage filter needs a downstream tollgate filter with \
                 the same vm_id ({:?}): that one identifies, admits and meters the request\n",
                f.label, f.vm_id
            ));
        }
    }
    out
}

/// A filter's stage must fit where it sits: an upstream-stage configuration in a connection
/// manager would never see a retry attempt, and a downstream one in a cluster runs per attempt.
fn placement_errors(f: &Filter, cfg: &Config) -> Option<String> {
    match (f.placement, cfg.stage) {
        (Placement::Downstream, Stage::Upstream) => Some(
            "stage: \"upstream\" in a connection manager's http_filters: an upstream-stage \
             instance belongs in a cluster's upstream http_filters"
                .to_string(),
        ),
        (Placement::Upstream, Stage::Downstream) => Some(
            "stage: this filter is an upstream http filter (run once per attempt), so its \
             configuration needs \"stage\": \"upstream\""
                .to_string(),
        ),
        _ => None,
    }
}

/// The filter's parser, with `key_env` read through `lookup`. A missing variable is told from
/// the CLI's point of view: the filter's own message speaks of the VM, which the CLI is not.
/// The filter stops at its first error; here every missing variable is reported at once (each
/// is filled with a placeholder and the parse runs again), then the first other error, if any.
fn parse(
    raw: &[u8],
    lookup: &dyn Fn(&str) -> EnvLookup,
    in_envoy: bool,
) -> Result<Config, Vec<config::ConfigError>> {
    let mut filled: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    loop {
        let misses: RefCell<Vec<(String, EnvLookup)>> = RefCell::new(Vec::new());
        let env = |name: &str| {
            if filled.iter().any(|f| f == name) {
                return Some(PLACEHOLDER_KEY.to_string());
            }
            let found = lookup(name);
            match &found {
                EnvLookup::Inline(v) | EnvLookup::Shell(v) if !v.trim().is_empty() => {
                    return Some(v.clone());
                }
                _ => {}
            }
            misses.borrow_mut().push((name.to_string(), found));
            None
        };
        let mut e = match config::parse_with_env(raw, &env) {
            Ok(cfg) if errors.is_empty() => return Ok(cfg),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let misses = misses.into_inner();
        let miss = misses.iter().find(|(var, _)| {
            e.path.ends_with("key_env")
                && e.reason.contains(&format!("environment variable {var} "))
        });
        match miss {
            Some((var, how)) if !filled.contains(var) => {
                e.reason = missing_variable(var, how, in_envoy);
                errors.push(e);
                filled.push(var.clone());
            }
            _ => {
                errors.push(e);
                return Err(errors);
            }
        }
    }
}

fn missing_variable(var: &str, how: &EnvLookup, in_envoy: bool) -> String {
    match how {
        EnvLookup::NotPassed => format!(
            "environment variable {var} is not passed to the VM: add it to this filter's \
             vm_config.environment_variables.host_env_keys (Envoy refuses the configuration \
             without it)"
        ),
        EnvLookup::Inline(_) => format!(
            "environment variable {var} is empty in this filter's \
             vm_config.environment_variables.key_values"
        ),
        EnvLookup::NotInShell | EnvLookup::Shell(_) if in_envoy => format!(
            "environment variable {var} is not set in this shell; this filter takes it from \
             Envoy's environment (host_env_keys), so Envoy needs it set when it starts \
             (check --no-env skips the keys)"
        ),
        EnvLookup::NotInShell | EnvLookup::Shell(_) => format!(
            "environment variable {var} is not set in this shell; Envoy needs it in its own \
             environment, passed to the VM by vm_config.environment_variables.host_env_keys \
             (check --no-env skips the keys)"
        ),
    }
}

/// `2 consumers, 1 accounts, 1 default limits, stage downstream, admin at /tollgate`.
fn summary(cfg: &Config) -> String {
    let mut line = format!(
        "{} consumers, {} accounts, {} default limits, stage {}",
        cfg.consumers.len(),
        cfg.accounts.len(),
        cfg.limits.len(),
        cfg.stage.as_str()
    );
    if cfg.anonymous.is_some() {
        line.push_str(", anonymous allowed");
    }
    if let Some(g) = &cfg.global {
        line.push_str(&format!(", global via cluster {}", g.cluster));
    }
    if let Some(a) = &cfg.admin {
        line.push_str(&format!(", admin at {}", a.path));
    }
    line
}

/// Warnings (one line each, after `prefix`) about budgets that would not bind: a consumer
/// under a `cost_usd` limit (its own or the default limits) may name a model with no price,
/// which the filter refuses with 403 `model has no price`. An allow-list entry counts as priced
/// when a pricing entry matches its name, or, for a glob, when one pricing glob is that glob or
/// a literal and `*` covering its literal prefix (`Config::prices_every_match`); no allow-list
/// (and `anonymous`) counts as priced only with a `"*"` price.
fn price_warnings(cfg: &Config, prefix: &str) -> String {
    let refused = format!("requests for unpriced models get 403 \"{NO_PRICE}\"");
    let mut out = String::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        if !Config::needs_price(&c.limits) {
            continue;
        }
        let whose = if c.default_limits {
            format!(
                "consumer {} has a cost_usd limit (from the default limits)",
                c.name
            )
        } else {
            format!("consumer {} has a cost_usd limit", c.name)
        };
        let Some(globs) = &c.models else {
            if !cfg.has_default_price() {
                out.push_str(&format!(
                    "warning: {prefix}consumers[{i}]: {whose}, no models allow-list and no \"*\" price: {refused}\n"
                ));
            }
            continue;
        };
        for (j, g) in globs.iter().enumerate() {
            if cfg.prices_every_match(g) {
                continue;
            }
            let what = if g.as_str().contains(['*', '?']) {
                "matches models that no pricing glob covers"
            } else {
                "has no price"
            };
            out.push_str(&format!(
                "warning: {prefix}consumers[{i}].models[{j}]: {:?} {what}, and {whose}: {refused}\n",
                g.as_str()
            ));
        }
    }
    if let Some(a) = &cfg.anonymous {
        if Config::needs_price(&a.limits) && !cfg.has_default_price() {
            out.push_str(&format!(
                "warning: {prefix}anonymous: has a cost_usd limit and there is no \"*\" price: {refused}\n"
            ));
        }
    }
    out
}
