//! `usage::ResponseMeter` on every endpoint with random content types, encodings (the body
//! really compressed, or raw bytes claimed as gzip), strip mode and chunking: never a panic,
//! the client gets the bytes unchanged unless strip mode is on (then never more bytes), and
//! the metering does not depend on the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::usage::{Metering, ResponseMeter};
use tollgate_fuzz::{endpoint, gzip, windows, Input};

const CONTENT_TYPES: [&str; 6] = [
    "text/event-stream",
    "application/json",
    "TEXT/EVENT-STREAM; charset=utf-8",
    "",
    "text/plain",
    "  text/event-stream",
];

fn run(
    ep: tollgate_fuzz::provider::Endpoint,
    ct: &str,
    enc: &str,
    strip: bool,
    body: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Metering, bool) {
    let mut m = ResponseMeter::new(ep, ct, enc, strip);
    let ws = windows(body, cuts);
    let n = ws.len();
    let mut client = Vec::new();
    let mut rewrote = false;
    for (i, w) in ws.into_iter().enumerate() {
        let out = if i + 1 == n {
            m.feed_last(w)
        } else {
            m.feed(w)
        };
        match out {
            Some(v) => {
                rewrote = true;
                client.extend_from_slice(&v);
            }
            None => client.extend_from_slice(w),
        }
    }
    let a = m.finish();
    let b = m.finish();
    assert_eq!(a, b, "finish is not idempotent");
    (client, a, rewrote)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Input::new(data);
    let ep = endpoint(u.u8());
    let ct = CONTENT_TYPES[u.u8() as usize % CONTENT_TYPES.len()];
    let mode = u.u8() % 6;
    let strip = u.bool();
    let raw: Vec<u16> = (0..u.u8() % 8).map(|_| u.u16()).collect();
    let plain = u.rest();
    let (enc, body) = match mode {
        0 => ("", plain.to_vec()),
        1 => ("gzip", gzip(plain)),
        2 => (
            "deflate",
            miniz_oxide::deflate::compress_to_vec_zlib(plain, 6),
        ),
        3 => ("deflate", miniz_oxide::deflate::compress_to_vec(plain, 6)),
        4 => ("gzip", plain.to_vec()),
        _ => ("br", plain.to_vec()),
    };
    let mut cuts: Vec<usize> = raw.iter().map(|&c| c as usize % (body.len() + 1)).collect();
    cuts.sort_unstable();

    let (c1, m1, r1) = run(ep, ct, enc, strip, &body, &[]);
    let (c2, m2, r2) = run(ep, ct, enc, strip, &body, &cuts);
    if !strip {
        assert!(!r1 && !r2, "a meter without strip mode rewrote the body");
    }
    assert!(c1.len() <= body.len() && c2.len() <= body.len());
    assert_eq!(c1, c2, "chunks {cuts:?} changed what the client receives");
    if m1.oversized_events == 0 && m2.oversized_events == 0 {
        assert_eq!(m1, m2, "chunks {cuts:?} changed the metering");
    }
    if mode == 5 {
        assert!(m1.unsupported_encoding);
    }
});
