"""tollgate's metrics as Prometheus sees them: known traffic through real Envoy, then
`/stats/prometheus` must show labelled `tollgate_*` series (the `stats_tags` of the shipped
config turn the `.label.value` pairs of the wasm stat names into labels) with exact values,
bounded label sets and no credential anywhere."""

from __future__ import annotations

import json
import re
import time

import anthropic
import openai
import pytest
import requests

import envoyctl
from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, KEY_B, EnvoyFactory, base_config, sha

KEY_C = "tg-test-key-team-c"
BOGUS_KEYS = ["tg-bogus-presented-key-1", "tg-bogus-presented-key-2", "tg-bogus-presented-key-3"]
REASONS = {"auth", "model", "not_found", "bad_request", "too_large", "tokens", "requests", "cost",
           "concurrency", "accounts_cooling", "global", "global_unavailable", "no_account",
           "unknown_consumer"}

# Every tollgate metric family (SPEC "Metrics" plus the global-limit and affinity counters).
# A stat name that the stats_tags failed to take apart shows up as a family outside this set.
FAMILIES = {"tollgate_requests_total", "tollgate_tokens_total", "tollgate_cost_usd_micros_total",
            "tollgate_rejections_total", "tollgate_account_state", "tollgate_upstream_responses_total",
            "tollgate_failovers_total", "tollgate_global_degraded_total", "tollgate_global_charges_total",
            "tollgate_reconcile_dropped_total", "tollgate_affinity_total",
            "tollgate_usage_fallbacks_total",
            "tollgate_shared_data_keys_created_total",
            "tollgate_estimate_error_percent_bucket", "tollgate_estimate_error_percent_sum",
            "tollgate_estimate_error_percent_count"}

# The labels of each family (SPEC "Metrics").
LABELS = {"tollgate_requests_total": {"consumer", "model", "outcome"},
          "tollgate_tokens_total": {"consumer", "model", "account", "type"},
          "tollgate_cost_usd_micros_total": {"consumer", "model"},
          "tollgate_rejections_total": {"consumer", "reason"},
          "tollgate_account_state": {"account"},
          "tollgate_upstream_responses_total": {"account", "code"},
          "tollgate_failovers_total": {"account"},
          "tollgate_global_degraded_total": set(),
          "tollgate_shared_data_keys_created_total": set(),
          "tollgate_estimate_error_percent_bucket": {"le"},
          "tollgate_estimate_error_percent_sum": set(),
          "tollgate_estimate_error_percent_count": set()}

SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = dict[tuple[str, frozenset], float]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """Samples by (name, labels) and the `# TYPE` of each metric family."""
    samples: Series = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def scrape(envoy) -> tuple[Series, dict[str, str], str]:
    text = envoy.prometheus()
    samples, types = parse(text)
    return samples, types, text


