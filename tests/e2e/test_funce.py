"""The demo config under func-e, as the README documents it:
`ENVOY_PATH=<envoy> func-e run -c envoy/envoy.yaml`, run from the repository root. With
ENVOY_PATH set func-e resolves and downloads nothing; the test proves it offline by pointing
every URL and proxy it could use at a closed loopback port."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
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


# ---- the README's func-e steps, run as written ----------------------------------------------

README = envoyctl.ROOT / "README.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.M | re.S)
PY_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
# The ports the README's steps use, fixed in envoy/envoy.yaml.
README_PORTS = (10000, 9901, 18080)


def readme_section(title: str) -> str:
    text = README.read_text()
    assert f"\n### {title}\n" in text, f"README.md has no section '### {title}'"
    return re.split(r"\n#{2,3} ", text.split(f"\n### {title}\n", 1)[1], maxsplit=1)[0]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Sandbox:
    """A network and mount namespace with its own loopback and /dev/shm, so the README's fixed
    ports and Envoy's default base id are free whatever else runs on this machine (other
    Envoys, another `make run`). Without `unshare`, the host's namespace if its ports are free."""

    def __init__(self):
        self.holder = None
        if shutil.which("unshare") and shutil.which("nsenter"):
            self.holder = subprocess.Popen(
                ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                 "ip link set lo up && mount -t tmpfs tmpfs /dev/shm && echo ready && exec sleep 3600"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if self.holder.stdout.readline().strip() != "ready":
                self.holder.kill()
                self.holder.wait()
                self.holder = None
        if self.holder is None and not all(port_free(p) for p in README_PORTS):
            pytest.skip(f"no network namespace here and one of the README's ports {README_PORTS} is busy")

    def command(self, argv: list[str], cwd: Path) -> list[str]:
        if self.holder is None:
            return argv
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", f"--wd={cwd}", "--", *argv]

    def close(self):
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


def checkout_view(tmp: Path) -> Path:
    """The repository as a fresh clone after `make setup build` sees it: every top-level entry
    linked, and `.venv` the project's (a git worktree has none: then the running one's)."""
    view = tmp / "checkout"
    view.mkdir()
    for entry in envoyctl.ROOT.iterdir():
        if entry.name != ".venv":
            (view / entry.name).symlink_to(entry)
    venv = envoyctl.ROOT / ".venv"
    (view / ".venv").symlink_to(venv if venv.exists() else Path(sys.prefix))
    return view


def test_readme_func_e_steps_work_as_written(tmp_path):
    """The README's func-e section, block by block, as a newcomer runs it from the repository
    root: each block but the last in a terminal of its own (the mock, then Envoy under func-e
    with the variables the README exports), the last one (curl) until Envoy answers; then every
    SDK example of the README. `make setup build`, which the section asks for first, is what
    the e2e suite runs on (`make e2e` builds). The environment holds no TOLLGATE_* variable and
    no ENVOY_PATH of the caller's: the README's own must be enough."""
    section = readme_section("func-e")
    blocks = SH_BLOCK.findall(section)
    assert len(blocks) >= 2, "the func-e section has its commands in ```sh blocks"
    servers, client = blocks[:-1], blocks[-1]
    snippets = PY_BLOCK.findall(README.read_text())
    assert any("OpenAI(" in s for s in snippets) and any("genai.Client(" in s for s in snippets)

    view = checkout_view(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_") and k != "ENVOY_PATH"}
    sandbox = Sandbox()
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        for i, block in enumerate(servers):
            log = tmp_path / f"terminal-{i + 1}.log"
            with open(log, "wb") as out:
                procs.append((subprocess.Popen(
                    sandbox.command(["bash", "-ec", block], view), cwd=view, env=env,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True), log))

        def terminals() -> str:
            out = []
            for p, log in procs:
                text = log.read_text(errors="replace")
                errors = [ln for ln in text.splitlines() if "][error][" in ln or "][critical][" in ln]
                out.append(f"--- {log.name} (exit {p.poll()}):\n" + "\n".join(errors[:10])
                           + f"\n...\n{text[-1500:]}")
            return "\n".join(out)

        deadline = time.time() + 120
        while True:
            r = subprocess.run(sandbox.command(["bash", "-ec", client], view), cwd=view, env=env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0 or time.time() > deadline:
                break
            dead = [p for p, _ in procs if p.poll() is not None]
            assert not dead, f"a README terminal ended early:\n{terminals()}"
            time.sleep(0.5)
        assert r.returncode == 0, f"the README's call failed: {r.stdout}{r.stderr}\n{terminals()}"
        body = json.loads(r.stdout)
        assert body["content"][0]["text"], body
        assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0, body

        for snippet in snippets:
            r = subprocess.run(sandbox.command([str(view / ".venv" / "bin" / "python"), "-c", snippet], view),
                               cwd=view, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"README snippet failed:\n{snippet}\n{r.stderr[-2000:]}"
            counts = [int(t) for t in r.stdout.split()[-2:] if t.isdigit()]
            assert len(counts) == 2 and min(counts) > 0, f"no token counts printed: {r.stdout!r}"
    finally:
        for p, _ in procs:  # Ctrl-C in each terminal, as the README says
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p, _ in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        sandbox.close()
    for _, log in procs:
        assert "panicked" not in log.read_text(errors="replace"), log.name
