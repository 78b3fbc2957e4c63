#![cfg(test)]
use super::*;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Records events as text; string pieces are joined so that traces do not depend on
/// where windows split.
#[derive(Default)]
struct Trace {
    events: Vec<String>,
    text: String,
    pieces: usize,
}

impl Sink for Trace {
    fn begin(&mut self, path: &Path, kind: Container, offset: usize) {
        self.events
            .push(format!("begin {path:?} {kind:?} @{offset}"));
    }
    fn end(&mut self, path: &Path, kind: Container, offset: usize) {
        self.events.push(format!("end {path:?} {kind:?} @{offset}"));
    }
    fn str_begin(&mut self, path: &Path, key: bool) {
        self.events.push(format!("str {path:?} key={key}"));
        self.text.clear();
    }
    fn str_piece(&mut self, piece: &str) {
        self.text.push_str(piece);
        self.pieces += 1;
    }
    fn str_end(&mut self, path: &Path, key: bool, len: usize) {
        assert_eq!(len, self.text.len());
        self.events
            .push(format!("str_end {path:?} key={key} {:?}", self.text));
    }
    fn scalar(&mut self, path: &Path, value: Scalar, offset: usize) {
        self.events
            .push(format!("scalar {path:?} {value:?} @{offset}"));
    }
}

/// Rebuilds a serde_json tree from the events (numbers other than u64 become a marker).
#[derive(Default)]
struct Tree {
    stack: Vec<(Value, Option<String>)>,
    key: Option<String>,
    text: String,
    root: Option<Value>,
}

impl Tree {
    fn put(&mut self, v: Value) {
        match self.stack.last_mut() {
            Some((Value::Array(a), _)) => a.push(v),
            Some((Value::Object(o), _)) => {
                o.insert(self.key.take().unwrap_or_default(), v);
            }
            _ => self.root = Some(v),
        }
    }
}

impl Sink for Tree {
    fn begin(&mut self, _: &Path, kind: Container, _: usize) {
        let v = match kind {
            Container::Object => Value::Object(Map::new()),
            Container::Array => Value::Array(vec![]),
        };
        let key = self.key.take();
        self.stack.push((v, key));
    }
    fn end(&mut self, _: &Path, _: Container, _: usize) {
        let (v, key) = self.stack.pop().unwrap();
        self.key = key;
        self.put(v);
    }
    fn str_begin(&mut self, _: &Path, _: bool) {
        self.text.clear();
    }
    fn str_piece(&mut self, piece: &str) {
        self.text.push_str(piece);
    }
    fn str_end(&mut self, _: &Path, key: bool, _: usize) {
        let s = std::mem::take(&mut self.text);
        if key {
            self.key = Some(s);
        } else {
            self.put(Value::String(s));
        }
    }
    fn scalar(&mut self, _: &Path, value: Scalar, _: usize) {
        self.put(match value {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Number(n) => n
                .as_u64()
                .map_or(Value::String("<num>".into()), Value::from),
        });
    }
}

fn normalise(v: Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map_or(Value::String("<num>".into()), Value::from),
        Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        v => v,
    }
}

fn scan_in<S: Sink + Default>(windows: &[&[u8]]) -> (Result<(), JsonError>, S) {
    let mut s = Scanner::new();
    let mut sink = S::default();
    for w in windows {
        if let Err(e) = s.feed(w, &mut sink) {
            return (Err(e), sink);
        }
    }
    let r = s.finish(&mut sink);
    (r, sink)
}

fn trace(input: &[u8]) -> (Result<(), JsonError>, Vec<String>) {
    let (r, t) = scan_in::<Trace>(&[input]);
    (r, t.events)
}

const VALID: &[&str] = &[
    r#"{}"#,
    r#"[]"#,
    r#"0"#,
    r#"-0.5e+10"#,
    r#"  "x"  "#,
    r#"true"#,
    r#"null"#,
    r#"{"a":1,"b":[true,false,null,{"c":"d"}],"e":{"f":[[],[1.5,-2]]}}"#,
    r#"{"model":"claude","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"héllo 中文 😀"}]}"#,
    r#"["\"\\\/\b\f\n\r\t","\u00e9\u4e2d\ud83d\ude00","a\u0000b"]"#,
    r#"{"k\u0065y":"v","":""}"#,
    "[1,\n 2 ,\t3\r]",
    r#"[18446744073709551615,18446744073709551616,1E5,0.0,-1]"#,
];

