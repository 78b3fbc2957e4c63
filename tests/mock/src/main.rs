//! tollgate-mock: a fast, scriptable mock of the Anthropic, OpenAI(-compatible) and Gemini HTTP
//! APIs, the upstream of tollgate's e2e tests and benchmarks. HTTP/1.1 and h2c (prior knowledge)
//! on one port; a control API under `/__mock/` scripts behaviours per upstream key.

mod body;
mod credentials;
mod encode;
mod huge;
mod providers;
mod record;
mod script;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use body::MockBody;
use credentials::ErrorCtx;
use encode::{encode_all, Choice, Encoding};
use huge::Huge;
use providers::{Api, Kind, Nums, Req, Usage};
use record::{Record, Recorder};
use script::{Behaviour, Scripts, UsageRaw, Words};

struct State {
    scripts: Scripts,
    recorder: Recorder,
    seq: AtomicU64,
    total: AtomicU64,
}

const USAGE: &str = "usage: tollgate-mock --listen 127.0.0.1:PORT [--no-record] [--threads N]";

fn main() {
    let mut listen: Option<String> = None;
    let mut record = true;
    let mut threads: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--no-record" => record = false,
            "--threads" => threads = args.next().and_then(|t| t.parse().ok()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let addr: SocketAddr = match listen.as_deref().unwrap_or("127.0.0.1:8089").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("--listen: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads.filter(|t| *t > 0) {
        rt.worker_threads(t);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let state = Arc::new(State {
        scripts: Scripts::default(),
        recorder: Recorder::new(record),
        seq: AtomicU64::new(0),
        total: AtomicU64::new(0),
    });
    if let Err(e) = rt.block_on(serve(addr, state)) {
        eprintln!("tollgate-mock: {e}");
        std::process::exit(1);
    }
}

async fn serve(addr: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "tollgate-mock listening on {} (http1 + h2c, recording {})",
        listener.local_addr()?,
        if state.recorder.enabled { "on" } else { "off" }
    );
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(4096);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = match incoming.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Ok(json_response(
                400,
                json!({"error": format!("reading body: {e}")}),
            ))
        }
    };
    if parts.uri.path().starts_with("/__mock/") {
        return Ok(control(
            &state,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &body,
        ));
    }
    state.total.fetch_add(1, Ordering::Relaxed);
    Ok(upstream(&state, &parts, body).await)
}

// ---------------------------------------------------------------- control API

fn control(
    state: &State,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Response<MockBody> {
    let q = |name: &str| query_param(query, name);
    match (method, path) {
        (&Method::GET, "/__mock/health") => {
            json_response(200, json!({"status": "ok", "pid": std::process::id()}))
        }
        (&Method::POST, "/__mock/script") => {
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return json_response(400, json!({"error": format!("script body: {e}")})),
            };
            let list = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            let mut ids = Vec::new();
            for s in &list {
                match state.scripts.add(s) {
                    Ok(id) => ids.push(id),
                    Err(e) => return json_response(400, json!({"error": e, "added": ids})),
                }
            }
            json_response(200, json!({"ok": true, "ids": ids}))
        }
        (&Method::GET, "/__mock/scripts") => json_response(200, state.scripts.list()),
        (&Method::GET, "/__mock/requests") => {
            let since = q("since").and_then(|s| s.parse().ok()).unwrap_or(0);
            let prefix = q("path");
            json_response(200, state.recorder.list(since, prefix.as_deref()))
        }
        (&Method::POST, "/__mock/reset") => {
            let only = q("only");
            if only.as_deref() != Some("requests") {
                state.scripts.clear();
            }
            if only.as_deref() != Some("scripts") {
                state.recorder.clear();
            }
            json_response(200, json!({"ok": true}))
        }
        (&Method::GET, "/__mock/stats") => json_response(
            200,
            json!({"requests": state.total.load(Ordering::Relaxed),
                   "recording": state.recorder.enabled,
                   "last_seq": state.seq.load(Ordering::Relaxed)}),
        ),
        (
            _,
            "/__mock/health" | "/__mock/script" | "/__mock/scripts" | "/__mock/requests"
            | "/__mock/reset" | "/__mock/stats",
        ) => json_response(405, json!({"error": "method not allowed"})),
        _ => json_response(404, json!({"error": format!("no control endpoint {path}")})),
    }
}

