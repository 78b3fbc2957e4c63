"""Local quotas end to end (SPEC "Admission, reconciliation and exactness" and the 429 rules
of "HTTP behaviour"): real Envoy 1.40 with `--concurrency 2`, the official SDKs as callers.

What the tests rely on:
- the access log line of every request carries `estimate=<n>` and `decision=<...>`; the tests
  add the caller's `x-test-id` header to that line so each line can be matched to a caller
  and to the mock's record of the same request (the mock records request headers);
- the mock records each request's real usage; a script fixes it per test.
"""

from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx2
import openai
import pytest
import requests

from conftest import access_log as _access_log, consumers_config, tid, with_request_ids

OUTPUT_RESERVE = 100

LOG_LINE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<code>\d+) consumer=(?P<consumer>\S*) .*?'
    r"estimate=(?P<estimate>\S*) .*?decision=(?P<decision>\S*) .*?id=(?P<id>\S*)\s*$")


def quota_config(consumers: list[dict], **overrides) -> dict:
    return consumers_config(consumers, OUTPUT_RESERVE, **overrides)


def start(make_envoy, consumers: list[dict], **overrides):
    return make_envoy(quota_config(consumers, **overrides), patch=with_request_ids)


def access_log(e, ids: set[str], timeout: float = 20.0) -> dict[str, dict]:
    return _access_log(e, ids, LOG_LINE, timeout)


def mock_records(mock, ids: set[str]) -> dict[str, dict]:
    """The mock's records of the requests tagged with `ids`, by id."""
    out = {}
    for r in mock.requests():
        tid = r["headers"].get("x-test-id")
        if tid in ids:
            assert tid not in out, f"request {tid} reached the upstream twice"
            out[tid] = r
    return out


def total(usage: dict) -> int:
    return usage["input"] + usage["output"] + usage["cache_read"] + usage["cache_write"]


def claude(e, key: str, **kw) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return anthropic.Anthropic(base_url=e.url(), api_key=key, **kw)


