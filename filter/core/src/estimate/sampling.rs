//! What sampling long strings costs in accuracy: long texts built from tests/corpus, read
//! sampled (`push_str`) and whole (`push_all`), against o200k (run with
//! `--release -- --ignored --nocapture sampling_errors`).
#![cfg(test)]

use super::*;
use std::fmt::Write as _;

fn corpus(f: &str) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/corpus");
    std::fs::read_to_string(format!("{dir}/{f}")).expect("corpus file")
}

const LATIN: &[&str] = &[
    "en", "de", "fr", "es", "it", "pt", "nl", "pl", "cs", "tr", "id", "sw", "vi", "yo",
];
const ALL: &[&str] = &[
    "ar", "bg", "bn", "cs", "de", "el", "en", "es", "fa", "fr", "gu", "he", "hi", "hy", "id", "it",
    "ja", "ka", "km", "ko", "lo", "mr", "my", "ne", "nl", "pl", "pt", "ru", "sr", "sw", "ta", "te",
    "th", "tr", "uk", "ur", "vi", "yo", "zh", "zh_hant",
];
const CODE: &[&str] = &[
    "heapq.py",
    "itoa_lib.rs",
    "json_decoder.py",
    "json_encoder.py",
    "serde_json_README.md",
    "serde_json_error.rs",
    "serde_json_number.rs",
    "serde_json_value.rs",
    "shlex.py",
    "textwrap.py",
    "hashbrown_README.md",
];
const INSTANCES: usize = 12;

/// `files` one after the other from `start` on (wrapping), until `size` bytes.
fn rotated(files: &[String], start: usize, size: usize) -> String {
    let mut out = String::new();
    let mut i = start;
    while out.len() < size {
        out.push_str(&files[i % files.len()]);
        out.push('\n');
        i += 1;
    }
    let n = char_prefix(&out, size);
    out.truncate(n);
    out
}

/// (kind, texts of `size` bytes).
fn texts(size: usize) -> Vec<(&'static str, Vec<String>)> {
    let udhr = |l: &&str| corpus(&format!("udhr/{l}.txt"));
    let latin: Vec<String> = LATIN.iter().map(udhr).collect();
    let all: Vec<String> = ALL.iter().map(udhr).collect();
    let code: Vec<String> = CODE.iter().map(|f| corpus(&format!("code/{f}"))).collect();
    // Prose and code alternating, a file of each.
    let mixed: Vec<String> = (0..LATIN.len().max(CODE.len()))
        .flat_map(|i| [latin[i % latin.len()].clone(), code[i % code.len()].clone()])
        .collect();
    let inst = |files: &[String], step: usize| -> Vec<String> {
        (0..INSTANCES)
            .map(|k| rotated(files, k * step, size))
            .collect()
    };
    // One file pasted several times.
    let pasted_files = [
        "udhr/en.txt",
        "udhr/ru.txt",
        "udhr/zh.txt",
        "code/json_encoder.py",
        "code/serde_json_value.rs",
        "code/heapq.py",
        "udhr/de.txt",
        "udhr/ja.txt",
        "udhr/ar.txt",
        "udhr/hi.txt",
        "code/shlex.py",
        "code/serde_json_number.rs",
    ];
    let pasted = pasted_files
        .iter()
        .map(|f| rotated(&[corpus(f)], 0, size))
        .collect();
    vec![
        ("prose", inst(&latin, 2)),
        ("scripts", inst(&all, 7)),
        ("code", inst(&code, 2)),
        ("mixed", inst(&mixed, 3)),
        ("pasted", pasted),
    ]
}

fn stats(errs: &mut [f64]) -> (f64, f64, f64) {
    errs.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let mean = errs.iter().map(|e| e.abs()).sum::<f64>() / errs.len().max(1) as f64;
    let worst = errs.last().copied().unwrap_or(0.0);
    let bias = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
    (mean, worst, bias)
}

#[test]
#[ignore = "a study: prints the sampling's error per text kind and size"]
fn sampling_errors() {
    let o200k = tiktoken_rs::o200k_base().expect("o200k");
    let mut out = String::from(
        "| size | kind | read % | openai samp mean/worst/bias % | anthropic samp | gemini samp \
         | o200k: whole mean | o200k: sampled mean/worst |\n",
    );
    for size in [8 << 10, 32 << 10, 128 << 10, 256 << 10] {
        for (kind, list) in texts(size) {
            let mut per_api: Vec<Vec<f64>> = vec![vec![]; 3];
            let (mut vs_whole, mut vs_samp) = (vec![], vec![]);
            let mut read = 0.0;
            for t in &list {
                for (k, api) in [Api::OpenAi, Api::Anthropic, Api::Gemini]
                    .into_iter()
                    .enumerate()
                {
                    let mut whole = Estimator::new(api);
                    whole.push_all(t);
                    whole.end_text();
                    let mut s = Estimator::new(api);
                    s.push_str(t);
                    s.end_text();
                    let (w, sv) = (whole.tokens() as f64, s.tokens() as f64);
                    per_api[k].push(100.0 * (sv - w) / w);
                    if k == 0 {
                        read += 100.0 * (t.len() as u64 - s.skipped) as f64 / t.len() as f64;
                        let exact = o200k.encode_ordinary(t).len() as f64;
                        vs_whole.push(100.0 * (w - exact) / exact);
                        vs_samp.push(100.0 * (sv - exact) / exact);
                    }
                }
            }
            let [o, a, g] = [0, 1, 2].map(|k| stats(&mut per_api[k]));
            let (wm, _, _) = stats(&mut vs_whole);
            let (sm, sw, _) = stats(&mut vs_samp);
            let _ = writeln!(
                out,
                "| {}K | {kind} | {:.1} | {:.2}/{:+.2}/{:+.2} | {:.2}/{:+.2}/{:+.2} | {:.2}/{:+.2}/{:+.2} \
                 | {wm:.2} | {sm:.2}/{sw:+.2} |",
                size >> 10,
                read / list.len() as f64,
                o.0,
                o.1,
                o.2,
                a.0,
                a.1,
                a.2,
                g.0,
                g.1,
                g.2,
            );
        }
    }
    println!("{out}");
}
