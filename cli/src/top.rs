//! `tollgate top`: a terminal view of the filter's usage API (`GET {admin.path}/usage`, with
//! the admin key): totals, accounts, consumers and, where the API has them, rejections by
//! reason, latency percentiles and recent requests. One frame per fetch, redrawn with an ANSI
//! clear; `--once` prints one frame and exits. The key is sent, never printed.
//!
//! The HTTP client is a few lines of HTTP/1.1 over a TCP stream (plain `http://`: the admin
//! endpoints are read on the loopback or through a port-forward), so the CLI needs no TLS or
//! HTTP crate.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The largest usage document read (the API's own is a few hundred KB at most).
const MAX_BODY: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);
/// The whole answer must come within this, however slowly a server drips it.
const DEADLINE: Duration = Duration::from_secs(15);
/// Rows of the recent-requests table shown.
const RECENT_ROWS: usize = 15;

/// Where the usage API is, parsed from `tollgate top URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `/tollgate/usage`.
    pub path: String,
    /// A key given as the URL's password (`http://admin:KEY@host/…`), taken out of the URL.
    pub url_key: Option<String>,
}

impl Target {
    /// `http://HOST[:PORT][/ADMIN_PATH]`; the path defaults to `/tollgate`, and `/usage` is
    /// added unless the URL already ends with it.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(
                    "https is not supported: use the http listener, e.g. on the \
                            loopback or through a port-forward"
                        .to_string(),
                )
            }
            Some((scheme, _)) => return Err(format!("unsupported URL scheme {scheme:?}")),
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let url_key = userinfo
            .and_then(|u| u.split_once(':').map(|(_, p)| p))
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| "the URL's port is not a number".to_string())?;
                (h, port)
            }
            _ => (hostport, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the URL has no host".to_string());
        }
        if path.contains(['?', '#']) {
            return Err(
                "the URL takes no query: give the key with --key or TOLLGATE_ADMIN_KEY".to_string(),
            );
        }
        let base = path.trim_end_matches('/');
        let base = if base.is_empty() { "/tollgate" } else { base };
        let path = if base.ends_with("/usage") {
            base.to_string()
        } else {
            format!("{base}/usage")
        };
        Ok(Target {
            host: host.to_string(),
            port,
            path,
            url_key,
        })
    }

    /// The URL as shown: no user, no password.
    pub fn display(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("http://{host}:{}{}", self.port, self.path)
    }
}

/// `GET` the usage document. Errors never carry the key.
pub fn fetch(t: &Target, key: Option<&str>) -> Result<Value, String> {
    let addr = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", t.display()))?
        .next()
        .ok_or_else(|| format!("{}: no address", t.display()))?;
    let mut s =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{}: {e}", t.display()))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let mut req = format!(
        "GET {} HTTP/1.1\r\nhost: {}:{}\r\naccept: application/json\r\n\
         accept-encoding: identity\r\nconnection: close\r\nuser-agent: tollgate-top/{}\r\n",
        t.path,
        t.host,
        t.port,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(k) = key {
        req.push_str(&format!("x-api-key: {k}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{}: {e}", t.display()))?;
    let (status, body) = read_response(s).map_err(|e| format!("{}: {e}", t.display()))?;
    // A server or proxy that echoes the request: the key is masked before anything is read.
    let body = match key {
        Some(k) if !k.is_empty() => String::from_utf8_lossy(&body).replace(k, "*****"),
        _ => String::from_utf8_lossy(&body).into_owned(),
    };
    match status {
        200 => serde_json::from_str(&body)
            .map_err(|e| format!("{}: the answer is not JSON: {e}", t.display())),
        401 | 403 => Err(format!(
            "{}: {status}: the admin key was {} (--key or TOLLGATE_ADMIN_KEY)",
            t.display(),
            if key.is_some() { "refused" } else { "missing" }
        )),
        _ => {
            let text: String = body.chars().take(200).filter(|c| !c.is_control()).collect();
            Err(format!("{}: HTTP {status}: {}", t.display(), text.trim()))
        }
    }
}

/// A reader that fails once its deadline has passed.
struct Deadline<R> {
    inner: R,
    until: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() > self.until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no whole answer within {} s", DEADLINE.as_secs()),
            ));
        }
        self.inner.read(buf)
    }
}

/// The status and body of an HTTP/1.1 response (content-length, chunked or to the close).
fn read_response(s: impl Read) -> io::Result<(u16, Vec<u8>)> {
    read_response_until(s, Instant::now() + DEADLINE)
}