def gpt(e, key: str, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return openai.OpenAI(base_url=e.url() + "/v1", api_key=key, **kw)


def test_concurrent_callers_never_get_more_reservations_than_the_limit(make_envoy, mock):
    """48 calls from 32 threads (Anthropic and OpenAI SDKs) against 2400 tokens per hour:
    the reservations admitted fit in the limit, the rest get 429 in their API's format. The
    mock answers with more tokens than reserved, so real usage overshoots: it is printed and
    checked against the SPEC bound (what admitted requests used beyond their reservations)."""
    limit = 2400
    key = "tg-quota-burst"
    e = start(make_envoy, [{"name": "burst", "keys": [key],
                            "limits": [{"tokens": limit, "per": "hour"}]}])
    mock.reset()
    # Held for 300 ms so that most calls are in flight together; each uses 60 + 150 tokens,
    # more than its reservation (estimate + 100).
    mock.script("*", usage={"input": 60, "output": 150}, first_byte_delay_ms=300)

    n_threads, n_calls = 32, 48
    barrier = threading.Barrier(n_threads)
    results: dict[str, tuple] = {}
    lock = threading.Lock()

    def call(i: int):
        if i < n_threads:
            barrier.wait(timeout=30)
        t = tid()
        prompt = f"caller {i}: say something about quotas and buckets, please."
        try:
            if i % 2 == 0:
                claude(e, key).messages.create(
                    model="claude-haiku-4-5", max_tokens=400,
                    messages=[{"role": "user", "content": prompt}],
                    extra_headers={"x-test-id": t})
            else:
                gpt(e, key).chat.completions.create(
                    model="gpt-4o-mini", max_tokens=400,
                    messages=[{"role": "user", "content": prompt}],
                    extra_headers={"x-test-id": t})
            out = ("ok", i % 2, None)
        except (anthropic.APIStatusError, openai.APIStatusError) as err:
            out = ("error", i % 2, err)
        with lock:
            results[t] = out

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(call, range(n_calls)))

    assert len(results) == n_calls
    admitted = {t for t, r in results.items() if r[0] == "ok"}
    rejected = {t: r for t, r in results.items() if r[0] == "error"}
    assert admitted, "no call was admitted"
    assert rejected, "every call was admitted: the limit is not binding"
    busy = 0
    for t, (_, sdk, err) in rejected.items():
        assert err.status_code == 429, (err.status_code, err.body)
        retry_after = err.response.headers.get("retry-after")
        assert retry_after is not None and int(retry_after) >= 1, err.response.headers
        assert err.response.headers.get("x-should-retry") != "false"
        if sdk == 0:
            assert isinstance(err, anthropic.RateLimitError)
            assert err.body["type"] == "error"
            assert err.body["error"]["type"] == "rate_limit_error"
            msg = err.body["error"]["message"]
        else:
            assert isinstance(err, openai.RateLimitError)
            assert err.code == "rate_limit_exceeded"
            assert err.body["type"]
            msg = err.body["message"]
        assert "burst" in msg and key not in msg
        if "busy" in msg:
            busy += 1  # the shared-data compare-and-swap lost too many races
        else:
            assert "2400 tokens per hour" in msg, msg

    retry_afters = [int(err.response.headers["retry-after"]) for _, _, err in rejected.values()]
    lines = access_log(e, set(results))
    records = mock_records(mock, admitted)
    assert set(records) == admitted, "an admitted call did not reach the upstream once"
    assert not mock_records(mock, set(rejected)), "a rejected call reached the upstream"
    for t in admitted:
        assert lines[t]["decision"] == "admitted", lines[t]
        assert lines[t]["code"] == "200"
    for t in rejected:
        assert lines[t]["decision"] == "tokens", lines[t]
        assert lines[t]["code"] == "429"

    reserved = {t: int(lines[t]["estimate"]) + min(400, OUTPUT_RESERVE) for t in admitted}
    used = {t: total(records[t]["usage"]) for t in admitted}
    sum_reserved = sum(reserved.values())
    sum_used = sum(used.values())
    overshoot = max(0, sum_used - limit)
    bound = sum(max(0, used[t] - reserved[t]) for t in admitted)
    print(f"\n[quota burst] limit={limit} calls={n_calls} admitted={len(admitted)} "
          f"rejected={len(rejected)} reservations admitted={sum_reserved} "
          f"real usage of admitted={sum_used} overshoot={overshoot} "
          f"SPEC bound (use beyond reservations)={bound} "
          f"retry-after {min(retry_afters)}..{max(retry_afters)}s store-busy 429s={busy}")
    # No call used less than it reserved, so no refund made room: the counter never held
    # less than the reservations admitted, and they must fit in the limit.
    assert all(used[t] >= reserved[t] for t in admitted)
    assert sum_reserved <= limit
    assert overshoot <= bound


# ---- 2. a concurrent limit under parallel and aborted streams -----------------------------


def open_stream(client: anthropic.Anthropic, t: str):
    return client.messages.create(
        model="claude-haiku-4-5", max_tokens=64, stream=True,
        messages=[{"role": "user", "content": "stream to me"}],
        extra_headers={"x-test-id": t})


def in_flight(mock, ids: set[str]) -> int:
    return sum(1 for r in mock.requests("/v1/messages")
               if r["headers"].get("x-test-id") in ids and r["end"] == "pending")


