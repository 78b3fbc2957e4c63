//! A recording fake of the host: header maps that the flow's writes change, body buffers
//! that Envoy would keep while a callback pauses, filter state, local replies, metrics,
//! gRPC calls, a settable clock, logs, and a `MemStore` for shared data. `Tg` drives a
//! configured root and its requests through the callbacks in Envoy's order.
#![cfg(test)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use crate::flow::{Action, Buffer, Flow, GrpcCall, Headers, Host, Level, MetricKind, Root};
use crate::metrics;
use crate::store::{MemStore, Store, StoreError};

/// 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

/// A local reply the flow sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A gRPC call the flow dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout_ms: u64,
}

pub struct Fake {
    store: MemStore,
    /// Shared-data writes fail with this host status (a broken or contended store).
    pub store_fails: Cell<Option<u32>>,
    pub now: u64,
    pub request: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub grpc_reply: Vec<u8>,
    pub config: Vec<u8>,
    /// By path, segments joined with NUL (as Envoy takes them).
    pub properties: BTreeMap<String, String>,
    /// Every property name the flow wrote.
    pub written: BTreeSet<String>,
    pub replies: Vec<Reply>,
    pub resumed: u32,
    pub route_cache_cleared: u32,
    /// Metric (name, kind, value) by id.
    pub metrics: Vec<(String, MetricKind, u64)>,
    pub grpc: Vec<Sent>,
    /// `dispatch_grpc` fails with this status.
    pub grpc_refuses: Option<u32>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub tick_ms: Option<u64>,
    /// Every request-header write, in order: `("set", name, value)` or `("remove", name, "")`.
    pub request_writes: Vec<(&'static str, String, String)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake::new()
    }
}

impl Fake {
    pub fn new() -> Fake {
        Fake {
            store: MemStore::new(),
            store_fails: Cell::new(None),
            now: T0,
            request: Vec::new(),
            response: Vec::new(),
            request_body: Vec::new(),
            response_body: Vec::new(),
            grpc_reply: Vec::new(),
            config: Vec::new(),
            properties: BTreeMap::new(),
            written: BTreeSet::new(),
            replies: Vec::new(),
            resumed: 0,
            route_cache_cleared: 0,
            metrics: Vec::new(),
            grpc: Vec::new(),
            grpc_refuses: None,
            logs: RefCell::new(Vec::new()),
            tick_ms: None,
            request_writes: Vec::new(),
        }
    }

    /// The first value of request header `name` as the upstream would see it.
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        header(&self.request, name)
    }

    /// The first value of response header `name` as the client would see it.
    pub fn client_header(&self, name: &str) -> Option<&str> {
        header(&self.response, name)
    }

    /// Filter state `name`.
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// Sets a property at `path` (dynamic metadata, stream info, another stage's facts).
    pub fn put_property(&mut self, path: &[&str], value: &str) {
        self.properties.insert(path.join("\0"), value.to_string());
    }

    /// The value of metric `metric` with `labels` (0 when never written).
    pub fn metric_value(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        let name = metrics::name(metric, labels);
        self.metrics
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or(0, |(_, _, v)| *v)
    }

    /// The `tollgate_account_state` gauge of `account`.
    pub fn account_state(&self, account: &str) -> u64 {
        self.metric_value("tollgate_account_state", &[("account", account)])
    }

    /// How many log lines contain `text`.
    pub fn logged_count(&self, text: &str) -> usize {
        self.logs
            .borrow()
            .iter()
            .filter(|(_, l)| l.contains(text))
            .count()
    }

    /// The last local reply.
    pub fn reply(&self) -> &Reply {
        self.replies.last().expect("a local reply")
    }

    /// Log lines containing `text`.
    pub fn logged(&self, text: &str) -> Vec<String> {
        let logs = self.logs.borrow();
        logs.iter()
            .filter(|(_, l)| l.contains(text))
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.store.get(key).ok().and_then(|(v, _)| v)
    }
}

fn header<'a>(map: &'a [(String, String)], name: &str) -> Option<&'a str> {
    map.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn pairs(map: &[(String, String)]) -> Headers {
    let refs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Headers::from_pairs(&refs)
}

fn replace(map: &mut Vec<(String, String)>, name: &str, value: &str) {
    match map.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => map.push((name.to_string(), value.to_string())),
    }
}

