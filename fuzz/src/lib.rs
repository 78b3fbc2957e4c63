//! tollgate's pure core, compiled natively for libFuzzer.
//!
//! The modules come from `tollgate-core` (filter/core), the same crate the wasm filter links.

pub use tollgate_core::{
    accounts, api, config, estimate, json, limits, pricing, provider, quota, ratelimit, request,
    simd, sse, store, usage,
};

use provider::Endpoint;

/// Reads fuzzer bytes as structured choices; runs dry into zeros / empty.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Up to 7 cut points, each a position in a body of `len` bytes, sorted.
    pub fn cuts(&mut self, len: usize) -> Vec<usize> {
        let n = self.u8() % 8;
        let mut v: Vec<usize> = (0..n)
            .map(|_| {
                let c = self.u16() as usize;
                if len == 0 {
                    0
                } else {
                    c % (len + 1)
                }
            })
            .collect();
        v.sort_unstable();
        v
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// `body` cut at `cuts` (sorted positions); empty windows included.
pub fn windows<'b>(body: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, body.len());
        out.push(&body[at..c]);
        at = c;
    }
    out.push(&body[at..]);
    out
}

/// Every metered endpoint.
pub fn endpoint(choice: u8) -> Endpoint {
    let all = Endpoint::ALL;
    all[usize::from(choice) % all.len()]
}

/// The model a request's path names: Gemini's endpoints have one.
pub fn path_model(endpoint: Endpoint) -> Option<String> {
    (endpoint.api() == api::Api::Gemini).then(|| "gemini-2.0-flash".to_string())
}

/// gzip framing around raw deflate (the decoder checks the header; a CRC for completeness).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(body, 6));
    out.extend(crc32(body).to_le_bytes());
    out.extend((body.len() as u32).to_le_bytes());
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
