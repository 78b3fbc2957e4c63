#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) each, seeded from seeds/<target>,
# and prints the executions per target. Exits non-zero on the first crash (the input is in
# artifacts/<target>/). Needs cargo-fuzz; uses nightly if installed, else stable with
# RUSTC_BOOTSTRAP=1 (libFuzzer's sanitizer-coverage flags are nightly-only).
set -uo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"config request sse response ratelimit headers"}
if rustup run nightly rustc --version >/dev/null 2>&1; then tc=(+nightly); else tc=(); export RUSTC_BOOTSTRAP=1; fi
# Release with overflow checks and debug assertions, no ASan (safe Rust: it adds only cost).
flags=(-O -a -s none)
cargo "${tc[@]}" fuzz build "${flags[@]}" || exit 1
status=0
for t in $targets; do
  mkdir -p "corpus/$t"
  log="target/fuzz-$t.log"
  cargo "${tc[@]}" fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  printf '%-10s %6ss  %12s execs  cov %-6s %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" \
    "$([ $rc = 0 ] && echo ok || echo "CRASH (see $log, artifacts/$t/)")"
  [ $rc = 0 ] || status=1
done
exit $status
