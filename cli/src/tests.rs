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
    assert_eq!(
        run_with(&["check", "-"], CONFIG, &[("TEST_KEY_1", " \n")]).stderr,
        out.stderr
    );
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
fn check_gives_the_filters_message_for_json_that_yaml_refuses() {
    // serde_json lets a repeated key pass and YAML refuses it: the filter's words win.
    for (doc, message) in [
        (
            r#"{"stage": "upstream", "stage": "downstream"}"#,
            "stage: duplicate field",
        ),
        (
            r#"{"admin": {"keys": ["a"], "keys": ["b"]}}"#,
            "admin.keys: duplicate field",
        ),
    ] {
        let out = run_with(&["check", "-"], doc, &[]);
        assert_eq!(out.code, 1, "{doc}");
        assert_eq!(out.stderr, format!("{message}\n"), "{doc}");
    }
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

/// An Envoy bootstrap around tollgate configurations: a downstream filter (`down`) in a
/// listener, and, when `up` is given, an upstream filter in cluster `llm`.
fn bootstrap(down: &str, up: Option<&str>, host_env_keys: &str) -> String {
    let filter = |name: &str, json: &str, indent: usize| {
        let pad = " ".repeat(indent);
        let json = json.replace('\'', "''");
        format!(
            "{pad}- name: envoy.filters.http.wasm\n\
             {pad}  typed_config:\n\
             {pad}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n\
             {pad}    config:\n\
             {pad}      name: {name}\n\
             {pad}      root_id: tollgate\n\
             {pad}      allow_on_headers_stop_iteration: true\n\
             {pad}      vm_config:\n\
             {pad}        vm_id: tollgate\n\
             {pad}        environment_variables: {{ host_env_keys: [{host_env_keys}] }}\n\
             {pad}      configuration:\n\
             {pad}        \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
             {pad}        value: '{json}'\n"
        )
    };
    let mut y = format!(
        "static_resources:\n  listeners:\n  - name: edge\n    filter_chains:\n    - filters:\n      \
         - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \
         http_filters:\n{}          - name: envoy.filters.http.router\n  clusters:\n  - name: llm\n",
        filter("tollgate", down, 10)
    );
    if let Some(up) = up {
        y.push_str(
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        http_filters:\n",
        );
        y.push_str(&filter("tollgate-upstream", up, 8));
    }
    y.push_str("  - name: ratelimit\n");
    y
}

const DOWN: &str = r#"{"consumers": [{"name": "team-a", "keys": ["k-a"]}], "limits": [{"tokens": 10, "per": "minute"}]}"#;
const UP: &str = r#"{"stage": "upstream", "accounts": [{"name": "a1", "provider": "anthropic", "key_env": "TEST_KEY_1"}]}"#;
const DOWN_LABEL: &str = r#"filter "tollgate" (listener "edge", http_filters[0])"#;
const UP_LABEL: &str = r#"filter "tollgate-upstream" (cluster "llm", upstream http_filters[0])"#;

#[test]
fn check_of_an_envoy_yaml_checks_every_tollgate_filter_and_names_each() {
    let yaml = bootstrap(DOWN, Some(UP), "TEST_KEY_1");
    let out = run_with(&["check", "-"], &yaml, &[("TEST_KEY_1", "sk-FAKE-one")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "ok: {DOWN_LABEL}: 1 consumers, 0 accounts, 1 default limits, stage downstream\n\
             ok: {UP_LABEL}: 0 consumers, 1 accounts, 0 default limits, stage upstream\n"
        )
    );
    assert_eq!(out.stderr, "");
    // An error in one filter is about that filter, and the others are still checked.
    let bad = bootstrap(&DOWN.replace("minute", "fortnight"), Some(UP), "TEST_KEY_1");
    let out = run_with(&["check", "-"], &bad, &[("TEST_KEY_1", "sk-FAKE-one")]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.starts_with(&format!("ok: {UP_LABEL}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.starts_with(&format!(
            "error: {DOWN_LABEL}: limits[0].per: expected one of "
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn check_of_an_envoy_yaml_tells_which_environment_a_key_env_misses() {
    // Listed in host_env_keys but not set here: Envoy needs it too.
    let yaml = bootstrap(DOWN, Some(UP), "TEST_KEY_1");
    let out = run_with(&["check", "-"], &yaml, &[]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!(
            "error: {UP_LABEL}: accounts[0].key_env: environment variable TEST_KEY_1 is not set \
             in this shell; this filter takes it from Envoy's environment (host_env_keys), so \
             Envoy needs it set when it starts (check --no-env skips the keys)\n"
        )
    );
    assert_eq!(run_with(&["check", "--no-env", "-"], &yaml, &[]).code, 0);
    // Not in host_env_keys: the VM never sees it, whatever the shell has; --no-env or not.
    let yaml = bootstrap(DOWN, Some(UP), "OTHER_KEY");
    for args in [&["check", "-"][..], &["check", "--no-env", "-"][..]] {
        let out = run_with(args, &yaml, &[("TEST_KEY_1", "sk-FAKE-one")]);
        assert_eq!(out.code, 1, "{args:?}");
        assert_eq!(
            out.stderr,
            format!(
                "error: {UP_LABEL}: accounts[0].key_env: environment variable TEST_KEY_1 is \
                 not passed to the VM: add it to this filter's \
                 vm_config.environment_variables.host_env_keys (Envoy refuses the configuration \
                 without it)\n"
            ),
            "{args:?}"
        );
    }
}

#[test]
fn check_of_an_envoy_yaml_refuses_what_envoy_would_run_wrongly() {
    let cases: [(String, &str); 5] = [
        // The upstream stage in a listener, the downstream one in a cluster.
        (
            bootstrap(UP, None, "TEST_KEY_1"),
            "error: filter \"tollgate\" (listener \"edge\", http_filters[0]): stage: \"upstream\" in a connection manager's http_filters",
        ),
        (
            bootstrap(DOWN, Some(&UP.replace(r#""stage": "upstream", "#, "")), "TEST_KEY_1"),
            "error: filter \"tollgate-upstream\" (cluster \"llm\", upstream http_filters[0]): stage: this filter is an upstream http filter",
        ),
        // An upstream stage whose downstream half is in another VM: no shared state.
        (
            bootstrap(DOWN, Some(UP), "TEST_KEY_1").replacen("vm_id: tollgate", "vm_id: other", 1),
            "error: filter \"tollgate-upstream\" (cluster \"llm\", upstream http_filters[0]): an upstream-stage filter needs a downstream tollgate filter with the same vm_id (\"tollgate\")",
        ),
        (
            bootstrap(DOWN, None, "").replace("allow_on_headers_stop_iteration: true", "allow_on_headers_stop_iteration: false"),
            "error: filter \"tollgate\" (listener \"edge\", http_filters[0]): config.allow_on_headers_stop_iteration must be true",
        ),
        (
            bootstrap(r#"{"limits": [{"tokens": 10, "per": "minute"}], "global": {"cluster": "rl", "domain": "d"}}"#, None, ""),
            "error: filter \"tollgate\" (listener \"edge\", http_filters[0]): global.cluster: \"rl\" is not a cluster of this file (clusters: llm, ratelimit)",
        ),
    ];
    for (yaml, want) in cases {
        let out = run_with(&["check", "-"], &yaml, &[("TEST_KEY_1", "sk-FAKE-one")]);
        assert_eq!(out.code, 1, "{want}\n{}", out.stderr);
        assert!(
            out.stderr.starts_with(want),
            "want {want}\ngot {}",
            out.stderr
        );
    }
}

#[test]
fn check_of_an_envoy_file_without_tollgate_fails_and_says_so() {
    let yaml = "static_resources:\n  listeners: []\n";
    let out = run_with(&["check", "-"], yaml, &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("-: no tollgate wasm filter"),
        "{}",
        out.stderr
    );
    let out = run_with(&["check", "-"], "just: yaml\n", &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("neither a tollgate configuration"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_never_prints_a_key_from_the_shell_or_the_file() {
    let secret = "sk-FAKE-never-printed-0001";
    let yaml = bootstrap(
        DOWN,
        Some(
            &UP.replace("TEST_KEY_1", "K")
                .replace("key_env\": \"K\"", &format!("key\": \"{secret} x\"")),
        ),
        "TEST_KEY_1",
    );
    let out = run_with(&["check", "-"], &yaml, &[("TEST_KEY_1", secret)]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let shell_bad = bootstrap(DOWN, Some(UP), "TEST_KEY_1");
    let out2 = run_with(
        &["check", "-"],
        &shell_bad,
        &[("TEST_KEY_1", &format!("{secret} x"))],
    );
    assert_eq!(out2.code, 1);
    for o in [out, out2] {
        assert!(
            !o.stdout.contains(secret) && !o.stderr.contains(secret),
            "{o:?}"
        );
    }
}

#[test]
fn version_and_help_for_every_command_go_to_stdout_with_exit_0() {
    let version = format!("tollgate {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        run_with(&["--version"], "", &[]),
        Outcome::ok(version.clone())
    );
    assert_eq!(
        run_with(&["version"], "", &[]),
        Outcome::ok(version.clone())
    );
    assert_eq!(run_with(&["-V"], "", &[]), Outcome::ok(version));
    for command in ["check", "ratelimit-config", "top", "estimate", "hash-key"] {
        let want = format!("usage: tollgate {command}");
        for args in [
            vec!["help", command],
            vec![command, "--help"],
            vec![command, "-h"],
            vec![command, "x", "--help"],
        ] {
            let out = run_with(&args, "", &[]);
            assert_eq!(out.code, 0, "{args:?}");
            assert!(out.stdout.starts_with(&want), "{args:?}: {}", out.stdout);
            assert_eq!(out.stderr, "", "{args:?}");
        }
    }
    for args in [&["help"][..], &["--help"][..], &["-h"][..]] {
        let out = run_with(args, "", &[]);
        assert_eq!(out.code, 0);
        for command in [
            "check FILE",
            "ratelimit-config FILE",
            "top URL",
            "estimate",
            "hash-key",
            "version",
        ] {
            assert!(out.stdout.contains(command), "{command}");
        }
    }
}

#[test]
fn usage_errors_name_the_command_and_its_usage_line() {
    let cases: [(&[&str], &str); 10] = [
        (
            &["check", "--frob", "x.json"],
            "tollgate check: unknown option \"--frob\"\nusage: tollgate check [--no-env] FILE\n",
        ),
        (
            &["check", "a.json", "b.json"],
            "tollgate check: check takes one configuration file\n",
        ),
        (
            &["ratelimit-config"],
            "tollgate ratelimit-config: ratelimit-config takes one configuration file\n",
        ),
        (
            &["ratelimit-config", "--no-env", "x"],
            "tollgate ratelimit-config: unknown option \"--no-env\"\n",
        ),
        (&["top"], "tollgate top: a URL is required"),
        (
            &["top", "http://h/", "--interval", "0"],
            "tollgate top: --interval: expected seconds from 0.1 to 3600, got \"0\"\n",
        ),
        (
            &["top", "http://h/", "--key"],
            "tollgate top: --key needs a value\n",
        ),
        (
            &["top", "https://h/"],
            "tollgate top: https is not supported",
        ),
        (
            &["help", "frobnicate"],
            "tollgate: no such command \"frobnicate\"\n",
        ),
        (&["version", "x"], "tollgate: version takes no arguments\n"),
    ];
    for (args, want) in cases {
        let out = run_with(args, "", &[]);
        assert_eq!(out.code, 2, "{args:?}");
        assert!(out.stderr.starts_with(want), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
    }
    // After `--`, `--help` is a file name.
    let out = run_with(&["check", "--", "--help"], "", &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("--help: "), "{}", out.stderr);
}

#[test]
fn check_reports_every_missing_variable_at_once_then_the_first_other_error() {
    let two = r#"{"accounts": [
        {"name": "a1", "provider": "anthropic", "key_env": "TEST_KEY_1"},
        {"name": "a2", "provider": "openai", "key_env": "TEST_KEY_2"},
        {"name": "a3", "provider": "openai", "key_env": "TEST_KEY_1"}]}"#;
    let out = run_with(&["check", "-"], two, &[]);
    assert_eq!(out.code, 1);
    let paths: Vec<&str> = out
        .stderr
        .lines()
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["accounts[0].key_env", "accounts[1].key_env"],
        "{}",
        out.stderr
    );
    let with_bad = two.replace(r#""name": "a3""#, r#""name": "a3", "weight": -1"#);
    let out = run_with(&["check", "-"], &with_bad, &[("TEST_KEY_2", "sk-FAKE")]);
    let filter = config::parse_with_env(with_bad.as_bytes(), &|_| Some("sk-FAKE".into()));
    let lines: Vec<String> = out.stderr.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert!(
        lines[0].starts_with("accounts[0].key_env: "),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], filter.unwrap_err().to_string());
}

#[test]
fn top_refuses_an_admin_key_that_would_break_its_header_line_and_never_echoes_it() {
    for key in ["adm\r\nx-injected: 1", "two words", ""] {
        for (args, env) in [
            (
                vec!["top", "http://127.0.0.1:9/tollgate", "--once", "--key", key],
                vec![],
            ),
            (
                vec!["top", "http://127.0.0.1:9/tollgate", "--once"],
                vec![("TOLLGATE_ADMIN_KEY", key)],
            ),
        ] {
            let out = run_with(&args, "", &env);
            if key.is_empty() && !env.is_empty() {
                // An empty variable is no key: the request goes without one (and fails here).
                assert_eq!(out.code, 1, "{out:?}");
                continue;
            }
            assert_eq!(out.code, 2, "{key:?} {out:?}");
            assert!(
                out.stderr
                    .starts_with("tollgate top: the admin key must be printable ASCII"),
                "{}",
                out.stderr
            );
            assert!(key.is_empty() || !out.stderr.contains(key));
        }
    }
}
