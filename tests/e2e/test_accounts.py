"""The upstream account pool: failover per retry attempt, conversation affinity, health
learned from the provider's answers, and keys that never leak."""

from __future__ import annotations

import json
import time

import anthropic
import pytest
import requests

from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, KEY_B, base_config

A = [ACCOUNT_KEYS[f"TOLLGATE_ANTHROPIC_KEY_{i}"] for i in (1, 2, 3)]
NAMES = ["anthropic-1", "anthropic-2", "anthropic-3"]
MODEL = "claude-haiku-4-5"


def pool(strategy="round_robin", affinity=None) -> dict:
    cfg = {"stage": "upstream",
           "accounts": [{"name": n, "provider": "anthropic", "key_env": f"TOLLGATE_ANTHROPIC_KEY_{i + 1}"}
                        for i, n in enumerate(NAMES)],
           "selection": {"strategy": strategy}}
    if affinity:
        cfg["selection"]["affinity"] = affinity
    return cfg


def downstream() -> dict:
    cfg = base_config()
    cfg.pop("accounts")
    return cfg


def failover_envoy(make_envoy, **kw):
    return make_envoy(downstream(), shipped="envoy-failover.yaml", upstream=pool(**kw))


def client(e, key=KEY_A, retries=0):
    return anthropic.Anthropic(base_url=e.url(), api_key=key, max_retries=retries)


def ask(c, text="hello", history=None):
    msgs = (history or []) + [{"role": "user", "content": text}]
    return c.messages.create(model=MODEL, max_tokens=16, system="You are terse.", messages=msgs)


def keys_seen(mock, since=0):
    return [r["key"] for r in mock.requests("/v1/messages", since=since)]


def last_seq(mock) -> int:
    reqs = mock.requests()
    return reqs[-1]["seq"] if reqs else 0


def test_a_429_account_is_skipped_by_retries_until_its_reset(make_envoy, mock):
    e = failover_envoy(make_envoy, strategy="round_robin")
    mock.reset()
    mock.script(A[1], status=429, headers={"retry-after": "4"})
    c = client(e)
    for i in range(12):
        msg = ask(c, f"question {i}")          # the client sees only successes
        assert msg.content[0].text
    seen = keys_seen(mock)
    assert seen.count(A[1]) == 1, seen          # one 429, then no traffic while it cools
    assert {A[0], A[2]} <= set(seen)
    assert "account anthropic-2 is now cooling" in e.log_text()
    time.sleep(4.5)
    mock.reset(only="scripts")
    since = last_seq(mock)
    for i in range(6):
        ask(c, f"later {i}")
    assert A[1] in keys_seen(mock, since), "the account got no traffic after its reset"


def test_a_conversation_stays_on_one_account_and_moves_only_when_it_cools(make_envoy, mock):
    e = failover_envoy(make_envoy, strategy="least_loaded",
                       affinity={"conversation": True, "ttl": "5h", "max_sessions": 1024})
    mock.reset()
    c = client(e)
    history = []
    for turn in range(20):
        msg = ask(c, "tell me about tides" if turn == 0 else f"and then? ({turn})", history)
        history += [{"role": "user", "content": "tell me about tides" if turn == 0 else f"and then? ({turn})"},
                    {"role": "assistant", "content": msg.content[0].text}]
    seen = keys_seen(mock)
    assert len(seen) == 20 and len(set(seen)) == 1, seen
    pinned = seen[0]
    # Other conversations spread over the pool.
    others = set()
    for i in range(9):
        ask(c, f"another conversation {i}")
        others.add(keys_seen(mock)[-1])
    assert len(others) >= 2, others
    # The pinned account cools: the conversation moves (failover) and stays on its new account.
    mock.script(pinned, status=429, headers={"retry-after": "30"})
    since = last_seq(mock)
    for turn in range(5):
        msg = ask(c, f"more ({turn})", history)
        history += [{"role": "user", "content": f"more ({turn})"},
                    {"role": "assistant", "content": msg.content[0].text}]
    after = keys_seen(mock, since)
    served = [k for k in after if k != pinned]
    assert after.count(pinned) == 1, after      # only the attempt that got the 429
    assert len(served) == 5 and len(set(served)) == 1, after
    mock.reset(only="scripts")


def test_a_401_account_is_disabled_and_reported(make_envoy, mock):
    e = failover_envoy(make_envoy, strategy="round_robin")
    mock.reset()
    mock.script(A[0], status=401, error="invalid_key")
    c = client(e)
    # The attempt that meets the invalid key fails (401s are not retried: only its body tells
    # an invalid key from a refusal of this request); the account is then left out.
    with pytest.raises(anthropic.AuthenticationError):
        ask(c, "q0")
    for i in range(1, 6):
        ask(c, f"q{i}")
    seen = keys_seen(mock)
    assert seen.count(A[0]) == 1, seen
    assert "account anthropic-1 is now disabled" in e.log_text()
    stats = e.stats()
    gauges = {k: v for k, v in stats.items() if "tollgate_account_state" in k}
    assert any(k.endswith("account.anthropic-1") and v == 2 for k, v in gauges.items()), gauges
    mock.reset(only="scripts")


