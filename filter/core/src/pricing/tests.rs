#![cfg(test)]
use super::*;
use crate::config::parse;
use crate::limits::{Per, WindowKind};

fn rate(kind: LimitKind) -> Limit {
    Limit::Rate {
        kind,
        amount: 1000,
        per: Per::Day,
        window: WindowKind::Sliding,
    }
}

fn cost_limit() -> Limit {
    rate(LimitKind::CostUsd)
}

fn with_pricing(pricing: &str) -> Config {
    parse(format!(r#"{{"pricing": {pricing}}}"#).as_bytes()).unwrap()
}

fn glob(pattern: &str) -> Glob {
    Glob::new(pattern).unwrap()
}

#[test]
fn every_model_family_has_a_price() {
    // A real model id of every family a cost limit may meet, the glob that prices it, and
    // its input and output price.
    let table: &[(&str, &str, f64, f64)] = &[
        // Anthropic
        ("claude-opus-4-5-20251101", "claude-opus-4-5*", 5.0, 25.0),
        ("claude-opus-4-6", "claude-opus-4-6*", 5.0, 25.0),
        ("claude-opus-4-1-20250805", "claude-opus-4*", 15.0, 75.0),
        ("claude-opus-4-20250514", "claude-opus-4*", 15.0, 75.0),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4*", 3.0, 15.0),
        ("claude-sonnet-4-20250514", "claude-sonnet-4*", 3.0, 15.0),
        ("claude-haiku-4-5-20251001", "claude-haiku-4*", 1.0, 5.0),
        (
            "claude-3-7-sonnet-20250219",
            "claude-3-7-sonnet*",
            3.0,
            15.0,
        ),
        (
            "claude-3-5-sonnet-20241022",
            "claude-3-5-sonnet*",
            3.0,
            15.0,
        ),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku*", 0.8, 4.0),
        ("claude-3-opus-20240229", "claude-3-opus*", 15.0, 75.0),
        ("claude-3-haiku-20240307", "claude-3-haiku*", 0.25, 1.25),
        ("claude-opus-5", "claude-opus-5*", 5.0, 25.0),
        ("claude-opus-5-5", "claude-opus-5-5*", 4.0, 20.0),
        ("claude-sonnet-5-5", "claude-sonnet-5-5*", 2.0, 10.0),
        ("claude-haiku-5-5", "claude-haiku-5-5*", 0.1, 0.5),
        // OpenAI
        ("gpt-5", "gpt-5", 1.25, 10.0),
        ("gpt-5-2025-08-07", "gpt-5-*", 1.25, 10.0),
        ("gpt-5-codex", "gpt-5-*", 1.25, 10.0),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini*", 0.25, 2.0),
        ("gpt-5-nano", "gpt-5-nano*", 0.05, 0.4),
        ("gpt-5-pro", "gpt-5-pro*", 15.0, 120.0),
        ("gpt-5.1", "gpt-5.1*", 1.25, 10.0),
        ("gpt-5.2", "gpt-5.2*", 1.75, 14.0),
        ("gpt-5.4-mini", "gpt-5.4-mini*", 0.75, 4.5),
        ("gpt-5.5", "gpt-5.5*", 5.0, 30.0),
        ("gpt-4.1-2025-04-14", "gpt-4.1*", 2.0, 8.0),
        ("gpt-4.1-mini", "gpt-4.1-mini*", 0.4, 1.6),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano*", 0.1, 0.4),
        ("gpt-4o-2024-08-06", "gpt-4o*", 2.5, 10.0),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13*", 5.0, 15.0),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini*", 0.15, 0.6),
        ("o1", "o1", 15.0, 60.0),
        ("o1-2024-12-17", "o1-20??-??-??", 15.0, 60.0),
        ("o1-mini-2024-09-12", "o1-mini*", 1.1, 4.4),
        ("o1-pro", "o1-pro*", 150.0, 600.0),
        ("o3", "o3*", 2.0, 8.0),
        ("o3-2025-04-16", "o3*", 2.0, 8.0),
        ("o3-mini", "o3-mini*", 1.1, 4.4),
        ("o3-pro", "o3-pro*", 20.0, 80.0),
        ("o4-mini-2025-04-16", "o4-mini*", 1.1, 4.4),
        (
            "text-embedding-3-small",
            "text-embedding-3-small*",
            0.02,
            0.0,
        ),
        (
            "text-embedding-3-large",
            "text-embedding-3-large*",
            0.13,
            0.0,
        ),
        (
            "text-embedding-ada-002",
            "text-embedding-ada-002*",
            0.1,
            0.0,
        ),
        // Google
        ("gemini-2.5-pro", "gemini-2.5-pro*", 1.25, 10.0),
        ("gemini-2.5-flash", "gemini-2.5-flash*", 0.3, 2.5),
        (
            "gemini-2.5-flash-preview-09-2025",
            "gemini-2.5-flash*",
            0.3,
            2.5,
        ),
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite*", 0.1, 0.4),
        (
            "gemini-2.5-flash-image",
            "gemini-2.5-flash-image*",
            0.3,
            30.0,
        ),
        ("gemini-2.0-flash-001", "gemini-2.0-flash*", 0.1, 0.4),
        (
            "gemini-2.0-flash-lite-001",
            "gemini-2.0-flash-lite*",
            0.075,
            0.3,
        ),
        ("gemini-1.5-pro-002", "gemini-1.5-pro*", 1.25, 5.0),
        ("gemini-1.5-flash-002", "gemini-1.5-flash*", 0.075, 0.3),
        ("gemini-1.5-flash-8b", "gemini-1.5-flash-8b*", 0.0375, 0.15),
        ("gemini-3-pro-preview", "gemini-3-pro*", 2.0, 12.0),
        ("gemini-3-flash-preview", "gemini-3-flash*", 0.5, 3.0),
        ("gemini-3.1-pro-preview", "gemini-3.1-pro*", 2.0, 12.0),
        ("gemini-embedding-001", "gemini-embedding-001*", 0.15, 0.0),
    ];
    let cfg = Config::default();
    for &(model, glob, input, output) in table {
        let got = cfg
            .price_for(model)
            .map(|(g, p)| (g.as_str(), p.input, p.output));
        assert_eq!(got, Some((glob, input, output)), "{model}");
        assert!(
            !cfg.refuses_unpriced(Some(model), &[cost_limit()]),
            "{model}"
        );
    }
}

#[test]
fn specific_globs_come_before_the_broad_ones_they_overlap() {
    let cfg = Config::default();
    // (model, the specific glob that must win, the broader glob that also matches)
    let pairs = [
        ("gpt-4o-mini", "gpt-4o-mini*", "gpt-4o*"),
        ("gpt-4.1-mini", "gpt-4.1-mini*", "gpt-4.1*"),
        ("gpt-5-mini", "gpt-5-mini*", "gpt-5-*"),
        ("gpt-5.5-pro", "gpt-5.5-pro*", "gpt-5.5*"),
        ("o3-mini", "o3-mini*", "o3*"),
        ("o3-pro", "o3-pro*", "o3*"),
        (
            "o4-mini-deep-research",
            "o4-mini-deep-research*",
            "o4-mini*",
        ),
        ("claude-opus-4-5", "claude-opus-4-5*", "claude-opus-4*"),
        ("claude-opus-5-5", "claude-opus-5-5*", "claude-opus-5*"),
        ("claude-fable-5-1", "claude-fable-5-1*", "claude-fable-5*"),
        (
            "gemini-2.5-flash-lite",
            "gemini-2.5-flash-lite*",
            "gemini-2.5-flash*",
        ),
        (
            "gemini-2.0-flash-lite",
            "gemini-2.0-flash-lite*",
            "gemini-2.0-flash*",
        ),
        (
            "gemini-1.5-flash-8b",
            "gemini-1.5-flash-8b*",
            "gemini-1.5-flash*",
        ),
        (
            "gemini-2.5-pro-preview-tts",
            "gemini-2.5-pro-preview-tts*",
            "gemini-2.5-pro*",
        ),
    ];
    for (model, specific, broad) in pairs {
        assert!(glob(broad).matches(model), "{broad} should match {model}");
        assert_eq!(
            cfg.price_for(model).unwrap().0.as_str(),
            specific,
            "{model}"
        );
    }
    // Every built-in glob is reachable: no earlier, broader glob shadows it.
    for (i, (g, _)) in cfg.pricing.iter().enumerate() {
        let model = g.as_str().replace('*', "").replace('?', "0");
        assert_eq!(cfg.pricing_index(&model), Some(i), "{model} is shadowed");
    }
}

#[test]
fn newer_or_unknown_models_are_not_priced_by_an_older_glob() {
    // A pricier newer version must not fall into an older family's glob (gpt-5.5 costs
    // 4× gpt-5); an unknown name gets no price rather than a guess.
    let cfg = Config::default();
    for model in [
        "gpt-5.3-codex",
        "gpt-6",
        "o1-imaginary",
        "gemini-3.5-flash",
        "gemini-flash-latest",
        "text-embedding-004",
        "llama-3-70b",
        "",
    ] {
        assert_eq!(cfg.price_for(model), None, "{model}");
    }
}

#[test]
fn built_in_prices_are_sane() {
    let cfg = Config::default();
    assert_eq!(
        cfg.pricing.len(),
        BUILTIN_PRICES.len(),
        "a glob was dropped"
    );
    for (g, p) in &cfg.pricing {
        assert!(p.input > 0.0, "{g}");
        assert!(p.cache_read > 0.0 && p.cache_read <= p.input, "{g}: {p:?}");
        assert!(
            p.cache_write == 0.0 || p.cache_write >= p.input,
            "{g}: {p:?}"
        );
        let embedding = g.as_str().contains("embedding");
        assert_eq!(p.output == 0.0, embedding, "{g}: {p:?}");
        assert!(embedding || p.output >= p.input, "{g}: {p:?}");
    }
}

#[test]
fn configured_prices_come_before_the_built_in_ones() {
    let cfg = with_pricing(r#"{"gpt-4o-mini*": {"input": 9, "output": 9}}"#);
    assert_eq!(cfg.price_for("gpt-4o-mini").unwrap().1.input, 9.0);
    assert_eq!(cfg.price_for("gpt-4o").unwrap().1.input, 2.5);
    // The configured order is kept: the first listed wins.
    let cfg = with_pricing(
        r#"{"z*": {"input": 1, "output": 1}, "g*": {"input": 2, "output": 2}, "gpt*": {"input": 3, "output": 3}}"#,
    );
    let globs: Vec<&str> = cfg
        .pricing
        .iter()
        .take(3)
        .map(|(g, _)| g.as_str())
        .collect();
    assert_eq!(globs, ["z*", "g*", "gpt*"]);
    assert_eq!(cfg.price_for("gpt-4o").unwrap().1.input, 2.0);
    assert_eq!(cfg.pricing.len(), 3 + BUILTIN_PRICES.len());
}

#[test]
fn a_star_price_is_the_default_for_models_nothing_else_prices() {
    let cfg =
        with_pricing(r#"{"*": {"input": 7, "output": 7}, "my-model": {"input": 1, "output": 2}}"#);
    // Listed first, yet it does not override the list prices or the other entries.
    assert_eq!(cfg.price_for("my-model").unwrap().1.input, 1.0);
    assert_eq!(cfg.price_for("gpt-4o").unwrap().1.input, 2.5);
    for model in ["llama-3-70b", "gemini-3.5-flash", "x", ""] {
        let (g, p) = cfg.price_for(model).unwrap();
        assert_eq!((g.as_str(), p.input), ("*", 7.0), "{model:?}");
        assert!(!cfg.refuses_unpriced(Some(model), &[cost_limit()]));
    }
    assert_eq!(cfg.pricing.last().unwrap().0.as_str(), "*");
    assert!(cfg.has_default_price());
    assert!(!Config::default().has_default_price());
    // `**` is just as total.
    assert!(with_pricing(r#"{"**": {"input": 1, "output": 1}}"#).has_default_price());
}

#[test]
fn only_a_cost_limit_needs_a_price() {
    let cfg = Config::default();
    let cases: &[(&[Limit], Option<&str>, bool)] = &[
        (&[cost_limit()], Some("llama-3-70b"), true),
        (
            &[rate(LimitKind::Tokens), cost_limit()],
            Some("gemini-3.5-flash"),
            true,
        ),
        (&[cost_limit()], None, true),
        (&[cost_limit()], Some("gemini-2.5-pro"), false),
        (
            &[rate(LimitKind::Tokens), Limit::Concurrent(2)],
            Some("llama-3-70b"),
            false,
        ),
        (&[rate(LimitKind::Tokens)], None, false),
        (&[], Some("llama-3-70b"), false),
    ];
    for &(limits, model, refused) in cases {
        assert_eq!(Config::needs_price(limits), limits.contains(&cost_limit()));
        assert_eq!(
            cfg.refuses_unpriced(model, limits),
            refused,
            "{model:?} {limits:?}"
        );
    }
    // A `*` default prices any named model, but a request naming none stays unpriced.
    let star = with_pricing(r#"{"*": {"input": 1, "output": 1}}"#);
    assert!(!star.refuses_unpriced(Some("llama-3-70b"), &[cost_limit()]));
    assert!(star.refuses_unpriced(None, &[cost_limit()]));
}

#[test]
fn an_allow_list_glob_is_priced_only_when_one_pricing_glob_covers_it() {
    let cfg = with_pricing(
        r#"{"gemini-*": {"input": 1, "output": 1}, "my-?": {"input": 1, "output": 1}, "a*b*": {"input": 1, "output": 1}}"#,
    );
    let cases = [
        // literal names: exactly the run-time lookup
        ("gpt-4o-mini", true),
        ("gemini-9", true),
        ("llama-3-70b", false),
        // globs covered by a prefix glob
        ("gemini-*", true),
        ("gemini-2.5-*", true),
        ("gpt-4o-mini*", true),
        ("gpt-5.5-pro?", true),
        ("o3*", true),
        // the very same glob
        ("my-?", true),
        ("a*b*", true),
        // not covered by any one glob, though the table prices some of what they match
        ("claude-*", false),
        ("gpt-5*", false),
        ("o*", false),
        ("*", false),
        ("a*", false),
        ("my-*", false),
        ("?emini-*", false),
    ];
    for (allowed, priced) in cases {
        assert_eq!(cfg.prices_every_match(&glob(allowed)), priced, "{allowed}");
    }
    let star = with_pricing(r#"{"*": {"input": 1, "output": 1}}"#);
    for allowed in ["*", "claude-*", "?", "llama-3-70b"] {
        assert!(star.prices_every_match(&glob(allowed)), "{allowed}");
    }
}

#[test]
fn the_refusal_names_the_consumer_and_a_bounded_model() {
    assert_eq!(
        no_price_message("team-a", Some("gemini-9")),
        r#"team-a: model has no price: "gemini-9""#
    );
    assert_eq!(
        no_price_message("team-a", None),
        "team-a: model has no price: the request names no model"
    );
    let huge = "é".repeat(10_000) + "\"\n";
    let msg = no_price_message("anonymous", Some(&huge));
    assert!(msg.starts_with("anonymous: model has no price: \"éé"));
    assert!(msg.chars().count() < 200 && !msg.contains('\n'), "{msg}");
}
