"""Start and stop the global rate-limit backend on loopback for tests: redis-server and
envoyproxy/ratelimit (`service_cmd`, installed by `make setup`), loaded with
envoy/ratelimit/config.yaml or a config given as text or dict. Stdlib + PyYAML only.

    with RateLimitStack() as rl:            # or rl = RateLimitStack(); rl.start(); rl.stop()
        rl.grpc_port                         # for the Envoy `ratelimit` cluster
        rl.remaining([("consumer", "team-a"), ("unit", "tokens")])   # check only, counts 0
        rl.hit([("consumer", "team-a"), ("unit", "requests")], 1)    # counts 1

The service's HTTP `/json` endpoint takes a RateLimitRequest in proto3 JSON, so tests read
and move counters without a gRPC client. `python tests/ratelimitctl.py` runs a smoke check
of the shipped config against the real service.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "envoy" / "ratelimit" / "config.yaml"
DOMAIN = "tollgate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_binary() -> str | None:
    """envoyproxy/ratelimit's `service_cmd`: $TOLLGATE_RATELIMIT_BIN, `go env GOPATH`/bin, PATH."""
    env = os.environ.get("TOLLGATE_RATELIMIT_BIN")
    if env:
        return env if os.path.exists(env) else None
    cands = [Path.home() / "go" / "bin" / "service_cmd"]
    if os.environ.get("GOPATH"):
        cands.insert(0, Path(os.environ["GOPATH"].split(":")[0]) / "bin" / "service_cmd")
    for c in cands:
        if c.exists():
            return str(c)
    found = shutil.which("service_cmd")
    if found or not shutil.which("go"):
        return found
    try:
        gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True,
                                timeout=30).stdout.strip().split(":")[0]
    except (OSError, subprocess.SubprocessError):
        return None
    c = Path(gopath) / "bin" / "service_cmd" if gopath else None
    return str(c) if c and c.exists() else None


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def missing() -> str | None:
    """Why the stack cannot start here (for pytest.skip), or None."""
    if not redis_binary():
        return "redis-server not installed (make setup)"
    if not service_binary():
        return "envoyproxy/ratelimit service_cmd not installed (make setup)"
    return None


