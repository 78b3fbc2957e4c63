"""Hardening: a catalogue of bad inputs against real Envoy (SPEC "HTTP behaviour", STYLE "No
panics in the data path"). Each case asserts the status and the error body in the called
API's format, that Envoy still serves a normal SDK call afterwards, and (autouse fixture) that
no Envoy logged `panicked`. Large bodies also check that Envoy's RSS does not balloon."""

from __future__ import annotations

import base64
import http.client
import json
import os
import struct
import time
import zlib

import anthropic
import openai
import pytest
import requests

from conftest import ACCOUNT_KEYS, KEY_A, KEY_B, base_config, rss_kb

ANTHROPIC_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
TOKENS = "wasmcustom.tollgate_tokens_total."
AV = {"anthropic-version": "2023-06-01"}


# ---------------------------------------------------------------- helpers


def claude(envoy, key=KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url(), api_key=key, max_retries=0)


def gpt(envoy, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=envoy.url() + "/v1", api_key=key, max_retries=0)


def assert_serving(envoy) -> None:
    """A normal SDK call still succeeds."""
    msg = claude(envoy).messages.create(model="claude-haiku-4-5", max_tokens=8,
                                        messages=[{"role": "user", "content": "still there?"}])
    assert msg.content[0].text


def body(**over) -> dict:
    b = {"model": "claude-haiku-4-5", "max_tokens": 16,
         "messages": [{"role": "user", "content": "hi"}]}
    b.update(over)
    return b


