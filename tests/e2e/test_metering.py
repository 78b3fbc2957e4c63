"""Token metering through real Envoy: what tollgate counts for each API and transport equals
what the upstream reported (SPEC "Counting", "Streams", "Metrics"). Each test diffs Envoy's
`tollgate_tokens_total` counters and reads the request's access-log line (filter state)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from datetime import datetime, timezone

import anthropic
import openai
import pytest
import requests

from conftest import ACCOUNT_KEYS, KEY_A, KEY_B, access_log, base_config, tid, with_request_ids

TYPES = ("input", "output", "cache_read", "cache_write")
TOKENS = "wasmcustom.tollgate_tokens_total."
REQUESTS = "wasmcustom.tollgate_requests_total."
ACCESS = re.compile(r'^\[(\S+)\] "(\w+) (\S+)" (\d+) (consumer=.*)$')

# Distinctive numbers per API, in tollgate's normalised terms. Only Anthropic reports cache
# writes; Gemini's output includes thoughts and OpenAI's includes reasoning.
ANTHROPIC_USAGE = {"input": 1234, "output": 56, "cache_read": 789, "cache_write": 12}
OPENAI_USAGE = {"input": 1234, "output": 56, "cache_read": 789, "reasoning": 9}
GEMINI_USAGE = {"input": 1234, "output": 56, "cache_read": 789, "reasoning": 7}
PROMPT = [{"role": "user", "content": "Count my tokens, please."}]


# ---------------------------------------------------------------- helpers


def claude(envoy, key=KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url(), api_key=key, max_retries=0)


def gpt(envoy, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=envoy.url() + "/v1", api_key=key, max_retries=0)


def gemini_url(envoy, model: str, method: str) -> str:
    return f"{envoy.url()}/v1beta/models/{model}:{method}"


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Count my tokens, please."}]}]}


class Meter:
    """What Envoy recorded between `Meter(envoy)` and `done()`: the counter deltas and the
    access-log lines of the requests that started in between."""

    def __init__(self, envoy):
        self.envoy = envoy
        self.before = envoy.stats()
        now = datetime.now(timezone.utc)
        self.since = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"

    def done(self, requests_expected: int = 1, timeout: float = 10.0) -> "Meter":
        # Envoy writes access logs out every 10 s by default; POST /reopen_logs flushes them.
        # The counters are written before the log line, so they are final once it shows.
        deadline = time.monotonic() + timeout
        while True:
            flush_access_log(self.envoy)
            lines = [ln for ln in access_lines(self.envoy) if ln["start"] >= self.since]
            if len(lines) >= requests_expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(lines) >= requests_expected, \
            f"expected {requests_expected} access-log lines, got {lines}"
        self.lines = lines
        after = self.envoy.stats()
        self.delta = {k: v - self.before.get(k, 0) for k, v in after.items()
                      if k.startswith("wasmcustom.tollgate_") and v != self.before.get(k, 0)}
        return self

    def tokens(self) -> dict[str, int]:
        out = dict.fromkeys(TYPES, 0)
        for name, d in self.delta.items():
            if name.startswith(TOKENS):
                out[labels(name)["type"]] += d
        return out

    def label_values(self, label: str, prefix: str = REQUESTS) -> set[str]:
        return {labels(n)[label] for n in self.delta if n.startswith(prefix)}

    def line(self) -> dict[str, str]:
        assert len(self.lines) == 1, self.lines
        return self.lines[0]


def labels(stat: str) -> dict[str, str]:
    """`wasmcustom.tollgate_x.consumer.a.model.m.type.input` -> {consumer: a, model: m, ...}."""
    parts = stat.split(".")[2:]
    return dict(zip(parts[0::2], parts[1::2]))


def flush_access_log(envoy) -> None:
    req = urllib.request.Request(envoy.admin + "/reopen_logs", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def access_lines(envoy) -> list[dict[str, str]]:
    out = []
    for ln in envoy.log_text().splitlines():
        m = ACCESS.search(ln)
        if not m:
            continue
        fields = dict(kv.split("=", 1) for kv in m.group(5).split() if "=" in kv)
        fields.update(start=m.group(1), method=m.group(2), path=m.group(3), status=m.group(4))
        out.append(fields)
    return out


def mock_usage(mock, path: str) -> dict:
    reqs = [r for r in mock.requests() if r["path"].startswith(path)]
    assert reqs, f"the mock saw no request to {path}"
    rec = mock.wait_end(reqs[-1]["seq"])
    assert rec["usage"], rec
    return rec


def assert_exact(meter: Meter, rec: dict, scripted: dict) -> None:
    """tollgate's four numbers equal the mock's, in the counters and in the access log."""
    mu = rec["usage"]
    # The mock really answered what the test scripted (so the check below means something).
    want = {t: scripted.get(t, 0) for t in TYPES}
    assert {t: mu[t] for t in TYPES} == want, mu
    assert meter.tokens() == want, meter.delta
    line = meter.line()
    assert line["decision"] == "admitted", line
    input_side = want["input"] + want["cache_read"] + want["cache_write"]
    assert int(line["input_tokens"]) == input_side, line
    assert int(line["output_tokens"]) == want["output"], line
    assert line["usage"] == "reported", line
    admitted = [d for n, d in meter.delta.items()
                if n.startswith(REQUESTS) and n.endswith(".outcome.admitted")]
    assert admitted == [1], meter.delta


@pytest.fixture(autouse=True)
def clean_mock(mock):
    mock.reset()
    yield


# ---------------------------------------------------------------- exact counts per API


def anthropic_json(envoy):
    msg = claude(envoy).messages.create(model="claude-haiku-4-5", max_tokens=64, messages=PROMPT)
    assert msg.content[0].text
    assert msg.usage.cache_read_input_tokens == ANTHROPIC_USAGE["cache_read"]


def anthropic_stream(envoy):
    text = ""
    with claude(envoy).messages.create(model="claude-haiku-4-5", max_tokens=64,
                                       messages=PROMPT, stream=True) as s:
        for ev in s:
            if ev.type == "content_block_delta":
                text += ev.delta.text
    assert text


def chat_json(envoy):
    out = gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert out.choices[0].message.content
    assert out.usage.prompt_tokens_details.cached_tokens == OPENAI_USAGE["cache_read"]


def chat_stream_plain(envoy):
    text = ""
    for chunk in gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                    stream=True):
        text += chunk.choices[0].delta.content or ""
        assert chunk.usage is None
    assert text


def chat_stream_include_usage(envoy):
    usage = None
    for chunk in gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                    stream=True,
                                                    stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == OPENAI_USAGE["output"]


def responses_json(envoy):
    r = gpt(envoy).responses.create(model="gpt-4o-mini", input="Count my tokens, please.")
    assert r.output_text
    assert r.usage.input_tokens_details.cached_tokens == OPENAI_USAGE["cache_read"]


def responses_stream(envoy):
    kinds = []
    for ev in gpt(envoy).responses.create(model="gpt-4o-mini", input="Count my tokens, please.",
                                          stream=True):
        kinds.append(ev.type)
    assert kinds[-1] == "response.completed", kinds


def gemini_json(envoy):
    r = requests.post(gemini_url(envoy, "gemini-2.0-flash", "generateContent"),
                      headers={"x-goog-api-key": KEY_A}, json=GEMINI_BODY, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["usageMetadata"]["cachedContentTokenCount"] == GEMINI_USAGE["cache_read"]


def gemini_stream(envoy):
    r = requests.post(gemini_url(envoy, "gemini-2.0-flash", "streamGenerateContent") + "?alt=sse",
                      headers={"x-goog-api-key": KEY_A}, json=GEMINI_BODY, timeout=10,
                      stream=True)
    assert r.status_code == 200, r.text
    chunks = [json.loads(ln[len(b"data: "):]) for ln in r.iter_lines() if ln.startswith(b"data: ")]
    assert chunks and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def gemini_array_stream(envoy):
    """streamGenerateContent without alt=sse: one JSON array, streamed element by element."""
    r = requests.post(gemini_url(envoy, "gemini-2.0-flash", "streamGenerateContent"),
                      headers={"x-goog-api-key": KEY_A}, json=GEMINI_BODY, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()[-1]["candidates"][0]["finishReason"] == "STOP"


CASES = {
    "anthropic-json": (anthropic_json, "/v1/messages", ANTHROPIC_USAGE),
    "anthropic-sse": (anthropic_stream, "/v1/messages", ANTHROPIC_USAGE),
    "chat-json": (chat_json, "/v1/chat/completions", OPENAI_USAGE),
    "chat-sse": (chat_stream_plain, "/v1/chat/completions", OPENAI_USAGE),
    "chat-sse-include-usage": (chat_stream_include_usage, "/v1/chat/completions", OPENAI_USAGE),
    "responses-json": (responses_json, "/v1/responses", OPENAI_USAGE),
    "responses-sse": (responses_stream, "/v1/responses", OPENAI_USAGE),
    "gemini-json": (gemini_json, "/v1beta/models/", GEMINI_USAGE),
    "gemini-sse": (gemini_stream, "/v1beta/models/", GEMINI_USAGE),
    "gemini-array": (gemini_array_stream, "/v1beta/models/", GEMINI_USAGE),
}


@pytest.mark.parametrize("case", list(CASES))
def test_counts_equal_the_upstreams_usage(envoy, mock, case):
    call, path, usage = CASES[case]
    mock.script("*", usage=usage)
    meter = Meter(envoy)
    call(envoy)
    assert_exact(meter.done(), mock_usage(mock, path), usage)


@pytest.mark.parametrize("case", ["anthropic-json", "anthropic-sse", "chat-json",
                                  "chat-sse-include-usage", "responses-sse", "gemini-json",
                                  "gemini-sse", "gemini-array"])
def test_gzip_responses_are_counted_exactly(envoy, mock, case):
    call, path, usage = CASES[case]
    mock.script("*", usage=usage, gzip=True)
    meter = Meter(envoy)
    call(envoy)
    rec = mock_usage(mock, path)
    assert_exact(meter.done(), rec, usage)


@pytest.mark.parametrize("case", ["anthropic-sse", "chat-sse", "responses-sse", "gemini-sse"])
def test_long_streams_are_counted_exactly(envoy, mock, case):
    call, path, usage = CASES[case]
    mock.script("*", usage=usage, events=600)
    meter = Meter(envoy)
    call(envoy)
    rec = mock_usage(mock, path)
    assert rec["events_sent"] == 600
    assert_exact(meter.done(), rec, usage)


# ---------------------------------------------------------------- streams pass unbuffered


def test_anthropic_stream_is_not_held_back(envoy, mock):
    mock.script("*", events=10, delay_ms=300, usage=ANTHROPIC_USAGE)
    meter = Meter(envoy)
    t0 = time.monotonic()
    seen = []
    with claude(envoy).messages.create(model="claude-haiku-4-5", max_tokens=64,
                                       messages=PROMPT, stream=True) as s:
        for ev in s:
            if ev.type == "content_block_delta":
                seen.append(time.monotonic() - t0)
    end = time.monotonic() - t0
    assert len(seen) == 10
    # The mock sends the 10 deltas 300 ms apart: the first must arrive ~2.7 s before the end.
    assert end - seen[0] > 2.0, (seen, end)
    assert seen[0] < 1.5, seen
    # Each delta arrives on its own, not in bursts.
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert sum(g > 0.15 for g in gaps) >= 7, gaps
    assert_exact(meter.done(), mock_usage(mock, "/v1/messages"), ANTHROPIC_USAGE)


def test_chat_stream_with_usage_removed_is_not_held_back(envoy, mock):
    """The strip mode (tollgate added include_usage) must still pass each chunk at once."""
    mock.script("*", events=10, delay_ms=300, usage=OPENAI_USAGE)
    meter = Meter(envoy)
    t0 = time.monotonic()
    seen = []
    for chunk in gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                    stream=True):
        if chunk.choices[0].delta.content:
            seen.append(time.monotonic() - t0)
    end = time.monotonic() - t0
    assert len(seen) == 10
    assert end - seen[0] > 2.0, (seen, end)
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert sum(g > 0.15 for g in gaps) >= 7, gaps
    assert_exact(meter.done(), mock_usage(mock, "/v1/chat/completions"), OPENAI_USAGE)


# ---------------------------------------------------------------- aborted streams


def read_then_close(api: str, envoy, k: int) -> int:
    """Reads `k` text deltas of a stream through the API's client, then closes it."""
    got = 0
    if api == "anthropic":
        with claude(envoy).messages.create(model="claude-haiku-4-5", max_tokens=1000,
                                           messages=PROMPT, stream=True) as s:
            for ev in s:
                got += ev.type == "content_block_delta"
                if got == k:
                    break  # leaving the block closes the response
    elif api == "chat":
        with gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                stream=True) as s:
            for chunk in s:
                got += bool(chunk.choices[0].delta.content)
                if got == k:
                    break
    elif api == "responses":
        with gpt(envoy).responses.create(model="gpt-4o-mini", input="Count my tokens, please.",
                                         stream=True) as s:
            for ev in s:
                got += ev.type == "response.output_text.delta"
                if got == k:
                    break
    else:
        url = gemini_url(envoy, "gemini-2.0-flash", "streamGenerateContent") + "?alt=sse"
        with requests.post(url, headers={"x-goog-api-key": KEY_A}, json=GEMINI_BODY,
                           timeout=10, stream=True) as r:
            for ln in r.iter_lines():
                got += ln.startswith(b"data: ")
                if got == k:
                    break
    return got


