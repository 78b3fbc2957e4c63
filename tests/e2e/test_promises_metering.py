"""Issue #18, the metering promises through real Envoy with the official SDKs as clients:
responses compressed with `deflate` (zlib, and the raw variant some servers send under the
same name), OpenAI `/v1/completions` and `/v1/embeddings`, and Gemini through Google's own
SDK (`google-genai`). Each test reads the figure three ways: the request's access-log line
(filter state), the `tollgate_tokens_total` counters and the usage API's consumer totals,
each equal to what the upstream reported (SPEC "Counting", "Trust boundaries")."""

from __future__ import annotations

import time

import pytest
import requests
from google import genai
from google.genai import types

from conftest import ACCOUNT_KEYS, ADMIN_KEY, KEY_A, stat_sum
from test_metering import CASES, GEMINI_USAGE, TYPES, Meter, assert_exact, gpt, mock_usage

GEMINI_KEY = ACCOUNT_KEYS["TOLLGATE_GEMINI_KEY_1"]
PROMPT_TEXT = "Count my tokens, please."
# The usage API names the four numbers so.
TOTALS = {"input": "input_tokens", "output": "output_tokens", "cache_read": "cache_read_tokens",
          "cache_write": "cache_write_tokens"}


@pytest.fixture(autouse=True)
def clean_mock(mock):
    mock.reset()
    yield


def consumer_totals(envoy, name: str = "team-a", timeout: float = 10.0) -> dict:
    """The usage API's totals of consumer `name` once they hold every request the counters
    hold (each worker merges its facts into the usage API about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(envoy.url() + "/tollgate/usage", headers={"x-api-key": ADMIN_KEY}, timeout=5)
        assert r.status_code == 200, r.text
        totals = next(c["totals"] for c in r.json()["consumers"] if c["name"] == name)
        admitted = stat_sum(envoy, "tollgate_requests_total", consumer=name, outcome="admitted")
        if totals["requests"] == admitted or time.monotonic() > deadline:
            assert totals["requests"] == admitted, (totals, admitted)
            return totals
        time.sleep(0.2)


def metered_exactly(envoy, mock, call, path: str, scripted: dict) -> dict:
    """Runs `call` and checks that the access log, the counters and the usage API each show
    exactly the numbers the upstream reported; returns the mock's record of the request."""
    before = consumer_totals(envoy)
    meter = Meter(envoy)
    call()
    rec = mock_usage(mock, path)
    assert_exact(meter.done(), rec, scripted)
    after = consumer_totals(envoy)
    assert after["requests"] - before["requests"] == 1, (before, after)
    got = {t: after[TOTALS[t]] - before[TOTALS[t]] for t in TYPES}
    assert got == {t: scripted.get(t, 0) for t in TYPES}, (before, after)
    return rec


# ---------------------------------------------------------------- /v1/completions, /v1/embeddings


COMPLETION_USAGE = {"input": 1234, "output": 56, "cache_read": 789}
EMBEDDING_USAGE = {"input": 1234}


def completions_json(envoy):
    out = gpt(envoy).completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT_TEXT,
                                        max_tokens=64)
    assert out.choices[0].text
    assert out.usage.prompt_tokens == COMPLETION_USAGE["input"] + COMPLETION_USAGE["cache_read"]
    assert out.usage.completion_tokens == COMPLETION_USAGE["output"]


def completions_stream_plain(envoy):
    """tollgate asks for the usage itself and hides the usage-only chunk from the client."""
    text = ""
    for chunk in gpt(envoy).completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT_TEXT,
                                               max_tokens=64, stream=True):
        assert chunk.choices, f"the client got a usage-only chunk: {chunk}"
        assert chunk.usage is None
        text += chunk.choices[0].text
    assert text


def completions_stream_include_usage(envoy):
    usage = None
    for chunk in gpt(envoy).completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT_TEXT,
                                               max_tokens=64, stream=True,
                                               stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == COMPLETION_USAGE["output"]


def embeddings_base64(envoy):
    # The SDK asks for base64 vectors by default and decodes them.
    out = gpt(envoy).embeddings.create(model="text-embedding-3-small",
                                       input=[PROMPT_TEXT, "and these too"])
    assert [len(d.embedding) for d in out.data] == [8, 8]
    assert out.usage.prompt_tokens == EMBEDDING_USAGE["input"]


def embeddings_float(envoy):
    out = gpt(envoy).embeddings.create(model="text-embedding-3-small", input=PROMPT_TEXT,
                                       encoding_format="float")
    assert len(out.data) == 1 and out.data[0].embedding[0] == pytest.approx(0.0123)
    assert out.usage.total_tokens == EMBEDDING_USAGE["input"]


OPENAI_CASES = {
    "completions-json": (completions_json, "/v1/completions", COMPLETION_USAGE),
    "completions-sse": (completions_stream_plain, "/v1/completions", COMPLETION_USAGE),
    "completions-sse-include-usage": (completions_stream_include_usage, "/v1/completions",
                                      COMPLETION_USAGE),
    "embeddings-base64": (embeddings_base64, "/v1/embeddings", EMBEDDING_USAGE),
    "embeddings-float": (embeddings_float, "/v1/embeddings", EMBEDDING_USAGE),
}


