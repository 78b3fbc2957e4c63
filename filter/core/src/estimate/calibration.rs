//! Measures the estimate against exact tokenizers (tiktoken-rs) on tests/corpus.
#![cfg(test)]

use super::*;
use std::fmt::Write as _;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_CORPUS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus"),
        PathBuf::from,
    )
}

/// (name, text) of every corpus sample: UDHR languages, then code by language.
fn samples() -> Vec<(String, String)> {
    let dir = corpus_dir();
    let mut out = Vec::new();
    let mut udhr: Vec<_> = std::fs::read_dir(dir.join("udhr"))
        .expect("tests/corpus/udhr is readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    udhr.sort();
    for p in udhr {
        let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
        out.push((name, std::fs::read_to_string(&p).expect("utf-8 text")));
    }
    for (name, ext) in [("rust", "rs"), ("python", "py"), ("markdown", "md")] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("code"))
            .expect("tests/corpus/code is readable")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        let text: String = files
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("utf-8 text"))
            .collect();
        out.push((name.to_string(), text));
    }
    out
}

/// Message-sized pieces: whole lines up to about 1.5 KB.
fn chunks(text: &str) -> Vec<&str> {
    const TARGET: usize = 1500;
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        end += line.len();
        if end - start >= TARGET {
            out.push(&text[start..end]);
            start = end;
        }
    }
    if end > start {
        // A short tail is noisy on its own: it joins the last chunk.
        if end - start < TARGET / 3 && !out.is_empty() {
            let last = out.pop().expect("non-empty");
            let from = end - (end - start) - last.len();
            out.push(&text[from..end]);
        } else {
            out.push(&text[start..end]);
        }
    }
    out
}

/// Mean absolute percentage error of `estimate` against `exact` over chunks.
fn mape(pairs: &[(f64, f64)]) -> f64 {
    let sum: f64 = pairs
        .iter()
        .map(|(est, exact)| (est - exact).abs() / exact)
        .sum();
    100.0 * sum / pairs.len().max(1) as f64
}

#[test]
fn estimates_stay_within_targets_of_o200k() {
    let o200k = tiktoken_rs::o200k_base().expect("o200k");
    let cl100k = tiktoken_rs::cl100k_base().expect("cl100k");
    let mut table = String::from(
        "| sample | chunks | ours MAE % | chars/4 MAE % | o200k tokens | cl100k tokens \
             | ours vs cl100k MAE % | ours (anthropic) tokens |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut worst = (0.0f64, String::new());
    let mut sum = 0.0;
    let samples = samples();
    for (name, text) in &samples {
        let (mut ours, mut naive, mut vs_cl) = (Vec::new(), Vec::new(), Vec::new());
        let (mut total_o, mut total_cl, mut total_a) = (0, 0, 0);
        let pieces = chunks(text);
        for chunk in &pieces {
            let o = o200k.encode_ordinary(chunk).len();
            let cl = cl100k.encode_ordinary(chunk).len();
            let est = estimate_text(Api::OpenAi, chunk) as f64;
            ours.push((est, o as f64));
            naive.push((chunk.chars().count() as f64 / 4.0, o as f64));
            vs_cl.push((est, cl as f64));
            total_o += o;
            total_cl += cl;
            total_a += estimate_text(Api::Anthropic, chunk);
        }
        let err = mape(&ours);
        sum += err;
        if err > worst.0 {
            worst = (err, name.clone());
        }
        let _ = writeln!(
            table,
            "| {name} | {} | {err:.1} | {:.1} | {total_o} | {total_cl} | {:.1} | {total_a} |",
            pieces.len(),
            mape(&naive),
            mape(&vs_cl),
        );
    }
    let mean = sum / samples.len().max(1) as f64;
    let _ = writeln!(
        table,
        "\nmean ours MAE vs o200k: {mean:.1}%, worst: {} {:.1}%",
        worst.1, worst.0
    );
    println!("{table}");
    assert!(
        samples.len() >= 12,
        "corpus missing: {} samples",
        samples.len()
    );
    assert!(mean <= 10.0, "mean error {mean:.1}% over 10%\n{table}");
    assert!(
        worst.0 <= 20.0,
        "{} error {:.1}% over 20%\n{table}",
        worst.1,
        worst.0
    );
}

#[test]
#[ignore = "writes the feature table used to fit the weights"]
fn dump_features() {
    let o200k = tiktoken_rs::o200k_base().expect("o200k");
    let cl100k = tiktoken_rs::cl100k_base().expect("cl100k");
    let mut csv = String::new();
    for (name, text) in samples() {
        for chunk in chunks(&text) {
            let mut e = Estimator::new(Api::OpenAi);
            e.push_str(chunk);
            let f = e.features();
            let _ = write!(
                csv,
                "{name},{},{},{}",
                chunk.chars().count(),
                o200k.encode_ordinary(chunk).len(),
                cl100k.encode_ordinary(chunk).len()
            );
            for n in f {
                let _ = write!(csv, ",{n}");
            }
            csv.push('\n');
        }
    }
    let dir = std::env::temp_dir().join("tollgate-estimate");
    std::fs::create_dir_all(&dir).expect("feature dir");
    std::fs::write(dir.join("features.csv"), csv).expect("write csv");
    let all: Vec<String> = samples()
        .iter()
        .flat_map(|(n, t)| chunks(t).into_iter().map(move |c| format!("{n}\u{1}{c}")))
        .collect();
    std::fs::write(dir.join("chunks.txt"), all.join("\u{0}")).expect("write chunks");
}
