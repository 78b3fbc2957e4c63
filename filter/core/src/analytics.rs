//! The numbers behind the usage API that no other module keeps: per-consumer, per-account and
//! per-model totals, rejections by reason, response times (mean and a log-bucket histogram for
//! percentiles), the last hour by minute, the last day by five minutes, and a ring of the most
//! recent requests. Each worker records facts in memory (no shared data on the request path)
//! and about once a second merges them into two shared-data keys with a compare-and-swap; the
//! admin API reads them.

use std::collections::{BTreeMap, VecDeque};

use crate::codec;
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
/// Five-minute spans kept for "the last day".
pub const SPANS: usize = 288;
/// Length of one span of the last day, in ms.
pub const SPAN_MS: u64 = 300_000;
/// Requests the recent ring keeps (newest first).
pub const RECENT: usize = 50;
/// The shared-data key of the recent ring.
pub const RECENT_KEY: &str = "tollgate:recent";
/// Buckets of the response-time histogram: one per millisecond below 8 ms, then four per power
/// of two (each at most a quarter of its floor wide), the last one (from about 30 minutes)
/// open-ended.
pub const LATENCY_BUCKETS: usize = 80;
/// How often a worker merges its facts into [`KEY`] (see [`Accumulator::flush_if_due`]).
pub const FLUSH_EVERY_MS: u64 = 1_000;
/// First byte of the stored encoding; another value reads as garbage.
const VERSION: u8 = 0xA2;
/// First byte of the recent ring's encoding.
const RECENT_VERSION: u8 = 0xB1;
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

/// One minute (or, in the last day, five minutes) of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Epoch minute (epoch ms / 60 000), or epoch five minutes in the last day; 0 marks an
    /// unused slot.
    pub minute: u64,
    /// Requests that went upstream.
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
    /// Requests tollgate refused itself.
    pub rejected: u64,
}

impl Bucket {
    /// Adds `o`'s counts (not its slot).
    pub fn add(&mut self, o: &Bucket) {
        self.requests = self.requests.saturating_add(o.requests);
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
        self.rejected = self.rejected.saturating_add(o.rejected);
    }
}

/// Sums over a span of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
    pub rejected: u64,
}

/// A request tollgate refused itself (recorded where it answers, see
/// [`Accumulator::rejected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection<'a> {
    pub consumer: &'a str,
    pub model_label: &'a str,
    /// The metric reason (`tokens`, `auth`, …).
    pub reason: &'a str,
    /// The status tollgate answered with.
    pub status: u16,
    /// From the request's arrival to the answer.
    pub response_ms: u64,
    pub now_ms: u64,
}

/// One request in the recent ring: names and numbers, never a body or a key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recent {
    /// When it ended (epoch ms).
    pub at_ms: u64,
    pub consumer: String,
    pub model: String,
    /// Empty when no account served it.
    pub account: String,
    /// The upstream's status, or tollgate's own for a refusal (0: no answer).
    pub status: u16,
    /// All four token classes.
    pub tokens: u64,
    pub latency_ms: u64,
    /// `admitted`, or the rejection reason.
    pub decision: String,
}

/// The histogram bucket of a response time: exact below 8 ms, then four per power of two.
pub fn latency_bucket(ms: u64) -> usize {
    if ms < 8 {
        return ms as usize;
    }
    let e = 63 - u64::from(ms.leading_zeros()); // floor(log2 ms), at least 3
    let sub = (ms >> (e - 2)) & 3; // the two bits after the leading one
    (8 + (e - 3) * 4 + sub).min(LATENCY_BUCKETS as u64 - 1) as usize
}

