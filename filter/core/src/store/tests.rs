#![cfg(test)]
use super::*;

#[test]
fn fake_lets_any_cas_create_a_missing_key() {
    let s = MemStore::new();
    assert_eq!(s.set("tollgate:k", b"a", 12345), Ok(()));
    let (v, cas) = s.get("tollgate:k").unwrap();
    assert_eq!(v.as_deref(), Some(&b"a"[..]));
    assert_eq!(
        s.set("tollgate:k", b"b", cas + 7),
        Err(StoreError::CasMismatch)
    );
    assert_eq!(s.set("tollgate:k", b"b", cas), Ok(()));
    assert_eq!(s.set("tollgate:k", b"b", cas), Err(StoreError::CasMismatch));
    assert_eq!(s.set("tollgate:k", b"c", 0), Ok(()));
    assert_eq!(s.get("tollgate:k").unwrap().0.as_deref(), Some(&b"c"[..]));
}

#[test]
fn fake_cas_counter_is_process_wide_and_skips_zero() {
    let s = MemStore::with_first_cas(u32::MAX - 1);
    s.set("tollgate:a", b"1", 0).unwrap();
    s.set("tollgate:b", b"1", 0).unwrap();
    s.set("tollgate:c", b"1", 0).unwrap();
    assert_eq!(s.get("tollgate:a").unwrap().1, u32::MAX - 1);
    assert_eq!(s.get("tollgate:b").unwrap().1, u32::MAX);
    assert_eq!(s.get("tollgate:c").unwrap().1, 1);
}

/// The hazard `ensure` exists for: two workers both see a missing key, worker A creates
/// it and updates it, then worker B's naive create wipes A's update.
#[test]
fn naive_creation_loses_an_update_when_workers_interleave() {
    let s = MemStore::new();
    let (b_seen, _) = s.get("tollgate:k").unwrap(); // worker B: missing
    assert!(b_seen.is_none());
    s.set("tollgate:k", b"0", 0).unwrap(); // worker A creates
    let (_, cas) = s.get("tollgate:k").unwrap();
    s.set("tollgate:k", b"1", cas).unwrap(); // worker A charges a request
    s.set("tollgate:k", b"0", 0).unwrap(); // worker B creates: A's charge is gone
    assert_eq!(s.get("tollgate:k").unwrap().0.as_deref(), Some(&b"0"[..]));
}

#[test]
fn ensure_never_overwrites_when_workers_interleave() {
    // Every interleaving of worker B's get/set around worker A's create+update.
    for b_get_at in 0..3 {
        for b_set_at in b_get_at..3 {
            let s = MemStore::new();
            let mut b_cas = None;
            for step in 0..=3 {
                if step == b_get_at {
                    b_cas = Some(s.get("tollgate:k").unwrap());
                }
                if step == b_set_at {
                    // worker B's half of `ensure`, from what it read.
                    if let Some((None, 0)) = b_cas.take() {
                        let r = s.set("tollgate:k", b"0", CREATE_CAS);
                        assert!(matches!(r, Ok(()) | Err(StoreError::CasMismatch)));
                    }
                }
                match step {
                    0 => {
                        ensure(&s, "tollgate:k", b"0").unwrap();
                    }
                    1 => {
                        let (_, cas) = s.get("tollgate:k").unwrap();
                        s.set("tollgate:k", b"1", write_cas(cas)).unwrap();
                    }
                    _ => {}
                }
            }
            assert_eq!(
                s.get("tollgate:k").unwrap().0.as_deref(),
                Some(&b"1"[..]),
                "B get at {b_get_at}, set at {b_set_at}"
            );
        }
    }
}

#[test]
fn ensure_creates_once_and_reports_it() {
    let s = MemStore::new();
    assert_eq!(ensure(&s, "tollgate:k", b"x"), Ok(true));
    assert_eq!(ensure(&s, "tollgate:k", b"y"), Ok(false));
    assert_eq!(s.get("tollgate:k").unwrap().0.as_deref(), Some(&b"x"[..]));
}

#[test]
fn slot_table_maps_names_to_two_distinct_slots_within_bounds() {
    let t = SlotTable::new("tollgate:q:d:", 8);
    for name in ["a", "team-b", "", "ünïcode", "x".repeat(300).as_str()] {
        let [a, b] = t.slots(name);
        assert!(a < 8 && b < 8 && a != b, "{name}");
        assert_eq!(t.slots(name), [a, b]);
    }
    assert_eq!(SlotTable::new("tollgate:x:", 1).slots("n"), [0, 0]);
    assert_eq!(t.keys().count(), 8);
    assert_eq!(t.key(3), "tollgate:q:d:3");
    assert_ne!(owner_tag(""), 0);
}

#[test]
fn fnv_maps_find_what_was_put() {
    let mut m: FnvMap<String, u32> = FnvMap::default();
    let mut d: FnvMap<u64, u32> = FnvMap::default();
    for i in 0..1000u32 {
        m.insert(format!("tollgate_metric_{i}"), i);
        d.insert(crate::metrics::key("m", &[("i", &i.to_string())]), i);
    }
    for i in 0..1000u32 {
        assert_eq!(m.get(&format!("tollgate_metric_{i}")), Some(&i));
        assert_eq!(
            d.get(&crate::metrics::key("m", &[("i", &i.to_string())])),
            Some(&i)
        );
    }
    assert_eq!(m.get("tollgate_metric_1000"), None);
}

