#![cfg(test)]
use super::*;
use crate::store::MemStore;
use std::cell::Cell;

const NOW: u64 = 1_714_564_830_000; // 2024-05-01T12:00:30Z

fn fact<'a>(consumer: &'a str, model: &'a str, account: Option<&'a str>, now_ms: u64) -> Fact<'a> {
    Fact {
        consumer,
        model_label: model,
        account,
        usage: Usage {
            input: 100,
            cache_read: 10,
            cache_write: 5,
            output: 20,
        },
        cost_micros: 208,
        response_ms: 40,
        ok: true,
        now_ms,
    }
}

/// A store whose writes fail with a scripted error a number of times first.
struct Flaky {
    inner: MemStore,
    fail: Cell<u32>,
    err: StoreError,
}

impl Store for Flaky {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.fail.get() > 0 {
            self.fail.set(self.fail.get() - 1);
            return Err(self.err);
        }
        self.inner.set(key, value, cas)
    }
}

/// A store where another worker writes between every `get` and `set` of ours, `races` times.
struct Racy {
    inner: MemStore,
    races: Cell<u32>,
}

impl Store for Racy {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        let r = self.inner.get(key);
        if self.races.get() > 0 {
            self.races.set(self.races.get() - 1);
            let mut other = Accumulator::new();
            other.record(&fact("rival", "gpt-4o*", None, NOW));
            other.flush(&self.inner, NOW)?;
        }
        r
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
}

#[test]
fn records_facts_in_memory_and_flushes_them_into_one_key() {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    acc.record(&fact("team-a", "claude-haiku-*", Some("org-1"), NOW));
    acc.record(&Fact {
        ok: false,
        response_ms: 60,
        ..fact("team-a", "claude-haiku-*", Some("org-1"), NOW + 1)
    });
    acc.record(&fact("team-b", "gpt-4o-mini", Some("org-2"), NOW + 2));
    assert_eq!(
        store.round_trips(),
        (0, 0),
        "record never touches the store"
    );
    acc.flush(&store, NOW + 3).unwrap();
    assert!(acc.is_empty());
    assert_eq!(store.len(), 1);

    let t = load(&store);
    assert_eq!(t.all.requests, 3);
    assert_eq!(t.all.errors, 1);
    assert_eq!(t.total_tokens(), 3 * 135);
    assert_eq!(t.all.cost_micros, 3 * 208);
    assert_eq!(t.average_response_ms(), Some(140.0 / 3.0));
    assert_eq!(t.since_ms, NOW);
    let a = t.consumers.get("team-a").copied().unwrap_or_default();
    assert_eq!(
        (
            a.requests,
            a.errors,
            a.input,
            a.output,
            a.cache_read,
            a.cache_write,
            a.cost_micros
        ),
        (2, 1, 200, 40, 20, 10, 416)
    );
    assert_eq!(
        t.accounts.get("org-2").map(|c| (c.requests, c.tokens)),
        Some((1, 135))
    );
    assert_eq!(t.accounts.get("org-1").map(|c| c.last_ms), Some(NOW + 1));
    assert_eq!(t.models.get("claude-haiku-*").map(|c| c.requests), Some(2));
    let hour = t.last_hour_sum(NOW + 3);
    assert_eq!(
        (hour.requests, hour.tokens, hour.cost_micros),
        (3, 405, 624)
    );
}

#[test]
fn workers_flushing_in_turn_add_up() {
    let store = MemStore::new();
    let mut w1 = Accumulator::new();
    let mut w2 = Accumulator::new();
    for i in 0..5 {
        w1.record(&fact("team-a", "m", None, NOW + i));
        w2.record(&fact("team-a", "m", None, NOW + i));
        w2.record(&fact("team-b", "m", None, NOW + i));
        // Interleaved flushes: each merges on top of the other's.
        w1.flush(&store, NOW + i).unwrap();
        w2.flush(&store, NOW + i).unwrap();
    }
    let t = load(&store);
    assert_eq!(t.all.requests, 15);
    assert_eq!(t.consumers.get("team-a").map(|c| c.requests), Some(10));
    assert_eq!(t.consumers.get("team-b").map(|c| c.requests), Some(5));
    assert_eq!(t.models.get("m").map(|c| c.requests), Some(15));
}

