"""The operator's console (issue #21) through real Envoy with the official SDKs: refused
traffic counted by reason (the usage API's total equals Prometheus' `tollgate_requests_total`),
success/error rates and latency percentiles, the recent-request ring (newest first, names and
numbers, never a key), real model names in the usage API and in Prometheus labels (bounded by
`metrics.max_models`), account pause/resume behind the admin key, every series at 0 before
the first request, a 404 sent with a valid key counted under its consumer, and the dashboard
rendered by headless Chromium without the admin key in any URL."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest
import requests

from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, KEY_B, EnvoyFactory, base_config, sha
from test_admin import chromium, run_chromium, text_of, usage, wait_usage
from test_metrics import scrape, val

PATH = "/tollgate"
A1 = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
A2 = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_2"]
O1 = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]
BOGUS = "tg-console-bogus-key-0000ZZZZ"
USAGE = {"input": 40, "output": 8}
SECRETS = [*ACCOUNT_KEYS.values(), KEY_A, KEY_B, ADMIN_KEY, BOGUS]


def config(**overrides) -> dict:
    cfg = base_config(
        consumers=[
            {"name": "team-a", "keys": [KEY_A]},
            {"name": "team-b", "keys": [sha(KEY_B)],
             "models": ["claude-haiku-*", "gpt-4o-mini", "gemini-2.0-flash"],
             "limits": [{"requests": 2, "per": "minute"}]},
        ],
        accounts=[
            {"name": "anthropic-1", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_1"},
            {"name": "anthropic-2", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_2"},
            {"name": "openai-1", "provider": "openai", "key_env": "TOLLGATE_OPENAI_KEY_1"},
        ],
        selection={"strategy": "priority"},
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def console(mock, workdir):
    f = EnvoyFactory(mock, workdir)
    yield f(config(), name="envoy-console")
    f.close()


def admin(e, method: str, sub: str, key: str | None = ADMIN_KEY) -> requests.Response:
    headers = {"x-api-key": key} if key else {}
    return requests.request(method, e.url() + PATH + sub, headers=headers, timeout=10)


def claude(e, key=KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=e.url(), api_key=key, max_retries=0, timeout=20)


def gpt(e, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=e.url() + "/v1", api_key=key, max_retries=0, timeout=20)


def ask(e, model="claude-haiku-4-5", key=KEY_A):
    return claude(e, key).messages.create(model=model, max_tokens=16,
                                          messages=[{"role": "user", "content": "hi"}])


def requests_total(samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "tollgate_requests_total")


def rejections(samples) -> dict[tuple[str, str], float]:
    out = {}
    for (name, labels), v in samples.items():
        if name == "tollgate_rejections_total":
            d = dict(labels)
            out[(d["consumer"], d["reason"])] = v
    return out


def assert_no_secret(text: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{s[:6]}… appears"
        assert s[-8:] not in text, f"the tail of {s[:6]}… appears"


# ---------------------------------------------------------------- series defined at load


def test_every_series_exists_at_zero_before_any_request(make_envoy):
    e = make_envoy(config(), name="envoy-console-fresh")
    samples, _, text = scrape(e)
    for name, labels in [
        ("tollgate_failovers_total", {"account": "anthropic-1"}),
        ("tollgate_failovers_total", {"account": "openai-1"}),
        ("tollgate_account_state", {"account": "anthropic-2"}),
        ("tollgate_global_degraded_total", {}),
        ("tollgate_global_charges_total", {"outcome": "sent"}),
        ("tollgate_global_charges_total", {"outcome": "dropped"}),
        ("tollgate_affinity_total", {"outcome": "hit"}),
        ("tollgate_reconcile_dropped_total", {}),
        ("tollgate_rejections_total", {"consumer": "team-a", "reason": "tokens"}),
        ("tollgate_rejections_total", {"consumer": "team-b", "reason": "requests"}),
        ("tollgate_rejections_total", {"consumer": "unknown", "reason": "auth"}),
    ]:
        key = (name, frozenset(labels.items()))
        assert key in samples, f"{name}{labels} is not defined before its first event"
        assert samples[key] == 0.0, (key, samples[key])
    # Every consumer has a rejection series for every reason, all at 0, and no request ran.
    rej = rejections(samples)
    for consumer in ("team-a", "team-b", "unknown"):
        assert len([k for k in rej if k[0] == consumer]) == 14, consumer
    assert set(rej.values()) == {0.0}
    assert requests_total(samples) == 0
    assert_no_secret(text)


# ---------------------------------------------------------------- rejections, rates, ring


@pytest.fixture(scope="module")
def traffic(console, mock):
    """3 served team-a calls, 2 served + 1 over-limit team-b calls, 1 disallowed model, 2
    bogus keys, 1 404 sent with team-a's key: 10 requests, 5 refused."""
    mock.reset()
    mock.script(A1, usage=USAGE)
    before, _, _ = scrape(console)
    for _ in range(3):
        assert ask(console).usage.input_tokens == USAGE["input"]
    for _ in range(2):
        ask(console, key=KEY_B)
    with pytest.raises(anthropic.RateLimitError):
        ask(console, key=KEY_B)
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(console, model="claude-opus-4-1", key=KEY_B)
    for _ in range(2):
        with pytest.raises(anthropic.AuthenticationError):
            ask(console, key=BOGUS)
    r = requests.post(console.url() + "/v1/nope", headers={"x-api-key": KEY_A}, json={}, timeout=10)
    assert r.status_code == 404
    u = wait_usage(console, 10)
    after, _, _ = scrape(console)
    yield {"usage": u, "before": before, "after": after}
    mock.reset(only="scripts")


