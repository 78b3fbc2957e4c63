"""Faults around tollgate (issue "Hardening" → Faults; SPEC "Admission, reconciliation and
exactness", "Global limits", "Stages and shared state"): an upstream that resets, hangs or
cannot be reached, a rate-limit service that stalls, a Redis that dies, and a configuration
update under load.
Each test checks what a caller relies on (status, error format, headers, counters) and that
Envoy keeps serving afterwards; the autouse fixture also fails a test on any `panicked`.

The access log line of every request gets the caller's `x-test-id` appended, so the tests
read the filter's per-request facts (`usage=`, `decision=`, `estimate=`) of one request.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import requests
import yaml

import envoyctl
import ratelimitctl
from conftest import (ACCOUNT_KEYS, ADMIN_KEY, KEY_A, KEY_B, add_request_ids, base_config,
                      consumers_config as _consumers_config, stat_sum, tid, with_request_ids)
from conftest import access_log as _access_log

MODEL = "claude-haiku-4-5"
OUTPUT_RESERVE = 100
USAGE = {"input": 40, "output": 20}

LOG_LINE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<code>\d+) consumer=(?P<consumer>\S*) .*?'
    r"estimate=(?P<estimate>\S*) input_tokens=(?P<input_tokens>\S*) "
    r"output_tokens=(?P<output_tokens>\S*) usage=(?P<usage>\S*) decision=(?P<decision>\S*) "
    r".*?id=(?P<id>\S*)\s*$")


# ---- helpers ---------------------------------------------------------------------------------


def consumers_config(consumers: list[dict], **overrides) -> dict:
    return _consumers_config(consumers, OUTPUT_RESERVE, **overrides)


def access_log(e, ids: set[str], timeout: float = 20.0) -> dict[str, dict]:
    return _access_log(e, ids, LOG_LINE, timeout)


def patches(*fns):
    def patch(cfg):
        for fn in fns:
            fn(cfg)
    return patch


def with_route_timeout(seconds: str):
    def patch(cfg):
        for listener in cfg["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for vh in f["typed_config"]["route_config"]["virtual_hosts"]:
                        for route in vh["routes"]:
                            route["route"]["timeout"] = seconds
    return patch


def claude(url: str, key: str, **kw) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20)
    return anthropic.Anthropic(base_url=url, api_key=key, **kw)


def gpt(url: str, key: str, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20)
    return openai.OpenAI(base_url=url + "/v1", api_key=key, **kw)


def ask(client: anthropic.Anthropic, t: str | None = None, model: str = MODEL, max_tokens: int = 50):
    """One Messages call: (status, headers, error)."""
    headers = {"x-test-id": t} if t else {}
    try:
        raw = client.messages.with_raw_response.create(
            model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": "hello there"}],
            extra_headers=headers)
        raw.parse()
        return 200, raw.headers, None
    except anthropic.APIStatusError as err:
        return err.status_code, err.response.headers, err




def degraded(e) -> int:
    return stat_sum(e, "tollgate_global_degraded_total")


def wait_clear_of_hour_boundary(margin_s: float = 20.0) -> None:
    """Exact remaining-counts below assume that one hourly window holds the whole test."""
    left = 3600 - time.time() % 3600
    if left < margin_s:
        time.sleep(left + 0.5)


# ---- 1. upstream reset mid-stream ----------------------------------------------------------


def test_upstream_reset_mid_stream_is_estimated_and_frees_the_lease(make_envoy, mock):
    key = "tg-fault-reset"
    e = make_envoy(consumers_config([{"name": "reset", "keys": [key], "limits": [{"concurrent": 1}]}]),
                   patch=with_request_ids)
    mock.reset()
    mock.script("*", model="claude-reset", events=30, delay_ms=40, reset_after_events=5, usage=USAGE,
                text="Metering tollgate streams word by word")
    mock.script("*", usage=USAGE)
    client, other = claude(e.url(), key), claude(e.url(), key)
    t_reset, t_busy, t_next = tid(), tid(), tid()
    deltas = 0
    busy = None
    with pytest.raises((anthropic.APIError, httpx2.HTTPError)):
        stream = client.messages.create(
            model="claude-reset", max_tokens=64, stream=True,
            messages=[{"role": "user", "content": "stream to me"}], extra_headers={"x-test-id": t_reset})
        for ev in stream:
            if ev.type == "content_block_delta":
                deltas += 1
                if busy is None:
                    # The stream holds the only lease: a second call is refused meanwhile.
                    busy = ask(other, t_busy)
    broke = time.monotonic()
    assert deltas == 5, deltas
    assert busy is not None and busy[0] == 429, busy
    assert "1 concurrent requests" in busy[2].body["error"]["message"], busy[2].body
    # The reset freed the lease: the next call is admitted at once, no retry needed.
    status, headers, err = ask(client, t_next)
    waited = time.monotonic() - broke
    assert status == 200, (status, err and err.body)

    lines = access_log(e, {t_reset, t_busy, t_next})
    rec = [r for r in mock.requests("/v1/messages") if r["headers"].get("x-test-id") == t_reset]
    assert len(rec) == 1 and mock.wait_end(rec[0]["seq"])["end"] == "reset", rec
    reset = lines[t_reset]
    print(f"\n[faults reset] deltas before the reset={deltas} logged: usage={reset['usage']} "
          f"input={reset['input_tokens']} output={reset['output_tokens']} code={reset['code']}; "
          f"next call admitted {waited * 1000:.0f} ms after the break")
    assert reset["decision"] == "admitted"
    assert reset["usage"] == "estimated", reset
    # message_start carried the real input; the output is estimated from the 5 deltas seen.
    assert int(reset["input_tokens"]) == USAGE["input"], reset
    assert 1 <= int(reset["output_tokens"]) < USAGE["output"] * 5, reset
    assert lines[t_busy]["decision"] == "concurrency" and lines[t_busy]["code"] == "429"
    assert lines[t_next]["usage"] == "reported" and lines[t_next]["code"] == "200"


# ---- 2. upstream hang: the route timeout fires -------------------------------------------


def test_upstream_hang_times_out_with_504_and_refunds_the_reservation(make_envoy, mock):
    key = "tg-fault-hang"
    limit = 100_000
    e = make_envoy(consumers_config([{"name": "hang", "keys": [key], "limits": [
        {"concurrent": 1}, {"tokens": limit, "per": "hour"}, {"requests": 100, "per": "hour"}]}]),
        patch=patches(with_request_ids, with_route_timeout("1s")))
    mock.reset()
    mock.script("*", model="claude-hang", first_byte_delay_ms=4000, usage=USAGE)
    mock.script("*", usage=USAGE)
    wait_clear_of_hour_boundary()
    client = claude(e.url(), key)
    t1, t_hang, t2 = tid(), tid(), tid()

    status, h1, err = ask(client, t1)
    assert status == 200, err
    tokens_before = stat_sum(e, "tollgate_tokens_total", consumer="hang")
    started = time.monotonic()
    status, _, err = ask(client, t_hang, model="claude-hang")
    took = time.monotonic() - started
    assert status == 504, (status, err)
    assert 0.9 <= took < 3.0, took
    tokens_after_hang = stat_sum(e, "tollgate_tokens_total", consumer="hang")
    # The next call is admitted at once (the concurrency lease went back).
    status, h2, err = ask(client, t2)
    assert status == 200, (status, err and err.body)

    lines = access_log(e, {t1, t_hang, t2})
    hang = lines[t_hang]
    used1 = USAGE["input"] + USAGE["output"]
    reservation2 = int(lines[t2]["estimate"]) + min(50, OUTPUT_RESERVE)
    print(f"\n[faults hang] 504 after {took:.2f}s; logged: code={hang['code']} usage={hang['usage']} "
          f"input={hang['input_tokens']} output={hang['output_tokens']}; tokens remaining "
          f"{h1['x-ratelimit-remaining-tokens']} -> {h2['x-ratelimit-remaining-tokens']}, requests "
          f"remaining {h1['x-ratelimit-remaining-requests']} -> {h2['x-ratelimit-remaining-requests']}")
    assert hang["code"] == "504" and hang["decision"] == "admitted", hang
    # Nothing came back, so nothing is counted: the whole reservation went back (Envoy's own
    # 504 is no provider answer, so no input is charged as if one had been cut short).
    assert int(h2["x-ratelimit-remaining-tokens"]) == limit - used1 - reservation2, \
        f"the timed-out call kept {limit - used1 - reservation2 - int(h2['x-ratelimit-remaining-tokens'])} tokens"
    assert tokens_after_hang == tokens_before, (tokens_before, tokens_after_hang)
    assert int(hang["input_tokens"] or 0) == 0 and int(hang["output_tokens"] or 0) == 0, hang
    # The timed-out call went upstream, so it may count as a request; never as more than one.
    assert int(h1["x-ratelimit-remaining-requests"]) - int(h2["x-ratelimit-remaining-requests"]) in (1, 2)
    tokens_end = stat_sum(e, "tollgate_tokens_total", consumer="hang")
    deadline = time.monotonic() + 5
    while tokens_end == tokens_after_hang and time.monotonic() < deadline:
        time.sleep(0.1)
        tokens_end = stat_sum(e, "tollgate_tokens_total", consumer="hang")
    assert tokens_end - tokens_after_hang == used1


def test_unreachable_upstream_is_not_taken_for_an_overloaded_account(make_envoy, mock):
    """Envoy's own 503 (nothing listens on the upstream port) is no answer of the provider: it
    must not cool the account (SPEC: the provider's 529 / 503 overloaded does), or one refused
    connection turns the next 10 s into 429s "every account is cooling down"."""
    dead = envoyctl.free_port()

    def unreachable(cfg):
        for c in cfg["static_resources"]["clusters"]:
            if c["name"] == "llm":
                for ep in c["load_assignment"]["endpoints"]:
                    for lb in ep["lb_endpoints"]:
                        lb["endpoint"]["address"]["socket_address"]["port_value"] = dead

    e = make_envoy(patch=patches(with_request_ids, unreachable))
    client = claude(e.url(), KEY_A)
    got = [ask(client) for _ in range(3)]
    print(f"\n[faults unreachable] statuses {[s for s, _, _ in got]}; "
          f"{[(err.body if err else None) for _, _, err in got][1:2]}")
    assert [s for s, _, _ in got] == [503] * 3, [(s, err and err.body) for s, _, err in got]
    r = requests.get(e.url() + "/tollgate/usage", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    states = {a["name"]: a["state"] for a in r.json()["accounts"]}
    assert states["anthropic-1"] == "ok", states


# ---- 3 and 4. the global rate-limit service stalls; its Redis dies ---------------------------

RL_LIMIT = 4000


def rl_config() -> dict:
    return {"domain": "tollgate", "descriptors": [
        {"key": "consumer", "value": name, "descriptors": [
            {"key": "unit", "value": "tokens",
             "rate_limit": {"unit": "minute", "requests_per_unit": RL_LIMIT}}]}
        for name in ("team-a", "team-b")]}


def global_config(failure_mode: str, timeout: str) -> dict:
    cfg = base_config(estimate={"output_reserve": 50})
    cfg["consumers"][0]["limits"] = [{"tokens": 10_000_000, "per": "minute"},
                                     {"requests": 1000, "per": "minute"}]
    cfg["global"] = {"cluster": "ratelimit", "domain": "tollgate", "timeout": timeout,
                     "failure_mode": failure_mode}
    return cfg


needs_rl = pytest.mark.skipif(ratelimitctl.missing() is not None,
                              reason=f"global-limit backend: {ratelimitctl.missing()}")


@pytest.fixture
def rl():
    stack = ratelimitctl.RateLimitStack(config=rl_config())
    stack.start()
    yield stack
    for p in (stack.service, stack.redis):
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
    stack.stop()


def timed(client) -> tuple[int, float, object]:
    started = time.monotonic()
    status, _, err = ask(client)
    return status, time.monotonic() - started, err


@needs_rl
def test_slow_ratelimit_service_allow_admits_after_the_timeout_deny_answers_503(make_envoy, mock, rl):
    mock.reset()
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], usage=USAGE)
    port = ratelimitctl.with_ratelimit_port(rl.grpc_port)
    allow = make_envoy(global_config("allow", "100ms"), shipped="envoy-global.yaml", patch=port)
    deny = make_envoy(global_config("deny", "100ms"), shipped="envoy-global.yaml", patch=port)
    ca, cd = claude(allow.url(), KEY_A), claude(deny.url(), KEY_A)
    # Healthy: both admit (and open their gRPC connection to the service).
    base = [timed(ca) for _ in range(3)] + [timed(cd) for _ in range(2)]
    assert [s for s, _, _ in base] == [200] * 5, base
    baseline = max(t for _, t, _ in base)
    before = degraded(allow)

    os.kill(rl.service.pid, signal.SIGSTOP)
    try:
        slow = [timed(ca) for _ in range(3)]
        denied = [timed(cd) for _ in range(2)]
        r = requests.post(deny.url() + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY_A}"},
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                          timeout=10)
        after = degraded(allow)
    finally:
        os.kill(rl.service.pid, signal.SIGCONT)
    print(f"\n[faults slow rls] timeout 100ms: healthy calls <= {baseline * 1000:.0f} ms; stalled service: "
          f"allow {[f'{s}/{t * 1000:.0f}ms' for s, t, _ in slow]}, "
          f"deny {[f'{s}/{t * 1000:.0f}ms' for s, t, _ in denied]}; degraded +{after - before}")
    # allow: admitted, after the timeout but not much later.
    for status, took, err in slow:
        assert status == 200, (status, err and err.body)
        assert 0.09 <= took <= baseline + 0.1 + 0.3, took
    assert after - before == len(slow)
    # deny: 503 in the provider's format, also without waiting longer than the timeout.
    for status, took, err in denied:
        assert status == 503, (status, err)
        assert isinstance(err, anthropic.InternalServerError)
        assert err.body["type"] == "error" and err.body["error"]["type"] == "api_error", err.body
        assert took <= baseline + 0.1 + 0.3, took
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", r.text
    assert "global rate-limit service failing" in allow.log_text()

    # The service runs again: both Envoys admit without degrading.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and timed(cd)[0] != 200:
        time.sleep(0.2)
    steady = degraded(allow)
    assert [timed(ca)[0] for _ in range(2)] + [timed(cd)[0] for _ in range(2)] == [200] * 4
    assert degraded(allow) == steady


def redis_answers(rl, times: int = 1) -> bool:
    """The service answered `times` checks in a row (its Redis pool replaces each broken
    connection on the error it causes, so one success does not mean all are back)."""
    for _ in range(times):
        try:
            code, _ = rl.should_rate_limit([([("consumer", "team-a"), ("unit", "tokens")], 0)])
        except OSError:
            return False
        if code != 200:
            return False
    return True


@needs_rl
def test_redis_down_allow_admits_degraded_then_enforcement_resumes(make_envoy, mock, rl):
    mock.reset()
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], usage=USAGE)
    e = make_envoy(global_config("allow", "500ms"), shipped="envoy-global.yaml",
                   patch=ratelimitctl.with_ratelimit_port(rl.grpc_port))
    ca, cb = claude(e.url(), KEY_A), claude(e.url(), KEY_B)
    assert timed(ca)[0] == 200
    before = degraded(e)

    rl.redis.kill()
    rl.redis.wait(5)
    code, resp = rl.should_rate_limit([([("consumer", "team-a"), ("unit", "tokens")], 0)])
    down = [timed(ca) for _ in range(3)]
    after = degraded(e)
    print(f"\n[faults redis] with Redis down the service answers {code} {str(resp)[:120]}; "
          f"calls {[f'{s}/{t * 1000:.0f}ms' for s, t, _ in down]}; degraded +{after - before}")
    assert code != 200, (code, resp)
    assert [s for s, _, _ in down] == [200] * 3, [(s, err and err.body) for s, _, err in down]
    assert after - before == 3
    assert "global rate-limit service failing" in e.log_text()

    # Redis back on its port: the service reconnects and Envoy enforces again, no restart.
    rl._start_redis(10)
    deadline = time.monotonic() + 15
    while not redis_answers(rl, times=30) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert redis_answers(rl, times=30), "the rate-limit service did not recover after Redis came back"
    ratelimitctl.wait_for_fresh_window(margin_s=10)
    rl.hit([("consumer", "team-b"), ("unit", "tokens")], RL_LIMIT)
    status, headers, err = ask(cb)
    assert status == 429, (status, err and err.body)
    assert "global" in err.body["error"]["message"], err.body
    assert int(headers["retry-after"]) >= 1
    steady = degraded(e)
    assert timed(ca)[0] == 200
    assert degraded(e) == steady


# ---- 5. a configuration update under load ----------------------------------------------------

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


class Lds:
    """The listener of a rendered config, served to Envoy from a watched file (file-based
    LDS): `update(tollgate)` rewrites it atomically (write beside, rename)."""

    def __init__(self, path: Path):
        self.path = path
        self.listener: dict | None = None
        self.version = 0
        self.port = 0

    def patch(self, cfg: dict) -> None:
        listener = cfg["static_resources"].pop("listeners")[0]
        add_request_ids(listener)
        self.listener = listener
        self.port = listener["address"]["socket_address"]["port_value"]
        self.write()
        cfg["node"] = {"id": "tollgate-faults", "cluster": "tollgate"}
        cfg["dynamic_resources"] = {"lds_config": {
            "path_config_source": {"path": str(self.path)}, "resource_api_version": "V3"}}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wasm_config(self) -> dict:
        for chain in self.listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf.get("name") == envoyctl.WASM_FILTER:
                        return hf["typed_config"]["config"]
        raise KeyError("wasm filter")

    def write(self) -> None:
        self.version += 1
        doc = {"version_info": str(self.version), "resources": [{"@type": LISTENER_TYPE, **self.listener}]}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.rename(tmp, self.path)

    def update(self, tollgate: dict) -> None:
        envoyctl.set_tollgate_config(self.wasm_config(), tollgate)
        self.write()


def prom_value(text: str, metric: str, **labels) -> int:
    total = 0
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_config_update_under_load_keeps_serving_and_keeps_the_counts(make_envoy, mock, tmp_path):
    n, m = 12, 60
    swap_key, steady_key = "tg-fault-swap", "tg-fault-steady"

    def tollgate(requests_per_hour: int) -> dict:
        return consumers_config([
            {"name": "swap", "keys": [swap_key], "limits": [{"requests": requests_per_hour, "per": "hour"}]},
            {"name": "steady", "keys": [steady_key], "limits": [{"requests": 100_000, "per": "hour"}]}])

    lds = Lds(tmp_path / "lds.yaml")
    e = make_envoy(tollgate(n), patch=lds.patch)
    mock.reset()
    mock.script("*", usage=USAGE)
    wait_clear_of_hour_boundary(margin_s=30)

    # Every swap call opens a new connection, so each one meets the listener as it is now.
    # (A kept-alive connection stays on the old filter chain until Envoy drains it.)
    fresh = gpt(lds.url, swap_key, default_headers={"connection": "close"})
    calls: list[tuple] = []   # (status, limit, remaining, message)

    def swap_call() -> tuple:
        try:
            raw = fresh.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}])
            raw.parse()
            h, msg, status = raw.headers, "", 200
        except openai.APIStatusError as err:
            h, msg, status = err.response.headers, err.message, err.status_code
        return (status, int(h.get("x-ratelimit-limit-requests", -1)),
                int(h.get("x-ratelimit-remaining-requests", -1)), msg)

    for _ in range(n - 4):
        calls.append(swap_call())

    stop = threading.Event()
    failures: list[str] = []
    steady_statuses: list[int] = []
    lock = threading.Lock()

    def swap_loop():
        for _ in range(400):
            if stop.is_set():
                return
            try:
                c = swap_call()
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                with lock:
                    failures.append(f"swap: {exc!r}")
                continue
            with lock:
                calls.append(c)
            time.sleep(0.02)

    def steady_loop():
        # A kept-alive Anthropic client of another consumer, as a long-lived app would hold.
        client = claude(lds.url, steady_key)
        for _ in range(400):
            if stop.is_set():
                return
            try:
                status, _, err = ask(client)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    failures.append(f"steady: {exc!r}")
                continue
            with lock:
                steady_statuses.append(status)
            time.sleep(0.02)

    threads = [threading.Thread(target=swap_loop), threading.Thread(target=steady_loop)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(1 for c in calls if c[0] == 429) < 3:
            time.sleep(0.05)
        admitted_before = stat_sum(e, "tollgate_requests_total", consumer="swap", outcome="admitted")
        rejected_before = stat_sum(e, "tollgate_rejections_total", consumer="swap", reason="requests")
        swapped_at = len(calls)
        lds.update(tollgate(m))
        t_update = time.monotonic()
        deadline = t_update + 10
        while time.monotonic() < deadline:
            with lock:
                after = [c for c in calls if c[1] == m]
            if sum(1 for c in after if c[0] == 200) >= 8:
                break
            time.sleep(0.05)
        took = time.monotonic() - t_update
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    statuses = [c[0] for c in calls]
    first_new = next((i for i, c in enumerate(calls) if c[1] == m), None)
    print(f"\n[faults config update] {len(calls)} swap calls ({statuses.count(200)} ok, "
          f"{statuses.count(429)} 429), {len(steady_statuses)} steady calls; the new limit showed "
          f"{(first_new or 0) - swapped_at} calls after the file was replaced; "
          f"done {took:.2f}s after it; failures={failures[:3]}")
    assert not failures, failures
    assert steady_statuses and set(steady_statuses) == {200}, steady_statuses
    assert set(statuses) <= {200, 429}, statuses
    assert first_new is not None, "the new limit never applied"
    old, new = calls[:first_new], calls[first_new:]
    # Before the update: N admitted, then the expected 429s of the old limit.
    assert all(c[1] == n for c in old), old
    assert [c[0] for c in old] == [200] * n + [429] * (len(old) - n), old
    for c in old[n:]:
        assert f"swap: {n} requests per hour" in c[3], c
    # After it: every call sees the new limit, and what was counted before still counts.
    assert all(c[1] == m for c in new), new
    assert [c[0] for c in new] == [200] * len(new), new
    assert [c[2] for c in old[:n]] == [n - j for j in range(1, n + 1)]
    assert [c[2] for c in new] == [m - n - j for j in range(1, len(new) + 1)], new

    # Prometheus counters went on counting across the update (not reset).
    admitted = stat_sum(e, "tollgate_requests_total", consumer="swap", outcome="admitted")
    rejected = stat_sum(e, "tollgate_rejections_total", consumer="swap", reason="requests")
    assert admitted_before == n, admitted_before
    assert admitted == n + len(new), (admitted, n, len(new))
    assert rejected == len(old) - n and rejected >= rejected_before >= 3, (rejected, rejected_before)
    prom = e.prometheus()
    assert prom_value(prom, "tollgate_requests_total", consumer="swap", outcome="admitted") == admitted
    stats = e.stats()
    assert stats.get("listener_manager.lds.update_success", 0) >= 2, \
        {k: v for k, v in stats.items() if k.startswith("listener_manager.")}
    assert e.log_text().count("] configured (") >= 2


@pytest.mark.parametrize("mode,status", [("allow", 200), ("deny", 503)])
def test_a_global_cluster_that_envoy_lacks_degrades_instead_of_aborting_the_vm(make_envoy, mock, mode, status):
    """`global.cluster` naming no cluster of this Envoy (a typo a config check cannot see):
    Envoy refuses the gRPC call, tollgate logs the failure once per worker and applies
    failure_mode, request after request; the VM lives on (every test fails on a `panicked`
    line)."""
    cfg = base_config(consumers=[{"name": "team-a", "keys": [KEY_A],
                                  "limits": [{"requests": 1000, "per": "minute"}]}])
    cfg["global"] = {"cluster": "no-such-cluster", "domain": "tollgate", "failure_mode": mode}
    e = make_envoy(cfg)
    body = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(6):
        r = requests.post(e.url() + "/v1/messages", json=body, timeout=10,
                          headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"})
        assert r.status_code == status, r.text
        if mode == "deny":
            assert r.json()["error"]["type"] == "api_error"
    assert "global rate-limit service failing (dispatch failed" in e.log_text()
    r = requests.get(e.url() + "/tollgate/health", timeout=5)
    assert r.status_code == 200
