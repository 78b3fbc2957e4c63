//! Throughput of the estimator alone (run with `--release -- --ignored --nocapture`).
#![cfg(test)]

use super::*;
use std::path::PathBuf;
use std::time::Instant;

fn corpus(paths: &[&str]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus");
    paths
        .iter()
        .map(|p| std::fs::read_to_string(dir.join(p)).expect("corpus file"))
        .collect()
}

/// About 256 KB of `text`, repeated, cut at a char boundary.
fn body(text: &str) -> String {
    let mut out = String::new();
    while out.len() < 256 * 1024 {
        out.push_str(text);
    }
    out
}

/// MB/s of `count` over `text`: the best of many short rounds (the machine may be busy).
fn measure(text: &str, count: impl Fn(&str) -> u64) -> (f64, u64) {
    let passes = ((1 << 20) / text.len().max(1)).max(1);
    let mut best = f64::MAX;
    let mut tokens = 0;
    for _ in 0..100 {
        let t = Instant::now();
        for _ in 0..passes {
            tokens = std::hint::black_box(count(std::hint::black_box(text)));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    ((passes * text.len()) as f64 / best / 1e6, tokens)
}

#[test]
#[ignore = "benchmark: run with --release"]
fn throughput() {
    let cases = [
        ("english prose", body(&corpus(&["udhr/en.txt"]))),
        (
            "code",
            body(&corpus(&[
                "code/serde_json_value.rs",
                "code/json_decoder.py",
                "code/textwrap.py",
                "code/serde_json_README.md",
            ])),
        ),
        (
            "cjk",
            body(&corpus(&["udhr/zh.txt", "udhr/ja.txt", "udhr/ko.txt"])),
        ),
    ];
    println!("| text | whole MB/s | JSON pieces MB/s | tokens |\n|---|---:|---:|---:|");
    for (name, text) in &cases {
        let (whole, tokens) = measure(text, |t| estimate_text(Api::OpenAi, t));
        // As the JSON scanner feeds a string: runs between escapes, each "\n" alone.
        let (pieces, _) = measure(text, |t| {
            let mut e = Estimator::new(Api::OpenAi);
            for line in t.split_inclusive('\n') {
                let (head, nl) = line.split_at(line.len() - usize::from(line.ends_with('\n')));
                e.push_str(head);
                e.push_str(nl);
            }
            e.tokens()
        });
        println!("| {name} | {whole:.0} | {pieces:.0} | {tokens} |");
    }
}