ABORTS = {
    "anthropic": ("/v1/messages", ANTHROPIC_USAGE, anthropic_json),
    "chat": ("/v1/chat/completions", OPENAI_USAGE, chat_stream_plain),
    "responses": ("/v1/responses", OPENAI_USAGE, responses_stream),
    "gemini": ("/v1beta/models/", GEMINI_USAGE, gemini_stream),
}


@pytest.mark.parametrize("api", list(ABORTS))
def test_client_abort_estimates_output_from_the_streamed_text(envoy, mock, api):
    path, usage, follow_up = ABORTS[api]
    mock.script("*", events=200, delay_ms=40, usage=usage,
                text="Metering tollgate streams word by word")
    meter = Meter(envoy)
    assert read_then_close(api, envoy, 6) == 6
    line = meter.done().line()
    rec = mock.wait_end(mock.requests(path_prefix=path)[-1]["seq"])
    assert rec["end"] == "client_gone", rec
    sent = rec["events_sent"]
    assert 6 <= sent < 200, rec
    out = int(line["output_tokens"])
    # Estimated from what streamed: at least one token per word the client saw, and far below
    # the scripted 56 that only the (never sent) end of the stream carries.
    assert 6 <= out <= 4 * sent, (line, sent)
    t = meter.tokens()
    assert t["output"] == out, meter.delta
    assert sum(t.values()) - out == int(line["input_tokens"]) > 0, (t, line)
    if api == "anthropic":
        # message_start already reported the input side, so it is exact.
        assert line["usage"] == "estimated", line
        assert (t["input"], t["cache_read"], t["cache_write"]) == (1234, 789, 12), t
    elif api == "gemini":
        # Every Gemini chunk carries the running usage: the prompt is known.
        assert t["input"] + t["cache_read"] == 1234 + 789, t
    else:
        # No usage ever arrived: input falls back to the admission estimate.
        assert line["usage"] == "estimated", line
        assert int(line["input_tokens"]) == int(line["estimate"]), line
    # Envoy keeps serving, and counts the next request exactly.
    mock.reset()
    mock.script("*", usage=usage)
    meter = Meter(envoy)
    follow_up(envoy)
    assert_exact(meter.done(), mock_usage(mock, path), usage)


