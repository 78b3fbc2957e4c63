"""Issue #20, global limits in real Envoy against envoyproxy/ratelimit + Redis: at most one
ratelimit round trip on a request's path (Envoy's own counters for the `ratelimit` cluster
say how many calls went out), charges summed per descriptor per tick (the Redis counter
still equals the real tokens to the token), and an over-limit answer remembered until its
window ends (further requests on that worker are refused with no call at all)."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import requests

import ratelimitctl
from conftest import ACCOUNT_KEYS, KEY_A, base_config, stat_sum

pytestmark = pytest.mark.skipif(ratelimitctl.missing() is not None,
                                reason=f"global-limit backend: {ratelimitctl.missing()}")

MODEL = "claude-haiku-4-5"
TICK_S = 0.1
WORKERS = 2


def fresh_hour(margin_s: float = 60.0) -> None:
    into = time.time() % 3600
    if into > 3600 - margin_s:
        time.sleep(3600 - into + 0.05)


def start(make_envoy, mock, tokens_per_hour: int, usage: dict, n: int = 1):
    """The service with team-a's tokens limited per hour, and `n` Envoys using it."""
    rl = ratelimitctl.RateLimitStack(config={"domain": "tollgate", "descriptors": [
        {"key": "consumer", "value": "team-a", "descriptors": [
            {"key": "unit", "value": "tokens",
             "rate_limit": {"unit": "hour", "requests_per_unit": tokens_per_hour}}]}]})
    rl.start()
    fresh_hour()
    cfg = base_config()
    cfg["consumers"][0]["limits"] = [{"tokens": 10_000_000, "per": "minute"}]
    cfg["global"] = {"cluster": "ratelimit", "domain": "tollgate", "timeout": "1s", "failure_mode": "deny"}
    cfg["estimate"] = {"output_reserve": 50}
    envoys = [make_envoy(cfg, shipped="envoy-global.yaml", concurrency=WORKERS,
                         patch=ratelimitctl.with_ratelimit_port(rl.grpc_port)) for _ in range(n)]
    mock.reset()
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], usage=usage)
    return rl, envoys


def ratelimit_calls(e) -> int:
    """Calls Envoy made to the `ratelimit` cluster (every gRPC call is one upstream request)."""
    return int(e.stats().get("cluster.ratelimit.upstream_rq_total", 0))


def redis_tokens(rl) -> int:
    """team-a's token counter as the service holds it in Redis (all windows summed)."""
    def cli(*args: str) -> list[str]:
        out = subprocess.run(["redis-cli", "-p", str(rl.redis_port), "--raw", *args],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [ln for ln in out.splitlines() if ln]
    return sum(int(cli("GET", k)[0]) for k in cli("KEYS", "tollgate_consumer_team-a_unit_tokens_*"))


def post(session: requests.Session, e) -> requests.Response:
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}
    headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}
    return session.post(e.url() + "/v1/messages", json=body, headers=headers, timeout=30)


def test_one_call_per_request_and_charges_summed_per_tick(make_envoy, mock):
    """N requests from 8 callers: Envoy's ratelimit cluster sees N admission calls plus at
    most one charge call per worker per tick, and Redis counts the real tokens exactly."""
    rl, (e,) = start(make_envoy, mock, 10_000_000, {"input": 37, "output": 11})
    try:
        before = ratelimit_calls(e)
        n, callers = 80, 8
        statuses: list[int] = []
        lock = threading.Lock()

        def caller():
            with requests.Session() as s:
                for _ in range(n // callers):
                    code = post(s, e).status_code
                    with lock:
                        statuses.append(code)

        t0 = time.monotonic()
        threads = [threading.Thread(target=caller) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        time.sleep(5 * TICK_S)   # the last responses' charges leave on the next tick
        elapsed = time.monotonic() - t0
        calls = ratelimit_calls(e) - before
        charge_calls = calls - n
        ticks = elapsed / TICK_S + 1
        counted = redis_tokens(rl)
        real = sum(r["usage"]["input"] + r["usage"]["output"]
                   for r in mock.requests("/v1/messages") if r["usage"])
        sent = stat_sum(e, "tollgate_global_charges_total", outcome="sent")
        dropped = stat_sum(e, "tollgate_global_charges_total", outcome="dropped")
        print(f"\n{n} requests in {elapsed:.2f}s: {calls} ratelimit calls ({charge_calls} charge calls, "
              f"bound {WORKERS} workers x {ticks:.0f} ticks); Redis counted {counted} of {real} real tokens; "
              f"descriptor charges sent {sent}, dropped {dropped}")
        assert statuses == [200] * n, statuses
        assert real == n * 48
        assert counted == real, "the summed charges lost or added tokens"
        assert dropped == 0
        # One admission call per request, nothing else on a request's path; the charges of
        # a tick leave together, at most one call per worker per tick.
        assert n <= calls <= n + WORKERS * ticks
        assert 1 <= charge_calls < n / 2, "charges were not summed"
        # Each charge call carries both of team-a's token descriptors (own, and on the model).
        assert sent == 2 * charge_calls
    finally:
        rl.stop()


def test_a_refused_window_is_refused_again_with_no_call_until_it_ends(make_envoy, mock):
    """The service refuses once; every later request on that worker in the same window gets
    the same 429 (type, message, retry-after counting down) without a ratelimit call, and a
    second Envoy counts the same Redis window (it asks once, then remembers too)."""
    rl, (e, e2) = start(make_envoy, mock, 1000, {"input": 150, "output": 50}, n=2)
    try:
        rl.hit([("consumer", "team-a"), ("unit", "tokens")], 990)
        with requests.Session() as s:
            before = ratelimit_calls(e)
            live = post(s, e)
            assert live.status_code == 429, live.text
            assert ratelimit_calls(e) == before + 1
            cached = [post(s, e) for _ in range(10)]
            after = ratelimit_calls(e)
        print(f"\nlive refusal: {live.json()['error']['message']!r} retry-after {live.headers['retry-after']}; "
              f"10 more on the same connection: {[r.status_code for r in cached]}, "
              f"ratelimit calls {after - before} in all")
        assert after == before + 1, "a remembered refusal still called the service"
        for r in cached:
            assert r.status_code == 429
            assert r.json()["error"]["type"] == live.json()["error"]["type"] == "rate_limit_error"
            msg = r.json()["error"]["message"]
            assert msg.startswith("team-a: 1000 tokens per hour (global); retry in "), msg
            assert 0 <= int(live.headers["retry-after"]) - int(r.headers["retry-after"]) <= 2
            assert r.headers.get("x-should-retry") == live.headers.get("x-should-retry")
        assert stat_sum(e, "tollgate_rejections_total", consumer="team-a", reason="global") == 11
        assert len(mock.requests("/v1/messages")) == 0
        # The other Envoy shares the window through Redis: it asks once and is refused too.
        with requests.Session() as s:
            b2 = ratelimit_calls(e2)
            assert [post(s, e2).status_code for _ in range(3)] == [429] * 3
            assert ratelimit_calls(e2) == b2 + 1
    finally:
        rl.stop()
