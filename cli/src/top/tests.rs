use super::*;
use std::net::TcpListener;

#[test]
fn the_url_gives_host_port_and_usage_path_and_its_password_is_the_key() {
    let cases = [
        (
            "http://127.0.0.1:10000",
            "127.0.0.1",
            10000,
            "/tollgate/usage",
            None,
        ),
        (
            "http://127.0.0.1:10000/",
            "127.0.0.1",
            10000,
            "/tollgate/usage",
            None,
        ),
        (
            "127.0.0.1:8080/admin/",
            "127.0.0.1",
            8080,
            "/admin/usage",
            None,
        ),
        ("http://h/tollgate/usage", "h", 80, "/tollgate/usage", None),
        (
            "http://admin:s3cret@h:1/tg",
            "h",
            1,
            "/tg/usage",
            Some("s3cret"),
        ),
        ("http://[::1]:9/tollgate", "::1", 9, "/tollgate/usage", None),
    ];
    for (url, host, port, path, key) in cases {
        let t = Target::parse(url).unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.path.as_str(),
                t.url_key.as_deref()
            ),
            (host, port, path, key),
            "{url}"
        );
        assert!(!t.display().contains("s3cret") && !t.display().contains("admin:"));
    }
    assert_eq!(
        Target::parse("http://admin:s3cret@h:1/tg")
            .unwrap()
            .display(),
        "http://h:1/tg/usage"
    );
    for bad in [
        "https://h/",
        "ftp://h/",
        "http://h:port/",
        "http:///x",
        "http://h/tg?key=1",
    ] {
        let e = Target::parse(bad).unwrap_err();
        assert!(!e.contains("key=1"), "{e}");
    }
}

/// A one-shot HTTP server on the loopback: answers `response` to the first request and hands
/// back what the request was.
fn serve(response: &'static [u8]) -> (Target, std::thread::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(response).unwrap();
        String::from_utf8(req).unwrap()
    });
    let t = Target::parse(&format!("http://127.0.0.1:{port}/tollgate")).unwrap();
    (t, h)
}