#[test]
fn a_lost_race_retries_on_top_of_the_winner() {
    let store = Racy {
        inner: MemStore::new(),
        races: Cell::new(3),
    };
    let mut acc = Accumulator::new();
    acc.record(&fact("team-a", "m", None, NOW));
    acc.flush(&store, NOW).unwrap();
    let t = load(&store.inner);
    assert_eq!(t.all.requests, 4, "3 rival flushes + ours");
    assert_eq!(t.consumers.get("rival").map(|c| c.requests), Some(3));
    assert_eq!(t.consumers.get("team-a").map(|c| c.requests), Some(1));
}

#[test]
fn keeps_the_delta_when_a_flush_fails_and_merges_it_later() {
    for (err, fails, expect) in [
        (StoreError::Host(2), 1, StoreError::Host(2)),
        (StoreError::CasMismatch, MAX_TRIES, StoreError::Contended),
    ] {
        let store = Flaky {
            inner: MemStore::new(),
            fail: Cell::new(fails),
            err,
        };
        let mut acc = Accumulator::new();
        acc.record(&fact("team-a", "m", None, NOW));
        assert_eq!(acc.flush(&store, NOW), Err(expect));
        assert!(!acc.is_empty());
        acc.record(&fact("team-a", "m", None, NOW + 1));
        acc.flush(&store, NOW + 1).unwrap();
        assert!(acc.is_empty());
        assert_eq!(load(&store.inner).all.requests, 2);
    }
}

#[test]
fn flushes_at_most_once_per_interval_and_never_when_empty() {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    acc.flush_if_due(&store, NOW).unwrap();
    assert_eq!(store.round_trips(), (0, 0), "an empty delta costs nothing");
    acc.record(&fact("team-a", "m", None, NOW));
    acc.flush_if_due(&store, NOW + 500).unwrap();
    assert!(!acc.is_empty(), "not due yet");
    acc.flush_if_due(&store, NOW + FLUSH_EVERY_MS).unwrap();
    assert!(acc.is_empty());
    assert_eq!(store.round_trips(), (1, 1));
}

#[test]
fn the_hour_ring_keeps_sixty_minutes_and_forgets_older_ones() {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    let t0 = (NOW / MINUTE_MS) * MINUTE_MS;
    // One request per minute for 90 minutes, flushed every 7 minutes.
    for m in 0..90u64 {
        acc.record(&fact("team-a", "m", None, t0 + m * MINUTE_MS + 5));
        if m % 7 == 6 {
            acc.flush(&store, t0 + m * MINUTE_MS).unwrap();
        }
    }
    acc.flush(&store, t0 + 89 * MINUTE_MS).unwrap();
    let t = load(&store);
    let now = t0 + 89 * MINUTE_MS + 30_000;
    let hour = t.last_hour(now);
    assert_eq!(hour.len(), MINUTES);
    assert_eq!(hour.first().map(|b| b.minute), Some(t0 / MINUTE_MS + 30));
    assert_eq!(hour.last().map(|b| b.minute), Some(now / MINUTE_MS));
    assert!(hour.iter().all(|b| b.requests == 1));
    assert_eq!(t.last_hour_sum(now).requests, 60);
    assert_eq!(t.all.requests, 90);
    // Ten minutes of silence later, only 50 of those minutes are in the last hour.
    assert_eq!(t.last_hour_sum(now + 10 * MINUTE_MS).requests, 50);
    assert_eq!(t.last_hour_sum(now + 2 * 3_600_000).requests, 0);
}

#[test]
fn a_stale_delta_minute_never_overwrites_a_newer_one() {
    let mut t = Totals::default();
    t.add_bucket(&Bucket {
        minute: 1000 + 60,
        requests: 5,
        tokens: 0,
        cost_micros: 0,
        rejected: 0,
    });
    t.add_bucket(&Bucket {
        minute: 1000,
        requests: 7,
        tokens: 0,
        cost_micros: 0,
        rejected: 0,
    });
    assert_eq!(t.last_hour_sum(1060 * MINUTE_MS).requests, 5);
}

