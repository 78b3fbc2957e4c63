//! Scripted behaviours: what the mock does for a given upstream credential (and optionally
//! model or path). Scripts are parsed and validated once when posted; a request only picks one
//! under a short lock, so the hot path stays cheap.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::credentials::ErrorKind;
use crate::encode::{Choice, Encoding};

/// Usage numbers a script pins, in tollgate's normalised terms (SPEC "Counting").
/// `reasoning` is the part of `output` that is reasoning/thoughts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageOverride {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
}

/// Literal JSON texts emitted in place of usage numbers (`usage_raw`), verbatim: `"1e30"`,
/// `"-5"`, `"\"12\""`. `total` is the providers' total field (OpenAI, Gemini).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRaw {
    pub input: Option<String>,
    pub output: Option<String>,
    pub cache_read: Option<String>,
    pub cache_write: Option<String>,
    pub reasoning: Option<String>,
    pub total: Option<String>,
}

impl UsageRaw {
    pub fn none() -> Arc<UsageRaw> {
        static NONE: std::sync::OnceLock<Arc<UsageRaw>> = std::sync::OnceLock::new();
        NONE.get_or_init(|| Arc::new(UsageRaw::default())).clone()
    }
}

/// The padding `echo_key: "late"` puts before the echoed key: past a 8/16 KiB chunk boundary.
pub const LATE_ECHO_PAD: usize = 10 << 10;

/// An error event injected into a stream after `after` content events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseError {
    pub after: usize,
    /// Anthropic error type (`rate_limit_error`, `overloaded_error`, ...); mapped for the others.
    pub kind: String,
    pub message: Option<String>,
}

/// The answer text as stream pieces, each already JSON-escaped (without quotes), so
/// concatenating pieces gives the escaped full text.
#[derive(Debug, PartialEq, Eq)]
pub struct Words {
    /// Pieces in order; the first has no leading space, the others do.
    pieces: Vec<String>,
    /// The same pieces, each with a leading space, used when the stream cycles past the end.
    cycled: Vec<String>,
}

impl Words {
    pub fn from_text(text: &str) -> Words {
        let mut pieces = Vec::new();
        let mut cur = String::new();
        for ch in text.chars() {
            if ch.is_whitespace() && !cur.trim().is_empty() {
                pieces.push(std::mem::take(&mut cur));
            }
            cur.push(ch);
        }
        if !cur.is_empty() {
            pieces.push(cur);
        }
        if pieces.is_empty() {
            pieces.push(String::from("."));
        }
        let pieces: Vec<String> = pieces.iter().map(|p| escape(p)).collect();
        let cycled = pieces
            .iter()
            .map(|p| {
                if p.starts_with(' ') {
                    p.clone()
                } else {
                    format!(" {p}")
                }
            })
            .collect();
        Words { pieces, cycled }
    }

    pub fn default_answer() -> Arc<Words> {
        static DEFAULT: std::sync::OnceLock<Arc<Words>> = std::sync::OnceLock::new();
        DEFAULT
            .get_or_init(|| Arc::new(Words::from_text("Hello from the mock upstream")))
            .clone()
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// These words and then `extra` as one more word (not split at whitespace).
    pub fn appended(&self, extra: &str) -> Words {
        let piece = format!(" {}", escape(extra));
        let mut pieces = self.pieces.clone();
        let mut cycled = self.cycled.clone();
        pieces.push(piece.clone());
        cycled.push(piece);
        Words { pieces, cycled }
    }

    /// The i-th stream piece (escaped), cycling through the text when `i` passes its end.
    pub fn piece(&self, i: usize) -> &str {
        let n = self.pieces.len().max(1);
        let list = if i < self.pieces.len() {
            &self.pieces
        } else {
            &self.cycled
        };
        list.get(i % n).map(String::as_str).unwrap_or("")
    }

    /// The escaped concatenation of the first `n` pieces.
    pub fn text(&self, n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(self.piece(i));
        }
        s
    }
}

