//! The numbers behind the usage API that no other module keeps: per-consumer, per-account and
//! per-model totals, response times and the last hour by minute. Each worker records facts in
//! memory (no shared data on the request path) and about once a second merges them into one
//! shared-data key with a compare-and-swap; the admin API reads that key.

use std::collections::BTreeMap;

use crate::limits::Usage;
use crate::store::{self, Decision, Store, StoreError, MAX_TRIES};

/// The one shared-data key holding the merged totals of every worker.
pub const KEY: &str = "tollgate:analytics";
/// Entries kept per map (consumers, accounts, models); further names fold into [`OTHER`].
pub const MAP_CAP: usize = 1024;
/// The entry that names beyond [`MAP_CAP`] fold into.
pub const OTHER: &str = "other";
/// Longest name kept, in bytes; longer ones are cut at a character boundary.
pub const NAME_CAP: usize = 128;
/// Minutes kept for "the last hour".
pub const MINUTES: usize = 60;
/// How often a worker merges its facts into [`KEY`] (see [`Accumulator::flush_if_due`]).
pub const FLUSH_EVERY_MS: u64 = 1_000;
/// First byte of the stored encoding; another value reads as garbage.
const VERSION: u8 = 0xA1;
const MINUTE_MS: u64 = 60_000;

/// What one finished request contributes. Recorded once per request that went upstream,
/// when its response ends (complete, reset or aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact<'a> {
    pub consumer: &'a str,
    /// The bounded model label of the metrics (matched glob or `other`).
    pub model_label: &'a str,
    pub account: Option<&'a str>,
    pub usage: Usage,
    pub cost_micros: u64,
    /// From the request's arrival to the end of its response.
    pub response_ms: u64,
    /// The upstream answered 2xx.
    pub ok: bool,
    pub now_ms: u64,
}

/// One consumer's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerTotals {
    pub requests: u64,
    /// Requests whose upstream answer was not 2xx.
    pub errors: u64,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub cost_micros: u64,
}

impl ConsumerTotals {
    /// All four token classes (what a `tokens` limit counts).
    pub fn tokens(&self) -> u64 {
        Usage {
            input: self.input,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
            output: self.output,
        }
        .total()
    }

    fn add(&mut self, o: &ConsumerTotals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.errors = self.errors.saturating_add(o.errors);
        self.input = self.input.saturating_add(o.input);
        self.output = self.output.saturating_add(o.output);
        self.cache_read = self.cache_read.saturating_add(o.cache_read);
        self.cache_write = self.cache_write.saturating_add(o.cache_write);
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
    }
}

/// Requests and tokens of an account or a model label, and when it last served one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub requests: u64,
    pub tokens: u64,
    /// Epoch ms of the latest request counted.
    pub last_ms: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests = self.requests.saturating_add(o.requests);
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.last_ms = self.last_ms.max(o.last_ms);
    }
}

/// One minute of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Epoch minute (epoch ms / 60 000); 0 marks an unused slot.
    pub minute: u64,
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

impl Bucket {
    fn add(&mut self, o: &Bucket) {
        self.requests = self.requests.saturating_add(o.requests);
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
    }
}

/// Sums over a span of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

/// Everything counted since this Envoy started (shared data lives as long as the process).
/// A worker's unflushed delta has the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Totals {
    /// All requests, exact even when names folded into `other`.
    pub all: ConsumerTotals,
    /// Sum and count of response times, in ms.
    pub response_ms_sum: u64,
    pub response_count: u64,
    /// When the first fact was merged (epoch ms; 0: never).
    pub since_ms: u64,
    pub consumers: BTreeMap<String, ConsumerTotals>,
    pub accounts: BTreeMap<String, Counts>,
    pub models: BTreeMap<String, Counts>,
    /// The minutes with traffic among the newest `MINUTES`, oldest first.
    pub minutes: Vec<Bucket>,
}