def parallel_streams(e, mock, key: str, n: int) -> tuple[list[str], list, int]:
    """`n` callers open a stream at once and read it to the end. Returns the ids that
    streamed, the 429 errors, and the most streams the mock ever saw open together."""
    ids = {tid() for _ in range(n)}
    barrier = threading.Barrier(n)
    done = threading.Event()
    peak = [0]

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], in_flight(mock, ids))
            time.sleep(0.05)

    def one(t: str):
        client = claude(e, key)
        barrier.wait(timeout=30)
        try:
            s = open_stream(client, t)
        except anthropic.RateLimitError as err:
            return t, err
        events = [ev.type for ev in s]
        assert events[-1] == "message_stop", events
        return t, None

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(n) as pool:
            out = list(pool.map(one, sorted(ids)))
    finally:
        done.set()
        sampler.join()
    streamed = [t for t, err in out if err is None]
    errors = [err for _, err in out if err is not None]
    return streamed, errors, peak[0]


def test_concurrent_limit_holds_and_aborted_streams_free_their_leases(make_envoy, mock):
    key = "tg-quota-conc"
    e = start(make_envoy, [{"name": "conc", "keys": [key], "limits": [{"concurrent": 3}]}])
    mock.reset()
    # A stream stays open ~2 s: 40 deltas 50 ms apart.
    mock.script("*", events=40, delay_ms=50)
    t0 = time.monotonic()

    streamed, errors, peak = parallel_streams(e, mock, key, 10)
    assert len(streamed) == 3, f"{len(streamed)} of 10 parallel streams admitted under concurrent: 3"
    assert peak <= 3
    for err in errors:
        assert err.status_code == 429
        assert err.body["error"]["type"] == "rate_limit_error"
        assert "3 concurrent requests" in err.body["error"]["message"]
        assert int(err.response.headers["retry-after"]) >= 1
        assert err.response.headers.get("x-should-retry") != "false"

    # 200 streams that the client drops after the first event, at most 3 at a time.
    aborted_ids: list[str] = []
    late = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + 40

    def abort_loop():
        client = claude(e, key)
        while time.monotonic() < deadline:
            with lock:
                if len(aborted_ids) >= 200:
                    return
            t = tid()
            try:
                s = open_stream(client, t)
            except anthropic.RateLimitError:
                # The previous stream of this caller (or another's) is not yet torn down.
                with lock:
                    late[0] += 1
                time.sleep(0.01)
                continue
            it = iter(s)
            assert next(it).type == "message_start"
            s.close()
            with lock:
                aborted_ids.append(t)

    with ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(abort_loop) for _ in range(3)]:
            f.result()
    assert len(aborted_ids) >= 200, f"only {len(aborted_ids)} aborted streams in 40 s"
    # Every one of them was cut short upstream, not read to the end.
    ends = {r["headers"].get("x-test-id"): r["end"] for r in mock.requests("/v1/messages")}
    cut = [t for t in aborted_ids if ends.get(t) in ("client_gone", "reset")]
    assert len(cut) >= 190, f"only {len(cut)} of {len(aborted_ids)} streams were cut mid-stream"

    # 12 more that the client gives up on before the upstream has even answered.
    mock.script("*", model="claude-slow-start", first_byte_delay_ms=1500)
    gave_up = [0]

    def give_up_loop():
        client = claude(e, key, timeout=0.3)
        for _ in range(4):
            try:
                client.messages.create(model="claude-slow-start", max_tokens=16, stream=True,
                                       messages=[{"role": "user", "content": "hi"}])
            except anthropic.APITimeoutError:
                with lock:
                    gave_up[0] += 1
            except anthropic.RateLimitError:
                time.sleep(0.05)

    with ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(give_up_loop) for _ in range(3)]:
            f.result()
    assert gave_up[0] >= 6, gave_up[0]

    # 6 more that the upstream resets after 3 events.
    mock.script("*", model="claude-reset", events=40, delay_ms=50, reset_after_events=3)
    reset_seen = [0]

    def reset_loop():
        client = claude(e, key)
        for _ in range(2):
            try:
                s = client.messages.create(model="claude-reset", max_tokens=64, stream=True,
                                           messages=[{"role": "user", "content": "hi"}])
                list(s)
            except anthropic.RateLimitError:
                time.sleep(0.05)
            except (anthropic.APIError, httpx2.HTTPError):  # the stream breaks off
                with lock:
                    reset_seen[0] += 1
            time.sleep(0.1)

    with ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(reset_loop) for _ in range(3)]:
            f.result()
    assert reset_seen[0] >= 3, reset_seen[0]

    # Every lease is free again: a new burst of 3 parallel streams is admitted whole.
    time.sleep(0.5)
    streamed, errors, peak = parallel_streams(e, mock, key, 3)
    elapsed = time.monotonic() - t0
    print(f"\n[quota concurrent] aborted={len(aborted_ids)} (429 while a lease was still "
          f"being freed: {late[0]}) gave up before headers={gave_up[0]} reset upstream={reset_seen[0]} final burst admitted={len(streamed)}/3 in {elapsed:.1f}s")
    assert len(streamed) == 3, [err.body for err in errors]
    assert elapsed < 60


