"""Issue #18, the quota promises through real Envoy (SPEC "Configuration", "Admission,
reconciliation and exactness", "HTTP behaviour"): `input_tokens`, `output_tokens` and
`cost_usd` limits, monthly and fixed windows, `anonymous`, `passthrough_paths`, and callers on
their own keys. The official SDKs call a real Envoy 1.40 running the built tollgate.wasm; the
mock upstream fixes each response's usage, so every figure below is exact.

Windows are `window: fixed` wherever a figure depends on when the window ends: a fixed day
ends at 00:00 UTC, a fixed month on the 1st, so `retry-after` is checked against the calendar.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time

import anthropic
import openai
import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from conftest import (ACCOUNT_KEYS, ADMIN_KEY, KEY_A, EnvoyFactory, access_log as _access_log,
                      base_config, consumers_config, stat_sum, tid, with_request_ids)

MODEL = "claude-haiku-4-5"
HI = [{"role": "user", "content": "hello there"}]
OUTPUT_RESERVE = 100
ANTHROPIC_1 = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
ANTHROPIC_2 = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_2"]
OPENAI_1 = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]
GEMINI_1 = ACCOUNT_KEYS["TOLLGATE_GEMINI_KEY_1"]
DAY = 86_400
SLIDING_MONTH = 30 * DAY

LOG_LINE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<code>\d+) consumer=(?P<consumer>\S*) .*?'
    r"account=(?P<account>\S*) estimate=(?P<estimate>\S*) .*?decision=(?P<decision>\S*) "
    r".*?id=(?P<id>\S*)\s*$")


# ---- clients and figures ---------------------------------------------------------------------


def claude(e, key: str | None = KEY_A, **kw) -> anthropic.Anthropic:
    """An Anthropic SDK client; `key=None` sends no credential at all."""
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    if key is None:
        kw["default_headers"] = {**kw.get("default_headers", {}), "Authorization": anthropic.Omit()}
    return anthropic.Anthropic(base_url=e.url(), api_key=key, **kw)


def gpt(e, key: str = KEY_A, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return openai.OpenAI(base_url=e.url() + "/v1", api_key=key, **kw)


def gemini(e, key: str = KEY_A) -> genai.Client:
    """A google-genai client (keep a reference: a collected client closes its connection)."""
    return genai.Client(api_key=key, http_options=genai_types.HttpOptions(
        base_url=e.url(), api_version="v1beta", timeout=30_000,
        retry_options=genai_types.HttpRetryOptions(attempts=1)))


def ask(c: anthropic.Anthropic, max_tokens: int = 50, messages=HI, t: str | None = None):
    """One Messages call: (status, body or error body, headers)."""
    try:
        raw = c.messages.with_raw_response.create(
            model=MODEL, max_tokens=max_tokens, messages=messages,
            extra_headers={"x-test-id": t} if t else {})
        return 200, raw.parse(), raw.headers
    except anthropic.APIStatusError as err:
        return err.status_code, err.body, err.response.headers


def chat(g: openai.OpenAI, max_tokens: int = 50, t: str | None = None):
    """One Chat Completions call: (status, body or error, headers)."""
    try:
        raw = g.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=max_tokens, messages=HI,
            extra_headers={"x-test-id": t} if t else {})
        return 200, raw.parse(), raw.headers
    except openai.APIStatusError as err:
        return err.status_code, err, err.response.headers


def usage_api(e) -> dict:
    r = requests.get(e.url() + "/tollgate/usage", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def windows(e, consumer: str) -> dict[str, dict]:
    """The consumer's windows in the usage API, by `kind` (one limit of each kind here)."""
    c = next(c for c in usage_api(e)["consumers"] if c["name"] == consumer)
    return {w["kind"]: w for w in c["windows"]}


def eventually(read, ok, timeout: float = 5.0):
    """`read()` once `ok(value)` holds (a response settles just after the client has it;
    counters are flushed from the root tick), else the last value for the assertion."""
    deadline = time.monotonic() + timeout
    while True:
        v = read()
        if ok(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.1)