/// The lowest response time (ms) that falls into bucket `i`.
pub fn latency_floor(i: usize) -> u64 {
    if i < 8 {
        return i as u64;
    }
    let (e, sub) = (3 + (i - 8) / 4, ((i - 8) % 4) as u64);
    (4 + sub).checked_shl((e - 2) as u32).unwrap_or(u64::MAX)
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
    /// Refused requests by reason (all of them, exact), in first-seen order (a short list:
    /// see [`count_of`]).
    pub rejections: Vec<(String, u64)>,
    /// Refused requests by consumer, in first-seen order (at most `MAP_CAP` names, then
    /// `other`).
    pub consumer_rejections: Vec<(String, u64)>,
    /// Response times of the requests that went upstream, by [`latency_bucket`]; empty before
    /// the first, else [`LATENCY_BUCKETS`] long.
    pub latency: Vec<u64>,
    /// The five-minute spans with traffic among the newest `SPANS`, oldest first
    /// (`Bucket::minute` holds the epoch five minutes), of the minutes that have left
    /// `minutes` (a minute is counted in one of the two, never both).
    pub spans: Vec<Bucket>,
}

impl Totals {
    /// No request counted.
    pub fn is_empty(&self) -> bool {
        self.all.requests == 0 && self.response_count == 0 && self.rejections.is_empty()
    }

    /// Requests refused by tollgate itself.
    pub fn rejected(&self) -> u64 {
        self.rejections
            .iter()
            .fold(0u64, |s, (_, n)| s.saturating_add(*n))
    }

