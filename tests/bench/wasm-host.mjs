// A minimal proxy-wasm host in node (V8, as in Envoy) that drives tollgate's whole request
// cycle without Envoy: time per request warm, and the host calls each request makes. A
// profiling aid for the hot path, not a test; `make bench` is the measurement of record.
//
//   .venv/bin/python -c "import sys, json; sys.path.insert(0, 'tests/bench'); import bench as B;
//     open('/tmp/tg-cfg.json', 'w').write(json.dumps(B.tollgate_local()));
//     open('/tmp/tg-body.json', 'wb').write(B.messages_body(1024))"
//   node --no-liftoff tests/bench/wasm-host.mjs target/wasm32-wasip1/release/tollgate.wasm \
//     /tmp/tg-cfg.json /tmp/tg-body.json 50000
//
// SSE mode (the bench's `sse` workload): a 6th argument `sse` answers every request with the
// mock's `claude-bench-stream` stream (500 Anthropic text deltas, about 53 KB) delivered in
// chunks of the 7th argument's bytes (default 16384: Envoy hands a burst of upstream reads
// to the filter as one body callback; chunks cut events anywhere), the request body being
// the bench's stream request (`B.workloads()[3].body`).
//
// Instructions per request, immune to a busy machine (valgrind counts them; the JIT's code
// included): run under `valgrind --tool=cachegrind --cache-sim=no --smc-check=all-non-file
// node --no-liftoff --single-threaded ...` with N = 500 and N = 1500 and divide the difference
// of the `I refs` by 1000 (each run takes about 30 s). The floor's wasm runs here too (it
// ignores the configuration): tollgate minus floor is tollgate's own work, as in (c) − (f).
//
// Add --prof (then `node --prof-process isolate*.log`) on a build with
// CARGO_PROFILE_RELEASE_STRIP=false for time per wasm function. Envoy runs the same code
// with colder caches: expect it about three times slower there.
import { readFileSync } from 'node:fs';
const [wasmPath, cfgPath, bodyPath] = process.argv.slice(2, 5); const N = +(process.argv[5] || 20000);
const sseMode = process.argv[6] === 'sse'; const chunkSize = +(process.argv[7] || 16384);
const cfg = Buffer.from(readFileSync(cfgPath));
const reqBody = readFileSync(bodyPath);
// The mock upstream's answer to a Messages request.
const respBody = Buffer.from('{"id":"msg_mock_000000000001","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Hello from the mock upstream"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":256,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":5,"service_tier":"standard"}}');
// The mock's stream for model claude-bench-stream (tests/mock/src/providers.rs stream_plan).
function benchStream(n) {
  const ev = (e, d) => `event: ${e}\ndata: ${d}\n\n`;
  const words = ['Hello', ' from', ' the', ' mock', ' upstream']; const cyc = words.map((w) => w.startsWith(' ') ? w : ' ' + w);
  let s = ev('message_start', '{"type":"message_start","message":{"id":"msg_mock_000000000001","type":"message","role":"assistant","model":"claude-bench-stream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":14,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}')
    + ev('content_block_start', '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}') + ev('ping', '{"type": "ping"}');
  for (let i = 0; i < n; i++) s += 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + (i < words.length ? words : cyc)[i % words.length] + '"}}\n\n';
  s += ev('content_block_stop', '{"type":"content_block_stop","index":0}')
    + ev('message_delta', `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":${n}}}`)
    + ev('message_stop', '{"type":"message_stop"}');
  return Buffer.from(s);
}
const stream = sseMode ? benchStream(500) : null;
const chunks = [];
if (stream) for (let o = 0; o < stream.length; o += chunkSize) chunks.push(stream.subarray(o, Math.min(stream.length, o + chunkSize)));
let respChunk = respBody;
const reqHeaders = [[':authority','127.0.0.1:10000'],[':path','/v1/messages'],[':method','POST'],[':scheme','http'],
  ['content-type','application/json'],['anthropic-version','2023-06-01'],['x-api-key','tg-bench-key'],['content-length',String(reqBody.length)],['x-forwarded-proto','http'],['x-request-id','5b7f3c1e-0000-4000-8000-000000000000']];