impl Totals {
    /// No request counted.
    pub fn is_empty(&self) -> bool {
        self.all.requests == 0 && self.response_count == 0
    }

    /// All four token classes over every request.
    pub fn total_tokens(&self) -> u64 {
        self.all.tokens()
    }

    /// Mean response time in ms, `None` before the first response.
    pub fn average_response_ms(&self) -> Option<f64> {
        (self.response_count > 0).then(|| self.response_ms_sum as f64 / self.response_count as f64)
    }

    /// The 60 minutes ending with the current one, oldest first, missing minutes as zeros.
    pub fn last_hour(&self, now_ms: u64) -> Vec<Bucket> {
        let now_min = now_ms / MINUTE_MS;
        (0..MINUTES as u64)
            .rev()
            .map(|back| {
                let minute = now_min.saturating_sub(back);
                self.minutes
                    .iter()
                    .find(|b| b.minute == minute && minute != 0)
                    .copied()
                    .unwrap_or(Bucket {
                        minute,
                        ..Bucket::default()
                    })
            })
            .collect()
    }

    /// Requests, tokens and cost of the last hour (the current minute and the 59 before).
    pub fn last_hour_sum(&self, now_ms: u64) -> Span {
        self.last_hour(now_ms)
            .iter()
            .fold(Span::default(), |mut s, b| {
                s.requests = s.requests.saturating_add(b.requests);
                s.tokens = s.tokens.saturating_add(b.tokens);
                s.cost_micros = s.cost_micros.saturating_add(b.cost_micros);
                s
            })
    }

    /// Model labels by requests (then tokens, then name), at most `n`.
    pub fn top_models(&self, n: usize) -> Vec<(&str, Counts)> {
        let mut v: Vec<(&str, Counts)> =
            self.models.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        v.sort_by(|a, b| {
            b.1.requests
                .cmp(&a.1.requests)
                .then(b.1.tokens.cmp(&a.1.tokens))
                .then(a.0.cmp(b.0))
        });
        v.truncate(n);
        v
    }

    /// Accounts that served a request in the last hour.
    pub fn accounts_active_since(&self, since_ms: u64) -> usize {
        self.accounts
            .values()
            .filter(|c| c.requests > 0 && c.last_ms >= since_ms)
            .count()
    }

    fn record(&mut self, f: &Fact<'_>) {
        let tokens = f.usage.total();
        let one = ConsumerTotals {
            requests: 1,
            errors: u64::from(!f.ok),
            input: f.usage.input,
            output: f.usage.output,
            cache_read: f.usage.cache_read,
            cache_write: f.usage.cache_write,
            cost_micros: f.cost_micros,
        };
        let counts = Counts {
            requests: 1,
            tokens,
            last_ms: f.now_ms,
        };
        self.all.add(&one);
        self.response_ms_sum = self.response_ms_sum.saturating_add(f.response_ms);
        self.response_count = self.response_count.saturating_add(1);
        if self.since_ms == 0 || f.now_ms < self.since_ms {
            self.since_ms = f.now_ms;
        }
        entry(&mut self.consumers, f.consumer).add(&one);
        if let Some(a) = f.account {
            entry(&mut self.accounts, a).add(&counts);
        }
        entry(&mut self.models, f.model_label).add(&counts);
        self.add_bucket(&Bucket {
            minute: f.now_ms / MINUTE_MS,
            requests: 1,
            tokens,
            cost_micros: f.cost_micros,
        });
    }

    fn add_bucket(&mut self, b: &Bucket) {
        if b.minute == 0 {
            return;
        }
        let newest = self.minutes.iter().map(|x| x.minute).max().unwrap_or(0);
        if b.minute.saturating_add(MINUTES as u64) <= newest {
            return; // an hour older than what is kept already
        }
        match self.minutes.iter_mut().find(|x| x.minute == b.minute) {
            Some(slot) => slot.add(b),
            None => self.minutes.push(*b),
        }
        let newest = newest.max(b.minute);
        self.minutes
            .retain(|x| x.minute.saturating_add(MINUTES as u64) > newest);
        self.minutes.sort_unstable_by_key(|x| x.minute);
    }