/// A store on which a rival worker writes the key just before each of the first `losses`
/// writes, so each of them loses its race; `fail` makes every write a host error instead.
struct Rival<'a> {
    inner: &'a MemStore,
    losses: std::cell::Cell<u32>,
    fail: Option<StoreError>,
}

impl<'a> Rival<'a> {
    fn new(inner: &'a MemStore, losses: u32, fail: Option<StoreError>) -> Rival<'a> {
        Rival {
            inner,
            losses: std::cell::Cell::new(losses),
            fail,
        }
    }
}

impl Store for Rival<'_> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some(e) = self.fail {
            return Err(e);
        }
        if self.losses.get() > 0 {
            self.losses.set(self.losses.get() - 1);
            let (old, _) = self.inner.get(key)?;
            let n = old.map_or(0, |v| v.len());
            self.inner.set(key, &vec![b'r'; n + 1], 0)?;
        }
        self.inner.set(key, value, cas)
    }
}

/// Appends `x` to whatever the key holds: each landed write adds one byte.
fn append_x(store: &dyn Store, tries: u32) -> Result<usize, StoreError> {
    update(store, "tollgate:k", tries, |old, out| {
        out.extend_from_slice(old.unwrap_or_default());
        out.push(b'x');
        Decision::Write(out.len())
    })
}

#[test]
fn update_retries_each_lost_race_on_the_newer_value_up_to_its_bound() {
    // (races lost, tries allowed, outcome, bytes stored: rivals' writes and ours)
    for (losses, tries, outcome, stored) in [
        (0, 1, Ok(1), 1),
        (1, 2, Ok(2), 2),
        (15, MAX_TRIES, Ok(16), 16),
        (16, MAX_TRIES, Err(StoreError::Contended), 16),
        (1, 1, Err(StoreError::Contended), 1),
        (1023, 1024, Ok(1024), 1024),
        (3, 0, Err(StoreError::Contended), 0),
    ] {
        let mem = MemStore::new();
        let rival = Rival::new(&mem, losses, None);
        assert_eq!(
            append_x(&rival, tries),
            outcome,
            "{losses} losses, {tries} tries"
        );
        let (value, _) = mem.get("tollgate:k").unwrap();
        assert_eq!(
            value.map_or(0, |v| v.len()),
            stored,
            "{losses} losses, {tries} tries"
        );
    }
}

#[test]
fn update_that_keeps_the_value_writes_nothing() {
    let mem = MemStore::new();
    mem.set("tollgate:k", b"abc", 0).unwrap();
    let before = mem.round_trips();
    let seen = update(&mem, "tollgate:k", MAX_TRIES, |old, _| {
        Decision::Keep(old.map(<[u8]>::to_vec))
    });
    assert_eq!(seen, Ok(Some(b"abc".to_vec())));
    assert_eq!(mem.round_trips(), (before.0 + 1, before.1));
}

#[test]
fn update_creates_a_missing_key_so_that_a_second_creator_retries_on_top() {
    let mem = MemStore::new();
    // Both workers read "missing"; the rival creates the key between our read and write.
    let rival = Rival::new(&mem, 1, None);
    assert_eq!(append_x(&rival, MAX_TRIES), Ok(2));
    let (value, _) = mem.get("tollgate:k").unwrap();
    assert_eq!(value.as_deref(), Some(&b"rx"[..]));
}

#[test]
fn update_passes_a_host_error_on_at_once() {
    let mem = MemStore::new();
    let failing = Rival::new(&mem, 0, Some(StoreError::Host(7)));
    let mut rounds = 0;
    let r = update(&failing, "tollgate:k", MAX_TRIES, |_, out| {
        rounds += 1;
        out.push(1);
        Decision::Write(())
    });
    assert_eq!(r, Err(StoreError::Host(7)));
    assert_eq!(rounds, 1);
}

#[test]
fn retry_writes_to_the_key_each_round_chose() {
    let mem = MemStore::new();
    mem.set("tollgate:a", b"full", 0).unwrap();
    let r = retry(&mem, MAX_TRIES, |out| {
        // Choose the first key that is still missing, as a slot lookup would.
        for key in ["tollgate:a", "tollgate:b"] {
            let (value, cas) = mem.get(key)?;
            if value.is_none() {
                out.extend_from_slice(b"mine");
                return Ok(Round {
                    key,
                    cas,
                    decision: Decision::Write(key),
                });
            }
        }
        Ok(Round {
            key: "",
            cas: 0,
            decision: Decision::Keep(""),
        })
    });
    assert_eq!(r, Ok("tollgate:b"));
    assert_eq!(
        mem.get("tollgate:b").unwrap().0.as_deref(),
        Some(&b"mine"[..])
    );
    assert_eq!(
        mem.get("tollgate:a").unwrap().0.as_deref(),
        Some(&b"full"[..])
    );
}