/// JSON-escapes a string, without the surrounding quotes.
pub fn escape(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or("")
        .to_owned()
}

#[derive(Debug, Default)]
pub struct Behaviour {
    pub status: Option<u16>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub usage: UsageOverride,
    pub events: Option<usize>,
    pub delay_ms: u64,
    pub first_byte_delay_ms: u64,
    pub reset_after_events: Option<usize>,
    /// Content-encoding of the answer (`encoding`, or `gzip: true`); `None` is identity.
    pub encoding: Option<Choice>,
    /// A provider auth/permission error body in the endpoint's API format (`error`).
    pub error: Option<ErrorKind>,
    /// `echo_key`: echo the received credential in the body and `x-echo`, after this many
    /// bytes of padding (0 for `true`).
    pub echo_key: Option<usize>,
    pub usage_raw: Option<Arc<UsageRaw>>,
    /// `body_bytes`/`gzip_bytes`: a generated JSON success answer of about this many bytes.
    pub body_bytes: Option<u64>,
    pub sse_error: Option<SseError>,
    pub text: Option<Arc<Words>>,
    /// Raw response body replacing the generated one (status and headers still apply).
    pub body: Option<bytes::Bytes>,
}

struct Entry {
    id: u64,
    key: String,
    model: Option<String>,
    path: Option<String>,
    when: Vec<HeaderCond>,
    remaining: Option<u64>,
    behaviour: Arc<Behaviour>,
    source: Value,
}

/// `when_header` entry: the header must be present with a value matching the glob (`"*"`: any
/// value), or, for `None` (JSON null), absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderCond {
    name: HeaderName,
    value: Option<String>,
}

impl HeaderCond {
    fn holds(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        match &self.value {
            None => values.peek().is_none(),
            Some(p) => values.any(|v| glob(p, &String::from_utf8_lossy(v.as_bytes()))),
        }
    }
}

/// What a request is matched on.
pub struct Request<'a> {
    pub key: Option<&'a str>,
    pub model: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl Entry {
    fn matches(&self, req: &Request) -> bool {
        let Request {
            key,
            model,
            path,
            headers,
        } = *req;
        let key_ok = self.key == "*" || Some(self.key.as_str()) == key;
        let model_ok = match (&self.model, model) {
            (None, _) => true,
            (Some(want), Some(got)) => glob(want, got),
            (Some(_), None) => false,
        };
        let path_ok = self.path.as_deref().is_none_or(|p| path.starts_with(p));
        key_ok && model_ok && path_ok && self.when.iter().all(|c| c.holds(headers))
    }

    /// Exact key beats "*", then header conditions, then model, then path; one-off scripts beat
    /// standing ones; newest wins.
    fn rank(&self) -> (u8, bool, u64) {
        let spec = (u8::from(self.key != "*") << 3)
            | (u8::from(!self.when.is_empty()) << 2)
            | (u8::from(self.model.is_some()) << 1)
            | u8::from(self.path.is_some());
        (spec, self.remaining.is_some(), self.id)
    }

    fn same_scope(&self, other: &Entry) -> bool {
        self.key == other.key
            && self.model == other.model
            && self.path == other.path
            && self.when == other.when
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
    }
}

/// The picked behaviour and the id of the script it came from.
pub struct Picked {
    pub id: u64,
    pub behaviour: Arc<Behaviour>,
}

#[derive(Default)]
pub struct Scripts {
    entries: Mutex<Vec<Entry>>,
    // Lets requests skip the lock entirely when nothing is scripted (the benchmark case).
    count: AtomicUsize,
    next_id: AtomicU64,
}

impl Scripts {
    /// Parses and stores one script; returns its id.
    pub fn add(&self, v: &Value) -> Result<u64, String> {
        let obj = v.as_object().ok_or("a script must be a JSON object")?;
        let (scope, behaviour) = parse(obj)?;
        let id = self
            .next_id
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let entry = Entry {
            id,
            key: scope.key,
            model: scope.model,
            path: scope.path,
            when: scope.when,
            remaining: scope.times,
            behaviour: Arc::new(behaviour),
            source: v.clone(),
        };
        let mut entries = lock(&self.entries);
        // A standing script replaces the standing one with the same scope; one-offs pile up.
        if entry.remaining.is_none() {
            entries.retain(|e| !(e.remaining.is_none() && e.same_scope(&entry)));
        }
        entries.push(entry);
        self.count.store(entries.len(), Ordering::Release);
        Ok(id)
    }