fn json_response(status: u16, v: Value) -> Response<MockBody> {
    let mut r = Response::new(MockBody::full(Bytes::from(v.to_string()), None));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| char::from(*h).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- upstream API

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Generate(Kind),
    CountTokens,
    Embeddings,
    Models(Api),
    NotFound(Api),
}

impl Route {
    fn api(self) -> Api {
        match self {
            Route::Generate(k) => k.api(),
            Route::CountTokens => Api::Anthropic,
            Route::Embeddings => Api::OpenAi,
            Route::Models(a) | Route::NotFound(a) => a,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Route::Generate(Kind::Messages) => "messages",
            Route::Generate(Kind::Chat) => "chat_completions",
            Route::Generate(Kind::Completions) => "completions",
            Route::Generate(Kind::Responses) => "responses",
            Route::Generate(Kind::Gemini { .. }) => "gemini",
            Route::CountTokens => "count_tokens",
            Route::Embeddings => "embeddings",
            Route::Models(_) => "models",
            Route::NotFound(_) => "not_found",
        }
    }
}

/// Routes a request; for Gemini also returns the model from the path and whether it streams.
fn route<'a>(
    method: &Method,
    path: &'a str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> (Route, Option<&'a str>, bool) {
    let anthropic_client =
        headers.contains_key("x-api-key") || headers.contains_key("anthropic-version");
    let post = method == Method::POST;
    let r = match path {
        "/v1/messages" if post => Route::Generate(Kind::Messages),
        "/v1/messages/count_tokens" if post => Route::CountTokens,
        "/v1/chat/completions" if post => Route::Generate(Kind::Chat),
        "/v1/completions" if post => Route::Generate(Kind::Completions),
        "/v1/responses" if post => Route::Generate(Kind::Responses),
        "/v1/embeddings" if post => Route::Embeddings,
        "/v1/models" if method == Method::GET => Route::Models(if anthropic_client {
            Api::Anthropic
        } else {
            Api::OpenAi
        }),
        "/v1beta/models" if method == Method::GET => Route::Models(Api::Gemini),
        _ => {
            let rest = path
                .strip_prefix("/v1beta/models/")
                .or_else(|| path.strip_prefix("/v1/models/"));
            if let (Some(rest), true) = (rest, post) {
                match rest.rsplit_once(':') {
                    Some((model, "generateContent")) => {
                        return (
                            Route::Generate(Kind::Gemini { array: false }),
                            Some(model),
                            false,
                        )
                    }
                    Some((model, "streamGenerateContent")) => {
                        let sse = query_param(query, "alt").as_deref() == Some("sse");
                        return (
                            Route::Generate(Kind::Gemini { array: !sse }),
                            Some(model),
                            true,
                        );
                    }
                    _ => Route::NotFound(Api::Gemini),
                }
            } else if path.starts_with("/v1beta") {
                Route::NotFound(Api::Gemini)
            } else if anthropic_client {
                Route::NotFound(Api::Anthropic)
            } else {
                Route::NotFound(Api::OpenAi)
            }
        }
    };
    (r, None, false)
}

/// The upstream credential the request came with (what scripts are keyed by).
fn key_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(k) = h("x-api-key") {
        return Some(k.to_owned());
    }
    if let Some(a) = h("authorization") {
        let (scheme, rest) = a.split_once(' ').unwrap_or((a, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim().to_owned());
        }
    }
    if let Some(k) = h("x-goog-api-key") {
        return Some(k.to_owned());
    }
    query_param(query, "key")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn max_tokens(v: &Value) -> Option<u64> {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_u64))
        .or_else(|| {
            v.pointer("/generationConfig/maxOutputTokens")
                .and_then(Value::as_u64)
        })
}

