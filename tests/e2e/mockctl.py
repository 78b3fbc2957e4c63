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

        Returns the script id. The most specific matching script wins: exact key, then
        when_header, then model, then path; a one-off (`times`) beats a standing one; newest
        wins. A standing script replaces the standing one with the same key/model/path/when_header.

        Matching:
          model            model glob ("claude-*"); path: path prefix; times: one-off count.
          when_header      {"openai-organization": "*"}: only requests carrying that header
                           (value glob: "*" any value, "org-*" prefix, "x" exact; None: header
                           absent). All entries must hold; names are case-insensitive.

        Answer:
          status, headers={name: value}, text (answer text), body (raw body replacing it all),
          usage={input, output, cache_read, cache_write, reasoning} (the real numbers),
          events (deltas in a stream), delay_ms (between deltas), first_byte_delay_ms,
          reset_after_events (abort the connection after N deltas; a JSON body after half),
          sse_error ("rate_limit_error" or {"type", "after", "message"}), sse_error_after.

        Hostile upstream (issue #17):
          encoding         "gzip" | "deflate" (zlib) | "deflate_raw" (raw deflate, still
                           labelled deflate) | "br" | "zstd" | "identity" | "negotiate":
                           compress every answer body (JSON, SSE, errors) and set
                           content-encoding; streams are flushed per event. "negotiate" picks
                           the first of br, zstd, gzip, deflate that the request's
                           accept-encoding allows (q=0 refuses, "*" allows the rest), identity
                           if none or no header, and adds `vary: accept-encoding`.
                           gzip=True is an alias of encoding="gzip". The record's "encoding"
                           says what was sent.
          error            "invalid_key" | "mismatched_organization" | "permission" |
                           "invalid_project": the provider's own error body for the endpoint's
                           API, with its status (a `status` overrides it):
                             Anthropic: invalid_key 401 authentication_error "invalid x-api-key";
                               the others 403 permission_error.
                             OpenAI: invalid_key 401 code invalid_api_key, message "Incorrect API
                               key provided: sk-pr****BBBB. ..." (first 5 + last 4 chars);
                               mismatched_organization 401 code mismatched_organization;
                               invalid_project 401 code mismatched_project ("OpenAI-Project
                               header should match project for API key"); permission 403,
                               code null.
                             Gemini: invalid_key 400 INVALID_ARGUMENT, details[0].reason
                               API_KEY_INVALID; the others 403 PERMISSION_DENIED, reason
                               USER_PROJECT_DENIED naming the request's x-goog-user-project.
          echo_key         True: the credential the mock received, verbatim, in header `x-echo`
                           and in the body: in the error message (OpenAI invalid_key: "Incorrect
                           API key provided: <key>. ..."; other errors: "... (key <key>)"), or
                           as the last word of a success answer's text (give max_tokens above
                           the word count). "late": the same after 10 KiB of filler
                           ("0123456789abcdef"...), and an uncompressed non-stream body is sent
                           in two frames 20 ms apart (delay_ms if set) cut in the middle of the
                           key. An integer N: N bytes of filler instead of 10 KiB.
          usage_raw        {"input", "output", "cache_read", "cache_write", "reasoning",
                           "total": "<JSON text>"}: written verbatim in those usage positions
                           of JSON and SSE answers of every API ("1e30", "-5", "1.5",
                           "18446744073709551616", "\"12\"", even invalid JSON). input is
                           Anthropic input_tokens, OpenAI prompt_tokens/input_tokens, Gemini
                           promptTokenCount (every chunk); output is output_tokens (Anthropic
                           message_delta), completion_tokens/output_tokens, Gemini
                           candidatesTokenCount; cache_read cache_read_input_tokens /
                           cached_tokens / cachedContentTokenCount; cache_write
                           cache_creation_input_tokens; reasoning reasoning_tokens /
                           thoughtsTokenCount; total total_tokens / totalTokenCount. Only
                           strings are exact: other values are re-serialised. The record's
                           "usage" keeps the real numbers.
          body_bytes       N: a valid JSON success answer (the endpoint's non-stream format,
                           even to a stream request) of exactly N bytes (or the bare answer if
                           larger): the content text padded with filler, the usage at the end,
                           generated as it is read (never held in memory, slow readers slow the
                           mock), sent with content-length. With `encoding`, compressed as it
                           goes (chunked). `usage` pins the usage as usual.
          gzip_bytes       N: body_bytes=N with encoding="gzip" (1 GB takes seconds).
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
        # A hostile upstream: 401 mismatched_organization only with the header, key echoed,
        # gzip negotiated, absurd usage written verbatim.
        import gzip
        m.script("sk-o", error="mismatched_organization", echo_key=True, encoding="negotiate",
                 when_header={"openai-organization": "*"})
        m.script("sk-o", encoding="negotiate", usage_raw={"output": "1e30"})
        chat = json.dumps({"model": "gpt-4o", "messages": []}).encode()
        answers = []
        for extra in ({}, {"OpenAI-Organization": "org-x"}):
            req = urllib.request.Request(m.url + "/v1/chat/completions", data=chat, headers={
                "authorization": "Bearer sk-o", "accept-encoding": "br;q=0, gzip", **extra})
            try:
                with urllib.request.urlopen(req) as r:
                    answers.append((r.status, r.headers, r.read()))
            except urllib.error.HTTPError as e:
                answers.append((e.code, e.headers, e.read()))
        (s1, h1, b1), (s2, h2, b2) = answers
        assert s1 == 200 and h1["content-encoding"] == "gzip", (s1, dict(h1))
        assert json.loads(gzip.decompress(b1))["usage"]["completion_tokens"] == 1e30
        assert s2 == 401 and h2["x-echo"] == "sk-o", (s2, dict(h2))
        err = json.loads(gzip.decompress(b2))["error"]
        assert err["code"] == "mismatched_organization" and "sk-o" in err["message"], err
        assert m.last()["headers"]["openai-organization"] == "org-x"
        m.reset()
        assert m.requests() == []
        print("mockctl self-test ok:", m.url)