def test_refusals_are_counted_by_reason_and_the_totals_match_prometheus(console, traffic):
    u, before, after = traffic["usage"], traffic["before"], traffic["after"]
    by_reason = {r["reason"]: r["requests"] for r in u["rejections"]}
    assert by_reason == {"auth": 2, "requests": 1, "model": 1, "not_found": 1}
    assert u["served_requests"] == 5
    assert u["rejected_requests"] == 5
    assert u["total_requests"] == 10
    # The issue's complaint: the dashboard's total must be Prometheus' total.
    assert requests_total(after) - requests_total(before) == u["total_requests"]
    moved = {k: v - rejections(before).get(k, 0.0) for k, v in rejections(after).items()
             if v != rejections(before).get(k, 0.0)}
    assert moved == {("unknown", "auth"): 2, ("team-b", "requests"): 1, ("team-b", "model"): 1,
                     ("team-a", "not_found"): 1}, moved
    consumers = {c["name"]: c for c in u["consumers"]}
    assert (consumers["team-a"]["totals"]["requests"], consumers["team-a"]["rejected"]) == (3, 1)
    assert (consumers["team-b"]["totals"]["requests"], consumers["team-b"]["rejected"]) == (2, 2)
    assert consumers["unknown"]["rejected"] == 2
    assert u["requests_last_hour"] == 10
    assert u["last_hour"]["rejected"] == 5
    assert u["last_day"]["rejected"] == 5 and len(u["last_day"]["spans"]) == 288
    assert u["success_rate"] == pytest.approx(5 / 10, abs=1e-4)
    assert u["rejection_rate"] == pytest.approx(5 / 10, abs=1e-4)
    assert u["error_rate"] == 0


def test_a_404_sent_with_a_valid_key_counts_under_its_consumer(console, traffic):
    after = traffic["after"]
    assert val(after, "tollgate_rejections_total", consumer="team-a", reason="not_found") == 1
    assert val(after, "tollgate_rejections_total", consumer="unknown", reason="not_found") == 0
    assert val(after, "tollgate_requests_total", consumer="team-a", model="other", outcome="not_found") == 1