def val(samples: Series, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def tollgate_series(samples: Series) -> dict[tuple[str, frozenset], float]:
    return {k: v for k, v in samples.items() if k[0].startswith("tollgate_")}


def claude(envoy, key=KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url(), api_key=key, max_retries=0)


def gpt(envoy, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=envoy.url() + "/v1", api_key=key, max_retries=0)


def ask(envoy, model="claude-haiku-4-5", key=KEY_A, text="Hello there"):
    return claude(envoy, key).messages.create(
        model=model, max_tokens=32, messages=[{"role": "user", "content": text}])


def access_lines(envoy) -> list[str]:
    return [ln for ln in envoy.log_text().splitlines() if '"POST /v1/messages"' in ln]


def new_access_lines(envoy, seen: int, n: int) -> list[str]:
    """The `n` access-log lines after the first `seen` (the log flushes every 200 ms)."""
    deadline = time.time() + 5
    while True:
        lines = access_lines(envoy)[seen:]
        if len(lines) >= n or time.time() > deadline:
            return lines
        time.sleep(0.1)


def metered_config() -> dict:
    cfg = base_config()
    cfg["consumers"].append({"name": "team-c", "keys": [sha(KEY_C)],
                             "limits": [{"requests": 1, "per": "minute"}]})
    return cfg


def fast_histogram_flush(cfg: dict) -> None:
    # Histograms reach the admin endpoints at each stats flush (default 5 s).
    cfg["stats_flush_interval"] = "1s"


@pytest.fixture(scope="module")
def metered(mock, workdir):
    """The shipped envoy/envoy.yaml (its stats_tags untouched) with `metered_config()`."""
    f = EnvoyFactory(mock, workdir)
    yield f(metered_config(), patch=fast_histogram_flush, name="metrics")
    f.close()


def test_traffic_shows_as_labelled_series_with_exact_token_counts(metered, mock):
    mock.reset()
    before, _, _ = scrape(metered)
    mock.script("*", usage={"input": 1200, "output": 345, "cache_read": 50, "cache_write": 7}, times=1)
    first = ask(metered).usage
    assert (first.input_tokens, first.output_tokens) == (1200, 345)
    second = ask(metered, text="A second question, a little longer than the first one").usage
    mock.script("*", usage={"input": 80, "output": 12, "cache_read": 30}, times=1)
    third = gpt(metered).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]).usage
    cached = third.prompt_tokens_details.cached_tokens
    assert cached == 30
    after, types, text = scrape(metered)

    def delta(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    # The stat names' `.label.value` pairs became labels: nothing left in the name.
    assert "wasmcustom" not in text
    families = {name for name, _ in tollgate_series(after)}
    assert families <= FAMILIES, f"stats_tags did not take these names apart: {families - FAMILIES}"
    for family in ("tollgate_requests_total", "tollgate_tokens_total", "tollgate_upstream_responses_total"):
        assert types.get(family) == "counter", (family, types.get(family))

    assert delta("tollgate_requests_total", consumer="team-a", model="claude-haiku-4-5", outcome="admitted") == 2
    assert delta("tollgate_requests_total", consumer="team-a", model="gpt-4o-mini", outcome="admitted") == 1
    haiku = dict(consumer="team-a", model="claude-haiku-4-5", account="anthropic-1")
    assert delta("tollgate_tokens_total", **haiku, type="input") == first.input_tokens + second.input_tokens
    assert delta("tollgate_tokens_total", **haiku, type="output") == first.output_tokens + second.output_tokens
    assert delta("tollgate_tokens_total", **haiku, type="cache_read") == 50
    assert delta("tollgate_tokens_total", **haiku, type="cache_write") == 7
    mini = dict(consumer="team-a", model="gpt-4o-mini", account="openai-1")
    assert delta("tollgate_tokens_total", **mini, type="input") == third.prompt_tokens - cached
    assert delta("tollgate_tokens_total", **mini, type="cache_read") == cached
    assert delta("tollgate_tokens_total", **mini, type="output") == third.completion_tokens
    assert delta("tollgate_tokens_total", **mini, type="cache_write") == 0
    assert delta("tollgate_upstream_responses_total", account="anthropic-1", code="200") == 2
    assert delta("tollgate_upstream_responses_total", account="openai-1", code="200") == 1


def test_each_rejection_is_counted_by_consumer_and_reason(metered, mock):
    mock.reset()
    before, _, _ = scrape(metered)
    with pytest.raises(anthropic.AuthenticationError):
        ask(metered, key=BOGUS_KEYS[0])
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(metered, key=KEY_B, model="claude-opus-4-1")
    r = requests.post(metered.url() + "/v1/unknown", headers={"authorization": f"Bearer {KEY_A}"}, timeout=10)
    assert r.status_code == 404
    r = requests.post(metered.url() + "/v1/messages", data=b'{"model": "claude-haiku-4-5", "messages": [',
                      headers={"x-api-key": KEY_A, "content-type": "application/json"}, timeout=10)
    assert r.status_code == 400
    ask(metered, key=KEY_C)
    with pytest.raises(anthropic.RateLimitError):
        ask(metered, key=KEY_C)
    after, _, _ = scrape(metered)

    def delta(name, **labels):
        return val(after, name, **labels) - val(before, name, **labels)

    # An unserved path sent with a valid key counts under that key's consumer (#21).
    expected = {("unknown", "auth"): 1, ("team-b", "model"): 1, ("team-a", "not_found"): 1,
                ("team-a", "bad_request"): 1, ("team-c", "requests"): 1}
    rejections = {(dict(k[1])["consumer"], dict(k[1])["reason"]): v - before.get(k, 0.0)
                  for k, v in after.items() if k[0] == "tollgate_rejections_total" and v != before.get(k, 0.0)}
    assert rejections == expected
    # A refused model is labelled by its name when a pricing glob matches it (bounded set).
    assert delta("tollgate_requests_total", consumer="team-b", model="claude-opus-4-1", outcome="model") == 1
    assert delta("tollgate_requests_total", consumer="team-c", model="claude-haiku-4-5", outcome="requests") == 1
    assert delta("tollgate_requests_total", consumer="team-c", model="claude-haiku-4-5", outcome="admitted") == 1
    assert len(mock.requests()) == 1, "only the admitted request reaches the upstream"


def test_upstream_responses_are_counted_by_account_and_code(metered, mock):
    mock.reset()
    before, _, _ = scrape(metered)
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], status=500, times=1)
    with pytest.raises(anthropic.InternalServerError):
        ask(metered)
    ask(metered)
    after, _, _ = scrape(metered)
    code = {dict(k[1])["code"]: v - before.get(k, 0.0)
            for k, v in after.items()
            if k[0] == "tollgate_upstream_responses_total" and dict(k[1])["account"] == "anthropic-1"}
    assert code.get("500") == 1 and code.get("200") == 1, code