# ---- 3. the SDK's own retry honours retry-after ---------------------------------------------


class Attempts:
    """Every HTTP response an SDK client received, with its time."""

    def __init__(self):
        self.seen: list[tuple[float, int, str | None]] = []

    def __call__(self, response):
        self.seen.append((time.monotonic(), response.status_code, response.headers.get("retry-after")))


@pytest.mark.parametrize("sdk", ["anthropic", "openai"])
def test_sdk_retry_honours_retry_after_and_then_succeeds(make_envoy, mock, sdk):
    key = "tg-quota-retry"
    e = start(make_envoy, [{"name": "retry", "keys": [key],
                            "limits": [{"requests": 1, "per": "second"}]}])
    mock.reset()
    attempts = Attempts()
    if sdk == "anthropic":
        client = claude(e, key, max_retries=2,
                        http_client=anthropic.DefaultHttpxClient(event_hooks={"response": [attempts]}))

        def call():
            return client.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                          messages=[{"role": "user", "content": "hi"}])
    else:
        client = gpt(e, key, max_retries=2,
                     http_client=openai.DefaultHttpxClient(event_hooks={"response": [attempts]}))

        def call():
            return client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                                                  messages=[{"role": "user", "content": "hi"}])

    call()
    assert [s for _, s, _ in attempts.seen] == [200]
    start_t = time.monotonic()
    call()  # would get 429 at once; the SDK waits retry-after and tries again
    elapsed = time.monotonic() - start_t
    second = attempts.seen[1:]
    statuses = [s for _, s, _ in second]
    assert statuses == [429, 200], f"the retry after retry-after did not succeed: {second}"
    retry_after = int(second[0][2])
    assert 1 <= retry_after <= 2  # a sliding 1/s window has room within 2 s
    waited = second[1][0] - second[0][0]
    print(f"\n[quota retry/{sdk}] retry-after={retry_after}s waited={waited:.2f}s total={elapsed:.2f}s")
    assert waited >= retry_after - 0.05
    assert elapsed < retry_after + 2


# ---- 4. x-ratelimit-* headers ----------------------------------------------------------------

PROVIDER_RATE_HEADERS = {
    "anthropic-ratelimit-tokens-remaining": "123",
    "anthropic-ratelimit-requests-limit": "4000",
    "x-ratelimit-remaining-tokens": "999999",
    "x-ratelimit-limit-requests": "777",
    "x-ratelimit-reset-requests": "6m0s",
}


def wait_clear_of_hour_boundary():
    """The exact figures below assume that one hourly window holds the whole test."""
    left = 3600 - time.time() % 3600
    if left < 20:
        time.sleep(left + 0.5)


def rate_headers(h) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items()
            if k.lower().startswith(("x-ratelimit-", "anthropic-ratelimit-"))}


