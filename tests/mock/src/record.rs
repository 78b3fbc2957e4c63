//! The bounded log of requests the mock served, for tests to assert on (what reached the
//! upstream, with which key, and what usage the mock answered). Bounded by count and by stored
//! body bytes; the stream's end state is updated lock-free as the body plays.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::providers::Usage;
use crate::script::lock;

pub const MAX_RECORDS: usize = 2000;
/// Stored body text is cut at this size per record...
pub const MAX_BODY: usize = 4 << 20;
/// ...and the oldest records go when all stored bodies pass this.
pub const MAX_TOTAL_BODY: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Pending,
    Complete,
    /// The stream ended with a scripted error event.
    SseError,
    /// The mock aborted the connection mid-body (`reset_after_events`).
    Reset,
    /// The client (tollgate/Envoy) dropped the response before its end.
    ClientGone,
}

impl End {
    fn from_u8(v: u8) -> End {
        match v {
            1 => End::Complete,
            2 => End::SseError,
            3 => End::Reset,
            4 => End::ClientGone,
            _ => End::Pending,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            End::Pending => 0,
            End::Complete => 1,
            End::SseError => 2,
            End::Reset => 3,
            End::ClientGone => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            End::Pending => "pending",
            End::Complete => "complete",
            End::SseError => "sse_error",
            End::Reset => "reset",
            End::ClientGone => "client_gone",
        }
    }
}

pub struct Record {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub body_len: usize,
    pub key: Option<String>,
    pub model: Option<String>,
    pub endpoint: &'static str,
    pub status: u16,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub script: Option<u64>,
    /// The content-encoding the answer went out with (`identity` when none).
    pub encoding: &'static str,
    pub events_sent: AtomicUsize,
    end: AtomicU8,
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seq: u64,
        method: &str,
        path: &str,
        headers: &hyper::HeaderMap,
        body: &[u8],
        key: Option<&str>,
        model: Option<&str>,
        endpoint: &'static str,
    ) -> Record {
        let mut hs: Vec<(String, String)> = Vec::with_capacity(headers.keys_len());
        for name in headers.keys() {
            let joined = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(", ");
            hs.push((name.as_str().to_owned(), joined));
        }
        let kept = body.get(..MAX_BODY).unwrap_or(body);
        Record {
            seq,
            method: method.to_owned(),
            path: path.to_owned(),
            headers: hs,
            body: String::from_utf8_lossy(kept).into_owned(),
            body_len: body.len(),
            key: key.map(str::to_owned),
            model: model.map(str::to_owned),
            endpoint,
            status: 200,
            stream: false,
            usage: None,
            script: None,
            encoding: "identity",
            events_sent: AtomicUsize::new(0),
            end: AtomicU8::new(0),
        }
    }

    #[cfg(test)]
    pub fn for_test() -> Record {
        Record::new(
            0,
            "POST",
            "/",
            &hyper::HeaderMap::new(),
            b"",
            None,
            None,
            "test",
        )
    }

    pub fn set_end(&self, e: End) {
        // First final state wins (a reset body is later dropped too).
        let _ = self
            .end
            .compare_exchange(0, e.as_u8(), Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn end(&self) -> End {
        End::from_u8(self.end.load(Ordering::Acquire))
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("seq".into(), self.seq.into());
        m.insert("method".into(), self.method.clone().into());
        m.insert("path".into(), self.path.clone().into());
        let mut h = Map::new();
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone().into());
        }
        m.insert("headers".into(), Value::Object(h));
        m.insert("body".into(), self.body.clone().into());
        m.insert("body_len".into(), self.body_len.into());
        m.insert("body_truncated".into(), (self.body_len > MAX_BODY).into());
        m.insert(
            "key".into(),
            self.key.clone().map_or(Value::Null, Value::from),
        );
        m.insert(
            "model".into(),
            self.model.clone().map_or(Value::Null, Value::from),
        );
        m.insert("endpoint".into(), self.endpoint.into());
        m.insert("status".into(), self.status.into());
        m.insert("stream".into(), self.stream.into());
        m.insert("encoding".into(), self.encoding.into());
        m.insert(
            "usage".into(),
            self.usage.map_or(Value::Null, |u| {
                serde_json::json!({"input": u.input, "output": u.output,
                    "cache_read": u.cache_read, "cache_write": u.cache_write,
                    "reasoning": u.reasoning})
            }),
        );
        m.insert(
            "script".into(),
            self.script.map_or(Value::Null, Value::from),
        );
        m.insert(
            "events_sent".into(),
            self.events_sent.load(Ordering::Relaxed).into(),
        );
        let end = self.end();
        m.insert("end".into(), end.name().into());
        m.insert("completed".into(), (end == End::Complete).into());
        Value::Object(m)
    }
}

