"""Controller for tollgate-mock, the mock LLM upstream (stdlib only).

    m = Mock("/work/main/target/mock/tollgate-mock")
    m.start()
    m.script("sk-ant-1", status=429, times=1, headers={"retry-after": "3"})
    ...  # send traffic through Envoy to m.url
    assert m.last("/v1/messages")["key"] == "sk-ant-1"
    m.stop()

Also usable as a context manager: `with Mock(binary) as m: ...`.
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

DEFAULT_BINARY = "/work/main/target/mock/tollgate-mock"


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MockError(RuntimeError):
    pass


class Mock:
    def __init__(self, binary=DEFAULT_BINARY, port=None, record=True, threads=None,
                 host="127.0.0.1"):
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.record = record
        self.threads = threads
        self.proc = None
        self._stderr_path = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def addr(self):
        return f"{self.host}:{self.port}"

    # -- process ---------------------------------------------------------------

    def start(self, timeout=10.0):
        if not os.path.exists(self.binary):
            raise MockError(f"tollgate-mock binary not found at {self.binary} "
                            "(cargo build --profile mock -p tollgate-mock)")
        args = [self.binary, "--listen", self.addr]
        if not self.record:
            args.append("--no-record")
        if self.threads:
            args += ["--threads", str(self.threads)]
        # stderr goes to a file so a chatty mock can never block on a full pipe.
        self._stderr_path = f"/tmp/tollgate-mock-{self.port}.stderr"
        err = open(self._stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MockError(f"tollgate-mock exited with {self.proc.returncode}: "
                                f"{self.stderr()}")
            try:
                status, health = self._call("GET", "/__mock/health", timeout=1.0)
                # The pid check catches another process already holding the port.
                if status == 200 and isinstance(health, dict) \
                        and health.get("pid") == self.proc.pid:
                    return self
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise MockError(f"tollgate-mock did not become healthy on {self.addr}: {self.stderr()}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def stderr(self):
        try:
            with open(self._stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- control API -----------------------------------------------------------

    def _call(self, method, path, body=None, timeout=10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                payload = json.loads(payload)
            except ValueError:
                pass
            return e.code, payload

    def _ok(self, method, path, body=None):
        status, payload = self._call(method, path, body)
        if status != 200:
            raise MockError(f"{method} {path} -> {status}: {payload}")
        return payload

    def script(self, key="*", **behaviour):
        """Scripts the answer for requests arriving with upstream credential `key` ("*": any).

        behaviour: model, path, times, status, headers, usage={input, output, cache_read,
        cache_write, reasoning}, events, delay_ms, first_byte_delay_ms, reset_after_events,
        gzip, sse_error ("rate_limit_error" or {"type", "after", "message"}), sse_error_after,
        text, body. Returns the script id.
        """
        return self._ok("POST", "/__mock/script", dict(behaviour, key=key))["ids"][0]

    def scripts(self):
        return self._ok("GET", "/__mock/scripts")

    def requests(self, path_prefix=None, since=0):
        """Recorded requests, oldest first (the last 2000)."""
        q = [f"since={int(since)}"]
        if path_prefix:
            q.append("path=" + urllib.request.quote(path_prefix, safe=""))
        return self._ok("GET", "/__mock/requests?" + "&".join(q))

    def last(self, path_prefix=None):
        """The most recent recorded request (optionally whose path starts with path_prefix)."""
        rs = self.requests(path_prefix)
        return rs[-1] if rs else None

    def wait_end(self, seq, timeout=5.0):
        """Waits until request `seq`'s response body has ended; returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            rs = [r for r in self.requests(since=seq - 1) if r["seq"] == seq]
            if rs and rs[0]["end"] != "pending":
                return rs[0]
            if time.monotonic() > deadline:
                raise MockError(f"request {seq} did not end within {timeout}s: {rs}")
            time.sleep(0.02)

    def reset(self, only=None):
        """Clears scripts and records (only="scripts" or "requests" for one of them)."""
        self._ok("POST", "/__mock/reset" + (f"?only={only}" if only else ""))

    def stats(self):
        return self._ok("GET", "/__mock/stats")


if __name__ == "__main__":
    import sys

    with Mock(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_BINARY) as m:
        m.script("k1", status=429, times=1, headers={"retry-after": "2"})
        body = json.dumps({"model": "claude-x", "max_tokens": 10,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        codes = []
        for _ in range(2):
            req = urllib.request.Request(m.url + "/v1/messages", data=body,
                                         headers={"x-api-key": "k1"})
            try:
                with urllib.request.urlopen(req) as r:
                    codes.append(r.status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
        assert codes == [429, 200], codes
        rec = m.last("/v1/messages")
        assert rec["key"] == "k1" and rec["usage"]["output"] == 5, rec
        assert rec["usage"]["input"] == (len(body) + 3) // 4, rec
        m.reset()
        assert m.requests() == []
        print("mockctl self-test ok:", m.url)
