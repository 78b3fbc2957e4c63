//! Envoy shared data as a small trait: a process-wide key/value map with compare-and-swap,
//! shared by every worker of one VM id. Every `flow::Host` is one (the cdylib's over the raw
//! ABI); `MemStore` is an exact in-memory fake for tests. Also: the one compare-and-swap loop
//! (`update`, `retry`), safe key creation and slot tables.

use std::cell::RefCell;
use std::collections::HashMap;

/// Why a store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// `set` with a `cas` that no longer matches the key's current one: someone wrote first.
    CasMismatch,
    /// A compare-and-swap loop lost every race it was allowed (see [`retry`]) and gave up.
    Contended,
    /// Any other host status (the raw proxy-wasm status code).
    Host(u32),
}

/// Envoy shared data. A key that does not exist reads as `(None, 0)`.
pub trait Store {
    /// The value and its cas (0 when the key does not exist).
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError>;
    /// Writes `value`. `cas` 0 writes unconditionally; any other `cas` fails with
    /// `CasMismatch` unless it equals the key's current cas. Envoy ignores `cas` when the key
    /// does not exist yet: the write then always succeeds.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// How many races most compare-and-swap loops may lose before giving up with `Contended`.
/// Each lost race means another worker made progress, so 16 losses in a row only happen
/// under extreme contention on one key; see `quota` for what each caller then does
/// (admission itself retries far longer: `quota::ADMIT_TRIES`).
pub const MAX_TRIES: u32 = 16;

/// The cas used to write a key that a `get` reported missing.
///
/// Envoy lets a write to a missing key succeed whatever its cas, so two workers that both
/// saw "missing" would both write and one update would be lost. Writing with this cas
/// instead of 0 makes the second write fail with `CasMismatch` (the key now exists with a
/// different cas), so it retries on top of the first. The only hole is a key whose cas is
/// exactly `u32::MAX` (one in 2^32 cas values of Envoy's process-wide counter).
pub const CREATE_CAS: u32 = u32::MAX;

/// The cas to write with after a `get` that returned `cas`.
pub fn write_cas(cas: u32) -> u32 {
    if cas == 0 {
        CREATE_CAS
    } else {
        cas
    }
}

/// What one round of a compare-and-swap loop decided, from the value it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<T> {
    /// Write the bytes the round put in its buffer; once the write lands, the loop returns
    /// `T`. A lost race runs the round again on the newer value.
    Write(T),
    /// Write nothing and return `T`.
    Keep(T),
}

/// One round's answer for [`retry`]: the key it read (with that read's cas) and its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round<'k, T> {
    pub key: &'k str,
    pub cas: u32,
    pub decision: Decision<T>,
}

/// The compare-and-swap loop behind every read-modify-write of shared data: runs `round`
/// (which reads, decides and on `Write` fills the buffer it is given, emptied before each
/// round) until its write lands or it keeps the value, at most `tries` times. A lost race
/// (`CasMismatch`) runs it again; any other store error ends the loop with that error; after
/// `tries` lost races, `Err(StoreError::Contended)`. A key read as missing is written with
/// `CREATE_CAS` (see `write_cas`).
pub fn retry<'k, T>(
    store: &dyn Store,
    tries: u32,
    mut round: impl FnMut(&mut Vec<u8>) -> Result<Round<'k, T>, StoreError>,
) -> Result<T, StoreError> {
    let mut answer = None;
    rounds(store, tries, &mut |out| {
        let Round { key, cas, decision } = round(out)?;
        Ok(match decision {
            Decision::Keep(t) => {
                answer = Some(t);
                None
            }
            Decision::Write(t) => {
                answer = Some(t);
                Some((key, cas))
            }
        })
    })?;
    answer.ok_or(StoreError::Contended)
}

/// Where a round writes what it put in the buffer (key and cas read), or `None` to stop.
type Target<'k> = Option<(&'k str, u32)>;

