"""The filter's own endpoints under `admin.path` (SPEC "Admin endpoints"): health without a
key, the usage API and the dashboard behind the admin key (x-api-key, Bearer or HTTP Basic,
never the URL), usage numbers that match known SDK traffic, no key anywhere in what they
show, and the dashboard rendered by headless Chromium from the live API."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import anthropic
import openai
import pytest
import requests

from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, KEY_B, base_config, sha

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / ".artifacts"
PATH = "/tollgate"

ANTHROPIC_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
OPENAI_ACCOUNT = ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"]

# What the mock reports per call, in tollgate's normalised terms.
A_USAGE = {"input": 100, "output": 20, "cache_read": 10, "cache_write": 5}
B_USAGE = {"input": 50, "output": 7}
A_CALLS, B_CALLS = 3, 2
PRICING = {
    "claude-haiku-*": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6},
}


def micros(usage: dict, price: dict) -> int:
    """What one call costs in micro-dollars (tollgate rounds each request up)."""
    exact = sum(usage.get(k, 0) * price.get(k, 0.0) for k in ("input", "output", "cache_read", "cache_write"))
    return -int(-exact // 1)


A_COST = A_CALLS * micros(A_USAGE, PRICING["claude-haiku-*"]) / 1e6
B_COST = B_CALLS * micros(B_USAGE, PRICING["gpt-4o-mini"]) / 1e6
A_TOKENS = A_CALLS * sum(A_USAGE.values())
B_TOKENS = B_CALLS * sum(B_USAGE.values())


def config() -> dict:
    return base_config(
        consumers=[
            # Fixed day windows, so the counted usage is exact (a sliding window would weigh
            # the previous minute); one sliding window to show the other kind.
            {"name": "team-a", "keys": [KEY_A], "limits": [
                {"tokens": 1_000_000, "per": "day", "window": "fixed"},
                {"requests": 1000, "per": "day", "window": "fixed"},
                {"cost_usd": 5.0, "per": "day", "window": "fixed"},
                {"tokens": 100_000, "per": "minute"},
                {"concurrent": 4},
            ]},
            {"name": "team-b", "keys": [sha(KEY_B)],
             "models": ["claude-haiku-*", "gpt-4o-mini", "gemini-2.0-flash"],
             "limits": [{"requests": 100, "per": "day", "window": "fixed"}]},
        ],
        pricing=PRICING,
    )


@pytest.fixture(scope="module")
def admin_envoy(mock, workdir):
    from conftest import EnvoyFactory

    f = EnvoyFactory(mock, workdir)
    yield f(config(), name="envoy-admin")
    f.close()


def url(e, sub: str = "") -> str:
    return e.url() + PATH + sub


def get(e, sub: str, **kw) -> requests.Response:
    kw.setdefault("timeout", 10)
    return requests.get(url(e, sub), **kw)


def usage(e) -> dict:
    r = get(e, "/usage", headers={"x-api-key": ADMIN_KEY})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def wait_usage(e, total_requests: int, timeout: float = 6.0) -> dict:
    """The usage JSON once it counts `total_requests` (workers merge their facts about once
    a second)."""
    deadline = time.monotonic() + timeout
    while True:
        u = usage(e)
        if u["total_requests"] >= total_requests or time.monotonic() > deadline:
            return u
        time.sleep(0.2)


def by_name(items: list[dict]) -> dict[str, dict]:
    return {i["name"]: i for i in items}


@pytest.fixture(scope="module")
def traffic(admin_envoy, mock):
    """Known SDK traffic: 3 Anthropic calls by team-a, 2 OpenAI calls by team-b."""
    mock.reset()
    mock.script(ANTHROPIC_ACCOUNT, usage=A_USAGE)
    mock.script(OPENAI_ACCOUNT, usage=B_USAGE)
    claude = anthropic.Anthropic(base_url=admin_envoy.url(), api_key=KEY_A, max_retries=0, timeout=20)
    gpt = openai.OpenAI(base_url=admin_envoy.url() + "/v1", api_key=KEY_B, max_retries=0, timeout=20)
    for i in range(A_CALLS):
        m = claude.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                   messages=[{"role": "user", "content": f"hello {i}"}])
        assert m.usage.input_tokens == A_USAGE["input"]
    for i in range(B_CALLS):
        c = gpt.chat.completions.create(model="gpt-4o-mini", max_tokens=64,
                                        messages=[{"role": "user", "content": f"hello {i}"}])
        assert c.usage.completion_tokens == B_USAGE["output"]
    yield wait_usage(admin_envoy, A_CALLS + B_CALLS)
    mock.reset(only="scripts")


# ---------------------------------------------------------------- access


def test_health_answers_without_a_key(admin_envoy):
    r = get(admin_envoy, "/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


@pytest.mark.parametrize("sub", ["/usage", "/", ""])
def test_usage_and_dashboard_ask_for_the_admin_key(admin_envoy, sub):
    r = get(admin_envoy, sub)
    assert r.status_code == 401
    assert r.headers.get("www-authenticate", "").lower().startswith("basic")
    assert ADMIN_KEY not in r.text


@pytest.mark.parametrize("how", ["x-api-key", "bearer", "basic"])
def test_usage_accepts_the_admin_key_in_each_header(admin_envoy, how):
    kw = {
        "x-api-key": {"headers": {"x-api-key": ADMIN_KEY}},
        "bearer": {"headers": {"authorization": f"Bearer {ADMIN_KEY}"}},
        "basic": {"auth": ("anyone", ADMIN_KEY)},
    }[how]
    r = get(admin_envoy, "/usage", **kw)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"total_requests", "consumers", "accounts", "top_models"} <= body.keys()


@pytest.mark.parametrize("kw", [
    {"headers": {"x-api-key": "not-the-admin-key"}},
    {"headers": {"x-api-key": KEY_A}},  # a consumer key is not an admin key
    {"auth": ("tollgate", "not-the-admin-key")},
    {"headers": {"authorization": f"Basic {ADMIN_KEY}"}},  # not base64 user:password
], ids=["wrong-key", "consumer-key", "wrong-basic-password", "malformed-basic"])
def test_usage_refuses_other_keys(admin_envoy, kw):
    r = get(admin_envoy, "/usage", **kw)
    assert r.status_code == 401
    assert r.headers.get("www-authenticate")


@pytest.mark.parametrize("query", [f"key={ADMIN_KEY}", f"api_key={ADMIN_KEY}&key={ADMIN_KEY}"])
def test_the_admin_key_is_never_accepted_in_the_url(admin_envoy, query):
    r = get(admin_envoy, f"/usage?{query}")
    assert r.status_code == 401, "an admin key in the URL ends up in logs and history"
    r = get(admin_envoy, f"/?{query}")
    assert r.status_code == 401


# ---------------------------------------------------------------- usage numbers


def test_usage_totals_and_windows_match_the_traffic(admin_envoy, traffic):
    u = traffic
    consumers = by_name(u["consumers"])

    a = consumers["team-a"]
    assert a["totals"]["requests"] == A_CALLS
    assert a["totals"]["errors"] == 0
    assert a["totals"]["input_tokens"] == A_CALLS * A_USAGE["input"]
    assert a["totals"]["output_tokens"] == A_CALLS * A_USAGE["output"]
    assert a["totals"]["cache_read_tokens"] == A_CALLS * A_USAGE["cache_read"]
    assert a["totals"]["cache_write_tokens"] == A_CALLS * A_USAGE["cache_write"]
    assert a["totals"]["tokens"] == A_TOKENS
    assert a["totals"]["cost_usd"] == pytest.approx(A_COST, abs=1e-6)

    windows = {(w["kind"], w["per"], w["window"]): w for w in a["windows"]}
    tok_day = windows[("tokens", "day", "fixed")]
    assert (tok_day["limit"], tok_day["used"], tok_day["remaining"]) == (1_000_000, A_TOKENS, 1_000_000 - A_TOKENS)
    assert 0 < tok_day["reset_s"] <= 86_400
    req_day = windows[("requests", "day", "fixed")]
    assert (req_day["used"], req_day["remaining"]) == (A_CALLS, 1000 - A_CALLS)
    cost_day = windows[("cost_usd", "day", "fixed")]
    assert cost_day["limit"] == pytest.approx(5.0)
    assert cost_day["used"] == pytest.approx(A_COST, abs=3e-6)
    tok_min = windows[("tokens", "minute", "sliding")]
    assert tok_min["used"] <= A_TOKENS and tok_min["used"] + tok_min["remaining"] == 100_000
    assert a["concurrency"] == {"in_use": 0, "limit": 4}

    b = consumers["team-b"]
    assert b["totals"]["requests"] == B_CALLS
    assert b["totals"]["input_tokens"] == B_CALLS * B_USAGE["input"]
    assert b["totals"]["output_tokens"] == B_CALLS * B_USAGE["output"]
    assert b["totals"]["tokens"] == B_TOKENS
    assert b["totals"]["cost_usd"] == pytest.approx(B_COST, abs=1e-6)
    assert [(w["kind"], w["used"]) for w in b["windows"]] == [("requests", B_CALLS)]
    assert b["concurrency"]["limit"] is None


def test_usage_analytics_match_the_traffic(admin_envoy, traffic):
    u = traffic
    n = A_CALLS + B_CALLS
    assert u["total_requests"] == n
    assert u["requests_last_hour"] == n
    assert u["total_tokens"] == A_TOKENS + B_TOKENS
    assert u["cost_estimate_usd"] == pytest.approx(A_COST + B_COST, abs=1e-6)
    assert u["average_response_time_ms"] > 0
    assert u["top_models"] == [
        {"model": "claude-haiku-4-5", "requests": A_CALLS, "tokens": A_TOKENS},
        {"model": "gpt-4o-mini", "requests": B_CALLS, "tokens": B_TOKENS},
    ]
    assert u["last_hour"]["requests"] == n
    assert u["last_hour"]["tokens"] == A_TOKENS + B_TOKENS
    assert len(u["last_hour"]["minutes"]) == 60
    assert sum(m["requests"] for m in u["last_hour"]["minutes"]) == n
    assert u["since_s"] is not None and abs(u["since_s"] - time.time()) < 120

    accounts = by_name(u["accounts"])
    assert set(accounts) == {"anthropic-1", "openai-1", "gemini-1"}
    assert accounts["anthropic-1"]["provider"] == "anthropic"
    assert all(a["state"] == "ok" and a["cooling_until"] is None for a in accounts.values())
    assert accounts["anthropic-1"]["requests"] == A_CALLS
    assert accounts["openai-1"]["requests"] == B_CALLS
    assert accounts["gemini-1"]["requests"] == 0
    assert u["active_accounts"] == 2
    assert u["rate_limited_accounts"] == 0


def test_usage_and_dashboard_never_show_a_key(admin_envoy, traffic):
    shown = get(admin_envoy, "/usage", headers={"x-api-key": ADMIN_KEY}).text
    shown += get(admin_envoy, "/", headers={"x-api-key": ADMIN_KEY}).text
    secrets = [*ACCOUNT_KEYS.values(), KEY_A, KEY_B, ADMIN_KEY]
    secrets += [hashlib.sha256(k.encode()).hexdigest() for k in (KEY_B, ADMIN_KEY)]
    for s in secrets:
        assert s not in shown, f"{s[:6]}… appears in the admin output"
        assert s[-10:] not in shown, f"the tail of {s[:6]}… appears in the admin output"


# ---------------------------------------------------------------- dashboard


def test_dashboard_is_one_self_contained_html_page(admin_envoy):
    for sub in ("/", ""):
        r = get(admin_envoy, sub, auth=("tollgate", ADMIN_KEY))
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        html = r.text
        assert html.lstrip().lower().startswith("<!doctype html>")
        assert '"/tollgate/usage"' in html
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset"



@pytest.mark.parametrize("accept, gzipped", [
    ("gzip, deflate, br, zstd", True),
    ("identity", False),
    ("gzip;q=0, br", False),
    (None, False),
])
def test_dashboard_is_gzip_only_for_a_client_that_takes_gzip(admin_envoy, accept, gzipped):
    """The page is stored deflated: a gzip client gets it as is, any other the same page
    inflated; the bytes of the page are the same either way."""
    headers = {"accept-encoding": accept}  # None: requests sends no accept-encoding at all
    r = requests.get(url(admin_envoy, "/"), auth=("tollgate", ADMIN_KEY), headers=headers,
                     timeout=10, stream=True)
    assert r.status_code == 200
    raw = r.raw.read(decode_content=False)
    assert r.headers.get("content-encoding") == ("gzip" if gzipped else None)
    assert "accept-encoding" in r.headers.get("vary", "").lower()
    page = gzip.decompress(raw) if gzipped else raw  # checks the CRC-32 and size
    plain = requests.get(url(admin_envoy, "/"), auth=("tollgate", ADMIN_KEY),
                         headers={"accept-encoding": "identity"}, timeout=10)
    assert page == plain.content
    assert page.startswith(b"<!doctype html>") and b'"/tollgate/usage"' in page

def chromium() -> str:
    """The Chromium binary, installed with apt-get when missing; skips when impossible."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True,
                           timeout=900, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
        except (OSError, subprocess.TimeoutExpired):
            pass
    path = shutil.which("chromium")
    if not path:
        pytest.skip("chromium is not installed and apt-get could not install it")
    return path


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"no #{element_id} in the dashboard"
    return m.group(1).strip()


