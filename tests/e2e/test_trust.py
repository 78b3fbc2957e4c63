"""Trust boundaries (issue #17; SPEC "Trust boundaries"): what a careless or hostile client,
or a hostile upstream, tried against tollgate, and what it gets now. Each test names the row
of the review it answers; docs/security.md maps every row to its test.

The access log line of every request carries the caller's `x-test-id`, so a test reads the
filter's facts (`usage=`, `input_tokens=`, `output_tokens=`, `decision=`) of one request."""

from __future__ import annotations

import json
import re
import threading
import time

import anthropic
import openai
import pytest
import requests

from conftest import (ACCOUNT_KEYS, ADMIN_KEY, KEY_A, access_log as _access_log, base_config, rss_kb, stat_sum,
                      tid, with_request_ids)

MODEL = "claude-haiku-4-5"
AV = {"anthropic-version": "2023-06-01"}
ANTHROPIC_KEY = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
OPENAI_KEY = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]
GEMINI_KEY = ACCOUNT_KEYS["TOLLGATE_GEMINI_KEY_1"]

LOG_LINE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<code>\d+) consumer=(?P<consumer>\S*) .*?'
    r"account=(?P<account>\S*) estimate=(?P<estimate>\S*) input_tokens=(?P<input_tokens>\S*) "
    r"output_tokens=(?P<output_tokens>\S*) usage=(?P<usage>\S*) decision=(?P<decision>\S*) "
    r".*?id=(?P<id>\S*)\s*$")


def access_log(e, ids: set[str]) -> dict[str, dict]:
    return _access_log(e, ids, LOG_LINE)


def claude(e, key=KEY_A, **kw) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return anthropic.Anthropic(base_url=e.url(), api_key=key, **kw)


