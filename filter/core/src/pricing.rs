//! Prices (SPEC `pricing`, "Budgets bind on every model"): the built-in table of list prices,
//! how the configured entries and that table combine, and what a `cost_usd` limit asks of them:
//! does this model have a price, and does every model an allow-list admits have one.

use crate::config::{Config, Glob};
use crate::limits::{Limit, LimitKind, Price};

/// The refusal (403) of a request under a `cost_usd` limit whose model has no price.
pub const NO_PRICE: &str = "model has no price";

/// Longest model name quoted back in a refusal: the client chose it and may have made it huge.
const MAX_QUOTED_MODEL: usize = 128;

// ---------------------------------------------------------------------------------------------
// The built-in table
// ---------------------------------------------------------------------------------------------

/// List prices in USD per million tokens, (glob, input, output, cache_write, cache_read), as
/// published on 2026-12-07 by Anthropic, OpenAI and Google (standard tier, not batch).
///
/// The first matching glob wins, so a glob comes before every broader one it overlaps
/// (`gpt-4o-mini*` before `gpt-4o*`, `o3-mini*` before `o3*`). Where a newer version of a
/// family costs more than the old one (`gpt-5.5` against `gpt-5`), the old glob ends at a
/// separator so the new model stays unpriced (and refused under a cost limit) rather than
/// under-charged; `o1` likewise only takes the plain name and dated snapshots.
///
/// Tiered prices take the lower tier: Gemini 2.5 Pro, 3 Pro and 3.1 Pro prompts over 200k
/// tokens, Gemini 1.5 prompts over 128k, Claude Sonnet 4/4.5 prompts over 200k, Claude Haiku
/// 5.5 prompts over 100k, and `gpt-5.4`/`gpt-5.5` prompts over 272k cost more than shown (up
/// to 2× input, 1.5× output; 5× for Haiku 5.5). Gemini audio input costs more than text too.
///
/// Anthropic cache writes are the 5-minute rate (1.25 × input); OpenAI and Gemini report no
/// cache writes. A model without a cached-input price reads cache at its input price.
/// Embeddings have no output. Not priced: `text-embedding-004` (Google lists it free of
/// charge), moving aliases such as `gemini-flash-latest`, and legacy models (`gpt-4`,
/// `gpt-3.5-turbo`, `claude-2`): a `pricing` entry prices them.
pub(crate) const BUILTIN_PRICES: &[(&str, f64, f64, f64, f64)] = &[
    // Anthropic, Claude 5
    ("claude-fable-5-1*", 10.0, 50.0, 12.5, 0.25),
    ("claude-fable-5*", 10.0, 50.0, 12.5, 1.0),
    ("claude-opus-5-5*", 4.0, 20.0, 5.0, 0.2),
    ("claude-opus-5*", 5.0, 25.0, 6.25, 0.5),
    ("claude-sonnet-5-5*", 2.0, 10.0, 2.5, 0.1),
    ("claude-sonnet-5*", 2.0, 10.0, 2.5, 0.2),
    ("claude-haiku-5-5*", 0.1, 0.5, 0.125, 0.01),
    // Anthropic, Claude 4: Opus 4.5 and later cost a third of Opus 4 and 4.1
    ("claude-opus-4-5*", 5.0, 25.0, 6.25, 0.5),
    ("claude-opus-4-6*", 5.0, 25.0, 6.25, 0.5),
    ("claude-opus-4-7*", 5.0, 25.0, 6.25, 0.5),
    ("claude-opus-4-8*", 5.0, 25.0, 6.25, 0.5),
    ("claude-opus-4*", 15.0, 75.0, 18.75, 1.5),
    ("claude-sonnet-4*", 3.0, 15.0, 3.75, 0.3),
    ("claude-haiku-4*", 1.0, 5.0, 1.25, 0.1),
    // Anthropic, Claude 3
    ("claude-3-7-sonnet*", 3.0, 15.0, 3.75, 0.3),
    ("claude-3-5-sonnet*", 3.0, 15.0, 3.75, 0.3),
    ("claude-3-5-haiku*", 0.8, 4.0, 1.0, 0.08),
    ("claude-3-opus*", 15.0, 75.0, 18.75, 1.5),
    ("claude-3-haiku*", 0.25, 1.25, 0.3, 0.03),
    // OpenAI, GPT-5
    ("gpt-5.5-pro*", 30.0, 180.0, 0.0, 30.0),
    ("gpt-5.5*", 5.0, 30.0, 0.0, 0.5),
    ("gpt-5.4-pro*", 30.0, 180.0, 0.0, 30.0),
    ("gpt-5.4-mini*", 0.75, 4.5, 0.0, 0.075),
    ("gpt-5.4-nano*", 0.2, 1.25, 0.0, 0.02),
    ("gpt-5.4*", 2.5, 15.0, 0.0, 0.25),
    ("gpt-5.2-pro*", 21.0, 168.0, 0.0, 21.0),
    ("gpt-5.2*", 1.75, 14.0, 0.0, 0.175),
    ("gpt-5.1-codex-mini*", 0.25, 2.0, 0.0, 0.025),
    ("gpt-5.1*", 1.25, 10.0, 0.0, 0.125),
    ("gpt-5-pro*", 15.0, 120.0, 0.0, 15.0),
    ("gpt-5-mini*", 0.25, 2.0, 0.0, 0.025),
    ("gpt-5-nano*", 0.05, 0.4, 0.0, 0.005),
    ("gpt-5", 1.25, 10.0, 0.0, 0.125),
    ("gpt-5-*", 1.25, 10.0, 0.0, 0.125),
    // OpenAI, GPT-4.1 and GPT-4o (the first gpt-4o snapshot kept its launch price)
    ("gpt-4.1-nano*", 0.1, 0.4, 0.0, 0.025),
    ("gpt-4.1-mini*", 0.4, 1.6, 0.0, 0.1),
    ("gpt-4.1*", 2.0, 8.0, 0.0, 0.5),
    ("gpt-4o-mini*", 0.15, 0.6, 0.0, 0.075),
    ("gpt-4o-2024-05-13*", 5.0, 15.0, 0.0, 5.0),
    ("gpt-4o*", 2.5, 10.0, 0.0, 1.25),
    // OpenAI, o-series
    ("o1-pro*", 150.0, 600.0, 0.0, 150.0),
    ("o1-mini*", 1.1, 4.4, 0.0, 0.55),
    ("o1-preview*", 15.0, 60.0, 0.0, 7.5),
    ("o1", 15.0, 60.0, 0.0, 7.5),
    ("o1-20??-??-??", 15.0, 60.0, 0.0, 7.5),
    ("o3-pro*", 20.0, 80.0, 0.0, 20.0),
    ("o3-deep-research*", 10.0, 40.0, 0.0, 2.5),
    ("o3-mini*", 1.1, 4.4, 0.0, 0.55),
    ("o3*", 2.0, 8.0, 0.0, 0.5),
    ("o4-mini-deep-research*", 2.0, 8.0, 0.0, 0.5),
    ("o4-mini*", 1.1, 4.4, 0.0, 0.275),
    // OpenAI, embeddings
    ("text-embedding-3-small*", 0.02, 0.0, 0.0, 0.02),
    ("text-embedding-3-large*", 0.13, 0.0, 0.0, 0.13),
    ("text-embedding-ada-002*", 0.1, 0.0, 0.0, 0.1),
    // Google, Gemini 3
    ("gemini-3.1-pro*", 2.0, 12.0, 0.0, 0.2),
    ("gemini-3.1-flash-lite*", 0.25, 1.5, 0.0, 0.025),
    ("gemini-3-pro*", 2.0, 12.0, 0.0, 0.2),
    ("gemini-3-flash*", 0.5, 3.0, 0.0, 0.05),
    // Google, Gemini 2.5 (the image model's output is image tokens, the TTS models' audio)
    ("gemini-2.5-pro-preview-tts*", 1.0, 20.0, 0.0, 1.0),
    ("gemini-2.5-pro*", 1.25, 10.0, 0.0, 0.125),
    ("gemini-2.5-flash-lite*", 0.1, 0.4, 0.0, 0.01),
    ("gemini-2.5-flash-image*", 0.3, 30.0, 0.0, 0.03),
    ("gemini-2.5-flash-preview-tts*", 0.5, 10.0, 0.0, 0.5),
    ("gemini-2.5-flash*", 0.3, 2.5, 0.0, 0.03),
    // Google, Gemini 2.0 and 1.5 (Flash-Lite 2.0 has no context caching)
    ("gemini-2.0-flash-lite*", 0.075, 0.3, 0.0, 0.075),
    ("gemini-2.0-flash*", 0.1, 0.4, 0.0, 0.025),
    ("gemini-1.5-pro*", 1.25, 5.0, 0.0, 0.3125),
    ("gemini-1.5-flash-8b*", 0.0375, 0.15, 0.0, 0.01),
    ("gemini-1.5-flash*", 0.075, 0.3, 0.0, 0.01875),
    // Google, embeddings
    ("gemini-embedding-001*", 0.15, 0.0, 0.0, 0.15),
];

