"""The shipped Grafana dashboard (envoy/grafana-dashboard.json) against a real Prometheus
(issue #18): Prometheus scrapes three real Envoys' `/stats/prometheus` every second, mixed
traffic goes through them, and every panel's PromQL, with Grafana's variables filled in as
Grafana would, must return series, and the series the traffic moved must show it.

Two panels need series that only other shipped configs produce, so those configs run too:
"Failovers by account" (`tollgate_failovers_total`: the upstream-stage pool of
envoy-failover.yaml retrying a 429 on another account) and "Global limits degraded"
(`tollgate_global_degraded_total`: envoy-global.yaml with its rate-limit service down,
`failure_mode: allow`). Everything else comes from the demo config, envoy/envoy.yaml."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse

import anthropic
import openai
import pytest
import requests
from google import genai
from google.genai import types

import envoyctl
from conftest import ACCOUNT_KEYS, KEY_A, EnvoyFactory
from test_accounts import A, downstream, pool
from test_faults import global_config
from test_metrics import KEY_C, fast_histogram_flush, metered_config, parse

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="the `prometheus` binary is missing (`make setup` installs it)")

DASHBOARD = envoyctl.ROOT / "envoy" / "grafana-dashboard.json"
# What Grafana puts in place of its variables: the built-in intervals, and the allValue of
# each template variable with "All" selected (the dashboard's default).
GRAFANA = {"$__rate_interval": "1m", "$__range": "5m", "$consumer": ".*", "$model": ".*",
           "$account": ".*"}
MODEL = "claude-haiku-4-5"
PROMPT = [{"role": "user", "content": "Hello there"}]


def grafana_expr(expr: str) -> str:
    for var, value in GRAFANA.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


# ---------------------------------------------------------------- processes


def unreachable_ratelimit_service(cfg: dict) -> None:
    dead = envoyctl.free_port()  # nothing listens there
    for c in cfg["static_resources"]["clusters"]:
        if c["name"] == "ratelimit":
            for ep in c["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = dead


def with_fast_flush(patch=None):
    def apply(cfg):
        fast_histogram_flush(cfg)
        if patch:
            patch(cfg)
    return apply


@pytest.fixture(scope="module")
def envoys(mock, workdir):
    f = EnvoyFactory(mock, workdir)
    yield {
        "demo": f(metered_config(), patch=with_fast_flush(), name="dash-demo"),
        "failover": f(downstream(), shipped="envoy-failover.yaml", upstream=pool(),
                      patch=with_fast_flush(), name="dash-failover"),
        "global": f(global_config("allow", "500ms"), shipped="envoy-global.yaml",
                    patch=with_fast_flush(unreachable_ratelimit_service), name="dash-global"),
    }
    f.close()


class Prometheus:
    """A real Prometheus scraping `targets` (Envoy admin addresses) every second."""

    def __init__(self, targets: list[str], tmp):
        self.port = envoyctl.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                      "scrape_interval": "1s", "scrape_timeout": "900ms",
                                      "static_configs": [{"targets": targets}]}]}
        cfg = tmp / "prometheus.yml"
        cfg.write_text(json.dumps(config))  # JSON is YAML
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def wait_up(self, n_targets: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
            try:
                r = requests.get(self.url + "/api/v1/targets", timeout=2)
                active = r.json()["data"]["activeTargets"] if r.status_code == 200 else []
                if len(active) == n_targets and all(t["health"] == "up" for t in active):
                    return
            except requests.RequestException:
                active = []
            assert time.monotonic() < deadline, f"targets not up: {active}"
            time.sleep(0.2)

    def query(self, promql: str) -> list[dict]:
        r = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (promql, body)
        return body["data"]["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        r = requests.get(f"{self.url}/api/v1/label/{urllib.parse.quote(label)}/values",
                         params={"match[]": match}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def prometheus(envoys, tmp_path_factory):
    targets = [e.admin.removeprefix("http://") for e in envoys.values()]
    p = Prometheus(targets, tmp_path_factory.mktemp("prometheus"))
    try:
        p.wait_up(len(targets))
        yield p
    finally:
        p.stop()


# ---------------------------------------------------------------- traffic


def claude(e, key=KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=e.url(), api_key=key, max_retries=0, timeout=30)


def drive(envoys: dict, mock) -> None:
    """One round of mixed traffic: admitted requests on all three APIs (four token types),
    rejections, an upstream 429 that cools an account, a failover and degraded global limits."""
    demo = envoys["demo"]
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], times=1,
                usage={"input": 900, "output": 120, "cache_read": 300, "cache_write": 40})
    claude(demo).messages.create(model=MODEL, max_tokens=32, messages=PROMPT)
    claude(demo).messages.create(model=MODEL, max_tokens=32, messages=PROMPT)
    gpt = openai.OpenAI(base_url=demo.url() + "/v1", api_key=KEY_A, max_retries=0)
    gpt.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    g = genai.Client(api_key=KEY_A, http_options=types.HttpOptions(
        base_url=demo.url(), retry_options=types.HttpRetryOptions(attempts=1)))
    assert g.models.generate_content(model="gemini-2.0-flash", contents="Hello there").text
    with pytest.raises(anthropic.AuthenticationError):
        claude(demo, key="tg-not-a-consumer-key").messages.create(model=MODEL, max_tokens=8,
                                                                  messages=PROMPT)
    # team-c may send one request a minute: the second (and every one of a later round) is
    # refused.
    for _ in range(2):
        try:
            claude(demo, key=KEY_C).messages.create(model=MODEL, max_tokens=8, messages=PROMPT)
        except anthropic.RateLimitError:
            pass
    mock.script(ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"], status=429, times=1,
                headers={"retry-after": "1"})
    with pytest.raises(openai.RateLimitError):
        gpt.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    # The pool's second account answers 429 once: its attempt is retried on another account.
    mock.script(A[1], status=429, times=1, headers={"retry-after": "1"})
    for _ in range(4):
        claude(envoys["failover"]).messages.create(model=MODEL, max_tokens=8, messages=PROMPT)
    for _ in range(2):
        claude(envoys["global"]).messages.create(model=MODEL, max_tokens=8, messages=PROMPT)


def own_sum(envoys: dict, family: str) -> float:
    """The sum of a family's samples over the Envoys' own /stats/prometheus, now."""
    return sum(v for e in envoys.values() for (name, _), v in parse(e.prometheus())[0].items()
               if name == family)


def wait_scraped(prometheus: Prometheus, envoys: dict, timeout: float = 20.0) -> None:
    """Waits until Prometheus holds what the Envoys count now (each counter only grows, so
    equal sums mean every target was scraped after the traffic)."""
    time.sleep(1.5)  # histograms reach /stats/prometheus at the next stats flush (1 s)
    families = ("tollgate_requests_total", "tollgate_tokens_total",
                "tollgate_estimate_error_percent_count")
    want = {f: own_sum(envoys, f) for f in families}
    deadline = time.monotonic() + timeout
    while True:
        got = {f: sum(float(s["value"][1]) for s in prometheus.query(f)) for f in families}
        if got == want:
            return
        assert time.monotonic() < deadline, (got, want)
        time.sleep(0.3)


def failovers(envoys: dict) -> float:
    return own_sum(envoys, "tollgate_failovers_total")


# ---------------------------------------------------------------- the panels


def panels_with_queries(dash: dict):
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        for t in p["targets"]:
            yield p["title"], t["refId"], t["expr"]


def by(results: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def test_every_dashboard_panel_returns_series_from_real_traffic(envoys, prometheus, mock):
    mock.reset()
    # Two rounds, scraped after each: a rate over the window needs the series to move
    # between samples, also for series that the first round created.
    for _ in range(2):
        before = failovers(envoys)
        drive(envoys, mock)
        assert failovers(envoys) >= before + 1, "the failover config did not fail over"
        wait_scraped(prometheus, envoys)

    dash = json.loads(DASHBOARD.read_text())
    queries = list(panels_with_queries(dash))
    panels = {p["title"] for p in dash["panels"] if p["type"] != "row"}
    assert {title for title, _, _ in queries} == panels, "a panel without a query"
    results = {}
    empty = []
    for title, ref, expr in queries:
        res = prometheus.query(grafana_expr(expr))
        results[(title, ref)] = res
        if not res:
            empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "panels that show no series:\n" + "\n".join(empty)

    # Every panel but the state timeline shows the traffic: some value above zero.
    flat = [f"{title} [{ref}]" for (title, ref), res in results.items()
            if title != "Account state"
            and not any(math.isfinite(v) and v > 0 for v in (float(r["value"][1]) for r in res))]
    assert not flat, f"panels whose series never moved: {flat}"

    def q(title, ref="A"):
        return results[(title, ref)]

    outcomes = by(q("Requests by outcome"), "outcome")
    assert {"admitted", "auth", "requests"} <= {k for k, v in outcomes.items() if v > 0}, outcomes
    reasons = by(q("Rejections by reason"), "reason")
    assert {k for k, v in reasons.items() if v > 0} == {"auth", "requests"}, reasons
    assert by(q("Requests by consumer"), "consumer").get("team-a", 0) > 0
    share = float(q("Admitted share")[0]["value"][1])
    assert 0.5 < share < 1, share
    # The second round's refusals: one auth, team-c's two. (The first round's are not in an
    # `increase`: their series are born with their first count, not at 0 when the config loads.)
    assert float(q("Rejected requests (range)")[0]["value"][1]) >= 3
    types_ = by(q("Tokens by type"), "type")
    assert {k for k, v in types_.items() if v > 0} == {"input", "output", "cache_read", "cache_write"}, types_
    accounts = by(q("Tokens by account"), "account")
    assert {"anthropic-1", "openai-1", "gemini-1"} <= {k for k, v in accounts.items() if v > 0}, accounts
    assert {"claude-haiku-4-5", "gpt-4o-mini"} <= set(by(q("Tokens by model"), "model")), q("Tokens by model")
    assert by(q("Cost (USD per hour) by consumer"), "consumer").get("team-a", 0) > 0
    state = by(q("Account state"), "account")
    assert set(state) == {"anthropic-1", "anthropic-2", "anthropic-3", "openai-1", "gemini-1"}, state
    assert all(v in (0, 1, 2, 3) for v in state.values()), state
    codes = {(r["metric"]["account"], r["metric"]["code"]) for r in q("Upstream responses by code")}
    assert {("anthropic-1", "200"), ("openai-1", "429"), ("gemini-1", "200")} <= codes, codes
    assert sum(by(q("Failovers by account"), "account").values()) > 0
    assert float(q("Global limits degraded")[0]["value"][1]) > 0
    p50 = float(q("Estimate error quantiles (%)", "A")[0]["value"][1])
    p90 = float(q("Estimate error quantiles (%)", "B")[0]["value"][1])
    assert 0 < p50 <= p90, (p50, p90)

    # The template variables' own queries (`label_values(metric, label)`) offer the values.
    variables = {v["name"]: v for v in dash["templating"]["list"] if v["type"] == "query"}
    assert set(variables) == {"consumer", "model", "account"}
    offered = {}
    for name, v in variables.items():
        metric, label = v["definition"].removeprefix("label_values(").removesuffix(")").split(", ")
        offered[name] = set(prometheus.label_values(label, metric))
    assert {"team-a", "team-c", "unknown"} <= offered["consumer"], offered
    assert {"claude-haiku-4-5", "gpt-4o-mini"} <= offered["model"], offered
    assert {"anthropic-1", "anthropic-2", "openai-1", "gemini-1"} <= offered["account"], offered
    assert "none" not in offered["account"], offered


def panel(dash: dict, title: str) -> str:
    return next(expr for t, _, expr in panels_with_queries(dash) if t == title)


def test_failover_pool_answers_show_by_account(envoys, prometheus, mock):
    """The shipped failover config: the panels by account must show the pool's accounts, the
    429 that moved an attempt included, not `none`."""
    mock.reset()
    mock.script(A[1], status=429, times=1, headers={"retry-after": "1"})
    time.sleep(1.2)  # a 429 of an earlier test has cooled off
    for _ in range(4):
        claude(envoys["failover"]).messages.create(model=MODEL, max_tokens=8, messages=PROMPT)
    assert [r["status"] for r in mock.requests() if r["key"] == A[1]] == [429], mock.requests()
    wait_scraped(prometheus, envoys)
    dash = json.loads(DASHBOARD.read_text())
    codes = {(r["metric"]["account"], r["metric"]["code"])
             for r in prometheus.query(grafana_expr(panel(dash, "Upstream responses by code")))}
    assert ("anthropic-2", "429") in codes, codes
    accounts = by(prometheus.query(grafana_expr(panel(dash, "Tokens by account"))), "account")
    assert "none" not in accounts, accounts
