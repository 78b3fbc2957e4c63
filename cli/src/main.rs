//! `tollgate`: the operator's command line, built from the filter's own core (see `core.rs`), so
//! that what it says about a configuration, a request body or a key is what the filter does.
//! Arguments are parsed by hand: three subcommands and one option do not need a parser crate.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use tollgate_core::api::{self, Api, Route};
use tollgate_core::config::{self, Config, KeyMatcher};
use tollgate_core::pricing::NO_PRICE;
use tollgate_core::provider::Endpoint;
use tollgate_core::request::RequestScanner;

const USAGE: &str = "\
usage: tollgate check CONFIG.json        validate a filter configuration (`-` reads stdin)
       tollgate estimate [--endpoint E]  estimate a request body read from stdin
       tollgate hash-key [KEY|-]         print sha256:<hex> of KEY (or stdin) for consumers[].keys

  E: messages (default) | chat | completions | embeddings | responses | gemini:MODEL
     or a request path, e.g. /v1beta/models/gemini-2.0-flash:streamGenerateContent

exit status: 0 ok; 1 invalid configuration or key; 2 usage error or a body the filter refuses (400)
";

/// The filter reads request bodies in windows of this size; so does `estimate`.
const WINDOW: usize = 64 * 1024;

/// What a command printed and how it ends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    code: u8,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }

    fn fail(code: u8, stderr: String) -> Self {
        Outcome {
            code,
            stdout: String::new(),
            stderr,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = run(&args, &mut io::stdin().lock(), &|name| {
        std::env::var(name).ok()
    });
    // A closed pipe (`tollgate … | head`) is not worth a panic or a message.
    let _ = io::stdout().write_all(out.stdout.as_bytes());
    let _ = io::stderr().write_all(out.stderr.as_bytes());
    ExitCode::from(out.code)
}

/// Runs one command line. `env` is the environment `key_env` is read from.
fn run(args: &[String], stdin: &mut dyn Read, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("check") => match rest {
            [file] => check(file, stdin, env),
            _ => usage("check takes one configuration file"),
        },
        Some("estimate") => match endpoint_arg(rest) {
            Ok((endpoint, model)) => estimate(endpoint, model, stdin),
            Err(msg) => usage(&msg),
        },
        Some("hash-key") => match rest {
            [] => hash_key_stdin(stdin),
            [dash] if dash == "-" => hash_key_stdin(stdin),
            [key] if !key.starts_with('-') => hash_key(key),
            _ => usage("hash-key takes at most one key"),
        },
        Some("-h" | "--help" | "help") => Outcome::ok(USAGE.to_string()),
        Some(other) => usage(&format!("unknown command {other:?}")),
        None => usage("a command is required"),
    }
}

fn usage(msg: &str) -> Outcome {
    Outcome::fail(2, format!("tollgate: {msg}\n{USAGE}"))
}

/// `tollgate check`: the filter's `on_configure` validation, with the process environment as
/// the VM environment for `key_env`.
fn check(file: &str, stdin: &mut dyn Read, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let raw = if file == "-" {
        read_all(stdin)
    } else {
        std::fs::read(file)
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => return Outcome::fail(1, format!("{file}: {e}\n")),
    };
    match config::parse_with_env(&raw, env) {
        Ok(cfg) => {
            let mut line = format!(
                "ok: {} consumers, {} accounts, {} default limits, stage {}",
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
            Outcome {
                code: 0,
                stdout: line + "\n",
                stderr: price_warnings(&cfg),
            }
        }
        // The same `<path>: <reason>` the filter logs after "tollgate: invalid configuration: ".
        Err(e) => Outcome::fail(1, format!("{e}\n")),
    }
}

/// Warnings (one line each) about budgets that would not bind: a consumer under a `cost_usd`
/// limit (its own or the default limits) may name a model with no price, which the filter
/// refuses with 403 `model has no price`. An allow-list entry counts as priced when a pricing
/// entry matches its name, or, for a glob, when one pricing glob is that glob or a literal and
/// `*` covering its literal prefix (`Config::prices_every_match`); no allow-list (and
/// `anonymous`) counts as priced only with a `"*"` price.
fn price_warnings(cfg: &Config) -> String {
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
                    "warning: consumers[{i}]: {whose}, no models allow-list and no \"*\" price: {refused}\n"
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
                "warning: consumers[{i}].models[{j}]: {:?} {what}, and {whose}: {refused}\n",
                g.as_str()
            ));
        }
    }
    if let Some(a) = &cfg.anonymous {
        if Config::needs_price(&a.limits) && !cfg.has_default_price() {
            out.push_str(&format!(
                "warning: anonymous: has a cost_usd limit and there is no \"*\" price: {refused}\n"
            ));
        }
    }
    out
}