def anthropic_error(r, status: int, etype: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    j = r.json()
    assert j["type"] == "error" and j["error"]["type"] == etype, j
    assert j["error"]["message"]
    return j


def post_raw(envoy, data: bytes, path="/v1/messages", headers=None, **kw) -> requests.Response:
    h = {"x-api-key": KEY_A, "content-type": "application/json", **AV, **(headers or {})}
    return requests.post(envoy.url() + path, data=data, headers=h, timeout=kw.get("timeout", 30))


def raw_http(envoy, headers: list[tuple[str, bytes | str]], data: bytes = b"",
             path: str = "/v1/messages") -> tuple[int, dict, bytes]:
    """One request with headers exactly as given (bytes values, duplicates kept)."""
    c = http.client.HTTPConnection("127.0.0.1", envoy.listener_port(), timeout=15)
    try:
        c.putrequest("POST", path, skip_accept_encoding=True)
        for k, v in headers:
            c.putheader(k, v)
        c.putheader("content-length", str(len(data)))
        c.endheaders(data)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def token_total(envoy) -> int:
    return sum(v for k, v in envoy.stats().items() if k.startswith(TOKENS))


def wait_tokens(envoy, at_least: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        t = token_total(envoy)
        if t >= at_least or time.monotonic() > deadline:
            return t
        time.sleep(0.05)




def png(size: int) -> bytes:
    """A real PNG header (IHDR 64x64) followed by `size` bytes of noise in an IDAT chunk."""
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", os.urandom(size))


# ---------------------------------------------------------------- malformed bodies

TRUNCATED = b'{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"'
DEEP = (b'{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}],'
        b'"metadata":' + b"[" * 1000 + b"]" * 1000 + b"}")


@pytest.mark.parametrize("data,needle", [
    pytest.param(b"hello, this is not JSON", None, id="non-json"),
    pytest.param(TRUNCATED, None, id="truncated-json"),
    pytest.param(b"[1, 2, 3]", "object", id="json-array"),
    pytest.param(b"null", "object", id="json-null"),
    pytest.param(json.dumps(body()).encode() + b" {}", None, id="trailing-garbage"),
    pytest.param(json.dumps(body(model=5)).encode(), "model", id="model-number"),
    pytest.param(json.dumps(body(max_tokens=-1)).encode(), "max_tokens", id="max_tokens-negative"),
    pytest.param(json.dumps(body(max_tokens="16")).encode(), "max_tokens", id="max_tokens-string"),
    pytest.param(json.dumps(body(stream="yes")).encode(), "stream", id="stream-yes"),
    pytest.param(json.dumps({"max_tokens": 16, "messages": []}).encode(), "model", id="model-missing"),
    pytest.param(DEEP, None, id="nesting-1000"),
    pytest.param(b'{"model":"claude-haiku-4-5","max_tokens":16,'
                 b'"messages":[{"role":"user","content":"caf\xc3\x28 \xff\xfe"}]}', "UTF-8",
                 id="invalid-utf8-in-string"),
    pytest.param(b'{"model":"claude-haiku-4-5","max_tokens":16,'
                 b'"messages":[{"role":"user","content":"\\ud83d"}]}', None, id="lone-surrogate"),
    pytest.param(b"", "required", id="empty-body"),
])
def test_malformed_anthropic_body_gets_400(envoy, mock, data, needle):
    mock.reset()
    r = post_raw(envoy, data)
    j = anthropic_error(r, 400, "invalid_request_error")
    if needle:
        assert needle in j["error"]["message"], j
    assert not mock.requests(), "a refused body must not reach the upstream"
    assert_serving(envoy)


def test_malformed_bodies_get_400_in_the_openai_and_gemini_formats(envoy, mock):
    mock.reset()
    with pytest.raises(openai.BadRequestError) as e:
        gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           extra_body={"stream": "yes"})
    assert e.value.status_code == 400 and e.value.code == "invalid_request", e.value.body
    r = requests.post(envoy.url() + "/v1/chat/completions", data=b'{"model": 5, "messages": []}',
                      headers={"authorization": f"Bearer {KEY_A}", "content-type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    r = requests.post(envoy.url() + "/v1beta/models/gemini-2.0-flash:generateContent",
                      headers={"x-goog-api-key": KEY_A, "content-type": "application/json"},
                      data=b'{"contents": [{"parts": [{"text": "hi"', timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"code": 400, "message": r.json()["error"]["message"],
                                 "status": "INVALID_ARGUMENT"}
    assert not mock.requests()
    assert_serving(envoy)


def test_fields_tollgate_does_not_read_pass_through_to_the_upstream(envoy, mock):
    """`messages: "x"` is the upstream's to refuse: tollgate checks only the fields it reads
    (model, max tokens, stream) and forwards the rest; the upstream's 400 reaches the client."""
    mock.reset()
    mock.script("*", model="bad-messages-model", status=400, times=1)
    r = post_raw(envoy, json.dumps(body(model="bad-messages-model", messages="x")).encode())
    anthropic_error(r, 400, "invalid_request_error")
    seen = [q for q in mock.requests() if q["path"] == "/v1/messages"]
    assert len(seen) == 1 and seen[0]["headers"]["x-api-key"] == ANTHROPIC_ACCOUNT
    assert_serving(envoy)


def test_empty_messages_pass_through_and_are_metered(envoy, mock):
    """Decision: an empty `messages` array is valid JSON for the endpoint, so tollgate passes it
    on and the upstream answers (the real API says 400; the mock answers 200). Whatever the
    upstream answers is metered."""
    mock.reset()
    before = token_total(envoy)
    r = post_raw(envoy, json.dumps(body(messages=[])).encode())
    assert r.status_code == 200, r.text
    rec = mock.wait_end(mock.last("/v1/messages")["seq"])
    u = rec["usage"]
    want = u["input"] + u["output"] + u.get("cache_read", 0) + u.get("cache_write", 0)
    assert want > 0
    assert wait_tokens(envoy, before + want) - before == want
    assert_serving(envoy)


# ---------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def roomy(mock, workdir):
    """An Envoy whose limits let 30 MB bodies through several times a minute."""
    from conftest import EnvoyFactory
    f = EnvoyFactory(mock, workdir)
    yield f(base_config(limits=[{"tokens": 10**12, "per": "minute"}]), name="envoy-badinput-roomy")
    f.close()


def test_30mb_body_with_base64_images_is_served_without_rss_growth(roomy, mock):
    """~30 MB of base64 PNGs is read in windows and served; after several such requests
    Envoy's RSS stays flat (the body is never copied whole into the VM)."""
    images = [base64.b64encode(png(3_700_000)).decode() for _ in range(6)]
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}}
               for d in images] + [{"type": "text", "text": "What is in these images?"}]
    size = len(json.dumps(body(messages=[{"role": "user", "content": content}])))
    assert 29_000_000 < size < 32 * 1024 * 1024, size
    mock.script("*", model="claude-haiku-4-5", usage={"input": 9000, "output": 5}, times=8)
    client = claude(roomy)
    rss = [("start", rss_kb(roomy))]
    assert_serving(roomy)
    t0 = time.monotonic()
    for i in range(6):
        msg = client.with_options(timeout=60).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": content}])
        assert msg.content[0].text and msg.usage.input_tokens == 9000
        rss.append((f"after {i + 1}", rss_kb(roomy)))
    elapsed = time.monotonic() - t0
    mock.reset()
    assert_serving(roomy)
    figures = ", ".join(f"{k}: {v / 1024:.0f} MiB" for k, v in rss)
    print(f"\n30 MB bodies: {size / 1e6:.1f} MB each, 6 in {elapsed:.1f}s; Envoy RSS {figures}")
    # The first big body grows Envoy's buffers (and each worker's VM once); later ones must not.
    first, last = rss[1][1], rss[-1][1]
    assert last - first < 32 * 1024, f"RSS grew {(last - first) / 1024:.0f} MiB over 5 more bodies: {figures}"
    # Two workers each copying a whole body into its VM would add 60 MiB here.
    assert last - rss[0][1] < 64 * 1024, figures