#[test]
fn names_beyond_the_cap_fold_into_other_and_long_names_are_cut() {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    let names: Vec<String> = (0..MAP_CAP + 10).map(|i| format!("c{i}")).collect();
    for n in &names {
        acc.record(&fact(n, n, Some(n), NOW));
    }
    assert_eq!(acc.pending().consumers.len(), MAP_CAP + 1);
    acc.flush(&store, NOW).unwrap();
    // A second worker with other names: the stored map stays bounded as well.
    let mut w2 = Accumulator::new();
    for i in 0..50 {
        w2.record(&fact(&format!("z{i}"), "m", None, NOW));
    }
    w2.flush(&store, NOW).unwrap();
    let t = load(&store);
    assert_eq!(t.all.requests, (MAP_CAP + 60) as u64);
    assert_eq!(t.consumers.len(), MAP_CAP + 1);
    assert_eq!(t.models.len(), MAP_CAP + 1);
    assert_eq!(t.accounts.len(), MAP_CAP + 1);
    assert_eq!(t.consumers.get(OTHER).map(|c| c.requests), Some(60));
    let sum: u64 = t.consumers.values().map(|c| c.requests).sum();
    assert_eq!(sum, t.all.requests, "folding loses nothing");

    let long = "é".repeat(100); // 200 bytes
    let mut acc = Accumulator::new();
    acc.record(&fact(&long, "m", None, NOW));
    let key = acc
        .pending()
        .consumers
        .keys()
        .next()
        .cloned()
        .unwrap_or_default();
    assert_eq!(key.len(), NAME_CAP);
}

fn sample() -> Totals {
    let mut acc = Accumulator::new();
    acc.record(&fact("team-a", "claude-haiku-*", Some("org-1"), NOW));
    acc.record(&fact("ünï", "gpt-4o-mini", None, NOW + MINUTE_MS));
    acc.record(&Fact {
        usage: Usage {
            input: u64::MAX,
            ..Usage::default()
        },
        ..fact("team-a", "m", Some("org-2"), NOW)
    });
    acc.pending().clone()
}

#[test]
fn garbage_truncation_or_another_version_reads_as_fresh_totals() {
    let good = sample().encode();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut huge_count = vec![VERSION];
    huge_count.extend_from_slice(&[0; 10]); // all, response sums, since
    huge_count.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // consumers: 2^32-1
    for bad in [
        &b"not json"[..],
        b"{\"v\":1}",
        b"",
        &[VERSION][..],
        &[
            VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ][..],
        &trailing,
        &huge_count,
    ] {
        assert_eq!(Totals::decode(bad), Totals::default(), "{bad:?}");
    }
    for cut in 0..good.len() {
        assert_eq!(
            Totals::decode(&good[..cut]),
            Totals::default(),
            "cut at {cut}"
        );
    }
    let store = MemStore::new();
    store.set(KEY, b"\xff\xfe garbage", 0).unwrap();
    assert!(load(&store).is_empty());
    let mut acc = Accumulator::new();
    acc.record(&fact("team-a", "m", None, NOW));
    acc.flush(&store, NOW).unwrap();
    assert_eq!(load(&store).all.requests, 1, "a flush replaces garbage");
}

#[test]
fn encoding_round_trips_and_stays_compact() {
    let t = sample();
    let bytes = t.encode();
    assert_eq!(Totals::decode(&bytes), t);
    assert!(bytes.len() < 200, "{} bytes", bytes.len());
    assert_eq!(
        Totals::decode(&Totals::default().encode()),
        Totals::default()
    );
}

#[test]
fn ranks_top_models_by_requests_then_tokens_then_name() {
    let mut t = Totals::default();
    for (m, n) in [
        ("a", 1),
        ("b", 3),
        ("c", 3),
        ("d", 2),
        ("e", 5),
        ("f", 1),
        ("g", 4),
    ] {
        for _ in 0..n {
            t.record(&fact("x", m, None, NOW));
        }
    }
    let top: Vec<&str> = t.top_models(5).iter().map(|(m, _)| *m).collect();
    assert_eq!(top, ["e", "g", "b", "c", "d"]);
}

#[test]
fn counts_accounts_active_in_a_span() {
    let mut t = Totals::default();
    t.record(&fact("x", "m", Some("old"), NOW - 2 * 3_600_000));
    t.record(&fact("x", "m", Some("new"), NOW));
    t.record(&fact("x", "m", None, NOW));
    assert_eq!(t.accounts_active_since(NOW - 3_600_000), 1);
    assert_eq!(t.accounts_active_since(0), 2);
}

// ---------------------------------------------------------------------------------------------
// Rejections, latency, the last day and the recent ring
// ---------------------------------------------------------------------------------------------