    /// The response time (ms) below which a fraction `q` (0..=1) of the requests that went
    /// upstream ended: the middle of its histogram bucket, so within an eighth of the truth.
    /// `None` before the first response.
    pub fn latency_quantile(&self, q: f64) -> Option<u64> {
        let total = self.latency.iter().fold(0u64, |s, n| s.saturating_add(*n));
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                let (lo, hi) = (latency_floor(i), latency_floor(i + 1));
                return Some(if i + 1 >= LATENCY_BUCKETS {
                    lo
                } else {
                    lo + (hi - lo) / 2
                });
            }
        }
        None
    }

    /// The `SPANS` five-minute spans ending with the current one, oldest first, missing ones
    /// as zeros (`Bucket::minute` is the epoch five minutes).
    pub fn last_day(&self, now_ms: u64) -> Vec<Bucket> {
        let mut all = self.spans.clone();
        for m in &self.minutes {
            add_to_ring(&mut all, &span_of(m), SPANS);
        }
        ring_view(&all, now_ms / SPAN_MS, SPANS)
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
        ring_view(&self.minutes, now_ms / MINUTE_MS, MINUTES)
    }

    /// Requests, tokens and cost of the last hour (the current minute and the 59 before).
    pub fn last_hour_sum(&self, now_ms: u64) -> Span {
        self.last_hour(now_ms)
            .iter()
            .fold(Span::default(), |mut s, b| {
                s.requests = s.requests.saturating_add(b.requests);
                s.tokens = s.tokens.saturating_add(b.tokens);
                s.cost_micros = s.cost_micros.saturating_add(b.cost_micros);
                s.rejected = s.rejected.saturating_add(b.rejected);
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
        with_entry(&mut self.consumers, f.consumer, |e| e.add(&one));
        if let Some(a) = f.account {
            with_entry(&mut self.accounts, a, |e| e.add(&counts));
        }
        with_entry(&mut self.models, f.model_label, |e| e.add(&counts));
        if self.latency.len() != LATENCY_BUCKETS {
            self.latency = vec![0; LATENCY_BUCKETS];
        }
        if let Some(n) = self.latency.get_mut(latency_bucket(f.response_ms)) {
            *n = n.saturating_add(1);
        }
        self.add_traffic(
            f.now_ms,
            &Bucket {
                requests: 1,
                tokens,
                cost_micros: f.cost_micros,
                ..Bucket::default()
            },
        );
    }

    fn reject(&mut self, r: &Rejection<'_>) {
        bump(&mut self.rejections, r.reason, 1);
        bump(&mut self.consumer_rejections, r.consumer, 1);
        if self.since_ms == 0 || r.now_ms < self.since_ms {
            self.since_ms = r.now_ms;
        }
        self.add_traffic(
            r.now_ms,
            &Bucket {
                rejected: 1,
                ..Bucket::default()
            },
        );
    }

    /// Adds `b` (its `minute` ignored) to the minute of `now_ms`.
    fn add_traffic(&mut self, now_ms: u64, b: &Bucket) {
        self.add_bucket(&Bucket {
            minute: now_ms / MINUTE_MS,
            ..*b
        });
    }

    /// Adds a minute to the hour; a minute that leaves it (or is older) goes to the day.
    fn add_bucket(&mut self, b: &Bucket) {
        for old in add_to_ring(&mut self.minutes, b, MINUTES) {
            add_to_ring(&mut self.spans, &span_of(&old), SPANS);
        }
    }

    /// Adds `delta` into these totals.
    #[inline(never)]
    fn merge(&mut self, delta: &Totals) {
        self.all.add(&delta.all);
        self.response_ms_sum = self.response_ms_sum.saturating_add(delta.response_ms_sum);
        self.response_count = self.response_count.saturating_add(delta.response_count);
        if delta.since_ms != 0 && (self.since_ms == 0 || delta.since_ms < self.since_ms) {
            self.since_ms = delta.since_ms;
        }
        for (k, v) in &delta.consumers {
            with_entry(&mut self.consumers, k, |e| e.add(v));
        }
        for (k, v) in &delta.accounts {
            with_entry(&mut self.accounts, k, |e| e.add(v));
        }
        for (k, v) in &delta.models {
            with_entry(&mut self.models, k, |e| e.add(v));
        }
        for b in &delta.minutes {
            self.add_bucket(b);
        }
        for (k, v) in &delta.rejections {
            bump(&mut self.rejections, k, *v);
        }
        for (k, v) in &delta.consumer_rejections {
            bump(&mut self.consumer_rejections, k, *v);
        }
        if !delta.latency.is_empty() {
            if self.latency.len() != LATENCY_BUCKETS {
                self.latency = vec![0; LATENCY_BUCKETS];
            }
            for (mine, theirs) in self.latency.iter_mut().zip(&delta.latency) {
                *mine = mine.saturating_add(*theirs);
            }
        }
        for b in &delta.spans {
            add_to_ring(&mut self.spans, b, SPANS);
        }
    }

    /// Decodes a stored value; anything malformed, truncated, out of bounds or of another
    /// version reads as fresh totals (the analytics start over rather than fail).
    pub fn decode(bytes: &[u8]) -> Totals {
        let mut r = Reader::new(bytes);
        decode_totals(&mut r)
            .filter(|_| r.is_empty())
            .unwrap_or_default()
    }

    /// A compact binary encoding: a version byte, then LEB128 numbers and length-prefixed
    /// names (about 20 bytes per consumer; hand-written because serde costs ~40 KB of wasm).
    #[inline(never)]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64 + 24 * (self.consumers.len() + self.models.len()));
        w.push(VERSION);
        put_consumer(&mut w, &self.all);
        for v in [self.response_ms_sum, self.response_count, self.since_ms] {
            codec::put_varint(&mut w, v);
        }
        codec::put_varint(&mut w, self.consumers.len() as u64);
        for (k, v) in &self.consumers {
            put_name(&mut w, k);
            put_consumer(&mut w, v);
        }
        for map in [&self.accounts, &self.models] {
            codec::put_varint(&mut w, map.len() as u64);
            for (k, v) in map {
                put_name(&mut w, k);
                for x in [v.requests, v.tokens, v.last_ms] {
                    codec::put_varint(&mut w, x);
                }
            }
        }
        put_buckets(&mut w, &self.minutes);
        for map in [&self.rejections, &self.consumer_rejections] {
            codec::put_varint(&mut w, map.len() as u64);
            for (k, v) in map {
                put_name(&mut w, k);
                codec::put_varint(&mut w, *v);
            }
        }
        // Sparse: most buckets stay empty.
        let used = self.latency.iter().filter(|n| **n > 0).count();
        codec::put_varint(&mut w, used as u64);
        for (i, n) in self.latency.iter().enumerate().filter(|(_, n)| **n > 0) {
            codec::put_varint(&mut w, i as u64);
            codec::put_varint(&mut w, *n);
        }
        put_buckets(&mut w, &self.spans);
        w
    }
}

