"""Trust boundaries (SPEC "Paths are normal or refused", "Metering cannot be switched off by
the client"): hostile paths and bodies that an upstream would read differently from tollgate
get 400 in the called API's format and never reach the upstream. Envoy's own path
normalisation is switched off here, so the filter is the last line."""

from __future__ import annotations

import http.client
import json

import pytest

from conftest import KEY_A, KEY_B, base_config

AV = {"anthropic-version": "2023-06-01"}


def no_normalisation(cfg: dict) -> None:
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f["typed_config"]
                hcm["normalize_path"] = False
                hcm["merge_slashes"] = False
                hcm["path_with_escaped_slashes_action"] = "KEEP_UNCHANGED"


@pytest.fixture(scope="module")
def raw_envoy(mock, workdir):
    from conftest import EnvoyFactory
    f = EnvoyFactory(mock, workdir)
    yield f(base_config(passthrough_paths=["/v1/files"]), patch=no_normalisation)
    f.close()


def send(envoy, method: str, path: str, headers: dict, data: bytes = b"") -> tuple[int, dict]:
    """One request with the path exactly as given (no client-side normalisation)."""
    c = http.client.HTTPConnection("127.0.0.1", envoy.listener_port(), timeout=15)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {**headers, "content-length": str(len(data))}.items():
            c.putheader(k, v)
        c.endheaders(data)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


ANTHROPIC = {"x-api-key": KEY_A, **AV, "content-type": "application/json"}
OPENAI = {"authorization": f"Bearer {KEY_A}", "content-type": "application/json"}
GEMINI = {"x-goog-api-key": KEY_A, "content-type": "application/json"}
MESSAGE = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
GEMINI_BODY = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()


def error_message(api: str, status: int, body: dict) -> str:
    if api == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    elif api == "openai":
        assert body["error"]["code"] == "invalid_request", body
    else:
        assert body["error"]["status"] == "INVALID_ARGUMENT" and body["error"]["code"] == status, body
    return body["error"]["message"]


@pytest.mark.parametrize("method,path,headers,data,api", [
    ("GET", "/v1/models/../messages/batches", ANTHROPIC, b"", "anthropic"),
    ("GET", "/v1/models/%2e%2e/messages/batches", ANTHROPIC, b"", "anthropic"),
    ("GET", "/v1beta/models/../files", GEMINI, b"", "gemini"),
    ("GET", "/v1/files/..%2F..%2Fv1%2Fmodels", OPENAI, b"", "openai"),
    ("POST", "/v1/messages;key=SECRET", ANTHROPIC, MESSAGE, "anthropic"),
    ("POST", "/v1/messages%3Bkey=SECRET", ANTHROPIC, MESSAGE, "anthropic"),
    ("POST", "/v1//messages", ANTHROPIC, MESSAGE, "anthropic"),
    ("POST", "/v1beta/models/gemini-2.0-flash%2F..%2Fgemini-2.5-pro:generateContent", GEMINI,
     GEMINI_BODY, "gemini"),
    ("POST", "/v1beta/models/a/b:generateContent", GEMINI, GEMINI_BODY, "gemini"),
])
def test_a_path_that_is_not_normal_gets_400_and_never_goes_upstream(
        raw_envoy, mock, method, path, headers, data, api):
    mock.reset()
    status, body = send(raw_envoy, method, path, headers, data)
    assert status == 400, (status, body)
    assert "SECRET" not in error_message(api, 400, body)
    assert not mock.requests(), "a refused path must not reach the upstream"


def test_allow_lists_and_pricing_see_the_decoded_gemini_model(raw_envoy, mock):
    # team-b may use gemini-2.0-flash only: an encoded name is the same model, whichever way.
    mock.reset()
    b = {**GEMINI, "x-goog-api-key": KEY_B}
    status, body = send(raw_envoy, "POST", "/v1beta/models/gemini-2.5-pr%6F:generateContent",
                        b, GEMINI_BODY)
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED", body
    assert not mock.requests()
    status, body = send(raw_envoy, "POST", "/v1beta/models/gemini-2.0-fl%61sh:generateContent",
                        b, GEMINI_BODY)
    assert status == 200, body
    assert len(mock.requests("/v1beta/models/")) == 1


@pytest.mark.parametrize("path,headers,data,api,key", [
    ("/v1/chat/completions", OPENAI,
     b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}],'
     b'"stream_options":{"include_usage":true,"include_usage":false}}', "openai", "include_usage"),
    ("/v1/chat/completions", OPENAI,
     b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"mod\\u0065l":"o1"}',
     "openai", "model"),
    ("/v1/messages", ANTHROPIC,
     b'{"model":"claude-haiku-4-5","max_tokens":8,"max_tokens":64000,'
     b'"messages":[{"role":"user","content":"hi"}]}', "anthropic", "max_tokens"),
    ("/v1beta/models/gemini-2.0-flash:generateContent", GEMINI,
     b'{"contents":[{"parts":[{"text":"hi"}]}],'
     b'"generationConfig":{"maxOutputTokens":8,"max_output_tokens":65536}}', "gemini",
     "max_output_tokens"),
])
def test_a_policy_key_repeated_in_one_object_gets_400(raw_envoy, mock, path, headers, data, api, key):
    mock.reset()
    status, body = send(raw_envoy, "POST", path, headers, data)
    assert status == 400, (status, body)
    assert error_message(api, 400, body) == f'duplicate key "{key}"'
    assert not mock.requests()