def test_estimate_error_histogram_records_each_completed_request(metered, mock):
    mock.reset()
    time.sleep(1.5)  # let the histogram values of earlier tests reach the admin view first
    before, _, _ = scrape(metered)
    seen = len(access_lines(metered))
    mock.script("*", usage={"input": 400, "output": 10}, times=1)
    ask(metered, text="How far off is the estimate this time?")
    ask(metered, text="And this time, with a longer prompt to estimate from: " + "words " * 40)
    errors = []
    lines = new_access_lines(metered, seen, 2)
    assert len(lines) == 2, lines
    for line in lines:
        est = int(re.search(r" estimate=(\d+)", line).group(1))
        real = int(re.search(r" input_tokens=(\d+)", line).group(1))
        errors.append(abs(real - est) * 100 / real)
    name = "tollgate_estimate_error_percent"
    deadline = time.time() + 8
    while True:
        after, types, _ = scrape(metered)
        count = val(after, name + "_count") - val(before, name + "_count")
        if count >= 2 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert types.get(name) == "histogram"
    assert count == 2
    total = val(after, name + "_sum") - val(before, name + "_sum")
    # Envoy's histograms are approximate (log-linear bins): within a few percent.
    assert total == pytest.approx(sum(errors), rel=0.05, abs=1.5), errors
    buckets = {float(dict(k[1])["le"]): v - before.get(k, 0.0)
               for k, v in after.items() if k[0] == name + "_bucket"}
    assert buckets[float("inf")] == 2
    top = max(errors)
    assert all(n == 2 for le, n in buckets.items() if le >= top * 1.05 + 1), (buckets, errors)


def label_values(samples: Series) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for (_, labels) in tollgate_series(samples):
        for label, value in labels:
            seen.setdefault(label, set()).add(value)
    return seen


