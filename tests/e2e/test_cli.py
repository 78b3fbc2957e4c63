"""The `tollgate` command line (cli/): it is built from the filter's own source, so what it says
about a configuration, a request body or a key must be what the filter in Envoy does."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

import envoyctl
import ratelimitctl
import yaml
from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, base_config

ROOT = envoyctl.ROOT
CORPUS = ROOT / "tests" / "corpus"
CANDIDATES = [ROOT / "target" / "release" / "tollgate", ROOT / "target" / "debug" / "tollgate"]


def _sources_mtime() -> float:
    files = [ROOT / "cli" / "Cargo.toml", *(ROOT / "cli" / "src").glob("*.rs"),
             *(ROOT / "cli" / "src").glob("*/*.rs"), *(ROOT / "filter" / "core" / "src").glob("*.rs")]
    return max(f.stat().st_mtime for f in files if f.exists())


def _cargo() -> str | None:
    found = shutil.which("cargo")
    home = Path.home() / ".cargo" / "bin" / "cargo"
    return found or (str(home) if home.exists() else None)


@pytest.fixture(scope="module")
def cli() -> str:
    """The built binary; (re)built with cargo when missing or older than its sources."""
    built = [p for p in CANDIDATES if p.exists()]
    newest = max(built, key=lambda p: p.stat().st_mtime, default=None)
    if newest is not None and newest.stat().st_mtime >= _sources_mtime():
        return str(newest)
    cargo = _cargo()
    if cargo is None:
        if newest is not None:
            return str(newest)  # stale, but the best there is
        pytest.skip("cargo is not available and target/*/tollgate is not built")
    r = subprocess.run([cargo, "build", "-q", "-p", "tollgate-cli", "--release"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return str(CANDIDATES[0])


def tollgate(cli: str, *args: str, stdin: str | bytes = b"", env: dict | None = None):
    """Runs the CLI with a clean environment plus `env` (so no stray TOLLGATE_* key leaks in)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    data = stdin.encode() if isinstance(stdin, str) else stdin
    r = subprocess.run([cli, *args], input=data, capture_output=True,
                       env={**base, **(env or {})}, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def shipped_configs():
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        for i, wc in enumerate(envoyctl.wasm_filters(envoyctl.load(path.name))):
            yield f"{path.name}#{i}", envoyctl.tollgate_config(wc)


def test_every_shipped_configuration_passes_check(cli, tmp_path):
    seen = 0
    for name, cfg in shipped_configs():
        f = tmp_path / "config.json"
        f.write_text(json.dumps(cfg))
        code, out, err = tollgate(cli, "check", str(f), env=ACCOUNT_KEYS)
        assert code == 0, f"{name}: {err}"
        want = f"ok: {len(cfg.get('consumers', []))} consumers, {len(cfg.get('accounts', []))} accounts, "
        assert out.startswith(want), f"{name}: {out}"
        seen += 1
    assert seen >= 3  # envoy.yaml, envoy-global.yaml and both stages of envoy-failover.yaml


def test_check_without_the_account_keys_names_the_missing_variable(cli, tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps(base_config()))
    code, out, err = tollgate(cli, "check", str(f))
    assert code == 1 and out == ""
    assert err.startswith("accounts[0].key_env: environment variable TOLLGATE_ANTHROPIC_KEY_1 is not set"), err
    # With the variables set the same file is fine.
    assert tollgate(cli, "check", str(f), env=ACCOUNT_KEYS)[0] == 0


def test_check_reads_stdin_and_prints_the_field_path(cli):
    bad = {"consumers": [{"name": "a", "keys": ["k"], "limits": [{"tokens": 5, "per": "fortnight"}]}]}
    code, out, err = tollgate(cli, "check", "-", stdin=json.dumps(bad))
    assert code == 1 and out == ""
    assert err.startswith("consumers[0].limits[0].per: expected one of second, minute"), err
    assert "fortnight" in err


@pytest.mark.parametrize("bad", [
    {"accounts": [{"name": "x", "provider": "anthropic", "key_env": "TOLLGATE_NOT_SET"}]},
    {"consumers": [{"name": "a", "keys": ["sha256:abc"]}]},
], ids=["missing-key-env", "short-sha256"])
def test_check_reports_exactly_what_envoy_logs(cli, make_envoy, bad):
    """The same sentence, word for word, as the filter's `on_configure` in Envoy; a missing
    variable is the one difference: the filter speaks of its VM, the CLI of this shell."""
    code, _, err = tollgate(cli, "check", "-", stdin=json.dumps(bad), env=ACCOUNT_KEYS)
    assert code == 1
    e = make_envoy(bad, expect_fail=True)
    e.wait_exit(30)
    logged = re.search(r"\] invalid configuration: (.*)", e.log_text())
    assert logged, e.log_text()[-3000:]
    if "key_env" not in err:
        assert err.strip() == logged.group(1).strip()
        return
    said = "accounts[0].key_env: environment variable TOLLGATE_NOT_SET is not set in "
    assert logged.group(1).startswith(said + "the VM (vm_config.environment_variables.host_env_keys)")
    assert err.startswith(said + "this shell; Envoy needs it in its own environment, passed to the "
                                 "VM by vm_config.environment_variables.host_env_keys"), err


BODIES = [
    # (endpoint argument, path, headers, body)
    ("messages", "/v1/messages", {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
     {"model": "claude-haiku-4-5", "max_tokens": 32, "system": "You are terse.",
      "messages": [{"role": "user", "content": "Explain what an Envoy wasm filter is, in two sentences."},
                   {"role": "assistant", "content": "It is a plugin."},
                   {"role": "user", "content": [{"type": "text", "text": "Longer, please: 200 words. Привет! 你好"}]}]}),
    ("chat", "/v1/chat/completions", {"authorization": f"Bearer {KEY_A}"},
     {"model": "gpt-4o-mini", "max_tokens": 16,
      "messages": [{"role": "system", "content": "Answer in JSON."},
                   {"role": "user", "content": "List three prime numbers and the sum of them: {\"primes\": []}"}]}),
    ("gemini:gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash:generateContent", {"x-goog-api-key": KEY_A},
     {"contents": [{"role": "user", "parts": [{"text": "Write a haiku about token buckets and quotas."}]}],
      "generationConfig": {"maxOutputTokens": 24}}),
    # Long mixed text (prose in three scripts, code with quotes and escapes) past the sampling
    # threshold: the filter's SIMD scanners must count exactly what the CLI's portable ones do.
    ("messages", "/v1/messages", {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
     {"model": "claude-opus-4-1", "max_tokens": 32,
      "messages": [{"role": "user", "content": "".join(
          (CORPUS / f).read_text() for f in ("udhr/en.txt", "udhr/ru.txt", "udhr/zh.txt",
                                             "code/json_encoder.py", "code/itoa_lib.rs"))}]}),
]


def test_estimate_prints_model_max_tokens_and_stream(cli):
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Hello there"}]}
    code, out, err = tollgate(cli, "estimate", stdin=json.dumps(body))
    assert code == 0, err
    got = json.loads(out)
    assert got["input_estimate"] > 0
    assert (got["model"], got["max_tokens"], got["stream"]) == ("claude-haiku-4-5", 64, True)
    code, out, _ = tollgate(cli, "estimate", "--endpoint",
                            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                            stdin=json.dumps(BODIES[2][3]))
    assert code == 0
    got = json.loads(out)
    assert (got["model"], got["max_tokens"], got["stream"]) == ("gemini-2.0-flash", 24, True)


def test_estimate_of_a_bad_body_exits_2_with_the_filters_400_message(cli, envoy):
    code, out, err = tollgate(cli, "estimate", "--endpoint", "chat", stdin=b"not json")
    assert code == 2 and out == ""
    r = requests.post(envoy.url() + "/v1/chat/completions", data=b"not json",
                      headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == err.strip()


def test_estimate_equals_what_the_filter_admitted_with(cli, make_envoy, mock):
    """Each model's first request in a fresh Envoy is admitted with the raw estimate (nothing
    learned yet): the access log's `estimate=` must be the CLI's number."""
    e = make_envoy(base_config())
    mock.reset()
    for endpoint, path, headers, body in BODIES:
        code, out, err = tollgate(cli, "estimate", "--endpoint", endpoint, stdin=json.dumps(body))
        assert code == 0, err
        want = json.loads(out)["input_estimate"]
        assert want > 0
        pattern = rf'"POST {re.escape(path)}" 200 .*? estimate=(\d+) '
        seen = len(re.findall(pattern, e.log_text()))
        r = requests.post(e.url() + path, headers={**headers, "content-type": "application/json"},
                          data=json.dumps(body), timeout=10)
        assert r.status_code == 200, r.text
        deadline = time.time() + 10
        while len(got := re.findall(pattern, e.log_text())) <= seen and time.time() < deadline:
            time.sleep(0.1)
        assert len(got) > seen, f"no access-log line for {path}"
        assert int(got[seen]) == want, f"{endpoint}: filter {got[seen]}, cli {want}"


def test_hash_key_matches_sha256_and_configures_a_consumer(cli):
    key = "tg-some-team-key-0001"
    want = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert tollgate(cli, "hash-key", key) == (0, want + "\n", "")
    assert tollgate(cli, "hash-key", stdin=key + "\n") == (0, want + "\n", "")
    code, out, err = tollgate(cli, "check", "-", stdin=json.dumps({"consumers": [{"name": "a", "keys": [want]}]}))
    assert code == 0, err
    code, out, err = tollgate(cli, "hash-key", "two words")
    assert code == 1 and out == "" and "printable ASCII" in err


def test_check_warns_when_a_cost_limit_meets_models_with_no_price(cli):
    """Budgets bind on every model: a consumer under a cost_usd limit that may name a model
    with no price is a warning (the filter answers such requests 403), not an error."""
    cfg = {"consumers": [
        {"name": "team-a", "keys": ["k-a"], "limits": [{"cost_usd": 5.0, "per": "day"}],
         "models": ["gemini-2.5-pro", "gemini-*", "text-embedding-3-small", "my-model"]},
        {"name": "team-b", "keys": ["k-b"]},
        {"name": "team-c", "keys": ["k-c"], "limits": [{"tokens": 100, "per": "minute"}],
         "models": ["my-model"]},
    ], "limits": [{"cost_usd": 1.0, "per": "day"}]}
    code, out, err = tollgate(cli, "check", "-", stdin=json.dumps(cfg))
    assert code == 0, err
    assert out == "ok: 3 consumers, 0 accounts, 1 default limits, stage downstream\n"
    lines = err.splitlines()
    assert all(line.startswith("warning: ") and 'get 403 "model has no price"' in line for line in lines), err
    assert [line.split(":")[1] for line in lines] == [" consumers[0].models[1]", " consumers[0].models[3]",
                                                      " consumers[1]"], err
    # Priced by configuration (a prefix glob and a "*" default), the same file is quiet.
    cfg["pricing"] = {"gemini-*": {"input": 1, "output": 2}, "*": {"input": 3, "output": 3}}
    code, out, err = tollgate(cli, "check", "-", stdin=json.dumps(cfg))
    assert (code, err) == (0, ""), err


# -- Envoy and Istio files -----------------------------------------------------------------------

SHIPPED_ENVOY = sorted((ROOT / "envoy").glob("*.yaml"))
ISTIO = ROOT / "envoy" / "istio" / "tollgate-envoyfilter.yaml"
OK_LINE = re.compile(r'^ok: filter "([^"]+)" \(([^)]*)\): (\d+) consumers, (\d+) accounts, ')


@pytest.mark.parametrize("path", SHIPPED_ENVOY + [ISTIO], ids=lambda p: p.name)
def test_check_takes_every_shipped_envoy_yaml_and_the_istio_example(cli, path):
    """Each tollgate filter of the file gets its own line, named by its place; its counts are
    its configuration's."""
    code, out, err = tollgate(cli, "check", str(path), env=ACCOUNT_KEYS)
    assert code == 0, err
    assert "error" not in err, err
    if path == ISTIO:
        doc = yaml.safe_load(path.read_text())
        configs = [json.loads(p["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])
                   for p in doc["spec"]["configPatches"]
                   if p["patch"].get("value", {}).get("name") == envoyctl.WASM_FILTER]
    else:
        configs = [envoyctl.tollgate_config(wc) for wc in envoyctl.wasm_filters(envoyctl.load(path.name))]
    lines = out.splitlines()
    assert len(lines) == len(configs) >= 1, out
    for line, cfg in zip(lines, configs):
        m = OK_LINE.match(line)
        assert m, line
        assert (int(m.group(3)), int(m.group(4))) == (len(cfg.get("consumers", [])), len(cfg.get("accounts", []))), line
        want_place = "configPatches[" if path == ISTIO else ("cluster " if cfg.get("stage") == "upstream" else "listener ")
        assert m.group(2).startswith(want_place), line


def test_check_of_an_envoy_yaml_without_the_keys_says_what_envoy_needs(cli):
    code, out, err = tollgate(cli, "check", str(ROOT / "envoy" / "envoy.yaml"))
    assert code == 1 and out == ""
    lines = err.splitlines()
    variables = re.findall(r'"key_env": "(\w+)"', (ROOT / "envoy" / "envoy.yaml").read_text())
    # Every missing variable at once (the filter itself stops at the first).
    assert len(lines) == len(variables) >= 3, err
    for line in lines:
        assert line.startswith('error: filter "tollgate" (listener "tollgate", http_filters[0]): accounts['), line
        assert "is not set in this shell" in line and "host_env_keys" in line, line
        assert "in the VM" not in line, line
    # Without the secrets, everything else still gets checked.
    code, out, err = tollgate(cli, "check", "--no-env", str(ROOT / "envoy" / "envoy.yaml"))
    assert (code, err) == (0, ""), err
    assert out.startswith('ok: filter "tollgate"'), out


def test_check_of_the_yaml_envoy_runs_catches_a_key_the_vm_would_not_see(cli, make_envoy):
    """The variable is set in the shell and in Envoy's environment, but not listed in
    host_env_keys: Envoy refuses the filter, and `check` of the very file Envoy ran says why."""
    cfg = base_config()
    cfg["accounts"][0]["key_env"] = "TOLLGATE_EXTRA_KEY"
    extra = {"TOLLGATE_EXTRA_KEY": "sk-ant-api03-extra-FAKE"}
    e = make_envoy(cfg, env=extra, expect_fail=True)
    e.wait_exit(30)
    assert "invalid configuration: accounts[0].key_env" in e.log_text(), e.log_text()[-2000:]
    code, out, err = tollgate(cli, "check", str(e.config_path), env={**ACCOUNT_KEYS, **extra})
    assert code == 1, out
    assert ("accounts[0].key_env: environment variable TOLLGATE_EXTRA_KEY is not passed to the VM: add it "
            "to this filter's vm_config.environment_variables.host_env_keys") in err, err
    assert extra["TOLLGATE_EXTRA_KEY"] not in out + err


def test_check_passes_the_yaml_a_running_envoy_was_started_with(cli, envoy):
    code, out, err = tollgate(cli, "check", str(envoy.config_path), env=ACCOUNT_KEYS)
    assert code == 0, err
    assert out == 'ok: filter "tollgate" (listener "tollgate", http_filters[0]): 2 consumers, 3 accounts, ' \
                  "1 default limits, stage downstream, admin at /tollgate\n", out


# -- help, version, usage errors -----------------------------------------------------------------

def test_help_for_each_command_and_version(cli):
    for args in (["check", "--help"], ["help", "check"], ["check", "-h"]):
        code, out, err = tollgate(cli, *args)
        assert (code, err) == (0, ""), (args, err)
        assert out.startswith("usage: tollgate check [--no-env] FILE\n"), (args, out)
    for command in ("ratelimit-config", "top", "estimate", "hash-key"):
        code, out, _ = tollgate(cli, command, "--help")
        assert code == 0 and out.startswith(f"usage: tollgate {command}"), out
    version = tollgate(cli, "--version")
    assert version == tollgate(cli, "version")
    assert re.fullmatch(r"tollgate \d+\.\d+\.\d+\n", version[1]) and version[0] == 0, version
    code, out, err = tollgate(cli, "check", "--frobnicate", "x.json")
    assert code == 2 and out == ""
    assert err.startswith('tollgate check: unknown option "--frobnicate"\nusage: tollgate check'), err


# -- ratelimit-config ----------------------------------------------------------------------------

def generated_ratelimit_config(cli) -> str:
    code, out, err = tollgate(cli, "ratelimit-config", str(ROOT / "envoy" / "envoy-global.yaml"))
    assert (code, err) == (0, ""), err
    return out


def test_ratelimit_config_of_the_shipped_global_config_is_the_shipped_service_config(cli):
    """Limits written once: generated from envoy-global.yaml's tollgate configuration, the
    service's file is the shipped one, less the per-model entry (tollgate's configuration has
    no per-model global limits: that one is written by hand)."""
    got = yaml.safe_load(generated_ratelimit_config(cli))
    shipped = yaml.safe_load((ROOT / "envoy" / "ratelimit" / "config.yaml").read_text())
    team_a = next(d for d in shipped["descriptors"] if d.get("value") == "team-a")
    by_hand = [d for d in team_a["descriptors"] if d["key"] == "model"]
    assert [d["value"] for d in by_hand] == ["claude-*"]
    team_a["descriptors"] = [d for d in team_a["descriptors"] if d["key"] != "model"]
    assert got == shipped


@pytest.mark.skipif(ratelimitctl.missing() is not None, reason=f"global-limit backend: {ratelimitctl.missing()}")
def test_the_generated_ratelimit_config_is_what_the_reference_service_enforces(cli):
    with ratelimitctl.RateLimitStack(config=generated_ratelimit_config(cli)) as rl:
        ratelimitctl.wait_for_fresh_window()
        limits = {
            ("consumer", "team-a", "tokens"): {"requestsPerUnit": 200000, "unit": "MINUTE"},
            ("consumer", "team-a", "requests"): {"requestsPerUnit": 120, "unit": "MINUTE"},
            ("consumer", "team-a", "cost_micros"): {"requestsPerUnit": 25000000, "unit": "DAY"},
            ("consumer", "someone-else", "tokens"): {"requestsPerUnit": 20000, "unit": "MINUTE"},
            ("account", "anthropic-1", "tokens"): {"requestsPerUnit": 400000, "unit": "MINUTE"},
        }
        for (key, value, unit), want in limits.items():
            st = rl.status([(key, value), ("unit", unit)], 0)
            assert st.get("currentLimit") == want, (key, value, unit, st)
        assert rl.remaining([("consumer", "someone-else"), ("unit", "requests")]) is None
        st = rl.hit([("consumer", "team-a"), ("unit", "tokens")], 150000)
        assert st.get("limitRemaining") == 50000, st


# -- top -----------------------------------------------------------------------------------------

def _messages(e, key: str) -> int:
    r = requests.post(e.url() + "/v1/messages", timeout=10,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"},
                      data=json.dumps({"model": "claude-haiku-4-5", "max_tokens": 16,
                                       "messages": [{"role": "user", "content": "hello"}]}))
    return r.status_code


def _row(frame: str, section: str, name: str) -> list[str]:
    part = frame.split(f"\n{section}\n", 1)[1]
    for line in part.splitlines()[1:]:
        if not line.strip():
            break
        if line.split()[0] == name:
            return line.split()
    raise AssertionError(f"no {section} row {name!r} in\n{frame}")


def test_top_once_shows_the_figures_of_a_real_envoy(cli, make_envoy, mock):
    e = make_envoy(base_config())
    mock.reset()
    n = 4
    assert [_messages(e, KEY_A) for _ in range(n)] == [200] * n
    assert _messages(e, "tg-not-a-key") == 401
    url = e.url() + "/tollgate"

    def team_a() -> tuple[dict, dict]:
        u = requests.get(url + "/usage", headers={"x-api-key": ADMIN_KEY}, timeout=10).json()
        return u, next((c for c in u["consumers"] if c["name"] == "team-a"), {"totals": {"requests": 0}})

    # Workers merge their facts about once a second.
    deadline = time.monotonic() + 10
    while team_a()[1]["totals"]["requests"] < n and time.monotonic() < deadline:
        time.sleep(0.2)
    code, frame, err = tollgate(cli, "top", url, "--once", env={"TOLLGATE_ADMIN_KEY": ADMIN_KEY})
    assert (code, err) == (0, ""), err
    usage, team = team_a()
    assert team["totals"]["requests"] == n
    assert frame.startswith(f"tollgate top  {url}/usage  "), frame
    t = usage["totals"]
    assert f"\nrequests {t['requests']}  errors {t['errors']}  " in frame, frame
    row = _row(frame, "CONSUMERS", "team-a")
    assert row[1:3] == [str(n), "0"], row
    assert row[3] == f"{team['totals']['tokens']:,}", row
    acct = _row(frame, "ACCOUNTS", "anthropic-1")
    assert acct[1:4] == ["anthropic", "ok", str(n)], acct
    assert ADMIN_KEY not in frame
    # The key from --key, or from the URL's password, works the same; a wrong one is refused
    # without being shown.
    assert tollgate(cli, "top", url, "--once", "--key", ADMIN_KEY)[0] == 0
    assert tollgate(cli, "top", url.replace("http://", f"http://admin:{ADMIN_KEY}@"), "--once")[0] == 0
    wrong = "tg-wrong-admin-key-FAKE"
    code, out, err = tollgate(cli, "top", url, "--once", "--key", wrong)
    assert code == 1 and out == ""
    assert err == f"tollgate top: {url}/usage: 401: the admin key was refused (--key or TOLLGATE_ADMIN_KEY)\n", err
    code, out, err = tollgate(cli, "top", url.replace("http://", f"http://admin:{wrong}@"), "--once")
    assert code == 1 and wrong not in out + err, err


def test_top_redraws_until_interrupted(cli, envoy):
    p = subprocess.Popen([cli, "top", envoy.url() + "/tollgate", "--interval", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY})
    time.sleep(1.5)
    p.terminate()
    out, err = p.communicate(timeout=10)
    frames = out.decode().split("\x1b[H\x1b[2J")
    assert frames[0] == "" and len(frames) >= 3, out[:500]
    assert all(f.startswith("tollgate top  ") and "\nACCOUNTS\n" in f for f in frames[1:-1]), frames[1][:500]