#[test]
fn fetch_sends_the_key_as_x_api_key_and_reads_a_chunked_answer() {
    let (t, h) = serve(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
          6\r\n{\"now_\r\n9;ext=1\r\ns\": 1234}\r\n0\r\n\r\n",
    );
    let v = fetch(&t, Some("tg-FAKE-admin")).unwrap();
    assert_eq!(v["now_s"], 1234);
    let req = h.join().unwrap();
    assert!(req.starts_with("GET /tollgate/usage HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nx-api-key: tg-FAKE-admin\r\n"), "{req}");
}

#[test]
fn fetch_errors_never_show_the_key() {
    let key = "tg-FAKE-admin-key-777";
    let (t, h) = serve(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
    let e = fetch(&t, Some(key)).unwrap_err();
    h.join().unwrap();
    assert!(
        e.ends_with(": 401: the admin key was refused (--key or TOLLGATE_ADMIN_KEY)"),
        "{e}"
    );
    // A proxy in the way that echoes the request: masked.
    let (t, h) = serve(
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 35\r\n\r\nbad upstream: tg-FAKE-admin-key-777",
    );
    let e = fetch(&t, Some(key)).unwrap_err();
    h.join().unwrap();
    assert!(e.contains("HTTP 502: bad upstream: *****"), "{e}");
    assert!(!e.contains(key), "{e}");
    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Target::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let e = fetch(&t, Some(key)).unwrap_err();
    assert!(!e.contains(key) && e.starts_with(&t.display()), "{e}");
}

fn usage_document() -> Value {
    serde_json::json!({
        "now_s": 1_796_650_200u64, "since_s": 1_796_649_900u64,
        "total_requests": 12, "total_tokens": 5432, "average_response_time_ms": 152.34,
        "cost_estimate_usd": 0.0123, "active_accounts": 2, "rate_limited_accounts": 1,
        "disabled_accounts": 0, "requests_last_hour": 12,
        "top_models": [{"model": "claude-haiku-4-5", "requests": 9, "tokens": 4000}],
        "totals": {"requests": 12, "errors": 3, "input_tokens": 5000, "output_tokens": 432,
                   "cache_read_tokens": 0, "cache_write_tokens": 0, "tokens": 5432, "cost_usd": 0.0123},
        "consumers": [{"name": "team-a", "windows": [
            {"kind": "tokens", "limit": 200000, "per": "minute", "window": "sliding",
             "used": 5432, "remaining": 194568, "reset_s": 42},
            {"kind": "cost_usd", "limit": 25.0, "per": "day", "window": "sliding",
             "used": 0.0123, "remaining": 24.9877, "reset_s": 3600}],
            "concurrency": {"in_use": 1, "limit": 16},
            "totals": {"requests": 12, "errors": 3, "tokens": 5432, "cost_usd": 0.0123}}],
        "accounts": [
            {"name": "anthropic-1", "provider": "anthropic", "state": "cooling",
             "cooling_until": 1_796_650_230u64, "headroom": {"tokens": 1000, "requests": null},
             "requests": 9, "tokens": 4000},
            {"name": "openai-1", "provider": "openai", "state": "disabled",
             "disabled_reason": "invalid_key", "headroom": {}, "requests": 3, "tokens": 1432}]
    })
}

#[test]
fn a_frame_shows_totals_accounts_and_consumers() {
    let f = render(&usage_document(), "http://h:1/tollgate/usage");
    let lines: Vec<&str> = f.lines().collect();
    assert_eq!(
        lines[0],
        "tollgate top  http://h:1/tollgate/usage  2026-12-07 13:30:00 UTC  counting for 5m 0s"
    );
    assert_eq!(
        lines[2],
        "requests 12  errors 3  success 75.0%  tokens 5,432 (in 5,000 out 432 cache 0/0)  cost $0.0123"
    );
    assert_eq!(
        lines[3],
        "avg 152.3 ms  last hour 12 requests  active accounts 2  cooling accounts 1  disabled accounts 0"
    );
    assert_eq!(lines[4], "models      claude-haiku-4-5 9 req 4,000 tok");
    let accounts = f.split("\nACCOUNTS\n").nth(1).unwrap();
    let rows: Vec<&str> = accounts.lines().take(3).collect();
    assert_eq!(
        rows,
        [
            "name         provider   state                   requests  tokens  headroom",
            "anthropic-1  anthropic  cooling 30s             9         4,000   tokens 1,000",
            "openai-1     openai     disabled (invalid_key)  3         1,432   -",
        ]
    );
    let consumers = f.split("\nCONSUMERS\n").nth(1).unwrap();
    let row = consumers.lines().nth(1).unwrap();
    assert_eq!(
        row,
        "team-a  12        3       5,432   $0.0123  1/16       tokens/minute 5,432/200,000 (42s); cost_usd/day $0.0123/$25.0000 (1h 0m)"
    );
    assert!(!f.contains("RECENT"), "no recent requests in this document");
}

#[test]
fn a_frame_shows_rejections_latency_and_recent_requests_when_the_api_has_them() {
    let mut u = usage_document();
    u["rejections"] = serde_json::json!({"tokens": 3, "auth": 2});
    u["latency_ms"] = serde_json::json!({"p50": 120.4, "p95": 300, "p99": 410});
    u["recent"] = serde_json::json!([
        {"time_s": 1_796_650_199u64, "consumer": "team-a", "model": "claude-haiku-4-5",
         "account": "anthropic-1", "status": 200, "decision": "admitted", "input_tokens": 31,
         "output_tokens": 77, "latency_ms": 151, "extra": "x\u{1b}[2Jy"},
        {"time_s": 1_796_650_100u64, "consumer": "anonymous", "model": null, "status": 429,
         "decision": "tokens"}]);
    let f = render(&u, "u");
    assert!(
        f.contains("rejections  5 (auth 2, tokens 3)\n")
            || f.contains("rejections  5 (tokens 3, auth 2)\n"),
        "{f}"
    );
    assert!(
        f.contains("latency p50 120 ms p95 300 ms p99 410 ms"),
        "{f}"
    );
    let recent = f.split("\nRECENT REQUESTS\n").nth(1).unwrap();
    let rows: Vec<&str> = recent.lines().collect();
    assert_eq!(
        rows,
        [
            "time      consumer   model             account      status  decision  in  out  ms   extra",
            "13:29:59  team-a     claude-haiku-4-5  anthropic-1  200     admitted  31  77   151  x[2Jy",
            "13:28:20  anonymous  -                              429     tokens",
        ]
    );
    // The other shape of rejections: a list of {reason, count}.
    u["rejections"] = serde_json::json!([{"reason": "auth", "count": 4}]);
    assert!(render(&u, "u").contains("rejections  4 (auth 4)\n"));
}

#[test]
fn a_frame_of_an_empty_or_odd_document_is_drawn_without_failing() {
    for doc in [
        serde_json::json!({}),
        serde_json::json!([]),
        serde_json::json!({"accounts": "x", "consumers": [1, null], "recent": [{}], "totals": 5}),
    ] {
        let f = render(&doc, "u");
        assert!(f.starts_with("tollgate top  u\n"), "{f}");
    }
}

#[test]
fn utc_dates_and_durations_read_as_people_write_them() {
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_796_650_200), "2026-12-07 13:30:00 UTC");
    assert_eq!(
        [duration(5), duration(65), duration(3_700), duration(90_000)],
        ["5s", "1m 5s", "1h 1m", "1d 1h"]
    );
    assert_eq!(
        [group(0), group(999), group(1000), group(1_234_567)],
        ["0", "999", "1,000", "1,234,567"]
    );
}

