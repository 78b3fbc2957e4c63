"""Issue #18, the account pool's promises (SPEC "Configuration": `selection`, `accounts[]`;
"Accounts"), each exercised through real Envoy with the official SDKs as clients and asserted
as a figure: which pooled key the mock upstream saw, in which order and when, the
`retry-after` of tollgate's own 429, the usage API's `cooling_until`, the headers the client
got.

Most tests run the shipped failover config (`envoy/envoy-failover.yaml`: the accounts in the
upstream-stage instance, the route retrying 429/503/529); where a promise concerns the
single-stage setup (`envoy/envoy.yaml`) or the usage API, the test says so. Every sequence is
sent one request at a time, so "the mock's last request" is the one just sent.
"""

from __future__ import annotations

import datetime as dt
import time

import anthropic
import openai
import pytest
import requests

from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, base_config, stat_sum

MODEL = "claude-haiku-4-5"
A = {i: ACCOUNT_KEYS[f"TOLLGATE_ANTHROPIC_KEY_{i}"] for i in (1, 2, 3)}
O = {1: ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"], 2: ACCOUNT_KEYS["TOLLGATE_VLLM_KEY"]}
# Figures name accounts, never keys.
NAME = {**{k: f"anthropic-{i}" for i, k in A.items()}, **{k: f"openai-{i}" for i, k in O.items()}}
SESSION = "x-session-id"
# The consumer's own limits: the client sees these in `x-ratelimit-*`, never the provider's.
# The requests window is fixed per day, so `remaining-requests` counts down exactly.
CONSUMER_LIMITS = [{"tokens": 10_000_000, "per": "minute"}, {"requests": 1000, "per": "day", "window": "fixed"}]


# ---- setups ---------------------------------------------------------------------------------


def anth(i: int, **extra) -> dict:
    return {"name": f"anthropic-{i}", "provider": "anthropic", "key_env": f"TOLLGATE_ANTHROPIC_KEY_{i}", **extra}


def oai(i: int, **extra) -> dict:
    env = "TOLLGATE_OPENAI_KEY_1" if i == 1 else "TOLLGATE_VLLM_KEY"
    return {"name": f"openai-{i}", "provider": "openai", "key_env": env, **extra}


def selection(strategy: str, affinity: dict | None) -> dict:
    sel = {"strategy": strategy}
    if affinity:
        sel["affinity"] = affinity
    return sel


def failover(make_envoy, accounts: list[dict], strategy: str, affinity: dict | None = None):
    """The shipped failover config: identity, quotas and metering downstream; these accounts
    in the upstream stage, picked per retry attempt."""
    down = base_config(limits=CONSUMER_LIMITS)
    down.pop("accounts")
    up = {"stage": "upstream", "accounts": accounts, "selection": selection(strategy, affinity)}
    return make_envoy(down, shipped="envoy-failover.yaml", upstream=up)


def single(make_envoy, accounts: list[dict], strategy: str, affinity: dict | None = None):
    """The shipped single-stage config: one instance does everything."""
    return make_envoy(base_config(limits=CONSUMER_LIMITS, accounts=accounts,
                                  selection=selection(strategy, affinity)))


# ---- clients and figures --------------------------------------------------------------------


def claude(e) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=e.url(), api_key=KEY_A, max_retries=0, timeout=30)


def gpt(e) -> openai.OpenAI:
    return openai.OpenAI(base_url=e.url() + "/v1", api_key=KEY_A, max_retries=0, timeout=30)


def ask(c: anthropic.Anthropic, session: str | None = None, text: str = "hello"):
    """One Messages call, with the session header when given: the raw response (raises on an
    error status)."""
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": text}],
        extra_headers={SESSION: session} if session else {})
    assert raw.parse().content[0].text
    return raw


def served(mock, c: anthropic.Anthropic, session: str | None = None) -> str:
    """Sends one request; the account whose key the mock saw on the attempt that answered."""
    ask(c, session)
    rec = mock.last("/v1/messages")
    assert rec["status"] == 200, rec["status"]
    return NAME[rec["key"]]


def last_seq(mock) -> int:
    reqs = mock.requests()
    return reqs[-1]["seq"] if reqs else 0


def attempts(mock, since: int, path: str = "/v1/messages") -> list[tuple[str, int]]:
    """(account, status) of every attempt the mock saw after `since`, in order."""
    return [(NAME[r["key"]], r["status"]) for r in mock.requests(path, since=since)]


