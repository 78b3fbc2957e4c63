"""The figures of docs/scaling.md: ratelimit calls and Redis commands per second for N Envoys
(W workers each) serving R requests/s through tollgate with global limits.

    python tests/bench/global_calls.py --envoys 1 --rate 200 --seconds 10
    TOLLGATE_WASM=/path/to/older/tollgate.wasm python tests/bench/global_calls.py ...

Starts redis-server + envoyproxy/ratelimit (tests/ratelimitctl.py), the mock upstream and N
Envoys with `envoy/envoy-global.yaml`; sends R requests/s (team-a, 48 real tokens each,
spread over the Envoys) for the given seconds at a fixed schedule; then reads Envoy's
counters for its `ratelimit` cluster (every gRPC call is one upstream request) and Redis's
`INFO commandstats` (reset before the run). Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "e2e"))

import envoyctl  # noqa: E402
import ratelimitctl  # noqa: E402
import requests  # noqa: E402
from mockctl import Mock  # noqa: E402

KEY = "tg-bench-team-a"
ACCOUNT = {"TOLLGATE_ANTHROPIC_KEY_1": "sk-ant-FAKE-bench-account-0000000000000000",
           "TOLLGATE_OPENAI_KEY_1": "sk-FAKE-bench-openai", "TOLLGATE_GEMINI_KEY_1": "FAKE-bench-gemini"}


def tollgate_config() -> dict:
    return {
        "consumers": [{"name": "team-a", "keys": [KEY],
                       "limits": [{"tokens": 1_000_000_000, "per": "minute"},
                                  {"requests": 1_000_000, "per": "minute"}]}],
        "accounts": [{"name": "anthropic-1", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_1"}],
        "global": {"cluster": "ratelimit", "domain": "tollgate", "timeout": "1s", "failure_mode": "deny"},
        "estimate": {"output_reserve": 50},
    }


def service_config() -> dict:
    """team-a's tokens and requests limited (two Redis counters); the model descriptors are
    sent but unlimited (no Redis command)."""
    limit = {"unit": "hour", "requests_per_unit": 4_000_000_000}
    return {"domain": "tollgate", "descriptors": [{"key": "consumer", "value": "team-a", "descriptors": [
        {"key": "unit", "value": "tokens", "rate_limit": limit},
        {"key": "unit", "value": "requests", "rate_limit": limit}]}]}


def redis(rl, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(rl.redis_port), *args], capture_output=True,
                          text=True, timeout=10, check=True).stdout


def commandstats(rl) -> dict[str, int]:
    out = {}
    for line in redis(rl, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            out[name] = int(dict(kv.split("=") for kv in rest.split(","))["calls"])
    return out


def run(envoys: int, workers: int, rate: float, seconds: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tg-global-calls-"))
    mock = Mock(str(envoyctl.MOCK))
    mock.start()
    rl = ratelimitctl.RateLimitStack(config=service_config())
    rl.start()
    started = []
    try:
        mock.script(ACCOUNT["TOLLGATE_ANTHROPIC_KEY_1"], usage={"input": 37, "output": 11})
        for i in range(envoys):
            cfg = envoyctl.render(envoyctl.load("envoy-global.yaml"),
                                  ports={"tollgate": envoyctl.free_port(), "llm": mock.port},
                                  admin_port=envoyctl.free_port(), tollgate=tollgate_config(),
                                  env_keys=list(ACCOUNT))
            ratelimitctl.with_ratelimit_port(rl.grpc_port)(cfg)
            e = envoyctl.Envoy(cfg, work, env=ACCOUNT, concurrency=workers, name=f"envoy-{i}")
            started.append(e)
            e.start()
        # One request per Envoy first: connections and counters warm, then counted from 0.
        body = {"model": "claude-haiku-4-5", "max_tokens": 50,
                "messages": [{"role": "user", "content": "hello there"}]}
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        for e in started:
            requests.post(e.url() + "/v1/messages", json=body, headers=headers, timeout=10)
        time.sleep(0.5)
        calls0 = sum(e.stats().get("cluster.ratelimit.upstream_rq_total", 0) for e in started)
        redis(rl, "CONFIG", "RESETSTAT")
        total = int(rate * seconds)
        callers = 16
        codes: list[int] = []
        lock = threading.Lock()
        t0 = time.monotonic() + 0.2

        def caller(k: int) -> None:
            with requests.Session() as s:
                for i in range(k, total, callers):
                    wait = t0 + i / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    e = started[i % len(started)]
                    code = s.post(e.url() + "/v1/messages", json=body, headers=headers, timeout=30).status_code
                    with lock:
                        codes.append(code)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        time.sleep(0.5)   # the last ticks' charges
        calls = sum(e.stats().get("cluster.ratelimit.upstream_rq_total", 0) for e in started) - calls0
        stats = commandstats(rl)
        ok = sum(1 for c in codes if c == 200)
        redis_cmds = sum(v for k, v in stats.items() if k.split("|")[0] not in ("config", "info", "ping"))
        return {
            "wasm": str(envoyctl.WASM), "envoys": envoys, "workers": workers, "rate": rate,
            "seconds": round(elapsed, 2), "requests": len(codes), "ok": ok,
            "achieved_rps": round(len(codes) / elapsed, 1),
            "ratelimit_calls": calls, "admission_calls": len(codes), "charge_calls": calls - len(codes),
            "calls_per_s": round(calls / elapsed, 1), "charge_calls_per_s": round((calls - len(codes)) / elapsed, 1),
            "redis_commands": stats, "redis_commands_per_s": round(redis_cmds / elapsed, 1),
        }
    finally:
        for e in started:
            e.stop()
        rl.stop()
        mock.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envoys", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    print(json.dumps(run(a.envoys, a.workers, a.rate, a.seconds)))


if __name__ == "__main__":
    main()