def test_the_recent_ring_shows_the_last_requests_newest_first_and_never_a_key(console, traffic):
    u = traffic["usage"]
    recent = u["recent"]
    assert len(recent) == 10
    times = [r["at_ms"] for r in recent]
    assert times == sorted(times, reverse=True)
    assert abs(times[0] / 1000 - time.time()) < 120
    # Newest first: the 404, the two bogus keys, the disallowed model, the over-limit call.
    head = [(r["consumer"], r["decision"], r["status"]) for r in recent[:5]]
    assert head == [("team-a", "not_found", 404), ("unknown", "auth", 401), ("unknown", "auth", 401),
                    ("team-b", "model", 403), ("team-b", "requests", 429)], head
    served = [r for r in recent if r["decision"] == "admitted"]
    assert len(served) == 5
    for r in served:
        assert r["status"] == 200 and r["account"] == "anthropic-1"
        assert r["model"] == "claude-haiku-4-5"
        assert r["tokens"] == USAGE["input"] + USAGE["output"]
        assert r["latency_ms"] >= 0
    assert all(r["account"] is None and r["tokens"] == 0 for r in recent[:5])
    assert set(recent[0]) == {"at_ms", "consumer", "model", "account", "status", "tokens",
                              "latency_ms", "decision"}
    assert_no_secret(json.dumps(u))


def test_the_recent_ring_keeps_only_the_newest_fifty(console, traffic):
    seen = usage(console)["total_requests"]
    for i in range(56):
        requests.post(console.url() + "/v1/messages", headers={"x-api-key": f"{BOGUS}{i}"},
                      json={"model": "claude-haiku-4-5", "max_tokens": 8, "messages": []}, timeout=10)
    ask(console)  # the newest
    u = wait_usage(console, seen + 57)
    assert u["total_requests"] == seen + 57
    recent = u["recent"]
    assert len(recent) == 50
    assert recent[0]["decision"] == "admitted" and recent[0]["consumer"] == "team-a"
    assert all(r["decision"] == "auth" and r["consumer"] == "unknown" for r in recent[1:])
    assert_no_secret(json.dumps(u))


def test_latency_percentiles_are_present_and_ordered(console, mock):
    mock.script(A1, usage=USAGE, first_byte_delay_ms=400, times=4)
    seen = usage(console)["served_requests"]
    for _ in range(4):
        ask(console)
    deadline = time.monotonic() + 8
    while True:
        u = usage(console)
        if u["served_requests"] >= seen + 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lat = u["latency_ms"]
    assert None not in lat.values(), lat
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"], lat
    assert lat["p99"] >= 400 * 7 / 8, lat
    assert u["average_response_time_ms"] > 0


# ---------------------------------------------------------------- model names


def test_model_names_are_real_in_the_usage_api_and_in_prometheus_labels(console, mock):
    mock.script("*", usage=USAGE)
    before, _, _ = scrape(console)
    ask(console, model="claude-haiku-4-5")
    gpt(console).chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
    gpt(console).chat.completions.create(model="rnd-unpriced-xyz", messages=[{"role": "user", "content": "hi"}])
    want = {"claude-haiku-4-5", "gpt-4_1-mini", "other"}
    deadline = time.monotonic() + 8
    while True:
        after, _, text = scrape(console)
        models = {dict(labels).get("model") for (name, labels), v in after.items()
                  if name == "tollgate_requests_total" and v != before.get((name, labels), 0.0)}
        top = {m["model"] for m in usage(console)["top_models"]}
        if (models == want and "gpt-4.1-mini" in top) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    # Only characters outside [A-Za-z0-9_-] are mapped: no glob, no `*`.
    assert models == want, models
    assert "claude-haiku-4_" not in text and "rnd-unpriced-xyz" not in text
    assert {"claude-haiku-4-5", "gpt-4.1-mini"} <= top, top
    assert "claude-haiku-*" not in top and "rnd-unpriced-xyz" not in top
    mock.reset(only="scripts")