def usage_api(e) -> dict:
    r = requests.get(e.url() + "/tollgate/usage", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def accounts_view(e) -> dict[str, dict]:
    return {a["name"]: a for a in usage_api(e)["accounts"]}


def cooling_for(view: dict, now: float) -> float:
    """Seconds from `now` until the account's `cooling_until` (unix s)."""
    assert view["state"] == "cooling", view
    return view["cooling_until"] - now


def eventually(read, want, timeout: float = 5.0):
    """Polls `read()` until it equals `want` (counters flush about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def affinity_outcomes(e) -> dict[str, int]:
    return {o: stat_sum(e, "tollgate_affinity_total", outcome=o) for o in ("hit", "miss", "broken")}


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def clear_of_minute_boundary(margin_s: float = 8.0) -> None:
    """Exact figures of a per-minute limit assume one minute window holds the whole sequence."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.2)


def provider_headers(headers) -> list[str]:
    return [k for k in headers.keys() if k.lower().startswith("anthropic-ratelimit-")]


# ---- 1. affinity by header ------------------------------------------------------------------


def test_a_session_header_pins_one_account_while_other_sessions_spread(make_envoy, mock):
    e = failover(make_envoy, [anth(1), anth(2), anth(3)], "least_loaded",
                 affinity={"header": SESSION, "ttl": "5h"})
    mock.reset()
    c = claude(e)
    alpha = [served(mock, c, "alpha") for _ in range(6)]
    assert len(set(alpha)) == 1, alpha                  # six turns, one account
    pinned = alpha[0]
    # Six other sessions: least_loaded sends them to the two accounts alpha does not load.
    others = [served(mock, c, f"session-{i}") for i in range(6)]
    spread = {n: others.count(n) for n in ("anthropic-1", "anthropic-2", "anthropic-3")}
    assert spread[pinned] == 0 and sorted(spread.values()) == [0, 3, 3], (pinned, others)
    # Every session is still where it started, alpha on the busiest account included.
    assert served(mock, c, "alpha") == pinned
    assert [served(mock, c, f"session-{i}") for i in range(6)] == others
    # 6 + 6 first requests, 5 + 1 + 6 returning ones.
    want = {"hit": 12, "miss": 7, "broken": 0}
    assert eventually(lambda: affinity_outcomes(e), want) == want


# ---- 2. affinity ttl ------------------------------------------------------------------------


def test_a_pin_expires_after_its_ttl_and_round_robin_picks_the_session_afresh(make_envoy, mock):
    e = failover(make_envoy, [anth(1), anth(2)], "round_robin",
                 affinity={"header": SESSION, "ttl": "2s"})
    mock.reset()
    c = claude(e)
    # Pinned, the session skips round robin's turns (which would alternate 1, 2, 1).
    before = [served(mock, c, "s") for _ in range(3)]
    assert before == ["anthropic-1"] * 3, before
    time.sleep(3.0)                                     # the 2 s ttl runs out
    # Unpinned, the session takes round robin's next turn (counter 1: anthropic-2) and stays.
    after = [served(mock, c, "s") for _ in range(3)]
    assert after == ["anthropic-2"] * 3, after
    want = {"hit": 4, "miss": 2, "broken": 0}
    assert eventually(lambda: affinity_outcomes(e), want) == want


# ---- 3. max_sessions ------------------------------------------------------------------------


def sessions_sequence(mock, c) -> list[tuple[str, str]]:
    """s1 three times, s2 twice, then s3, s2, s1: (session, account) in order."""
    out = []
    for s in ["s1"] * 3 + ["s2"] * 2 + ["s3", "s2", "s1"]:
        out.append((s, served(mock, c, s)))
    return out


@pytest.mark.parametrize("max_sessions, s1_returns_to", [(2, "anthropic-2"), (64, "anthropic-1")])
def test_a_full_session_table_evicts_the_oldest_session_which_is_then_picked_afresh(
        make_envoy, mock, max_sessions, s1_returns_to):
    e = failover(make_envoy, [anth(1), anth(2)], "round_robin",
                 affinity={"header": SESSION, "ttl": "5h", "max_sessions": max_sessions})
    mock.reset()
    seq = sessions_sequence(mock, claude(e))
    # Round robin's counter moves only for unpinned picks: s1 takes turn 0, s2 turn 1, s3
    # turn 2 (anthropic-1). With two slots, s3 evicts s1 (its pin expires first); s2 stays.
    # s1 then takes turn 3 (anthropic-2) instead of its old account. With 64 slots it stays.
    assert seq == [("s1", "anthropic-1")] * 3 + [("s2", "anthropic-2")] * 2 + [
        ("s3", "anthropic-1"), ("s2", "anthropic-2"), ("s1", s1_returns_to)], seq


# ---- 4. least_loaded steered by the provider's headroom --------------------------------------


def test_least_loaded_follows_anthropic_headroom_and_the_client_sees_only_its_own_limits(make_envoy, mock):
    e = failover(make_envoy, [anth(1), anth(2)], "least_loaded")
    mock.reset()
    reset = rfc3339(time.time() + 120)
    mock.script(A[1], headers={"anthropic-ratelimit-requests-limit": "100", "anthropic-ratelimit-requests-remaining": "3",
                               "anthropic-ratelimit-tokens-limit": "100000",
                               "anthropic-ratelimit-tokens-remaining": "2000",
                               "anthropic-ratelimit-tokens-reset": reset})
    mock.script(A[2], headers={"anthropic-ratelimit-requests-limit": "100",
                               "anthropic-ratelimit-requests-remaining": "95",
                               "anthropic-ratelimit-tokens-limit": "100000",
                               "anthropic-ratelimit-tokens-remaining": "95000",
                               "anthropic-ratelimit-tokens-reset": reset})
    c = claude(e)
    picks, seen = [], []
    for _ in range(12):
        raw = ask(c)
        picks.append(NAME[mock.last("/v1/messages")["key"]])
        seen.append(raw.headers)
    # Nothing is known at first: load spreads the first two; then the headroom decides.
    assert sorted(picks[:2]) == ["anthropic-1", "anthropic-2"], picks
    assert picks[2:] == ["anthropic-2"] * 10, picks
    # The provider's report is read and removed; the client sees its own limits, exactly.
    for k, h in enumerate(seen, start=1):
        assert provider_headers(h) == [], provider_headers(h)
        assert h.get_list("x-ratelimit-limit-requests") == ["1000"]
        assert h.get_list("x-ratelimit-remaining-requests") == [str(1000 - k)]
        assert h.get_list("x-ratelimit-limit-tokens") == ["10000000"]


def test_least_loaded_follows_openai_headroom_and_the_client_sees_only_its_own_limits(make_envoy, mock):
    e = failover(make_envoy, [oai(1), oai(2)], "least_loaded")
    mock.reset()
    mock.script(O[1], headers={"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "2",
                               "x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "1500",
                               "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-reset-tokens": "30s"})
    mock.script(O[2], headers={"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "97",
                               "x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": "98000",
                               "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-reset-tokens": "30s"})
    c = gpt(e)
    picks, seen = [], []
    for _ in range(12):
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hello"}])
        assert raw.parse().choices[0].message.content
        picks.append(NAME[mock.last("/v1/chat/completions")["key"]])
        seen.append(raw.headers)
    assert sorted(picks[:2]) == ["openai-1", "openai-2"], picks
    assert picks[2:] == ["openai-2"] * 10, picks
    # Same header names as the provider's: the values must be the consumer's, and only them.
    for k, h in enumerate(seen, start=1):
        assert h.get_list("x-ratelimit-limit-requests") == ["1000"]
        assert h.get_list("x-ratelimit-remaining-requests") == [str(1000 - k)]
        assert h.get_list("x-ratelimit-limit-tokens") == ["10000000"]
        assert int(h["x-ratelimit-remaining-tokens"]) > 9_000_000, h["x-ratelimit-remaining-tokens"]
        assert h.get_list("x-ratelimit-reset-requests") != ["1m0s"]


# ---- 5. weight ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["round_robin", "least_loaded"])
def test_weights_one_and_three_split_the_requests_about_one_to_three(make_envoy, mock, strategy):
    e = failover(make_envoy, [anth(1), anth(2, weight=3)], strategy)
    mock.reset()
    c = claude(e)
    picks = [served(mock, c) for _ in range(40)]
    light = picks.count("anthropic-1")
    if strategy == "round_robin":
        # Account i owns weight_i consecutive turns of the counter: exactly 1, 3, 1, 3, ...
        assert picks == ["anthropic-1", "anthropic-2", "anthropic-2", "anthropic-2"] * 10, picks
    else:
        assert 7 <= light <= 13, (light, picks)
    assert light + picks.count("anthropic-2") == 40


# ---- 6. per-account limits ------------------------------------------------------------------


def test_an_accounts_own_limits_move_requests_on_and_then_refuse_with_429(make_envoy, mock):
    e = failover(make_envoy, [anth(1, limits=[{"requests": 2, "per": "minute"}]),
                              anth(2, limits=[{"requests": 1, "per": "minute"}])], "priority")
    mock.reset()
    c = claude(e)
    clear_of_minute_boundary()
    # Priority would send all to anthropic-1; its own limit of 2 a minute moves the third on.
    assert [served(mock, c) for _ in range(3)] == ["anthropic-1", "anthropic-1", "anthropic-2"]
    before, sent = last_seq(mock), time.time()
    with pytest.raises(anthropic.RateLimitError) as err:
        ask(c)
    answered = time.time()
    # SPEC "HTTP behaviour": every account cooling (here: out of its own limits) is a 429 with
    # `retry-after`, the earliest recovery, in the API's error format; the upstream is not
    # asked. The earliest is anthropic-1's: its sliding-window counter (epoch-aligned minutes,
    # the previous one weighted by what is left of it) has room for a third request once
    # half of its two have decayed, 30 s into the next minute; anthropic-2 needs all of it.
    assert attempts(mock, before) == []
    retry = int(err.value.response.headers["retry-after"])
    room = [60 - t % 60 + 30 for t in (answered, sent)]   # seconds, whole ones rounded up
    assert room[0] - 1 <= retry <= room[1] + 1, (retry, room)
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert "cooling" in err.value.body["error"]["message"]


def test_an_accounts_concurrency_lease_ends_with_each_attempt(make_envoy, mock):
    e = failover(make_envoy, [anth(1, limits=[{"concurrent": 1}]), anth(2)], "priority")
    mock.reset()
    c = claude(e)
    # One at a time, each request finds anthropic-1's single lease free again: Envoy runs no
    # access log for upstream filters, so the attempt's end must free it (not lease_ttl, 90 s).
    assert [served(mock, c) for _ in range(4)] == ["anthropic-1"] * 4


# ---- 7. failover of a stream ----------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 529])
def test_a_stream_refused_before_its_first_byte_fails_over_to_one_clean_stream(make_envoy, mock, status):
    e = failover(make_envoy, [anth(1), anth(2)], "priority")
    mock.reset()
    mock.script(A[1], status=status, headers={"retry-after": "30"} if status == 429 else {})
    mock.script(A[2], events=12, delay_ms=5, usage={"input": 30, "output": 12})
    before = last_seq(mock)
    raw = claude(e).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "stream please"}])
    assert raw.http_response.status_code == 200
    events = list(raw.parse())
    kinds = [ev.type for ev in events]
    deltas = [ev.delta.text for ev in events if ev.type == "content_block_delta"]
    # The mock saw both keys; the client one stream, whole, from the second account.
    assert attempts(mock, before) == [("anthropic-1", status), ("anthropic-2", 200)]
    assert kinds.count("message_start") == 1 and kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert len(deltas) == 12, deltas
    usage = next(ev.usage for ev in events if ev.type == "message_delta")
    assert usage.output_tokens == 12


