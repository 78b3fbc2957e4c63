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
    });
    t.add_bucket(&Bucket {
        minute: 1000,
        requests: 7,
        tokens: 0,
        cost_micros: 0,
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
