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
from conftest import ACCOUNT_KEYS, KEY_A, base_config

ROOT = envoyctl.ROOT
CORPUS = ROOT / "tests" / "corpus"
CANDIDATES = [ROOT / "target" / "release" / "tollgate", ROOT / "target" / "debug" / "tollgate"]


def _sources_mtime() -> float:
    files = [ROOT / "cli" / "Cargo.toml", *(ROOT / "cli" / "src").glob("*.rs"),
             *(ROOT / "filter" / "src").glob("*.rs")]
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
    """The same sentence, word for word, as the filter's `on_configure` in Envoy."""
    code, _, err = tollgate(cli, "check", "-", stdin=json.dumps(bad), env=ACCOUNT_KEYS)
    assert code == 1
    e = make_envoy(bad, expect_fail=True)
    e.wait_exit(30)
    logged = re.search(r"\] invalid configuration: (.*)", e.log_text())
    assert logged, e.log_text()[-3000:]
    assert err.strip() == logged.group(1).strip()


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