# ---- 8. overload cooling --------------------------------------------------------------------


def test_529_and_503_overloaded_rest_an_account_for_ten_seconds(make_envoy, mock):
    e = failover(make_envoy, [anth(1), anth(2), anth(3)], "round_robin")
    mock.reset()
    mock.script(A[1], status=529, times=1)
    mock.script(A[2], status=503, times=1)
    c = claude(e)
    t0 = time.monotonic()
    # Turns 0, 1, 2: anthropic-1 answers 529, its retry anthropic-2 503, anthropic-3 serves.
    assert served(mock, c) == "anthropic-3"
    assert attempts(mock, 0) == [("anthropic-1", 529), ("anthropic-2", 503), ("anthropic-3", 200)]
    timeline = []                                       # (seconds since the 529, account)
    back: dict[str, float] = {}
    while len(back) < 2 and time.monotonic() - t0 < 20:
        name = served(mock, c)
        at = time.monotonic() - t0
        timeline.append((round(at, 1), name))
        if name != "anthropic-3":
            back.setdefault(name, at)
        time.sleep(0.4)
    # Both rest ~10 s (generous bounds: the machine is loaded), meanwhile anthropic-3 serves
    # every turn; then round robin reaches them again.
    assert set(back) == {"anthropic-1", "anthropic-2"}, timeline
    for name, at in back.items():
        assert 9.8 <= at <= 13.5, (name, at, timeline)
    resting = [n for at, n in timeline if at < 9.8]
    assert resting and set(resting) == {"anthropic-3"}, timeline


