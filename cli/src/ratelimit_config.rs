//! `tollgate ratelimit-config`: envoyproxy/ratelimit's configuration file for a tollgate
//! configuration's `global` limits, so that limits are written once, in tollgate's
//! configuration. The descriptors are the ones the filter sends (SPEC "Global limits"):
//! `[consumer, unit]` for each unit of a consumer's limits, `[account, unit]` for an account's.

use tollgate_core::config::{self, Config};
use tollgate_core::limits::{Limit, Per};
use tollgate_core::ratelimit::Unit;

use crate::check::PLACEHOLDER_KEY;
use crate::envoy::{self, Document};
use crate::Outcome;

/// One top-level descriptor: `key: consumer, value: team-a` (no value: every other value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: &'static str,
    value: Option<String>,
    /// Where in the tollgate configuration it comes from (`consumers[0]`).
    origin: String,
    rates: Vec<Rate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rate {
    unit: Unit,
    per: Per,
    amount: u32,
    /// `200000 tokens per minute`, for the comment beside it.
    text: String,
}

/// `tollgate ratelimit-config FILE` on the file's bytes.
pub fn ratelimit_config(file: &str, raw: &[u8]) -> Outcome {
    // The keys play no part in the limits: every `key_env` gets a placeholder.
    let env = |_: &str| Some(PLACEHOLDER_KEY.to_string());
    let doc = match std::str::from_utf8(raw) {
        Ok(text) => envoy::classify(text),
        Err(_) => Ok(Document::Tollgate),
    };
    let configs: Vec<(String, Config)> = match doc {
        Ok(Document::Tollgate) => match config::parse_with_env(raw, &env) {
            Ok(cfg) => vec![(String::new(), cfg)],
            Err(e) => return Outcome::fail(1, format!("{e}\n")),
        },
        Ok(Document::Envoy(docs)) => {
            let mut out = Vec::new();
            for f in envoy::filters(&docs).0 {
                let parsed = f.configuration.clone().and_then(|json| {
                    config::parse_with_env(json.as_bytes(), &env).map_err(|e| e.to_string())
                });
                match parsed {
                    Ok(cfg) => out.push((format!("{}: ", f.label), cfg)),
                    Err(e) => return Outcome::fail(1, format!("error: {}: {e}\n", f.label)),
                }
            }
            out
        }
        Err(e) => return Outcome::fail(1, format!("{file}: {e}\n")),
    };
    let with_global: Vec<&(String, Config)> =
        configs.iter().filter(|(_, c)| c.global.is_some()).collect();
    let mut domain: Option<&str> = None;
    let mut entries: Vec<Entry> = Vec::new();
    let mut notes = String::new();
    for (label, cfg) in &with_global {
        let d = cfg.global.as_ref().map_or("", |g| g.domain.as_str());
        match domain {
            Some(seen) if seen != d => {
                return Outcome::fail(
                    1,
                    format!(
                        "{label}global.domain: {d:?}, and another filter of {file} uses \
                         {seen:?}: the rate-limit service takes one file per domain; run \
                         ratelimit-config on each filter's configuration\n"
                    ),
                );
            }
            _ => domain = Some(d),
        }
        let mine = match entries_of(cfg, label, &mut notes) {
            Ok(mine) => mine,
            Err(e) => return Outcome::fail(1, e),
        };
        for e in mine {
            match entries
                .iter()
                .find(|o| o.key == e.key && o.value == e.value)
            {
                Some(o) if o.rates == e.rates => {}
                Some(o) => {
                    return Outcome::fail(
                        1,
                        format!(
                            "{label}{}: its global limits differ from {}'s in another filter \
                             of the same domain\n",
                            e.origin, o.origin
                        ),
                    )
                }
                None => entries.push(e),
            }
        }
    }
    let Some(domain) = domain else {
        return Outcome::fail(
            1,
            format!(
                "{file}: no configuration with a \"global\" section: there are no global \
                 limits for the rate-limit service\n"
            ),
        );
    };
    Outcome {
        code: 0,
        stdout: render(file, domain, &entries),
        stderr: notes,
    }
}