def test_label_values_stay_bounded_whatever_clients_send(metered, mock):
    mock.reset()
    ask(metered)
    with pytest.raises(anthropic.AuthenticationError):
        ask(metered, key=BOGUS_KEYS[0])
    before = label_values(scrape(metered)[0])
    odd_models = ["my-private-model.v2", "x" * 80, "claude-haiku-4-5\u00e9.evil", "team-a.consumer.x",
                  "o1-imaginary"]
    for m in odd_models:
        ask(metered, model=m)
    for k in BOGUS_KEYS:
        with pytest.raises(anthropic.AuthenticationError):
            ask(metered, key=k, model=k)
    samples, _, text = scrape(metered)
    seen = label_values(samples)
    families = {name for name, _ in tollgate_series(samples)}
    assert families <= FAMILIES, families - FAMILIES
    # Whatever model names and keys clients send, only a name that a pricing or allow-list
    # glob matches becomes a label of its own (SPEC "Metrics" v2, bounded by
    # metrics.max_models): the others are `other`, unknown keys `unknown`.
    assert seen["model"] - before["model"] <= {"other", "claude-haiku-4-5__evil"}, seen["model"] - before["model"]
    assert "other" in seen["model"]
    assert seen["consumer"] <= {"team-a", "team-b", "team-c", "unknown"}, seen["consumer"]
    assert seen["account"] <= {"anthropic-1", "openai-1", "gemini-1", "none"}
    assert seen["type"] <= {"input", "output", "cache_read", "cache_write"}
    assert seen["reason"] <= REASONS | {"unsupported_encoding", "corrupt_encoding", "invalid_usage"}
    # `outcome` also names global charges (sent, dropped) and affinity (hit, miss, broken).
    assert seen["outcome"] <= REASONS | {"admitted", "sent", "dropped", "hit", "miss", "broken"}
    assert all(re.fullmatch(r"[1-5]\d\d", c) for c in seen["code"]), seen["code"]
    for m in odd_models + BOGUS_KEYS:
        assert m not in text and m.replace(".", "_") not in text
    assert val(samples, "tollgate_rejections_total", consumer="unknown", reason="auth") >= 4


def test_label_names_used_as_values_stay_in_their_place(make_envoy, mock):
    cfg = base_config(consumers=[{"name": "model", "keys": [KEY_A]}],
                      accounts=[{"name": "consumer", "provider": "anthropic",
                                 "key_env": "TOLLGATE_ANTHROPIC_KEY_1"}])
    e = make_envoy(cfg)
    mock.reset()
    mock.script("*", usage={"input": 11, "output": 3}, times=1)
    ask(e)
    samples, _, _ = scrape(e)
    labels = dict(consumer="model", model="claude-haiku-4-5", account="consumer")
    assert val(samples, "tollgate_tokens_total", **labels, type="input") == 11
    assert val(samples, "tollgate_tokens_total", **labels, type="output") == 3
    assert val(samples, "tollgate_upstream_responses_total", account="consumer", code="200") == 1
    assert {name for name, _ in tollgate_series(samples)} <= FAMILIES


def test_no_configured_or_presented_key_appears_in_the_stats(metered):
    prom = metered.prometheus()
    with requests.get(metered.admin + "/stats", timeout=5) as r:
        plain = r.text
    secrets = [KEY_A, KEY_B, KEY_C, ADMIN_KEY, *ACCOUNT_KEYS.values(), *BOGUS_KEYS]
    secrets += [sha(k).split(":", 1)[1] for k in (KEY_A, KEY_B, KEY_C, ADMIN_KEY)]
    for s in secrets:
        for variant in {s, s.replace("-", "_"), s.replace(".", "_")}:
            assert variant not in prom, "a key leaked into /stats/prometheus"
            assert variant not in plain, "a key leaked into /stats"


def test_global_degraded_counter_is_a_plain_prometheus_counter(make_envoy, mock):
    dead = envoyctl.free_port()  # nothing listens there

    def no_ratelimit_service(cfg):
        for c in cfg["static_resources"]["clusters"]:
            if c["name"] == "ratelimit":
                for ep in c["load_assignment"]["endpoints"]:
                    for lb in ep["lb_endpoints"]:
                        lb["endpoint"]["address"]["socket_address"]["port_value"] = dead

    cfg = base_config()
    cfg["global"] = {"cluster": "ratelimit", "domain": "tollgate", "timeout": "500ms",
                     "failure_mode": "allow"}
    e = make_envoy(cfg, shipped="envoy-global.yaml", patch=no_ratelimit_service)
    for _ in range(3):
        ask(e)
    samples, types, _ = scrape(e)
    assert types.get("tollgate_global_degraded_total") == "counter"
    assert val(samples, "tollgate_global_degraded_total") >= 3
    assert val(samples, "tollgate_requests_total", consumer="team-a", model="claude-haiku-4-5",
               outcome="admitted") == 3


