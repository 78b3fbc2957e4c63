"""Where an Envoy row's memory goes: starts rows one at a time at each `--concurrency`, warms
them up with the bench's workloads, lets them settle and prints VmRSS, tcmalloc's own figures
(admin `/memory`: allocated, page heap free, thread caches, physical) and the resident memory by
mapping kind (`/proc/<pid>/smaps`: Envoy's text pages, anonymous memory, wasm code). A
measuring aid for issue 20's RSS goal next to `make bench` (whose RSS rows are the record):

    .venv/bin/python tests/bench/rss.py                          # rows b,f,c at concurrency 2
    .venv/bin/python tests/bench/rss.py --concurrency 1,2,4      # per-VM vs shared: fit over workers
    .venv/bin/python tests/bench/rss.py --rows b,c,x --wasm x=/tmp/other.wasm --workloads none

`--wasm NAME=PATH` adds a row with (c)'s configuration and another module (an older build, a
build at another opt-level); `--workloads none` measures right after start, before any request
(a module that cannot serve can still be measured for its load cost).

Paired A/B of two modules: `--rows old,new --wasm old=A.wasm --wasm new=B.wasm --repeat 3` runs
the rows alternating (old, new, old, new, ...) and ends with each row's median and spread.
`--allocator BYTES,INTERVAL[,FIELD=N...]` overrides the configs' `memory_allocator_manager`
(`0,0` removes it; e.g. `16777216,1s,soft_memory_limit_bytes=25165824`); `--dump DIR` saves each row's tcmalloc report (admin `/memory/tcmalloc`) and its
`server.memory` stats there; `--settle-s` waits longer before the reading (tcmalloc keeps free
pages a recent peak may need again for 1 to 5 minutes before it releases them).

Envoy inherits this script's environment: `GLIBC_TUNABLES=glibc.pthread.rseq=0 .venv/bin/python
tests/bench/rss.py ...` measures tcmalloc with per-CPU caches (glibc 2.35+ registers rseq itself,
and tcmalloc then falls back to per-thread caches, which keep what V8's compile threads freed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402
import envoyctl  # noqa: E402

MB = 1024 * 1024


def smaps_by_kind(pid: int) -> dict[str, int]:
    """Resident kB per kind of mapping: file-backed by file and permissions, anonymous by
    permissions (an executable anonymous mapping is V8's wasm code)."""
    out: dict[str, int] = {}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                perm = parts[1]
                name = parts[5] if len(parts) > 5 else ""
                if name.startswith("/"):
                    kind = f"file {os.path.basename(name)} {perm}"
                elif name:
                    kind = name
                else:
                    kind = f"anon {perm}" + (" (code)" if "x" in perm else "")
            elif parts and parts[0] == "Rss:" and kind is not None:
                out[kind] = out.get(kind, 0) + int(parts[1])
    return out


def tcmalloc(admin: str) -> dict[str, float]:
    with urllib.request.urlopen(admin + "/memory", timeout=5) as r:
        return {k: int(v) / MB for k, v in json.load(r).items()}


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def set_allocator(spec: str | None):
    """A config patch setting (or, with `0,0`, removing) `memory_allocator_manager`."""
    def patch(cfg: dict) -> None:
        if spec is None:
            return
        size, interval, *extra = spec.split(",")
        if size == "0":
            cfg.pop("memory_allocator_manager", None)
            return
        cfg["memory_allocator_manager"] = {"bytes_to_release": int(size),
                                           "memory_release_interval": interval}
        for kv in extra:  # e.g. soft_memory_limit_bytes=25165824
            k, v = kv.split("=", 1)
            cfg["memory_allocator_manager"][k] = int(v)
    return patch


def then(first, second):
    def patch(cfg: dict) -> None:
        if first:
            first(cfg)
        second(cfg)
    return patch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="b,f,c", help="b, n, c, f and any --wasm name")
    ap.add_argument("--concurrency", default="2")
    ap.add_argument("--wasm", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--workloads", default="1k,32k,256k,sse", help="warm-up workloads, or none")
    ap.add_argument("--warm-s", type=float, default=2.0)
    ap.add_argument("--top", type=int, default=6, help="mapping kinds shown per row")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the rows, alternating")
    ap.add_argument("--allocator", default=None, metavar="BYTES,INTERVAL[,FIELD=N]",
                    help="memory_allocator_manager for every row (0,0: none)")
    ap.add_argument("--settle-s", type=float, default=3.0,
                    help="seconds idle after warm-up before the reading")
    ap.add_argument("--dump", default=None, metavar="DIR", help="save tcmalloc reports here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tollgate-rss-"))
    lua = work / "post.lua"
    lua.write_text(B.WRK_LUA)
    wls = [w for w in B.workloads() if w.key in args.workloads.split(",")]
    for w in wls:
        w.file = work / f"body-{w.key}.json"
        w.file.write_bytes(w.body)
    mock = B.Mock(str(envoyctl.MOCK), record=False)
    mock.start()
    mock.script("*", model=B.STREAM_MODEL, events=B.SSE_EVENTS)
    ctx = B.Ctx(mock, work, True)
    alloc = set_allocator(args.allocator)
    builds = {
        "b": lambda: B.envoy_config(ctx, wasm=False, patch=alloc),
        "n": lambda: B.envoy_config(ctx, wasm=False, patch=then(B.add_ai_protocol_manager, alloc)),
        "c": lambda: B.envoy_config(ctx, tollgate=B.tollgate_local(), patch=alloc),
        "f": lambda: B.envoy_config(ctx, tollgate=B.tollgate_local(),
                                    patch=then(B.use_wasm(B.FLOOR_WASM), alloc)),
    }
    for spec in args.wasm:
        name, path = spec.split("=", 1)
        builds[name] = (lambda p: lambda: B.envoy_config(ctx, tollgate=B.tollgate_local(),
                                                          patch=then(B.use_wasm(p), alloc)))(path)
    if args.dump:
        Path(args.dump).mkdir(parents=True, exist_ok=True)
    after: dict[str, list[float]] = {}
    print("row@workers  RSS MB (at start → after warm-up) | tcmalloc MB: allocated, page heap "
          "free, thread caches, physical | resident MB by mapping kind")
    try:
        for conc, rnd, name in [(int(c), r, n) for c in args.concurrency.split(",")
                                for r in range(args.repeat) for n in args.rows.split(",")]:
            e = envoyctl.Envoy(builds[name](), work, env=B.ACCOUNT_KEYS, concurrency=conc,
                               name=f"rss-{name}-{conc}")
            e.start()
            try:
                pid = e.proc.pid
                time.sleep(1.0)
                r0 = B.rss_kb(pid) or 0
                key = B.TOLLGATE_KEY if name not in ("b", "n") else "sk-ant-bench-client"
                for w in wls:
                    B.settle([pid, mock.proc.pid])
                    B.run_wrk(e.url(), key, w.file, lua, args.warm_s, conns=8)
                B.settle([pid, mock.proc.pid])
                time.sleep(args.settle_s)  # the allocator's background release runs each second
                r1 = B.rss_kb(pid) or 0
                t = tcmalloc(e.admin)
                kinds = sorted(smaps_by_kind(pid).items(), key=lambda kv: -kv[1])[:args.top]
                after.setdefault(f"{name}@{conc}", []).append(r1 / 1024)
                if args.dump:
                    base = Path(args.dump) / f"{name}-{conc}-{rnd}"
                    base.with_suffix(".tcmalloc.txt").write_text(
                        fetch_text(e.admin + "/memory/tcmalloc"))
                    base.with_suffix(".stats.txt").write_text(
                        fetch_text(e.admin + "/stats?filter=server.memory"))
                print(f"{name}@{conc}  {r0 / 1024:.1f} → {r1 / 1024:.1f} | "
                      f"{t.get('allocated', 0):.1f}, {t.get('pageheap_free', 0):.1f}, "
                      f"{t.get('total_thread_cache', 0):.1f}, {t.get('total_physical_bytes', 0):.1f} | "
                      + ", ".join(f"{k} {v / 1024:.1f}" for k, v in kinds), flush=True)
            finally:
                e.stop()
    finally:
        mock.stop()
    if args.repeat > 1:
        for row, vals in after.items():
            print(f"{row}  after warm-up: median {statistics.median(vals):.1f} MB "
                  f"({min(vals):.1f}–{max(vals):.1f}, n={len(vals)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
