"""Trust boundaries, second round (issue #17): what a fresh hostile review found after the
first fixes, each proved in real Envoy before its fix. HTTP/2 frames are written with the
`h2` library, so request and response trailers can be sent."""

from __future__ import annotations

import json
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest
import requests

from conftest import ACCOUNT_KEYS, KEY_A, base_config, tid, with_request_ids
from test_accounts import downstream, pool
from test_trust import access_log, account_view

MODEL = "claude-haiku-4-5"
A1 = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
GEMINI_KEY = ACCOUNT_KEYS["TOLLGATE_GEMINI_KEY_1"]
BODY = json.dumps({"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}).encode()
HEADERS = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01", "content-type": "application/json"}


def h2_post(url: str, path: str, headers: dict, body: bytes, trailers: dict | None) -> tuple[str, bytes]:
    """One HTTP/2 (cleartext) POST, optionally ending in a trailers frame: (status, body)."""
    host, port = url.replace("http://", "").split(":")
    s = socket.create_connection((host, int(port)), timeout=15)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    sid = c.get_next_available_stream_id()
    hs = [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "x")]
    c.send_headers(sid, hs + [(k.lower(), v) for k, v in headers.items()])
    c.send_data(sid, body, end_stream=trailers is None)
    if trailers:
        c.send_headers(sid, list(trailers.items()), end_stream=True)
    s.sendall(c.data_to_send())
    status, data, done = "", b"", False
    while not done:
        chunk = s.recv(65536)
        if not chunk:
            break
        for ev in c.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers)[":status"]
            elif isinstance(ev, h2.events.DataReceived):
                data += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        s.sendall(c.data_to_send())
    s.close()
    return status, data


# ---- request trailers skipped admission, the credential swap and metering ----------------------


@pytest.mark.parametrize("setup", ["single", "failover"])
def test_request_trailers_get_400_and_nothing_goes_upstream(make_envoy, mock, setup):
    if setup == "single":
        e = make_envoy(base_config(limits=[{"tokens": 1000, "per": "minute"}]))
    else:
        e = make_envoy(downstream(), shipped="envoy-failover.yaml", upstream=pool())
    mock.reset()
    status, data = h2_post(e.url(), "/v1/messages", HEADERS, BODY, {"x-trailer": "1"})
    assert status == "400", (status, data[:200])
    assert json.loads(data)["error"]["type"] == "invalid_request_error"
    assert not mock.requests()
    # The same request without trailers is served (HTTP/2 itself is fine).
    status, _ = h2_post(e.url(), "/v1/messages", HEADERS, BODY, None)
    assert status == "200"
    assert mock.last("/v1/messages")["key"] in ACCOUNT_KEYS.values()


# ---- an upstream error ending in trailers was neither masked nor read ------------------------


def _h2_upstream(status: str, trailers: bool):
    """An h2c upstream answering every request with `status` and an Anthropic invalid-key
    body that echoes the `x-api-key` it received, optionally followed by trailers."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve(conn):
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        c.initiate_connection()
        conn.sendall(c.data_to_send())
        hdrs = {}
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hdrs[ev.stream_id] = dict(ev.headers)
                    elif isinstance(ev, h2.events.DataReceived):
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        key = hdrs[ev.stream_id].get("x-api-key", "")
                        body = json.dumps({"type": "error", "error": {
                            "type": "authentication_error", "message": "x" * 100 + " key " + key}}).encode()
                        c.send_headers(ev.stream_id, [(":status", status), ("content-type", "application/json")])
                        c.send_data(ev.stream_id, body, end_stream=not trailers)
                        if trailers:
                            c.send_headers(ev.stream_id, [("x-trailer", "1")], end_stream=True)
                conn.sendall(c.data_to_send())
        except OSError:
            return

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def _upstream_h2(port: int):
    def patch(cfg):
        for cl in cfg["static_resources"]["clusters"]:
            if cl["name"] == "llm":
                addr = cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                addr["socket_address"]["port_value"] = port
                cl["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}}
    return patch


@pytest.mark.parametrize("trailers", [False, True])
def test_an_error_ending_in_trailers_is_still_masked_and_read(make_envoy, mock, trailers):
    srv, port = _h2_upstream("401", trailers)
    try:
        e = make_envoy(base_config(), patch=_upstream_h2(port), name=f"envoy-review-h2up-{trailers}")
        r = requests.post(e.url() + "/v1/messages", headers=HEADERS, data=BODY, timeout=10)
        assert r.status_code == 401
        assert A1 not in r.text and "sk-ant-" in r.text, r.text[-120:]
        # The body was read: the invalid key disabled the account.
        assert account_view(e, "anthropic-1")["state"] == "disabled"
    finally:
        srv.close()


# ---- a client that leaves before the answer ------------------------------------------------------


def test_a_client_that_leaves_before_the_answer_is_charged_its_prompt(make_envoy, mock):
    e = make_envoy(base_config(), patch=with_request_ids, name="envoy-review-abort")
    mock.reset()
    mock.script("*", usage={"input": 150000, "output": 1}, first_byte_delay_ms=1500, times=1)
    t = tid()
    big = json.dumps({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "word " * 20000}]})
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(e.url() + "/v1/messages", headers={**HEADERS, "x-test-id": t}, data=big, timeout=0.8)
    time.sleep(2.0)
    line = access_log(e, {t})[t]
    # The provider read (and bills) the prompt: so does the budget.
    assert line["usage"] == "estimated", line
    assert int(line["input_tokens"]) == int(line["estimate"]) > 10_000, line


# ---- query parameters beside a pooled Gemini key ----------------------------------------------


def test_a_pooled_key_never_travels_with_credential_or_field_mask_parameters(envoy, mock):
    mock.reset()
    path = ("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&%6Bey=AIzaBOGUS&userProject=p"
            "&quotaUser=q&fields=candidates")
    r = requests.post(envoy.url() + path, headers={"x-goog-api-key": KEY_A},
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 200, r.text
    seen = mock.last("/v1beta/")
    assert seen["path"].endswith(":streamGenerateContent?alt=sse"), seen["path"]
    assert seen["key"] == GEMINI_KEY
