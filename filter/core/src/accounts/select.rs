//! Shared data: account keys, preparation at configuration load, affinity pins and the
//! per-request `select` loop that claims an account (and probes a disabled one).

use super::*;
use crate::api::Api;
use crate::config::{Account, Affinity, Config, Strategy};
use crate::quota::{self, Admission, Amounts, OwnerKey, Ticket};
use crate::store::{self, Decision, SlotTable, Store, StoreError, MAX_TRIES};

/// The health key of an account (names are `[A-Za-z0-9_.-]`, so no two keys collide).
pub fn health_key(name: &str) -> String {
    store::joined("tollgate:acct:", name)
}

/// The shared round-robin counter of one API (a little-endian u64).
pub fn rr_key(api: Api) -> String {
    format!("tollgate:rr:{}", api.as_str())
}

/// The bounded session table: `tollgate:aff:<i>` for `i < max_sessions`.
pub fn affinity_table(affinity: &Affinity) -> SlotTable {
    SlotTable::new("tollgate:aff:", affinity.max_sessions)
}

/// The session id of a request, or `None` when affinity is off or the request names no
/// session: the `affinity.header` value if sent (non-empty), else with `conversation: true`
/// the request scanner's conversation fingerprint. The downstream stage publishes it as
/// `wasm.tollgate.session`; the value is a hash (`h…` / `c…` + 16 hex digits), never the
/// raw header.
pub fn session_id(
    affinity: Option<&Affinity>,
    header_value: Option<&str>,
    fingerprint: Option<u64>,
) -> Option<String> {
    let aff = affinity?;
    if let Some(v) = header_value.map(str::trim).filter(|v| !v.is_empty()) {
        if aff.header.is_some() {
            return Some(format!("h{:016x}", store::owner_tag(v)));
        }
    }
    if aff.conversation {
        return fingerprint.map(|f| format!("c{f:016x}"));
    }
    None
}

/// One session's pin, stored in an affinity slot (21 bytes; a free slot is `[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pin {
    /// `store::owner_tag(session id)`, never 0.
    session: u64,
    /// `account_tag(name)` of the pinned account.
    account: u32,
    expires_ms: u64,
}

const PIN_VERSION: u8 = 1;
const FREE_SLOT: &[u8] = &[0];

impl Pin {
    pub(super) fn decode(b: &[u8]) -> Option<Pin> {
        if b.len() != 21 || b.first() != Some(&PIN_VERSION) {
            return None;
        }
        let u64_at = |at: usize| {
            b.get(at..at + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_le_bytes)
        };
        let account = b
            .get(9..13)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_le_bytes)?;
        Some(Pin {
            session: u64_at(1)?,
            account,
            expires_ms: u64_at(13)?,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21);
        out.push(PIN_VERSION);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.account.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out
    }
}

/// How an account's name is recorded in a pin (robust to reordering the configuration).
fn account_tag(name: &str) -> u32 {
    let h = store::owner_tag(name);
    (h ^ (h >> 32)) as u32
}

/// Creates every key the pool uses, unless it exists: each account's health key (and
/// resets one whose key tag differs: the account's key changed), the round-robin counter
/// of each API with accounts (strategy `round_robin` only), with affinity every slot of
/// the session table, and the roster (`publish_roster`). Returns how many keys it created or
/// reset. Run in `on_configure`.
///
/// Cost: one `get` per key plus one `set` per key created; the session table is
/// `max_sessions` keys (65536 by default).
#[inline(never)]
pub fn prepare(store: &dyn Store, cfg: &Config) -> Result<usize, StoreError> {
    let mut created = 0;
    let mut fresh = Vec::with_capacity(32);
    for a in &cfg.accounts {
        let key = health_key(&a.name);
        let tag = key_tag(a);
        fresh.clear();
        Health::fresh(a).encode(&mut fresh);
        // A key still lost to other workers after `MAX_TRIES` races is theirs: left as is.
        let wrote = store::update(store, &key, MAX_TRIES, |old, out| {
            if old.is_some_and(|v| Health::decode(v).key_tag == tag) {
                return Decision::Keep(false);
            }
            out.extend_from_slice(&fresh);
            Decision::Write(true)
        });
        match wrote {
            Ok(true) => created += 1,
            Ok(false) | Err(StoreError::Contended) => {}
            Err(e) => return Err(e),
        }
    }
    if cfg.selection.strategy == Strategy::RoundRobin {
        for api in Api::ALL {
            if first_for(&cfg.accounts, api).is_some()
                && store::ensure(store, &rr_key(api), &0u64.to_le_bytes())?
            {
                created += 1;
            }
        }
    }
    if let (Some(aff), false) = (&cfg.selection.affinity, cfg.accounts.is_empty()) {
        for key in affinity_table(aff).keys() {
            if store::ensure(store, &key, FREE_SLOT)? {
                created += 1;
            }
        }
    }
    if publish_roster(store, &cfg.accounts)? {
        created += 1;
    }
    Ok(created)
}