fn rejection<'a>(consumer: &'a str, reason: &'a str, now_ms: u64) -> Rejection<'a> {
    Rejection {
        consumer,
        model_label: "other",
        reason,
        status: 429,
        response_ms: 2,
        now_ms,
    }
}

#[test]
fn rejections_count_by_reason_and_consumer_beside_what_went_upstream() {
    let store = MemStore::new();
    let (mut w1, mut w2) = (Accumulator::new(), Accumulator::new());
    w1.served(&fact("team-a", "claude-haiku-4-5", Some("org-1"), NOW), 200);
    for _ in 0..3 {
        w1.rejected(&rejection("team-a", "tokens", NOW));
    }
    w2.rejected(&rejection("unknown", "auth", NOW + 1));
    w2.rejected(&rejection("team-b", "tokens", NOW + 2));
    // A worker that only refused still flushes.
    assert!(!w2.is_empty());
    w1.flush(&store, NOW + 3).unwrap();
    w2.flush(&store, NOW + 3).unwrap();
    let t = load(&store);
    assert_eq!(
        t.all.requests, 1,
        "refusals are not requests that went upstream"
    );
    assert_eq!(t.rejected(), 5);
    assert_eq!(count_of(&t.rejections, "tokens"), 4);
    assert_eq!(count_of(&t.rejections, "auth"), 1);
    assert_eq!(count_of(&t.consumer_rejections, "team-a"), 3);
    assert_eq!(count_of(&t.consumer_rejections, "unknown"), 1);
    assert_eq!(count_of(&t.consumer_rejections, "nobody"), 0);
    assert_eq!(
        t.response_count, 1,
        "a refusal has no response time of the upstream"
    );
    let hour = t.last_hour_sum(NOW + 3);
    assert_eq!((hour.requests, hour.rejected), (1, 5));
    let day: Vec<Bucket> = t
        .last_day(NOW + 3)
        .into_iter()
        .filter(|b| b.rejected > 0)
        .collect();
    assert_eq!(day.len(), 1);
    assert_eq!((day[0].requests, day[0].rejected), (1, 5));
    assert_eq!(t.since_ms, NOW);
}

#[test]
fn latency_buckets_are_ordered_and_at_most_a_quarter_wide() {
    let mut last = 0;
    let mut ms = 0u64;
    while ms < 4_000_000 {
        let b = latency_bucket(ms);
        assert!(b >= last, "{ms}");
        assert!(b < LATENCY_BUCKETS);
        assert!(latency_floor(b) <= ms, "{ms} below its bucket's floor");
        if b + 1 < LATENCY_BUCKETS {
            let next = latency_floor(b + 1);
            assert!(ms < next, "{ms} not below the next floor {next}");
            // Buckets of 4 ms and up are at most a quarter of their floor wide.
            if ms >= 4 {
                assert!((next - latency_floor(b)) * 4 <= latency_floor(b), "{ms}");
            }
        }
        last = b;
        ms = if ms < 5_000 { ms + 1 } else { ms + ms / 97 };
    }
    assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
}

#[test]
fn percentiles_come_from_the_histogram_within_an_eighth() {
    let mut acc = Accumulator::new();
    assert_eq!(acc.pending().latency_quantile(0.5), None);
    for ms in 1..=1000u64 {
        acc.record(&Fact {
            response_ms: ms,
            ..fact("team-a", "m", None, NOW)
        });
    }
    let t = acc.pending();
    for (q, truth) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
        let got = t.latency_quantile(q).unwrap_or(0) as f64;
        assert!(
            (got - truth).abs() <= truth / 8.0,
            "p{q}: {got} for {truth}"
        );
    }
    // One slow outlier among fast requests shows in p99 only.
    let mut acc = Accumulator::new();
    for i in 0..100u64 {
        let ms = if i == 99 { 30_000 } else { 20 };
        acc.record(&Fact {
            response_ms: ms,
            ..fact("team-a", "m", None, NOW)
        });
    }
    let t = acc.pending();
    assert!(t.latency_quantile(0.5).unwrap_or(0).abs_diff(20) <= 3);
    assert!(t.latency_quantile(0.99).unwrap_or(0) <= 25);
    assert!(t.latency_quantile(1.0).unwrap_or(0) >= 26_000);
}

