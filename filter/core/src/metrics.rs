//! Metric names. Wasm stats carry no labels, so each label is encoded in the name as
//! `tollgate_<metric>.<label>.<value>…` with values mapped to `[A-Za-z0-9_-]`; the shipped
//! Envoy configs carry the `stats_tags` that turn them back into Prometheus labels. Also: the
//! bounded set of model names that are label values of their own, and the series every
//! configuration defines at load (so each exists at 0 before its first event).

use crate::api::Reason;
use crate::config::{self, Config, Glob};
use crate::store::{self, Store, StoreError, MAX_TRIES};

/// Appends `.label.value` to `name`, mapping every byte outside `[A-Za-z0-9_-]` to `_`.
fn push_label(name: &mut String, label: &str, value: &str) {
    name.push('.');
    name.push_str(label);
    name.push('.');
    if value.is_empty() {
        name.push('_');
    }
    for c in value.chars().take(64) {
        name.push(if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        });
    }
}

/// `metric` with its labels encoded in order.
pub fn name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut n = String::with_capacity(metric.len() + 16 * labels.len());
    n.push_str(metric);
    for (l, v) in labels {
        push_label(&mut n, l, v);
    }
    n
}

/// A 64-bit FNV-1a digest of `metric` and its raw labels, with a separator byte between
/// parts that no `&str` contains (0xff), so `("ab", "c")` and `("a", "bc")` differ. The hot
/// path looks a metric id up by this key instead of formatting [`name`] on every count.
pub fn key(metric: &str, labels: &[(&str, &str)]) -> u64 {
    use crate::store::{fnv1a64_more, FNV_START};
    let part = |h: u64, bytes: &[u8]| fnv1a64_more(fnv1a64_more(h, bytes), &[0xff]);
    labels
        .iter()
        .fold(part(FNV_START, metric.as_bytes()), |h, (l, v)| {
            part(part(h, l.as_bytes()), v.as_bytes())
        })
}

/// Every label a tollgate metric may carry, for the `stats_tags` of the Envoy configs.
pub const LABELS: &[&str] = &[
    "consumer", "model", "outcome", "account", "type", "reason", "code",
];

/// `v` in decimal, written into `buf` (no allocation on the response path).
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(i..).unwrap_or_default()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Model labels (SPEC "Metrics", v2)
// ---------------------------------------------------------------------------------------------

/// The label value of every model that has none of its own.
pub const OTHER_MODEL: &str = "other";
/// The shared-data key listing the model names that are label values (one per line, at most
/// `metrics.max_models`), so the bound holds for the whole process, not per worker.
pub const MODELS_KEY: &str = "tollgate:models";
/// Longest model name that can be a label value of its own (a longer one is `other`).
pub const MODEL_NAME_CAP: usize = 128;

/// Whether `model` may be a label value of its own: it matches the caller's allow-list or a
/// pricing entry (configured or built in). Anything else is `other`, so random names mint
/// nothing. A key sent as the model (a configured consumer or admin key, or a name with a
/// provider key's prefix) is `other` too: labels show in Prometheus, `top_models` and the
/// recent ring.
pub fn eligible(cfg: &Config, allow: Option<&[Glob]>, model: &str) -> bool {
    (allow.is_some_and(|globs| globs.iter().any(|g| g.matches(model)))
        || cfg.pricing_index(model).is_some())
        && !key_like(cfg, model)
}

/// A provider key's prefix at the start (`sk-…`), or one longer than `sk-` anywhere
/// (`claude-sk-ant-…`), or a configured key.
fn key_like(cfg: &Config, model: &str) -> bool {
    config::KNOWN_KEY_PREFIXES
        .iter()
        .any(|p| model.starts_with(p) || (p.len() > 3 && model.contains(p)))
        || crate::identity::is_configured_key(cfg, model)
}

/// A name that can go into the `\n`-separated list: not empty, not too long, no control
/// characters.
fn listable(model: &str) -> bool {
    !model.is_empty() && model.len() <= MODEL_NAME_CAP && !model.chars().any(char::is_control)
}

