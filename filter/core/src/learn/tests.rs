#![cfg(test)]
use super::*;
use crate::store::MemStore;

#[test]
fn converges_on_a_steady_bias() {
    let store = MemStore::new();
    let t = table();
    assert_eq!(lookup(&store, &t, "m"), None);
    for _ in 0..10 {
        observe(&store, &t, "m", 1300, 1000).unwrap();
    }
    let r = lookup(&store, &t, "m").unwrap();
    assert!((r - 1.3).abs() < 1e-9, "{r}");
    assert_eq!(apply(1000, r), 1300);
}

#[test]
fn weights_new_observations_after_the_first_few() {
    let mut r = update(None, 1, 1000, 1000).unwrap();
    assert_eq!(r.ratio, 1.0);
    for _ in 0..20 {
        r = update(Some(r), 1, 2000, 1000).unwrap();
    }
    assert!((r.ratio - 2.0).abs() < 0.01, "{}", r.ratio);
}

#[test]
fn ignores_empty_observations_and_clamps_outliers() {
    assert_eq!(update(None, 1, 0, 10), None);
    assert_eq!(update(None, 1, 10, 0), None);
    assert_eq!(update(None, 1, 1_000_000, 1).unwrap().ratio, MAX_RATIO);
    assert_eq!(apply(100, f64::NAN), 100);
}

#[test]
fn queued_observations_give_the_ratio_of_observing_one_by_one() {
    let (one, queued) = (MemStore::new(), MemStore::new());
    let t = table();
    let obs = [
        (1000, 1000),
        (1300, 1000),
        (900, 1000),
        (2000, 1000),
        (1100, 1000),
    ];
    let mut p = Pending::default();
    for &(real, est) in &obs {
        observe(&one, &t, "m", real, est).unwrap();
        assert!(p.push("m", real, est));
    }
    assert!(p.push("other", 500, 1000));
    assert_eq!(
        queued.round_trips(),
        (0, 0),
        "nothing is written before the flush"
    );
    assert_eq!(p.flush(&queued, &t), 0);
    assert_eq!(
        queued.round_trips(),
        (2, 2),
        "one read and one write per model"
    );
    assert!(p.is_empty());
    assert_eq!(lookup(&queued, &t, "m"), lookup(&one, &t, "m"));
    assert_eq!(lookup(&queued, &t, "other"), Some(0.5));
}

#[test]
fn the_queue_is_bounded() {
    let mut p = Pending::default();
    for i in 0..Pending::MODELS {
        assert!(p.push(&format!("m{i}"), 1, 1));
    }
    assert!(!p.push("one-more-model", 1, 1));
    // A model's queue keeps its newest observations.
    for i in 0..2 * Pending::PER_MODEL as u64 {
        assert!(p.push("m0", 1000 + i, 1000));
    }
    let (_, obs) = p.models.iter().find(|(m, _)| m == "m0").unwrap();
    assert_eq!(obs.len(), Pending::PER_MODEL);
    assert_eq!(
        obs.last(),
        Some(&(1000 + 2 * Pending::PER_MODEL as u64 - 1, 1000))
    );
}

#[test]
fn a_full_queue_gives_the_ratio_of_every_observation() {
    let (one, queued) = (MemStore::new(), MemStore::new());
    let t = table();
    let mut p = Pending::default();
    for i in 0..1000u64 {
        let real = 900 + (i * 37) % 400;
        observe(&one, &t, "m", real, 1000).unwrap();
        p.push("m", real, 1000);
    }
    observe(&queued, &t, "m", 1000, 1000).unwrap();
    p.flush(&queued, &t);
    let (a, b) = (
        lookup(&one, &t, "m").unwrap(),
        lookup(&queued, &t, "m").unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

#[test]
fn a_model_taking_over_a_slot_starts_afresh() {
    let r = update(None, 1, 2000, 1000).unwrap();
    let s = update(Some(r), 2, 1000, 1000).unwrap();
    assert_eq!((s.owner, s.ratio, s.samples), (2, 1.0, 1));
    assert_eq!(Ratio::decode(&s.encode()), Some(s));
    assert_eq!(Ratio::decode(b"short"), None);
}
