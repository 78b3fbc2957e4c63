//! Content-encodings the mock answers with, as a CDN in front of a real provider would: gzip,
//! deflate (zlib, and the raw variant some servers wrongly send), br and zstd. Streamed
//! bodies are compressed as they are produced, flushed per event so every event can be
//! decoded as soon as it arrives.

use std::io::Write;

use bytes::Bytes;
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// `content-encoding: deflate` as RFC 9110 means it: a zlib stream.
    Deflate,
    /// `content-encoding: deflate` with a raw RFC 1951 stream (no zlib header).
    DeflateRaw,
    Br,
    Zstd,
}

/// What a script asks for: one encoding, or the best one the request's `accept-encoding` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Fixed(Encoding),
    Negotiate,
}

/// A CDN's preference order for `negotiate`.
const PREFERENCE: [Encoding; 4] = [
    Encoding::Br,
    Encoding::Zstd,
    Encoding::Gzip,
    Encoding::Deflate,
];

impl Encoding {
    pub fn parse(s: &str) -> Option<Choice> {
        let e = match s {
            "identity" => Encoding::Identity,
            "gzip" => Encoding::Gzip,
            "deflate" => Encoding::Deflate,
            "deflate_raw" => Encoding::DeflateRaw,
            "br" => Encoding::Br,
            "zstd" => Encoding::Zstd,
            "negotiate" => return Some(Choice::Negotiate),
            _ => return None,
        };
        Some(Choice::Fixed(e))
    }

    /// The `content-encoding` token; `None` for identity (no header).
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Deflate | Encoding::DeflateRaw => Some("deflate"),
            Encoding::Br => Some("br"),
            Encoding::Zstd => Some("zstd"),
        }
    }
}

impl Choice {
    pub fn resolve(self, accept_encoding: Option<&str>) -> Encoding {
        match self {
            Choice::Fixed(e) => e,
            Choice::Negotiate => negotiate(accept_encoding),
        }
    }
}

/// The first of br, zstd, gzip, deflate that `accept-encoding` allows (an explicit token with
/// q > 0, or `*` with q > 0 and no q=0 for that token); identity when none or no header.
pub fn negotiate(accept_encoding: Option<&str>) -> Encoding {
    let Some(header) = accept_encoding else {
        return Encoding::Identity;
    };
    // (token, q > 0) for every listed coding.
    let listed: Vec<(String, bool)> = header
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let token = parts.next()?.trim().to_ascii_lowercase();
            if token.is_empty() {
                return None;
            }
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("q")).then(|| v.trim().parse::<f32>().ok())?
                })
                .next()
                .unwrap_or(1.0);
            Some((token, q > 0.0))
        })
        .collect();
    let star = listed.iter().find(|(t, _)| t == "*").map(|(_, ok)| *ok);
    PREFERENCE
        .into_iter()
        .find(|e| {
            let name = e.header().unwrap_or("identity");
            match listed.iter().find(|(t, _)| t == name) {
                Some((_, ok)) => *ok,
                None => star == Some(true),
            }
        })
        .unwrap_or(Encoding::Identity)
}

/// A streaming compressor writing into its own buffer; each push returns what it produced.
pub enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Zlib(ZlibEncoder<Vec<u8>>),
    Raw(DeflateEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Fast levels: the mock must never be the bottleneck, even for a gigabyte.
const BROTLI_QUALITY: u32 = 3;
const BROTLI_LGWIN: u32 = 22;
const ZSTD_LEVEL: i32 = 3;

impl Encoder {
    pub fn new(e: Encoding) -> Option<Encoder> {
        let fast = Compression::fast();
        Some(match e {
            Encoding::Identity => return None,
            Encoding::Gzip => Encoder::Gzip(GzEncoder::new(Vec::new(), fast)),
            Encoding::Deflate => Encoder::Zlib(ZlibEncoder::new(Vec::new(), fast)),
            Encoding::DeflateRaw => Encoder::Raw(DeflateEncoder::new(Vec::new(), fast)),
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                64 << 10,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
            Encoding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).ok()?)
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(w) => w,
            Encoder::Zlib(w) => w,
            Encoder::Raw(w) => w,
            Encoder::Br(w) => w.as_mut(),
            Encoder::Zstd(w) => w,
        }
    }

    fn out(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(w) => w.get_mut(),
            Encoder::Zlib(w) => w.get_mut(),
            Encoder::Raw(w) => w.get_mut(),
            Encoder::Br(w) => w.get_mut(),
            Encoder::Zstd(w) => w.get_mut(),
        }
    }

    /// Compresses `data`; with `flush`, everything so far is decodable from the output.
    /// Writing into a Vec cannot fail, so errors are ignored.
    pub fn push(&mut self, data: &[u8], flush: bool) -> Bytes {
        let w = self.writer();
        let _ = w.write_all(data);
        if flush {
            let _ = w.flush();
        }
        Bytes::from(std::mem::take(self.out()))
    }

    /// The rest of the stream, trailer included.
    pub fn finish(self) -> Bytes {
        let out = match self {
            Encoder::Gzip(w) => w.finish().unwrap_or_default(),
            Encoder::Zlib(w) => w.finish().unwrap_or_default(),
            Encoder::Raw(w) => w.finish().unwrap_or_default(),
            Encoder::Br(w) => w.into_inner(),
            Encoder::Zstd(w) => w.finish().unwrap_or_default(),
        };
        Bytes::from(out)
    }
}