/// What became of the session's pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityUse {
    /// Affinity is off, or the request has no session.
    Off,
    /// The pinned account served.
    Hit,
    /// No live pin: the session is now pinned to the account picked.
    Miss,
    /// The pinned account was cooling, disabled, lacking headroom, already tried, or of
    /// another API: the session moved to the account picked.
    Broken,
}

impl AffinityUse {
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityUse::Off => "off",
            AffinityUse::Hit => "hit",
            AffinityUse::Miss => "miss",
            AffinityUse::Broken => "broken",
        }
    }
}

/// An account chosen by `select`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Picked {
    pub account: usize,
    /// The reservation taken from the account's own `limits` (when it has any): reconcile it
    /// with `quota::reconcile(store, &OwnerKey::account(name), &account.limits, …)` when the
    /// attempt ends (real usage, or `Amounts::ZERO` for an attempt that served nothing).
    pub ticket: Option<Ticket>,
    pub affinity: AffinityUse,
    /// Whether the pick was charged to the account's health already; if not, add it to the
    /// account's `requests` later (`record_totals`).
    pub counted: bool,
    /// The account is disabled and this attempt is its one probe: the host must `record` the
    /// answer's `observe_response` even when `is_empty()` (a 2xx makes the account ok
    /// again), and `observe_error_body` for an error answer.
    pub probe: bool,
}

/// The answer of `select`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Picked(Picked),
    /// 429 with `retry-after` (SPEC: "every account is cooling down"). Also when every
    /// remaining account refused `need` under its own `limits`.
    AllCooling {
        retry_after_s: u64,
    },
    /// No account serves the API, or all of them are disabled.
    NoAccount,
}

/// One attempt's request, as `select` needs it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub api: Api,
    /// The reservation (`quota::reservation`): headroom is checked against `tokens`,
    /// `input_tokens`, `output_tokens` and one request; account `limits` are charged with it.
    pub need: &'a Amounts,
    /// `session_id(…)`, when affinity applies.
    pub session: Option<&'a str>,
    /// Accounts already tried by earlier attempts of this request.
    pub exclude: &'a [usize],
    pub now_ms: u64,
}