/// The built-in table as pricing entries.
pub fn builtin_pricing() -> Vec<(Glob, Price)> {
    BUILTIN_PRICES
        .iter()
        .filter_map(|&(glob, input, output, cache_write, cache_read)| {
            // Every built-in glob is valid (a test holds it): nothing is dropped here.
            let glob = Glob::new(glob).ok()?;
            let price = Price {
                input,
                output,
                cache_write,
                cache_read,
            };
            Some((glob, price))
        })
        .collect()
}

/// Every price in matching order: the configured entries in their order, then the built-in
/// table, then configured defaults (a glob of only `*`), so that `"*"` prices what nothing else
/// does instead of overriding every list price.
pub fn with_builtins(configured: Vec<(Glob, Price)>) -> Vec<(Glob, Price)> {
    let (defaults, mut out): (Vec<_>, Vec<_>) =
        configured.into_iter().partition(|(g, _)| is_catch_all(g));
    out.extend(builtin_pricing());
    out.extend(defaults);
    out
}

/// A glob of only `*`: it matches every name, the empty one included.
fn is_catch_all(glob: &Glob) -> bool {
    glob.as_str().bytes().all(|b| b == b'*')
}

// ---------------------------------------------------------------------------------------------
// What a cost limit asks
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Whether `limits` hold a `cost_usd` limit: a request under them needs a priced model, or
    /// its budget would count it as free.
    pub fn needs_price(limits: &[Limit]) -> bool {
        limits.iter().any(|l| {
            matches!(
                l,
                Limit::Rate {
                    kind: LimitKind::CostUsd,
                    ..
                }
            )
        })
    }

    /// Whether a request for `model` under `limits` must get 403 [`NO_PRICE`]: a `cost_usd`
    /// limit binds and no pricing entry matches the model. A request that names no model
    /// (`None`) cannot be priced either, so it is refused the same way.
    pub fn refuses_unpriced(&self, model: Option<&str>, limits: &[Limit]) -> bool {
        Config::needs_price(limits) && model.is_none_or(|m| self.pricing_index(m).is_none())
    }

    /// Whether a pricing entry matches every model name, so no model goes unpriced.
    pub fn has_default_price(&self) -> bool {
        self.pricing.iter().any(|(g, _)| is_catch_all(g))
    }

    /// Whether every model name that allow-list glob `allowed` admits has a price (what
    /// `tollgate check` asks). A name without wildcards: whether a pricing entry matches it,
    /// as at run time. A glob: whether one pricing glob is the same glob, or is a literal
    /// followed by `*` (`*` alone included) that starts `allowed`'s literal prefix, the text
    /// before its first `*` or `?` (`gemini-*` is covered by `gemini-*`, `gem*` or `*`, not by
    /// `gemini-2.5-pro*`). Sound, not complete: a glob covered only by several entries together
    /// counts as unpriced.
    pub fn prices_every_match(&self, allowed: &Glob) -> bool {
        let text = allowed.as_str();
        let Some(prefix) = text.find(['*', '?']).and_then(|i| text.get(..i)) else {
            return self.pricing_index(text).is_some();
        };
        self.pricing.iter().any(|(glob, _)| {
            let pattern = glob.as_str();
            let literal = pattern.trim_end_matches('*');
            glob == allowed
                || (literal.len() < pattern.len()
                    && !literal.contains(['*', '?'])
                    && prefix.starts_with(literal))
        })
    }
}

/// The message of the 403 [`NO_PRICE`] refusal (the host sends it with reason `Model`:
/// `permission_error` / `model_not_allowed` / `PERMISSION_DENIED`).
pub fn no_price_message(consumer: &str, model: Option<&str>) -> String {
    match model {
        Some(m) => {
            let quoted: String = m.chars().take(MAX_QUOTED_MODEL).collect();
            format!("{consumer}: {NO_PRICE}: {quoted:?}")
        }
        None => format!("{consumer}: {NO_PRICE}: the request names no model"),
    }
}

#[cfg(test)]
mod tests;