/// A whole body in encoding `e` (unchanged for identity).
pub fn encode_all(e: Encoding, data: Bytes) -> Bytes {
    match Encoder::new(e) {
        None => data,
        Some(mut enc) => {
            let head = enc.push(&data, false);
            let tail = enc.finish();
            let mut all = Vec::with_capacity(head.len() + tail.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&tail);
            Bytes::from(all)
        }
    }
}

/// Decodes a body (tests only).
#[cfg(test)]
pub fn decode(e: Encoding, data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    match e {
        Encoding::Identity => out.extend_from_slice(data),
        Encoding::Gzip => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        Encoding::Deflate => {
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        Encoding::DeflateRaw => {
            flate2::read::DeflateDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        Encoding::Br => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Encoding::Zstd => out = zstd::stream::decode_all(data).unwrap(),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encoding; 6] = [
        Encoding::Identity,
        Encoding::Gzip,
        Encoding::Deflate,
        Encoding::DeflateRaw,
        Encoding::Br,
        Encoding::Zstd,
    ];

    #[test]
    fn every_encoding_round_trips_a_whole_body() {
        let plain: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{i},").into_bytes())
            .collect();
        for e in ALL {
            let enc = encode_all(e, Bytes::from(plain.clone()));
            if e != Encoding::Identity {
                assert!(enc.len() < plain.len(), "{e:?} should compress");
                assert_ne!(&enc[..], &plain[..]);
            }
            assert_eq!(decode(e, &enc), plain, "{e:?}");
        }
    }

    #[test]
    fn each_flushed_push_is_decodable_on_its_own_prefix() {
        // A client decoding as bytes arrive must see every event as soon as it is pushed.
        for e in ALL.into_iter().filter(|e| *e != Encoding::Identity) {
            let mut enc = Encoder::new(e).unwrap();
            let mut wire = Vec::new();
            let mut plain = Vec::new();
            for i in 0..20 {
                let ev = format!("data: {{\"i\":{i}}}\n\n");
                plain.extend_from_slice(ev.as_bytes());
                let out = enc.push(ev.as_bytes(), true);
                assert!(!out.is_empty(), "{e:?}: flush produced nothing");
                wire.extend_from_slice(&out);
                assert_eq!(partial_decode(e, &wire), plain, "{e:?} after event {i}");
            }
            wire.extend_from_slice(&enc.finish());
            assert_eq!(decode(e, &wire), plain, "{e:?} whole");
        }
    }

    /// Decodes a stream that has no end yet, as far as it goes.
    fn partial_decode(e: Encoding, data: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut r: Box<dyn std::io::Read + '_> = match e {
            Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
            Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(data)),
            Encoding::DeflateRaw => Box::new(flate2::read::DeflateDecoder::new(data)),
            Encoding::Br => Box::new(brotli::Decompressor::new(data, 4096)),
            Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(data).unwrap()),
            Encoding::Identity => Box::new(data),
        };
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn negotiate_picks_the_first_allowed_of_br_zstd_gzip_deflate() {
        let cases: &[(Option<&str>, Encoding)] = &[
            (None, Encoding::Identity),
            (Some(""), Encoding::Identity),
            (Some("identity"), Encoding::Identity),
            (Some("gzip, deflate"), Encoding::Gzip),
            (Some("gzip, deflate, br, zstd"), Encoding::Br),
            (Some("deflate"), Encoding::Deflate),
            (Some("GZIP;q=0.5, Zstd"), Encoding::Zstd),
            (Some("br;q=0, gzip"), Encoding::Gzip),
            (
                Some("br;q=0.0, zstd; q=0, gzip;q=0, deflate;q=0.1"),
                Encoding::Deflate,
            ),
            (Some("*"), Encoding::Br),
            (Some("*, br;q=0"), Encoding::Zstd),
            (Some("*;q=0"), Encoding::Identity),
            (Some("x-gzip, compress"), Encoding::Identity),
        ];
        for (header, want) in cases {
            assert_eq!(negotiate(*header), *want, "{header:?}");
        }
    }

    #[test]
    fn parses_encoding_names() {
        assert_eq!(Encoding::parse("br"), Some(Choice::Fixed(Encoding::Br)));
        assert_eq!(Encoding::parse("negotiate"), Some(Choice::Negotiate));
        assert_eq!(Encoding::parse("lzma"), None);
        assert_eq!(Encoding::DeflateRaw.header(), Some("deflate"));
        assert_eq!(Encoding::Identity.header(), None);
    }
}