def test_body_over_max_body_bytes_gets_413_with_and_without_content_length(make_envoy, mock):
    e = make_envoy(base_config(max_body_bytes=65536), name="envoy-badinput-small")
    mock.reset()
    big = json.dumps(body(messages=[{"role": "user", "content": "x" * 200_000}])).encode()
    # Declared too large: refused from the headers.
    r = post_raw(e, big)
    anthropic_error(r, 413, "request_too_large")
    # Chunked (no content-length): refused once the buffered body passes the limit.
    r = requests.post(e.url() + "/v1/messages", data=(big[i:i + 16384] for i in range(0, len(big), 16384)),
                      headers={"x-api-key": KEY_A, "content-type": "application/json", **AV}, timeout=30)
    anthropic_error(r, 413, "request_too_large")
    r = requests.post(e.url() + "/v1/chat/completions", data=(big[i:i + 16384] for i in range(0, len(big), 16384)),
                      headers={"authorization": f"Bearer {KEY_A}", "content-type": "application/json"},
                      timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert not mock.requests()
    assert_serving(e)


# ---------------------------------------------------------------- headers


def test_invalid_utf8_api_key_is_401_not_a_crash(envoy, mock):
    mock.reset()
    st, _, data = raw_http(envoy, [("x-api-key", b"tg-\xff\xfe\xc3("), ("anthropic-version", "2023-06-01"),
                                   ("content-type", "application/json")], json.dumps(body()).encode())
    assert st == 401, data
    assert json.loads(data)["error"]["type"] == "authentication_error"
    # A non-UTF-8 x-api-key is treated as absent: it does not hide a valid bearer key either way.
    st, _, data = raw_http(envoy, [("authorization", b"Bearer \xff\xfe"), ("content-type", "application/json")],
                           json.dumps(body(model="gpt-4o-mini")).encode(), path="/v1/chat/completions")
    assert st == 401 and json.loads(data)["error"]["code"] == "invalid_api_key", data
    assert not mock.requests()
    assert_serving(envoy)


def test_invalid_utf8_in_other_headers_is_harmless(envoy, mock):
    mock.reset()
    st, _, data = raw_http(envoy, [("x-api-key", KEY_A), ("anthropic-version", "2023-06-01"),
                                   ("x-session-id", b"\xff\xfe-s\xc3("),
                                   ("content-type", "application/json")], json.dumps(body()).encode())
    assert st == 200, data
    assert_serving(envoy)


def test_huge_header_is_answered_by_envoy_and_envoy_keeps_serving(envoy, mock):
    """A 62 KB header passes Envoy's default 60 KiB header limit: Envoy itself answers 431
    (or closes the connection) before tollgate runs."""
    mock.reset()
    try:
        st, _, _ = raw_http(envoy, [("x-api-key", KEY_A), ("x-padding", "p" * 62_000),
                                    ("content-type", "application/json")], json.dumps(body()).encode())
    except (ConnectionError, http.client.HTTPException):
        st = None  # connection closed without a response
    assert st in (431, None), st
    # Just under the limit with a bad key: tollgate's own 401.
    st, _, data = raw_http(envoy, [("x-api-key", "k" * 50_000), ("content-type", "application/json")],
                           json.dumps(body()).encode())
    assert st == 401 and json.loads(data)["error"]["type"] == "authentication_error"
    assert b"kkkkkkkk" not in data, "the presented key must not be echoed"
    assert not mock.requests()
    assert_serving(envoy)


def test_conflicting_credentials_x_api_key_wins(envoy, mock):
    """x-api-key is read first, then Authorization: Bearer, x-goog-api-key, ?key= (SPEC
    "HTTP behaviour"). The first present one decides; a wrong x-api-key is not rescued by a
    right bearer key. No client credential reaches the upstream."""
    mock.reset()
    h = {"content-type": "application/json", **AV}
    # team-b (x-api-key) may not use claude-opus; team-a (bearer) may: 403 shows x-api-key won.
    r = requests.post(envoy.url() + "/v1/messages", timeout=10, data=json.dumps(body(model="claude-opus-4-1")),
                      headers={**h, "x-api-key": KEY_B, "authorization": f"Bearer {KEY_A}"})
    anthropic_error(r, 403, "permission_error")
    r = requests.post(envoy.url() + "/v1/messages", timeout=10, data=json.dumps(body(model="claude-opus-4-1")),
                      headers={**h, "x-api-key": KEY_A, "authorization": f"Bearer {KEY_B}"})
    assert r.status_code == 200, r.text
    r = requests.post(envoy.url() + "/v1/messages", timeout=10, data=json.dumps(body()),
                      headers={**h, "x-api-key": "wrong-key", "authorization": f"Bearer {KEY_A}"})
    anthropic_error(r, 401, "authentication_error")
    seen = [q for q in mock.requests() if q["path"] == "/v1/messages"]
    assert len(seen) == 1
    dumped = json.dumps(seen[0]["headers"])
    assert KEY_A not in dumped and KEY_B not in dumped and "authorization" not in seen[0]["headers"]
    assert_serving(envoy)


def test_two_x_api_key_headers(envoy, mock):
    """Envoy keeps both; tollgate reads the first. A valid first key is served and neither
    reaches the upstream; an invalid first key is 401 whatever follows."""
    mock.reset()
    common = [("anthropic-version", "2023-06-01"), ("content-type", "application/json")]
    st, _, data = raw_http(envoy, [("x-api-key", KEY_A), ("x-api-key", "bogus")] + common,
                           json.dumps(body()).encode())
    assert st == 200, data
    st, _, data = raw_http(envoy, [("x-api-key", "bogus"), ("x-api-key", KEY_A)] + common,
                           json.dumps(body()).encode())
    assert st == 401 and json.loads(data)["error"]["type"] == "authentication_error", data
    seen = [q for q in mock.requests() if q["path"] == "/v1/messages"]
    assert len(seen) == 1
    assert seen[0]["headers"]["x-api-key"] == ANTHROPIC_ACCOUNT, seen[0]["headers"]
    assert "bogus" not in json.dumps(seen[0]["headers"]) and KEY_A not in json.dumps(seen[0]["headers"])
    assert_serving(envoy)


@pytest.mark.parametrize("headers,field", [
    ({"x-tenant": "blue\r\nx-evil: 1"}, 'accounts[0].headers["x-tenant"]'),
    ({"x-a\r\nb": "blue"}, 'accounts[0].headers["x-a\\r\\nb"]'),
])
def test_crlf_in_account_headers_is_refused_naming_the_field(make_envoy, headers, field):
    cfg = base_config()
    cfg["accounts"][0]["headers"] = headers
    e = make_envoy(cfg, expect_fail=True)
    code = e.wait_exit(30)
    log = e.log_text()
    assert field in log, log[-3000:]
    if code is None:
        r = requests.get(e.admin + "/listeners", timeout=5)
        assert "tollgate" not in r.text


# ---------------------------------------------------------------- models


def test_unknown_model_passes_without_an_allow_list_and_is_403_with_one(envoy, mock):
    mock.reset()
    msg = claude(envoy).messages.create(model="no-such-model-xyz", max_tokens=8,
                                        messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text
    assert mock.last("/v1/messages")["model"] == "no-such-model-xyz"
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        claude(envoy, key=KEY_B).messages.create(model="no-such-model-xyz", max_tokens=8,
                                                 messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403 and e.value.body["error"]["type"] == "permission_error"
    with pytest.raises(openai.PermissionDeniedError) as e:
        gpt(envoy, key=KEY_B).chat.completions.create(model="no-such-model-xyz",
                                                      messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_allowed"
    assert len([q for q in mock.requests() if q["path"].startswith("/v1/")]) == 1
    assert_serving(envoy)