const respHeaders = sseMode ? [[':status','200'],['content-type','text/event-stream'],['cache-control','no-cache'],['request-id','req_mock_1'],['date','Sun, 06 Dec 2026 20:04:18 GMT'],['x-envoy-upstream-service-time','1']]
  : [[':status','200'],['content-type','application/json'],['request-id','req_mock_1'],['content-length',String(respBody.length)],['date','Sun, 06 Dec 2026 20:04:18 GMT'],['x-envoy-upstream-service-time','1']];
// The bench's account keys (placeholders, as in tests/bench/bench.py).
const env = ['TOLLGATE_ANTHROPIC_KEY_1=sk-ant-bench-upstream-account-0001'];
let inst, mem; const u8 = () => new Uint8Array(mem.buffer); const dv = () => new DataView(mem.buffer);
const str = (p, n) => Buffer.from(mem.buffer, p, n).toString();
const shared = new Map(); let casCounter = 1; const metrics = []; let cur = null; const calls = {}; const facts = {};
function give(bytes, outPtr, outSize) {
  const p = inst.exports.proxy_on_memory_allocate(bytes.length);
  u8().set(bytes, p); dv().setUint32(outPtr, p, true); dv().setUint32(outSize, bytes.length, true);
}
function pairs(list) {
  let size = 4 + list.length * 8; for (const [k, v] of list) size += Buffer.byteLength(k) + Buffer.byteLength(v) + 2;
  const b = Buffer.alloc(size); b.writeUInt32LE(list.length, 0); let o = 4;
  for (const [k, v] of list) { b.writeUInt32LE(Buffer.byteLength(k), o); b.writeUInt32LE(Buffer.byteLength(v), o + 4); o += 8; }
  for (const [k, v] of list) { o += b.write(k, o); b[o++] = 0; o += b.write(v, o); b[o++] = 0; }
  return b;
}
const count = (n) => { calls[n] = (calls[n] || 0) + 1; };
const envImp = new Proxy({
  proxy_log: (l, p, n) => { count('log' + l); if (l >= 3) console.log('LOG', l, str(p, n)); return 0; },
  proxy_get_buffer_bytes: (t, start, max, op, os) => { count('get_buffer');
    const src = t === 7 ? cfg : t === 0 ? cur.req : t === 1 ? respChunk : null; if (!src) return 1;
    give(src.subarray(start, Math.min(src.length, start + max)), op, os); return 0; },
  proxy_set_buffer_bytes: () => 0,
  proxy_get_header_map_pairs: (m, op, os) => { count('get_map'); give(m === 0 ? cur.rqb : cur.rsb, op, os); return 0; },
  proxy_replace_header_map_value: () => { count('hdr_set'); return 0; },
  proxy_add_header_map_value: () => { count('hdr_add'); return 0; },
  proxy_remove_header_map_value: () => { count('hdr_rm'); return 0; },
  proxy_get_header_map_value: () => 1,
  proxy_set_property: (kp, kn, vp, vn) => { count('set_property'); facts[str(kp, kn)] = str(vp, vn); return 0; },
  proxy_get_property: () => { count('get_property'); return 1; },
  proxy_send_local_response: (s) => { console.log('LOCAL', s); return 0; },
  proxy_get_shared_data: (kp, kn, op, os, cp) => { count('sd_get'); const k = str(kp, kn); count('get:' + k.slice(0, 22).replace(/[0-9]+$/, '#')); const e = shared.get(k);
    if (!e) return 1; give(e.v, op, os); dv().setUint32(cp, e.cas, true); return 0; },
  proxy_set_shared_data: (kp, kn, vp, vn, cas) => { count('sd_set'); const k = str(kp, kn); const e = shared.get(k);
    if (e && cas !== 0 && cas !== e.cas) return 8; shared.set(k, { v: Buffer.from(u8().slice(vp, vp + vn)), cas: casCounter++ }); return 0; },
  proxy_get_current_time_nanoseconds: (p) => { count('now'); dv().setBigUint64(p, BigInt(Date.now()) * 1000000n, true); return 0; },
  proxy_continue_stream: () => 0, proxy_close_stream: () => 0,
  proxy_define_metric: (k, p, n, op) => { metrics.push(0); dv().setUint32(op, metrics.length - 1, true); return 0; },
  proxy_increment_metric: (id, v) => { count('metric_inc'); return 0; },
  proxy_record_metric: () => { count('metric_rec'); return 0; },
  proxy_get_metric: (id, p) => { count('metric_get'); dv().setBigUint64(p, 0n, true); return 0; },
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_call_foreign_function: () => 1,
}, { get: (t, k) => t[k] || (() => 0) });
// Every import each request calls, by ABI name (`all:` line of the output).
const abi = {};
const envCounted = new Proxy(envImp, { get: (t, k) => { const f = t[k]; return (...a) => { abi[k] = (abi[k] || 0) + 1; return f(...a); }; } });
const wasi = {
  environ_sizes_get: (cp, sp) => { dv().setUint32(cp, env.length, true); dv().setUint32(sp, env.reduce((a, e) => a + e.length + 1, 0), true); return 0; },
  environ_get: (ep, bp) => { for (const e of env) { dv().setUint32(ep, bp, true); ep += 4; u8().set(Buffer.from(e + '\0'), bp); bp += e.length + 1; } return 0; },
  fd_write: () => 0, proc_exit: () => { throw new Error('exit'); },
};
const mod = await WebAssembly.compile(readFileSync(wasmPath));
inst = await WebAssembly.instantiate(mod, { env: envCounted, wasi_snapshot_preview1: wasi }); mem = inst.exports.memory;
const X = inst.exports; if (X._initialize) X._initialize();
X.proxy_on_context_create(1, 0); X.proxy_on_vm_start(1, 0);
if (!X.proxy_on_configure(1, cfg.length)) throw new Error('configure failed');
const rqb = pairs(reqHeaders), rsb = pairs(respHeaders);
// With PHASES=1 in the environment: wall time per callback (µs per request) and what each
// callback answered (0 continue, 1 pause), to compare with the floor phase by phase.
const phased = !!process.env.PHASES; const phase = {}; const answers = {};
function call(name, f, ...a) {
  if (!phased) return f(...a);
  const t0 = process.hrtime.bigint(); const r = f(...a);
  phase[name] = (phase[name] || 0n) + process.hrtime.bigint() - t0;
  if (r !== undefined) answers[name] = r;
  return r;
}
function one(id) {
  cur = { req: reqBody, rqb, rsb };
  call('create', X.proxy_on_context_create, id, 1);
  call('req_headers', X.proxy_on_request_headers, id, reqHeaders.length, 0);
  call('req_body', X.proxy_on_request_body, id, reqBody.length, 1);
  call('resp_headers', X.proxy_on_response_headers, id, respHeaders.length, 0);
  if (stream) {
    for (let c = 0; c < chunks.length; c++) { respChunk = chunks[c]; call('resp_body', X.proxy_on_response_body, id, respChunk.length, c === chunks.length - 1 ? 1 : 0); }
    respChunk = respBody;
  } else call('resp_body', X.proxy_on_response_body, id, respBody.length, 1);
  call('log', X.proxy_on_log, id); call('done', X.proxy_on_done, id); call('delete', X.proxy_on_delete, id);
}
for (let i = 0; i < 2000; i++) one(2 + i);
for (const k in calls) delete calls[k];
for (const k in abi) delete abi[k];
for (const k in phase) delete phase[k];
const mem0 = mem.buffer.byteLength;
const t = process.hrtime.bigint(); const cpu0 = process.cpuUsage();
for (let i = 0; i < N; i++) { one(10000 + i); if (i % 500 === 0) X.proxy_on_tick(1); }
const dt = Number(process.hrtime.bigint() - t) / 1e3 / N;
const cpu = process.cpuUsage(cpu0); const dc = (cpu.user + cpu.system) / N;
// CPU time is the steadier figure on a busy machine (wall time also counts waiting for a core).
console.log(`per request ${dt.toFixed(2)} us (cpu ${dc.toFixed(2)} us); linear memory ${mem0 >> 10} KB after warm-up, ${mem.buffer.byteLength >> 10} KB at the end`);
console.log('facts of the last request: ' + Object.entries(facts).filter(([k]) => /tokens|usage/.test(k)).map(([k, v]) => `${k}=${v}`).join(' '));
console.log(Object.entries(calls).map(([k, v]) => `${k}=${(v / N).toFixed(2)}`).join(' '));
console.log('all: ' + Object.entries(abi).map(([k, v]) => `${k.replace(/^proxy_/, '')}=${(v / N).toFixed(2)}`).join(' '));
if (phased) console.log('phases: ' + Object.entries(phase).map(([k, v]) => `${k}=${(Number(v) / 1e3 / N).toFixed(2)}`).join(' ')
  + ' | answers: ' + Object.entries(answers).map(([k, v]) => `${k}=${v}`).join(' '));