/// Picks the account for one attempt, through the store.
///
/// Round trips, uncontended, with N accounts serving the API:
/// - affinity (when on and a session is given): 1 `get`, or 2 when the session is not in its
///   first slot; plus 1 `set` when the pin is new, moved, or due for refresh (its remaining
///   TTL fell below 7/8 of `ttl`, so a busy session writes at most every `ttl`/8);
/// - N `get`s of the health keys, and 1 `set` charging the chosen one (load, request
///   counter, learned headroom);
/// - `round_robin` without an affinity hit: 1 `get` + 1 `set` of the API's shared counter
///   (shared rather than per worker, so that light traffic spread over workers still
///   rotates);
/// - an account with `limits`: `quota::admit` (a `concurrent` lease lives `cfg.lease_ttl`),
///   1 `get` + 1 `set` (a refusal: 1 `get`, and the next account is tried).
///
/// - a disabled account with a probe due: 1 `get` + 1 `set` claiming the probe (and charging
///   the pick), so that only one worker probes; one that lost the claim drops out.
///
/// Typical: `least_loaded` with affinity, 2 accounts, no account limits: 3 `get`s, 1–2
/// `set`s. Store errors degrade rather than fail: an unreadable health reads as fresh, a
/// lost counter or pin write is skipped, an account whose limits cannot be checked is
/// skipped for this attempt.
#[inline(never)]
pub fn select(store: &dyn Store, cfg: &Config, req: &Attempt<'_>) -> Outcome {
    let accounts = &cfg.accounts;
    let now = req.now_ms;
    // Affinity lookup first: a hit spares the round-robin counter.
    let affinity = cfg
        .selection
        .affinity
        .as_ref()
        .zip(req.session)
        .map(|(aff, session)| {
            let table = affinity_table(aff);
            let tag = store::owner_tag(session);
            let found = lookup_pin(store, &table, session, now);
            (aff, table, tag, found)
        });
    let (mut states, cas) = read_healths(store, accounts, req.api);
    let pinned = affinity
        .as_ref()
        .and_then(|(_, _, _, f)| f.as_ref().ok()?.pin)
        .map(|pin| {
            accounts
                .iter()
                .position(|a| account_tag(&a.name) == pin.account && a.provider == req.api)
        });
    let mut use_pin = match pinned {
        Some(Some(i)) => states.get(i).is_some_and(|h| {
            h.usable(now) && h.headroom(req.need, now).is_some() && !req.exclude.contains(&i)
        }),
        _ => false,
    };
    let mut rr_counter = None;
    let mut chosen = None;
    let mut probe = false;
    for _ in 0..=accounts.len() {
        let choice = match (use_pin, pinned) {
            (true, Some(Some(i))) => Choice::Pick { account: i },
            _ => {
                let counter = match (cfg.selection.strategy, rr_counter) {
                    (Strategy::RoundRobin, None) => {
                        *rr_counter.insert(next_counter(store, req.api))
                    }
                    (_, c) => c.unwrap_or(0),
                };
                pick(
                    accounts,
                    req.api,
                    req.need,
                    cfg.selection.strategy,
                    &states,
                    counter,
                    req.exclude,
                    now,
                )
            }
        };
        let Choice::Pick { account } = choice else {
            return match choice {
                Choice::AllCooling { retry_after_s } => Outcome::AllCooling { retry_after_s },
                _ => Outcome::NoAccount,
            };
        };
        let Some(a) = accounts.get(account) else {
            return Outcome::NoAccount;
        };
        if states.get(account).is_some_and(|h| !h.usable(now)) {
            match probe_or_drop(store, a, req.need, now, states.get_mut(account)) {
                Some(true) => probe = true,
                Some(false) => {}
                None => {
                    use_pin = false;
                    continue;
                }
            }
        }
        if a.limits.is_empty() {
            chosen = Some((account, None));
            break;
        }
        let refused_for_s = match admit_account(store, a, req.need, now, cfg) {
            Ok(ticket) => {
                chosen = Some((account, Some(ticket)));
                break;
            }
            Err(seconds) => seconds,
        };
        // Refused by its own limits: for this request the account rests until they have
        // room, so it drops out and counts towards `AllCooling`'s earliest recovery (a probe
        // it claimed lapses after `PROBE_RETRY_MS`).
        probe = false;
        if let Some(h) = states.get_mut(account) {
            h.state = AccountState::Cooling {
                until_ms: now
                    .saturating_add(refused_for_s.saturating_mul(1000).max(MIN_COOLING_MS)),
            };
        }
        use_pin = false;
    }
    let Some((account, ticket)) = chosen else {
        return Outcome::AllCooling { retry_after_s: 1 };
    };
    // With one account for the API, its load steers no choice: unless the provider's
    // headroom is known (which concurrent picks must see charged), the pick is only counted,
    // and the count is the host's to add later (`Picked::counted`).
    let alone = accounts.iter().filter(|a| a.provider == req.api).count() == 1;
    let headroom_known = states
        .get(account)
        .is_some_and(|h| Dimension::ALL.iter().any(|&d| h.dim(d, now).is_some()));
    // A probe was charged as it was claimed.
    let counted = !alone || headroom_known || probe;
    // Charge the chosen account: one `set` over the value read above, re-read only if
    // another worker wrote it since.
    if let Some(a) = accounts.get(account).filter(|_| counted && !probe) {
        let read = states
            .get(account)
            .copied()
            .zip(cas.get(account).copied().flatten());
        charge_chosen(store, a, read, req.need, now);
    }
    let affinity_use = finish_affinity(store, accounts, affinity, pinned, use_pin, account, now);
    Outcome::Picked(Picked {
        account,
        ticket,
        affinity: affinity_use,
        counted,
        probe,
    })
}