    pub fn pick(&self, req: &Request) -> Option<Picked> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut entries = lock(&self.entries);
        let idx = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.matches(req))
            .max_by_key(|(_, e)| e.rank())
            .map(|(i, _)| i)?;
        let e = entries.get_mut(idx)?;
        let picked = Picked {
            id: e.id,
            behaviour: e.behaviour.clone(),
        };
        if let Some(r) = e.remaining.as_mut() {
            *r = r.saturating_sub(1);
            if *r == 0 {
                entries.remove(idx);
                self.count.store(entries.len(), Ordering::Release);
            }
        }
        Some(picked)
    }

    pub fn clear(&self) {
        let mut entries = lock(&self.entries);
        entries.clear();
        self.count.store(0, Ordering::Release);
    }

    pub fn list(&self) -> Value {
        let entries = lock(&self.entries);
        Value::Array(
            entries
                .iter()
                .map(|e| {
                    let mut m = Map::new();
                    m.insert("id".into(), e.id.into());
                    m.insert(
                        "remaining".into(),
                        e.remaining.map_or(Value::Null, Value::from),
                    );
                    m.insert("script".into(), e.source.clone());
                    Value::Object(m)
                })
                .collect(),
        )
    }
}

/// A poisoned lock only means another request panicked mid-update of plain data; keep going.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Scope {
    key: String,
    model: Option<String>,
    path: Option<String>,
    when: Vec<HeaderCond>,
    times: Option<u64>,
}

fn parse(obj: &Map<String, Value>) -> Result<(Scope, Behaviour), String> {
    let mut key = None;
    let mut model = None;
    let mut path = None;
    let mut when = Vec::new();
    let mut times = None;
    let mut b = Behaviour::default();
    let mut sse_error_after = None;
    let mut gzip = false;
    let mut gzip_bytes = None;
    for (name, v) in obj {
        match name.as_str() {
            "key" => key = Some(string(name, v)?),
            "model" => model = opt(v, |v| string(name, v))?,
            "path" => path = opt(v, |v| string(name, v))?,
            "times" => {
                times = opt(v, |v| uint(name, v))?;
                if times == Some(0) {
                    return Err("times: must be at least 1 (omit it for a standing script)".into());
                }
            }
            "status" => {
                b.status = opt(v, |v| {
                    let s = uint(name, v)?;
                    if (100..=999).contains(&s) {
                        u16::try_from(s).map_err(|e| e.to_string())
                    } else {
                        Err(format!("status: {s} is not an HTTP status"))
                    }
                })?
            }
            "headers" => b.headers = headers(v)?,
            "usage" => b.usage = usage(v)?,
            "events" => b.events = opt(v, |v| usize_of(name, v))?,
            "delay_ms" => b.delay_ms = opt(v, |v| uint(name, v))?.unwrap_or(0),
            "first_byte_delay_ms" => {
                b.first_byte_delay_ms = opt(v, |v| uint(name, v))?.unwrap_or(0)
            }
            "reset_after_events" => b.reset_after_events = opt(v, |v| usize_of(name, v))?,
            "gzip" => gzip = v.as_bool().ok_or("gzip: expected a boolean")?,
            "encoding" => {
                b.encoding = opt(v, |v| {
                    Encoding::parse(&string(name, v)?).ok_or_else(|| {
                        format!(
                            "encoding: expected one of gzip, deflate, deflate_raw, br, zstd, \
                             identity, negotiate, got {v}"
                        )
                    })
                })?
            }
            "error" => {
                b.error = opt(v, |v| {
                    ErrorKind::parse(&string(name, v)?).ok_or_else(|| {
                        format!(
                            "error: expected one of invalid_key, mismatched_organization, \
                             permission, invalid_project, got {v}"
                        )
                    })
                })?
            }
            "when_header" => when = when_header(v)?,
            "echo_key" => b.echo_key = echo_key(v)?,
            "usage_raw" => b.usage_raw = Some(Arc::new(usage_raw(v)?)),
            "body_bytes" => b.body_bytes = opt(v, |v| uint(name, v))?,
            "gzip_bytes" => gzip_bytes = opt(v, |v| uint(name, v))?,
            "sse_error" => b.sse_error = sse_error(v)?,
            "sse_error_after" => sse_error_after = opt(v, |v| usize_of(name, v))?,
            "text" => b.text = opt(v, |v| string(name, v))?.map(|t| Arc::new(Words::from_text(&t))),
            "body" => {
                b.body = match v {
                    Value::Null => None,
                    Value::String(s) => Some(bytes::Bytes::from(s.clone())),
                    other => Some(bytes::Bytes::from(other.to_string())),
                }
            }
            other => return Err(format!("unknown script field {other:?}")),
        }
    }
    if let (Some(after), Some(e)) = (sse_error_after, b.sse_error.as_mut()) {
        e.after = after;
    }
    if gzip || gzip_bytes.is_some() {
        let what = if gzip { "gzip" } else { "gzip_bytes" };
        match b.encoding {
            None | Some(Choice::Fixed(Encoding::Gzip)) => {
                b.encoding = Some(Choice::Fixed(Encoding::Gzip))
            }
            Some(_) => return Err(format!("{what}: conflicts with encoding")),
        }
    }
    if let Some(n) = gzip_bytes {
        if b.body_bytes.is_some_and(|m| m != n) {
            return Err("gzip_bytes: conflicts with body_bytes".into());
        }
        b.body_bytes = Some(n);
    }
    let key = key.ok_or("key: required (\"*\" for every key)")?;
    Ok((
        Scope {
            key,
            model,
            path,
            when,
            times,
        },
        b,
    ))
}