#[derive(Default)]
struct Ring {
    items: VecDeque<Arc<Record>>,
    bytes: usize,
}

pub struct Recorder {
    pub enabled: bool,
    ring: Mutex<Ring>,
}

impl Recorder {
    pub fn new(enabled: bool) -> Recorder {
        Recorder {
            enabled,
            ring: Mutex::new(Ring::default()),
        }
    }

    pub fn push(&self, r: Arc<Record>) {
        let mut ring = lock(&self.ring);
        ring.bytes = ring.bytes.saturating_add(r.body.len());
        ring.items.push_back(r);
        while ring.items.len() > MAX_RECORDS
            || (ring.bytes > MAX_TOTAL_BODY && ring.items.len() > 1)
        {
            match ring.items.pop_front() {
                Some(old) => ring.bytes = ring.bytes.saturating_sub(old.body.len()),
                None => break,
            }
        }
    }

    /// Snapshot of the records (the lock is held only to clone the Arcs), oldest first,
    /// optionally only those with `seq > since` and a path starting with `prefix`.
    pub fn list(&self, since: u64, prefix: Option<&str>) -> Value {
        let items: Vec<Arc<Record>> = lock(&self.ring).items.iter().cloned().collect();
        Value::Array(
            items
                .iter()
                .filter(|r| r.seq > since && prefix.is_none_or(|p| r.path.starts_with(p)))
                .map(|r| r.to_json())
                .collect(),
        )
    }

    pub fn clear(&self) {
        let mut ring = lock(&self.ring);
        ring.items.clear();
        ring.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_records_only() {
        let rec = Recorder::new(true);
        for i in 0..(MAX_RECORDS as u64 + 10) {
            let mut r = Record::for_test();
            r.seq = i + 1;
            rec.push(Arc::new(r));
        }
        let v = rec.list(0, None);
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), MAX_RECORDS);
        assert_eq!(a[0]["seq"], 11);
        assert_eq!(
            rec.list(MAX_RECORDS as u64 + 5, None)
                .as_array()
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn records_every_request_header_including_the_credential_scoping_ones() {
        let names = [
            "accept-encoding",
            "openai-organization",
            "openai-project",
            "x-goog-user-project",
            "anthropic-version",
            "anthropic-beta",
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "content-encoding",
            "x-anything",
        ];
        let mut h = hyper::HeaderMap::new();
        for (i, n) in names.iter().enumerate() {
            h.insert(
                hyper::header::HeaderName::from_static(n),
                format!("v{i}").parse().unwrap(),
            );
        }
        let v = Record::new(1, "POST", "/", &h, b"", None, None, "chat").to_json();
        let got = v["headers"].as_object().unwrap();
        assert_eq!(got.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(got[*n], format!("v{i}"), "{n}");
        }
        assert_eq!(v["encoding"], "identity");
    }

    #[test]
    fn joins_repeated_headers_and_keeps_the_first_end_state() {
        let mut h = hyper::HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        let r = Record::new(
            1,
            "POST",
            "/v1/messages?x=1",
            &h,
            b"{}",
            Some("k"),
            None,
            "messages",
        );
        r.set_end(End::Reset);
        r.set_end(End::ClientGone);
        let v = r.to_json();
        assert_eq!(v["headers"]["x-a"], "1, 2");
        assert_eq!(v["end"], "reset");
        assert_eq!(v["completed"], false);
    }
}