    /// Adds `delta` into these totals.
    fn merge(&mut self, delta: &Totals) {
        self.all.add(&delta.all);
        self.response_ms_sum = self.response_ms_sum.saturating_add(delta.response_ms_sum);
        self.response_count = self.response_count.saturating_add(delta.response_count);
        if delta.since_ms != 0 && (self.since_ms == 0 || delta.since_ms < self.since_ms) {
            self.since_ms = delta.since_ms;
        }
        for (k, v) in &delta.consumers {
            entry(&mut self.consumers, k).add(v);
        }
        for (k, v) in &delta.accounts {
            entry(&mut self.accounts, k).add(v);
        }
        for (k, v) in &delta.models {
            entry(&mut self.models, k).add(v);
        }
        for b in &delta.minutes {
            self.add_bucket(b);
        }
    }

    /// Decodes a stored value; anything malformed, truncated, out of bounds or of another
    /// version reads as fresh totals (the analytics start over rather than fail).
    pub fn decode(bytes: &[u8]) -> Totals {
        let mut r = Reader { b: bytes };
        decode_totals(&mut r)
            .filter(|_| r.b.is_empty())
            .unwrap_or_default()
    }

    /// A compact binary encoding: a version byte, then LEB128 numbers and length-prefixed
    /// names (about 20 bytes per consumer; hand-written because serde costs ~40 KB of wasm).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + 24 * (self.consumers.len() + self.models.len()));
        w.push(VERSION);
        put_consumer(&mut w, &self.all);
        for v in [self.response_ms_sum, self.response_count, self.since_ms] {
            put(&mut w, v);
        }
        put(&mut w, self.consumers.len() as u64);
        for (k, v) in &self.consumers {
            put_name(&mut w, k);
            put_consumer(&mut w, v);
        }
        for map in [&self.accounts, &self.models] {
            put(&mut w, map.len() as u64);
            for (k, v) in map {
                put_name(&mut w, k);
                for x in [v.requests, v.tokens, v.last_ms] {
                    put(&mut w, x);
                }
            }
        }
        put(&mut w, self.minutes.len() as u64);
        for b in &self.minutes {
            for x in [b.minute, b.requests, b.tokens, b.cost_micros] {
                put(&mut w, x);
            }
        }
        w
    }
}

fn put(w: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        w.push((v as u8) | 0x80);
        v >>= 7;
    }
    w.push(v as u8);
}

fn put_name(w: &mut Vec<u8>, name: &str) {
    let name = cut(name);
    put(w, name.len() as u64);
    w.extend_from_slice(name.as_bytes());
}

