//! Learning the estimator's bias per model: an exponentially weighted ratio of real to
//! estimated input tokens, kept in a bounded shared-data slot table and applied to later
//! estimates for that model.

use crate::store::{self, owner_tag, Decision, SlotTable, Store, StoreError, MAX_TRIES};

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
    observe_all(store, table, model, &[(real, estimate)])
}

/// Records observations `(real, estimate)` for `model` in order, in one read and one write
/// of its slot: the same ratio as observing them one by one.
pub fn observe_all(
    store: &dyn Store,
    table: &SlotTable,
    model: &str,
    observations: &[(u64, u64)],
) -> Result<(), StoreError> {
    let owner = owner_tag(model);
    let key = table.key(table.slots(model)[0]);
    store::update(store, &key, MAX_TRIES, |old, out| {
        let prev = old.and_then(Ratio::decode);
        let next = observations.iter().fold(prev, |r, &(real, estimate)| {
            update(r, owner, real, estimate)
        });
        match next.filter(|n| Some(*n) != prev) {
            Some(next) => {
                out.extend_from_slice(&next.encode());
                Decision::Write(())
            }
            None => Decision::Keep(()),
        }
    })
}

/// A worker's observations not yet written, by model: recorded on the request path without
/// a shared-data round trip, written by `flush` (from the root tick). Bounded: per model only
/// the last `PER_MODEL` are kept (an observation that old weighs under 0.7^64 ≈ 1e-10 in the
/// ratio), and a model beyond `MODELS` makes `push` answer `false` (the caller then observes
/// at once).
#[derive(Debug, Default)]
pub struct Pending {
    models: Vec<(String, Vec<(u64, u64)>)>,
}

impl Pending {
    const MODELS: usize = 64;
    const PER_MODEL: usize = 64;

    /// Queues one observation; `false` when it does not fit.
    pub fn push(&mut self, model: &str, real: u64, estimate: u64) -> bool {
        if let Some((_, obs)) = self.models.iter_mut().find(|(m, _)| m == model) {
            if obs.len() >= Self::PER_MODEL {
                obs.remove(0);
            }
            obs.push((real, estimate));
            return true;
        }
        if self.models.len() >= Self::MODELS {
            return false;
        }
        self.models
            .push((model.to_string(), vec![(real, estimate)]));
        true
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Writes every queued observation (one round trip per model). What could not be
    /// written (the store kept refusing) is dropped: a ratio is a running estimate.
    pub fn flush(&mut self, store: &dyn Store, table: &SlotTable) -> usize {
        let mut failed = 0;
        for (model, obs) in self.models.drain(..) {
            if observe_all(store, table, &model, &obs).is_err() {
                failed += 1;
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests;
