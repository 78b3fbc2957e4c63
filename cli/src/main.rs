//! `tollgate`: the operator's command line, built from the filter's own core (`tollgate-core`),
//! so that what it says about a configuration, a request body or a key is what the filter does.
//! Arguments are parsed by hand: a few subcommands with a few options each need no parser crate.

mod check;
mod envoy;
mod ratelimit_config;
mod top;

use std::io::{self, Read, Write};
use std::process::ExitCode;

use tollgate_core::api::{self, Api, Route};
use tollgate_core::config::KeyMatcher;
use tollgate_core::provider::Endpoint;
use tollgate_core::request::RequestScanner;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "\
usage: tollgate <command> [options]

commands:
  check FILE              validate a tollgate configuration, or every tollgate filter of an
                          Envoy YAML or Istio EnvoyFilter (`-` reads stdin)
  ratelimit-config FILE   print envoyproxy/ratelimit's config for the `global` limits
  top URL                 live view of the usage API (accounts, consumers, recent requests)
  estimate [--endpoint E] estimate a request body read from stdin
  hash-key [KEY|-]        print sha256:<hex> of KEY (or stdin) for consumers[].keys
  version                 print the version (also --version)
  help [COMMAND]          this text, or a command's (also COMMAND --help)

exit status: 0 ok; 1 invalid configuration, key or unreachable API; 2 usage error or a body
the filter refuses (400)
";

const CHECK_HELP: &str = "\
usage: tollgate check [--no-env] FILE

Validates FILE as the filter's on_configure does (`-` reads stdin). FILE is one of:
  - a tollgate configuration (JSON): prints `ok: …` or the filter's message, `<field path>:
    <reason>`;
  - an Envoy bootstrap (YAML or JSON): every tollgate wasm filter in it, in listeners' http
    filters and clusters' upstream http filters, each on its own line, named by its name and
    place (`filter \"tollgate\" (listener \"tollgate\", http_filters[0])`); also checks what the
    Envoy config decides: allow_on_headers_stop_iteration, each key_env variable listed in
    vm_config.environment_variables.host_env_keys (or key_values), the stage the filter's place
    calls for, and that global.cluster is a cluster of the file;
  - an Istio EnvoyFilter: the tollgate filters of its configPatches.

key_env variables are read from this shell, as Envoy reads host_env_keys from its own
environment. --no-env checks everything else without them (for CI without the secrets).
Warnings (unpriced models under a cost limit) go to stderr and do not fail the check.

exit status: 0 valid; 1 invalid (or no tollgate filter in an Envoy file); 2 usage error
";

const RATELIMIT_HELP: &str = "\
usage: tollgate ratelimit-config FILE

Prints envoyproxy/ratelimit's configuration (YAML) for the `global` limits of FILE: a tollgate
configuration, an Envoy bootstrap or an Istio EnvoyFilter (`-` reads stdin). The descriptors
are the ones tollgate sends: per consumer with limits of its own `consumer=<name>`, the default
limits as `consumer` with no value (every other consumer, each its own counter), and
`account=<name>` for accounts with limits; under each, `unit` tokens, requests and cost_micros.
The service holds one limit per descriptor: the first limit of a unit is the global one, a
second window of the same unit stays local (a note on stderr says which); input_tokens,
output_tokens and concurrent limits are local only.

  tollgate ratelimit-config envoy/envoy-global.yaml > ratelimit/config/config.yaml

exit status: 0 ok; 1 invalid configuration, no `global` section, or a limit the service
cannot hold (requests_per_unit is a uint32); 2 usage error
";

const TOP_HELP: &str = "\
usage: tollgate top URL [--key KEY] [--once] [--interval SECONDS]

A terminal view of the filter's usage API: totals, success rate and latency, rejections by
reason, accounts (state, cooling, requests, tokens, learned headroom), consumers (windows used
of each limit, in flight), and recent requests when the filter reports them. Redraws every
--interval seconds (default 2); --once prints one frame without clearing the screen and exits.

URL is the listener and admin path, e.g. http://127.0.0.1:10000/tollgate (the path defaults to
/tollgate; /usage is added). The admin key comes from --key, else $TOLLGATE_ADMIN_KEY, else the
URL's password (http://admin:KEY@host:port/tollgate); it is sent as x-api-key and never printed.
Plain http only: read it on the loopback or through a port-forward.