def test_ratelimit_headers_report_the_binding_limits(make_envoy, mock):
    key, tok_only, no_rate = "tg-quota-hdr", "tg-quota-hdr-tok", "tg-quota-hdr-conc"
    e = start(make_envoy, [
        {"name": "hdr", "keys": [key], "limits": [
            {"tokens": 10_000_000, "per": "day"}, {"tokens": 100_000, "per": "hour"},
            {"requests": 100_000, "per": "day"}, {"requests": 50, "per": "hour"}]},
        {"name": "hdr-tok", "keys": [tok_only], "limits": [{"tokens": 100_000, "per": "hour"}]},
        {"name": "hdr-conc", "keys": [no_rate], "limits": [{"concurrent": 10}]},
    ])
    mock.reset()
    mock.script("*", usage={"input": 40, "output": 20}, headers=PROVIDER_RATE_HEADERS)
    wait_clear_of_hour_boundary()
    c, g = claude(e, key), gpt(e, key)
    msgs = [{"role": "user", "content": "Tell me about the headers."}]
    calls = []  # (id, max_tokens, headers, time)

    def record(t, max_tokens, headers):
        calls.append((t, max_tokens, rate_headers(headers), time.time()))

    t = tid()
    raw = c.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=300, messages=msgs,
                                              extra_headers={"x-test-id": t})
    raw.parse()
    record(t, 300, raw.headers)
    t = tid()
    s = c.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=msgs, stream=True,
                          extra_headers={"x-test-id": t})
    record(t, 50, s.response.headers)
    list(s)
    t = tid()
    raw = g.chat.completions.with_raw_response.create(model="gpt-4o-mini", max_tokens=70, messages=msgs,
                                                      extra_headers={"x-test-id": t})
    raw.parse()
    record(t, 70, raw.headers)
    t = tid()
    s = g.chat.completions.create(model="gpt-4o-mini", max_tokens=500, messages=msgs, stream=True,
                                  extra_headers={"x-test-id": t})
    record(t, 500, s.response.headers)
    chunks = list(s)
    assert chunks and all(ch.choices for ch in chunks)

    ids = {x[0] for x in calls}
    lines = access_log(e, ids)
    records = mock_records(mock, ids)
    used_before = 0
    for k, (t, max_tokens, h, at) in enumerate(calls, start=1):
        assert not any(n.startswith("anthropic-ratelimit-") for n in h), h
        reservation = int(lines[t]["estimate"]) + min(max_tokens, OUTPUT_RESERVE)
        assert h["x-ratelimit-limit-requests"] == "50", h
        assert h["x-ratelimit-remaining-requests"] == str(50 - k), h
        assert h["x-ratelimit-limit-tokens"] == "100000", h
        assert h["x-ratelimit-remaining-tokens"] == str(100_000 - used_before - reservation), (k, h)
        # Sliding hour: what counts now has left the window by the end of the next hour.
        expect_reset = (math.floor(at / 3600) + 2) * 3600 - at
        for kind in ("tokens", "requests"):
            assert abs(int(h[f"x-ratelimit-reset-{kind}"]) - expect_reset) <= 2, (kind, h, expect_reset)
        used_before += total(records[t]["usage"])
    assert used_before == 4 * 60

    # A consumer with tokens limits only: no requests headers, not even the provider's.
    raw = claude(e, tok_only).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=16, messages=msgs)
    h = rate_headers(raw.headers)
    assert h.get("x-ratelimit-limit-tokens") == "100000", h
    assert set(h) == {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                      "x-ratelimit-reset-tokens"}, h
    # A consumer with only a concurrency limit: no rate-limit headers at all.
    s = gpt(e, no_rate).chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)
    assert rate_headers(s.response.headers) == {}
    list(s)
    raw = claude(e, no_rate).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=16, messages=msgs)
    assert rate_headers(raw.headers) == {}


