//! Decoding to the end (SPEC "Decoding runs to the end in bounded memory"): usage at the end
//! of huge gzip bodies and streams, content-encoding decisions, undecodable bodies, the
//! estimates charged for what was not reported, and property tests that nothing panics.
#![cfg(test)]

use super::*;

/// A tiny xorshift: chunk sizes that differ from run to run of the loop, the same in
/// every test run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Streams `head`, `mib` MiB of whole `unit`s, then `tail` as one gzip member, made
/// piece by piece (never whole), into `meter` in chunks of random size. Returns the
/// compressed length.
fn stream_gzip(
    meter: &mut ResponseMeter,
    head: &[u8],
    unit: &[u8],
    mib: usize,
    tail: &[u8],
) -> u64 {
    use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
    use miniz_oxide::deflate::stream::deflate;
    let mut comp = Box::new(CompressorOxide::new(create_comp_flags_from_zip_params(
        6, -15, 0,
    )));
    let units = (1 << 20) / unit.len();
    let mib_of_unit: Vec<u8> = unit
        .iter()
        .copied()
        .cycle()
        .take(units * unit.len())
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut pending = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut sent = 0u64;
    let mut out = vec![0u8; 64 << 10];
    let mut flush = |pending: &mut Vec<u8>, meter: &mut ResponseMeter, last: bool| {
        let mut at = 0;
        while pending.len() - at > 4096 || (last && at < pending.len()) {
            let n = (1 + rng.below(4096) as usize).min(pending.len() - at);
            let end = at + n;
            if last && end == pending.len() {
                meter.feed_last(&pending[at..end]);
            } else {
                meter.feed(&pending[at..end]);
            }
            at = end;
        }
        sent += at as u64;
        pending.drain(..at);
    };
    let pieces = std::iter::once(head)
        .chain(std::iter::repeat_n(&mib_of_unit[..], mib))
        .chain(std::iter::once(tail));
    let count = mib + 2;
    for (i, mut input) in pieces.enumerate() {
        let finish = if i + 1 == count {
            MZFlush::Finish
        } else {
            MZFlush::None
        };
        loop {
            let r = deflate(&mut comp, input, &mut out, finish);
            input = &input[r.bytes_consumed..];
            pending.extend_from_slice(&out[..r.bytes_written]);
            let done = r.status == Ok(MZStatus::StreamEnd)
                || (input.is_empty() && finish == MZFlush::None && r.bytes_written < out.len());
            if done || r.status.is_err() {
                break;
            }
        }
        flush(&mut pending, meter, false);
    }
    pending.extend_from_slice(&[0; 8]); // CRC and size: not checked
    flush(&mut pending, meter, true);
    sent
}

/// Meters a gzip body of `head`, `mib` MiB of `unit`s and `tail` (see `stream_gzip`),
/// compressed far beyond the ratio at which decoding used to stop.
fn meter_huge_gzip(
    endpoint: &Endpoint,
    ct: &str,
    (head, unit, tail): (&[u8], &[u8], &[u8]),
    mib: usize,
) -> Metering {
    let mut m = ResponseMeter::new(*endpoint, ct, "gzip", false);
    let sent = stream_gzip(&mut m, head, unit, mib, tail);
    assert!(
        sent * 200 < mib as u64 * 1_000_000,
        "compressed to {sent} bytes"
    );
    m.finish()
}

#[test]
fn finds_usage_at_the_end_of_a_24_mib_gzip_body() {
    let body: (&[u8], &[u8], &[u8]) = (
            br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":""#,
            b"Lorem ipsum dolor sit amet, ",
            br#" Ende."},"finish_reason":"stop"}],"usage":{"prompt_tokens":2006,"completion_tokens":777,"total_tokens":2783,"prompt_tokens_details":{"cached_tokens":1920}}}"#,
        );
    assert_eq!(
        meter_huge_gzip(&Endpoint::ChatCompletions, JSON, body, 24),
        Metering {
            oversized_events: 1,
            ..real(usage(86, 1920, 0, 777), "gpt-4o-2024-08-06")
        }
    );
}