fn when_header(v: &Value) -> Result<Vec<HeaderCond>, String> {
    if v.is_null() {
        return Ok(Vec::new());
    }
    let obj = v.as_object().ok_or("when_header: expected an object")?;
    let mut conds = obj
        .iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("when_header.{k}: {e}"))?;
            let value = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => {
                    return Err(format!(
                        "when_header.{k}: expected a value glob (\"*\": any) or null (absent)"
                    ))
                }
            };
            Ok(HeaderCond { name, value })
        })
        .collect::<Result<Vec<_>, String>>()?;
    conds.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(conds)
}

fn echo_key(v: &Value) -> Result<Option<usize>, String> {
    match v {
        Value::Null | Value::Bool(false) => Ok(None),
        Value::Bool(true) => Ok(Some(0)),
        Value::String(s) if s == "late" => Ok(Some(LATE_ECHO_PAD)),
        Value::Number(_) => usize_of("echo_key", v).map(Some),
        _ => Err("echo_key: expected true, \"late\" or a padding size in bytes".into()),
    }
}

fn usage_raw(v: &Value) -> Result<UsageRaw, String> {
    // Strings are the literal text; other JSON values are written back as JSON.
    let text = |_: &str, v: &Value| {
        Ok(match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
    };
    let mut f = usage_fields("usage_raw", v, &USAGE_FIELDS, text)?.into_iter();
    let mut next = || f.next().flatten();
    Ok(UsageRaw {
        input: next(),
        output: next(),
        cache_read: next(),
        cache_write: next(),
        reasoning: next(),
        total: next(),
    })
}

/// The usage fields in `UsageOverride`/`UsageRaw` order; `usage` takes all but `total`.
const USAGE_FIELDS: [&str; 6] = [
    "input",
    "output",
    "cache_read",
    "cache_write",
    "reasoning",
    "total",
];

/// Parses `{field: value}` for the `allowed` fields, in their order (`None` when absent).
fn usage_fields<T>(
    what: &str,
    v: &Value,
    allowed: &[&str],
    parse: impl Fn(&str, &Value) -> Result<Option<T>, String>,
) -> Result<Vec<Option<T>>, String> {
    let mut out: Vec<Option<T>> = allowed.iter().map(|_| None).collect();
    if v.is_null() {
        return Ok(out);
    }
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{what}: expected an object"))?;
    for (k, v) in obj {
        let slot = allowed
            .iter()
            .position(|a| a == k)
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| format!("{what}: unknown field {k:?} ({})", allowed.join(", ")))?;
        *slot = parse(&format!("{what}.{k}"), v)?;
    }
    Ok(out)
}

