"""Writes the committed seed inputs in seeds/<target>/ (run: python3 fuzz/seeds.py).
Each target reads a few leading choice bytes (see fuzz_targets/*.rs) before its payload."""

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "seeds"


def put(target: str, name: str, data: bytes) -> None:
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# ---- config: real configurations
full = {
    "stage": "downstream",
    "consumers": [
        {"name": "team-a", "keys": ["sha256:" + "ab" * 32, "plain-secret-key"],
         "limits": [{"tokens": 100000, "per": "minute"}, {"requests": 60, "per": "minute"},
                    {"tokens": 2000000, "per": "day", "window": "fixed"},
                    {"cost_usd": 25.0, "per": "day"}, {"concurrent": 4}],
         "models": ["claude-*", "gpt-4o-mini"]}],
    "consumer_header": None, "anonymous": None,
    "limits": [{"tokens": 50000, "per": "minute"}],
    "accounts": [
        {"name": "org-1", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_1"},
        {"name": "org-2", "provider": "anthropic", "key_env": "ANTHROPIC_KEY_2", "weight": 2,
         "limits": [{"tokens": 400000, "per": "minute"}, {"concurrent": 20}]},
        {"name": "vllm", "provider": "openai", "key": "token-abc",
         "headers": {"x-tenant": "blue"}, "route": "vllm-cluster"}],
    "selection": {"strategy": "least_loaded",
                  "affinity": {"header": "x-session-id", "conversation": True, "ttl": "5h"}},
    "global": {"cluster": "ratelimit", "domain": "tollgate", "timeout": "50ms",
               "failure_mode": "allow"},
    "estimate": {"output_reserve": 1024},
    "pricing": {"claude-3-5-haiku-*": {"input": 0.8, "output": 4.0, "cache_write": 1.0,
                                       "cache_read": 0.08}},
    "admin": {"path": "/tollgate", "keys": ["sha256:" + "cd" * 32]},
    "passthrough_paths": ["/v1/files"], "max_body_bytes": 1048576,
}
put("config", "full.json", json.dumps(full, indent=1).encode())
put("config", "empty.json", b"{}")
put("config", "anon.json", json.dumps({"anonymous": {"limits": [{"requests": 5, "per": "second"}]},
                                       "consumer_header": "x-consumer"}).encode())

# ---- request: [endpoint, ncuts=0] + body
msgs = {"model": "claude-haiku-4-5", "max_tokens": 64, "stream": True,
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": [{"name": "get", "description": "d", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello, 世界! Привет"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9hAAAA"}}]},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": "42"}]}]}
chat = {"model": "gpt-4o-mini", "stream": True, "max_completion_tokens": 100,
        "messages": [{"role": "system", "content": "s"},
                     {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                  {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg==", "detail": "low"}}]}]}
chat_opts = dict(chat, stream_options={"include_usage": False, "x": 1})
comp = {"model": "m", "prompt": ["a", "b"], "max_tokens": 5, "stream": True}
emb = {"model": "text-embedding-3-small", "input": ["one", "two"]}
resp = {"model": "gpt-4o", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 9,
        "instructions": "x"}
gem = {"contents": [{"role": "user", "parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}}]}],
       "systemInstruction": {"parts": [{"text": "sys"}]},
       "generationConfig": {"maxOutputTokens": 10}}
for i, body in enumerate([msgs, chat, comp, emb, resp, gem, gem]):
    put("request", f"ep{i}.json", bytes([i, 0]) + json.dumps(body).encode())
put("request", "ep1-opts.json", bytes([1, 0]) + json.dumps(chat_opts).encode())

# ---- sse: [cap lo, cap hi, ncuts=0] + stream
anth = (b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n"
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \xc3\xa9\"}}\n\n"
        b": ping\r\n\r\n"
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n"
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
oai = (b"data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
       b"data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n"
       b"data: [DONE]\n\n")
gem_sse = (b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2,\"thoughtsTokenCount\":1},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\n")
gem_arr = (b"[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\r\n,{\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2}}]")
anth_err = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
msg_json = b"{\"id\":\"m\",\"type\":\"message\",\"model\":\"claude-haiku-4-5\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":2,\"output_tokens\":3}}"
for n, s in [("anthropic", anth), ("openai", oai), ("gemini", gem_sse), ("error", anth_err)]:
    put("sse", n, bytes([0, 1, 0]) + s)

# ---- response: [endpoint, content type, encoding mode, strip, ncuts=0] + body
cases = [("anthropic-sse", 0, 0, anth), ("openai-sse-strip", 1, 0, oai), ("gemini-sse", 5, 0, gem_sse),
         ("gemini-array", 6, 1, gem_arr), ("anthropic-json", 0, 1, msg_json), ("error", 0, 0, anth_err)]
for n, ep, ct, body in cases:
    for mode in (0, 1, 2):
        put("response", f"{n}-{mode}", bytes([ep, ct, mode, 1 if "strip" in n else 0, 0]) + body)

# ---- ratelimit: [nchecks, (unit, need u64, shift)*] + RateLimitResponse


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(f: int, v: int) -> bytes:
    return varint(f << 3) + varint(v)


def field_bytes(f: int, b: bytes) -> bytes:
    return varint(f << 3 | 2) + varint(len(b)) + b


def status(code: int, limit: int | None, remaining: int, reset_s: int) -> bytes:
    out = field_varint(1, code)
    if limit is not None:
        out += field_bytes(2, field_varint(1, limit) + field_varint(2, 2))  # requests_per_unit, unit MINUTE
    out += field_varint(3, remaining)
    out += field_bytes(4, field_varint(1, reset_s) + field_varint(2, 5000))
    return out


checks = bytes([2, 0]) + (500).to_bytes(8, "little") + bytes([0]) + bytes([1]) + (1).to_bytes(8, "little") + bytes([0])
ok = field_varint(1, 1) + field_bytes(2, status(1, 1000, 900, 30)) + field_bytes(2, status(1, None, 0, 0))
over = field_varint(1, 2) + field_bytes(2, status(2, 1000, 0, 30)) + field_bytes(2, status(1, 60, 10, 5))
put("ratelimit", "ok", checks + ok)
put("ratelimit", "over", checks + over)

# ---- headers: [now mode, status u16] + header lines
hdrs = ("retry-after: 17\nanthropic-ratelimit-tokens-remaining: 1000\n"
        "anthropic-ratelimit-tokens-limit: 80000\nanthropic-ratelimit-tokens-reset: 2026-05-20T12:00:30Z\n"
        "anthropic-ratelimit-unified-status: rejected\nanthropic-ratelimit-unified-5h-status: rejected\n"
        "anthropic-ratelimit-unified-5h-reset: 1779300000\nx-ratelimit-remaining-requests: 0\n"
        "x-ratelimit-reset-requests: 6m0.5s\nx-ratelimit-reset-tokens: 20ms\n"
        "retry-after: Wed, 21 Oct 2026 07:28:00 GMT\nx-ratelimit-limit-tokens: 150000.0")
put("headers", "429", bytes([0, 0xad, 0x01]) + hdrs.encode())
put("headers", "200", bytes([0, 200, 0]) + hdrs.encode())
put("headers", "529", bytes([0, 0x11, 0x02]) + b"retry-after: 1.5")
