"""Concurrency leases and `lease_ttl` (SPEC v2 configuration, `lease_ttl`): a `concurrent`
lease is held from admission to the end of the response, a streaming response renews it as
it flows, and a lease not renewed for `lease_ttl` frees itself.

Both tests run with `{"concurrent": 1}` and `"lease_ttl": "2s"`: a stream that stalls upstream
stops renewing and loses its lease after 2 s (so it cannot block its caller for the 90 s of the
default); a stream that keeps flowing for twice the ttl keeps it throughout.
"""

from __future__ import annotations

import re
import threading
import time

import anthropic

from conftest import access_log as _access_log
from conftest import consumers_config, tid, with_request_ids

TTL_S = 2.0
KEY = "tg-lease-ttl"
USAGE = {"input": 40, "output": 20}
MODEL = "claude-haiku-4-5"

LOG_LINE = re.compile(r'"\S+ \S+" (?P<code>\d+) consumer=(?P<consumer>\S*) .*?'
                      r"decision=(?P<decision>\S*) .*?id=(?P<id>\S*)\s*$")


def start(make_envoy, mock, model: str, **stream):
    """Envoy with one consumer under `concurrent: 1` and a 2 s ttl; the mock answers `model`
    with a stream scripted by `stream` and anything else at once. Returns Envoy and two
    clients of that consumer."""
    cfg = consumers_config([{"name": "lease", "keys": [KEY], "limits": [{"concurrent": 1}]}],
                           100, lease_ttl="2s")
    e = make_envoy(cfg, patch=with_request_ids)
    mock.reset()
    mock.script("*", model=model, usage=USAGE, **stream)
    mock.script("*", usage=USAGE)
    return e, claude(e), claude(e)


def claude(e) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=e.url(), api_key=KEY, max_retries=0, timeout=20)


def open_stream(client: anthropic.Anthropic, model: str, t: str):
    return client.messages.create(model=model, max_tokens=64, stream=True,
                                  messages=[{"role": "user", "content": "stream to me"}],
                                  extra_headers={"x-test-id": t})


def ask(client: anthropic.Anthropic, t: str) -> tuple[int, anthropic.APIStatusError | None]:
    """One non-streaming Messages call: (status, error)."""
    try:
        client.messages.create(model=MODEL, max_tokens=50, extra_headers={"x-test-id": t},
                               messages=[{"role": "user", "content": "hello there"}])
        return 200, None
    except anthropic.APIStatusError as err:
        return err.status_code, err


def assert_concurrency_refusal(err: anthropic.APIStatusError | None) -> None:
    assert err is not None and err.status_code == 429
    assert err.body["error"]["type"] == "rate_limit_error", err.body
    assert "1 concurrent requests" in err.body["error"]["message"], err.body
    assert err.response.headers["retry-after"] == "1"


def access_log(e, ids: set[str]) -> dict[str, dict]:
    return _access_log(e, ids, LOG_LINE)


def end_of(mock, t: str) -> str:
    rec = [r for r in mock.requests("/v1/messages") if r["headers"].get("x-test-id") == t]
    assert len(rec) == 1, rec
    return rec[0]["end"]


def test_a_stalled_stream_loses_its_lease_after_the_ttl(make_envoy, mock):
    # message_start comes at once, then the upstream stalls for a minute before its first
    # delta: nothing flows, so nothing renews the lease.
    e, client, other = start(make_envoy, mock, "claude-stall", events=3, delay_ms=60_000)
    t_stall = tid()

    began = time.monotonic()
    stream = open_stream(client, "claude-stall", t_stall)
    try:
        assert next(iter(stream)).type == "message_start"
        # Every 250 ms a second call, until one is admitted (at most 10 s).
        tries: list[tuple[float, int, str]] = []
        while time.monotonic() - began < 10:
            t = tid()
            status, err = ask(other, t)
            tries.append((time.monotonic() - began, status, t))
            if status == 200:
                break
            assert_concurrency_refusal(err)
            time.sleep(0.25)
        # The stalled stream is still open upstream: only the ttl can have freed its lease.
        assert end_of(mock, t_stall) == "pending"
    finally:
        stream.close()

    refused = [at for at, status, _ in tries if status == 429]
    admitted_at, status, _ = tries[-1]
    assert refused, tries
    print(f"\n[leases stall] ttl={TTL_S}s: {len(refused)} calls refused with 429 from "
          f"{refused[0]:.2f}s to {refused[-1]:.2f}s, then {status} at {admitted_at:.2f}s")
    assert status == 200, f"no call admitted within 10 s of a stalled stream: {tries[-3:]}"
    # Refused at first, admitted once the ttl has passed (never before it, not long after).
    assert refused[0] < 0.5 * TTL_S, tries
    assert TTL_S - 0.1 <= admitted_at < TTL_S + 2.0, tries
    assert len(refused) >= 4, tries
    lines = access_log(e, {t for _, _, t in tries})
    assert [lines[t]["decision"] for _, _, t in tries] == ["concurrency"] * len(refused) + ["admitted"]


def test_a_flowing_stream_keeps_its_lease_beyond_the_ttl(make_envoy, mock):
    # A delta every 300 ms for 4.2 s: more than twice the ttl.
    e, client, other = start(make_envoy, mock, "claude-flow", events=14, delay_ms=300)
    t_flow = tid()
    probes: list[tuple[float, int, str, anthropic.APIStatusError | None]] = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            t = tid()
            status, err = ask(other, t)
            probes.append((time.monotonic() - began, status, t, err))
            stop.wait(0.25)

    began = time.monotonic()
    stream = open_stream(client, "claude-flow", t_flow)
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        events = [ev.type for ev in stream]
    finally:
        ended = time.monotonic() - began
        stop.set()
        prober.join()
    assert events[-1] == "message_stop", events
    assert events.count("content_block_delta") == 14, events
    # Released at the end of the response: the next call is admitted at once.
    t_after = tid()
    status, err = ask(other, t_after)

    during = [p for p in probes if p[0] < ended - 0.1]
    assert during, probes
    print(f"\n[leases flow] ttl={TTL_S}s, stream of {ended:.2f}s: {len(during)} calls during it, "
          f"statuses {sorted({s for _, s, _, _ in during})}, last at {during[-1][0]:.2f}s; "
          f"after it: {status}")
    assert ended >= 2 * TTL_S, ended
    # Probed from the start to well past the ttl, and refused every time.
    assert len(during) >= 10 and during[-1][0] >= TTL_S + 1.0, during
    assert [s for _, s, _, _ in during] == [429] * len(during), during
    for _, _, _, refusal in during:
        assert_concurrency_refusal(refusal)
    assert status == 200, err and err.body
    lines = access_log(e, {t_flow, t_after} | {t for _, _, t, _ in during})
    assert lines[t_flow]["decision"] == "admitted" and lines[t_flow]["code"] == "200"
    assert {lines[t]["decision"] for _, _, t, _ in during} == {"concurrency"}
    assert lines[t_after]["decision"] == "admitted"
