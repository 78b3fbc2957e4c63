//! Learning the estimator's bias per model: an exponentially weighted ratio of real to
//! estimated input tokens, kept in a bounded shared-data slot table and applied to later
//! estimates for that model.

use crate::store::{owner_tag, write_cas, SlotTable, Store, StoreError, MAX_TRIES};

/// Slots in the table (model names are client-chosen, so the table is bounded).
pub const SLOTS: u32 = 1024;
/// Weight of a new observation once the first few have been averaged.
const ALPHA: f64 = 0.3;
/// A ratio is clamped here: anything further out is a broken observation, not a bias.
const MIN_RATIO: f64 = 0.25;
const MAX_RATIO: f64 = 4.0;

/// The slot table of learned ratios (`tollgate:learn:<i>`).
pub fn table() -> SlotTable {
    SlotTable::new("tollgate:learn:", SLOTS)
}

/// One model's learned ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// Tag of the model name owning the slot.
    pub owner: u64,
    pub ratio: f64,
    pub samples: u32,
}

impl Ratio {
    fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.owner.to_le_bytes());
        out[8..16].copy_from_slice(&self.ratio.to_le_bytes());
        out[16..].copy_from_slice(&self.samples.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Ratio> {
        let owner = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let ratio = f64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        let samples = u32::from_le_bytes(b.get(16..20)?.try_into().ok()?);
        (ratio.is_finite() && (MIN_RATIO..=MAX_RATIO).contains(&ratio)).then_some(Ratio {
            owner,
            ratio,
            samples,
        })
    }
}

/// The next ratio after observing `real` tokens for an estimate of `estimate`. The first
/// observations are averaged (so one sample moves it all the way), later ones weighted.
pub fn update(prev: Option<Ratio>, owner: u64, real: u64, estimate: u64) -> Option<Ratio> {
    if real == 0 || estimate == 0 {
        return prev;
    }
    let observed = (real as f64 / estimate as f64).clamp(MIN_RATIO, MAX_RATIO);
    Some(match prev.filter(|p| p.owner == owner) {
        None => Ratio {
            owner,
            ratio: observed,
            samples: 1,
        },
        Some(p) => {
            let n = f64::from(p.samples.saturating_add(1));
            let w = (1.0 / n).max(ALPHA);
            Ratio {
                owner,
                ratio: (p.ratio + w * (observed - p.ratio)).clamp(MIN_RATIO, MAX_RATIO),
                samples: p.samples.saturating_add(1),
            }
        }
    })
}

/// `estimate` corrected by a learned ratio.
pub fn apply(estimate: u64, ratio: f64) -> u64 {
    if !ratio.is_finite() || ratio <= 0.0 {
        return estimate;
    }
    (estimate as f64 * ratio)
        .round()
        .clamp(0.0, u64::MAX as f64) as u64
}

/// The learned ratio for `model`, if its slot holds one.
pub fn lookup(store: &dyn Store, table: &SlotTable, model: &str) -> Option<f64> {
    let owner = owner_tag(model);
    let slot = table.slots(model)[0];
    let (value, _) = store.get(&table.key(slot)).ok()?;
    Ratio::decode(&value?)
        .filter(|r| r.owner == owner)
        .map(|r| r.ratio)
}

/// Records one observation for `model` (a CAS loop on its slot; a slot owned by another
/// model is taken over: the table keeps the most recent models).
pub fn observe(
    store: &dyn Store,
    table: &SlotTable,
    model: &str,
    real: u64,
    estimate: u64,
) -> Result<(), StoreError> {
    let owner = owner_tag(model);
    let key = table.key(table.slots(model)[0]);
    for _ in 0..MAX_TRIES {
        let (value, cas) = store.get(&key)?;
        let prev = value.as_deref().and_then(Ratio::decode);
        let Some(next) = update(prev, owner, real, estimate) else {
            return Ok(());
        };
        match store.set(&key, &next.encode(), write_cas(cas)) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
}

#[cfg(test)]
mod tests {
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
    fn a_model_taking_over_a_slot_starts_afresh() {
        let r = update(None, 1, 2000, 1000).unwrap();
        let s = update(Some(r), 2, 1000, 1000).unwrap();
        assert_eq!((s.owner, s.ratio, s.samples), (2, 1.0, 1));
        assert_eq!(Ratio::decode(&s.encode()), Some(s));
        assert_eq!(Ratio::decode(b"short"), None);
    }
}