def test_downstream_only_mode_passes_the_429_and_cools_the_account(make_envoy, mock):
    cfg = base_config()
    cfg["accounts"] = [{"name": n, "provider": "anthropic", "key_env": f"TOLLGATE_ANTHROPIC_KEY_{i + 1}"}
                       for i, n in enumerate(NAMES)]
    cfg["selection"] = {"strategy": "priority"}
    e = make_envoy(cfg)
    mock.reset()
    mock.script(A[0], status=429, headers={"retry-after": "20"})
    c = client(e)
    with pytest.raises(anthropic.RateLimitError):
        ask(c, "first")                          # no upstream stage: the client sees it
    for i in range(4):
        ask(c, f"next {i}")                      # the account cools: priority moves on
    seen = keys_seen(mock)
    assert seen[0] == A[0] and seen[1:] == [A[1]] * 4, seen
    mock.reset(only="scripts")


def test_every_account_cooling_gets_429_with_the_earliest_recovery(make_envoy, mock):
    cfg = base_config()
    cfg["accounts"] = [{"name": n, "provider": "anthropic", "key_env": f"TOLLGATE_ANTHROPIC_KEY_{i + 1}"}
                       for i, n in enumerate(NAMES[:2])]
    e = make_envoy(cfg)
    mock.reset()
    mock.script(A[0], status=429, headers={"retry-after": "40"})
    mock.script(A[1], status=429, headers={"retry-after": "25"})
    c = client(e)
    for _ in range(2):
        with pytest.raises(anthropic.RateLimitError):
            ask(c)
    before = len(keys_seen(mock))
    with pytest.raises(anthropic.RateLimitError) as err:
        ask(c)
    assert len(keys_seen(mock)) == before, "a cooling pool must not be called"
    retry = int(err.value.response.headers["retry-after"])
    assert 20 <= retry <= 25, retry
    assert err.value.body["error"]["type"] == "rate_limit_error"
    mock.reset(only="scripts")


def test_no_configured_key_appears_in_logs_admin_output_or_responses(make_envoy, mock):
    e = failover_envoy(make_envoy, strategy="round_robin")
    mock.reset()
    mock.script(A[2], status=429, headers={"retry-after": "3"})
    c = client(e)
    seen_headers = []
    for i in range(4):
        raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=8,
                                                  messages=[{"role": "user", "content": f"x{i}"}])
        seen_headers.append(json.dumps(dict(raw.headers)))
    with c.messages.stream(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "s"}]) as s:
        seen_headers.append(json.dumps(dict(s.response.headers)))
        list(s)
    r = requests.get(e.url() + "/tollgate/usage", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    admin = r.text
    haystacks = {"envoy log": e.log_text(), "admin API": admin, "response headers": "\n".join(seen_headers),
                 "prometheus": e.prometheus()}
    for key in list(ACCOUNT_KEYS.values()) + [KEY_A, KEY_B, ADMIN_KEY]:
        for where, text in haystacks.items():
            assert key not in text, f"{key[:10]}… found in the {where}"
    mock.reset(only="scripts")


def test_an_accounts_route_sends_its_requests_to_its_own_cluster(make_envoy, mock):
    cfg = base_config()
    cfg["accounts"] = [{"name": "vllm", "provider": "openai", "key_env": "TOLLGATE_VLLM_KEY",
                        "headers": {"x-tenant": "blue"}, "route": "vllm"},
                       {"name": "anthropic-1", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_1"}]
    e = make_envoy(cfg)
    mock.reset()
    import openai
    c = openai.OpenAI(base_url=e.url() + "/v1", api_key=KEY_A, max_retries=0)
    out = c.chat.completions.create(model="qwen-7b", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content
    seen = mock.requests("/v1/chat/completions")[-1]["headers"]
    assert seen["x-tollgate-cluster"] == "llm-vllm"          # the demo route picked its cluster
    assert seen["x-tenant"] == "blue"
    assert seen["authorization"] == f"Bearer {ACCOUNT_KEYS['TOLLGATE_VLLM_KEY']}"
    assert "x-tollgate-route" not in seen
    # An account without a route goes to the default cluster, whatever the client sends.
    r = requests.post(e.url() + "/v1/messages",
                      headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01", "x-tollgate-route": "vllm"},
                      json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                      timeout=10)
    assert r.status_code == 200, r.text
    seen = mock.requests("/v1/messages")[-1]["headers"]
    assert "x-tollgate-cluster" not in seen
