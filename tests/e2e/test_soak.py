"""The short form of `make soak` in CI: 30 s of steady mixed SDK traffic through real Envoy;
no request error, no lost usage, RSS and the shared-data key count flat, no panic."""

from __future__ import annotations

import os
import subprocess
import sys

import envoyctl


def test_a_short_soak_loses_nothing_and_stays_flat(tmp_path):
    env = {**os.environ, "SOAK_SECONDS": os.environ.get("SOAK_SECONDS", "30"), "SOAK_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(envoyctl.ROOT / "tests" / "soak.py")], env=env,
                       capture_output=True, text=True, timeout=300)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "| lost usage" in r.stdout and "soak: passed" in r.stdout
