"""The first real path through tollgate: identity, errors in each API's format, the
credential swap, and configuration that Envoy refuses when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest
import requests

import envoyctl
from conftest import ACCOUNT_KEYS, KEY_A, KEY_B, base_config

ANTHROPIC_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
OPENAI_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]
GEMINI_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_GEMINI_KEY_1"]


def claude(envoy, key=KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url(), api_key=key, max_retries=0)


def gpt(envoy, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=envoy.url() + "/v1", api_key=key, max_retries=0)


def last_request(mock, path: str) -> dict:
    reqs = [r for r in mock.requests() if r["path"].startswith(path)]
    assert reqs, f"the mock saw no request to {path}"
    return reqs[-1]


def test_every_shipped_envoy_config_validates():
    shipped = sorted(p.name for p in (envoyctl.ROOT / "envoy").glob("*.yaml"))
    assert "envoy.yaml" in shipped
    for name in shipped:
        cfg = envoyctl.load(name)
        wasm = list(envoyctl.wasm_filters(cfg))
        if not wasm:
            continue  # e.g. the ratelimit service's own config
        for wc in wasm:
            assert wc.get("allow_on_headers_stop_iteration") is True, name
        r = envoyctl.validate(envoyctl.render(cfg), env=ACCOUNT_KEYS)
        assert r.returncode == 0, f"{name}: {r.stdout[-2000:]}{r.stderr[-2000:]}"


def test_unknown_key_gets_401_in_the_anthropic_format(envoy):
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(envoy, key="not-a-key").messages.create(
            model="claude-haiku-4-5", max_tokens=16,
            messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.body["error"]["type"] == "authentication_error"
    assert "not-a-key" not in json.dumps(e.value.body)


def test_unknown_key_gets_401_in_the_openai_format(envoy):
    with pytest.raises(openai.AuthenticationError) as e:
        gpt(envoy, key="not-a-key").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_unknown_key_gets_401_in_the_gemini_format(envoy):
    r = requests.post(envoy.url() + "/v1beta/models/gemini-2.0-flash:generateContent",
                      headers={"x-goog-api-key": "not-a-key"},
                      json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["status"] == "UNAUTHENTICATED"
    assert r.json()["error"]["code"] == 401


def test_missing_key_gets_401(envoy):
    r = requests.post(envoy.url() + "/v1/messages", json={"model": "m", "messages": []}, timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("method,path,fmt", [
    ("POST", "/v1/unknown", "openai"),
    ("GET", "/", "openai"),
    ("POST", "/v1beta/models/gemini-2.0-flash:explode", "gemini"),
    ("GET", "/v1/messages", "anthropic"),
])
def test_unserved_path_gets_404_in_the_apis_format(envoy, mock, method, path, fmt):
    mock.reset()
    r = requests.request(method, envoy.url() + path, headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 404
    body = r.json()
    if fmt == "anthropic":
        assert body["error"]["type"] == "not_found_error"
    elif fmt == "gemini":
        assert body["error"]["status"] == "NOT_FOUND"
    else:
        assert body["error"]["code"] == "not_found"
    assert not mock.requests(), "a 404 must not reach the upstream"


def test_anthropic_call_reaches_upstream_with_the_account_key(envoy, mock):
    mock.reset()
    msg = claude(envoy).messages.create(
        model="claude-haiku-4-5", max_tokens=32,
        messages=[{"role": "user", "content": "Hello there"}])
    assert msg.content[0].text
    seen = last_request(mock, "/v1/messages")
    assert seen["headers"]["x-api-key"] == ANTHROPIC_ACCOUNT
    assert KEY_A not in json.dumps(seen["headers"])
    assert "authorization" not in seen["headers"]


def test_openai_call_reaches_upstream_with_the_account_key(envoy, mock):
    mock.reset()
    out = gpt(envoy, key=KEY_B).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}])
    assert out.choices[0].message.content
    seen = last_request(mock, "/v1/chat/completions")
    assert seen["headers"]["authorization"] == f"Bearer {OPENAI_ACCOUNT}"
    assert KEY_B not in json.dumps(seen["headers"])
    assert "x-api-key" not in seen["headers"]


def test_gemini_key_in_the_query_never_reaches_upstream(envoy, mock):
    mock.reset()
    r = requests.post(envoy.url() + f"/v1beta/models/gemini-2.0-flash:generateContent?key={KEY_A}",
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 200, r.text
    seen = last_request(mock, "/v1beta/models/gemini-2.0-flash:generateContent")
    assert KEY_A not in seen["path"]
    assert seen["headers"]["x-goog-api-key"] == GEMINI_ACCOUNT


def test_model_outside_the_allow_list_gets_403(envoy, mock):
    mock.reset()
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        claude(envoy, key=KEY_B).messages.create(
            model="claude-opus-4-1", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403
    assert e.value.body["error"]["type"] == "permission_error"
    assert "team-b" in e.value.body["error"]["message"]
    assert not mock.requests()


def test_malformed_json_gets_400(envoy, mock):
    mock.reset()
    r = requests.post(envoy.url() + "/v1/messages", data=b'{"model": "claude-haiku-4-5", "messages": [',
                      headers={"x-api-key": KEY_A, "content-type": "application/json",
                               "anthropic-version": "2023-06-01"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(envoy.url() + "/v1/chat/completions", data=b"not json",
                      headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"
    assert not mock.requests()


def test_identity_only_endpoints_pass_through(envoy, mock):
    mock.reset()
    r = requests.get(envoy.url() + "/v1/models", headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert last_request(mock, "/v1/models")["headers"]["authorization"] == f"Bearer {OPENAI_ACCOUNT}"
    count = claude(envoy).messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0
    assert last_request(mock, "/v1/messages/count_tokens")["headers"]["x-api-key"] == ANTHROPIC_ACCOUNT


def test_body_over_max_body_bytes_gets_413(make_envoy, mock):
    e = make_envoy(base_config(max_body_bytes=4096))
    mock.reset()
    big = "x" * 8000
    r = requests.post(e.url() + "/v1/messages", headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
                      json={"model": "claude-haiku-4-5", "max_tokens": 8,
                            "messages": [{"role": "user", "content": big}]}, timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"
    assert not mock.requests()


def test_health_needs_no_key_and_admin_needs_one(envoy):
    r = requests.get(envoy.url() + "/tollgate/health", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = requests.get(envoy.url() + "/tollgate/usage", timeout=5)
    assert r.status_code == 401
    assert "www-authenticate" in {k.lower() for k in r.headers}


@pytest.mark.parametrize("bad,path,reason", [
    ({"consumers": [{"name": "a", "keys": ["k"], "limits": [{"tokens": 5, "per": "fortnight"}]}]},
     "consumers[0].limits[0].per", "fortnight"),
    ({"nonsense": 1}, "nonsense", "unknown"),
    ({"accounts": [{"name": "x", "provider": "anthropic", "key_env": "TOLLGATE_NOT_SET"}]},
     "accounts[0].key_env", "TOLLGATE_NOT_SET"),
])
def test_envoy_refuses_a_bad_configuration_naming_the_field(make_envoy, bad, path, reason):
    e = make_envoy(bad, expect_fail=True)
    code = e.wait_exit(30)
    log = e.log_text()
    assert path in log, log[-3000:]
    assert reason in log
    # Either Envoy refused to start, or it runs without accepting the broken filter.
    if code is None:
        r = requests.get(e.admin + "/listeners", timeout=5)
        assert "tollgate" not in r.text


# The Istio example (envoy/istio/) authenticates consumers with a JWT: it is rendered and
# tested in test_trust_identity.py.