def test_headless_chromium_renders_the_live_numbers(admin_envoy, traffic, tmp_path):
    binary = chromium()
    u = usage(admin_envoy)
    page = f"http://tollgate:{ADMIN_KEY}@127.0.0.1:{admin_envoy.listener_port()}{PATH}/"

    r = run_chromium(binary, tmp_path / "profile", "--dump-dom", page)
    dom = r.stdout
    assert "<html" in dom, f"chromium printed no DOM: {r.stderr[-2000:]}"
    status = text_of(dom, "status")
    assert status.startswith("updated"), f"the page did not load the usage API: {status!r}"
    assert text_of(dom, "total_requests") == f"{u['total_requests']:,}"
    assert text_of(dom, "total_tokens") == f"{u['total_tokens']:,}"
    assert text_of(dom, "requests_last_hour") == f"{u['requests_last_hour']:,}"
    assert text_of(dom, "rate_limited_accounts") == "0"
    for c in u["consumers"]:
        assert f'data-consumer="{c["name"]}"' in dom
    for a in u["accounts"]:
        assert f'data-account="{a["name"]}"' in dom
    for m in u["top_models"]:
        assert f">{m['model']}<" in dom
    assert ADMIN_KEY not in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    r = run_chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,900",
                     "--hide-scrollbars", page)
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