def test_identity_only_responses_do_not_leak_provider_rate_headers(make_envoy, mock):
    key = "tg-quota-hdr"
    e = start(make_envoy, [{"name": "hdr", "keys": [key], "limits": [
        {"tokens": 100_000, "per": "hour"}, {"requests": 50, "per": "hour"}]}])
    mock.reset()
    mock.script("*", headers=PROVIDER_RATE_HEADERS)
    raw = claude(e, key).messages.with_raw_response.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().input_tokens > 0
    leaked = {k: v for k, v in rate_headers(raw.headers).items() if PROVIDER_RATE_HEADERS.get(k) == v}
    raw = gpt(e, key).models.with_raw_response.list()
    raw.parse()
    leaked.update({k: v for k, v in rate_headers(raw.headers).items() if PROVIDER_RATE_HEADERS.get(k) == v})
    assert leaked == {}, f"the provider's rate-limit headers reached the caller: {leaked}"


# ---- 5. a reservation larger than the limit itself -------------------------------------------


def test_reservation_over_the_limit_itself_is_refused_for_good(make_envoy, mock):
    key = "tg-quota-small"
    e = start(make_envoy, [{"name": "small", "keys": [key],
                            "limits": [{"tokens": 80, "per": "minute"}]}])
    mock.reset()
    attempts = Attempts()
    client = claude(e, key, max_retries=2,
                    http_client=anthropic.DefaultHttpxClient(event_hooks={"response": [attempts]}))
    with pytest.raises(anthropic.RateLimitError) as err:
        # estimate + min(400, 100) > 80 whatever the estimate
        client.messages.create(model="claude-haiku-4-5", max_tokens=400,
                               messages=[{"role": "user", "content": "hi"}])
    h = err.value.response.headers
    assert h.get("x-should-retry") == "false"
    assert int(h["retry-after"]) >= 1
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert "small" in err.value.body["error"]["message"]
    assert [s for _, s, _ in attempts.seen] == [429], "the SDK retried despite x-should-retry: false"
    assert not mock.requests("/v1/messages")

    with pytest.raises(openai.RateLimitError) as oerr:
        gpt(e, key, max_retries=2).chat.completions.create(
            model="gpt-4o-mini", max_tokens=400, messages=[{"role": "user", "content": "hi"}])
    assert oerr.value.response.headers.get("x-should-retry") == "false"
    assert oerr.value.code == "rate_limit_exceeded"
    assert not mock.requests("/v1/chat/completions")

    # A small request from the same consumer still fits.
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=4,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text


# ---- 6. requests per minute ----------------------------------------------------------------


def test_requests_per_minute_admits_exactly_n(make_envoy, mock):
    n, extra = 5, 3
    key = "tg-quota-rpm"
    e = start(make_envoy, [{"name": "rpm", "keys": [key],
                            "limits": [{"requests": n, "per": "minute"}]}])
    mock.reset()
    client = gpt(e, key)
    outcomes = []
    for _ in range(n + extra):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}])
            raw.parse()
            outcomes.append((200, raw.headers))
        except openai.RateLimitError as err:
            outcomes.append((429, err))
    assert [s for s, _ in outcomes] == [200] * n + [429] * extra
    assert [h["x-ratelimit-remaining-requests"] for _, h in outcomes[:n]] == [str(n - k) for k in range(1, n + 1)]
    for _, err in outcomes[n:]:
        assert err.code == "rate_limit_exceeded"
        assert f"rpm: {n} requests per minute" in err.message
        assert 1 <= int(err.response.headers["retry-after"]) <= 120
        assert err.response.headers.get("x-should-retry") != "false"
        assert err.response.headers.get("x-ratelimit-remaining-requests") == "0"
    assert len(mock.requests("/v1/chat/completions")) == n
    # Gemini callers get the same refusal in Gemini's format.
    r = requests.post(e.url() + "/v1beta/models/gemini-2.0-flash:generateContent",
                      headers={"x-goog-api-key": key},
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 429
    assert r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert r.json()["error"]["code"] == 429
    assert int(r.headers["retry-after"]) >= 1
