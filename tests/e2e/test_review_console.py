"""A hostile review of the console (issue #21) through real Envoy with the official SDKs: a
model name with markup that an allow-list glob admits stays text on the dashboard, the
dashboard cannot be framed by another site (a framed page's clicks would pass the cross-site
check), and account actions reached by path tricks, other methods or another site's page
change nothing."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import ADMIN_KEY, KEY_B
from test_admin import chromium, run_chromium, text_of, usage
from test_console import PATH, USAGE, KeyProxy, ask, config

MARKUP = "claude-haiku-<img src=x onerror=document.title='xss'>"


@pytest.fixture(scope="module")
def review(mock, workdir):
    from conftest import EnvoyFactory

    f = EnvoyFactory(mock, workdir)
    yield f(config(), name="envoy-review-console")
    f.close()


def states(e) -> dict[str, str]:
    return {a["name"]: a["state"] for a in usage(e)["accounts"]}


def test_a_model_name_with_markup_is_text_on_the_dashboard(review, mock, tmp_path):
    mock.script("*", usage=USAGE)
    # team-b's allow-list has `claude-haiku-*`: the name is admitted, labelled and shown.
    ask(review, model=MARKUP, key=KEY_B)
    time.sleep(1.5)
    u = usage(review)
    assert MARKUP in {m["model"] for m in u["top_models"]}, u["top_models"]
    binary = chromium()
    proxy = KeyProxy(review.url())
    try:
        r = run_chromium(binary, tmp_path / "profile", "--dump-dom", proxy.url + PATH + "/")
        dom = r.stdout
        assert "<html" in dom, f"chromium printed no DOM: {r.stderr[-2000:]}"
        assert text_of(dom, "status").startswith("updated"), text_of(dom, "status")
        assert "<img" not in dom and "&lt;img src=x" in dom, dom[-3000:]
        assert "<title>xss</title>" not in dom
    finally:
        proxy.close()
    mock.reset(only="scripts")


@pytest.mark.parametrize("accept", ["gzip", "identity"])
def test_the_dashboard_cannot_be_framed_by_another_site(review, accept):
    r = requests.get(review.url() + PATH + "/", auth=("x", ADMIN_KEY),
                     headers={"accept-encoding": accept}, timeout=10)
    assert r.status_code == 200 and "<html" in r.text
    assert r.headers.get("x-frame-options") == "DENY"
    assert r.headers.get("content-security-policy") == "frame-ancestors 'none'"


@pytest.mark.parametrize("sub", [
    "/accounts/ANTHROPIC-2/pause",
    "/accounts/anthropic-2/PAUSE",
    "/accounts/anthropic-2/pause/",
    "/accounts/anthropic-2/pause;x",
    "/accounts/anthropic-2/pause%3Bx",
    "/accounts/anthropic-2%2Fpause",
    "/accounts/anthropic-2/pause%00",
    "/accounts/anthropic-2 /pause",
])
def test_path_tricks_pause_nothing(review, sub):
    try:
        r = requests.post(review.url() + PATH + sub, headers={"x-api-key": ADMIN_KEY}, timeout=10)
        assert r.status_code in (400, 404), (sub, r.status_code, r.text)
        assert states(review)["anthropic-2"] == "ok"
    finally:
        resume(review)


@pytest.mark.parametrize("sub", [
    "/accounts/./anthropic-2/pause",
    "/accounts/x/../anthropic-2/pause",
    "/accounts//anthropic-2/pause",
])
def test_dot_segments_and_double_slashes_name_the_same_account_once_envoy_normalised(review, sub):
    """The shipped configs' `normalize_path` and `merge_slashes` make these the plain path
    before the filter sees it: the same URL (RFC 3986), the same account, the admin key still
    needed."""
    try:
        r = requests.post(review.url() + PATH + sub, headers={"x-api-key": "nope"}, timeout=10)
        assert r.status_code == 401
        r = requests.post(review.url() + PATH + sub, headers={"x-api-key": ADMIN_KEY}, timeout=10)
        assert r.status_code == 200 and r.json() == {
            "account": "anthropic-2", "state": "paused", "was": "ok"}, r.text
    finally:
        resume(review)


def resume(e) -> None:
    requests.post(e.url() + PATH + "/accounts/anthropic-2/resume",
                  headers={"x-api-key": ADMIN_KEY}, timeout=10)


@pytest.mark.parametrize("headers", [
    {"sec-fetch-site": "same-site", "origin": "https://other.example"},
    {"sec-fetch-site": "cross-site"},
    {"origin": "null"},
    {"origin": "http://127.0.0.1:1"},
    {"sec-fetch-site": "Cross-Site"},
])
def test_another_pages_request_riding_on_basic_auth_pauses_nothing(review, headers):
    try:
        for method in ("POST", "post"):
            r = requests.request(method, review.url() + PATH + "/accounts/anthropic-2/pause",
                                 auth=("x", ADMIN_KEY), headers=headers, timeout=10)
            assert r.status_code == 403, (method, headers, r.status_code, r.text)
        assert states(review)["anthropic-2"] == "ok"
    finally:
        resume(review)


def test_a_key_sent_as_the_model_is_not_a_label_nor_in_the_recent_ring(review, mock):
    """A careless client sends its key as the model; team-b's `claude-haiku-*` admits the
    name, but it is counted as `other` everywhere the console shows names."""
    from test_metrics import scrape

    mock.script("*", usage=USAGE)
    leaked = "claude-haiku-sk-ant-api03-FAKEreviewFAKEreview"
    ask(review, model=leaked, key=KEY_B)
    time.sleep(1.5)
    u = usage(review)
    _, _, text = scrape(review)
    assert "FAKEreview" not in str(u) and "FAKEreview" not in text
    assert u["recent"][0]["model"] == "other", u["recent"][0]
    mock.reset(only="scripts")