def test_upstream_reset_estimates_output_and_input(envoy, mock):
    mock.script("*", events=20, reset_after_events=5, usage=OPENAI_USAGE,
                text="Metering tollgate streams word by word")
    meter = Meter(envoy)
    got = 0
    # Envoy cuts the client's response short too: the SDK reports a broken connection.
    with pytest.raises(openai.APIConnectionError):
        for chunk in gpt(envoy).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                        stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
    assert got == 5
    line = meter.done().line()
    rec = mock.wait_end(mock.requests(path_prefix="/v1/chat/completions")[-1]["seq"])
    assert rec["end"] == "reset", rec
    out = int(line["output_tokens"])
    assert line["usage"] == "estimated", line
    assert 5 <= out <= 20, line
    # No usage ever arrived: input falls back to the admission estimate.
    assert int(line["input_tokens"]) == int(line["estimate"]) > 0, line
    t = meter.tokens()
    assert t["output"] == out and t["input"] == int(line["estimate"]), meter.delta
    mock.reset()
    mock.script("*", usage=OPENAI_USAGE)
    meter = Meter(envoy)
    chat_stream_plain(envoy)
    assert_exact(meter.done(), mock_usage(mock, "/v1/chat/completions"), OPENAI_USAGE)


# ---------------------------------------------------------------- include_usage