fn opt<T>(v: &Value, f: impl FnOnce(&Value) -> Result<T, String>) -> Result<Option<T>, String> {
    if v.is_null() {
        Ok(None)
    } else {
        f(v).map(Some)
    }
}

fn string(name: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{name}: expected a string"))
}

fn uint(name: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{name}: expected a non-negative integer"))
}

fn usize_of(name: &str, v: &Value) -> Result<usize, String> {
    usize::try_from(uint(name, v)?).map_err(|e| format!("{name}: {e}"))
}

fn headers(v: &Value) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let obj = v.as_object().ok_or("headers: expected an object")?;
    obj.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("headers.{k}: {e}"))?;
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(format!("headers.{k}: expected a string or number")),
            };
            let value = HeaderValue::from_str(&text).map_err(|e| format!("headers.{k}: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

fn usage(v: &Value) -> Result<UsageOverride, String> {
    let fields = USAGE_FIELDS.get(..5).unwrap_or(&USAGE_FIELDS);
    let mut f = usage_fields("usage", v, fields, |name, v| opt(v, |v| uint(name, v)))?.into_iter();
    let mut next = || f.next().flatten();
    Ok(UsageOverride {
        input: next(),
        output: next(),
        cache_read: next(),
        cache_write: next(),
        reasoning: next(),
    })
}

fn sse_error(v: &Value) -> Result<Option<SseError>, String> {
    match v {
        Value::Null | Value::Bool(false) => Ok(None),
        Value::Bool(true) => Ok(Some(SseError {
            after: 0,
            kind: "overloaded_error".into(),
            message: None,
        })),
        Value::String(s) => Ok(Some(SseError {
            after: 0,
            kind: s.clone(),
            message: None,
        })),
        Value::Object(o) => {
            let mut e = SseError {
                after: 0,
                kind: "overloaded_error".into(),
                message: None,
            };
            for (k, v) in o {
                match k.as_str() {
                    "after" => e.after = usize_of("sse_error.after", v)?,
                    "type" => e.kind = string("sse_error.type", v)?,
                    "message" => e.message = Some(string("sse_error.message", v)?),
                    other => return Err(format!("sse_error: unknown field {other:?}")),
                }
            }
            Ok(Some(e))
        }
        _ => Err("sse_error: expected a type string or {type, after, message}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pick(s: &Scripts, key: Option<&str>, model: Option<&str>, h: &HeaderMap) -> Option<Picked> {
        s.pick(&Request {
            key,
            model,
            path: "/v1/messages",
            headers: h,
        })
    }

    fn status_of(s: &Scripts, key: Option<&str>, model: Option<&str>) -> Option<u16> {
        pick(s, key, model, &HeaderMap::new()).and_then(|p| p.behaviour.status)
    }

    fn behaviour(v: Value) -> Arc<Behaviour> {
        let s = Scripts::default();
        s.add(&v).unwrap();
        pick(&s, None, None, &HeaderMap::new()).unwrap().behaviour
    }

    #[test]
    fn picks_most_specific_script_and_falls_back_after_times_run_out() {
        let s = Scripts::default();
        s.add(&json!({"key": "*", "status": 503})).unwrap();
        s.add(&json!({"key": "k1", "status": 401})).unwrap();
        s.add(&json!({"key": "k1", "model": "claude-*", "status": 403}))
            .unwrap();
        s.add(&json!({"key": "k1", "status": 429, "times": 2}))
            .unwrap();
        let cases: &[(Option<&str>, Option<&str>, Option<u16>)] = &[
            (Some("k1"), Some("claude-3"), Some(403)),
            (Some("k1"), Some("gpt-4o"), Some(429)),
            (Some("k1"), Some("gpt-4o"), Some(429)),
            (Some("k1"), Some("gpt-4o"), Some(401)),
            (Some("k2"), None, Some(503)),
            (None, None, Some(503)),
        ];
        for (key, model, want) in cases {
            assert_eq!(status_of(&s, *key, *model), *want, "{key:?} {model:?}");
        }
    }

    #[test]
    fn standing_script_replaces_same_scope_and_reset_clears_all() {
        let s = Scripts::default();
        s.add(&json!({"key": "k", "status": 429})).unwrap();
        s.add(&json!({"key": "k", "status": 529})).unwrap();
        assert_eq!(s.list().as_array().unwrap().len(), 1);
        assert_eq!(status_of(&s, Some("k"), None), Some(529));
        s.clear();
        assert!(status_of(&s, Some("k"), None).is_none());
    }

    #[test]
    fn rejects_bad_scripts_with_a_named_field() {
        let cases = [
            (json!({"status": 429}), "key"),
            (json!({"key": "k", "stauts": 429}), "stauts"),
            (json!({"key": "k", "usage": {"inptu": 1}}), "inptu"),
            (
                json!({"key": "k", "headers": {"retry-after": true}}),
                "retry-after",
            ),
            (json!({"key": "k", "times": 0}), "times"),
            (json!({"key": "k", "status": 7}), "status"),
            (json!({"key": "k", "encoding": "lzma"}), "encoding"),
            (json!({"key": "k", "error": "nope"}), "error"),
            (json!({"key": "k", "echo_key": "early"}), "echo_key"),
            (json!({"key": "k", "usage_raw": {"inptu": "1"}}), "inptu"),
            (
                json!({"key": "k", "when_header": {"x-a": 5}}),
                "when_header.x-a",
            ),
            (
                json!({"key": "k", "when_header": {"bad header": "*"}}),
                "when_header",
            ),
            (json!({"key": "k", "gzip": true, "encoding": "br"}), "gzip"),
            (
                json!({"key": "k", "gzip_bytes": 10, "encoding": "zstd"}),
                "gzip_bytes",
            ),
            (
                json!({"key": "k", "gzip_bytes": 10, "body_bytes": 20}),
                "gzip_bytes",
            ),
        ];
        for (v, want) in cases {
            let err = Scripts::default().add(&v).unwrap_err();
            assert!(err.contains(want), "{err} should name {want}");
        }
    }

    #[test]
    fn parses_every_behaviour_field() {
        let s = Scripts::default();
        s.add(
            &json!({"key": "k", "status": 200, "headers": {"Retry-After": 3},
            "usage": {"input": 10, "output": 20, "cache_read": 3, "cache_write": 4},
            "events": 500, "delay_ms": 2, "first_byte_delay_ms": 5, "reset_after_events": 7,
            "gzip": true, "sse_error": "rate_limit_error", "sse_error_after": 2, "text": "a b"}),
        )
        .unwrap();
        let b = pick(&s, Some("k"), None, &HeaderMap::new())
            .unwrap()
            .behaviour;
        assert_eq!(b.headers.first().unwrap().0.as_str(), "retry-after");
        assert_eq!(b.usage.cache_write, Some(4));
        assert_eq!(b.events, Some(500));
        assert_eq!(b.reset_after_events, Some(7));
        assert_eq!(b.sse_error.as_ref().unwrap().after, 2);
        assert_eq!(b.text.as_ref().unwrap().len(), 2);
        assert_eq!(b.encoding, Some(Choice::Fixed(Encoding::Gzip)));
    }

    #[test]
    fn parses_the_hostile_upstream_fields() {
        let b = behaviour(json!({"key": "*", "error": "mismatched_organization",
            "echo_key": "late", "usage_raw": {"input": "1e30", "output": -5, "total": null},
            "gzip_bytes": 1000}));
        assert_eq!(b.encoding, Some(Choice::Fixed(Encoding::Gzip)));
        assert_eq!(b.error, Some(ErrorKind::MismatchedOrganization));
        assert_eq!(b.echo_key, Some(LATE_ECHO_PAD));
        let raw = b.usage_raw.as_deref().unwrap();
        assert_eq!(raw.input.as_deref(), Some("1e30"));
        assert_eq!(raw.output.as_deref(), Some("-5"));
        assert_eq!(raw.total, None);
        assert_eq!(b.body_bytes, Some(1000));
        let cases = [
            (
                json!({"key": "*", "gzip_bytes": 7}),
                Some(Choice::Fixed(Encoding::Gzip)),
                Some(7),
            ),
            (
                json!({"key": "*", "gzip_bytes": 7, "encoding": "gzip"}),
                Some(Choice::Fixed(Encoding::Gzip)),
                Some(7),
            ),
            (
                json!({"key": "*", "body_bytes": 7, "encoding": "br"}),
                Some(Choice::Fixed(Encoding::Br)),
                Some(7),
            ),
            (
                json!({"key": "*", "encoding": "negotiate"}),
                Some(Choice::Negotiate),
                None,
            ),
            (json!({"key": "*", "gzip": false}), None, None),
        ];
        for (v, enc, size) in cases {
            let b = behaviour(v.clone());
            assert_eq!((b.encoding, b.body_bytes), (enc, size), "{v}");
        }
        for (v, want) in [
            (json!(true), Some(0)),
            (json!(false), None),
            (json!(123), Some(123)),
        ] {
            assert_eq!(behaviour(json!({"key": "*", "echo_key": v})).echo_key, want);
        }
    }

    #[test]
    fn when_header_scripts_apply_only_to_requests_with_matching_headers() {
        let s = Scripts::default();
        s.add(&json!({"key": "k", "status": 200})).unwrap();
        s.add(&json!({"key": "k", "status": 401, "when_header": {"OpenAI-Organization": "*"}}))
            .unwrap();
        s.add(
            &json!({"key": "k", "status": 403, "when_header": {"x-goog-user-project": "proj-*"}}),
        )
        .unwrap();
        s.add(&json!({"key": "*", "status": 409, "when_header": {"anthropic-version": null}}))
            .unwrap();
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], Option<u16>);
        let cases: &[Case] = &[
            (Some("k"), &[], Some(200)),
            (Some("k"), &[("openai-organization", "org-1")], Some(401)),
            (Some("k"), &[("openai-organization", "")], Some(401)),
            (Some("k"), &[("x-goog-user-project", "proj-9")], Some(403)),
            (Some("k"), &[("x-goog-user-project", "other")], Some(200)),
            (Some("other"), &[], Some(409)),
            (Some("other"), &[("anthropic-version", "2023-06-01")], None),
        ];
        for (key, headers, want) in cases {
            let got = pick(&s, *key, None, &h(headers)).and_then(|p| p.behaviour.status);
            assert_eq!(got, *want, "{key:?} {headers:?}");
        }
        // A standing script with the same conditions replaces the old one; others stay.
        s.add(&json!({"key": "k", "status": 402, "when_header": {"openai-organization": "*"}}))
            .unwrap();
        assert_eq!(s.list().as_array().unwrap().len(), 4);
        let got = pick(&s, Some("k"), None, &h(&[("openai-organization", "o")]));
        assert_eq!(got.and_then(|p| p.behaviour.status), Some(402));
    }

    #[test]
    fn words_cycle_with_spaces_and_escape_json() {
        let w = Words::from_text("Hi \"you\"");
        assert_eq!(w.len(), 2);
        assert_eq!(w.text(5), "Hi \\\"you\\\" Hi \\\"you\\\" Hi");
    }
}