def _wait(what: str, proc: subprocess.Popen, ready, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready in {timeout}s:\n{_tail(log)}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class RateLimitStack:
    """redis-server plus the ratelimit service, both on 127.0.0.1 with free ports."""

    def __init__(self, config: str | dict | Path | None = None, workdir: str | Path | None = None,
                 env: dict[str, str] | None = None):
        self.config = CONFIG if config is None else config
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tollgate-rl-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.extra_env = env or {}
        self.redis_port = free_port()
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.debug_port = free_port()
        self.redis: subprocess.Popen | None = None
        self.service: subprocess.Popen | None = None
        self.config_dir = self.workdir / "runtime" / "ratelimit" / "config"
        self.redis_log = self.workdir / "redis.log"
        self.service_log = self.workdir / "ratelimit.log"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "RateLimitStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> "RateLimitStack":
        why = missing()
        if why:
            raise RuntimeError(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._write_config(self.config)
        try:
            self._start_redis(timeout)
            self._start_service(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop(self.service)
        _stop(self.redis)
        self.service = self.redis = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def stop_service(self) -> None:
        """Stops the rate-limit service only (Redis keeps the counters)."""
        _stop(self.service)
        self.service = None

    def start_service(self, timeout: float = 30.0) -> None:
        self._start_service(timeout)

    def _start_redis(self, timeout: float) -> None:
        args = [redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--logfile", str(self.redis_log)]
        self.redis = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      cwd=self.workdir, start_new_session=True)
        _wait("redis-server", self.redis, self._redis_ping, timeout, self.redis_log)

    def _redis_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "USE_STATSD": "false",
            "LOG_LEVEL": "warn",
            "LOG_FORMAT": "text",
            "REDIS_SOCKET_TYPE": "tcp",
            "REDIS_TYPE": "SINGLE",
            "REDIS_URL": f"127.0.0.1:{self.redis_port}",
            "RUNTIME_ROOT": str(self.workdir / "runtime"),
            "RUNTIME_SUBDIRECTORY": "ratelimit",
            "RUNTIME_APPDIRECTORY": "config",
            "RUNTIME_WATCH_ROOT": "false",
            "RUNTIME_IGNOREDOTFILES": "true",
            "HOST": "127.0.0.1",
            "PORT": str(self.http_port),
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.grpc_port),
            "DEBUG_HOST": "127.0.0.1",
            "DEBUG_PORT": str(self.debug_port),
            **self.extra_env,
        }

    def _start_service(self, timeout: float) -> None:
        log = open(self.service_log, "ab")
        try:
            self.service = subprocess.Popen([service_binary()], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.workdir, env=self.env(), start_new_session=True)
        finally:
            log.close()
        _wait("ratelimit service", self.service, self._healthy, timeout, self.service_log)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/healthcheck", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    # -- configuration -----------------------------------------------------------------------

    def _write_config(self, config: str | dict | Path) -> None:
        if isinstance(config, Path):
            text = config.read_text()
        elif isinstance(config, dict):
            text = yaml.safe_dump(config)
        else:
            text = config
        # Written beside and renamed, so the watcher never reads half a file.
        tmp = self.config_dir / ".config.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.config_dir / "config.yaml")

    def rlconfig(self) -> str:
        """The configuration the service has loaded, as its debug port prints it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.debug_port}/rlconfig", timeout=5) as r:
            return r.read().decode()

    def reload(self, config: str | dict | Path, expect: str, timeout: float = 10.0) -> None:
        """Replace the config and wait until the loaded one mentions `expect`."""
        self._write_config(config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect in self.rlconfig():
                return
            time.sleep(0.1)
        raise RuntimeError(f"config with {expect!r} not loaded in {timeout}s:\n{_tail(self.service_log)}")

    # -- the /json endpoint ------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def should_rate_limit(self, descriptors: list[tuple[list[tuple[str, str]], int | None]],
                          domain: str = DOMAIN) -> tuple[int, dict]:
        """One RateLimitRequest: each descriptor is (entries, hits_addend or None).
        Returns the HTTP status (200 OK, 429 OVER_LIMIT) and the RateLimitResponse JSON."""
        body = {"domain": domain, "descriptors": []}
        for entries, hits in descriptors:
            d: dict = {"entries": [{"key": k, "value": v} for k, v in entries]}
            if hits is not None:
                d["hitsAddend"] = str(hits)
            body["descriptors"].append(d)
        req = urllib.request.Request(f"{self.http_url}/json", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw or b"{}")
            except ValueError:
                return e.code, {"error": raw.decode(errors="replace")}

    def status(self, entries: list[tuple[str, str]], hits: int = 0) -> dict:
        """The DescriptorStatus of one descriptor after counting `hits` (0: check only)."""
        code, resp = self.should_rate_limit([(entries, hits)])
        if code not in (200, 429):
            raise RuntimeError(f"/json answered {code}: {resp}")
        return resp["statuses"][0]

    def remaining(self, entries: list[tuple[str, str]]) -> int | None:
        """limit_remaining without counting anything; None when no limit is configured."""
        st = self.status(entries, 0)
        if "currentLimit" not in st:
            return None
        return int(st.get("limitRemaining", 0))

    def hit(self, entries: list[tuple[str, str]], hits: int) -> dict:
        return self.status(entries, hits)


# -- smoke check -------------------------------------------------------------------------------

def smoke(rl: RateLimitStack) -> list[str]:
    """Checks the shipped config and the per-descriptor hits_addend semantics tollgate relies
    on; returns the failures."""
    fails: list[str] = []
    passed = [0]

    def check(name: str, ok: bool, got) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got}")
        if ok:
            passed[0] += 1
        else:
            fails.append(name)

    wait_for_fresh_window()

    tokens = [("consumer", "team-a"), ("unit", "tokens")]
    requests_ = [("consumer", "team-a"), ("unit", "requests")]
    st = rl.status(tokens, 0)
    check("team-a tokens limited 200000/minute", st.get("currentLimit") ==
          {"requestsPerUnit": 200000, "unit": "MINUTE"}, st)
    check("check-only counts nothing", rl.remaining(tokens) == 200000, rl.remaining(tokens))
    st = rl.hit(tokens, 150000)
    check("a charge of 150000 leaves 50000", st.get("limitRemaining") == 50000 and st["code"] == "OK", st)
    check("the check sees it", rl.remaining(tokens) == 50000, rl.remaining(tokens))
    code, resp = rl.should_rate_limit([(tokens, 60000)])
    check("a charge past the limit is OVER_LIMIT (429)", code == 429 and resp["overallCode"] == "OVER_LIMIT",
          (code, resp))
    code, resp = rl.should_rate_limit([(tokens, 0)])
    check("then even a check-only request is OVER_LIMIT", resp["statuses"][0]["code"] == "OVER_LIMIT",
          (code, resp))
    st = rl.hit(requests_, 1)
    check("team-a requests 120/minute, one counted", st.get("limitRemaining") == 119, st)
    code, resp = rl.should_rate_limit([(requests_, None)])
    check("no hits_addend counts 1", resp["statuses"][0].get("limitRemaining") == 118, resp)
    cost = [("consumer", "team-a"), ("unit", "cost_micros")]
    st = rl.status(cost, 0)
    check("team-a cost_micros 25000000/day", st.get("currentLimit") == {"requestsPerUnit": 25000000, "unit": "DAY"}, st)
    m1 = [("consumer", "team-a"), ("model", "claude-haiku-4-5"), ("unit", "tokens")]
    m2 = [("consumer", "team-a"), ("model", "claude-*"), ("unit", "tokens")]
    rl.hit(m1, 1000)
    check("claude models share one counter", rl.remaining(m2) == 149000, rl.remaining(m2))
    other_model = [("consumer", "team-a"), ("model", "gpt-4o-mini"), ("unit", "tokens")]
    check("an unlisted model has no limit", rl.remaining(other_model) is None, rl.status(other_model))
    other = [("consumer", "someone-else"), ("unit", "tokens")]
    check("any other consumer gets the default 20000/minute", rl.remaining(other) == 20000, rl.status(other))
    rl.hit(other, 5000)
    third = [("consumer", "a-third"), ("unit", "tokens")]
    check("each default consumer has its own counter", rl.remaining(third) == 20000, rl.remaining(third))
    nolimit = [("consumer", "someone-else"), ("unit", "requests")]
    check("a unit without a limit is unconstrained", rl.remaining(nolimit) is None, rl.status(nolimit))
    acct = [("account", "anthropic-1"), ("unit", "tokens")]
    check("account anthropic-1 tokens 400000/minute", rl.remaining(acct) == 400000, rl.status(acct))
    print(f"{passed[0]} passed, {len(fails)} failed")
    return fails


def wait_for_fresh_window(margin_s: float = 5.0) -> None:
    """The service's windows are epoch-aligned: a check that counts within one minute must
    not straddle a minute boundary, so start it early in a minute."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.05)


if __name__ == "__main__":
    why = missing()
    if why:
        print(f"skipped: {why}")
        sys.exit(0)
    with RateLimitStack() as stack:
        failures = smoke(stack)
    sys.exit(1 if failures else 0)


def with_ratelimit_port(port: int):
    """An Envoy config patch: the shipped `ratelimit` cluster points at `port`."""
    def patch(cfg):
        for c in cfg["static_resources"]["clusters"]:
            if c["name"] == "ratelimit":
                for ep in c["load_assignment"]["endpoints"]:
                    for lb in ep["lb_endpoints"]:
                        lb["endpoint"]["address"]["socket_address"]["port_value"] = port
    return patch