#[test]
fn valid_documents_match_serde_json() {
    for doc in VALID {
        let (r, tree) = scan_in::<Tree>(&[doc.as_bytes()]);
        assert_eq!(r, Ok(()), "{doc}");
        let want: Value = serde_json::from_str(doc).unwrap();
        assert_eq!(tree.root, Some(normalise(want)), "{doc}");
    }
}

#[test]
fn every_split_point_gives_the_same_events() {
    for doc in VALID.iter().chain(INVALID.iter().map(|(d, _)| d)) {
        let b = doc.as_bytes();
        let (want_r, want) = trace(b);
        for cut in 0..=b.len() {
            let (l, r) = b.split_at(cut);
            let (got_r, got) = scan_in::<Trace>(&[l, r]);
            assert_eq!(got_r, want_r, "{doc} cut at {cut}");
            assert_eq!(got.events, want, "{doc} cut at {cut}");
        }
        // One byte per window.
        let singles: Vec<&[u8]> = b.chunks(1).collect();
        let (got_r, got) = scan_in::<Trace>(&singles);
        assert_eq!(got_r, want_r, "{doc} byte by byte");
        assert_eq!(got.events, want, "{doc} byte by byte");
    }
}

const INVALID: &[(&str, &str)] = &[
    ("", "unexpected end of input at byte 0"),
    ("   ", "unexpected end of input at byte 3"),
    (r#"{"a":1"#, "unexpected end of input at byte 6"),
    (r#"{"a":"#, "unexpected end of input"),
    (r#"{"a":"x"#, "unexpected end of input"),
    (r#"[1,]"#, "expected a JSON value at byte 3"),
    (r#"{"a":1,}"#, "expected a string key at byte 7"),
    (r#"{"a" 1}"#, "expected ':' at byte 5"),
    (r#"{"a":1 "b":2}"#, "expected ',' or '}' at byte 7"),
    (r#"[1 2]"#, "expected ',' or ']' at byte 3"),
    (r#"{"a":1]"#, "expected ',' or '}' at byte 6"),
    (r#"[1}"#, "expected ',' or ']' at byte 2"),
    (r#"{} x"#, "unexpected data after the JSON value at byte 3"),
    (r#"{}{}"#, "unexpected data after the JSON value at byte 2"),
    (r#"1 2"#, "unexpected data after the JSON value at byte 2"),
    (r#"["\x"]"#, "invalid escape in string at byte 3"),
    (r#"["\u12g4"]"#, "invalid \\u escape at byte 6"),
    (
        r#"["\ud800"]"#,
        "unpaired surrogate in \\u escape at byte 8",
    ),
    (
        r#"["\udc00"]"#,
        "unpaired surrogate in \\u escape at byte 7",
    ),
    (
        r#"["\ud800\u0041"]"#,
        "unpaired surrogate in \\u escape at byte 13",
    ),
    (
        r#"["\ud800x"]"#,
        "unpaired surrogate in \\u escape at byte 8",
    ),
    ("[\"a\tb\"]", "control character in string at byte 3"),
    ("[\"a\nb\"]", "control character in string at byte 3"),
    (r#"[01]"#, "leading zero in number at byte 2"),
    (r#"[-01]"#, "leading zero in number at byte 3"),
    (r#"[-]"#, "invalid number at byte 2"),
    (r#"[1.]"#, "invalid number at byte 3"),
    (r#"[1.e5]"#, "invalid number at byte 3"),
    (r#"[1e]"#, "invalid number at byte 3"),
    (r#"[.5]"#, "expected a JSON value at byte 1"),
    (r#"[+1]"#, "expected a JSON value at byte 1"),
    (r#"[1x]"#, "expected ',' or ']' at byte 2"),
    (r#"[tru]"#, "invalid literal at byte 4"),
    (r#"[nul"#, "unexpected end of input"),
    (r#"[True]"#, "expected a JSON value at byte 1"),
    (r#"-"#, "unexpected end of input"),
    (r#"1."#, "unexpected end of input"),
    (r#"{'a':1}"#, "expected a string key at byte 1"),
    ("\u{feff}{}", "expected a JSON value at byte 0"),
];

#[test]
fn invalid_documents_are_rejected_with_offset_and_reason() {
    for (doc, want) in INVALID {
        let (r, _) = trace(doc.as_bytes());
        let e = r.expect_err(doc);
        assert!(
            e.to_string().starts_with(want),
            "{doc}: got {e}, want {want}"
        );
        assert!(
            serde_json::from_str::<Value>(doc).is_err(),
            "serde accepts {doc}"
        );
    }
}

#[test]
fn invalid_utf8_in_strings_is_rejected_at_any_split() {
    let cases: &[&[u8]] = &[
        b"[\"\xff\"]",
        b"[\"\xc3\"]",
        b"[\"\xc3\x28\"]",
        b"[\"\xe2\x82\"]",
        b"[\"\xe2\x82\\n\"]",
        b"[\"\xed\xa0\x80\"]",     // encoded surrogate
        b"[\"\xc0\xaf\"]",         // overlong
        b"[\"\xf4\x90\x80\x80\"]", // above U+10FFFF
        b"[\"ok\xf0\x9f\x98\"]",
    ];
    for doc in cases {
        for cut in 0..=doc.len() {
            let (l, r) = doc.split_at(cut);
            let (res, _) = scan_in::<Trace>(&[l, r]);
            let e = res.expect_err("invalid UTF-8 accepted");
            assert_eq!(e.reason, ERR_UTF8, "{doc:?} cut {cut}");
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let doc = "[".repeat(100_000);
    let (r, _) = trace(doc.as_bytes());
    assert_eq!(
        r,
        Err(JsonError {
            offset: MAX_DEPTH,
            reason: "nesting too deep"
        })
    );

    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    let (r, _) = trace(ok.as_bytes());
    assert_eq!(r, Ok(()));
}

#[test]
fn paths_beyond_the_tracked_depth_keep_their_first_steps() {
    #[derive(Default)]
    struct Deep(Vec<(usize, usize, bool, Option<Vec<u8>>)>);
    impl Sink for Deep {
        fn scalar(&mut self, p: &Path, _: Scalar, _: usize) {
            self.0.push((
                p.len(),
                p.depth(),
                p.is_too_deep(),
                p.key(0).map(<[u8]>::to_vec),
            ));
        }
    }
    let doc = format!("{{\"a\":{}1{}}}", "[".repeat(99), "]".repeat(99));
    let (r, d) = scan_in::<Deep>(&[doc.as_bytes()]);
    assert_eq!(r, Ok(()));
    assert_eq!(d.0, vec![(PATH_DEPTH, 100, true, Some(b"a".to_vec()))]);
}

#[test]
fn long_keys_are_reported_as_long() {
    #[derive(Default)]
    struct Keys(Vec<String>);
    impl Sink for Keys {
        fn scalar(&mut self, p: &Path, _: Scalar, _: usize) {
            self.0.push(format!("{:?}", p.step(0)));
        }
    }
    let long = "k".repeat(KEY_CAP + 1);
    let exact = "é".repeat(KEY_CAP / 2);
    let doc = format!("{{\"{long}\":1,\"{exact}\":2,\"x\":3}}");
    let b = doc.as_bytes();
    for cut in 0..=b.len() {
        let (l, r) = b.split_at(cut);
        let (res, k) = scan_in::<Keys>(&[l, r]);
        assert_eq!(res, Ok(()));
        assert_eq!(
            k.0,
            vec![
                "Some(LongKey)".to_string(),
                format!("Some(Key({:?}))", exact.as_bytes()),
                format!("Some(Key({:?}))", b"x"),
            ]
        );
    }
}

#[test]
fn long_strings_stream_in_few_pieces_with_their_length() {
    let body = "QUJD".repeat(2_500_000); // 10 MB
    let doc = format!("{{\"data\":\"{body}\"}}");
    let mut s = Scanner::new();
    let mut t = Trace::default();
    for w in doc.as_bytes().chunks(1 << 20) {
        s.feed(w, &mut t).unwrap();
    }
    s.finish(&mut t).unwrap();
    assert!(t.pieces <= 11, "{} pieces", t.pieces);
    assert_eq!(t.text.len(), body.len());
}

#[test]
fn numbers_carry_small_integer_values() {
    let cases = [
        ("7", Some(7)),
        ("0", Some(0)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("-7", None),
        ("7.0", None),
        ("7e0", None),
    ];
    for (doc, want) in cases {
        #[derive(Default)]
        struct N(Option<Number>);
        impl Sink for N {
            fn scalar(&mut self, _: &Path, v: Scalar, _: usize) {
                if let Scalar::Number(n) = v {
                    self.0 = Some(n);
                }
            }
        }
        let (r, n) = scan_in::<N>(&[doc.as_bytes()]);
        assert_eq!(r, Ok(()));
        assert_eq!(n.0.and_then(|n| n.as_u64()), want, "{doc}");
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn random_documents_round_trip_at_random_splits(v in arb_json(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6), ascii in any::<bool>()) {
        let text = if ascii { serde_json::to_string(&v).unwrap() } else { serde_json::to_string_pretty(&v).unwrap() };
        let b = text.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(b.len() + 1)).collect();
        points.sort_unstable();
        let mut windows = vec![];
        let mut last = 0;
        for p in points {
            windows.push(&b[last..p]);
            last = p;
        }
        windows.push(&b[last..]);
        let (r, tree) = scan_in::<Tree>(&windows);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(tree.root, Some(normalise(v)));
    }

    #[test]
    fn random_bytes_never_panic_and_agree_with_serde_on_validity(
        doc in prop::collection::vec(prop::sample::select(b"{}[]\",:01-9.etrufalsn \\u\xc3\xa9\xffd8".to_vec()), 0..24),
        cut in any::<prop::sample::Index>()
    ) {
        let c = cut.index(doc.len() + 1);
        let (l, r) = doc.split_at(c);
        let (res, _) = scan_in::<Trace>(&[l, r]);
        match serde_json::from_slice::<Value>(&doc) {
            Ok(_) => prop_assert_eq!(res, Ok(())),
            Err(e) if e.to_string().contains("out of range") => {}
            Err(e) => prop_assert!(res.is_err(), "serde: {}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(doc in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
        let c = cut.index(doc.len() + 1);
        let (l, r) = doc.split_at(c);
        let _ = scan_in::<Trace>(&[l, r]);
    }
}

/// `cargo test --release -- --ignored --nocapture bench` prints throughput.
#[test]
#[ignore]
fn bench_scanner_throughput() {
    struct Nop;
    impl Sink for Nop {}
    let words = "The quick brown fox jumps over the lazy dog, again and again. ";
    let mut msgs = vec![];
    while serde_json::to_vec(&msgs).unwrap().len() < 256 * 1024 {
        msgs.push(serde_json::json!({"role":"user","content":words.repeat(20)}));
    }
    let body = serde_json::to_vec(&msgs).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..500 {
        let mut s = Scanner::new();
        for w in body.chunks(65536) {
            s.feed(w, &mut Nop).unwrap();
        }
        s.finish(&mut Nop).unwrap();
    }
    let mbs = (body.len() * 500) as f64 / t.elapsed().as_secs_f64() / 1e6;
    println!("scanner alone, 256 KB chat: {mbs:.0} MB/s");
}

// ---- streamed arrays ----

/// Splits `body` cut into windows at `cuts`, with elements kept up to `cap` bytes.
fn elements(body: &[u8], cuts: &[usize], cap: usize) -> (Vec<String>, u64) {
    let mut split = Elements::new(cap);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        split.feed(&body[start..cut], |e| {
            out.push(String::from_utf8_lossy(e).into_owned())
        });
        start = cut;
    }
    (out, split.oversized())
}

#[test]
fn array_elements_come_out_whole_at_every_split_point() {
    // (body, the elements it holds)
    for (body, expected) in [
        (
            "[{\"a\":1},\r\n{\"b\":[2,{\"c\":\"]}\\\"\"}]}\r\n]",
            vec!["{\"a\":1}", "{\"b\":[2,{\"c\":\"]}\\\"\"}]}"],
        ),
        (
            "  {\"lone\": {\"x\": \"日本\"}} ",
            vec!["{\"lone\": {\"x\": \"日本\"}}"],
        ),
        ("[1, \"s\", [true], null, {}]", vec!["[true]", "{}"]),
        ("[]", vec![]),
        ("\"just a string\"", vec![]),
    ] {
        for cut in 0..=body.len() {
            let (got, oversized) = elements(body.as_bytes(), &[cut], usize::MAX);
            assert_eq!(got, expected, "{body} cut at {cut}");
            assert_eq!(oversized, 0);
        }
    }
}

#[test]
fn invalid_json_ends_the_elements_where_it_starts() {
    // (body, the elements before the error)
    for (body, expected) in [
        ("[{\"a\":}]]]]{{{", vec![]),
        ("[{\"a\":1}, {\"b\" 2}, {\"c\":3}]", vec!["{\"a\":1}"]),
        ("[{\"a\":1}] [{\"b\":2}]", vec!["{\"a\":1}"]),
        ("[{\"a\":1}, {\"b\":\"\u{1}\"}]", vec!["{\"a\":1}"]),
        ("<html>[{\"a\":1}]", vec![]),
    ] {
        for cut in 0..=body.len() {
            let (got, _) = elements(body.as_bytes(), &[cut], usize::MAX);
            assert_eq!(got, expected, "{body} cut at {cut}");
        }
    }
}

#[test]
fn an_element_longer_than_the_cap_across_windows_is_counted_and_skipped() {
    let big = format!("{{\"t\":\"{}\"}}", "x".repeat(100));
    let body = format!("[{big},{{\"after\":1}}]");
    // (where the windows split, the cap, elements seen, oversized)
    for (cuts, cap, seen, oversized) in [
        // Within one window an element is never cut off, whatever its size.
        (vec![], 10, vec![big.as_str(), "{\"after\":1}"], 0),
        // Spanning windows, it is kept up to the cap...
        (vec![50], 200, vec![big.as_str(), "{\"after\":1}"], 0),
        (vec![50], big.len(), vec![big.as_str(), "{\"after\":1}"], 0),
        // ...and skipped beyond it, however many windows it spans.
        (vec![50], big.len() - 1, vec!["{\"after\":1}"], 1),
        (vec![10, 20, 30, 40, 50, 60], 40, vec!["{\"after\":1}"], 1),
    ] {
        let (got, n) = elements(body.as_bytes(), &cuts, cap);
        assert_eq!(got, seen, "{cuts:?} cap {cap}");
        assert_eq!(n, oversized, "{cuts:?} cap {cap}");
    }
}

// ---- fragments ----

#[test]
fn a_key_in_a_fragment_leads_to_its_value() {
    // (fragment, key, from the end, the value's start)
    for (hay, key, from_end, value) in [
        (
            &br#"ed":1},"usage" : {"a":1}}"#[..],
            &br#""usage""#[..],
            false,
            Some(&br#"{"a":1}}"#[..]),
        ),
        (
            br#"{"model":"a","x":{"model":"b"}}"#,
            br#""model""#,
            false,
            Some(br#""a","x":{"model":"b"}}"#),
        ),
        (
            br#"{"model":"a","x":{"model":"b"}}"#,
            br#""model""#,
            true,
            Some(br#""b"}}"#),
        ),
        (br#"{"usage":"#, br#""usage""#, false, None),
        (br#"{"usage" 5}"#, br#""usage""#, false, None),
        (br#"["usage", 5]"#, br#""usage""#, false, None),
        (br#"{"usage":5}"#, br#""model""#, true, None),
    ] {
        assert_eq!(
            find_value(hay, key, from_end),
            value,
            "{}",
            String::from_utf8_lossy(hay)
        );
    }
}