/// The loop of [`retry`], compiled once rather than per caller (wasm size).
fn rounds<'k>(
    store: &dyn Store,
    tries: u32,
    round: &mut dyn FnMut(&mut Vec<u8>) -> Result<Target<'k>, StoreError>,
) -> Result<(), StoreError> {
    let mut buf = Vec::with_capacity(64);
    for _ in 0..tries {
        buf.clear();
        let Some((key, cas)) = round(&mut buf)? else {
            return Ok(());
        };
        match store.set(key, &buf, write_cas(cas)) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
}

/// [`retry`] on one key: each round reads `key` and hands `decide` its value (`None` when
/// missing) and the buffer to fill on `Write`.
pub fn update<T>(
    store: &dyn Store,
    key: &str,
    tries: u32,
    mut decide: impl FnMut(Option<&[u8]>, &mut Vec<u8>) -> Decision<T>,
) -> Result<T, StoreError> {
    retry(store, tries, |out| {
        let (value, cas) = store.get(key)?;
        Ok(Round {
            key,
            cas,
            decision: decide(value.as_deref(), out),
        })
    })
}

/// Creates `key` with `initial` unless it exists. Returns whether this call created it.
///
/// Run for every fixed key when the configuration loads, so that keys exist before any
/// request touches them and Envoy's never-freed key set stays bounded by the configuration.
/// Safe when several workers run it at once and while others already update the key: it
/// never overwrites an existing value (see `CREATE_CAS`).
pub fn ensure(store: &dyn Store, key: &str, initial: &[u8]) -> Result<bool, StoreError> {
    let (value, cas) = store.get(key)?;
    if value.is_some() || cas != 0 {
        return Ok(false);
    }
    match store.set(key, initial, CREATE_CAS) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A fixed-size table of keys `<prefix><index>` for state keyed by client-chosen names, so
/// that such names never create new shared-data keys. A name may live in either of two
/// slots (two-way set associative): a new name takes a free slot or evicts the least
/// recently used of its two. The value stored in a slot records its owner's tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    prefix: String,
    size: u32,
}

impl SlotTable {
    /// `prefix` should start with `tollgate:`; `size` is at least 1.
    pub fn new(prefix: &str, size: u32) -> SlotTable {
        SlotTable {
            prefix: prefix.to_owned(),
            size: size.max(1),
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// The key of slot `index`.
    pub fn key(&self, index: u32) -> String {
        format!("{}{}", self.prefix, index)
    }

    /// Every key of the table, for `ensure` at configuration load.
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.size).map(|i| self.key(i))
    }

    /// The two slots `name` may live in (equal only when the table has one slot).
    pub fn slots(&self, name: &str) -> [u32; 2] {
        let h = fnv1a64(name.as_bytes());
        let a = (h % u64::from(self.size)) as u32;
        let mut b = ((h >> 32).wrapping_mul(0x9E37_79B9) % u64::from(self.size)) as u32;
        if b == a && self.size > 1 {
            b = (a + 1) % self.size;
        }
        [a, b]
    }
}

/// `prefix` followed by `name`: a shared-data key built on the request path without the
/// formatting machinery.
pub fn joined(prefix: &str, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len());
    key.push_str(prefix);
    key.push_str(name);
    key
}

/// The owner tag stored in a slot for `name`: a 64-bit hash, never 0 (0 marks a free slot).
pub fn owner_tag(name: &str) -> u64 {
    fnv1a64(name.as_bytes()).max(1)
}

/// FNV-1a's starting value, for [`fnv1a64_more`].
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(FNV_START, bytes)
}

/// Continues an FNV-1a 64 hash `h` over `bytes` (hash several parts without joining them).
pub fn fnv1a64_more(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A hasher for the filter's own small maps (metric ids, digests, model tags): FNV-1a, so a
/// lookup costs a few multiplies rather than SipHash's rounds. Their keys are bounded sets
/// (configured names, label digests) or a capped cache, so flooding them costs an attacker
/// nothing worth having.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(FNV_START)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a64_more(self.0, bytes);
    }

    fn write_u64(&mut self, v: u64) {
        // Digests already: mixed once, not byte by byte.
        self.0 = (self.0 ^ v).wrapping_mul(FNV_PRIME);
    }
}

/// A `HashMap` with [`Fnv`].
pub type FnvMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// In-memory fake with Envoy's semantics exactly: a write to a missing key succeeds whatever
/// its cas, every write takes the next value of one process-wide cas counter (never 0), and
/// keys are never freed. Shareable by simulated workers through `&MemStore`.
#[derive(Debug)]
pub struct MemStore {
    inner: RefCell<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    map: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    gets: u64,
    sets: u64,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::with_first_cas(1)
    }

    /// Starts the cas counter at `first` (tests use it to reach the wrap-around).
    pub fn with_first_cas(first: u32) -> MemStore {
        MemStore {
            inner: RefCell::new(MemInner {
                map: HashMap::new(),
                next_cas: first.max(1),
                gets: 0,
                sets: 0,
            }),
        }
    }

    /// `(gets, sets)` served so far: the benchmark's round-trip count.
    pub fn round_trips(&self) -> (u64, u64) {
        let inner = self.inner.borrow();
        (inner.gets, inner.sets)
    }

    /// How many keys exist.
    pub fn len(&self) -> usize {
        self.inner.borrow().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        let mut inner = self.inner.borrow_mut();
        inner.gets += 1;
        Ok(match inner.map.get(key) {
            Some((v, cas)) => (Some(v.clone()), *cas),
            None => (None, 0),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.borrow_mut();
        inner.sets += 1;
        if let Some((_, current)) = inner.map.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let new_cas = inner.next_cas;
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        inner.map.insert(key.to_owned(), (value.to_vec(), new_cas));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
