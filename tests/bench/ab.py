"""Paired A/B of tollgate builds in Envoy: each variant is a .wasm file run with the bench's (c)
configuration, next to plain Envoy (b) and optionally the native filter (n), all started before
the first round; rounds alternate the rows (order rotated each round), so machine drift hits all
rows alike. Prints, per workload, throughput, its ratio to (b) and Envoy CPU per request over
(b) from the same round (median, min..max), and RSS after warm-up. A profiling aid next to
`make bench` (which is the measurement of record), for questions such as "does this change
save CPU per request?":

    VARIANTS="old=/tmp/old.wasm new=target/wasm32-wasip1/release/tollgate.wasm" NATIVE=1 \\
      SIZES=1k,32k,256k ROUNDS=5 SECS=3 .venv/bin/python tests/bench/ab.py

A variant may change (c)'s tollgate configuration with top-level `key=JSON` settings after its
path, comma-separated, e.g. `nofacts=build.wasm,access_log_facts=false`. A variant named `f`
with the floor's wasm (tests/bench/floor, which ignores its configuration) gives (f) in the
same rounds; every other variant then also shows its own work over (f), and its CPU over the
first variant, paired by round.

On a shared 2-core machine, differences under about 5 µs per request are noise. For the A/B in
the bench of record (every row, latency too, a section in RESULTS.md) use
`make bench-ab OLD=<commit>` or `bench.py --ab OLD.wasm` instead.
"""

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402
import envoyctl  # noqa: E402


def main() -> int:
    spec = os.environ.get("VARIANTS", "")
    variants = [v.split("=", 1) for v in spec.split() if "=" in v]
    if not variants:
        print(__doc__, file=sys.stderr)
        return 2
    sizes = os.environ.get("SIZES", "1k").split(",")
    rounds = int(os.environ.get("ROUNDS", "5"))
    secs = float(os.environ.get("SECS", "4"))
    work = Path(tempfile.mkdtemp(prefix="tollgate-ab-"))
    lua = work / "post.lua"
    lua.write_text(B.WRK_LUA)
    wls = [w for w in B.workloads() if w.key in sizes]
    for w in wls:
        w.file = work / f"body-{w.key}.json"
        w.file.write_bytes(w.body)

    def with_wasm(spec: str):
        path, *sets = spec.split(",")
        tollgate = B.tollgate_local()
        for s in sets:
            k, v = s.split("=", 1)
            tollgate[k] = json.loads(v)
        return lambda ctx: B.envoy_config(ctx, tollgate=tollgate, patch=B.use_wasm(path))

    rows = [("b", lambda ctx: B.envoy_config(ctx, wasm=False))]
    if os.environ.get("NATIVE"):
        rows.append(("n", lambda ctx: B.envoy_config(ctx, wasm=False,
                                                     patch=B.add_ai_protocol_manager)))
    rows += [(name, with_wasm(path)) for name, path in variants]
    key = {name: (B.TOLLGATE_KEY if name not in ("b", "n") else "sk-ant-bench-client")
           for name, _ in rows}

    mock = B.Mock(str(envoyctl.MOCK), record=False)
    mock.start()
    mock.script("*", model=B.STREAM_MODEL, events=B.SSE_EVENTS)
    ctx = B.Ctx(mock, work, False)
    servers: dict[str, B.Server] = {}
    try:
        for name, build in rows:
            servers[name] = B.start_envoy_row(f"ab-{name}", build)(ctx)
        mock_pids = [mock.proc.pid]
        for name, srv in servers.items():
            for w in wls:
                B.settle(srv.pids() + mock_pids)
                B.run_wrk(srv.url, key[name], w.file, lua, 2, conns=8)
        B.settle([p for s in servers.values() for p in s.pids()] + mock_pids)
        rss = {name: (B.rss_kb(s.main_pid) or 0) / 1024 for name, s in servers.items()}
        names = list(servers)
        res: dict = {name: {w.key: [] for w in wls} for name in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for w in wls:
                for name in order:
                    srv = servers[name]
                    B.settle(srv.pids() + mock_pids)
                    t0 = B.cpu_ticks(srv.pids())
                    x = B.run_wrk(srv.url, key[name], w.file, lua, secs)
                    t1 = B.cpu_ticks(srv.pids())
                    cpu = (t1 - t0) / B.CLK_TCK * 1e6 / max(1, x["requests"])
                    res[name][w.key].append((x["rps"], cpu, x["errors"]))
            print(f"round {r + 1}/{rounds} done", flush=True)
        for w in wls:
            print(f"== {w.key}")
            base = res["b"][w.key]
            first = next((n for n, _ in variants if n != "f"), "")
            for name in names:
                runs = res[name][w.key]
                ratio = [a[0] / b[0] for a, b in zip(runs, base)]
                added = [a[1] - b[1] for a, b in zip(runs, base)]
                print(f"{name:>10}: {statistics.median(a[0] for a in runs):8.0f} req/s  "
                      f"x(b) {statistics.median(ratio):.3f} ({min(ratio):.3f}..{max(ratio):.3f})  "
                      f"CPU +{statistics.median(added):6.1f} µs/req "
                      f"({min(added):.1f}..{max(added):.1f})  errors {sum(a[2] for a in runs)}")
                for ref, what in (("f", "own work over (f)"), (first, f"CPU over {first}")):
                    if ref in res and name not in ("b", "f", ref):
                        d = [a[1] - r[1] for a, r in zip(runs, res[ref][w.key])]
                        print(f"{'':>10}  {what}, paired: {statistics.median(d):6.1f} µs/req "
                              f"({min(d):.1f}..{max(d):.1f})")
        print("RSS after warm-up, MB over (b):",
              {name: round(v - rss["b"], 1) for name, v in rss.items()})
    finally:
        for srv in servers.values():
            srv.stop()
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
