"""The demo config under func-e, as the README documents it:
`ENVOY_PATH=<envoy> func-e run -c envoy/envoy.yaml`, run from the repository root. With
ENVOY_PATH set func-e resolves and downloads nothing; the test proves it offline by pointing
every URL and proxy it could use at a closed loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import anthropic
import pytest
import yaml

import envoyctl
from conftest import ACCOUNT_KEYS

DEMO_KEY = "tg-demo-team-a"  # the demo consumer key named in envoy/envoy.yaml


def func_e_binary() -> str | None:
    found = shutil.which("func-e")
    if found:
        return found
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    cand = Path(gopath.split(os.pathsep)[0]) / "bin" / "func-e"
    return str(cand) if cand.exists() else None


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


pytestmark = pytest.mark.skipif(func_e_binary() is None, reason="func-e is not installed (make setup)")


def test_demo_config_runs_under_func_e_offline(mock, tmp_path):
    port, admin = envoyctl.free_port(), envoyctl.free_port()
    shipped = envoyctl.load("envoy.yaml")
    cfg = envoyctl.render(shipped, ports={"tollgate": port, "llm": mock.port}, admin_port=admin)
    # Keep the shipped relative .wasm path: func-e runs Envoy in the current directory.
    rel = next(envoyctl.wasm_filters(shipped))["vm_config"]["code"]["local"]["filename"]
    next(envoyctl.wasm_filters(cfg))["vm_config"]["code"]["local"]["filename"] = rel
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(cfg))

    home = tmp_path / "func-e"
    closed = f"http://127.0.0.1:{envoyctl.free_port()}"
    env = {**os.environ, **ACCOUNT_KEYS,
           "ENVOY_PATH": envoyctl.envoy_binary(),
           "FUNC_E_CONFIG_HOME": str(home / "config"), "FUNC_E_DATA_HOME": str(home / "data"),
           "FUNC_E_STATE_HOME": str(home / "state"), "FUNC_E_RUNTIME_DIR": str(home / "run"),
           "ENVOY_VERSIONS_URL": closed + "/envoy-versions.json",
           "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
           "NO_PROXY": "", "no_proxy": ""}
    log_path = tmp_path / "func-e.log"
    with open(log_path, "wb") as log:
        # Everything after `-c` goes to Envoy unchanged.
        proc = subprocess.Popen(
            [func_e_binary(), "run", "-c", str(config), "--concurrency", "2",
             "--base-id", str(envoyctl.free_port()), "--disable-hot-restart", "-l", "info"],
            cwd=envoyctl.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        ready = False
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                pass
            if ready:
                break
            time.sleep(0.1)
        assert ready, f"not ready (exit {proc.poll()}):\n{log_path.read_text(errors='replace')[-3000:]}"

        mock.reset()
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=DEMO_KEY, max_retries=0)
        msg = client.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                     messages=[{"role": "user", "content": "Hello through func-e"}])
        assert msg.content[0].text
        seen = mock.last("/v1/messages")
        assert seen["key"] == ACCOUNT_KEYS["TOLLGATE_ANTHROPIC_KEY_1"]

        envoys = [c for c in children(proc.pid)
                  if str(config).encode() in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(envoys) == 1, "func-e runs the ENVOY_PATH binary as its child"
        # Ctrl-C, as a terminal sends it: to the whole foreground process group. (func-e
        # itself stops its Envoy with SIGKILL when it is interrupted.)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
        assert not alive(envoys[0]), "Envoy outlived func-e"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    text = log_path.read_text(errors="replace")
    assert "panicked" not in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1)
    # Nothing was looked up or downloaded: no Envoy version was installed or chosen.
    assert "looking up" not in text and "downloading" not in text.lower()
    versions = home / "data" / "envoy-versions"
    assert not versions.exists() or not any(versions.iterdir())
    assert not (home / "config" / "envoy-version").exists()