/// One worker's view of [`MODELS_KEY`]: the names it knows are labels, and whether the list
/// is full (then no new name needs a look at shared data).
#[derive(Debug, Clone, Default)]
pub struct ModelLabels {
    max: usize,
    /// Sorted (binary search: a request asks once, and the list is short).
    known: Vec<String>,
    full: bool,
}

impl ModelLabels {
    /// A view for a configuration's `metrics.max_models`.
    pub fn new(max_models: u32) -> ModelLabels {
        ModelLabels {
            max: max_models as usize,
            ..ModelLabels::default()
        }
    }

    /// Whether `model` is its own label value (else it counts as [`OTHER_MODEL`]). A name
    /// already listed is; a new one is listed when `eligible()` says so and the list has
    /// room. Shared data is read only for a name this worker has not seen listed while the
    /// list has room: at most `max_models` writes per process, ever.
    pub fn admits(
        &mut self,
        store: &dyn Store,
        model: &str,
        eligible: impl FnOnce() -> bool,
    ) -> bool {
        if self.knows(model) {
            return true;
        }
        if self.full || !listable(model) || !eligible() {
            return false;
        }
        match register(store, model, self.max) {
            Ok(Listing::Listed) => {
                self.learn(model.to_owned());
                true
            }
            Ok(Listing::Full(names)) => {
                // Every name another worker listed is a label here too, from now on without
                // a look at shared data.
                for n in names {
                    self.learn(n);
                }
                self.full = true;
                self.knows(model)
            }
            // Shared data failed us: `other` this once, asked again next time.
            Err(_) => false,
        }
    }
}

impl ModelLabels {
    fn knows(&self, model: &str) -> bool {
        self.known
            .binary_search_by(|k| k.as_str().cmp(model))
            .is_ok()
    }

    fn learn(&mut self, model: String) {
        if let Err(at) = self.known.binary_search(&model) {
            self.known.insert(at, model);
        }
    }
}

enum Listing {
    Listed,
    /// The list is full (without the name): every name in it.
    Full(Vec<String>),
}

fn names_in(bytes: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(bytes)
        .unwrap_or("")
        .split('\n')
        .filter(|n| listable(n))
}