/// The health of every account of `api` as stored (fresh when unset) and the cas to write
/// it back with; other APIs' accounts (and unreadable ones) stay default, without a cas.
fn read_healths(
    store: &dyn Store,
    accounts: &[Account],
    api: Api,
) -> (Vec<Health>, Vec<Option<u32>>) {
    let mut states = vec![Health::default(); accounts.len()];
    let mut cas: Vec<Option<u32>> = vec![None; accounts.len()];
    for (i, a) in accounts.iter().enumerate() {
        if a.provider != api {
            continue;
        }
        if let Ok((value, c)) = store.get(&health_key(&a.name)) {
            if let Some(s) = states.get_mut(i) {
                *s = value
                    .as_deref()
                    .map_or_else(|| Health::fresh(a), Health::decode);
            }
            if let Some(slot) = cas.get_mut(i) {
                *slot = Some(c);
            }
        }
    }
    (states, cas)
}

/// A picked account that is not usable (disabled): claims its probe. `Some(true)`: this
/// attempt probes; `Some(false)`: made ok since it was read (a probe succeeded, or a reset),
/// an ordinary pick; `None`: another worker's probe is out (or shared state failed us), and
/// the account drops out (`health` updated so that the next pick passes it by).
#[inline(never)]
fn probe_or_drop(
    store: &dyn Store,
    a: &Account,
    need: &Amounts,
    now: u64,
    health: Option<&mut Health>,
) -> Option<bool> {
    match claim_probe(store, a, need, now) {
        Ok((_, true)) => Some(true),
        Ok((stored, false)) if stored.usable(now) => Some(false),
        lost => {
            if let Some(h) = health {
                match lost {
                    Ok((stored, _)) => *h = stored,
                    Err(_) => {
                        if let AccountState::Disabled { probe_after_ms, .. } = &mut h.state {
                            *probe_after_ms = u64::MAX;
                        }
                    }
                }
            }
            None
        }
    }
}

/// An account with its own `limits`: its ticket when they admit the request, else the
/// seconds until they have room (1 when the store failed).
#[inline(never)]
fn admit_account(
    store: &dyn Store,
    a: &Account,
    need: &Amounts,
    now: u64,
    cfg: &Config,
) -> Result<Ticket, u64> {
    let owner = OwnerKey::account(&a.name);
    match quota::admit(store, &owner, &a.limits, need, now, cfg.lease_ttl) {
        Ok(Admission::Admitted { ticket, .. }) => Ok(ticket),
        Ok(Admission::Rejected { rejection, .. }) => Err(rejection.retry_after_s),
        Err(_) => Err(1),
    }
}

/// Charges the chosen account: one `set` over the value `read` (with its cas), re-read only
/// if another worker wrote it since (or it was not read).
fn charge_chosen(
    store: &dyn Store,
    a: &Account,
    read: Option<(Health, u32)>,
    need: &Amounts,
    now: u64,
) {
    let mut first = read;
    let written = first.as_mut().is_some_and(|(h, c)| {
        h.charge(need, now);
        let mut buf = Vec::with_capacity(64);
        h.encode(&mut buf);
        store
            .set(&health_key(&a.name), &buf, store::write_cas(*c))
            .is_ok()
    });
    if !written {
        let _ = update_health(store, a, |h| h.charge(need, now));
    }
}