/// The descriptors of one configuration, in the order the file lists them: consumers with
/// limits of their own, `anonymous` with its own, then the default limits for every other
/// consumer (a key without a value), then accounts.
fn entries_of(cfg: &Config, label: &str, notes: &mut String) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut add = |key: &'static str,
                   value: Option<&str>,
                   origin: String,
                   limits: &[Limit],
                   notes: &mut String|
     -> Result<(), String> {
        let rates = rates(limits, &format!("{label}{origin}"), notes)?;
        if !rates.is_empty() {
            out.push(Entry {
                key,
                value: value.map(str::to_string),
                origin,
                rates,
            });
        }
        Ok(())
    };
    for (i, c) in cfg.consumers.iter().enumerate() {
        if !c.default_limits {
            add(
                "consumer",
                Some(&c.name),
                format!("consumers[{i}]"),
                &c.limits,
                notes,
            )?;
        }
    }
    if let Some(a) = cfg.anonymous.as_ref().filter(|a| !a.default_limits) {
        add(
            "consumer",
            Some("anonymous"),
            "anonymous".into(),
            &a.limits,
            notes,
        )?;
    }
    add("consumer", None, String::new(), &cfg.limits, notes)?;
    for (i, a) in cfg.accounts.iter().enumerate() {
        add(
            "account",
            Some(&a.name),
            format!("accounts[{i}]"),
            &a.limits,
            notes,
        )?;
    }
    Ok(out)
}

/// The rate of each global unit: the first limit of that unit. The service holds one limit per
/// descriptor, so a second window of the same unit stays local to each Envoy (a note says so).
fn rates(limits: &[Limit], origin: &str, notes: &mut String) -> Result<Vec<Rate>, String> {
    let at = |j: usize| {
        if origin.ends_with(": ") || origin.is_empty() {
            format!("{origin}limits[{j}]")
        } else {
            format!("{origin}.limits[{j}]")
        }
    };
    let mut out: Vec<(usize, Rate)> = Vec::new();
    for (j, l) in limits.iter().enumerate() {
        let Limit::Rate {
            kind, amount, per, ..
        } = l
        else {
            continue;
        };
        let Some(unit) = Unit::of_kind(*kind) else {
            notes.push_str(&format!(
                "note: {}: {l} stays local to each Envoy: the global units are tokens, \
                 requests and cost\n",
                at(j)
            ));
            continue;
        };
        if let Some((first, _)) = out.iter().find(|(_, r)| r.unit == unit) {
            notes.push_str(&format!(
                "note: {}: {l} stays local to each Envoy: the rate-limit service holds one \
                 limit per descriptor, and {} is the global {unit} limit\n",
                at(j),
                at(*first)
            ));
            continue;
        }
        let Ok(amount) = u32::try_from(*amount) else {
            return Err(format!(
                "{}: {l} is more than the rate-limit service can count (requests_per_unit \
                 is a uint32: at most {}{})\n",
                at(j),
                u32::MAX,
                if unit == Unit::CostMicros {
                    " micro-dollars, about 4294 USD"
                } else {
                    ""
                }
            ));
        };
        out.push((
            j,
            Rate {
                unit,
                per: *per,
                amount,
                text: l.to_string(),
            },
        ));
    }
    // In `Unit::ALL` order, like the descriptors the filter sends.
    out.sort_by_key(|(_, r)| Unit::ALL.iter().position(|u| *u == r.unit));
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// A YAML string: JSON's double-quoted form is valid YAML (names may hold `:`, `#`, quotes).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

fn render(file: &str, domain: &str, entries: &[Entry]) -> String {
    let mut y = format!(
        "# envoyproxy/ratelimit configuration for tollgate's global limits, generated by\n\
         # `tollgate ratelimit-config {file}` (tollgate {}): change the limits in tollgate's\n\
         # configuration and generate this file again. It goes in\n\
         # RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config/ of the ratelimit service.\n\
         # The service's windows are fixed and epoch-aligned (a minute starts at :00, a day at\n\
         # 00:00 UTC) and its month is 30 days; tollgate's own local windows are sliding unless\n\
         # \"window\": \"fixed\". A descriptor with no limit here is not limited globally.\n\
         domain: {}\n\
         descriptors:\n",
        env!("CARGO_PKG_VERSION"),
        quoted(domain)
    );
    for e in entries {
        let what = match (&e.value, e.key) {
            (Some(v), _) => format!("{} {v}", e.key),
            (None, _) => "every other consumer: the default limits (each its own counter)".into(),
        };
        let origin = if e.origin.is_empty() {
            "limits".to_string()
        } else {
            e.origin.clone()
        };
        y.push_str(&format!("  # {what} ({origin})\n  - key: {}\n", e.key));
        if let Some(v) = &e.value {
            y.push_str(&format!("    value: {}\n", quoted(v)));
        }
        y.push_str("    descriptors:\n");
        for r in &e.rates {
            y.push_str(&format!(
                "      - key: unit\n        value: {}\n        rate_limit: # {}\n          unit: {}\n          requests_per_unit: {}\n",
                r.unit.as_str(),
                r.text,
                r.per.as_str(),
                r.amount
            ));
        }
    }
    y
}

#[cfg(test)]
mod tests;