@pytest.mark.parametrize("case", list(OPENAI_CASES))
def test_completions_and_embeddings_are_counted_exactly(envoy, mock, case):
    call, path, usage = OPENAI_CASES[case]
    # An embeddings answer reports input only: its output must count 0, never the output
    # reserve taken at admission nor an estimate.
    mock.script("*", usage=usage)
    rec = metered_exactly(envoy, mock, lambda: call(envoy), path, usage)
    assert rec["key"] == ACCOUNT_KEYS["TOLLGATE_OPENAI_KEY_1"], rec["key"]
    if path == "/v1/embeddings":
        assert rec["usage"]["output"] == 0, rec


# ---------------------------------------------------------------- deflate


DEFLATE_CASES = {**{c: CASES[c] for c in ("anthropic-json", "anthropic-sse", "chat-json",
                                          "chat-sse-include-usage", "responses-json",
                                          "responses-sse", "gemini-json", "gemini-sse",
                                          "gemini-array")},
                 **{c: OPENAI_CASES[c] for c in ("completions-json", "embeddings-base64")}}


@pytest.mark.parametrize("encoding", ["deflate", "deflate_raw"])
@pytest.mark.parametrize("case", list(DEFLATE_CASES))
def test_deflate_responses_are_counted_exactly(envoy, mock, case, encoding):
    call, path, usage = DEFLATE_CASES[case]
    # Sent compressed whatever the request's accept-encoding says: tollgate must inflate to
    # find the usage, and the client's SDK inflates what it receives.
    mock.script("*", usage=usage, encoding=encoding)
    rec = metered_exactly(envoy, mock, lambda: call(envoy), path, usage)
    assert rec["encoding"] == "deflate", rec["encoding"]


# ---------------------------------------------------------------- Gemini through google-genai


GEMINI_TEXT = "Metered through Google's own SDK"


def gemini_client(envoy, api_version: str | None) -> genai.Client:
    """Google's SDK pointed at Envoy, as a user would: the consumer's tollgate key as the
    API key, Envoy as the base URL (the SDK then speaks `/v1`; `v1beta` is the other path)."""
    return genai.Client(api_key=KEY_A, http_options=types.HttpOptions(
        base_url=envoy.url(), api_version=api_version, timeout=30_000,
        retry_options=types.HttpRetryOptions(attempts=1)))


def generate(c: genai.Client) -> tuple[str, types.GenerateContentResponseUsageMetadata]:
    r = c.models.generate_content(model="gemini-2.0-flash", contents=PROMPT_TEXT)
    return r.text, r.usage_metadata


def generate_stream(c: genai.Client) -> tuple[str, types.GenerateContentResponseUsageMetadata]:
    chunks = list(c.models.generate_content_stream(model="gemini-2.0-flash", contents=PROMPT_TEXT))
    assert len(chunks) > 2, chunks
    return "".join(ch.text or "" for ch in chunks), chunks[-1].usage_metadata


@pytest.mark.parametrize("api_version", [None, "v1beta"])
@pytest.mark.parametrize("method", ["generate_content", "generate_content_stream"])
def test_gemini_through_googles_sdk_is_served_and_counted_exactly(envoy, mock, method, api_version):
    mock.script("*", usage=GEMINI_USAGE, text=GEMINI_TEXT)
    call = generate if method == "generate_content" else generate_stream
    seen = {}

    def run():
        seen["text"], seen["usage"] = call(gemini_client(envoy, api_version))

    rec = metered_exactly(envoy, mock, run, "/v1", GEMINI_USAGE)
    # The client got the answer and Gemini's own usage, unchanged.
    assert seen["text"] == GEMINI_TEXT
    u = seen["usage"]
    assert u.prompt_token_count == GEMINI_USAGE["input"] + GEMINI_USAGE["cache_read"]
    assert u.cached_content_token_count == GEMINI_USAGE["cache_read"]
    assert u.thoughts_token_count == GEMINI_USAGE["reasoning"]
    # tollgate's output is candidates plus thoughts (checked equal to 56 above).
    assert u.candidates_token_count + u.thoughts_token_count == GEMINI_USAGE["output"]
    # The request went to Gemini's endpoint with the pooled key in place of the consumer's.
    version = api_version or "v1"
    verb = "generateContent" if method == "generate_content" else "streamGenerateContent?alt=sse"
    assert rec["path"] == f"/{version}/models/gemini-2.0-flash:{verb}", rec["path"]
    assert rec["key"] == GEMINI_KEY
    headers = {k.lower(): v for k, v in rec["headers"].items()}
    assert headers["x-goog-api-key"] == GEMINI_KEY
    assert KEY_A not in str(rec["headers"]) and KEY_A not in rec["path"], rec