exit status: 0 ok; 1 the API could not be read (--once); 2 usage error
";

const ESTIMATE_HELP: &str = "\
usage: tollgate estimate [--endpoint E] < BODY.json

Reads a request body from stdin through the filter's request scanner and prints
{\"input_estimate\", \"model\", \"max_tokens\", \"stream\", \"endpoint\", \"api\"}. The number is
the raw estimate; the filter admits with it times the ratio it has learned for the model.

  E: messages (default) | chat | completions | embeddings | responses | gemini:MODEL
     or a request path, e.g. /v1beta/models/gemini-2.0-flash:streamGenerateContent

exit status: 0 ok; 2 a body the filter refuses with 400 (its message on stderr), usage error
";

const HASH_HELP: &str = "\
usage: tollgate hash-key [KEY|-]

Prints sha256:<hex> of KEY, or of stdin without its line end, for consumers[].keys and
admin.keys: the configuration then holds no plain key.

exit status: 0 ok; 1 a key the configuration would refuse; 2 usage error
";

/// A command's help text.
fn help_for(command: &str) -> Option<&'static str> {
    Some(match command {
        "check" => CHECK_HELP,
        "ratelimit-config" => RATELIMIT_HELP,
        "top" => TOP_HELP,
        "estimate" => ESTIMATE_HELP,
        "hash-key" => HASH_HELP,
        "version" => "usage: tollgate version   (or tollgate --version)\n",
        "help" => USAGE,
        _ => return None,
    })
}

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

/// Runs one command line. `env` is the environment `key_env` (and `TOLLGATE_ADMIN_KEY`) is
/// read from.
fn run(args: &[String], stdin: &mut dyn Read, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let Some(command) = args.first().map(String::as_str) else {
        return usage("a command is required");
    };
    let rest = args.get(1..).unwrap_or_default();
    if matches!(command, "-V" | "--version" | "version") {
        return match rest {
            [] => Outcome::ok(format!("tollgate {VERSION}\n")),
            _ => usage("version takes no arguments"),
        };
    }
    if matches!(command, "-h" | "--help" | "help") {
        return match rest {
            [] => Outcome::ok(USAGE.to_string()),
            [c] => match help_for(c) {
                Some(text) => Outcome::ok(text.to_string()),
                None => usage(&format!("no such command {c:?}")),
            },
            _ => usage("help takes at most one command"),
        };
    }
    let Some(help) = help_for(command) else {
        return usage(&format!("unknown command {command:?}"));
    };
    // `tollgate check --help`: a command's options come before `--`; after it, file names.
    let options = rest.iter().take_while(|a| *a != "--");
    if options.clone().any(|a| a == "--help" || a == "-h") {
        return Outcome::ok(help.to_string());
    }
    match command {
        "check" => {
            let (flags, files) = split_args(rest);
            let mut skip = false;
            for f in &flags {
                match f.as_str() {
                    "--no-env" => skip = true,
                    other => return command_usage(command, &format!("unknown option {other:?}")),
                }
            }
            match files.as_slice() {
                [file] => match read_input(file, stdin) {
                    Ok(raw) => check::check(file, &raw, &check::Env { shell: env, skip }),
                    Err(out) => out,
                },
                _ => command_usage(command, "check takes one configuration file"),
            }
        }
        "ratelimit-config" => {
            let (flags, files) = split_args(rest);
            if let Some(f) = flags.first() {
                return command_usage(command, &format!("unknown option {f:?}"));
            }
            match files.as_slice() {
                [file] => match read_input(file, stdin) {
                    Ok(raw) => ratelimit_config::ratelimit_config(file, &raw),
                    Err(out) => out,
                },
                _ => command_usage(command, "ratelimit-config takes one configuration file"),
            }
        }
        "top" => match top_args(rest) {
            Ok(a) => top_command(&a, env),
            Err(msg) => command_usage(command, &msg),
        },
        "estimate" => match endpoint_arg(rest) {
            Ok((endpoint, model)) => estimate(endpoint, model, stdin),
            Err(msg) => command_usage(command, &msg),
        },
        "hash-key" => match rest {
            [] => hash_key_stdin(stdin),
            [dash] if dash == "-" => hash_key_stdin(stdin),
            [key] if !key.starts_with('-') => hash_key(key),
            [flag] => command_usage(command, &format!("unknown option {flag:?}")),
            _ => command_usage(command, "hash-key takes at most one key"),
        },
        _ => Outcome::ok(help.to_string()),
    }
}