/// The five-minute span holding minute bucket `m`.
fn span_of(m: &Bucket) -> Bucket {
    Bucket {
        minute: m.minute / (SPAN_MS / MINUTE_MS),
        ..*m
    }
}

/// Adds `b` to the ring of `keep` slots (its newest slot and the `keep - 1` before). Returns
/// what no longer fits: the slots that fell out, or `b` itself when it is older than them.
fn add_to_ring(ring: &mut Vec<Bucket>, b: &Bucket, keep: usize) -> Vec<Bucket> {
    if b.minute == 0 {
        return Vec::new();
    }
    // The common case, another request in the newest minute: nothing moves.
    if let Some(last) = ring.last_mut().filter(|l| l.minute == b.minute) {
        last.add(b);
        return Vec::new();
    }
    let keep = keep as u64;
    let newest = ring.iter().map(|x| x.minute).max().unwrap_or(0);
    if b.minute.saturating_add(keep) <= newest {
        return vec![*b]; // older than what is kept already
    }
    match ring.iter_mut().find(|x| x.minute == b.minute) {
        Some(slot) => slot.add(b),
        None => ring.push(*b),
    }
    let newest = newest.max(b.minute);
    let mut old = Vec::new();
    ring.retain(|x| {
        let kept = x.minute.saturating_add(keep) > newest;
        if !kept {
            old.push(*x);
        }
        kept
    });
    ring.sort_unstable_by_key(|x| x.minute);
    old
}

/// The `n` slots ending with `now_slot`, oldest first, missing ones as zeros.
fn ring_view(ring: &[Bucket], now_slot: u64, n: usize) -> Vec<Bucket> {
    (0..n as u64)
        .rev()
        .map(|back| {
            let minute = now_slot.saturating_sub(back);
            ring.iter()
                .find(|b| b.minute == minute && minute != 0)
                .copied()
                .unwrap_or(Bucket {
                    minute,
                    ..Bucket::default()
                })
        })
        .collect()
}

/// Buckets (oldest first) with each slot as the step from the one before, and `rejected` only
/// when not 0 (flagged in the low bit of `requests`): most minutes refuse nothing.
fn put_buckets(w: &mut Vec<u8>, buckets: &[Bucket]) {
    codec::put_varint(w, buckets.len() as u64);
    let mut prev = 0;
    for b in buckets {
        codec::put_varint(w, b.minute.saturating_sub(prev));
        prev = b.minute;
        let flagged = u64::from(b.rejected > 0);
        codec::put_varint(w, b.requests.saturating_mul(2).saturating_add(flagged));
        codec::put_varint(w, b.tokens);
        codec::put_varint(w, b.cost_micros);
        if b.rejected > 0 {
            codec::put_varint(w, b.rejected);
        }
    }
}

fn put_name(w: &mut Vec<u8>, name: &str) {
    let name = cut(name);
    codec::put_varint(w, name.len() as u64);
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
        codec::put_varint(w, v);
    }
}