# ---- 9. reset headers -----------------------------------------------------------------------


def reset_cases(now: float) -> list[tuple[str, str, dict, int]]:
    """(case, api, headers of the upstream 429, seconds it must cool)."""
    epoch = str(int(now) + 150)
    return [
        ("unified rejected, epoch seconds", "anthropic",
         {"anthropic-ratelimit-unified-status": "rejected", "anthropic-ratelimit-unified-reset": epoch}, 150),
        ("unified reset alone, epoch seconds", "anthropic", {"anthropic-ratelimit-unified-reset": epoch}, 150),
        ("unified 5h window rejected, RFC 3339", "anthropic",
         {"anthropic-ratelimit-unified-status": "allowed", "anthropic-ratelimit-unified-5h-status": "rejected",
          "anthropic-ratelimit-unified-5h-reset": rfc3339(now + 240)}, 240),
        ("tokens used up, RFC 3339", "anthropic",
         {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": rfc3339(now + 200)}, 200),
        ("openai requests used up, 6m0s", "openai",
         {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360),
    ]


def refused_by_tollgate(e, api: str):
    """Sends one request that tollgate itself must refuse: its 429 error."""
    if api == "anthropic":
        with pytest.raises(anthropic.RateLimitError) as err:
            ask(claude(e))
    else:
        with pytest.raises(openai.RateLimitError) as err:
            gpt(e).chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                                           messages=[{"role": "user", "content": "hello"}])
    return err.value


def test_a_429_with_reset_headers_cools_the_account_until_that_time(make_envoy, mock):
    # Single stage (the client sees the provider's 429 once), one account per API, so that the
    # next request meets every account cooling; the admin reset starts each case afresh.
    e = single(make_envoy, [anth(1), oai(1)], "priority")
    mock.reset()
    path = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
    account = {"anthropic": "anthropic-1", "openai": "openai-1"}
    key = {"anthropic": A[1], "openai": O[1]}
    figures = {}
    for case, api, headers, cool_s in reset_cases(time.time()):
        r = requests.post(f"{e.url()}/tollgate/accounts/{account[api]}/reset",
                          headers={"x-api-key": ADMIN_KEY}, timeout=5)
        assert r.status_code == 200, r.text
        mock.script(key[api], status=429, headers=headers, times=1)
        first = refused_by_tollgate(e, api)             # the provider's own 429, passed on
        assert provider_headers(first.response.headers) == [], case
        assert first.response.headers.get("x-ratelimit-reset-requests") != "6m0s", case
        before = last_seq(mock)
        err = refused_by_tollgate(e, api)               # tollgate's: every account cools
        now = time.time()
        assert attempts(mock, before, path[api]) == [], case
        retry = int(err.response.headers["retry-after"])
        until = cooling_for(accounts_view(e)[account[api]], now)
        figures[case] = (retry, round(until))
        assert cool_s - 5 <= retry <= cool_s + 1 and cool_s - 5 <= until <= cool_s + 1, (case, retry, until)
    assert len(figures) == 5, figures


# ---- 10. an error event inside a 200 stream ---------------------------------------------------


@pytest.mark.parametrize("setup", ["single", "failover"])
def test_an_error_event_inside_a_200_stream_cools_the_account(make_envoy, mock, setup):
    build = single if setup == "single" else failover
    e = build(make_envoy, [anth(1), anth(2), anth(3)], "priority")
    mock.reset()
    mock.script(A[1], sse_error={"type": "overloaded_error", "after": 2}, times=1)
    mock.script(A[2], sse_error={"type": "rate_limit_error", "after": 2}, times=1)
    c = claude(e)
    before = last_seq(mock)
    for _ in range(2):
        stream = c.messages.create(model=MODEL, max_tokens=64, stream=True,
                                   messages=[{"role": "user", "content": "stream please"}])
        with pytest.raises(anthropic.APIStatusError):   # the SDK raises the error event
            for _ in stream:
                pass
    now = time.time()
    # Each stream came back 200; its error event cooled the account, so priority moved on.
    picks = [served(mock, c) for _ in range(3)]
    assert attempts(mock, before)[:2] == [("anthropic-1", 200), ("anthropic-2", 200)]
    assert picks == ["anthropic-3"] * 3, picks
    # The usage API shows both cooling: overloaded 10 s, rate limited (no reset known) 60 s.
    view = accounts_view(e)
    overloaded, limited = cooling_for(view["anthropic-1"], now), cooling_for(view["anthropic-2"], now)
    assert 6 <= overloaded <= 11 and 55 <= limited <= 61, (overloaded, limited)
    assert view["anthropic-3"]["state"] == "ok"
    assert usage_api(e)["rate_limited_accounts"] == 2
    # The admin reset ends a cooling at once, in either setup: priority picks anthropic-2 again.
    r = requests.post(e.url() + "/tollgate/accounts/anthropic-2/reset", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    assert r.status_code == 200 and r.json()["was"] == "cooling", r.text
    assert served(mock, c) == "anthropic-2"
    assert accounts_view(e)["anthropic-2"]["state"] == "ok"