fn embedding_inputs(v: &Value) -> usize {
    match v.get("input") {
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_number) => 1,
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    }
}

async fn upstream(
    state: &State,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Response<MockBody> {
    let path = parts.uri.path();
    let query = parts.uri.query();
    let (route, path_model, gemini_stream) = route(&parts.method, path, query, &parts.headers);
    let api = route.api();
    let key = key_of(&parts.headers, query);

    // Only POSTs with a body are parsed; an unparsable body is the real APIs' 400.
    let json: Option<Value> = if parts.method == Method::POST && !body.is_empty() {
        serde_json::from_slice(&body).ok()
    } else {
        None
    };
    let bad_json =
        parts.method == Method::POST && json.is_none() && !matches!(route, Route::NotFound(_));
    let model: Option<String> = path_model.map(str::to_owned).or_else(|| {
        json.as_ref()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let stream = match route {
        Route::Generate(Kind::Gemini { .. }) => gemini_stream,
        Route::Generate(_) => {
            json.as_ref()
                .and_then(|v| v.get("stream"))
                .and_then(Value::as_bool)
                == Some(true)
        }
        _ => false,
    };

    let picked = state.scripts.pick(&script::Request {
        key: key.as_deref(),
        model: model.as_deref(),
        path,
        headers: &parts.headers,
    });
    let default_beh;
    let (beh, script_id): (&Behaviour, Option<u64>) = match &picked {
        Some(p) => (&p.behaviour, Some(p.id)),
        None => {
            default_beh = Behaviour::default();
            (&default_beh, None)
        }
    };

    let seq = state.seq.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    let pathq = parts.uri.path_and_query().map_or(path, |p| p.as_str());
    let mut rec = state.recorder.enabled.then(|| {
        Record::new(
            seq,
            parts.method.as_str(),
            pathq,
            &parts.headers,
            &body,
            key.as_deref(),
            model.as_deref(),
            route.name(),
        )
    });
    if let Some(r) = rec.as_mut() {
        r.script = script_id;
        r.stream = stream;
    }

    if beh.first_byte_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(beh.first_byte_delay_ms)).await;
    }

    // Decide status and body.
    let scripted_status = beh.status.unwrap_or(200);
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let encoding = beh
        .encoding
        .map_or(Encoding::Identity, |c| c.resolve(header("accept-encoding")));
    let cx = ErrorCtx {
        id: seq,
        key: key.as_deref(),
        echo_pad: beh.echo_key,
        user_project: header("x-goog-user-project"),
    };
    let mut usage = None;
    let mut stream_body = None;
    let mut huge = None;
    let (status, content_type, payload): (u16, &'static str, Bytes) = if let Some(raw) = &beh.body {
        (scripted_status, "application/json", raw.clone())
    } else if let Some(kind) = beh.error {
        let (default_status, body) = credentials::credential_error(api, kind, &cx);
        (
            beh.status.unwrap_or(default_status),
            "application/json",
            Bytes::from(body),
        )
    } else if scripted_status >= 300 {
        (
            scripted_status,
            "application/json",
            Bytes::from(credentials::status_error(api, scripted_status, &cx)),
        )
    } else if let Route::NotFound(a) = route {
        (
            404,
            "application/json",
            Bytes::from(providers::error_body(
                a,
                404,
                Some(&format!("no route for {} {path}", parts.method)),
                seq,
            )),
        )
    } else if bad_json {
        (
            400,
            "application/json",
            Bytes::from(providers::error_body(
                api,
                400,
                Some("request body is not valid JSON"),
                seq,
            )),
        )
    } else {
        let v = json.as_ref().unwrap_or(&Value::Null);
        let mut words = beh.text.clone().unwrap_or_else(Words::default_answer);
        if let Some(pad) = beh.echo_key {
            // The echoed key is the answer's last word.
            let echo = format!(
                "{}{}",
                credentials::echo_padding(pad),
                key.as_deref().unwrap_or("(none)")
            );
            words = Arc::new(words.appended(&echo));
        }
        let (n, capped) = match (beh.events, max_tokens(v)) {
            (Some(e), _) => (e, false),
            (None, Some(m)) if m < words.len() as u64 => (usize::try_from(m).unwrap_or(0), true),
            (None, _) => (words.len(), false),
        };
        let ov = beh.usage;
        let mut u = Usage {
            input: ov
                .input
                .unwrap_or_else(|| (body.len() as u64).div_ceil(4).max(1)),
            output: ov.output.unwrap_or(n as u64),
            cache_read: ov.cache_read.unwrap_or(0),
            cache_write: ov.cache_write.unwrap_or(0),
            reasoning: 0,
        };
        u.reasoning = ov.reasoning.unwrap_or(0).min(u.output);
        if api != Api::Anthropic {
            // Only Anthropic reports cache writes; the others bill them as plain input.
            u.input = u.input.saturating_add(u.cache_write);
            u.cache_write = 0;
        }
        if route == Route::Embeddings {
            u.output = 0;
            u.reasoning = 0;
        }
        let r = Req {
            id: seq,
            created: now_secs(),
            model: script::escape(model.as_deref().unwrap_or(match api {
                Api::Anthropic => "claude-mock",
                Api::OpenAi => "gpt-mock",
                Api::Gemini => "gemini-mock",
            })),
            include_usage: v
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            n,
            capped,
            usage: u,
            raw: beh.usage_raw.clone().unwrap_or_else(UsageRaw::none),
            words,
        };
        match route {
            Route::Generate(kind) => {
                usage = Some(u);
                if let Some(size) = beh.body_bytes {
                    // Always the JSON answer, even to a streamed request.
                    let kind = match kind {
                        Kind::Gemini { .. } => Kind::Gemini { array: false },
                        k => k,
                    };
                    huge = Some(Huge::new(kind, &r, size));
                    (scripted_status, "application/json", Bytes::new())
                } else if stream {
                    stream_body = Some(providers::stream_plan(kind, &r, beh.sse_error.as_ref()));
                    let ct = match kind {
                        Kind::Gemini { array: true } => "application/json; charset=UTF-8",
                        Kind::Messages => "text/event-stream; charset=utf-8",
                        _ => "text/event-stream",
                    };
                    (scripted_status, ct, Bytes::new())
                } else {
                    (
                        scripted_status,
                        "application/json",
                        Bytes::from(providers::json_body(kind, &r)),
                    )
                }
            }
            Route::CountTokens => (
                scripted_status,
                "application/json",
                Bytes::from(providers::count_tokens_body(&Nums::new(&u, &r.raw))),
            ),
            Route::Embeddings => {
                usage = Some(u);
                let b64 = v.get("encoding_format").and_then(Value::as_str) == Some("base64");
                (
                    scripted_status,
                    "application/json",
                    Bytes::from(providers::embeddings_body(&r, embedding_inputs(v), b64)),
                )
            }
            Route::Models(a) => (
                scripted_status,
                "application/json",
                Bytes::from(providers::models_body(a)),
            ),
            Route::NotFound(_) => (404, "application/json", Bytes::new()),
        }
    };

    let rec = rec.map(|mut r| {
        r.status = status;
        r.usage = usage;
        r.encoding = encoding.header().unwrap_or("identity");
        let r = Arc::new(r);
        state.recorder.push(r.clone());
        r
    });

    let sse_error = beh.sse_error.is_some();
    let body = if let Some(plan) = stream_body {
        MockBody::stream(
            plan,
            beh.delay_ms,
            beh.reset_after_events,
            encoding,
            sse_error,
            rec,
        )
    } else if let Some(gen) = huge {
        MockBody::huge(gen, encoding, rec)
    } else {
        let late = beh.echo_key.is_some_and(|pad| pad > 0);
        let split = late.then(|| late_split(&payload, key.as_deref(), encoding));
        let payload = encode_all(encoding, payload);
        match split {
            _ if beh.reset_after_events.is_some() => MockBody::truncated(payload, rec),
            Some(at) => {
                let at = at.unwrap_or(payload.len() / 2).min(payload.len());
                let gap = Duration::from_millis(if beh.delay_ms > 0 {
                    beh.delay_ms
                } else {
                    LATE_ECHO_GAP_MS
                });
                MockBody::frames(vec![payload.slice(..at), payload.slice(at..)], gap, rec)
            }
            None => MockBody::full(payload, rec),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if stream {
        h.insert("cache-control", HeaderValue::from_static("no-cache"));
    }
    let (id_header, id_prefix) = match api {
        Api::Anthropic => ("request-id", "req_mock_"),
        Api::OpenAi => ("x-request-id", "req_mock_"),
        Api::Gemini => ("x-mock-request-id", ""),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{id_prefix}{seq}")) {
        h.insert(HeaderName::from_static(id_header), v);
    }
    if let Some(ce) = encoding.header() {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(ce));
    }
    if beh.encoding == Some(Choice::Negotiate) {
        h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    if beh.echo_key.is_some() {
        if let Some(v) = key.as_deref().and_then(|k| HeaderValue::from_str(k).ok()) {
            h.insert(HeaderName::from_static("x-echo"), v);
        }
    }
    for (k, v) in &beh.headers {
        h.insert(k.clone(), v.clone());
    }
    resp
}

/// Pause between the two halves of a late-echo body, so they reach the client in two reads.
const LATE_ECHO_GAP_MS: u64 = 20;

/// Where to cut a late-echo body in two: in the middle of the echoed key when the body goes
/// out uncompressed (so the key straddles two reads), else `None` (the middle of the body).
fn late_split(plain: &[u8], key: Option<&str>, encoding: Encoding) -> Option<usize> {
    let key = key.filter(|k| !k.is_empty())?;
    if encoding != Encoding::Identity {
        return None;
    }
    let k = key.as_bytes();
    let at = plain.windows(k.len()).rposition(|w| w == k)?;
    Some(at + k.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_documented_endpoint() {
        let h = HeaderMap::new();
        let mut anth = HeaderMap::new();
        anth.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        type Case<'a> = (Method, &'a str, Option<&'a str>, &'a HeaderMap, Route, bool);
        let cases: &[Case] = &[
            (
                Method::POST,
                "/v1/messages",
                None,
                &h,
                Route::Generate(Kind::Messages),
                false,
            ),
            (
                Method::POST,
                "/v1/messages/count_tokens",
                None,
                &h,
                Route::CountTokens,
                false,
            ),
            (
                Method::POST,
                "/v1/chat/completions",
                None,
                &h,
                Route::Generate(Kind::Chat),
                false,
            ),
            (
                Method::POST,
                "/v1/completions",
                None,
                &h,
                Route::Generate(Kind::Completions),
                false,
            ),
            (
                Method::POST,
                "/v1/responses",
                None,
                &h,
                Route::Generate(Kind::Responses),
                false,
            ),
            (
                Method::POST,
                "/v1/embeddings",
                None,
                &h,
                Route::Embeddings,
                false,
            ),
            (
                Method::GET,
                "/v1/models",
                None,
                &h,
                Route::Models(Api::OpenAi),
                false,
            ),
            (
                Method::GET,
                "/v1/models",
                None,
                &anth,
                Route::Models(Api::Anthropic),
                false,
            ),
            (
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:generateContent",
                None,
                &h,
                Route::Generate(Kind::Gemini { array: false }),
                false,
            ),
            (
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                Some("alt=sse"),
                &h,
                Route::Generate(Kind::Gemini { array: false }),
                true,
            ),
            (
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                None,
                &h,
                Route::Generate(Kind::Gemini { array: true }),
                true,
            ),
            (
                Method::GET,
                "/v1/messages",
                None,
                &anth,
                Route::NotFound(Api::Anthropic),
                false,
            ),
            (
                Method::POST,
                "/v2/anything",
                None,
                &h,
                Route::NotFound(Api::OpenAi),
                false,
            ),
            (
                Method::POST,
                "/v1beta/models/x:countTokens",
                None,
                &h,
                Route::NotFound(Api::Gemini),
                false,
            ),
        ];
        for (m, p, q, hs, want, want_stream) in cases {
            let (r, _, s) = route(m, p, *q, hs);
            assert_eq!((r, s), (*want, *want_stream), "{m} {p}");
        }
        let (_, model, _) = route(
            &Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            None,
            &h,
        );
        assert_eq!(model, Some("gemini-2.5-flash"));
    }

    #[test]
    fn finds_the_key_in_each_providers_place() {
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            ("x-api-key", "sk-ant-1", None, Some("sk-ant-1")),
            ("authorization", "Bearer sk-2", None, Some("sk-2")),
            ("authorization", "bearer  sk-3 ", None, Some("sk-3")),
            ("x-goog-api-key", "g-4", None, Some("g-4")),
            ("x-other", "v", Some("alt=sse&key=g%2D5"), Some("g-5")),
            ("x-other", "v", None, None),
        ];
        for (name, value, query, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
            assert_eq!(key_of(&h, *query).as_deref(), *want, "{name}");
        }
    }

    fn state() -> State {
        State {
            scripts: Scripts::default(),
            recorder: Recorder::new(true),
            seq: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// One request through the upstream handler: status, headers and the body's frames.
    async fn call(
        st: &State,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (u16, HeaderMap, Vec<Bytes>) {
        let mut b = Request::builder().method(Method::POST).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let resp = upstream(st, &parts, Bytes::from(body.to_string())).await;
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let mut body = resp.into_body();
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        (status, h, frames)
    }

    fn concat(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.to_vec()).collect()
    }

    fn chat(stream: bool) -> Value {
        json!({"model": "gpt-4o", "stream": stream, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "hi"}]})
    }

    #[tokio::test]
    async fn negotiated_encoding_follows_accept_encoding_for_json_and_streams() {
        let st = state();
        st.scripts
            .add(&json!({"key": "*", "encoding": "negotiate", "usage": {"output": 5}}))
            .unwrap();
        let cases: &[(Option<&str>, Encoding)] = &[
            (Some("gzip, deflate, br, zstd"), Encoding::Br),
            (Some("zstd, gzip"), Encoding::Zstd),
            (Some("gzip, deflate"), Encoding::Gzip),
            (Some("deflate"), Encoding::Deflate),
            (Some("identity"), Encoding::Identity),
            (None, Encoding::Identity),
        ];
        for (ae, want) in cases {
            for stream in [false, true] {
                let mut hs = vec![("authorization", "Bearer k")];
                if let Some(ae) = ae {
                    hs.push(("accept-encoding", ae));
                }
                let (status, h, frames) =
                    call(&st, "/v1/chat/completions", &hs, chat(stream)).await;
                assert_eq!(status, 200);
                assert_eq!(
                    h.get(CONTENT_ENCODING).map(|v| v.to_str().unwrap()),
                    want.header(),
                    "{ae:?}"
                );
                assert_eq!(h.get(VARY).unwrap(), "accept-encoding");
                let plain = String::from_utf8(encode::decode(*want, &concat(&frames))).unwrap();
                assert!(
                    plain.contains("\"completion_tokens\":5"),
                    "{ae:?} {stream}: {plain}"
                );
                if stream && *want != Encoding::Identity {
                    assert!(frames.len() > 3, "{ae:?}: flushed per event");
                }
                let last = st.recorder.list(0, None);
                let rec = last.as_array().unwrap().last().unwrap().clone();
                assert_eq!(rec["encoding"], want.header().unwrap_or("identity"));
                assert_eq!(
                    rec["headers"]["accept-encoding"],
                    ae.map_or(Value::Null, Value::from)
                );
            }
        }
    }

    #[tokio::test]
    async fn mismatched_organization_answers_only_requests_that_carry_the_header() {
        let st = state();
        st.scripts
            .add(&json!({"key": "sk-1", "error": "mismatched_organization",
                         "when_header": {"openai-organization": "*"}}))
            .unwrap();
        let (status, _, frames) = call(
            &st,
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-1")],
            chat(false),
        )
        .await;
        assert_eq!(status, 200);
        assert!(!frames.is_empty());
        let hs = [
            ("authorization", "Bearer sk-1"),
            ("openai-organization", "org-evil"),
        ];
        let (status, _, frames) = call(&st, "/v1/chat/completions", &hs, chat(false)).await;
        assert_eq!(status, 401);
        let v: Value = serde_json::from_slice(&concat(&frames)).unwrap();
        assert_eq!(v["error"]["code"], "mismatched_organization");
        // A scripted status overrides the provider's default one.
        st.scripts
            .add(&json!({"key": "g", "error": "invalid_key", "status": 403}))
            .unwrap();
        let (status, _, frames) = call(
            &st,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &[("x-goog-api-key", "g")],
            json!({"contents": []}),
        )
        .await;
        assert_eq!(status, 403);
        let v: Value = serde_json::from_slice(&concat(&frames)).unwrap();
        assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
    }

    #[tokio::test]
    async fn echo_key_puts_the_key_in_a_header_and_the_body_and_late_splits_it_across_frames() {
        let key = "sk-ant-api03-SECRET-0123456789";
        let st = state();
        let msg = json!({"model": "claude-x", "max_tokens": 100, "messages": []});
        let cases = [
            (
                json!({"key": key, "echo_key": true, "error": "invalid_key"}),
                401,
                0,
            ),
            (
                json!({"key": key, "echo_key": "late", "error": "invalid_key"}),
                401,
                10240,
            ),
            (
                json!({"key": key, "echo_key": "late", "status": 503}),
                503,
                10240,
            ),
            (json!({"key": key, "echo_key": true}), 200, 0),
            (
                json!({"key": key, "echo_key": 70000, "status": 500}),
                500,
                70000,
            ),
        ];
        for (script, want_status, pad) in cases {
            st.scripts.add(&script).unwrap();
            let (status, h, frames) =
                call(&st, "/v1/messages", &[("x-api-key", key)], msg.clone()).await;
            assert_eq!(status, want_status, "{script}");
            assert_eq!(h.get("x-echo").unwrap(), key, "{script}");
            let body = String::from_utf8(concat(&frames)).unwrap();
            let at = body.find(key).unwrap_or_else(|| panic!("{script}: {body}"));
            assert!(at > pad, "{script}: key at {at}");
            serde_json::from_str::<Value>(&body).unwrap();
            if pad > 0 {
                assert_eq!(frames.len(), 2, "{script}");
                let cut = frames[0].len();
                assert!(
                    at < cut && cut < at + key.len(),
                    "{script}: the cut splits the key"
                );
                assert!(!frames
                    .iter()
                    .any(|f| f.windows(key.len()).any(|w| w == key.as_bytes())));
            }
        }
    }

    #[tokio::test]
    async fn huge_bodies_stream_the_json_answer_with_usage_at_the_end() {
        let st = state();
        st.scripts
            .add(&json!({"key": "*", "gzip_bytes": 2_000_000, "usage": {"input": 3, "output": 4}}))
            .unwrap();
        let (status, h, frames) = call(&st, "/v1/messages", &[("x-api-key", "k")], json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(h.get(CONTENT_ENCODING).unwrap(), "gzip");
        let plain = encode::decode(Encoding::Gzip, &concat(&frames));
        assert_eq!(plain.len(), 2_000_000);
        let v: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["usage"]["output_tokens"], 4);
        let rec = st.recorder.list(0, None)[0].clone();
        assert_eq!(rec["usage"]["output"], 4);
        assert_eq!(rec["end"], "complete");
    }

    #[test]
    fn reads_max_tokens_under_each_providers_name() {
        let cases = [
            (json!({"max_tokens": 3}), Some(3)),
            (json!({"max_completion_tokens": 4}), Some(4)),
            (json!({"max_output_tokens": 5}), Some(5)),
            (json!({"generationConfig": {"maxOutputTokens": 6}}), Some(6)),
            (json!({}), None),
        ];
        for (v, want) in cases {
            assert_eq!(max_tokens(&v), want, "{v}");
        }
    }
}
