"""Soak: real Envoy + tollgate + the mock upstream under steady mixed SDK traffic.

    .venv/bin/python tests/soak.py                 # 180 s (make soak)
    SOAK_SECONDS=1800 SOAK_RPS=30 .venv/bin/python tests/soak.py

Traffic: Anthropic and OpenAI SDK calls, streaming and not, at a steady total rate, each with a
random `x-session-id` and a random model name (so session and model tables see far more keys
than they hold). Every 10 s it samples Envoy's RSS (/proc/<pid>/status). At the end it checks:
no request failed, no `panicked` in Envoy's log, and no usage was lost: the tokens tollgate
metered (`tollgate_tokens_total` in /stats) equal the usage the mock reported for the
requests it completed. Prints a summary table; exits 1 if a check fails.

Shared-data key count: Envoy has no admin endpoint that lists a VM's shared data, but tollgate
counts every key it creates (`tollgate_shared_data_keys_created_total`; Envoy never frees one),
and that count must not move during the soak. The key set is bounded by design (SPEC "Stages
and shared state": client-chosen values live in fixed-size slot tables, all created when the
configuration loads); the soak sends far more distinct sessions and models than the tables hold.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "e2e"))

import anthropic  # noqa: E402
import openai  # noqa: E402

import envoyctl  # noqa: E402
from mockctl import Mock  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
RPS = float(os.environ.get("SOAK_RPS", "20"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "4"))
SAMPLE_EVERY = 10.0
KEY = "tg-soak-key"
MAX_SESSIONS = 1024
# Growth allowed from the first sample to the last before the soak fails.
RSS_GROWTH_LIMIT_MIB = float(os.environ.get("SOAK_RSS_GROWTH_MIB", "64"))

ACCOUNT_KEYS = {
    "TOLLGATE_ANTHROPIC_KEY_1": "sk-ant-api03-soak-account-one-000000000000AAAA",
    "TOLLGATE_ANTHROPIC_KEY_2": "sk-ant-api03-soak-account-two-000000000000BBBB",
    "TOLLGATE_OPENAI_KEY_1": "sk-proj-soak-account-one-0000000000000000CCCC",
    "TOLLGATE_GEMINI_KEY_1": "AIza-soak-gemini-account-one-DDDD",
}
TOKENS = "wasmcustom.tollgate_tokens_total."
REQUESTS = "wasmcustom.tollgate_requests_total."

CONFIG = {
    "consumers": [{"name": "soak", "keys": [KEY]}],
    "limits": [{"tokens": 10**12, "per": "minute"}, {"concurrent": 64}],
    "accounts": [
        {"name": "anthropic-1", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_1"},
        {"name": "anthropic-2", "provider": "anthropic", "key_env": "TOLLGATE_ANTHROPIC_KEY_2"},
        {"name": "openai-1", "provider": "openai", "key_env": "TOLLGATE_OPENAI_KEY_1"},
        {"name": "gemini-1", "provider": "gemini", "key_env": "TOLLGATE_GEMINI_KEY_1"},
    ],
    "selection": {"strategy": "least_loaded",
                  "affinity": {"header": "x-session-id", "conversation": True,
                               "max_sessions": MAX_SESSIONS}},
    "admin": {"path": "/tollgate", "keys": ["tg-soak-admin"]},
}

KINDS = ("anthropic", "anthropic-stream", "openai", "openai-stream")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def key_count(envoy) -> int:
    """Shared-data keys tollgate has created in this Envoy (its counter of creations)."""
    return sum(v for k, v in envoy.stats().items() if k.endswith("tollgate_shared_data_keys_created_total"))


def token_total(envoy) -> int:
    return sum(v for k, v in envoy.stats().items() if k.startswith(TOKENS))


class Traffic:
    def __init__(self, url: str, deadline: float):
        self.url = url
        self.deadline = deadline
        self.lock = threading.Lock()
        self.sent = dict.fromkeys(KINDS, 0)
        self.ok = 0
        self.errors: list[str] = []

    def one(self, rng: random.Random, claude, gpt) -> None:
        kind = rng.choice(KINDS)
        session = uuid.uuid4().hex
        words = " ".join(rng.choice(("alpha", "beta", "gamma", "δέλτα", "數據", "soak")) for _ in range(rng.randint(3, 60)))
        msgs = [{"role": "user", "content": words}]
        hdr = {"x-session-id": session}
        if kind.startswith("anthropic"):
            model = f"claude-soak-{rng.randrange(16**6):06x}"
            if kind == "anthropic":
                m = claude.messages.create(model=model, max_tokens=rng.randint(4, 64), messages=msgs,
                                           extra_headers=hdr)
                assert m.content[0].text
            else:
                with claude.messages.stream(model=model, max_tokens=rng.randint(4, 64), messages=msgs,
                                            extra_headers=hdr) as s:
                    final = s.get_final_message()
                assert final.usage.output_tokens > 0
        else:
            model = f"gpt-soak-{rng.randrange(16**6):06x}"
            if kind == "openai":
                r = gpt.chat.completions.create(model=model, messages=msgs, extra_headers=hdr)
                assert r.choices[0].message.content
            else:
                chunks = list(gpt.chat.completions.create(model=model, messages=msgs, stream=True,
                                                          extra_headers=hdr))
                # tollgate asked for usage itself and removed the usage-only chunk.
                assert chunks and all(c.choices for c in chunks), "usage chunk leaked to the client"
        with self.lock:
            self.sent[kind] += 1

    def worker(self, seed: int, period: float) -> None:
        rng = random.Random(seed)
        claude = anthropic.Anthropic(base_url=self.url, api_key=KEY, max_retries=0, timeout=30)
        gpt = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        nxt = time.monotonic() + rng.random() * period
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                return
            if now < nxt:
                time.sleep(min(nxt - now, self.deadline - now))
                continue
            nxt += period
            try:
                self.one(rng, claude, gpt)
                with self.lock:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}"[:200])


class MockUsage:
    """Collects the mock's usage records incrementally (it keeps only the last 2000)."""

    def __init__(self, mock: Mock):
        self.mock = mock
        self.done: dict[int, dict] = {}
        self.cursor = mock.stats()["last_seq"]

    def poll(self) -> int:
        pending = []
        for r in self.mock.requests(since=self.cursor):
            if r["end"] == "pending":
                pending.append(r["seq"])
            else:
                self.done[r["seq"]] = r
        if pending:
            self.cursor = min(pending) - 1
        elif self.done:
            self.cursor = max(self.cursor, max(self.done))
        return len(pending)

    def tokens(self) -> int:
        total = 0
        for r in self.done.values():
            u = r.get("usage") or {}
            if r["end"] == "complete":
                total += u.get("input", 0) + u.get("output", 0) + u.get("cache_read", 0) + u.get("cache_write", 0)
        return total

    def ends(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.done.values():
            out[r["end"]] = out.get(r["end"], 0) + 1
        return out


def main() -> int:
    for p in (envoyctl.WASM, envoyctl.MOCK):
        if not p.exists():
            print(f"{p} is missing: run `make build`", file=sys.stderr)
            return 2
    workdir = Path(os.environ.get("SOAK_DIR", "/tmp/tollgate-soak"))
    workdir.mkdir(parents=True, exist_ok=True)
    mock = Mock(str(envoyctl.MOCK), threads=2)
    mock.start()
    envoy = None
    try:
        cfg = envoyctl.render(envoyctl.load("envoy.yaml"),
                              ports={"tollgate": envoyctl.free_port(), "llm": mock.port},
                              admin_port=envoyctl.free_port(), tollgate=CONFIG, env_keys=list(ACCOUNT_KEYS))
        log = workdir / "soak.log"
        if log.exists():
            log.unlink()
        envoy = envoyctl.Envoy(cfg, workdir, env=ACCOUNT_KEYS, concurrency=2, name="soak").start()
        pid = envoy.proc.pid
        usage = MockUsage(mock)
        tokens0 = token_total(envoy)
        # Every shared-data key tollgate creates is counted (filter/src/ffi.rs, Store for Envoy); after the
        # configuration loads and the first flush, the count must not move.
        time.sleep(1.5)
        keys0 = key_count(envoy)
        print(f"soak: {SECONDS:.0f}s at {RPS:g} req/s over {WORKERS} workers; Envoy pid {pid}, "
              f"log {envoy.log_path}")

        start = time.monotonic()
        traffic = Traffic(envoy.url(), start + SECONDS)
        period = WORKERS / RPS
        threads = [threading.Thread(target=traffic.worker, args=(i, period), daemon=True)
                   for i in range(WORKERS)]
        for t in threads:
            t.start()
        samples = [(0.0, rss_mib(pid), 0, 0)]
        print(f"{'t (s)':>6} {'RSS MiB':>8} {'ok':>7} {'errors':>6}")
        print(f"{0:6.0f} {samples[0][1]:8.1f} {0:7d} {0:6d}")
        next_sample = start + SAMPLE_EVERY
        while any(t.is_alive() for t in threads):
            time.sleep(max(0.0, min(1.0, next_sample - time.monotonic())))
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_EVERY
                with traffic.lock:
                    ok, err = traffic.ok, len(traffic.errors)
                s = (time.monotonic() - start, rss_mib(pid), ok, err)
                samples.append(s)
                print(f"{s[0]:6.0f} {s[1]:8.1f} {s[2]:7d} {s[3]:6d}", flush=True)
                usage.poll()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start

        # Let every response finish and every counter land, then compare.
        deadline = time.monotonic() + 20
        while usage.poll() and time.monotonic() < deadline:
            time.sleep(0.2)
        want = usage.tokens()
        metered = token_total(envoy) - tokens0
        while metered != want and time.monotonic() < deadline:
            time.sleep(0.2)
            metered = token_total(envoy) - tokens0
        stats = envoy.stats()
        admitted = sum(v for k, v in stats.items() if k.startswith(REQUESTS) and k.endswith(".outcome.admitted"))
        panics = [ln for ln in envoy.log_text().splitlines() if "panicked" in ln]
        keys1 = key_count(envoy)
        final_rss = rss_mib(pid)
        samples.append((elapsed, final_rss, traffic.ok, len(traffic.errors)))
    finally:
        if envoy:
            envoy.stop()
        mock.stop()

    first, peak, last = samples[1][1] if len(samples) > 1 else samples[0][1], max(s[1] for s in samples), final_rss
    checks = [
        ("requests ok", f"{traffic.ok} ({', '.join(f'{k} {v}' for k, v in traffic.sent.items())})", traffic.ok > 0),
        ("request errors", str(len(traffic.errors)), not traffic.errors),
        ("achieved rate", f"{traffic.ok / elapsed:.1f} req/s (target {RPS:g})", True),
        ("mock records", ", ".join(f"{k} {v}" for k, v in sorted(usage.ends().items())),
         len(usage.done) == traffic.ok),
        ("tollgate admitted", str(admitted), admitted == traffic.ok),
        ("tokens metered (tollgate)", str(metered), True),
        ("tokens reported (mock)", str(want), True),
        ("lost usage", str(want - metered), metered == want),
        ("panicked lines", str(len(panics)), not panics),
        ("Envoy RSS MiB start / 10 s / peak / end",
         f"{samples[0][1]:.1f} / {first:.1f} / {peak:.1f} / {last:.1f}",
         last - first <= RSS_GROWTH_LIMIT_MIB),
        ("distinct sessions vs max_sessions", f"{traffic.ok} vs {MAX_SESSIONS}", True),
        ("shared-data keys at start / end", f"{keys0} / {keys1}", keys0 > 0 and keys1 == keys0),
    ]
    w = max(len(c[0]) for c in checks)
    print(f"\n| {'check':<{w}} | value | ok |\n|{'-' * (w + 2)}|---|---|")
    for name, value, ok in checks:
        print(f"| {name:<{w}} | {value} | {'yes' if ok else 'NO'} |")
    for e in traffic.errors[:5]:
        print("error:", e)
    for ln in panics[:3]:
        print("panic:", ln)
    failed = [c[0] for c in checks if not c[2]]
    print(f"\nsoak: {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
