//! Charges of real usage, summed per descriptor until the root tick sends them: every
//! response that ends adds its usage to its descriptors' pending sums, and each tick sends
//! what is pending, each descriptor once, in as few `ShouldRateLimit` calls as fit.

use super::*;
use crate::store::FnvMap;

/// Most descriptors one charge call carries. envoyproxy/ratelimit answers a call with one
/// Redis pipeline, so one call for every pending descriptor is the cheapest for the service;
/// the cap bounds the message and what one failed call can lose.
pub const CHARGE_BATCH: usize = 64;

/// The largest `hits_addend` sent for one descriptor in one call. The service's limits and
/// `limit_remaining` are uint32, so a larger sum says no more than "over every limit", and
/// Redis refuses an `INCRBY` past int64 (which would fail every descriptor of the call).
pub const MAX_ADDEND: u64 = u32::MAX as u64;

/// One call's worth of pending charges, taken from the book by `ChargeBook::take`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeCall {
    /// The encoded `RateLimitRequest`.
    pub body: Vec<u8>,
    /// How many descriptors it charges (each a sum over the tick).
    pub descriptors: usize,
}

/// Charges waiting for the root context: Envoy cancels a context's pending gRPC calls when
/// the context is destroyed, so a request only adds its usage here. Pending sums are keyed
/// by descriptor (its encoded entries, the unit among them) and never wrap; the number of
/// distinct pending descriptors and of calls in flight is bounded. A count is one
/// descriptor's sum for one tick: `dropped` counts those that could not be held, whose
/// dispatch failed, or whose call failed (a failed call loses every descriptor it carried).
#[derive(Debug, Clone)]
pub struct ChargeBook {
    /// Pending descriptors in the order they first arrived: encoded entries, summed addend.
    pending: Vec<(Vec<u8>, u64)>,
    /// Position in `pending` by encoded entries.
    index: FnvMap<Vec<u8>, usize>,
    capacity: usize,
    max_in_flight: usize,
    /// Calls under way: their token and how many descriptors each carries.
    in_flight: Vec<(u32, usize)>,
    dropped: u64,
}

impl ChargeBook {
    /// At most `capacity` distinct descriptors pending and `max_in_flight` calls under way.
    pub fn new(capacity: usize, max_in_flight: usize) -> ChargeBook {
        ChargeBook {
            pending: Vec::new(),
            index: FnvMap::default(),
            capacity,
            max_in_flight: max_in_flight.max(1),
            in_flight: Vec::new(),
            dropped: 0,
        }
    }

    /// Adds a finished request's real usage to its descriptors: token and cost descriptors
    /// count `actual` (requests were counted at admission and are left out, as are zero
    /// amounts). Returns how many descriptor charges could not be held (the book is full of
    /// other descriptors); they are counted in `dropped` too.
    pub fn add(&mut self, descriptors: &[Descriptor], actual: &Amounts) -> u64 {
        let mut lost = 0;
        for d in descriptors {
            if d.unit == Unit::Requests {
                continue;
            }
            let amount = d.unit.amount(actual);
            if amount == 0 {
                continue;
            }
            let key = entries_key(d);
            if let Some(sum) = self
                .index
                .get(&key)
                .and_then(|&i| self.pending.get_mut(i))
                .map(|(_, sum)| sum)
            {
                *sum = sum.saturating_add(amount);
                continue;
            }
            if self.pending.len() >= self.capacity {
                lost += 1;
                continue;
            }
            self.index.insert(key.clone(), self.pending.len());
            self.pending.push((key, amount));
        }
        self.dropped = self.dropped.saturating_add(lost);
        lost
    }

    /// The next call to dispatch: up to `CHARGE_BATCH` pending descriptors (oldest first),
    /// if any wait and fewer than `max_in_flight` calls are under way. The caller reports
    /// it back with `dispatched` or `dispatch_failed`.
    pub fn take(&mut self, domain: &str) -> Option<ChargeCall> {
        if self.pending.is_empty() || self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        let n = self.pending.len().min(CHARGE_BATCH);
        let batch: Vec<(Vec<u8>, u64)> = self.pending.drain(..n).collect();
        self.index.clear();
        for (i, (key, _)) in self.pending.iter().enumerate() {
            self.index.insert(key.clone(), i);
        }
        let mut body =
            Vec::with_capacity(32 + batch.iter().map(|(k, _)| k.len() + 16).sum::<usize>());
        wire::put_bytes(&mut body, 1, domain.as_bytes());
        let mut desc = Vec::new();
        for (entries, sum) in &batch {
            desc.clear();
            desc.extend_from_slice(entries);
            put_hits(&mut desc, (*sum).min(MAX_ADDEND));
            wire::put_bytes(&mut body, 2, &desc);
        }
        Some(ChargeCall {
            body,
            descriptors: batch.len(),
        })
    }

    /// A call from `take` is under way as `token`.
    pub fn dispatched(&mut self, token: u32, descriptors: usize) {
        self.in_flight.push((token, descriptors));
    }

    /// The dispatch of a call from `take` failed at once: its descriptors are lost.
    pub fn dispatch_failed(&mut self, descriptors: usize) {
        self.dropped = self.dropped.saturating_add(descriptors as u64);
    }

    /// Whether the call with `token` was dispatched from this book and is still under way.
    pub fn issued(&self, token: u32) -> bool {
        self.in_flight.iter().any(|(t, _)| *t == token)
    }

    /// The call `token` ended (`ok` false: error status or timeout, its descriptors are
    /// lost). Returns how many descriptors it carried; 0 for a token this book never sent.
    pub fn finished(&mut self, token: u32, ok: bool) -> usize {
        let Some(at) = self.in_flight.iter().position(|(t, _)| *t == token) else {
            return 0;
        };
        let (_, n) = self.in_flight.swap_remove(at);
        if !ok {
            self.dropped = self.dropped.saturating_add(n as u64);
        }
        n
    }

    /// Distinct descriptors pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Calls under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Descriptor charges lost so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A descriptor's identity on the wire: its `entries` fields, encoded (the unit is one).
pub fn entries_key(d: &Descriptor) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.entries.iter().map(|(k, v)| k.len() + v.len() + 6).sum());
    put_entries(&mut out, &d.entries);
    out
}
