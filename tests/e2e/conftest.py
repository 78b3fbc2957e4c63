"""e2e fixtures: the mock LLM upstream and real Envoy 1.40 processes running the built
tollgate.wasm with `--concurrency 2`. Every test fails if any Envoy's log holds a
`panicked` line afterwards; every process is torn down even when a test fails."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import envoyctl  # noqa: E402
from mockctl import Mock  # noqa: E402

ACCOUNT_KEYS = {
    "TOLLGATE_ANTHROPIC_KEY_1": "sk-ant-api03-upstream-account-one-0000000000AAAA",
    "TOLLGATE_ANTHROPIC_KEY_2": "sk-ant-api03-upstream-account-two-0000000000DDDD",
    "TOLLGATE_ANTHROPIC_KEY_3": "sk-ant-api03-upstream-account-three-00000000EEEE",
    "TOLLGATE_OPENAI_KEY_1": "sk-proj-upstream-account-one-000000000000BBBB",
    "TOLLGATE_GEMINI_KEY_1": "AIza-upstream-gemini-account-one-CCCC",
    "TOLLGATE_VLLM_KEY": "vllm-upstream-token-FFFF",
}
KEY_A = "tg-test-key-team-a"
KEY_B = "tg-test-key-team-b"
ADMIN_KEY = "tg-test-admin"


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def base_config(**overrides) -> dict:
    """The tollgate configuration most e2e tests run with."""
    cfg = {
        "consumers": [
            {"name": "team-a", "keys": [KEY_A]},
            {"name": "team-b", "keys": [sha(KEY_B)], "models": ["claude-haiku-*", "gpt-4o-mini", "gemini-2.0-flash"]},
        ],
        "limits": [{"tokens": 10_000_000, "per": "minute"}],
        "accounts": [
            {"name": "anthropic-1", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_1"},
            {"name": "openai-1", "provider": "openai", "key_env": "TOLLGATE_OPENAI_KEY_1"},
            {"name": "gemini-1", "provider": "gemini", "key_env": "TOLLGATE_GEMINI_KEY_1"},
        ],
        "admin": {"path": "/tollgate", "keys": [sha(ADMIN_KEY)]},
    }
    cfg.update(overrides)
    return cfg


_started: list[envoyctl.Envoy] = []


@pytest.fixture(scope="session")
def mock():
    if not envoyctl.MOCK.exists():
        pytest.fail(f"{envoyctl.MOCK} is missing: run `make build`")
    m = Mock(str(envoyctl.MOCK))
    m.start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("envoy")


class EnvoyFactory:
    def __init__(self, mock: Mock, workdir: Path):
        self.mock = mock
        self.workdir = workdir
        self.mine: list[envoyctl.Envoy] = []

    def __call__(self, tollgate: dict | str | None = None, shipped: str = "envoy.yaml",
                 env: dict | None = None, expect_fail: bool = False, name: str | None = None,
                 concurrency: int = 2, patch=None, upstream: dict | None = None) -> envoyctl.Envoy:
        cfg = envoyctl.load(shipped)
        ports = {"tollgate": envoyctl.free_port(), "llm": self.mock.port, "llm-vllm": self.mock.port}
        cfg = envoyctl.render(cfg, ports=ports, admin_port=envoyctl.free_port(),
                              tollgate=tollgate if tollgate is not None else base_config(),
                              upstream=upstream, env_keys=list(ACCOUNT_KEYS))
        if patch:
            patch(cfg)
        n = name or f"envoy-{len(_started)}"
        e = envoyctl.Envoy(cfg, self.workdir, env={**ACCOUNT_KEYS, **(env or {})},
                           concurrency=concurrency, name=n)
        _started.append(e)
        self.mine.append(e)
        return e.start(expect_fail=expect_fail)

    def close(self):
        for e in self.mine:
            e.stop()


@pytest.fixture
def make_envoy(mock, workdir):
    f = EnvoyFactory(mock, workdir)
    yield f
    f.close()


@pytest.fixture(scope="module")
def envoy(mock, workdir):
    """One Envoy with `base_config()`, shared by a test module."""
    f = EnvoyFactory(mock, workdir)
    yield f()
    f.close()


@pytest.fixture(autouse=True)
def no_panics():
    """Fails the test if any Envoy started so far logged a panic."""
    yield
    for e in _started:
        text = e.log_text()
        if "panicked" in text:
            lines = [ln for ln in text.splitlines() if "panicked" in ln]
            pytest.fail(f"{e.name} logged a panic: {lines[:3]}")


def pytest_sessionfinish(session, exitstatus):
    for e in _started:
        e.stop()


# ---- request ids in the access log (quota and fault tests) ----------------------------------


def tid() -> str:
    """A fresh id for the `x-test-id` header, which `with_request_ids` logs."""
    return uuid.uuid4().hex[:16]


def add_request_ids(listener: dict) -> None:
    """Appends the caller's `x-test-id` to the listener's access log line."""
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            for log in f["typed_config"].get("access_log", []):
                fmt = log["typed_config"]["log_format"]["text_format_source"]
                line = fmt["inline_string"]
                assert line.endswith("\n")
                fmt["inline_string"] = line[:-1] + " id=%REQ(X-TEST-ID)%\n"


def with_request_ids(cfg: dict) -> None:
    for listener in cfg["static_resources"]["listeners"]:
        add_request_ids(listener)


def consumers_config(consumers: list[dict], output_reserve: int, **overrides) -> dict:
    """`base_config` with these consumers and this output reserve."""
    cfg = base_config(estimate={"output_reserve": output_reserve}, **overrides)
    cfg["consumers"] = consumers
    return cfg


def access_log(e, ids: set[str], line: re.Pattern, timeout: float = 20.0) -> dict[str, dict]:
    """The access log lines of the requests tagged with `ids`, parsed by `line` (which has an
    `id` group); waits for Envoy to flush them."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for text in e.log_text().splitlines():
            m = line.search(text)
            if m and m["id"] in ids:
                found[m["id"]] = m.groupdict()
        if len(found) == len(ids) or time.monotonic() > deadline:
            missing = ids - set(found)
            assert not missing, f"{len(missing)} requests have no access log line, e.g. {sorted(missing)[:3]}"
            return found
        time.sleep(0.2)


# ---- figures read from a running Envoy -------------------------------------------------------


def stat_sum(e, prefix: str, **labels) -> int:
    """The sum of tollgate counters named `prefix` whose labels include `labels`."""
    total = 0
    for name, v in e.stats().items():
        if not name.startswith(f"wasmcustom.{prefix}"):
            continue
        rest = name[len(f"wasmcustom.{prefix}"):].lstrip(".").split(".")
        got = dict(zip(rest[0::2], rest[1::2]))
        if all(got.get(k) == v_ for k, v_ in labels.items()):
            total += v
    return total


def rss_kb(e) -> int:
    """Envoy's resident memory (VmRSS), in KiB."""
    with open(f"/proc/{e.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
