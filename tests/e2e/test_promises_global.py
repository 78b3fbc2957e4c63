"""Issue #18, SPEC "Global limits": every promise of the global-limit section exercised through
real Envoy against envoyproxy/ratelimit + Redis (real processes, one stack per test with the
limits the test needs). Each test reads the service's own counters straight out of Redis, so
the figures are what the shared service really counted, not what tollgate thinks it sent.

Windows are per hour (epoch-aligned in the reference service): a test never waits for a
fresh minute, and skips ahead only in the last minute of an hour."""

from __future__ import annotations

import subprocess
import time

import anthropic
import openai
import pytest

import ratelimitctl
from conftest import ACCOUNT_KEYS, KEY_A, KEY_B, base_config, stat_sum

pytestmark = pytest.mark.skipif(ratelimitctl.missing() is not None,
                                reason=f"global-limit backend: {ratelimitctl.missing()}")

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-5"
ANTHROPIC_KEY = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
OPENAI_KEY = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]


# ---- the stack ---------------------------------------------------------------------------------


def limit(value: str, per_hour: int) -> dict:
    return {"key": "unit", "value": value, "rate_limit": {"unit": "hour", "requests_per_unit": per_hour}}


def fresh_hour(margin_s: float = 60.0) -> None:
    """The service's windows are epoch-aligned: start a test early enough in the hour."""
    into = time.time() % 3600
    if into > 3600 - margin_s:
        time.sleep(3600 - into + 0.05)


@pytest.fixture
def stack():
    """Starts envoyproxy/ratelimit + Redis with the descriptors given; stops them after."""
    started: list[ratelimitctl.RateLimitStack] = []

    def start(descriptors: list[dict]) -> ratelimitctl.RateLimitStack:
        rl = ratelimitctl.RateLimitStack(config={"domain": "tollgate", "descriptors": descriptors})
        started.append(rl)
        rl.start()
        fresh_hour()
        return rl

    yield start
    for rl in started:
        rl.stop()


def setup(make_envoy, mock, stack, descriptors: list[dict], cfg: dict, usage: dict[str, dict]):
    """The service with `descriptors`, one Envoy with tollgate `cfg` using it (deny when it
    fails, so a test never passes on local limits alone), and the mock's usage per account
    key. Returns (stack, envoy)."""
    rl = stack(descriptors)
    cfg["global"] = {"cluster": "ratelimit", "domain": "tollgate", "timeout": "1s", "failure_mode": "deny"}
    cfg.setdefault("estimate", {"output_reserve": 50})
    e = make_envoy(cfg, shipped="envoy-global.yaml", patch=ratelimitctl.with_ratelimit_port(rl.grpc_port))
    mock.reset()
    for key, u in usage.items():
        mock.script(key, usage=u)
    return rl, e