fn put_consumer(w: &mut Vec<u8>, c: &ConsumerTotals) {
    for v in [
        c.requests,
        c.errors,
        c.input,
        c.output,
        c.cache_read,
        c.cache_write,
        c.cost_micros,
    ] {
        put(w, v);
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.b.split_first()?;
        self.b = rest;
        Some(first)
    }

    fn num(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A count of at most `max` entries.
    fn len(&mut self, max: usize) -> Option<usize> {
        usize::try_from(self.num()?).ok().filter(|n| *n <= max)
    }

    fn name(&mut self) -> Option<String> {
        let n = self.len(NAME_CAP)?;
        let (head, rest) = (self.b.get(..n)?, self.b.get(n..)?);
        self.b = rest;
        String::from_utf8(head.to_vec()).ok()
    }

    fn consumer(&mut self) -> Option<ConsumerTotals> {
        Some(ConsumerTotals {
            requests: self.num()?,
            errors: self.num()?,
            input: self.num()?,
            output: self.num()?,
            cache_read: self.num()?,
            cache_write: self.num()?,
            cost_micros: self.num()?,
        })
    }

    fn counts(&mut self) -> Option<Counts> {
        Some(Counts {
            requests: self.num()?,
            tokens: self.num()?,
            last_ms: self.num()?,
        })
    }
}

fn decode_totals(r: &mut Reader<'_>) -> Option<Totals> {
    if r.byte()? != VERSION {
        return None;
    }
    let mut t = Totals {
        all: r.consumer()?,
        response_ms_sum: r.num()?,
        response_count: r.num()?,
        since_ms: r.num()?,
        ..Totals::default()
    };
    for _ in 0..r.len(MAP_CAP + 1)? {
        let k = r.name()?;
        t.consumers.insert(k, r.consumer()?);
    }
    for _ in 0..r.len(MAP_CAP + 1)? {
        let k = r.name()?;
        t.accounts.insert(k, r.counts()?);
    }
    for _ in 0..r.len(MAP_CAP + 1)? {
        let k = r.name()?;
        t.models.insert(k, r.counts()?);
    }
    for _ in 0..r.len(MINUTES)? {
        t.minutes.push(Bucket {
            minute: r.num()?,
            requests: r.num()?,
            tokens: r.num()?,
            cost_micros: r.num()?,
        });
    }
    Some(t)
}

/// The entry for `name` (cut to `NAME_CAP` bytes), or `other` once the map is full.
fn entry<'m, V: Default>(map: &'m mut BTreeMap<String, V>, name: &str) -> &'m mut V {
    let name = cut(name);
    let key = if map.len() < MAP_CAP || map.contains_key(name) {
        name
    } else {
        OTHER
    };
    map.entry(key.to_owned()).or_default()
}

fn cut(name: &str) -> &str {
    if name.len() <= NAME_CAP {
        return name;
    }
    let mut end = NAME_CAP;
    while end > 0 && !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or("")
}

/// One worker's facts since its last successful flush.
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    delta: Totals,
    last_flush_ms: u64,
}

impl Accumulator {
    pub fn new() -> Accumulator {
        Accumulator::default()
    }

    /// Counts one finished request. Memory only: the request path never touches shared data.
    pub fn record(&mut self, fact: &Fact<'_>) {
        self.delta.record(fact);
    }

    /// Nothing recorded since the last flush.
    pub fn is_empty(&self) -> bool {
        self.delta.is_empty()
    }

    /// The unflushed delta (tests and debugging).
    pub fn pending(&self) -> &Totals {
        &self.delta
    }

    /// Merges the delta into [`KEY`] with a compare-and-swap loop and clears it. On failure the
    /// delta is kept and merged by a later flush, so nothing is lost while the store is busy.
    /// Costs nothing when the delta is empty.
    pub fn flush(&mut self, store: &dyn Store, now_ms: u64) -> Result<(), StoreError> {
        self.last_flush_ms = now_ms;
        if self.delta.is_empty() {
            return Ok(());
        }
        let delta = &self.delta;
        store::update(store, KEY, MAX_TRIES, |old, out| {
            let mut totals = old.map(Totals::decode).unwrap_or_default();
            totals.merge(delta);
            out.extend_from_slice(&totals.encode());
            Decision::Write(())
        })?;
        self.delta = Totals::default();
        Ok(())
    }

    /// [`flush`](Self::flush) when [`FLUSH_EVERY_MS`] have passed since the last one: call it
    /// from every root-context tick, whatever the tick period.
    pub fn flush_if_due(&mut self, store: &dyn Store, now_ms: u64) -> Result<(), StoreError> {
        if now_ms < self.last_flush_ms.saturating_add(FLUSH_EVERY_MS) {
            return Ok(());
        }
        self.flush(store, now_ms)
    }
}

/// The merged totals of every worker (flushed ones; each worker flushes within about a second).
/// A missing key, a store error or garbage reads as empty totals.
pub fn load(store: &dyn Store) -> Totals {
    match store.get(KEY) {
        Ok((Some(v), _)) => Totals::decode(&v),
        _ => Totals::default(),
    }
}

#[cfg(test)]
mod tests;