/// The stored formats' reader: `codec::Reader`, with absent for any fault.
struct Reader<'a> {
    r: codec::Reader<'a>,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            r: codec::Reader::new(bytes),
        }
    }

    fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    fn byte(&mut self) -> Option<u8> {
        self.r.byte().ok()
    }

    fn num(&mut self) -> Option<u64> {
        self.r.varint().ok()
    }

    /// A count of at most `max` entries.
    fn len(&mut self, max: usize) -> Option<usize> {
        usize::try_from(self.num()?).ok().filter(|n| *n <= max)
    }

    fn name(&mut self) -> Option<String> {
        let n = self.len(NAME_CAP)?;
        String::from_utf8(self.r.take(n).ok()?.to_vec()).ok()
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

    fn buckets(&mut self, max: usize) -> Option<Vec<Bucket>> {
        let n = self.len(max)?;
        let mut out = Vec::with_capacity(n);
        let mut minute = 0u64;
        for _ in 0..n {
            minute = minute.checked_add(self.num()?)?;
            let packed = self.num()?;
            let tokens = self.num()?;
            let cost_micros = self.num()?;
            out.push(Bucket {
                minute,
                requests: packed / 2,
                tokens,
                cost_micros,
                rejected: if packed & 1 == 1 { self.num()? } else { 0 },
            });
        }
        Some(out)
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
    t.minutes = r.buckets(MINUTES)?;
    for list in [&mut t.rejections, &mut t.consumer_rejections] {
        for _ in 0..r.len(MAP_CAP + 1)? {
            let k = r.name()?;
            list.push((k, r.num()?));
        }
    }
    let used = r.len(LATENCY_BUCKETS)?;
    if used > 0 {
        t.latency = vec![0; LATENCY_BUCKETS];
        for _ in 0..used {
            let i = r.len(LATENCY_BUCKETS - 1)?;
            *t.latency.get_mut(i)? = r.num()?;
        }
    }
    t.spans = r.buckets(SPANS)?;
    Some(t)
}

/// The count of `name` in a list of [`Totals::rejections`] or
/// [`Totals::consumer_rejections`] (0 when absent).
pub fn count_of(list: &[(String, u64)], name: &str) -> u64 {
    list.iter().find(|(k, _)| k == name).map_or(0, |(_, n)| *n)
}

/// Adds `n` to `name`'s count in `list` (the name cut to `NAME_CAP` bytes; `other` once the
/// list holds `MAP_CAP` names). A list, not a map: it is short, and one more map type costs
/// wasm size.
fn bump(list: &mut Vec<(String, u64)>, name: &str, n: u64) {
    let name = cut(name);
    let key = if list.len() < MAP_CAP || list.iter().any(|(k, _)| k == name) {
        name
    } else {
        OTHER
    };
    match list.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = v.saturating_add(n),
        None => list.push((key.to_owned(), n)),
    }
}

/// Applies `f` to the entry for `name` (cut to `NAME_CAP` bytes), or `other` once the map is
/// full. A name already in the map (nearly every request) costs no allocation.
fn with_entry<V: Default>(map: &mut BTreeMap<String, V>, name: &str, f: impl FnOnce(&mut V)) {
    let name = cut(name);
    let key = if map.len() < MAP_CAP || map.contains_key(name) {
        name
    } else {
        OTHER
    };
    match map.get_mut(key) {
        Some(v) => f(v),
        None => f(map.entry(key.to_owned()).or_default()),
    }
}