def counters(rl) -> dict[str, int]:
    """Every counter the service holds in Redis, by descriptor (`dkey`): envoyproxy/ratelimit
    keys are `<domain>_<key>_<value>_..._<window start>`."""
    def cli(*args: str) -> list[str]:
        out = subprocess.run(["redis-cli", "-p", str(rl.redis_port), "--raw", *args],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [ln for ln in out.splitlines() if ln]

    found: dict[str, int] = {}
    for key in cli("KEYS", "tollgate_*"):
        descriptor = key.rsplit("_", 1)[0]
        found[descriptor] = found.get(descriptor, 0) + int(cli("GET", key)[0])
    return found


def dkey(*entries: tuple[str, str]) -> str:
    """A descriptor as `counters` names it."""
    return "_".join(["tollgate"] + [f"{k}_{v}" for k, v in entries])


def wait_charges(e, n: int, timeout: float = 15.0) -> int:
    """Waits until `n` descriptor charges after responses were answered by the service (one
    count is one descriptor's usage of one tick)."""
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        sent = stat_sum(e, "tollgate_global_charges_total", outcome="sent")
        if sent >= n:
            break
        time.sleep(0.1)
    return sent


def in_turn(e, calls) -> list:
    """Makes the calls one after another; after each admitted one, waits until its charge
    reached the service, so the next admission sees it."""
    results, charged = [], stat_sum(e, "tollgate_global_charges_total", outcome="sent")
    for call in calls:
        results.append(call())
        if results[-1][0] == 200:
            # A response's descriptors all leave in one call, so the count moves once.
            now = wait_charges(e, charged + 1)
            assert now > charged, "the charge never reached the service"
            charged = now
    assert stat_sum(e, "tollgate_global_charges_total", outcome="dropped") == 0
    return results


def claude(e, key=KEY_A, model=HAIKU):
    """One Messages call with the Anthropic SDK: (status, error body or None, headers)."""
    c = anthropic.Anthropic(base_url=e.url(), api_key=key, max_retries=0, timeout=30)
    try:
        raw = c.messages.with_raw_response.create(model=model, max_tokens=50,
                                                  messages=[{"role": "user", "content": "hello there"}])
        raw.parse()
        return 200, None, raw.headers
    except anthropic.APIStatusError as err:
        return err.status_code, err.body, err.response.headers


def gpt(e, key=KEY_A, model="gpt-4o-mini"):
    """One Chat Completions call with the OpenAI SDK: (status, error JSON or None, headers)."""
    c = openai.OpenAI(base_url=e.url() + "/v1", api_key=key, max_retries=0, timeout=30)
    try:
        raw = c.chat.completions.with_raw_response.create(model=model, max_tokens=50,
                                                          messages=[{"role": "user", "content": "hello there"}])
        raw.parse()
        return 200, None, raw.headers
    except openai.APIStatusError as err:
        return err.status_code, err.response.json(), err.response.headers


def global_refusal(e, consumer: str) -> int:
    return stat_sum(e, "tollgate_rejections_total", consumer=consumer, reason="global")


# ---- the promises ------------------------------------------------------------------------------


def test_a_global_cost_limit_counts_real_micro_dollars_and_refuses_once_reached(make_envoy, mock, stack):
    """Unit `cost_micros`: the service is charged the priced real usage to the micro-dollar,
    and admission refuses (429, reason global) once the charged cost leaves no room."""
    cfg = base_config(pricing={HAIKU: {"input": 1.0, "output": 5.0}})
    cfg["consumers"][0]["limits"] = [{"cost_usd": 1000.0, "per": "day"}]
    rl, e = setup(make_envoy, mock, stack,
                  [{"key": "consumer", "value": "team-a", "descriptors": [limit("cost_micros", 10_000)]}],
                  cfg, {ANTHROPIC_KEY: {"input": 1234, "output": 321}})
    per_request = 1234 * 1 + 321 * 5    # $1 and $5 per million tokens: 2839 micro-dollars
    results = in_turn(e, [lambda: claude(e)] * 5)
    statuses = [s for s, _, _ in results]
    _, err, headers = results[-1]
    charged = counters(rl).get(dkey(("consumer", "team-a"), ("unit", "cost_micros")))
    print(f"\nstatuses {statuses}; service counted {charged} micro-dollars of limit 10000 "
          f"({per_request} per request); remaining {rl.remaining([('consumer', 'team-a'), ('unit', 'cost_micros')])}")
    # 0, 2839, 5678, 8517 leave room for the reservation (~260); 11356 leaves none.
    assert statuses == [200, 200, 200, 200, 429], statuses
    assert charged == 4 * per_request == 11_356
    assert stat_sum(e, "tollgate_cost_usd_micros_total", consumer="team-a") == 4 * per_request
    assert err["error"]["type"] == "rate_limit_error"
    assert "team-a: 10000 cost_micros per hour (global)" in err["error"]["message"], err
    assert 1 <= int(headers["retry-after"]) <= 3600
    assert global_refusal(e, "team-a") == 1
    assert len(mock.requests("/v1/messages")) == 4, "the refused request reached the upstream"


def test_a_global_request_limit_counts_each_request_once_at_admission(make_envoy, mock, stack):
    """Unit `requests`: counted 1 by the admission call itself (never again after the
    response), so the N+1th request in the window gets 429 global."""
    cfg = base_config()
    cfg["consumers"][0]["limits"] = [{"requests": 1000, "per": "minute"}]
    rl, e = setup(make_envoy, mock, stack,
                  [{"key": "consumer", "value": "team-a", "descriptors": [limit("requests", 3)]}],
                  cfg, {OPENAI_KEY: {"input": 20, "output": 10}})
    results = [gpt(e) for _ in range(4)]
    statuses = [s for s, _, _ in results]
    time.sleep(1.0)   # any charge after the responses would have gone out by now (tick: 100 ms)
    counted = counters(rl).get(dkey(("consumer", "team-a"), ("unit", "requests")))
    sent = stat_sum(e, "tollgate_global_charges_total", outcome="sent")
    print(f"\nstatuses {statuses}; service counted {counted} requests (limit 3); charges after responses {sent}")
    assert statuses == [200, 200, 200, 429], statuses
    # Four admission calls, each +1 (the refused one too); nothing charged after a response.
    assert counted == 4
    assert sent == 0
    _, body, headers = results[3]
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "team-a: 3 requests per hour (global)" in body["error"]["message"], body
    assert int(headers["retry-after"]) >= 1
    # The previous answers carried the service's standing: 3 requests, counted before each.
    assert [h.get("x-ratelimit-remaining-requests") for _, _, h in results[:3]] == ["2", "1", "0"]
    assert global_refusal(e, "team-a") == 1
    assert len(mock.requests("/v1/chat/completions")) == 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the SDK's notice about the model name
def test_a_model_descriptor_limit_binds_that_model_only(make_envoy, mock, stack):
    """`[consumer, model, unit]`: a global token limit on one model refuses that model once
    its real tokens fill it, while the same consumer's other model is still admitted."""
    rl, e = setup(make_envoy, mock, stack,
                  [{"key": "consumer", "value": "team-a", "descriptors": [
                      {"key": "model", "value": HAIKU, "descriptors": [limit("tokens", 400)]}]}],
                  base_config(), {ANTHROPIC_KEY: {"input": 150, "output": 50}})
    haiku = in_turn(e, [lambda: claude(e, model=HAIKU)] * 3)
    sonnet = [s for s, _, _ in in_turn(e, [lambda: claude(e, model=SONNET)] * 2)]
    held = counters(rl)
    haiku_tokens = held.get(dkey(("consumer", "team-a"), ("model", HAIKU), ("unit", "tokens")))
    print(f"\n{HAIKU}: {[s for s, _, _ in haiku]}, counted {haiku_tokens} of 400; {SONNET}: {sonnet}; "
          f"counters {held}")
    assert [s for s, _, _ in haiku] == [200, 200, 429]
    assert haiku_tokens == 2 * 200
    assert sonnet == [200, 200]
    # Only the limited descriptor has a counter: the other model's and the consumer's are free.
    assert set(held) == {dkey(("consumer", "team-a"), ("model", HAIKU), ("unit", "tokens"))}, held
    assert rl.remaining([("consumer", "team-a"), ("model", SONNET), ("unit", "tokens")]) is None
    assert "400 tokens per hour (global)" in haiku[2][1]["error"]["message"]
    assert global_refusal(e, "team-a") == 1


def test_an_account_descriptor_limit_binds_every_consumer_of_that_account(make_envoy, mock, stack):
    """`[account, unit]`: an account's global token limit counts the real tokens of every
    consumer it serves; once full, another consumer is refused on that account (429 global)
    while a request served by another account is still admitted."""
    cfg = base_config()
    cfg["accounts"][0]["limits"] = [{"tokens": 10_000_000, "per": "minute"}]
    usage = {"input": 150, "output": 50}
    rl, e = setup(make_envoy, mock, stack,
                  [{"key": "account", "value": "anthropic-1", "descriptors": [limit("tokens", 400)]}],
                  cfg, {ANTHROPIC_KEY: usage, OPENAI_KEY: usage})
    first = [s for s, _, _ in in_turn(e, [lambda: claude(e, key=KEY_A)] * 2)]
    status, err, headers = claude(e, key=KEY_B)
    other_account = gpt(e, key=KEY_B)[0]
    held = counters(rl)
    account_tokens = held.get(dkey(("account", "anthropic-1"), ("unit", "tokens")))
    print(f"\nteam-a on anthropic-1: {first}; account counted {account_tokens} of 400; team-b: {status}, "
          f"team-b on openai-1: {other_account}")
    assert first == [200, 200]
    assert account_tokens == 2 * 200
    assert status == 429, "the account's global limit did not bind"
    assert err["error"]["type"] == "rate_limit_error"
    assert "anthropic-1" in err["error"]["message"] and "400 tokens per hour (global)" in err["error"]["message"], err
    assert int(headers["retry-after"]) >= 1
    assert other_account == 200
    assert global_refusal(e, "team-b") == 1
    assert len(mock.requests("/v1/messages")) == 2