def gpt(e, key=KEY_A, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return openai.OpenAI(base_url=e.url() + "/v1", api_key=key, **kw)


def ask(c: anthropic.Anthropic, t: str | None = None, max_tokens: int = 50, **kw):
    """One Messages call: (status, body or error body, headers)."""
    try:
        raw = c.messages.with_raw_response.create(
            model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": "hello there"}],
            extra_headers={"x-test-id": t} if t else {}, **kw)
        return 200, raw.parse(), raw.headers
    except anthropic.APIStatusError as err:
        return err.status_code, err.body, err.response.headers


def usage_api(e) -> dict:
    r = requests.get(e.url() + "/tollgate/usage", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def account_view(e, name: str) -> dict:
    return next(a for a in usage_api(e)["accounts"] if a["name"] == name)




def headers_seen(mock, path: str) -> dict:
    rec = mock.last(path)
    assert rec is not None, f"the mock saw no {path}"
    return {k.lower(): v for k, v in rec["headers"].items()}


# ---- row 1: one header took the shared account out -------------------------------------------


def test_client_headers_never_retarget_the_pooled_key(make_envoy, mock):
    cfg = base_config(strip_request_headers=["x-billing-scope"])
    cfg["accounts"][1]["headers"] = {"openai-organization": "org-of-the-account"}
    e = make_envoy(cfg)
    mock.reset()
    c = gpt(e, organization="org-x", project="proj-y")
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                              extra_headers={"x-billing-scope": "someone-else"})
    seen = headers_seen(mock, "/v1/chat/completions")
    assert seen.get("openai-organization") == "org-of-the-account", seen
    assert "openai-project" not in seen and "x-billing-scope" not in seen, seen
    assert seen["authorization"] == f"Bearer {OPENAI_KEY}"
    r = requests.post(e.url() + "/v1beta/models/gemini-2.0-flash:generateContent",
                      headers={"x-goog-api-key": KEY_A, "x-goog-user-project": "someone-elses-project"},
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 200, r.text
    seen = headers_seen(mock, "/v1beta/models/")
    assert "x-goog-user-project" not in seen and seen["x-goog-api-key"] == GEMINI_KEY, seen


@pytest.mark.parametrize("status,error", [(401, "mismatched_organization"), (401, "invalid_project"),
                                          (403, "permission")])
def test_a_refusal_that_is_not_about_the_key_fails_that_request_only(make_envoy, mock, status, error):
    e = make_envoy(base_config(), name=f"envoy-trust-refusal-{error}")
    mock.reset()
    mock.script(OPENAI_KEY, status=status, error=error, times=3)
    c = gpt(e)
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == status
    # The shared account serves the next consumer at once.
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    assert account_view(e, "openai-1")["state"] == "ok"
    assert stat_sum(e, "tollgate_upstream_responses_total", account="openai-1", code=str(status)) == 3


def test_a_mismatched_organization_never_takes_out_the_failover_pool(make_envoy, mock):
    down = base_config()
    down.pop("accounts")
    up = {"stage": "upstream", "selection": {"strategy": "round_robin"},
          "accounts": [{"name": f"anthropic-{i}", "provider": "anthropic", "key_env": f"TOLLGATE_ANTHROPIC_KEY_{i}"}
                       for i in (1, 2, 3)]}
    e = make_envoy(down, shipped="envoy-failover.yaml", upstream=up)
    mock.reset()
    mock.script("*", status=403, error="permission", times=1)
    status, _, _ = ask(claude(e))
    assert status == 403
    refused_with = mock.last("/v1/messages")["key"]
    since = mock.last("/v1/messages")["seq"]
    for _ in range(6):
        assert ask(claude(e))[0] == 200
    # Round robin still reaches every account, the refused one included.
    served = {r["key"] for r in mock.requests("/v1/messages", since=since)}
    keys = {ACCOUNT_KEYS[f"TOLLGATE_ANTHROPIC_KEY_{i}"] for i in (1, 2, 3)}
    assert refused_with in keys and served == keys, served
    assert "is now disabled" not in e.log_text()


def test_an_invalid_key_disables_the_account_until_a_probe_or_a_reset(make_envoy, mock):
    cfg = base_config()
    cfg["accounts"][0]["disable_for"] = "2s"
    e = make_envoy(cfg)
    mock.reset()
    mock.script(ANTHROPIC_KEY, status=401, error="invalid_key", times=1)
    assert ask(claude(e))[0] == 401
    view = account_view(e, "anthropic-1")
    assert view["state"] == "disabled" and view["disabled_reason"], view
    # The only Anthropic account is out: 503, and the upstream is not asked.
    before = len(mock.requests("/v1/messages"))
    assert ask(claude(e))[0] == 503
    assert len(mock.requests("/v1/messages")) == before
    # After disable_for, one request probes the account; its success brings it back.
    time.sleep(2.2)
    assert ask(claude(e))[0] == 200
    assert account_view(e, "anthropic-1")["state"] == "ok"
    # Disabled again; the admin reset brings it back at once.
    mock.script(ANTHROPIC_KEY, status=401, error="invalid_key", times=1)
    assert ask(claude(e))[0] == 401
    assert account_view(e, "anthropic-1")["state"] == "disabled"
    r = requests.post(e.url() + "/tollgate/accounts/anthropic-1/reset", timeout=5)
    assert r.status_code == 401
    r = requests.post(e.url() + "/tollgate/accounts/anthropic-1/reset", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    assert r.status_code == 200, r.text
    assert account_view(e, "anthropic-1")["state"] == "ok"
    assert ask(claude(e))[0] == 200
    r = requests.post(e.url() + "/tollgate/accounts/nobody/reset", headers={"x-api-key": ADMIN_KEY}, timeout=5)
    assert r.status_code == 404


# ---- row 2: accept-encoding: br switched metering off -----------------------------------------


def test_a_client_cannot_switch_off_metering_with_an_encoding(make_envoy, mock):
    e = make_envoy(base_config(estimate={"output_reserve": 300}), patch=with_request_ids)
    mock.reset()
    usage = {"input": 31, "output": 77}
    mock.script("*", encoding="negotiate", usage=usage, times=2)
    ids = {}
    for enc in ("br", "zstd, br;q=0.9"):
        t = tid()
        r = requests.post(e.url() + "/v1/messages", headers={"x-api-key": KEY_A, **AV, "accept-encoding": enc,
                                                             "x-test-id": t},
                          json={"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
                          timeout=10)
        assert r.status_code == 200, r.text
        ids[t] = enc
        # What went upstream allows only codings the meter decodes.
        assert headers_seen(mock, "/v1/messages")["accept-encoding"] == "identity"
    # An upstream that compresses anyway with a coding tollgate cannot read: counted from the
    # estimate, flagged, never 0 output.
    mock.script("*", encoding="br", usage=usage, times=1)
    t_br = tid()
    r = requests.post(e.url() + "/v1/messages", headers={"x-api-key": KEY_A, **AV, "x-test-id": t_br},
                      json={"model": MODEL, "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]},
                      timeout=10)
    assert r.status_code == 200
    lines = access_log(e, set(ids) | {t_br})
    for t in ids:
        assert lines[t]["usage"] == "reported", lines[t]
        assert (int(lines[t]["input_tokens"]), int(lines[t]["output_tokens"])) == (31, 77), lines[t]
    br = lines[t_br]
    assert br["usage"] == "undecodable", br
    assert int(br["output_tokens"]) == 300, br  # the reserved output (output_reserve)
    assert int(br["input_tokens"]) == int(br["estimate"]) > 0, br


# ---- row 3: duplicate policy keys ---------------------------------------------------------------


@pytest.mark.parametrize("body,key", [
    ('{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true,"include_usage":false},'
     '"messages":[{"role":"user","content":"hi"}]}', "include_usage"),
    ('{"model":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}', "model"),
    ('{"model":"gpt-4o-mini","max_tokens":5,"max_tokens":50000,"messages":[{"role":"user","content":"hi"}]}',
     "max_tokens"),
    ('{"model":"gpt-4o-mini","mod\\u0065l":"gpt-4o","messages":[{"role":"user","content":"hi"}]}', "model"),
])
def test_a_repeated_policy_key_is_refused(envoy, mock, body, key):
    mock.reset()
    r = requests.post(envoy.url() + "/v1/chat/completions", data=body,
                      headers={"authorization": f"Bearer {KEY_A}", "content-type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == f'duplicate key "{key}"', r.text
    assert not mock.requests()


# ---- row 5: absurd usage numbers ---------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1e30", "18446744073709551616", "-5", "1.5", '"12"', "100000001"])
def test_absurd_usage_is_counted_from_the_estimate_and_saturates_nothing(make_envoy, mock, raw):
    e = make_envoy(base_config(estimate={"output_reserve": 200},
                               limits=[{"tokens": 1_000_000, "per": "hour"}]), patch=with_request_ids)
    mock.reset()
    mock.script("*", usage={"input": 20, "output": 10}, usage_raw={"output": raw}, times=1)
    t = tid()
    status, _, _ = ask(claude(e), t, max_tokens=100)
    assert status == 200
    line = access_log(e, {t})[t]
    assert line["usage"] == "invalid", line
    assert 0 < int(line["output_tokens"]) <= 200, line
    # The consumer is not refused afterwards and no total is pinned.
    t2 = tid()
    assert ask(claude(e), t2)[0] == 200
    report = usage_api(e)
    assert report["total_tokens"] < 10_000, report["total_tokens"]
    team = next(c for c in report["consumers"] if c["name"] == "team-a")
    assert team["totals"]["output_tokens"] <= 400, team["totals"]
    assert stat_sum(e, "tollgate_tokens_total", consumer="team-a") < 10_000


# ---- row 6: chunked bodies past Envoy's own buffer ---------------------------------------------


def test_every_over_limit_body_gets_413_in_the_api_format_chunked_included(envoy, mock):
    mock.reset()
    block = b"x" * (1 << 20)
    for mb in (33, 40, 64, 100):
        def chunks():
            yield b'{"model":"claude-haiku-4-5","max_tokens":5,"messages":[{"role":"user","content":"'
            for _ in range(mb):
                yield block
            yield b'"}]}'
        r = requests.post(envoy.url() + "/v1/messages", data=chunks(), timeout=60,
                          headers={"x-api-key": KEY_A, **AV, "content-type": "application/json"})
        assert r.status_code == 413, (mb, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/json"), (mb, r.headers)
        assert r.json()["error"]["type"] == "request_too_large", (mb, r.text)
    assert not mock.requests()


# ---- row 8: the pooled key echoed back ----------------------------------------------------------


@pytest.mark.parametrize("where", [True, "late"])
def test_an_upstream_that_echoes_the_pooled_key_never_shows_it(envoy, mock, where):
    mock.reset()
    mock.script(OPENAI_KEY, status=401, error="invalid_key", echo_key=where, times=1)
    r = requests.post(envoy.url() + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY_A}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 401
    assert OPENAI_KEY not in r.text and OPENAI_KEY not in json.dumps(dict(r.headers)), r.text[-300:]
    assert "sk-proj-" in r.headers.get("x-echo", "") and "BBBB" in r.text
    requests.post(envoy.url() + "/tollgate/accounts/openai-1/reset", headers={"x-api-key": ADMIN_KEY}, timeout=5)


def test_a_404_never_repeats_path_parameters_or_the_query(envoy, mock):
    mock.reset()
    for path in ("/v1/messages;key=SECRET-123", "/v1/nothing?key=SECRET-123", "/v1/nothing;x=SECRET-123"):
        r = requests.post(envoy.url() + path, headers={"x-api-key": KEY_A, **AV}, json={}, timeout=10)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "SECRET-123" not in r.text, (path, r.text)
    assert not mock.requests()


# ---- row 9: huge compressed and plain responses ------------------------------------------------


def test_usage_at_the_end_of_a_1gb_gzip_body_is_counted(make_envoy, mock):
    e = make_envoy(base_config(), patch=with_request_ids, name="envoy-trust-gzip")
    mock.reset()
    mock.script("*", gzip_bytes=1_000_000_000, usage={"input": 12, "output": 777}, times=1)
    t = tid()
    started = time.monotonic()
    with requests.post(e.url() + "/v1/messages", stream=True, timeout=300,
                       headers={"x-api-key": KEY_A, **AV, "accept-encoding": "gzip", "x-test-id": t},
                       json={"model": MODEL, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        wire = sum(len(c) for c in r.raw.stream(1 << 20, decode_content=False))
    took = time.monotonic() - started
    line = access_log(e, {t})[t]
    print(f"\n[trust gzip] 1 GB decoded from {wire / 1e6:.1f} MB on the wire in {took:.1f}s: "
          f"usage={line['usage']} output_tokens={line['output_tokens']}")
    assert line["usage"] == "reported", line
    assert (int(line["input_tokens"]), int(line["output_tokens"])) == (12, 777), line




def _without_tollgate(cfg: dict) -> None:
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hf = f["typed_config"].get("http_filters")
                if hf:
                    f["typed_config"]["http_filters"] = [h for h in hf if h["name"] != "envoy.filters.http.wasm"]


def _heap_kb(e) -> int:
    """Envoy's own heap in use (tcmalloc's `allocated`), which the VMs' linear memory is not."""
    return int(requests.get(e.admin + "/memory", timeout=5).json()["allocated"]) // 1024


def _six_parallel(e, size: int) -> tuple[int, int]:
    """RSS before and after six parallel `size`-byte responses read to the end; also checks
    that the VMs' own memory (RSS less Envoy's heap in use) grew by at most 50 MiB."""
    before = rss_kb(e)
    vm_before = before - _heap_kb(e)
    got = []

    def one():
        with requests.post(e.url() + "/v1/messages", stream=True, timeout=300,
                           headers={"x-api-key": KEY_A, **AV},
                           json={"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}) as r:
            got.append((r.status_code, sum(len(c) for c in r.iter_content(1 << 20))))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(st == 200 and n >= size for st, n in got), got
    after = rss_kb(e)
    vm_after = after - _heap_kb(e)
    print(f"\n[trust rss] {e.name}: RSS less Envoy's heap {vm_before / 1024:.0f} -> {vm_after / 1024:.0f} MiB")
    assert vm_after - vm_before <= 50 * 1024, (e.name, vm_before, vm_after)
    return before, after


def test_six_parallel_300mb_responses_grow_envoy_no_more_than_plain_envoy(make_envoy, mock):
    size = 300_000_000
    mock.reset()
    mock.script("*", body_bytes=size, usage={"input": 12, "output": 777})
    plain = make_envoy(base_config(), patch=_without_tollgate, name="envoy-trust-plain")
    tg = make_envoy(base_config(), name="envoy-trust-rss")
    # Warm both (first request, worker VMs and buffers).
    for e in (plain, tg):
        r = requests.post(e.url() + "/v1/messages", headers={"x-api-key": KEY_A, **AV}, timeout=60,
                          json={"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    p0, p1 = _six_parallel(plain, size)
    t0, t1 = _six_parallel(tg, size)
    grow_plain, grow_tg = (p1 - p0) / 1024, (t1 - t0) / 1024
    print(f"\n[trust rss] six parallel 300 MB responses: plain Envoy {p0 / 1024:.0f} -> {p1 / 1024:.0f} MiB "
          f"(+{grow_plain:.0f}), tollgate {t0 / 1024:.0f} -> {t1 / 1024:.0f} MiB (+{grow_tg:.0f})")
    assert grow_tg <= grow_plain + 50, (grow_plain, grow_tg)
    # Every response was metered to its end (the other worker's facts arrive within a second).
    deadline = time.monotonic() + 5
    while True:
        team = next(c for c in usage_api(tg)["consumers"] if c["name"] == "team-a")
        if team["totals"]["requests"] == 7 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert team["totals"]["output_tokens"] == 7 * 777, team["totals"]


# ---- row 11: contention ------------------------------------------------------------------------


def test_contention_on_one_consumer_is_never_a_refusal(make_envoy, mock):
    e = make_envoy(base_config(limits=[{"tokens": 100_000_000, "per": "minute"},
                                       {"requests": 100_000, "per": "minute"}]), name="envoy-trust-contention")
    mock.reset()
    results = []
    lock = threading.Lock()

    def one():
        c = claude(e)
        st = ask(c, max_tokens=10)[0]
        with lock:
            results.append(st)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results.count(200) == 200, {s: results.count(s) for s in set(results)}
    assert "quota state is busy" not in e.log_text()


# ---- row 12: refused upstream requests -----------------------------------------------------------


def test_refused_upstream_requests_cost_no_tokens_but_count_as_requests(make_envoy, mock):
    cfg = base_config(limits=[{"tokens": 100_000, "per": "hour"}, {"cost_usd": 5.0, "per": "hour"},
                              {"requests": 1000, "per": "hour"}], selection={"strategy": "priority"})
    # A 529 cools the first account: the 429 comes from the second.
    cfg["accounts"].insert(1, {"name": "anthropic-2", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_2"})
    e = make_envoy(cfg, patch=with_request_ids, name="envoy-trust-refused")
    mock.reset()
    ids = []
    for status in (400, 500, 529, 429):
        mock.script("*", status=status, times=1)
        t = tid()
        ids.append(t)
        assert ask(claude(e), t)[0] == status
    lines = access_log(e, set(ids))
    for t in ids:
        assert lines[t]["usage"] == "refused", lines[t]
        assert (lines[t]["input_tokens"], lines[t]["output_tokens"]) == ("0", "0"), lines[t]
    consumer = next(c for c in usage_api(e)["consumers"] if c["name"] == "team-a")
    used = {w.get("unit", w.get("kind", str(i))): w["used"] for i, w in enumerate(consumer["windows"])}
    assert sorted(used.values()) == [0, 0, 4], consumer["windows"]
    assert stat_sum(e, "tollgate_tokens_total", consumer="team-a") == 0
    assert stat_sum(e, "tollgate_requests_total", consumer="team-a", outcome="admitted") == 4


# ---- row 10: models without a price under a budget ------------------------------------------------


def test_a_budget_binds_on_every_model(make_envoy, mock):
    e = make_envoy(base_config(limits=[{"cost_usd": 5.0, "per": "hour"}]), name="envoy-trust-budget")
    mock.reset()
    mock.script("*", usage={"input": 1000, "output": 1000})
    before = stat_sum(e, "tollgate_cost_usd_micros_total", consumer="team-a")
    # Gemini, embeddings and o-series are priced: each costs something against the budget.
    r = requests.post(e.url() + "/v1beta/models/gemini-2.5-pro:generateContent", headers={"x-goog-api-key": KEY_A},
                      json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, timeout=10)
    assert r.status_code == 200, r.text
    gemini = stat_sum(e, "tollgate_cost_usd_micros_total", consumer="team-a")
    assert gemini > before, (before, gemini)
    c = gpt(e)
    c.embeddings.create(model="text-embedding-3-small", input="hello")
    embed = stat_sum(e, "tollgate_cost_usd_micros_total", consumer="team-a")
    assert embed > gemini, (gemini, embed)
    c.chat.completions.create(model="o1", messages=[{"role": "user", "content": "hi"}])
    assert stat_sum(e, "tollgate_cost_usd_micros_total", consumer="team-a") > embed
    # A model with no price is refused, never free.
    with pytest.raises(openai.PermissionDeniedError) as err:
        c.chat.completions.create(model="my-own-finetune", messages=[{"role": "user", "content": "hi"}])
    assert "has no price" in err.value.body["message"], err.value.body
    assert all(r_["model"] != "my-own-finetune" for r_ in mock.requests("/v1/chat/completions"))
