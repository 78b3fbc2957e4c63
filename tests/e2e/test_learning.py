"""The estimator learns each model's bias from real usage and corrects later estimates."""

from __future__ import annotations

import re
import time

import anthropic

from conftest import ACCOUNT_KEYS, KEY_A, base_config

MODEL = "claude-haiku-4-5"
PROMPT = "Summarise the history of the printing press in three sentences, please. " * 4


def estimates(envoy) -> list[int]:
    return [int(m) for m in re.findall(r'"POST /v1/messages" 200 .*?estimate=(\d+) ', envoy.log_text())]


def wait_estimates(envoy, n: int, timeout: float = 10.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = estimates(envoy)
        if len(got) >= n:
            return got
        time.sleep(0.1)
    raise AssertionError(f"expected {n} access-log lines, got {estimates(envoy)}")


def test_estimates_converge_on_a_model_whose_real_counts_are_30_percent_higher(make_envoy, mock):
    e = make_envoy(base_config())
    c = anthropic.Anthropic(base_url=e.url(), api_key=KEY_A, max_retries=0)

    def call(model):
        c.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": PROMPT}])

    # The raw estimate of this body, learned on another model (ratios are per model).
    call(MODEL + "-probe")
    first = wait_estimates(e, 1)[0]
    real = round(first * 1.3)
    mock.script(ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"], model=MODEL, usage={"input": real, "output": 5})
    try:
        for i in range(6):
            # The per-worker cache of learned ratios refreshes every 2 s.
            time.sleep(2.1 if i else 0)
            call(MODEL)
        got = wait_estimates(e, 7)[1:]
    finally:
        mock.reset(only="scripts")
    print(f"\nraw estimate {first}, real input {real}; estimates used at admission: {got}")
    assert got[0] == first                      # nothing learned yet for this model
    assert abs(got[-1] - real) <= max(2, real * 0.02), got
    # Every estimate after the first observation is closer than the unlearned one.
    assert all(abs(x - real) < abs(first - real) for x in got[1:]), got