def test_model_labels_stop_at_max_models_per_process(make_envoy, mock):
    # team-b's allow-list names gpt-4o-mini and gemini-2.0-flash exactly: listed first at load,
    # they take two of the four; the first two other names seen take the rest.
    e = make_envoy(config(metrics={"max_models": 4}), name="envoy-console-models")
    names = ["claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-sonnet-4-5", "claude-opus-4-1",
             "claude-haiku-4-5", "claude-3-5-haiku-latest"]
    for n in names:
        ask(e, model=n)
    time.sleep(1.5)
    samples, _, _ = scrape(e)
    labels = {dict(lbl).get("model") for (name, lbl), v in samples.items()
              if name == "tollgate_requests_total" and v > 0}
    assert labels == {"claude-haiku-4-5", "claude-haiku-4-5-20251001", "other"}, labels
    assert sum(v for (name, lbl), v in samples.items()
               if name == "tollgate_requests_total" and dict(lbl).get("model") == "other") == 3
    top = {m["model"]: m["requests"] for m in wait_usage(e, 6)["top_models"]}
    assert top == {"claude-haiku-4-5": 2, "claude-haiku-4-5-20251001": 1, "other": 3}, top


# ---------------------------------------------------------------- pause and resume


def test_pause_and_resume_change_which_account_serves(console, mock):
    mock.reset()
    mock.script("*", usage=USAGE)
    ask(console)
    assert mock.last("/v1/messages")["key"] == A1
    r = admin(console, "POST", "/accounts/anthropic-1/pause")
    assert r.status_code == 200, r.text
    assert r.json() == {"account": "anthropic-1", "state": "paused", "was": "ok"}
    for _ in range(3):
        ask(console)
        assert mock.last("/v1/messages")["key"] == A2, "a paused account is never picked"
    accounts = {a["name"]: a for a in usage(console)["accounts"]}
    assert accounts["anthropic-1"]["state"] == "paused"
    samples, _, _ = scrape(console)
    assert val(samples, "tollgate_account_state", account="anthropic-1") == 3
    # Every account of the API paused: 503, nothing goes upstream.
    assert admin(console, "POST", "/accounts/anthropic-2/pause").status_code == 200
    n = len(mock.requests("/v1/messages"))
    with pytest.raises(anthropic.APIStatusError) as err:
        ask(console)
    assert err.value.status_code == 503
    assert len(mock.requests("/v1/messages")) == n
    for name in ("anthropic-1", "anthropic-2"):
        r = admin(console, "POST", f"/accounts/{name}/resume")
        assert r.status_code == 200 and r.json()["state"] == "ok", r.text
    ask(console)
    assert mock.last("/v1/messages")["key"] == A1
    samples, _, _ = scrape(console)
    assert val(samples, "tollgate_account_state", account="anthropic-1") == 0
    mock.reset(only="scripts")


@pytest.mark.parametrize("action", ["pause", "resume", "reset"])
def test_account_actions_need_the_admin_key_a_known_name_and_post(console, action):
    sub = f"/accounts/anthropic-2/{action}"
    for key in (None, KEY_A, "not-the-admin-key"):
        r = admin(console, "POST", sub, key=key)
        assert r.status_code == 401, (key, r.text)
        assert r.headers.get("www-authenticate")
    r = admin(console, "POST", f"/accounts/nobody/{action}")
    assert r.status_code == 404 and "nobody" not in r.text
    for method in ("GET", "PUT", "DELETE"):
        r = admin(console, method, sub)
        assert r.status_code == 405 and r.headers.get("allow") == "POST", (method, r.status_code)
    assert {a["name"]: a["state"] for a in usage(console)["accounts"]}["anthropic-2"] == "ok"


# ---------------------------------------------------------------- dashboard in Chromium