impl Store for Fake {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some(status) = self.store_fails.get() {
            return Err(StoreError::Host(status));
        }
        self.store.set(key, value, cas)
    }
}

impl Host for Fake {
    fn now_ms(&self) -> u64 {
        self.now
    }

    fn log(&self, level: Level, msg: &str) {
        self.logs.borrow_mut().push((level, msg.to_string()));
    }

    fn request_headers(&self) -> Headers {
        pairs(&self.request)
    }

    fn response_headers(&self) -> Headers {
        pairs(&self.response)
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.request_writes
            .push(("set", name.to_string(), value.to_string()));
        replace(&mut self.request, name, value);
    }

    fn remove_request_header(&mut self, name: &str) {
        self.request_writes
            .push(("remove", name.to_string(), String::new()));
        self.request.retain(|(k, _)| k != name);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        replace(&mut self.response, name, value);
    }

    fn remove_response_header(&mut self, name: &str) {
        self.response.retain(|(k, _)| k != name);
    }

    fn read(&self, buffer: Buffer, start: usize, max: usize) -> Option<Vec<u8>> {
        let buf = match buffer {
            Buffer::RequestBody => &self.request_body,
            Buffer::ResponseBody => &self.response_body,
            Buffer::GrpcReply => &self.grpc_reply,
            Buffer::PluginConfig => &self.config,
        };
        let end = start.saturating_add(max).min(buf.len());
        buf.get(start.min(end)..end).map(<[u8]>::to_vec)
    }

    fn replace(&mut self, buffer: Buffer, start: usize, size: usize, data: &[u8]) -> bool {
        let buf = match buffer {
            Buffer::RequestBody => &mut self.request_body,
            Buffer::ResponseBody => &mut self.response_body,
            _ => return false,
        };
        if start > buf.len() {
            return false;
        }
        let end = start.saturating_add(size).min(buf.len());
        buf.splice(start..end, data.iter().copied());
        true
    }

    fn set_property(&mut self, name: &str, value: &str) {
        self.written.insert(name.to_string());
        self.properties.insert(name.to_string(), value.to_string());
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.properties
            .get(&path.join("\0"))
            .filter(|v| !v.is_empty())
            .cloned()
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.replies.push(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }

    fn resume_request(&mut self) {
        self.resumed += 1;
    }

    fn clear_route_cache(&mut self) {
        self.route_cache_cleared += 1;
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(i) = self.metrics.iter().position(|(n, _, _)| n == name) {
            return u32::try_from(i).ok();
        }
        self.metrics.push((name.to_string(), kind, 0));
        u32::try_from(self.metrics.len() - 1).ok()
    }

    fn increment_metric(&mut self, id: u32, by: i64) {
        if let Some(m) = self.metrics.get_mut(id as usize) {
            m.2 = m.2.saturating_add_signed(by);
        }
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        if let Some(m) = self.metrics.get_mut(id as usize) {
            m.2 = value;
        }
    }

    fn metric(&self, id: u32) -> Option<u64> {
        self.metrics.get(id as usize).map(|m| m.2)
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, u32> {
        if let Some(status) = self.grpc_refuses {
            return Err(status);
        }
        let token = 100 + self.grpc.len() as u32;
        self.grpc.push(Sent {
            token,
            cluster: call.cluster.to_string(),
            service: call.service.to_string(),
            method: call.method.to_string(),
            message: call.message.to_vec(),
            timeout_ms: call.timeout_ms,
        });
        Ok(token)
    }

    fn set_tick_period_ms(&mut self, ms: u64) {
        self.tick_ms = Some(ms);
    }
}

/// A configured worker: the root, the fake host, and helpers that drive a request through
/// the callbacks in Envoy's order.
pub struct Tg {
    pub host: Fake,
    pub root: Root,
    next_id: u32,
}

/// What the request side of one request did.
pub struct Req {
    pub flow: Flow,
    /// The action of the last request callback that ran.
    pub action: Action,
}

impl Tg {
    /// A worker with `config` loaded (which must be valid).
    pub fn new(config: &str) -> Tg {
        let tg = Tg::try_new(config);
        assert!(tg.1, "configuration refused: {:?}", tg.0.host.logs.borrow());
        tg.0.host.logs.borrow_mut().clear();
        tg.0
    }

    /// A worker given `config`, and whether it took it.
    pub fn try_new(config: &str) -> (Tg, bool) {
        let mut host = Fake::new();
        host.config = config.as_bytes().to_vec();
        let mut root = Root::new(1);
        let ok = root.configure(&mut host, config.len());
        (
            Tg {
                host,
                root,
                next_id: 2,
            },
            ok,
        )
    }

    /// The value of metric `metric` with `labels` as the host shows it after the next root
    /// tick (counters reach the host from the tick).
    pub fn metric_value(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        let unflushed = self
            .root
            .plugin()
            .map_or(0, |p| p.stats.borrow().unflushed(metric, labels));
        self.host.metric_value(metric, labels) + unflushed
    }

    /// A fresh request context.
    pub fn flow(&mut self) -> Flow {
        let id = self.next_id;
        self.next_id += 1;
        self.root.new_request(&self.host, id).expect("configured")
    }

    /// Runs the request callbacks: headers (with `:method` and `:path` first), then, when the
    /// flow waits for a body, the whole `body` as one last chunk. Replies and header writes
    /// are left in `host`.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Req {
        self.host.request = [(":method", method), (":path", path)]
            .iter()
            .chain(headers)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.host.replies.clear();
        self.host.request_writes.clear();
        self.host.request_body.clear();
        let mut flow = self.flow();
        let replies = self.host.replies.len();
        let mut action = flow.on_request_headers(&mut self.host, body.is_empty());
        if action == Action::Pause && self.host.replies.len() == replies && !body.is_empty() {
            self.host.request_body = body.as_bytes().to_vec();
            action = flow.on_request_body(&mut self.host, body.len(), true);
        }
        Req { flow, action }
    }

    /// A POST with a JSON body.
    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &str) -> Req {
        self.send("POST", path, headers, body)
    }