/// How the session's pin was used, and the pin (re)written where due: a new or moved pin at
/// once, a kept one once an eighth of its `ttl` has passed.
#[inline(never)]
fn finish_affinity(
    store: &dyn Store,
    accounts: &[Account],
    affinity: Option<(&Affinity, SlotTable, u64, Result<Found, StoreError>)>,
    pinned: Option<Option<usize>>,
    use_pin: bool,
    account: usize,
    now: u64,
) -> AffinityUse {
    match affinity {
        None => AffinityUse::Off,
        Some((aff, table, tag, found)) => {
            let ttl = aff.ttl.millis();
            let used = match (&found, pinned) {
                (Ok(f), Some(Some(i))) if f.pin.is_some() && use_pin && i == account => {
                    AffinityUse::Hit
                }
                (Ok(f), _) if f.pin.is_some() => AffinityUse::Broken,
                _ => AffinityUse::Miss,
            };
            if let (Ok(f), Some(a)) = (&found, accounts.get(account)) {
                let due = match (used, f.pin) {
                    (AffinityUse::Hit, Some(p)) => p.expires_ms < now.saturating_add(ttl - ttl / 8),
                    _ => true,
                };
                if due {
                    let pin = Pin {
                        session: tag,
                        account: account_tag(&a.name),
                        expires_ms: now.saturating_add(ttl),
                    };
                    let _ = store.set(&table.key(f.slot), &pin.encode(), store::write_cas(f.cas));
                }
            }
            used
        }
    }
}

/// Claims a disabled account's probe: moves `probe_after_ms` `PROBE_RETRY_MS` ahead and
/// charges the pick, in one compare-and-swap, so two workers that both saw the probe due
/// cannot both send one; a probe that never reports back frees the account after that time.
/// Returns the health stored and whether this attempt claimed the probe.
fn claim_probe(
    store: &dyn Store,
    account: &Account,
    need: &Amounts,
    now_ms: u64,
) -> Result<(Health, bool), StoreError> {
    update_health_if(store, account, |h| {
        let AccountState::Disabled { probe_after_ms, .. } = &mut h.state else {
            return false;
        };
        if *probe_after_ms > now_ms {
            return false;
        }
        *probe_after_ms = now_ms.saturating_add(PROBE_RETRY_MS);
        h.charge(need, now_ms);
        true
    })
}

/// A session's slot: its live pin, if any, and the slot (with its cas) to write it to.
struct Found {
    pin: Option<Pin>,
    slot: u32,
    cas: u32,
}

/// Reads the session's two slots (the second only when the first is not the session's).
/// Without a live pin, the slot to take is the session's own expired one, else a free or
/// expired one, else the one whose pin expires first (the least recently used).
#[inline(never)]
fn lookup_pin(
    store: &dyn Store,
    table: &SlotTable,
    session_id: &str,
    now_ms: u64,
) -> Result<Found, StoreError> {
    let session = store::owner_tag(session_id);
    let [a, b] = table.slots(session_id);
    let read = |slot: u32| -> Result<(Option<Pin>, u32), StoreError> {
        let (value, cas) = store.get(&table.key(slot))?;
        Ok((value.as_deref().and_then(Pin::decode), cas))
    };
    let (pa, ca) = read(a)?;
    if let Some(p) = pa.filter(|p| p.session == session) {
        return Ok(Found {
            pin: Some(p).filter(|p| p.expires_ms > now_ms),
            slot: a,
            cas: ca,
        });
    }
    let (pb, cb) = if b == a { (pa, ca) } else { read(b)? };
    if let Some(p) = pb.filter(|p| p.session == session) {
        return Ok(Found {
            pin: Some(p).filter(|p| p.expires_ms > now_ms),
            slot: b,
            cas: cb,
        });
    }
    let expires = |p: Option<Pin>| p.map_or(0, |p| p.expires_ms);
    let (ea, eb) = (expires(pa), expires(pb));
    let take_a = ea <= now_ms || (eb > now_ms && ea <= eb);
    Ok(if take_a {
        Found {
            pin: None,
            slot: a,
            cas: ca,
        }
    } else {
        Found {
            pin: None,
            slot: b,
            cas: cb,
        }
    })
}

/// Fetch-and-increment of the API's round-robin counter; on a store error or lost races,
/// the value read (two requests then share a turn).
#[inline(never)]
fn next_counter(store: &dyn Store, api: Api) -> u64 {
    let key = rr_key(api);
    let mut last = 0;
    let _ = store::update(store, &key, 4, |old, out| {
        last = old
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_le_bytes);
        out.extend_from_slice(&last.wrapping_add(1).to_le_bytes());
        Decision::Write(())
    });
    last
}