class KeyProxy:
    """A loopback proxy that adds the admin key as a header, so the browser's URL never
    holds it (no `user:key@host`, no query)."""

    def __init__(self, upstream: str):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def forward(self):
                outer.asked.append(self.path)
                if not self.path.startswith(PATH):
                    # The browser's own asks (favicon.ico) would be traffic tollgate counts.
                    self.send_error(404)
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                req = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={"x-api-key": ADMIN_KEY})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        status, headers, data = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, data = e.code, e.headers, e.read()
                outer.paths.append(self.path)
                self.send_response(status)
                self.send_header("content-type", headers.get("content-type", "text/plain"))
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = forward

            def log_message(self, *args):
                pass

        self.paths: list[str] = []  # forwarded
        self.asked: list[str] = []  # everything the browser asked for
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_headless_chromium_shows_rejections_and_recent_requests(console, traffic, tmp_path):
    binary = chromium()
    time.sleep(1.5)  # every worker's facts flushed: the page and `u` see the same numbers
    u = usage(console)
    proxy = KeyProxy(console.url())
    try:
        page = proxy.url + PATH + "/"
        assert ADMIN_KEY not in page
        r = run_chromium(binary, tmp_path / "profile", "--dump-dom", page)
        dom = r.stdout
        assert "<html" in dom, f"chromium printed no DOM: {r.stderr[-2000:]}"
        assert text_of(dom, "status").startswith("updated"), text_of(dom, "status")
        # Refused traffic is on the page: the count, each reason, and the total with it.
        assert text_of(dom, "rejected_requests") == f"{u['rejected_requests']:,}"
        assert text_of(dom, "total_requests") == f"{u['total_requests']:,}"
        for reason in ("auth", "requests", "model", "not_found"):
            assert f'data-reason="{reason}"' in dom, reason
        # Recent requests: a row per entry, refusals and served ones.
        assert dom.count('data-decision="') == len(u["recent"])
        assert 'data-decision="admitted"' in dom and 'data-decision="auth"' in dom
        lat = text_of(dom, "latency")
        assert lat != "–" and lat.count("/") == 2, lat
        assert text_of(dom, "success_rate").endswith("%")
        assert ADMIN_KEY not in dom
        assert all(ADMIN_KEY not in p for p in proxy.paths)
        assert f"{PATH}/usage" in proxy.paths, proxy.paths
        assert proxy.asked == proxy.paths, "the page asks for nothing but the admin API (no favicon.ico)"

        shot = tmp_path / "console.png"
        r = run_chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1400,2200",
                         "--hide-scrollbars", page)
        assert shot.exists() and shot.stat().st_size > 20_000, r.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        artifacts = Path(__file__).resolve().parent / ".artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "console.png").write_bytes(shot.read_bytes())
    finally:
        proxy.close()


def test_a_forged_cross_site_post_riding_on_basic_auth_pauses_nothing(console):
    """A browser that signed in to the dashboard sends its Basic credentials with any site's
    form POST: an account action that carries only those must come from the same site."""
    sub = PATH + "/accounts/anthropic-2/pause"
    forged = {"origin": "https://evil.example", "sec-fetch-site": "cross-site",
              "content-type": "application/x-www-form-urlencoded"}
    r = requests.post(console.url() + sub, auth=("x", ADMIN_KEY), headers=forged, data="a=1", timeout=10)
    assert r.status_code == 403, r.text
    assert {a["name"]: a["state"] for a in usage(console)["accounts"]}["anthropic-2"] == "ok"
    # The dashboard's own request (same origin), and a client that sends the key itself.
    same = {"origin": console.url(), "sec-fetch-site": "same-origin"}
    r = requests.post(console.url() + sub, auth=("x", ADMIN_KEY), headers=same, timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text
    r = requests.post(console.url() + PATH + "/accounts/anthropic-2/resume",
                      headers={**forged, "x-api-key": ADMIN_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "ok", r.text