/// Adds `model` to [`MODELS_KEY`] unless it is there already or the list holds `max` names.
fn register(store: &dyn Store, model: &str, max: usize) -> Result<Listing, StoreError> {
    for _ in 0..MAX_TRIES {
        let (value, cas) = store.get(MODELS_KEY)?;
        let bytes = value.unwrap_or_default();
        let mut count = 0usize;
        for n in names_in(&bytes) {
            if n == model {
                return Ok(Listing::Listed);
            }
            count += 1;
        }
        if count >= max {
            return Ok(Listing::Full(names_in(&bytes).map(str::to_owned).collect()));
        }
        let mut next = bytes.clone();
        if !next.is_empty() {
            next.push(b'\n');
        }
        next.extend_from_slice(model.as_bytes());
        match store.set(MODELS_KEY, &next, store::write_cas(cas)) {
            Ok(()) => return Ok(Listing::Listed),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
}

/// Creates [`MODELS_KEY`] and lists the configuration's exact model names (allow-list and
/// configured pricing entries without `*` or `?`, built-in prices aside) first, up to
/// `max_models`: a configured name always is a label of its own. Run when the configuration
/// loads.
pub fn prepare_models(store: &dyn Store, cfg: &Config) -> Result<(), StoreError> {
    store::ensure(store, MODELS_KEY, b"")?;
    let builtin = |g: &Glob| {
        crate::pricing::BUILTIN_PRICES
            .iter()
            .any(|(b, ..)| *b == g.as_str())
    };
    let allowed = cfg.consumers.iter().flat_map(|c| c.models.iter().flatten());
    let priced = cfg.pricing.iter().map(|(g, _)| g).filter(|g| !builtin(g));
    let max = cfg.max_models as usize;
    for g in allowed.chain(priced) {
        let name = g.as_str();
        if !name.contains(['*', '?']) && listable(name) {
            if let Listing::Full(_) = register(store, name, max)? {
                break;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Series defined at load
// ---------------------------------------------------------------------------------------------

/// Every rejection reason, in `api::Reason` order (see [`reason_index`]).
pub const REASONS: [Reason; 14] = [
    Reason::Auth,
    Reason::Model,
    Reason::NotFound,
    Reason::BadRequest,
    Reason::TooLarge,
    Reason::Tokens,
    Reason::Requests,
    Reason::Cost,
    Reason::Concurrency,
    Reason::AccountsCooling,
    Reason::Global,
    Reason::GlobalUnavailable,
    Reason::NoAccount,
    Reason::UnknownConsumer,
];

/// The place of `r` in [`REASONS`]: a new `Reason` fails to compile here until it is listed.
pub fn reason_index(r: Reason) -> usize {
    match r {
        Reason::Auth => 0,
        Reason::Model => 1,
        Reason::NotFound => 2,
        Reason::BadRequest => 3,
        Reason::TooLarge => 4,
        Reason::Tokens => 5,
        Reason::Requests => 6,
        Reason::Cost => 7,
        Reason::Concurrency => 8,
        Reason::AccountsCooling => 9,
        Reason::Global => 10,
        Reason::GlobalUnavailable => 11,
        Reason::NoAccount => 12,
        Reason::UnknownConsumer => 13,
    }
}

/// The consumer label of a request whose caller is not known.
pub const UNKNOWN_CONSUMER: &str = "unknown";

/// A kind of Envoy metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A series to define when the configuration loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub kind: Kind,
    pub name: String,
}

/// The most series [`series`] lists: a configuration with thousands of consumers defines the
/// first ones' rejection series only (the rest appear at their first event).
pub const MAX_SERIES: usize = 4096;

/// Every series the filter can define without seeing traffic, for `on_configure` to define
/// so that each exists at 0 before its first event (SPEC "Metrics"): the unlabelled and
/// fixed-label counters, the estimate-error histogram, per account its state gauge and
/// failovers, and per consumer (configured, `anonymous` when set, `unknown`) the rejections
/// by every reason. Series keyed by model or status code appear with their first event.
/// At most [`MAX_SERIES`].
pub fn series(cfg: &Config) -> Vec<Series> {
    let counter = |metric: &str, labels: &[(&str, &str)]| Series {
        kind: Kind::Counter,
        name: name(metric, labels),
    };
    let mut out = vec![
        counter("tollgate_global_degraded_total", &[]),
        counter("tollgate_reconcile_dropped_total", &[]),
        Series {
            kind: Kind::Histogram,
            name: "tollgate_estimate_error_percent".to_owned(),
        },
    ];
    for outcome in ["sent", "dropped"] {
        out.push(counter(
            "tollgate_global_charges_total",
            &[("outcome", outcome)],
        ));
    }
    for outcome in ["hit", "miss", "broken"] {
        out.push(counter("tollgate_affinity_total", &[("outcome", outcome)]));
    }
    for reason in ["unsupported_encoding", "corrupt_encoding", "invalid_usage"] {
        out.push(counter(
            "tollgate_usage_fallbacks_total",
            &[("reason", reason)],
        ));
    }
    for a in &cfg.accounts {
        out.push(Series {
            kind: Kind::Gauge,
            name: name("tollgate_account_state", &[("account", &a.name)]),
        });
        out.push(counter("tollgate_failovers_total", &[("account", &a.name)]));
    }
    let consumers = cfg
        .consumers
        .iter()
        .map(|c| c.name.as_str())
        .chain(cfg.anonymous.as_ref().map(|_| config::ANONYMOUS))
        .chain([UNKNOWN_CONSUMER]);
    'consumers: for consumer in consumers {
        for reason in REASONS {
            if out.len() >= MAX_SERIES {
                break 'consumers;
            }
            out.push(counter(
                "tollgate_rejections_total",
                &[("consumer", consumer), ("reason", reason.as_str())],
            ));
        }
    }
    out.truncate(MAX_SERIES);
    out
}

#[cfg(test)]
mod tests;