fn read_response_until(s: impl Read, until: Instant) -> io::Result<(u16, Vec<u8>)> {
    let s = Deadline { inner: s, until };
    let mut r = BufReader::new(s.take(MAX_BODY as u64 + 64 * 1024));
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("not an HTTP response"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("the response ended in its headers"));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(bad("the response is too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(body.get_mut(start..).unwrap_or_default())?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(bad("the response is too large"));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// The frame
// ---------------------------------------------------------------------------------------------

/// One frame of the view, from a usage document. Fields the API does not have (an older
/// filter) are left out; a field of another shape is shown as it is.
pub fn render(u: &Value, shown_url: &str) -> String {
    let mut out = String::new();
    let now = u["now_s"].as_u64();
    let mut head = format!("tollgate top  {shown_url}");
    if let Some(n) = now {
        head.push_str(&format!("  {}", utc(n)));
        if let Some(since) = u["since_s"].as_u64() {
            head.push_str(&format!(
                "  counting for {}",
                duration(n.saturating_sub(since))
            ));
        }
    }
    out.push_str(&head);
    out.push_str("\n\n");

    let t = &u["totals"];
    let requests = t["requests"].as_u64().or(u["total_requests"].as_u64());
    let mut line = format!("requests {}", num(requests));
    if let (Some(r), Some(e)) = (requests, t["errors"].as_u64()) {
        line.push_str(&format!("  errors {e}"));
        if r > 0 {
            line.push_str(&format!(
                "  success {:.1}%",
                100.0 * (r.saturating_sub(e)) as f64 / r as f64
            ));
        }
    }
    line.push_str(&format!(
        "  tokens {} (in {} out {} cache {}/{})  cost ${}",
        num(t["tokens"].as_u64().or(u["total_tokens"].as_u64())),
        num(t["input_tokens"].as_u64()),
        num(t["output_tokens"].as_u64()),
        num(t["cache_read_tokens"].as_u64()),
        num(t["cache_write_tokens"].as_u64()),
        money(t["cost_usd"].as_f64().or(u["cost_estimate_usd"].as_f64()))
    ));
    out.push_str(&line);
    out.push('\n');
    let mut line = String::new();
    if let Some(ms) = u["average_response_time_ms"].as_f64() {
        line.push_str(&format!("avg {ms:.1} ms"));
    }
    if let Some(p) = latency(u) {
        line.push_str(&format!("  latency {p}"));
    }
    if let Some(h) = u["requests_last_hour"].as_u64() {
        line.push_str(&format!("  last hour {h} requests"));
    }
    for (field, what) in [
        ("active_accounts", "active"),
        ("rate_limited_accounts", "cooling"),
        ("disabled_accounts", "disabled"),
    ] {
        if let Some(n) = u[field].as_u64() {
            line.push_str(&format!("  {what} accounts {n}"));
        }
    }
    if !line.is_empty() {
        out.push_str(line.trim_start());
        out.push('\n');
    }
    if let Some(r) = rejections(&u["rejections"]) {
        out.push_str(&format!("rejections  {r}\n"));
    }
    if let Some(models) = u["top_models"].as_array().filter(|m| !m.is_empty()) {
        let list: Vec<String> = models
            .iter()
            .map(|m| {
                format!(
                    "{} {} req {} tok",
                    text(&m["model"]),
                    num(m["requests"].as_u64()),
                    num(m["tokens"].as_u64())
                )
            })
            .collect();
        out.push_str(&format!("models      {}\n", list.join(", ")));
    }

    if let Some(accounts) = u["accounts"].as_array().filter(|a| !a.is_empty()) {
        let rows = accounts
            .iter()
            .map(|a| {
                vec![
                    text(&a["name"]),
                    text(&a["provider"]),
                    state(a, now),
                    num(a["requests"].as_u64()),
                    num(a["tokens"].as_u64()),
                    headroom(&a["headroom"]),
                ]
            })
            .collect();
        out.push_str("\nACCOUNTS\n");
        out.push_str(&table(
            &[
                "name", "provider", "state", "requests", "tokens", "headroom",
            ],
            rows,
        ));
    }
    if let Some(consumers) = u["consumers"].as_array().filter(|c| !c.is_empty()) {
        let rows = consumers
            .iter()
            .map(|c| {
                let t = &c["totals"];
                let conc = &c["concurrency"];
                let in_use = conc["in_use"].as_u64().unwrap_or(0);
                vec![
                    text(&c["name"]),
                    num(t["requests"].as_u64()),
                    num(t["errors"].as_u64()),
                    num(t["tokens"].as_u64()),
                    format!("${}", money(t["cost_usd"].as_f64())),
                    match conc["limit"].as_u64() {
                        Some(l) => format!("{in_use}/{l}"),
                        None => in_use.to_string(),
                    },
                    windows(&c["windows"]),
                ]
            })
            .collect();
        out.push_str("\nCONSUMERS\n");
        out.push_str(&table(
            &[
                "name",
                "requests",
                "errors",
                "tokens",
                "cost",
                "in flight",
                "windows",
            ],
            rows,
        ));
    }
    if let Some(recent) = u["recent"].as_array().filter(|r| !r.is_empty()) {
        out.push_str("\nRECENT REQUESTS\n");
        out.push_str(&recent_table(recent));
    }
    // Names, reasons and object keys come from the server: no control character reaches
    // the terminal (an escape sequence could retitle, clear or rewrite it).
    out.retain(|c| c == '\n' || !c.is_control());
    out
}

/// `ok`, `cooling 42s`, `disabled (invalid_key)`.
fn state(a: &Value, now: Option<u64>) -> String {
    let s = text(&a["state"]);
    match (a["cooling_until"].as_u64(), now) {
        (Some(until), Some(now)) if until > now => {
            return format!("{s} {}", duration(until - now));
        }
        _ => {}
    }
    match a["disabled_reason"].as_str() {
        Some(r) => format!("{s} ({r})"),
        None => s,
    }
}

/// `tokens 1,000 input_tokens 500`: what the account learned of its provider's headroom.
fn headroom(h: &Value) -> String {
    let Some(map) = h.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = map
        .iter()
        .filter_map(|(k, v)| v.as_u64().map(|n| format!("{k} {}", group(n))))
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

/// `tokens/minute 1,234/200,000 (42s)`, one per window, `; `-separated.
fn windows(w: &Value) -> String {
    let Some(list) = w.as_array() else {
        return String::new();
    };
    let parts: Vec<String> = list
        .iter()
        .map(|w| {
            let amount = |v: &Value| match v {
                Value::Number(n) if n.is_f64() => format!("${}", money(n.as_f64())),
                other => num(other.as_u64()),
            };
            let mut s = format!(
                "{}/{} {}/{}",
                text(&w["kind"]),
                text(&w["per"]),
                amount(&w["used"]),
                amount(&w["limit"])
            );
            if let Some(r) = w["reset_s"].as_u64() {
                s.push_str(&format!(" ({})", duration(r)));
            }
            s
        })
        .collect();
    parts.join("; ")
}

/// `p50 120 ms p95 300 ms p99 410 ms` from a latency object (`latency_ms` or `latency`).
fn latency(u: &Value) -> Option<String> {
    let obj = ["latency_ms", "latency"]
        .iter()
        .find_map(|f| u[*f].as_object())?;
    let parts: Vec<String> = obj
        .iter()
        .filter_map(|(k, v)| {
            Some(format!(
                "{} {:.0} ms",
                k.trim_end_matches("_ms"),
                v.as_f64()?
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `tokens 3, auth 2` from `{"tokens": 3, …}` or `[{"reason": "tokens", "count": 3}, …]`.
fn rejections(r: &Value) -> Option<String> {
    let pairs: Vec<(String, u64)> = match r {
        Value::Object(m) => m
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| {
                let n = i["count"].as_u64().or(i["requests"].as_u64())?;
                Some((text(&i["reason"]), n))
            })
            .collect(),
        _ => return None,
    };
    if pairs.is_empty() {
        return Some("none".to_string());
    }
    let total = pairs.iter().fold(0u64, |t, (_, n)| t.saturating_add(*n));
    let list: Vec<String> = pairs.iter().map(|(k, n)| format!("{k} {n}")).collect();
    Some(format!("{total} ({})", list.join(", ")))
}

/// The recent requests, newest first as the API lists them: the known columns first, then any
/// other scalar field the rows have.
fn recent_table(rows: &[Value]) -> String {
    const KNOWN: [&str; 12] = [
        "time_s",
        "at_s",
        "consumer",
        "model",
        "account",
        "status",
        "decision",
        "input_tokens",
        "output_tokens",
        "tokens",
        "latency_ms",
        "cost_usd",
    ];
    let objects: Vec<&Map<String, Value>> = rows
        .iter()
        .take(RECENT_ROWS)
        .filter_map(Value::as_object)
        .collect();
    let mut columns: Vec<String> = KNOWN
        .iter()
        .filter(|k| objects.iter().any(|o| o.contains_key(**k)))
        .map(|k| k.to_string())
        .collect();
    for o in &objects {
        for (k, v) in o.iter() {
            if !v.is_object() && !v.is_array() && !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let header: Vec<&str> = columns
        .iter()
        .map(|c| match c.as_str() {
            "time_s" | "at_s" => "time",
            "input_tokens" => "in",
            "output_tokens" => "out",
            "latency_ms" => "ms",
            other => other,
        })
        .collect();
    let body = objects
        .iter()
        .map(|o| {
            columns
                .iter()
                .map(|c| match (c.as_str(), o.get(c)) {
                    ("time_s" | "at_s", Some(v)) => v
                        .as_u64()
                        .map(|s| utc(s).get(11..19).unwrap_or("").to_string())
                        .unwrap_or_else(|| text(v)),
                    (_, Some(v)) => text(v),
                    (_, None) => String::new(),
                })
                .collect()
        })
        .collect();
    table(&header, body)
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// A scalar as text (strings without quotes); `-` for null or absent.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.chars().filter(|c| !c.is_control()).collect(),
        Value::Number(n) => match n.as_u64() {
            Some(u) => group(u),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn num(v: Option<u64>) -> String {
    v.map_or("-".to_string(), group)
}

/// `1234567` → `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars with up to four decimals (`0.0123`), `-` when absent.
fn money(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.4}"),
        None => "-".to_string(),
    }
}

/// `42s`, `5m 3s`, `2h 5m`, `3d 4h`.
fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `2026-12-07 13:30:05 UTC` from unix seconds (the civil-from-days algorithm).
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