#[test]
fn finds_usage_at_the_end_of_a_64_mib_gzip_body() {
    // Embeddings: no output text to estimate (debug builds estimate slowly), and the
    // model is named after the vectors.
    let body: (&[u8], &[u8], &[u8]) = (
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":["#,
            b"-0.0123456789,",
            br#"0.1]}],"model":"text-embedding-3-large","usage":{"prompt_tokens":777,"total_tokens":777}}"#,
        );
    assert_eq!(
        meter_huge_gzip(&Endpoint::Embeddings, JSON, body, 64),
        Metering {
            oversized_events: 1,
            ..real(usage(777, 0, 0, 0), "text-embedding-3-large")
        }
    );
}

#[test]
fn finds_usage_at_the_end_of_a_long_gzip_stream() {
    let body: (&[u8], &[u8], &[u8]) = (
            b"data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            b"data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Lorem ipsum \"}}]}\n\n",
            b"data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":777}}\n\ndata: [DONE]\n\n",
        );
    assert_eq!(
        meter_huge_gzip(&Endpoint::ChatCompletions, SSE, body, 24),
        real(usage(3, 0, 0, 777), "gpt-4o")
    );
}

// -----------------------------------------------------------------------------------
// Undecodable bodies (SPEC "Metering cannot be switched off by the client").

#[test]
fn decides_each_content_encoding() {
    let plain = CHAT_JSON.as_bytes();
    let gz = gzip(plain, false);
    let want = real(usage(86, 1920, 0, 300), "gpt-4o-2024-08-06");
    let cases: [(&str, &[u8], bool); 14] = [
        ("", plain, true),
        ("identity", plain, true),
        (" IDENTITY ", plain, true),
        ("gzip", &gz, true),
        (" GZip ", &gz, true),
        ("x-gzip", &gz, true),
        ("identity, gzip", &gz, true),
        ("gzip,identity", &gz, true),
        ("br", plain, false),
        ("zstd", plain, false),
        ("compress", plain, false),
        ("gzip, br", &gz, false),
        ("gzip, gzip", &gz, false),
        ("gzip;q=1", &gz, false),
    ];
    for (enc, body, decodable) in cases {
        let m = run(&Endpoint::ChatCompletions, JSON, enc, false, body, &[]).1;
        if decodable {
            assert_eq!(m, want, "{enc:?}");
        } else {
            assert!(m.unsupported_encoding, "{enc:?}");
            assert!(
                !m.complete && m.output_estimated && !m.invalid_usage,
                "{enc:?}"
            );
            assert_eq!(m.usage, Usage::default(), "{enc:?}");
        }
    }
}

#[test]
fn an_undecodable_body_never_reads_as_a_reported_zero() {
    let endpoints = endpoints();
    for endpoint in &endpoints {
        for enc in ["br", "zstd", "gzip, br"] {
            let m = run(endpoint, JSON, enc, false, b"\x1b\x00\x00", &[]).1;
            assert!(
                m.unsupported_encoding && !m.complete && m.output_estimated,
                "{endpoint:?} {enc}"
            );
        }
    }
}

#[test]
fn a_corrupt_gzip_body_is_flagged_undecodable() {
    let packed = gzip(CHAT_JSON.as_bytes(), false);
    let mut bad_magic = packed.clone();
    bad_magic[1] = 0x8c;
    let mut bad_data = packed.clone();
    // A reserved block type (BTYPE = 11) in the first deflate block.
    bad_data[10] |= 0b110;
    let mut cut = packed.clone();
    cut.truncate(packed.len() / 2);
    for (name, body, corrupt) in [
        ("magic", &bad_magic, true),
        ("data", &bad_data, true),
        ("cut short", &cut, false),
    ] {
        let m = run(&Endpoint::ChatCompletions, JSON, "gzip", false, body, &[]).1;
        assert_eq!(m.corrupt_encoding, corrupt, "{name}");
        assert!(
            !m.complete && m.output_estimated && !m.unsupported_encoding,
            "{name}"
        );
    }
    // Bytes after a complete member are not a second member: ignored.
    let mut trailing = packed.clone();
    trailing.extend_from_slice(b"\0\0\0garbage");
    let m = run(
        &Endpoint::ChatCompletions,
        JSON,
        "gzip",
        false,
        &trailing,
        &[],
    )
    .1;
    assert_eq!(m, real(usage(86, 1920, 0, 300), "gpt-4o-2024-08-06"));
}