#[test]
fn the_day_keeps_288_five_minute_spans() {
    let store = MemStore::new();
    let mut acc = Accumulator::new();
    let t0 = (NOW / SPAN_MS) * SPAN_MS;
    // One request per five minutes for 25 hours, flushed every hour.
    for k in 0..300u64 {
        acc.record(&fact("team-a", "m", None, t0 + k * SPAN_MS + 7));
        if k % 12 == 11 {
            acc.flush(&store, t0 + k * SPAN_MS).unwrap();
        }
    }
    acc.flush(&store, t0 + 299 * SPAN_MS).unwrap();
    let t = load(&store);
    assert!(t.spans.len() <= SPANS);
    let now = t0 + 299 * SPAN_MS + 1;
    let day = t.last_day(now);
    assert_eq!(day.len(), SPANS);
    assert_eq!(day.last().map(|b| b.minute), Some(now / SPAN_MS));
    assert!(day.iter().all(|b| b.requests == 1));
    // An hour later, the oldest twelve spans have left the day.
    let later = t.last_day(now + 3_600_000);
    assert_eq!(
        later.iter().map(|b| b.requests).sum::<u64>(),
        (SPANS - 12) as u64
    );
}

/// The ring entry of `fact("team-a", "claude-haiku-4-5", Some("org-1"), at_ms)` served 200.
fn served_by_org_1(at_ms: u64) -> Recent {
    Recent {
        at_ms,
        consumer: "team-a".into(),
        model: "claude-haiku-4-5".into(),
        account: "org-1".into(),
        status: 200,
        tokens: 135,
        latency_ms: 40,
        decision: "admitted".into(),
    }
}

#[test]
fn the_recent_ring_holds_the_newest_requests_of_every_worker_newest_first() {
    let store = MemStore::new();
    let (mut w1, mut w2) = (Accumulator::new(), Accumulator::new());
    for i in 0..40u64 {
        w1.served(
            &fact("team-a", "claude-haiku-4-5", Some("org-1"), NOW + 2 * i),
            200,
        );
        w2.rejected(&rejection("team-b", "requests", NOW + 2 * i + 1));
    }
    w1.flush(&store, NOW + 100).unwrap();
    w2.flush(&store, NOW + 100).unwrap();
    let recent = load_recent(&store);
    assert_eq!(recent.len(), RECENT);
    let times: Vec<u64> = recent.iter().map(|r| r.at_ms).collect();
    let want: Vec<u64> = (0..RECENT as u64).map(|k| NOW + 79 - k).collect();
    assert_eq!(times, want);
    assert_eq!(
        recent[0],
        Recent {
            at_ms: NOW + 79,
            consumer: "team-b".into(),
            model: "other".into(),
            account: String::new(),
            status: 429,
            tokens: 0,
            latency_ms: 2,
            decision: "requests".into(),
        }
    );
    assert_eq!(recent[1], served_by_org_1(NOW + 78));
    // A worker's own ring is bounded between flushes too.
    let mut w = Accumulator::new();
    for i in 0..1000 {
        w.rejected(&rejection("x", "auth", NOW + i));
    }
    w.flush(&store, NOW + 2000).unwrap();
    let recent = load_recent(&store);
    assert_eq!(recent.len(), RECENT);
    assert_eq!(recent[0].at_ms, NOW + 999);
}