    /// Runs the response callbacks for `status` and `headers`, then `chunks` as body chunks
    /// (the last one ends the stream), keeping what a paused callback left in the buffer as
    /// Envoy does; then the access log. Returns the body the client received.
    pub fn respond(
        &mut self,
        req: &mut Req,
        status: u32,
        headers: &[(&str, &str)],
        chunks: &[&[u8]],
    ) -> Vec<u8> {
        let delivered = self.respond_open(req, status, headers, chunks, true);
        req.flow.on_log(&mut self.host);
        delivered
    }

    /// One more response body chunk (nothing held back); `end` ends the stream.
    pub fn more(&mut self, req: &mut Req, chunk: &[u8], end: bool) -> Action {
        self.host.response_body = chunk.to_vec();
        req.flow.on_response_body(&mut self.host, chunk.len(), end)
    }

    /// A 200 JSON answer (Anthropic's format) reporting `input` and `output` tokens.
    pub fn answer(&mut self, req: &mut Req, input: u64, output: u64) -> Vec<u8> {
        let body = super::anthropic_answer(input, output);
        let json = [("content-type", "application/json")];
        self.respond(req, 200, &json, &[body.as_bytes()])
    }

    /// `respond` without the access log; `end` says whether the last chunk ends the stream.
    pub fn respond_open(
        &mut self,
        req: &mut Req,
        status: u32,
        headers: &[(&str, &str)],
        chunks: &[&[u8]],
        end: bool,
    ) -> Vec<u8> {
        let code = status.to_string();
        self.host.response = [(":status", code.as_str())]
            .iter()
            .chain(headers)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let none = chunks.is_empty() && end;
        req.flow.on_response_headers(&mut self.host, none);
        let mut delivered = Vec::new();
        let mut buffered: Vec<u8> = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = end && i + 1 == chunks.len();
            buffered.extend_from_slice(chunk);
            self.host.response_body = buffered.clone();
            let action = req
                .flow
                .on_response_body(&mut self.host, buffered.len(), last);
            if action == Action::Continue {
                delivered.extend_from_slice(&self.host.response_body);
                buffered.clear();
            }
        }
        delivered
    }
}

impl Req {
    /// The context id of the request.
    pub fn flow_id(&self) -> u32 {
        self.flow.id()
    }
}

impl Fake {
    /// Filter state as another filter (or the other stage) left it.
    pub fn set_property_for_test(&mut self, name: &str, value: &str) {
        self.properties.insert(name.to_string(), value.to_string());
    }
}