/// `--endpoint E` / `--endpoint=E`, default `messages`: the endpoint, and the model its path
/// names (Gemini).
fn endpoint_arg(args: &[String]) -> Result<(Endpoint, Option<String>), String> {
    let value = match args {
        [] => return Ok((Endpoint::Messages, None)),
        [flag, value] if flag == "--endpoint" || flag == "-e" => value.as_str(),
        [one] => match one.strip_prefix("--endpoint=") {
            Some(value) => value,
            None => return Err(format!("unexpected argument {one:?}")),
        },
        _ => return Err("estimate takes only --endpoint".to_string()),
    };
    endpoint(value).ok_or_else(|| format!("unknown endpoint {value:?}"))
}

fn endpoint(name: &str) -> Option<(Endpoint, Option<String>)> {
    if name.starts_with('/') {
        return match api::classify("POST", name, Api::OpenAi, None, &[]) {
            Route::Metered { endpoint, model } => Some((endpoint, model)),
            _ => None,
        };
    }
    if let Some(model) = name.strip_prefix("gemini:") {
        // Exactly what the filter accepts in `/v1beta/models/{model}:generateContent`.
        let path = format!("/v1beta/models/{model}:generateContent");
        return match api::classify("POST", &path, Api::Gemini, None, &[]) {
            Route::Metered {
                endpoint: Endpoint::GenerateContent,
                model,
            } => Some((Endpoint::GenerateContent, model)),
            _ => None,
        };
    }
    // Gemini's endpoints need a model: `gemini:MODEL` or a path.
    Endpoint::ALL
        .into_iter()
        .find(|&e| e.api() != Api::Gemini && endpoint_name(e) == name)
        .map(|e| (e, None))
}

/// The name `--endpoint` takes for an endpoint, and `estimate` reports.
fn endpoint_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Messages => "messages",
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "completions",
        Endpoint::Embeddings => "embeddings",
        Endpoint::Responses => "responses",
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent => "gemini",
    }
}

/// `tollgate estimate`: reads the body window by window through the filter's request scanner.
/// The number is the raw estimate; the filter admits with it times the ratio it has learned
/// for the model (1 until it has seen real usage).
fn estimate(endpoint: Endpoint, model: Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut scanner = RequestScanner::new(endpoint, model);
    let mut buf = vec![0u8; WINDOW];
    let mut total = 0usize;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Outcome::fail(1, format!("stdin: {e}\n")),
        };
        total += n;
        if let Err(e) = scanner.feed(buf.get(..n).unwrap_or_default()) {
            return Outcome::fail(2, format!("{e}\n"));
        }
    }
    if total == 0 {
        // What the filter answers to a metered request without a body.
        return Outcome::fail(2, "request body is required\n".to_string());
    }
    match scanner.finish() {
        Ok(info) => {
            // Written by hand to keep this field order (serde_json's map sorts keys).
            let model = info
                .model
                .as_deref()
                .map_or("null".into(), api::json_string);
            let max_tokens = info.max_tokens.map_or("null".into(), |n| n.to_string());
            let out = format!(
                r#"{{"input_estimate":{},"model":{model},"max_tokens":{max_tokens},"stream":{},"endpoint":"{}","api":"{}"}}"#,
                info.input_estimate,
                info.stream,
                endpoint_name(endpoint),
                endpoint.api().as_str(),
            );
            Outcome::ok(format!("{out}\n"))
        }
        Err(e) => Outcome::fail(2, format!("{e}\n")),
    }
}

/// `tollgate hash-key`: the digest the filter compares presented keys by.
fn hash_key(key: &str) -> Outcome {
    if key.starts_with("sha256:") {
        return Outcome::fail(
            1,
            "the key already has the sha256: form; pass the plain key\n".to_string(),
        );
    }
    // The configuration's own rule for a plain key (printable ASCII, no spaces).
    if let Err(reason) = KeyMatcher::parse(key) {
        return Outcome::fail(1, format!("{reason}\n"));
    }
    let hex: String = KeyMatcher::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Outcome::ok(format!("sha256:{hex}\n"))
}

/// `echo KEY | tollgate hash-key`: the line end is not part of the key.
fn hash_key_stdin(stdin: &mut dyn Read) -> Outcome {
    match read_all(stdin) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let key = text.strip_suffix('\n').unwrap_or(&text);
            hash_key(key.strip_suffix('\r').unwrap_or(key))
        }
        Err(e) => Outcome::fail(1, format!("stdin: {e}\n")),
    }
}