#[test]
fn the_host_charges_its_estimates_for_what_the_upstream_did_not_report() {
    let chat = |body: &str, enc: &str| {
        run(
            &Endpoint::ChatCompletions,
            SSE,
            enc,
            false,
            body.as_bytes(),
            &[],
        )
        .1
    };
    let cut = &OPENAI_CHAT_USAGE[..OPENAI_CHAT_USAGE.find("\"choices\":[],").unwrap()];
    let text = estimate(Api::OpenAi, &["Привет, ", "мир! 你好\n"]);
    let insane =
        OPENAI_CHAT_USAGE.replacen("\"completion_tokens\":9", "\"completion_tokens\":1e30", 1);
    let mut corrupt = gzip(OPENAI_CHAT_USAGE.as_bytes(), false);
    // A reserved block type (BTYPE = 11) in the first deflate block.
    corrupt[10] |= 0b110;
    let corrupt = run(
        &Endpoint::ChatCompletions,
        SSE,
        "gzip",
        false,
        &corrupt,
        &[],
    )
    .1;
    // The label the host writes to `tollgate.usage`, as the struct documents it.
    let label = |m: &Metering| {
        if m.undecodable() {
            "undecodable"
        } else if m.invalid_usage {
            "invalid"
        } else if m.output_estimated || !m.complete {
            "estimated"
        } else {
            "reported"
        }
    };
    // (what, metering, charged with an input estimate of 100 and 4096 reserved, label)
    let cases = [
        (
            "reported",
            chat(OPENAI_CHAT_USAGE, ""),
            usage(176, 1024, 0, 9),
            "reported",
        ),
        (
            "cut short",
            chat(cut, ""),
            usage(100, 0, 0, text),
            "estimated",
        ),
        (
            "insane",
            chat(&insane, ""),
            usage(100, 0, 0, text),
            "invalid",
        ),
        (
            "brotli",
            chat(OPENAI_CHAT_USAGE, "br"),
            usage(100, 0, 0, 4096),
            "undecodable",
        ),
        (
            "stacked",
            chat(OPENAI_CHAT_USAGE, "gzip, gzip"),
            usage(100, 0, 0, 4096),
            "undecodable",
        ),
        ("corrupt", corrupt, usage(100, 0, 0, 4096), "undecodable"),
    ];
    for (what, m, want, source) in cases {
        assert_eq!(m.charged(100, 4096), want, "{what}: {m:?}");
        assert_eq!(label(&m), source, "{what}");
    }
    // More text than was reserved: the estimate wins.
    let m = Metering {
        usage: usage(0, 0, 0, 5000),
        corrupt_encoding: true,
        output_estimated: true,
        ..Metering::default()
    };
    assert_eq!(m.charged(100, 4096), usage(100, 0, 0, 5000));
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::Messages,
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        gemini(false),
        gemini(true),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        splits in proptest::collection::vec(0usize..600, 0..6),
        e in 0usize..7,
        ct in prop::sample::select(vec![SSE, JSON]),
        enc in prop::sample::select(vec!["", "gzip", "deflate", "br"]),
        strip in any::<bool>(),
    ) {
        let mut splits: Vec<usize> = splits.into_iter().map(|s| s.min(body.len())).collect();
        splits.sort_unstable();
        let endpoint = &endpoints()[e];
        let (client, _) = run(endpoint, ct, enc, strip, &body, &splits);
        prop_assert!(client.len() <= body.len());
        if !strip {
            prop_assert_eq!(client, body);
        }
    }

    #[test]
    fn mutated_real_streams_never_panic(
        e in 0usize..5,
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..8),
        splits in proptest::collection::vec(0usize..2000, 0..4),
        gz in any::<bool>(),
    ) {
        let (_, endpoint, body, _) = &stream_cases()[e];
        let mut body = body.as_bytes().to_vec();
        for (at, b) in flips {
            if let Some(x) = body.get_mut(at) { *x = b; }
        }
        let body = if gz { gzip(&body, true) } else { body };
        let mut splits: Vec<usize> = splits.into_iter().map(|s| s.min(body.len())).collect();
        splits.sort_unstable();
        let enc = if gz { "gzip" } else { "" };
        let (client, _) = run(endpoint, SSE, enc, true, &body, &splits);
        prop_assert!(client.len() <= body.len());
    }
}