#[test]
fn a_server_that_drips_its_answer_is_cut_off_at_the_deadline() {
    /// One byte per read, forever.
    struct Drip(usize);
    impl Read for Drip {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
            self.0 += 1;
            buf[0] = *head.get(self.0 - 1).unwrap_or(&b' ');
            std::thread::sleep(Duration::from_millis(1));
            Ok(1)
        }
    }
    let start = Instant::now();
    let e = read_response_until(Drip(0), Instant::now() + Duration::from_millis(200)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().starts_with("no whole answer within"), "{e}");
    // A body past the cap is refused, not read.
    let big = b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n";
    let e = read_response(&big[..]).unwrap_err();
    assert_eq!(e.to_string(), "the response is too large");
}

/// Every control character a hostile usage API could send (ESC starts a terminal escape
/// sequence, BEL ends an OSC one, U+009B is the one-character CSI), in every string and
/// every object key the frame shows.
#[test]
fn a_hostile_usage_api_cannot_put_terminal_escapes_into_the_frame() {
    let evil = "x\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31my";
    let mut u = usage_document();
    u["accounts"][1]["disabled_reason"] = Value::from(evil);
    u["accounts"][0]["headroom"] = serde_json::json!({ evil: 5 });
    u["latency_ms"] = serde_json::json!({ evil: 1 });
    u["rejections"] = serde_json::json!({ evil: 2 });
    u["top_models"][0]["model"] = Value::from(evil);
    u["recent"] = serde_json::json!([{ "consumer": evil, evil: 1 }]);
    let f = render(&u, "u");
    let bad: Vec<char> = f.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(bad.is_empty(), "{bad:?} in {f}");
    assert!(f.contains("x]0;owned[2J31my"), "{f}");
}

#[test]
fn a_hostile_usage_api_cannot_overflow_the_frame_sums() {
    let mut u = usage_document();
    u["rejections"] = serde_json::json!({"auth": u64::MAX, "tokens": 1});
    u["totals"]["requests"] = Value::from(u64::MAX);
    u["totals"]["errors"] = Value::from(u64::MAX);
    let f = render(&u, "u");
    assert!(f.contains("rejections  "), "{f}");
}

#[test]
fn an_error_answer_shows_neither_terminal_escapes_nor_part_of_the_key() {
    let key = "tg-FAKE-admin-key-777";
    // An error body with escapes: shown without them.
    let (t, h) = serve(b"HTTP/1.1 500 Oops\r\ncontent-length: 12\r\n\r\nx\x1b[2J\x1b]0;t\x07y");
    let e = fetch(&t, Some(key)).unwrap_err();
    h.join().unwrap();
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert!(e.ends_with("HTTP 500: x[2J]0;ty"), "{e:?}");
    // The key echoed where the 200-byte excerpt ends: not even its first characters shown.
    const ECHO: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 211\r\n\r\n\
        aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
        aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
        tg-FAKE-admin-key-777";
    let (t, h) = serve(ECHO);
    let e = fetch(&t, Some(key)).unwrap_err();
    h.join().unwrap();
    assert!(!e.contains("tg-FAKE"), "{e}");
}

#[test]
fn a_usage_document_that_echoes_the_key_is_shown_without_it() {
    let key = "tg-FAKE-admin-key-777";
    let (t, h) = serve(
        b"HTTP/1.1 200 OK\r\ncontent-length: 47\r\n\r\n{\"accounts\":[{\"name\":\"tg-FAKE-admin-key-777\"}]}",
    );
    let v = fetch(&t, Some(key)).unwrap();
    h.join().unwrap();
    let f = render(&v, "u");
    assert!(!f.contains(key), "{f}");
}

#[test]
fn a_chunk_size_near_the_largest_number_is_refused_not_a_crash() {
    let (t, h) = serve(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          1\r\n{\r\nffffffffffffffff\r\n}\r\n0\r\n\r\n",
    );
    let e = fetch(&t, None).unwrap_err();
    h.join().unwrap();
    assert!(e.ends_with("the response is too large"), "{e}");
}
