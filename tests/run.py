"""`make run`: Envoy + tollgate on 127.0.0.1:10000 with the demo config.

By default the upstream is the local mock LLM (tests/mock). With ANTHROPIC_API_KEYS=k1,k2,...
(or ANTHROPIC_API_KEY) in the environment, the upstream is the real Anthropic API over TLS
and those keys are the account pool.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

import envoyctl  # noqa: E402
from mockctl import Mock  # noqa: E402

DEMO_KEY = "tg-demo-team-a"
ADMIN_KEY = "tg-demo-admin"
PORT = int(os.environ.get("TOLLGATE_PORT", "10000"))
ADMIN_PORT = int(os.environ.get("TOLLGATE_ADMIN_PORT", "9901"))
MOCK_PORT = int(os.environ.get("TOLLGATE_MOCK_PORT", "18080"))


def real_anthropic_keys() -> list[str]:
    keys = os.environ.get("ANTHROPIC_API_KEYS") or os.environ.get("ANTHROPIC_API_KEY") or ""
    return [k.strip() for k in keys.split(",") if k.strip()]


def anthropic_cluster() -> dict:
    return {
        "name": "llm",
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_ONLY",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": 1048576,
        "load_assignment": {"cluster_name": "llm", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "api.anthropic.com", "port_value": 443}}}}]}]},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "api.anthropic.com"}},
    }


def main() -> int:
    cfg = envoyctl.load("envoy.yaml")
    keys = real_anthropic_keys()
    env: dict[str, str] = {}
    mock = None
    wasm = next(envoyctl.wasm_filters(cfg))
    tg = envoyctl.tollgate_config(wasm)
    if keys:
        names = [f"TOLLGATE_ANTHROPIC_KEY_{i + 1}" for i in range(len(keys))]
        env.update(dict(zip(names, keys)))
        tg["accounts"] = [{"name": f"anthropic-{i + 1}", "provider": "anthropic", "key_env": n}
                          for i, n in enumerate(names)]
        cfg["static_resources"]["clusters"] = [anthropic_cluster()]
        vhost = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]
        vhost["routes"] = [r for r in vhost["routes"] if r["route"]["cluster"] == "llm"]
        vhost["routes"][0]["route"]["auto_host_rewrite"] = True
        upstream = f"the Anthropic API with {len(keys)} account key(s)"
        env_keys = names
    else:
        mock = Mock(str(envoyctl.MOCK), port=MOCK_PORT)
        mock.start()
        env.update({"TOLLGATE_ANTHROPIC_KEY_1": "mock-anthropic-key",
                    "TOLLGATE_OPENAI_KEY_1": "mock-openai-key",
                    "TOLLGATE_GEMINI_KEY_1": "mock-gemini-key",
                    "TOLLGATE_VLLM_KEY": "mock-vllm-key"})
        upstream = f"the mock LLM upstream on 127.0.0.1:{MOCK_PORT}"
        env_keys = None
    ports = {"tollgate": PORT} if keys else {"tollgate": PORT, "llm": MOCK_PORT, "llm-vllm": MOCK_PORT}
    cfg = envoyctl.render(cfg, ports=ports, admin_port=ADMIN_PORT, tollgate=tg, env_keys=env_keys)
    work = Path(tempfile.mkdtemp(prefix="tollgate-run-"))
    envoy = envoyctl.Envoy(cfg, work, env=env, name="envoy")
    try:
        envoy.start()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        if mock:
            mock.stop()
        return 1
    base = f"http://127.0.0.1:{PORT}"
    print(f"""
tollgate is running: Envoy on {base} in front of {upstream}.
Envoy admin: http://127.0.0.1:{ADMIN_PORT}  (metrics: /stats/prometheus)   log: {envoy.log_path}

Demo consumer key: {DEMO_KEY}        Admin key: {ADMIN_KEY}

  curl -s {base}/v1/messages -H 'x-api-key: {DEMO_KEY}' -H 'content-type: application/json' \\
       -d '{{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{{"role":"user","content":"Hello"}}]}}'

  .venv/bin/python -c 'import anthropic; c = anthropic.Anthropic(base_url="{base}", api_key="{DEMO_KEY}"); \\
print(c.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[{{"role":"user","content":"Hello"}}]).content[0].text)'

  curl -s {base}/tollgate/health
  Dashboard: {base}/tollgate/   (user name anything, password {ADMIN_KEY})

Ctrl-C stops it.
""", flush=True)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop and envoy.proc and envoy.proc.poll() is None:
            time.sleep(0.5)
    finally:
        envoy.stop()
        if mock:
            mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
