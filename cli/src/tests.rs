use super::*;
use tollgate_core::config;

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
fn check_reports_a_missing_key_env_from_the_shells_point_of_view() {
    let out = run_with(&["check", "-"], CONFIG, &[]);
    assert_eq!(out.code, 1);
    // The filter speaks of its VM; the CLI of the shell it runs in, and of what Envoy needs.
    let filter = config::parse_with_env(CONFIG.as_bytes(), &|_| None).unwrap_err();
    assert_eq!(filter.path, "accounts[0].key_env");
    assert!(filter.reason.contains("not set in the VM"), "{filter}");
    assert_eq!(
        out.stderr,
        "accounts[0].key_env: environment variable TEST_KEY_1 is not set in this shell; \
         Envoy needs it in its own environment, passed to the VM by \
         vm_config.environment_variables.host_env_keys (check --no-env skips the keys)\n"
    );
    // A value of blanks is no key either (the filter trims it), and says the same.
    assert_eq!(run_with(&["check", "-"], CONFIG, &[("TEST_KEY_1", " \n")]).stderr, out.stderr);
    // --no-env checks the rest without the secret.
    let out = run_with(&["check", "--no-env", "-"], CONFIG, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn check_leaves_every_other_key_env_message_as_the_filter_says_it() {
    let bad = CONFIG.replace("TEST_KEY_1", "BAD=NAME");
    let out = run_with(&["check", "-"], &bad, &[]);
    let filter = config::parse_with_env(bad.as_bytes(), &|_| None).unwrap_err();
    assert_eq!(out.stderr, format!("{filter}\n"));
    let spaced = run_with(&["check", "-"], CONFIG, &[("TEST_KEY_1", "two words")]);
    let filter = config::parse_with_env(CONFIG.as_bytes(), &|_| Some("two words".into()));
    assert_eq!(spaced.stderr, format!("{}\n", filter.unwrap_err()));
    assert!(!spaced.stderr.contains("two words"), "{}", spaced.stderr);
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
    let mut s = RequestScanner::new(&Metered::ChatCompletions);
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