def test_cost_is_counted_in_micro_dollars(metered, mock):
    mock.reset()
    before, _, _ = scrape(metered)
    # claude-haiku-4* is priced 1 / 5 / 1.25 (cache write) / 0.1 (cache read) USD per million.
    mock.script("*", usage={"input": 1000, "output": 200, "cache_read": 100, "cache_write": 40}, times=1)
    ask(metered)
    after, types, _ = scrape(metered)
    labels = dict(consumer="team-a", model="claude-haiku-4-5")
    assert types.get("tollgate_cost_usd_micros_total") == "counter"
    assert val(after, "tollgate_cost_usd_micros_total", **labels) \
        - val(before, "tollgate_cost_usd_micros_total", **labels) == 1000 + 1000 + 10 + 50


def test_account_state_gauge_shows_a_cooling_account(make_envoy, mock):
    e = make_envoy()
    mock.reset()
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], status=429, times=1, headers={"retry-after": "30"})
    with pytest.raises(anthropic.APIStatusError):
        ask(e)
    samples, types, _ = scrape(e)
    mock.reset()
    assert types.get("tollgate_account_state") == "gauge"
    assert val(samples, "tollgate_upstream_responses_total", account="anthropic-1", code="429") == 1
    assert val(samples, "tollgate_account_state", account="anthropic-1") == 1
    assert val(samples, "tollgate_account_state", account="openai-1") == 0


def test_account_state_gauge_returns_to_ok_when_cooling_ends(make_envoy, mock):
    e = make_envoy()
    mock.reset()
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], status=429, times=1, headers={"retry-after": "1"})
    with pytest.raises(anthropic.APIStatusError):
        ask(e)
    assert val(scrape(e)[0], "tollgate_account_state", account="anthropic-1") == 1
    time.sleep(2.2)
    for _ in range(3):
        ask(e)
    samples, _, _ = scrape(e)
    assert val(samples, "tollgate_upstream_responses_total", account="anthropic-1", code="200") == 3
    assert val(samples, "tollgate_account_state", account="anthropic-1") == 0


def test_every_series_carries_exactly_its_documented_labels(metered):
    samples, _, _ = scrape(metered)
    for name, labels in tollgate_series(samples):
        if name in LABELS:
            assert {k for k, _ in labels} == LABELS[name], (name, labels)


def test_grafana_dashboard_queries_name_real_series(metered):
    path = envoyctl.ROOT / "envoy" / "grafana-dashboard.json"
    dash = json.loads(path.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in variables.values() if v["type"] == "query"]
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    samples, _, _ = scrape(metered)
    observed: dict[str, set[str]] = {}
    for name, labels in tollgate_series(samples):
        observed.setdefault(name, set()).update(k for k, _ in labels)
    families_used = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = re.findall(r"\btollgate_\w+", expr)
        assert names, expr
        for name in names:
            assert name in FAMILIES, f"{name} is not a tollgate series: {expr}"
            families_used.add(name)
            # Labels in the selector right after the name, and in `by (...)` clauses.
            sel = re.search(re.escape(name) + r"\{([^}]*)\}", expr)
            used = set(re.findall(r"(\w+)\s*=~?", sel.group(1))) if sel else set()
            used |= {x.strip() for b in re.findall(r"by \(([^)]*)\)", expr) for x in b.split(",")}
            used |= set(re.findall(r"label_values\(\w+, (\w+)\)", expr))
            allowed = LABELS.get(name, set()) | ({"le"} if name.endswith("_bucket") else set())
            assert used <= allowed, f"{expr}: {used - allowed} not labels of {name}"
            if name in observed:
                assert used - {"le"} <= observed[name], f"{expr}: real Envoy output has {observed[name]}"
    titles = " ".join(p["title"].lower() for p in panels)
    for word in ("outcome", "type", "model", "account", "reason", "cost", "account state", "code",
                 "estimate error", "degraded"):
        assert word in titles, word
    assert {"tollgate_requests_total", "tollgate_tokens_total", "tollgate_rejections_total",
            "tollgate_cost_usd_micros_total", "tollgate_account_state",
            "tollgate_upstream_responses_total", "tollgate_estimate_error_percent_bucket",
            "tollgate_global_degraded_total"} <= families_used