fn usage(msg: &str) -> Outcome {
    Outcome::fail(2, format!("tollgate: {msg}\n{USAGE}"))
}

/// A usage error of one command: the message and that command's usage line.
fn command_usage(command: &str, msg: &str) -> Outcome {
    let line = help_for(command)
        .and_then(|h| h.lines().next())
        .unwrap_or("");
    Outcome::fail(
        2,
        format!("tollgate {command}: {msg}\n{line}\n(tollgate help {command} for more)\n"),
    )
}

/// Options (`-x`, `--xyz`, but not `-` alone) and the other arguments; after `--` everything
/// is an argument.
fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let mut flags = Vec::new();
    let mut plain = Vec::new();
    let mut rest = args.iter();
    for a in rest.by_ref() {
        if a == "--" {
            break;
        }
        if a.starts_with('-') && a != "-" {
            flags.push(a.clone());
        } else {
            plain.push(a.clone());
        }
    }
    plain.extend(rest.cloned());
    (flags, plain)
}

/// A file's bytes, or stdin's for `-`.
fn read_input(file: &str, stdin: &mut dyn Read) -> Result<Vec<u8>, Outcome> {
    let raw = if file == "-" {
        read_all(stdin)
    } else {
        std::fs::read(file)
    };
    raw.map_err(|e| Outcome::fail(1, format!("{file}: {e}\n")))
}

/// `tollgate top`'s arguments.
#[derive(Debug, PartialEq)]
struct TopArgs {
    url: String,
    key: Option<String>,
    once: bool,
    interval: f64,
}

fn top_args(args: &[String]) -> Result<TopArgs, String> {
    let mut url = None;
    let mut key = None;
    let mut once = false;
    let mut interval = 2.0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => Err(format!("{what} needs a value")),
            }
        };
        match name {
            "--once" if inline.is_none() => once = true,
            "--key" | "-k" => key = Some(value("--key")?),
            "--interval" | "-n" => {
                let v = value("--interval")?;
                interval = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && (0.1..=3600.0).contains(s))
                    .ok_or_else(|| {
                        format!("--interval: expected seconds from 0.1 to 3600, got {v:?}")
                    })?;
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            _ if url.is_none() => url = Some(a.clone()),
            _ => return Err("top takes one URL".to_string()),
        }
    }
    let url =
        url.ok_or_else(|| "a URL is required, e.g. http://127.0.0.1:10000/tollgate".to_string())?;
    Ok(TopArgs {
        url,
        key,
        once,
        interval,
    })
}

fn top_command(a: &TopArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let target = match top::Target::parse(&a.url) {
        Ok(t) => t,
        Err(e) => return command_usage("top", &e),
    };
    let key = a
        .key
        .clone()
        .or_else(|| env("TOLLGATE_ADMIN_KEY").filter(|k| !k.is_empty()))
        .or_else(|| target.url_key.clone());
    // The key goes in a header line of its own: nothing that could end or extend it.
    if key
        .as_deref()
        .is_some_and(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return command_usage(
            "top",
            "the admin key must be printable ASCII without spaces",
        );
    }
    let shown = target.display();
    if a.once {
        return match top::fetch(&target, key.as_deref()) {
            Ok(usage) => Outcome::ok(top::render(&usage, &shown)),
            Err(e) => Outcome::fail(1, format!("tollgate top: {e}\n")),
        };
    }
    // Live: redraw until interrupted; a failed read is shown in place of the frame.
    let pause = std::time::Duration::from_secs_f64(a.interval);
    loop {
        let frame = match top::fetch(&target, key.as_deref()) {
            Ok(usage) => top::render(&usage, &shown),
            Err(e) => format!(
                "tollgate top  {shown}\n\n{e}\n(retrying every {}s)\n",
                a.interval
            ),
        };
        let mut stdout = io::stdout().lock();
        if stdout
            .write_all(format!("\x1b[H\x1b[2J{frame}").as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The terminal or pipe is gone.
            return Outcome::default();
        }
        drop(stdout);
        std::thread::sleep(pause);
    }
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
mod tests;