def test_tollgate_asks_for_usage_and_hides_the_usage_chunk(envoy, mock):
    mock.script("*", usage=OPENAI_USAGE)
    meter = Meter(envoy)
    chunks = list(gpt(envoy).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True, max_tokens=77))
    assert chunks
    for c in chunks:
        assert c.choices, f"the client got a usage-only chunk: {c}"
        assert c.choices[0].index == 0
        assert c.usage is None
    assert chunks[-1].choices[0].finish_reason == "stop"
    rec = mock_usage(mock, "/v1/chat/completions")
    sent = json.loads(rec["body"])
    assert sent["stream_options"] == {"include_usage": True}, sent
    assert sent["max_tokens"] == 77 and sent["messages"] == PROMPT and sent["stream"] is True
    assert rec["body_len"] == len(rec["body"].encode())
    # Cutting the usage chunk out needs a plain body.
    assert rec["headers"].get("accept-encoding") == "identity", rec["headers"]
    assert_exact(meter.done(), rec, OPENAI_USAGE)


def test_include_usage_false_is_overridden_and_hidden(envoy, mock):
    mock.script("*", usage=OPENAI_USAGE)
    meter = Meter(envoy)
    r = requests.post(envoy.url() + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {KEY_A}"}, stream=True, timeout=10,
                      json={"model": "gpt-4o-mini", "messages": PROMPT, "stream": True,
                            "stream_options": {"include_usage": False}})
    assert r.status_code == 200, r.text
    events = [ln[len(b"data: "):] for ln in r.iter_lines() if ln.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    for e in events[:-1]:
        assert json.loads(e)["choices"], e
    rec = mock_usage(mock, "/v1/chat/completions")
    assert json.loads(rec["body"])["stream_options"]["include_usage"] is True
    assert_exact(meter.done(), rec, OPENAI_USAGE)


def test_client_asking_for_usage_receives_it(envoy, mock):
    mock.script("*", usage=OPENAI_USAGE)
    meter = Meter(envoy)
    chunks = list(gpt(envoy).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == OPENAI_USAGE["input"] + OPENAI_USAGE["cache_read"]
    assert last.usage.completion_tokens == OPENAI_USAGE["output"]
    assert last.usage.prompt_tokens_details.cached_tokens == OPENAI_USAGE["cache_read"]
    rec = mock_usage(mock, "/v1/chat/completions")
    assert json.loads(rec["body"])["stream_options"] == {"include_usage": True}
    assert_exact(meter.done(), rec, OPENAI_USAGE)


# ---------------------------------------------------------------- bounded labels


def test_random_model_names_do_not_mint_stats(envoy, mock):
    # SPEC "Metrics" v2: a name no pricing or allow-list glob matches is `other`; a matching
    # one is its own label value (bounded per process by metrics.max_models, see
    # test_console.py).
    meter = Meter(envoy)
    names = [f"rnd-{uuid.uuid4().hex[:10]}" for _ in range(10)]
    matching = [f"gpt-4o-mini-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    matching += [f"claude-haiku-4-5-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    names += matching
    c = gpt(envoy)
    for n in names:
        out = c.chat.completions.create(model=n, messages=PROMPT)
        assert out.choices[0].message.content
    meter.done(requests_expected=len(names))
    models = meter.label_values("model")
    assert models == meter.label_values("model", TOKENS)
    assert models == {"other", *matching}, models
    for n in names[:10]:
        assert not any(n in stat for stat in meter.delta), n
    # Per request, the counters moved for every one of the 20.
    total = sum(d for s, d in meter.delta.items() if s.startswith(REQUESTS))
    assert total == len(names)


def test_a_model_the_allow_list_admits_is_its_own_label(envoy, mock):
    meter = Meter(envoy)
    names = [f"claude-haiku-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for n in names:
        claude(envoy, key=KEY_B).messages.create(model=n, max_tokens=16, messages=PROMPT)
    meter.done(requests_expected=3)
    labels_seen = {labels(s)["model"] for s in meter.delta
                   if s.startswith(REQUESTS) and ".consumer.team-b." in s}
    assert labels_seen == set(names), meter.delta


# ---------------------------------------------------------------- access_log_facts

FACTS_LINE = re.compile(
    r'"POST /v1/messages" (?P<code>\d+) consumer=(?P<consumer>\S*) model=(?P<model>\S*) '
    r"account=(?P<account>\S*) estimate=(?P<estimate>\S*) input_tokens=(?P<input_tokens>\S*) "
    r"output_tokens=(?P<output_tokens>\S*) usage=(?P<usage>\S*) decision=(?P<decision>\S*) "
    r".*?id=(?P<id>\S*)\s*$")


@pytest.mark.parametrize("facts", [None, True, False])
def test_access_log_facts_false_leaves_the_facts_out_of_the_access_log(make_envoy, mock, facts):
    """`access_log_facts: false` skips the per-request filter-state writes (SPEC "Benchmark
    rules" v2); absent or true, every fact is in the line. Metering is the same either way."""
    cfg = base_config() if facts is None else base_config(access_log_facts=facts)
    e = make_envoy(cfg, patch=with_request_ids)
    mock.reset()
    mock.script("*", usage={"input": 21, "output": 5})
    before = e.stats()
    t = tid()
    r = claude(e).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=50, messages=PROMPT, extra_headers={"x-test-id": t})
    assert r.status_code == 200
    line = access_log(e, {t}, FACTS_LINE)[t]
    fields = ("consumer", "model", "account", "estimate", "input_tokens", "output_tokens", "usage", "decision")
    if facts is False:
        assert {k: line[k] for k in fields} == {k: "-" for k in fields}, line
    else:
        assert line["consumer"] == "team-a" and line["model"] == "claude-haiku-4-5", line
        assert line["account"] == "anthropic-1" and int(line["estimate"]) > 0, line
        assert (line["input_tokens"], line["output_tokens"]) == ("21", "5"), line
        assert (line["usage"], line["decision"]) == ("reported", "admitted"), line
    # The upstream got the account's key either way, and the tokens were counted.
    seen = mock.requests("/v1/messages")[-1]["headers"]
    assert seen["x-api-key"] == ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]
    counted = {labels(k)["type"]: v - before.get(k, 0) for k, v in e.stats().items()
               if k.startswith(TOKENS) and labels(k)["consumer"] == "team-a" and v != before.get(k, 0)}
    assert counted == {"input": 21, "output": 5}, counted