def access_log(e, ids: set[str]) -> dict[str, dict]:
    return _access_log(e, ids, LOG_LINE)


def seconds_to(boundary: float) -> float:
    return boundary - time.time()


def next_midnight_utc(now: float) -> float:
    return (math.floor(now / DAY) + 1) * DAY


def next_month_utc(now: float) -> float:
    d = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return dt.datetime(y, m, 1, tzinfo=dt.timezone.utc).timestamp()


def clear_of(boundary, margin: float) -> None:
    """Sleeps past `boundary(now)` if it is closer than `margin` seconds: each test's figures
    assume that one window holds it whole."""
    left = seconds_to(boundary(time.time()))
    if left < margin:
        time.sleep(left + 0.5)


def about(value, expected: float, slack: float = 3.0) -> bool:
    return abs(int(value) - expected) <= slack


def record_of(mock, t: str) -> dict:
    recs = [r for r in mock.requests() if r["headers"].get("x-test-id") == t]
    assert len(recs) == 1, f"request {t} reached the upstream {len(recs)} times"
    return recs[0]


def lower(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


# ---- 1. input_tokens and output_tokens limits ------------------------------------------------


def test_input_and_output_token_limits_bind_and_charge_the_real_usage(make_envoy, mock):
    """input_tokens reserves the estimate, output_tokens min(max_tokens, output_reserve); each
    refuses the request its own reservation does not fit, and what stays charged is the real
    input side (input + cache read + cache write) and the real output."""
    key = "tg-pq-io"
    e = make_envoy(consumers_config([{"name": "io", "keys": [key], "limits": [
        {"input_tokens": 1000, "per": "day", "window": "fixed"},
        {"output_tokens": 200, "per": "day", "window": "fixed"}]}], OUTPUT_RESERVE), patch=with_request_ids)
    mock.reset()
    clear_of(next_midnight_utc, 30)
    c, g = claude(e, key), gpt(e, key)

    # A reserves its estimate and 50 output tokens; it really uses 850 input side, 150 output.
    mock.script("*", usage={"input": 700, "cache_read": 100, "cache_write": 50, "output": 150}, times=1)
    status, _, h = ask(c, max_tokens=50)
    assert status == 200
    # The binding tokens limit at admission: output, 150 of 200 left after the 50 reserved.
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("200", "150"), h
    w = eventually(lambda: windows(e, "io"), lambda w: w["output_tokens"]["used"] == 150)
    assert (w["input_tokens"]["used"], w["output_tokens"]["used"]) == (850, 150), w

    # B: a long prompt whose estimate cannot fit the 150 input tokens left.
    t_b = tid()
    long_prompt = [{"role": "user", "content": "tell me about token limits, please. " * 60}]
    status, body, h = ask(c, max_tokens=10, messages=long_prompt, t=t_b)
    midnight = seconds_to(next_midnight_utc(time.time()))
    assert status == 429, body
    assert body["error"]["type"] == "rate_limit_error"
    retry = int(h["retry-after"])
    assert about(retry, midnight), (retry, midnight)
    assert body["error"]["message"] == f"io: 1000 input_tokens per day; retry in {retry}s"
    assert h.get("x-should-retry") != "false"
    # Now input binds (150/1000 left beats 50/200), and it resets at midnight.
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("1000", "150"), h
    assert about(h["x-ratelimit-reset-tokens"], midnight)

    # C: a short prompt asking for 80 output tokens, 30 more than are left.
    status, err, h = chat(g, max_tokens=80)
    assert status == 429 and err.code == "rate_limit_exceeded", err
    assert err.body["message"] == f"io: 200 output_tokens per day; retry in {h['retry-after']}s"
    assert about(h["retry-after"], seconds_to(next_midnight_utc(time.time())))

    # D: 40 output tokens fit. It reserves 40 and uses 5: the 35 are refunded.
    mock.script("*", usage={"input": 20, "output": 5}, times=1)
    status, _, _ = chat(g, max_tokens=40)
    assert status == 200
    w = eventually(lambda: windows(e, "io"), lambda w: w["output_tokens"]["used"] == 155)
    assert (w["input_tokens"]["used"], w["output_tokens"]["used"]) == (870, 155), w
    assert (w["input_tokens"]["remaining"], w["output_tokens"]["remaining"]) == (130, 45), w
    # The refusals never reached the upstream.
    assert len(mock.requests()) == 2
    assert access_log(e, {t_b})[t_b]["decision"] == "tokens"


# ---- 2. a cost_usd limit -----------------------------------------------------------------------


def test_a_cost_limit_answers_429_when_the_priced_reservation_does_not_fit(make_envoy, mock):
    """claude-haiku-4-5 costs 1 / 5 / 1.25 / 0.1 USD per million input / output / cache write /
    cache read tokens (built-in table), so the mock's usage has an exact price in micro-dollars."""
    key = "tg-pq-cost"
    e = make_envoy(consumers_config([{"name": "budget", "keys": [key], "limits": [
        {"cost_usd": 0.015, "per": "day", "window": "fixed"}]}], 2000), patch=with_request_ids)
    mock.reset()
    clear_of(next_midnight_utc, 30)
    c = claude(e, key)

    # 1000·1 + 2000·5 + 800·1.25 + 1000·0.1 = 12100 micro-dollars.
    mock.script("*", usage={"input": 1000, "output": 2000, "cache_write": 800, "cache_read": 1000}, times=1)
    assert ask(c, max_tokens=1000)[0] == 200
    w = eventually(lambda: windows(e, "budget"), lambda w: w["cost_usd"]["used"] == 0.0121)
    assert (w["cost_usd"]["limit"], w["cost_usd"]["used"]) == (0.015, 0.0121), w

    # 1000 output tokens reserve 5000 micro-dollars: 2900 are left.
    t = tid()
    status, body, h = ask(c, max_tokens=1000, t=t)
    assert status == 429, body
    retry = int(h["retry-after"])
    assert about(retry, seconds_to(next_midnight_utc(time.time())))
    assert body["error"] == {"type": "rate_limit_error",
                             "message": f"budget: 0.015 USD per day; retry in {retry}s"}
    assert access_log(e, {t})[t]["decision"] == "cost"
    assert eventually(lambda: stat_sum(e, "tollgate_rejections_total", consumer="budget", reason="cost"),
                      lambda n: n == 1) == 1

    # 500 output tokens (2500 micro-dollars plus the input estimate) fit; 100 + 100 tokens
    # really cost 600, so 2300 are left, not 2900 - 2500 - estimate.
    t_c = tid()
    mock.script("*", usage={"input": 100, "output": 100}, times=1)
    assert ask(c, max_tokens=500, t=t_c)[0] == 200
    w = eventually(lambda: windows(e, "budget"), lambda w: w["cost_usd"]["used"] == 0.0127)
    assert w["cost_usd"]["used"] == 0.0127, w
    # 400 output tokens (2000 + estimate) fit only because C was charged its real price.
    t_e = tid()
    mock.script("*", usage={"input": 10, "output": 10}, times=1)
    assert ask(c, max_tokens=400, t=t_e)[0] == 200
    est = {k: int(v["estimate"]) for k, v in access_log(e, {t_c, t_e}).items()}
    assert 12100 + (2500 + est[t_c]) + (2000 + est[t_e]) > 15000
    micros = 12100 + 600 + 60
    assert eventually(lambda: stat_sum(e, "tollgate_cost_usd_micros_total", consumer="budget"),
                      lambda n: n == micros) == micros
    assert windows(e, "budget")["cost_usd"]["used"] == micros / 1e6


# ---- 3. per: month -----------------------------------------------------------------------------


def test_a_monthly_limit_binds_and_resets_on_the_first_of_next_month_utc(make_envoy, mock):
    key = "tg-pq-month"
    e = make_envoy(consumers_config([{"name": "monthly", "keys": [key], "limits": [
        {"tokens": 10_000_000, "per": "minute"},
        {"tokens": 3000, "per": "month", "window": "fixed"},
        {"requests": 1000, "per": "month"}]}], OUTPUT_RESERVE))
    mock.reset()
    clear_of(next_month_utc, 60)
    clear_of(lambda now: (math.floor(now / SLIDING_MONTH) + 1) * SLIDING_MONTH, 60)
    c = claude(e, key)

    mock.script("*", usage={"input": 2900, "output": 50}, times=1)
    status, _, h = ask(c, max_tokens=50)
    now = time.time()
    assert status == 200
    # Tokens: the calendar month binds (a sliver of 3000 used beats nothing of 10 M), and it
    # ends on the 1st at 00:00 UTC.
    assert h["x-ratelimit-limit-tokens"] == "3000", h
    assert about(h["x-ratelimit-reset-tokens"], next_month_utc(now) - now), (h, next_month_utc(now) - now)
    # Requests: a sliding month is 30-day windows counted from the epoch; what counts now has
    # left it at the end of the next one.
    assert h["x-ratelimit-limit-requests"] == "1000" and h["x-ratelimit-remaining-requests"] == "999"
    sliding_end = (math.floor(now / SLIDING_MONTH) + 2) * SLIDING_MONTH
    assert about(h["x-ratelimit-reset-requests"], sliding_end - now), h

    w = eventually(lambda: windows(e, "monthly"), lambda w: w["tokens"]["used"] == 2950)
    assert w["tokens"]["used"] == 2950 and w["tokens"]["per"] == "month", w
    assert about(w["tokens"]["reset_s"], next_month_utc(time.time()) - time.time())

    status, body, h = ask(c, max_tokens=50)
    now = time.time()
    assert status == 429, body
    retry = int(h["retry-after"])
    assert about(retry, next_month_utc(now) - now), (retry, next_month_utc(now) - now)
    assert body["error"]["message"] == f"monthly: 3000 tokens per month; retry in {retry}s"
    assert h["x-ratelimit-remaining-tokens"] == "50" and h.get("x-should-retry") != "false", h
    assert len(mock.requests()) == 1


# ---- 4. fixed windows rolling over ---------------------------------------------------------------


def test_a_fixed_second_window_refuses_until_its_boundary_then_admits(make_envoy, mock):
    key = "tg-pq-second"
    e = make_envoy(consumers_config([{"name": "persec", "keys": [key], "limits": [
        {"requests": 2, "per": "second", "window": "fixed"}]}], OUTPUT_RESERVE))
    mock.reset()
    g = gpt(e, key)
    chat(g)  # warm the connection and the worker
    for _ in range(5):
        # Start just after a second begins, so the three calls share one window.
        time.sleep(1.02 - time.time() % 1)
        started = time.time()
        outcomes = [chat(g) for _ in range(3)]
        if math.floor(time.time()) == math.floor(started):
            break
    else:
        pytest.fail("three calls never fitted in one second in five tries")
    assert [s for s, _, _ in outcomes] == [200, 200, 429], outcomes
    assert [h["x-ratelimit-remaining-requests"] for _, _, h in outcomes] == ["1", "0", "0"]
    assert outcomes[0][2]["x-ratelimit-reset-requests"] == "1"
    _, err, h = outcomes[2]
    assert h["retry-after"] == "1" and err.body["message"] == "persec: 2 requests per second; retry in 1s"
    boundary = math.floor(started) + 1
    time.sleep(max(0.0, boundary - time.time()) + 0.05)
    status, _, h = chat(g)
    assert status == 200 and h["x-ratelimit-remaining-requests"] == "1", h


MINUTE_LIMIT = 2


@pytest.fixture(scope="module", autouse=True)
def minute_window(mock, workdir):
    """A fixed minute window exhausted when this module starts: the test at the end of the
    file waits for its boundary while the other tests run (run alone, it waits it out)."""
    f = EnvoyFactory(mock, workdir)
    key = "tg-pq-minute"
    e = f(consumers_config([{"name": "perminute", "keys": [key], "limits": [
        {"requests": MINUTE_LIMIT, "per": "minute", "window": "fixed"}]}], OUTPUT_RESERVE),
        name="envoy-promises-minute")
    clear_of(lambda now: (math.floor(now / 60) + 1) * 60, 3)
    g = gpt(e, key)
    started = time.time()
    outcomes = [chat(g) for _ in range(MINUTE_LIMIT + 1)]
    refused_at = time.time()
    yield e, g, started, refused_at, outcomes
    f.close()


# ---- 5. anonymous ------------------------------------------------------------------------------


def test_keyless_callers_run_as_anonymous_on_the_pooled_key_or_get_401(make_envoy, mock, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    e = make_envoy(base_config(anonymous={"limits": [{"requests": 2, "per": "minute"}]}), patch=with_request_ids)
    mock.reset()
    keyless = claude(e, None)
    ids = [tid(), tid()]
    for t in ids:
        assert ask(keyless, t=t)[0] == 200
        seen = lower(record_of(mock, t)["headers"])
        assert seen["x-api-key"] == ANTHROPIC_1 and "authorization" not in seen, seen
    lines = access_log(e, set(ids))
    assert {(v["consumer"], v["account"]) for v in lines.values()} == {("anonymous", "anthropic-1")}
    # The third keyless call, and a call with a key tollgate does not know (anonymous too),
    # meet anonymous's limit.
    status, body, h = ask(keyless)
    assert status == 429 and body["error"]["message"].startswith("anonymous: 2 requests per minute; retry in")
    status, err, _ = chat(gpt(e, "sk-proj-someone-elses-key"))
    assert status == 429 and err.code == "rate_limit_exceeded", err
    assert len(mock.requests()) == 2
    assert windows(e, "anonymous")["requests"]["used"] == 2

    # With anonymous null, the same callers get 401 in their API's format.
    e = make_envoy(base_config(anonymous=None))
    mock.reset()
    status, body, _ = ask(claude(e, None))
    assert status == 401 and body["error"]["type"] == "authentication_error", body
    status, err, _ = chat(gpt(e, "sk-proj-someone-elses-key"))
    assert status == 401 and err.code == "invalid_api_key", err
    stranger = gemini(e, "AIza-someone-elses-key")
    with pytest.raises(genai_errors.ClientError) as gerr:
        stranger.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert gerr.value.code == 401 and gerr.value.status == "UNAUTHENTICATED"
    assert mock.requests() == []


# ---- 6. passthrough_paths ----------------------------------------------------------------------

USAGE_LOOKALIKE = ('{"data":[],"has_more":false,"cachedContents":[],'
                   '"usage":{"input_tokens":5000,"output_tokens":5000,"prompt_tokens":5000,'
                   '"completion_tokens":5000}}')


def test_passthrough_paths_go_unmetered_to_the_first_usable_account_of_their_api(make_envoy, mock):
    cfg = base_config(
        passthrough_paths=["/v1/messages/batches", "/v1/files", "/v1beta/cachedContents",
                           {"prefix": "/v1/skills", "api": "anthropic"}],
        selection={"strategy": "priority"})
    cfg["accounts"].insert(1, {"name": "anthropic-2", "provider": "anthropic",
                               "key_env": "TOLLGATE_ANTHROPIC_KEY_2"})
    e = make_envoy(cfg)
    mock.reset()
    for path in ("/v1/messages/batches", "/v1/files", "/v1beta/cachedContents", "/v1/skills"):
        mock.script("*", path=path, body=USAGE_LOOKALIKE)
    c, g, gm = claude(e), gpt(e), gemini(e)
    mock.script("*", usage={"input": 11, "output": 7}, times=1)
    assert ask(c)[0] == 200
    tokens = eventually(lambda: stat_sum(e, "tollgate_tokens_total", consumer="team-a"), lambda n: n == 18)
    assert tokens == 18

    def seen(path: str) -> dict:
        rec = mock.last(path)
        assert rec is not None and rec["path"].startswith(path), (path, rec)
        return lower(rec["headers"])

    # String entries: the API from the prefix; object entries: the API they name.
    c.messages.batches.list()
    h = seen("/v1/messages/batches")
    assert h["x-api-key"] == ANTHROPIC_1 and "authorization" not in h, h
    c.beta.skills.list()
    h = seen("/v1/skills")
    assert h["x-api-key"] == ANTHROPIC_1 and "authorization" not in h, h
    g.files.list()
    h = seen("/v1/files")
    assert h["authorization"] == f"Bearer {OPENAI_1}" and "x-api-key" not in h, h
    list(gm.caches.list())
    h = seen("/v1beta/cachedContents")
    assert h["x-goog-api-key"] == GEMINI_1, h
    # No metering: the usage in those answers was never counted.
    time.sleep(1.5)
    assert stat_sum(e, "tollgate_tokens_total", consumer="team-a") == 18
    # Identity still applies.
    with pytest.raises(openai.AuthenticationError):
        gpt(e, "not-a-tollgate-key").files.list()

    # anthropic-1 answers invalid key: disabled, so the first usable Anthropic account is now 2.
    mock.script(ANTHROPIC_1, status=401, error="invalid_key", times=1)
    assert ask(c)[0] == 401
    c.messages.batches.list()
    assert seen("/v1/messages/batches")["x-api-key"] == ANTHROPIC_2

    # Unlisted paths: 404 in the format of the API the path or the client's headers name.
    before = len(mock.requests())
    with pytest.raises(openai.NotFoundError) as oerr:
        g.batches.list()
    assert oerr.value.code == "not_found" and oerr.value.body["message"] == "GET /v1/batches is not served here"
    with pytest.raises(anthropic.NotFoundError) as aerr:
        c.user_profiles.list(extra_query={"secret": "s3cr3t"})
    assert aerr.value.body["error"] == {"type": "not_found_error",
                                        "message": "GET /v1/user_profiles is not served here"}
    with pytest.raises(genai_errors.ClientError) as gerr:
        gm.models.embed_content(model="gemini-embedding-001", contents="hi")
    assert gerr.value.code == 404 and gerr.value.status == "NOT_FOUND", gerr.value
    assert len(mock.requests()) == before


# ---- 7. no accounts: the caller's own key ------------------------------------------------------


def test_without_accounts_the_callers_own_key_goes_upstream_and_quotas_still_apply(make_envoy, mock):
    cfg = base_config(consumer_header="x-tollgate-consumer",
                      anonymous={"limits": [{"tokens": 1_000_000, "per": "minute"}]})
    cfg.pop("accounts")
    cfg["consumers"].append({"name": "own-team", "limits": [{"requests": 2, "per": "minute"}]})
    e = make_envoy(cfg, patch=with_request_ids)
    mock.reset()
    own_anthropic, own_openai, own_gemini = "sk-ant-callers-own-1111", "sk-proj-callers-own-2222", "AIza-callers-own-3333"

    # Named by the consumer header, on its own Anthropic key: untouched, metered, limited.
    c = claude(e, own_anthropic, default_headers={"x-tollgate-consumer": "own-team"})
    ids = [tid(), tid()]
    for t in ids:
        mock.script("*", usage={"input": 40, "output": 60}, times=1)
        assert ask(c, t=t)[0] == 200
        assert lower(record_of(mock, t)["headers"])["authorization"] == f"Bearer {own_anthropic}"
    assert eventually(lambda: stat_sum(e, "tollgate_tokens_total", consumer="own-team"),
                      lambda n: n == 200) == 200
    status, body, _ = ask(c)
    assert status == 429 and body["error"]["message"].startswith("own-team: 2 requests per minute"), body
    assert len(mock.requests()) == 2

    # Anonymous, on its own OpenAI and Gemini keys.
    t = tid()
    mock.script("*", usage={"input": 30, "output": 20}, times=1)
    assert chat(gpt(e, own_openai), t=t)[0] == 200
    assert lower(record_of(mock, t)["headers"])["authorization"] == f"Bearer {own_openai}"
    mock.script("*", usage={"input": 5, "output": 5}, times=1)
    gm = gemini(e, own_gemini)
    r = gm.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert r.text
    assert lower(mock.last("/v1beta/")["headers"])["x-goog-api-key"] == own_gemini
    assert eventually(lambda: stat_sum(e, "tollgate_tokens_total", consumer="anonymous"),
                      lambda n: n == 60) == 60
    lines = access_log(e, {t, *ids})
    assert [lines[i]["consumer"] for i in (*ids, t)] == ["own-team", "own-team", "anonymous"]

    # A tollgate key is never forwarded: alone (team-a's request goes with no credential),
    # beside the caller's own key (which still goes), or in Gemini's ?key=.
    alone, beside, query, query_beside = tid(), tid(), tid(), tid()
    assert ask(claude(e, KEY_A), t=alone)[0] == 200
    assert ask(claude(e, KEY_A, default_headers={"x-api-key": own_anthropic}), t=beside)[0] == 200
    for t, extra in ((query, {}), (query_beside, {"x-goog-api-key": own_gemini})):
        r = requests.post(e.url() + f"/v1beta/models/gemini-2.0-flash:generateContent?key={KEY_A}&alt=json",
                          headers={"x-test-id": t, **extra},
                          json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
        assert r.status_code == 200, r.text
    recs = {what: record_of(mock, t) for what, t in
            (("alone", alone), ("beside", beside), ("query", query), ("query_beside", query_beside))}
    for what, rec in recs.items():
        assert KEY_A not in json.dumps(rec["headers"]) + rec["path"], (what, rec["headers"], rec["path"])
        assert rec["path"].split("?")[1:] in ([], ["alt=json"]), rec["path"]
    first = lower(recs["alone"]["headers"])
    assert "authorization" not in first and "x-api-key" not in first, first
    assert lower(recs["beside"]["headers"])["x-api-key"] == own_anthropic
    assert lower(recs["query_beside"]["headers"])["x-goog-api-key"] == own_gemini


# ---- 4 (end of the file). a fixed minute window --------------------------------------------------


def test_a_fixed_minute_window_points_retry_after_at_its_boundary_and_rolls_over(minute_window):
    e, g, started, refused_at, outcomes = minute_window
    boundary = (math.floor(started / 60) + 1) * 60
    assert [s for s, _, _ in outcomes] == [200] * MINUTE_LIMIT + [429], outcomes
    assert about(outcomes[0][2]["x-ratelimit-reset-requests"], boundary - started, 1)
    _, err, h = outcomes[-1]
    retry = int(h["retry-after"])
    # Whole seconds to the boundary, rounded up, as of when the refusal was decided.
    assert math.floor(boundary - refused_at) <= retry <= math.ceil(boundary - started), (retry, boundary - refused_at)
    assert err.body["message"] == f"perminute: {MINUTE_LIMIT} requests per minute; retry in {retry}s"
    if seconds_to(boundary) > 1.5:
        time.sleep(seconds_to(boundary) - 1.2)
        status, _, h = chat(g)
        assert status == 429 and about(h["retry-after"], seconds_to(boundary), 1), h
    time.sleep(max(0.0, seconds_to(boundary)) + 0.2)
    status, _, h = chat(g)
    assert status == 200, h
    assert h["x-ratelimit-remaining-requests"] == str(MINUTE_LIMIT - 1)
    assert about(h["x-ratelimit-reset-requests"], seconds_to((math.floor(time.time() / 60) + 1) * 60), 1), h