fn read_all(stdin: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Outcome {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        run(&args, &mut stdin.as_bytes(), &lookup)
    }

    const CONFIG: &str = r#"{
        "consumers": [{"name": "team-a", "keys": ["k-a"]}, {"name": "team-b", "keys": ["k-b"]}],
        "limits": [{"tokens": 1000, "per": "minute"}],
        "accounts": [{"name": "a1", "provider": "anthropic", "key_env": "TEST_KEY_1"}],
        "admin": {"keys": ["adm"]}
    }"#;

    #[test]
    fn check_counts_consumers_and_accounts_of_a_valid_config() {
        let out = run_with(&["check", "-"], CONFIG, &[("TEST_KEY_1", "sk-one")]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            out.stdout,
            "ok: 2 consumers, 1 accounts, 1 default limits, stage downstream, admin at /tollgate\n"
        );
    }

    #[test]
    fn check_reports_a_missing_key_env_as_the_filter_does() {
        let out = run_with(&["check", "-"], CONFIG, &[]);
        assert_eq!(out.code, 1);
        let filter = config::parse_with_env(CONFIG.as_bytes(), &|_| None)
            .err()
            .map(|e| format!("{e}\n"));
        assert_eq!(Some(out.stderr.clone()), filter);
        assert!(
            out.stderr.starts_with("accounts[0].key_env: "),
            "{}",
            out.stderr
        );
    }

    #[test]
    fn check_names_the_field_of_a_bad_value() {
        let bad = r#"{"limits": [{"tokens": 5, "per": "fortnight"}]}"#;
        let out = run_with(&["check", "-"], bad, &[]);
        assert_eq!(out.code, 1);
        assert!(out.stderr.starts_with("limits[0].per: "), "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }

    /// `tollgate check` of `json`, which must be valid: (stdout, the warning lines).
    fn check_warnings(json: &str) -> (String, Vec<String>) {
        let out = run_with(&["check", "-"], json, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let lines = out.stderr.lines().map(str::to_string).collect();
        (out.stdout, lines)
    }

    #[test]
    fn check_warns_about_allowed_models_a_cost_limit_cannot_price() {
        let json = r#"{"consumers": [
            {"name": "team-a", "keys": ["k-a"], "limits": [{"cost_usd": 5, "per": "day"}],
             "models": ["gemini-*", "gpt-4o-mini", "llama-3-70b", "gemini-2.5-*", "o3*", "my-*"]}],
            "pricing": {"my-*": {"input": 1, "output": 1}}}"#;
        let (stdout, warnings) = check_warnings(json);
        assert_eq!(
            stdout,
            "ok: 1 consumers, 0 accounts, 0 default limits, stage downstream\n"
        );
        let refused = "requests for unpriced models get 403 \"model has no price\"";
        assert_eq!(
            warnings,
            [
                format!("warning: consumers[0].models[0]: \"gemini-*\" matches models that no pricing glob covers, and consumer team-a has a cost_usd limit: {refused}"),
                format!("warning: consumers[0].models[2]: \"llama-3-70b\" has no price, and consumer team-a has a cost_usd limit: {refused}"),
                format!("warning: consumers[0].models[3]: \"gemini-2.5-*\" matches models that no pricing glob covers, and consumer team-a has a cost_usd limit: {refused}"),
            ]
        );
        // A pricing glob covering the allow-list glob, or a `*` default, silences them.
        let covered = json
            .replace(r#""my-*""#, r#""gemini-*""#)
            .replace(r#""llama-3-70b""#, r#""gemini-2.5-flash""#);
        assert_eq!(check_warnings(&covered).1, Vec::<String>::new());
        let star = json.replace(r#"{"my-*":"#, r#"{"*":"#);
        assert_eq!(check_warnings(&star).1, Vec::<String>::new());
    }

    #[test]
    fn check_warns_about_cost_limits_without_an_allow_list_only_with_no_star_price() {
        let json = r#"{"consumers": [
            {"name": "team-a", "keys": ["k-a"]},
            {"name": "team-b", "keys": ["k-b"], "limits": [{"tokens": 10, "per": "minute"}]},
            {"name": "team-c", "keys": ["k-c"], "limits": [{"cost_usd": 1, "per": "month"}],
             "models": ["gpt-4o-mini"]}],
            "limits": [{"cost_usd": 5, "per": "day"}, {"requests": 5, "per": "minute"}],
            "anonymous": {"limits": [{"cost_usd": 1, "per": "day"}]}}"#;
        let (stdout, warnings) = check_warnings(json);
        assert!(stdout.starts_with("ok: 3 consumers, "), "{stdout}");
        let refused = "requests for unpriced models get 403 \"model has no price\"";
        assert_eq!(
            warnings,
            [
                format!("warning: consumers[0]: consumer team-a has a cost_usd limit (from the default limits), no models allow-list and no \"*\" price: {refused}"),
                format!("warning: anonymous: has a cost_usd limit and there is no \"*\" price: {refused}"),
            ]
        );
        let star = json.replace(
            r#""anonymous""#,
            r#""pricing": {"*": {"input": 2, "output": 2}}, "anonymous""#,
        );
        assert_eq!(check_warnings(&star).1, Vec::<String>::new());
        // Without cost limits nothing needs a price.
        let no_cost = json.replace("cost_usd", "tokens");
        assert_eq!(check_warnings(&no_cost).1, Vec::<String>::new());
    }

    #[test]
    fn check_of_a_missing_file_fails_with_its_name() {
        let out = run_with(&["check", "/nonexistent/tollgate.json"], "", &[]);
        assert_eq!(out.code, 1);
        assert!(out.stderr.starts_with("/nonexistent/tollgate.json: "));
    }

    #[test]
    fn estimate_reports_model_max_tokens_and_stream() {
        let body = r#"{"model":"claude-haiku-4-5","max_tokens":64,"stream":true,
            "messages":[{"role":"user","content":"Hello there, how are you today?"}]}"#;
        let out = run_with(&["estimate"], body, &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["model"], "claude-haiku-4-5");
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["stream"], true);
        assert_eq!(v["endpoint"], "messages");
        assert!(v["input_estimate"].as_u64().unwrap() > 0);
    }

    #[test]
    fn estimate_matches_the_request_scanner_fed_whole() {
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"count me"}]}"#;
        let mut s = RequestScanner::new(Endpoint::ChatCompletions, None);
        s.feed(body.as_bytes()).unwrap();
        let want = s.finish().unwrap().input_estimate;
        let out = run_with(&["estimate", "--endpoint=chat"], body, &[]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["input_estimate"].as_u64(), Some(want));
        assert_eq!(v["api"], "openai");
    }

    #[test]
    fn estimate_takes_the_gemini_model_from_the_endpoint() {
        let body = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
        for (arg, stream) in [
            ("gemini:gemini-2.0-flash", false),
            (
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                true,
            ),
        ] {
            let out = run_with(&["estimate", "--endpoint", arg], body, &[]);
            assert_eq!(out.code, 0, "{arg}: {}", out.stderr);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(v["model"], "gemini-2.0-flash", "{arg}");
            assert_eq!(v["stream"], stream, "{arg}");
        }
    }

    #[test]
    fn estimate_refuses_bad_bodies_with_the_filters_400_message() {
        let cases = [
            ("{\"model\": ", "request body is not valid JSON: "),
            ("[1]", "request body must be a JSON object"),
            ("", "request body is required"),
        ];
        for (body, msg) in cases {
            let out = run_with(&["estimate"], body, &[]);
            assert_eq!(out.code, 2, "{body:?}");
            assert!(out.stderr.starts_with(msg), "{body:?}: {}", out.stderr);
        }
    }

    #[test]
    fn hash_key_prints_the_digest_a_config_accepts() {
        let out = run_with(&["hash-key", "tg-key"], "", &[]);
        assert_eq!(out.code, 0);
        for args in [&["hash-key"][..], &["hash-key", "-"][..]] {
            assert_eq!(
                run_with(args, "tg-key\r\n", &[]).stdout,
                out.stdout,
                "{args:?}"
            );
        }
        let line = out.stdout.trim_end();
        assert_eq!(line.len(), "sha256:".len() + 64);
        let parsed = KeyMatcher::parse(line).unwrap();
        assert!(parsed.matches(&KeyMatcher::digest("tg-key")));
    }

    #[test]
    fn hash_key_refuses_keys_the_config_would_refuse() {
        for key in ["", "has space", "sha256:abc"] {
            let out = run_with(&["hash-key", key], "", &[]);
            assert_eq!(out.code, 1, "{key:?}");
            assert!(out.stdout.is_empty());
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &[][..],
            &["frobnicate"][..],
            &["check"][..],
            &["estimate", "--endpoint", "fax"][..],
            &["estimate", "--endpoint", "gemini:"][..],
        ] {
            assert_eq!(run_with(args, "", &[]).code, 2, "{args:?}");
        }
    }
}
