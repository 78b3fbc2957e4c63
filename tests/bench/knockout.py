"""Knock-out builds: what each large piece of tollgate's own work costs in Envoy, measured by
removing it. A profiling aid for the performance goals (not shippable builds: a knocked-out
filter does not meter).

Each knock-out is an edit of a copy of HEAD's sources (`git archive` into target/ko/src) that
returns early from one stage behind a compile-time switch; a variant is a build with some
switches on. The builds go to target/ko/<variant>.wasm, optimised as `make build` does, and
`tests/bench/ab.py` then runs them in Envoy next to plain Envoy, the native filter, the floor
and the unchanged build, paired round by round:

    make bench-knockout        # or, with the floor built (`make floor`):
    KO="est usage rec est+usage+rec" SIZES=1k,32k,256k ROUNDS=10 \\
      .venv/bin/python tests/bench/knockout.py

Variables: `KO`, the variants (default `est usage rec est+usage+rec`; `+` joins knock-outs in
one build; the unchanged build always runs first); `NATIVE`, the native filter's row (default 1,
0 leaves it out); and ab.py's `SIZES` (workloads, default `1k`; also `32k`, `256k`, `sse`),
`ROUNDS` (alternating rounds, default 5) and `SECS` (seconds per run, default 4).

Knock-outs:
- `est`: the request's text is not read by the estimator (every byte counted as skipped, at
  the default rate): the estimator's cost.
- `usage`: a JSON answer is not parsed for its usage (a fixed usage is reported): the
  metering parse's cost (the body is still read and framed). Stream events are parsed as they
  pass, so on the `sse` workload it removes little.
- `rec`: a finished request publishes its access-log facts but records no metrics, analytics
  or price: the bookkeeping's cost.

What remains with all three out (the request body's JSON scan and validation, the key check,
admission, account choice, credential and rate-limit headers, the response's buffering,
learning, reconciliation and the account's settlement) is the part no knock-out here removes. An edit whose
anchor no longer matches exactly once stops the script: update the anchor with the code.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "ko"

# switch: (file, anchor, text, whether the text goes after the anchor or before it).
EDITS = {
    "est": ("filter/core/src/estimate.rs",
            "    pub fn push_str(&mut self, s: &str) {\n        let len = s.len() as u64;\n",
            "        if option_env!(\"TG_KO_EST\").is_some() {\n"
            "            self.skipped += len;\n"
            "            return;\n"
            "        }\n", True),
    "usage": ("filter/core/src/usage.rs",
              "        self.parser.finish(&mut self.counter);\n        let mut m = self.counter.metering();\n",
              "        if option_env!(\"TG_KO_USAGE\").is_some() {\n"
              "            let usage = crate::limits::Usage { input: 256, output: 5, ..Default::default() };\n"
              "            return Metering { usage, complete: true, ..Default::default() };\n"
              "        }\n", False),
    "rec": ("filter/core/src/flow/response.rs",
            "        let cost_micros = self.price().map(|p| p.cost_micros(&usage));\n",
            "        if option_env!(\"TG_KO_REC\").is_some() {\n"
            "            return;\n"
            "        }\n", False),
}

def wasm_opt() -> list[str]:
    """The Makefile's `WASM_OPT` (one place for the optimiser's flags)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if l.startswith("WASM_OPT :="))
    return line.split(":=", 1)[1].split()


def sources() -> Path:
    src = WORK / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    # `-m`: files dated now, so cargo never takes a build of other sources for this one.
    subprocess.run(["tar", "-x", "-m", "-C", str(src)], input=archive, check=True)
    for name, (file, anchor, insert, after) in EDITS.items():
        path = src / file
        text = path.read_text()
        if text.count(anchor) != 1:
            sys.exit(f"knock-out {name}: its anchor is not in {file} exactly once; update EDITS")
        text = text.replace(anchor, anchor + insert if after else insert + anchor)
        path.write_text(text)
    return src


def build(src: Path, variant: str) -> Path:
    switches = variant.split("+") if variant != "none" else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("TG_KO_")}
    for s in switches:
        env[f"TG_KO_{s.upper()}"] = "1"
    subprocess.run(["cargo", "build", "-q", "--release", "--target", "wasm32-wasip1", "-p",
                    "tollgate", "--target-dir", str(WORK / "target")], cwd=src, env=env, check=True)
    out = WORK / f"{variant.replace('+', '-')}.wasm"
    subprocess.run(wasm_opt() + [str(WORK / "target/wasm32-wasip1/release/deps/tollgate.wasm"),
                               "-o", str(out)], check=True)
    return out


def main() -> int:
    asked = os.environ.get("KO", "est usage rec est+usage+rec").split()
    for v in asked:
        unknown = [s for s in v.split("+") if s not in EDITS]
        if unknown:
            sys.exit(f"unknown knock-out {unknown[0]!r} in {v!r}; known: {', '.join(EDITS)}")
    if len(set(asked)) != len(asked):
        sys.exit("a variant is named twice in KO")
    floor = ROOT / "target" / "wasm32-wasip1" / "release" / "tollgate_floor.wasm"
    if not floor.exists():
        sys.exit("build the floor first: make floor")
    variants = ["none"] + asked
    src = sources()
    built = [(v.replace("+", "-"), build(src, v)) for v in variants]
    spec = " ".join([f"{built[0][0]}={built[0][1]}", f"f={floor}"]
                    + [f"{n}={p}" for n, p in built[1:]])
    env = dict(os.environ, VARIANTS=spec)
    # ab.py adds the native filter's row for any value: here it is on unless NATIVE=0.
    env.pop("NATIVE", None)
    if os.environ.get("NATIVE", "1") != "0":
        env["NATIVE"] = "1"
    return subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "ab.py")],
                          env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