/// `to` becomes `name` (cut to `NAME_CAP`), in the buffer it already has.
fn set(to: &mut String, name: &str) {
    to.clear();
    to.push_str(cut(name));
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
    /// The newest requests since the last flush, oldest first (at most [`RECENT`]).
    recent: VecDeque<Recent>,
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

    /// A request that went upstream ended with the upstream's `status`: [`record`] plus an
    /// entry in the recent ring.
    ///
    /// [`record`]: Self::record
    pub fn served(&mut self, fact: &Fact<'_>, status: u16) {
        self.record(fact);
        self.remember(|e| {
            e.at_ms = fact.now_ms;
            set(&mut e.consumer, fact.consumer);
            set(&mut e.model, fact.model_label);
            set(&mut e.account, fact.account.unwrap_or(""));
            e.status = status;
            e.tokens = fact.usage.total();
            e.latency_ms = fact.response_ms;
            set(&mut e.decision, "admitted");
        });
    }

    /// A request tollgate refused itself: counted by reason and consumer, and remembered.
    pub fn rejected(&mut self, r: &Rejection<'_>) {
        self.delta.reject(r);
        self.remember(|e| {
            e.at_ms = r.now_ms;
            set(&mut e.consumer, r.consumer);
            set(&mut e.model, r.model_label);
            set(&mut e.account, "");
            e.status = r.status;
            e.tokens = 0;
            e.latency_ms = r.response_ms;
            set(&mut e.decision, r.reason);
        });
    }

    /// Adds the newest entry to the ring, `fill`ed in. A full ring drops its oldest entry
    /// and reuses its strings, so it allocates nothing.
    fn remember(&mut self, fill: impl FnOnce(&mut Recent)) {
        let mut entry = if self.recent.len() >= RECENT {
            self.recent.pop_front().unwrap_or_default()
        } else {
            Recent::default()
        };
        fill(&mut entry);
        self.recent.push_back(entry);
    }

    /// Nothing recorded since the last flush.
    pub fn is_empty(&self) -> bool {
        self.delta.is_empty() && self.recent.is_empty()
    }

    /// The unflushed delta (tests and debugging).
    pub fn pending(&self) -> &Totals {
        &self.delta
    }

    /// Merges the delta into [`KEY`] and the newest requests into [`RECENT_KEY`], each with a
    /// compare-and-swap loop, and clears what was merged. On failure the rest is kept and
    /// merged by a later flush, so nothing is lost while the store is busy. Costs nothing when
    /// nothing was recorded.
    pub fn flush(&mut self, store: &dyn Store, now_ms: u64) -> Result<(), StoreError> {
        self.last_flush_ms = now_ms;
        self.flush_recent(store)?;
        self.flush_totals(store)
    }

    #[inline(never)]
    fn flush_recent(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        if self.recent.is_empty() {
            return Ok(());
        }
        let recent = &self.recent;
        store::update(store, RECENT_KEY, MAX_TRIES, |old, out| {
            let stored = old.map(decode_recent).unwrap_or_default();
            out.extend_from_slice(&encode_recent(&newest(recent.iter().rev(), stored.iter())));
            Decision::Write(())
        })?;
        self.recent.clear();
        Ok(())
    }

    #[inline(never)]
    fn flush_totals(&mut self, store: &dyn Store) -> Result<(), StoreError> {
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

/// The newest requests of every worker (flushed ones), newest first, at most [`RECENT`]. A
/// missing key, a store error or garbage reads as none.
pub fn load_recent(store: &dyn Store) -> Vec<Recent> {
    match store.get(RECENT_KEY) {
        Ok((Some(v), _)) => decode_recent(&v),
        _ => Vec::new(),
    }
}

/// Creates the analytics keys (totals, recent ring) and the model-label list, so the key set
/// is complete once the configuration loads.
#[inline(never)]
pub fn prepare(store: &dyn Store, cfg: &crate::config::Config) -> Result<(), StoreError> {
    crate::store::ensure(store, KEY, b"-")?;
    crate::store::ensure(store, RECENT_KEY, b"-")?;
    crate::metrics::prepare_models(store, cfg)
}

/// The newest [`RECENT`] of two newest-first lists, newest first; a tie takes `mine` first
/// (a merge, not a sort: both lists are in order already).
fn newest<'r>(
    mine: impl Iterator<Item = &'r Recent>,
    stored: impl Iterator<Item = &'r Recent>,
) -> Vec<&'r Recent> {
    let (mut a, mut b) = (mine.peekable(), stored.peekable());
    let mut out = Vec::with_capacity(RECENT);
    while out.len() < RECENT {
        let take_mine = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.at_ms >= y.at_ms,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_mine { a.next() } else { b.next() };
        out.extend(next);
    }
    out
}

fn encode_recent(entries: &[&Recent]) -> Vec<u8> {
    let mut w = Vec::with_capacity(8 + 48 * entries.len());
    w.push(RECENT_VERSION);
    codec::put_varint(&mut w, entries.len() as u64);
    for e in entries {
        for v in [e.at_ms, u64::from(e.status), e.tokens, e.latency_ms] {
            codec::put_varint(&mut w, v);
        }
        for name in [&e.consumer, &e.model, &e.account, &e.decision] {
            put_name(&mut w, name);
        }
    }
    w
}

/// The stored ring; anything malformed reads as empty.
fn decode_recent(bytes: &[u8]) -> Vec<Recent> {
    let mut r = Reader::new(bytes);
    let mut read = || -> Option<Vec<Recent>> {
        if r.byte()? != RECENT_VERSION {
            return None;
        }
        let n = r.len(RECENT)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(Recent {
                at_ms: r.num()?,
                status: u16::try_from(r.num()?).ok()?,
                tokens: r.num()?,
                latency_ms: r.num()?,
                consumer: r.name()?,
                model: r.name()?,
                account: r.name()?,
                decision: r.name()?,
            });
        }
        r.is_empty().then_some(out)
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests;