#[test]
fn a_full_ring_reuses_its_oldest_entries_and_keeps_nothing_of_them() {
    // Served entries with long names, then refusals with short ones into the same slots: a
    // reused entry must carry only its new request (no tail of an older, longer name, no
    // account or tokens of a served one).
    let store = MemStore::new();
    let mut w = Accumulator::new();
    // Multibyte and over `NAME_CAP`: a reused entry holds the cut name, then a short one.
    let long = "é-consumer-".repeat(20);
    for i in 0..RECENT as u64 {
        w.served(&fact(&long, &long, Some(&long), NOW + i), 200);
    }
    assert!(w.recent.iter().all(|r| r.consumer.len() <= NAME_CAP));
    for i in 0..(RECENT as u64 + 3) {
        w.rejected(&rejection("b", "auth", NOW + 100 + i));
    }
    // The worker's own ring stays bounded between flushes.
    assert_eq!(w.recent.len(), RECENT);
    w.flush(&store, NOW + 1000).unwrap();
    let recent = load_recent(&store);
    assert_eq!(recent.len(), RECENT);
    assert_eq!(recent[0].at_ms, NOW + 100 + RECENT as u64 + 2);
    assert_eq!(recent[RECENT - 1].at_ms, NOW + 103);
    for r in &recent {
        assert_eq!(
            (r.consumer.as_str(), r.model.as_str(), r.account.as_str()),
            ("b", "other", "")
        );
        assert_eq!((r.status, r.tokens, r.decision.as_str()), (429, 0, "auth"));
    }
    // And the other way: short names first, then served entries that reuse them.
    let mut w = Accumulator::new();
    for i in 0..(2 * RECENT as u64) {
        w.rejected(&rejection("b", "auth", NOW + i));
    }
    for i in 0..RECENT as u64 {
        w.served(
            &fact("team-a", "claude-haiku-4-5", Some("org-1"), NOW + 500 + i),
            200,
        );
    }
    w.flush(&store, NOW + 2000).unwrap();
    let newest = load_recent(&store);
    assert_eq!(newest[0], served_by_org_1(NOW + 500 + RECENT as u64 - 1));
}

#[test]
fn the_recent_ring_reads_garbage_as_empty_and_cuts_long_names() {
    let store = MemStore::new();
    assert!(load_recent(&store).is_empty());
    store.set(RECENT_KEY, b"-", 0).unwrap();
    assert!(load_recent(&store).is_empty());
    let mut w = Accumulator::new();
    let long = "é".repeat(100);
    w.served(&fact(&long, &long, Some(&long), NOW), 200);
    w.flush(&store, NOW).unwrap();
    let (good, _) = store.get(RECENT_KEY).unwrap();
    let good = good.unwrap();
    let r = load_recent(&store);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].consumer.len(), NAME_CAP);
    for cut in 0..good.len() {
        store.set(RECENT_KEY, &good[..cut], 0).unwrap();
        assert!(load_recent(&store).is_empty(), "cut at {cut}");
    }
    let mut more = good.clone();
    more.push(0);
    store.set(RECENT_KEY, &more, 0).unwrap();
    assert!(load_recent(&store).is_empty());
}

#[test]
fn rejections_latency_and_spans_round_trip_in_the_encoding() {
    let mut acc = Accumulator::new();
    acc.served(&fact("team-a", "m", Some("org-1"), NOW), 200);
    acc.rejected(&rejection("team-a", "tokens", NOW + SPAN_MS));
    acc.rejected(&rejection("unknown", "auth", NOW + SPAN_MS));
    let t = acc.pending().clone();
    assert_eq!(Totals::decode(&t.encode()), t);
    let day = t.last_day(NOW + SPAN_MS);
    let used: Vec<(u64, u64)> = day
        .iter()
        .filter(|b| b.requests + b.rejected > 0)
        .map(|b| (b.requests, b.rejected))
        .collect();
    assert_eq!(used, [(1, 0), (0, 2)]);
    // Minutes that left the hour live on in the day's spans, and round-trip there too.
    let mut old = acc.pending().clone();
    old.add_bucket(&Bucket {
        minute: (NOW + 2 * 3_600_000) / MINUTE_MS,
        requests: 1,
        ..Bucket::default()
    });
    assert_eq!(old.spans.len(), 2);
    assert_eq!(Totals::decode(&old.encode()), old);
    // A latency bucket index out of range is garbage.
    let mut bytes = Totals::default().encode();
    bytes.truncate(bytes.len() - 2); // the latency count and the spans count
    bytes.extend_from_slice(&[1, LATENCY_BUCKETS as u8, 1, 0]);
    assert_eq!(Totals::decode(&bytes), Totals::default());
}

#[test]
fn preparing_creates_the_keys_at_load_and_a_reload_keeps_what_was_counted() {
    let store = MemStore::new();
    let cfg = crate::config::Config::default();
    prepare(&store, &cfg).unwrap();
    assert_eq!(store.len(), 3, "totals, recent ring, model labels");
    let mut acc = Accumulator::new();
    acc.rejected(&rejection("team-a", "auth", NOW));
    acc.flush(&store, NOW).unwrap();
    prepare(&store, &cfg).unwrap();
    assert_eq!(load(&store).rejected(), 1);
    assert_eq!(load_recent(&store).len(), 1);
}
