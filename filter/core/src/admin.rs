//! The filter's own endpoints under `admin.path`: health, the usage API, the dashboard and the
//! account actions (reset, pause, resume).

use serde::Serialize;

use crate::accounts::{self, AccountState, Dimension, Health, StateKind, Transition};
use crate::analytics::{Bucket, ConsumerTotals, Recent, Totals};
use crate::config::Config;
use crate::limits::{LimitKind, WindowKind};
use crate::quota::{UsageSnapshot, WindowUsage};
use crate::store::{Store, StoreError};

/// The password of an HTTP Basic `Authorization` header (the browser's prompt puts the admin
/// key there; the user name is ignored).
pub fn basic_password(authorization: &str) -> Option<String> {
    let (scheme, rest) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// Standard base64 with optional padding; `None` on any other byte.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in s.as_bytes() {
        let v = match b {
            b'=' => break,
            _ => crate::codec::base64_sextet(b)?,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The body of `GET {path}/health`.
pub fn health_json() -> &'static str {
    r#"{"status":"ok"}"#
}

// ---------------------------------------------------------------------------------------------
// Usage API
// ---------------------------------------------------------------------------------------------

/// Everything `GET {path}/usage` shows, gathered by the host (reads only: quota snapshots,
/// account health, the merged analytics). It holds names and numbers, never a key.
#[derive(Debug, Clone)]
pub struct UsageReport<'a> {
    pub now_ms: u64,
    /// Configured consumers (and `anonymous` when configured), in configuration order.
    pub consumers: Vec<ConsumerView<'a>>,
    /// Configured accounts, in configuration order.
    pub accounts: Vec<AccountView<'a>>,
    pub totals: &'a Totals,
    /// The newest requests, newest first (`analytics::load_recent`).
    pub recent: &'a [Recent],
}

/// One consumer's limits as the quota engine sees them now.
#[derive(Debug, Clone)]
pub struct ConsumerView<'a> {
    pub name: &'a str,
    pub usage: UsageSnapshot,
}

/// One account as the admin API shows it: the host fills it from `accounts::read_health`
/// (see [`AccountView::from_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountView<'a> {
    pub name: &'a str,
    /// `anthropic`, `openai` or `gemini`.
    pub provider: &'a str,
    pub state: StateKind,
    /// While cooling: until when (epoch ms).
    pub cooling_until_ms: Option<u64>,
    /// While disabled: why and since when.
    pub disabled: Option<DisabledView>,
    /// The provider's last report of what is left, per dimension (`None`: unknown or stale).
    pub headroom: Headroom,
    /// Attempts sent to the account and the real tokens it served.
    pub requests: u64,
    pub tokens: u64,
}

/// Why and since when an account is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisabledView {
    /// `invalid_key`.
    pub reason: &'static str,
    /// The status of the provider's answer that disabled it.
    pub status: u16,
    /// Epoch ms.
    pub since_ms: u64,
    /// From when one request may probe it again (epoch ms).
    pub probe_after_ms: u64,
}

/// Learned headroom: remaining requests and tokens in the provider's current windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Headroom {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl<'a> AccountView<'a> {
    /// The view of an account from its stored health at `now_ms`.
    pub fn from_health(name: &'a str, provider: &'a str, h: &Health, now_ms: u64) -> Self {
        let rem = |d| h.dim(d, now_ms).map(|x| x.remaining);
        AccountView {
            name,
            provider,
            state: h.kind_at(now_ms),
            cooling_until_ms: h.cooling_until(now_ms),
            disabled: match h.state {
                AccountState::Disabled {
                    reason,
                    status,
                    since_ms,
                    probe_after_ms,
                } => Some(DisabledView {
                    reason: reason.as_str(),
                    status,
                    since_ms,
                    probe_after_ms,
                }),
                _ => None,
            },
            headroom: Headroom {
                requests: rem(Dimension::Requests),
                tokens: rem(Dimension::Tokens),
                input_tokens: rem(Dimension::InputTokens),
                output_tokens: rem(Dimension::OutputTokens),
            },
            requests: h.requests,
            tokens: h.tokens,
        }
    }
}

/// How many models `top_models` lists.
pub const TOP_MODELS: usize = 5;
const HOUR_MS: u64 = 3_600_000;

/// A limit amount: a count, or USD for `cost_usd` limits (counted in micro-dollars).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
enum Amount {
    Count(u64),
    Usd(f64),
}

fn usd(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

#[derive(Serialize)]
struct WindowOut {
    kind: &'static str,
    limit: Amount,
    per: &'static str,
    window: &'static str,
    used: Amount,
    remaining: Amount,
    reset_s: u64,
}

impl From<&WindowUsage> for WindowOut {
    fn from(w: &WindowUsage) -> Self {
        let amount = |v: u64| {
            if w.kind == LimitKind::CostUsd {
                Amount::Usd(usd(v))
            } else {
                Amount::Count(v)
            }
        };
        WindowOut {
            kind: w.kind.as_str(),
            limit: amount(w.limit),
            per: w.per.as_str(),
            window: match w.window {
                WindowKind::Sliding => "sliding",
                WindowKind::Fixed => "fixed",
            },
            used: amount(w.used),
            remaining: amount(w.remaining),
            reset_s: w.reset_s,
        }
    }
}

#[derive(Serialize)]
struct ConcurrencyOut {
    in_use: u32,
    limit: Option<u32>,
}

#[derive(Serialize)]
struct TotalsOut {
    requests: u64,
    /// Requests whose upstream answer was not 2xx.
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    tokens: u64,
    cost_usd: f64,
}

impl From<&ConsumerTotals> for TotalsOut {
    fn from(t: &ConsumerTotals) -> Self {
        TotalsOut {
            requests: t.requests,
            errors: t.errors,
            input_tokens: t.input,
            output_tokens: t.output,
            cache_read_tokens: t.cache_read,
            cache_write_tokens: t.cache_write,
            tokens: t.tokens(),
            cost_usd: usd(t.cost_micros),
        }
    }
}

#[derive(Serialize)]
struct ConsumerOut<'a> {
    name: &'a str,
    windows: Vec<WindowOut>,
    concurrency: ConcurrencyOut,
    totals: TotalsOut,
    /// Requests tollgate refused itself (not in `totals`, which counts what went upstream).
    rejected: u64,
}

#[derive(Serialize)]
struct AccountOut<'a> {
    name: &'a str,
    provider: &'a str,
    state: &'static str,
    /// Unix seconds, rounded up.
    cooling_until: Option<u64>,
    /// While disabled: `invalid_key`.
    disabled_reason: Option<&'static str>,
    /// While disabled: the provider's status that disabled it.
    disabled_status: Option<u16>,
    /// While disabled: since when (unix seconds, rounded down).
    disabled_since: Option<u64>,
    /// While disabled: from when one request probes it (unix seconds, rounded up).
    probe_after: Option<u64>,
    headroom: Headroom,
    requests: u64,
    tokens: u64,
}

#[derive(Serialize)]
struct ModelOut<'a> {
    model: &'a str,
    requests: u64,
    tokens: u64,
}

#[derive(Serialize)]
struct MinuteOut {
    start_s: u64,
    /// Requests that went upstream.
    requests: u64,
    tokens: u64,
    cost_usd: f64,
    /// Requests tollgate refused.
    rejected: u64,
}

impl MinuteOut {
    fn new(b: &Bucket, slot_s: u64) -> MinuteOut {
        MinuteOut {
            start_s: b.minute.saturating_mul(slot_s),
            requests: b.requests,
            tokens: b.tokens,
            cost_usd: usd(b.cost_micros),
            rejected: b.rejected,
        }
    }
}

#[derive(Serialize)]
struct LastHourOut {
    requests: u64,
    tokens: u64,
    cost_usd: f64,
    rejected: u64,
    minutes: Vec<MinuteOut>,
}

#[derive(Serialize)]
struct LastDayOut {
    /// Length of each span.
    span_s: u64,
    requests: u64,
    tokens: u64,
    cost_usd: f64,
    rejected: u64,
    /// `analytics::SPANS` five-minute spans, oldest first.
    spans: Vec<MinuteOut>,
}

#[derive(Serialize)]
struct RejectionOut<'a> {
    reason: &'a str,
    requests: u64,
}

/// Response times of the requests that went upstream (`null` before the first).
#[derive(Serialize)]
struct LatencyOut {
    p50: Option<u64>,
    p95: Option<u64>,
    p99: Option<u64>,
}

#[derive(Serialize)]
struct RecentOut<'a> {
    /// When it ended, epoch ms.
    at_ms: u64,
    consumer: &'a str,
    model: &'a str,
    account: Option<&'a str>,
    status: u16,
    tokens: u64,
    latency_ms: u64,
    decision: &'a str,
}

#[derive(Serialize)]
struct UsageOut<'a> {
    now_s: u64,
    since_s: Option<u64>,
    /// Every request: those that went upstream and those tollgate refused.
    total_requests: u64,
    served_requests: u64,
    rejected_requests: u64,
    /// Fractions of `total_requests`: upstream 2xx, upstream not 2xx, refused by tollgate.
    success_rate: f64,
    error_rate: f64,
    rejection_rate: f64,
    /// By reason, most first.
    rejections: Vec<RejectionOut<'a>>,
    latency_ms: LatencyOut,
    total_tokens: u64,
    average_response_time_ms: f64,
    cost_estimate_usd: f64,
    active_accounts: usize,
    rate_limited_accounts: usize,
    disabled_accounts: usize,
    paused_accounts: usize,
    /// Every request of the last hour, refused ones included.
    requests_last_hour: u64,
    top_models: Vec<ModelOut<'a>>,
    totals: TotalsOut,
    last_hour: Apart<LastHourOut>,
    last_day: Apart<LastDayOut>,
    /// The newest requests, newest first.
    recent: Apart<Vec<RecentOut<'a>>>,
    consumers: Apart<Vec<ConsumerOut<'a>>>,
    accounts: Apart<Vec<AccountOut<'a>>>,
}

/// A part of the answer serialized by a function of its own: inlined whole, the usage
/// answer's serializer would be one function far past the size V8 compiles cheaply (see
/// `lib.rs`).
struct Apart<T>(T);

impl<T: Serialize> Serialize for Apart<T> {
    #[inline(never)]
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// `part / whole`, rounded to 4 decimals; 0 when `whole` is 0.
fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0
}

/// The body of `GET {path}/usage`. Field meanings are in the README ("Admin endpoints").
#[inline(never)]
pub fn usage_json(report: &UsageReport<'_>) -> String {
    let now = report.now_ms;
    let t = report.totals;
    let hour_sum = t.last_hour_sum(now);
    let count_state = |s: StateKind| report.accounts.iter().filter(|a| a.state == s).count();
    let rejected = t.rejected();
    let total = t.all.requests.saturating_add(rejected);

    let out = UsageOut {
        now_s: now / 1000,
        since_s: (t.since_ms != 0).then_some(t.since_ms / 1000),
        total_requests: total,
        served_requests: t.all.requests,
        rejected_requests: rejected,
        success_rate: rate(t.all.requests.saturating_sub(t.all.errors), total),
        error_rate: rate(t.all.errors, total),
        rejection_rate: rate(rejected, total),
        rejections: rejections_out(t),
        latency_ms: LatencyOut {
            p50: t.latency_quantile(0.50),
            p95: t.latency_quantile(0.95),
            p99: t.latency_quantile(0.99),
        },
        total_tokens: t.total_tokens(),
        average_response_time_ms: t
            .average_response_ms()
            .map_or(0.0, |ms| (ms * 10.0).round() / 10.0),
        cost_estimate_usd: usd(t.all.cost_micros),
        active_accounts: t.accounts_active_since(now.saturating_sub(HOUR_MS)),
        rate_limited_accounts: count_state(StateKind::Cooling),
        disabled_accounts: count_state(StateKind::Disabled),
        paused_accounts: count_state(StateKind::Paused),
        requests_last_hour: hour_sum.requests.saturating_add(hour_sum.rejected),
        top_models: t
            .top_models(TOP_MODELS)
            .into_iter()
            .map(|(model, c)| ModelOut {
                model,
                requests: c.requests,
                tokens: c.tokens,
            })
            .collect(),
        totals: TotalsOut::from(&t.all),
        last_hour: Apart(last_hour_out(t, now)),
        last_day: Apart(last_day_out(t, now)),
        recent: Apart(recent_out(report.recent)),
        consumers: Apart(consumers_out(report)),
        accounts: Apart(accounts_out(report)),
    };
    usage_text(&out)
}

/// The serialized usage body (`{}` if serialization fails, which it cannot for these types).
#[inline(never)]
fn usage_text(out: &UsageOut<'_>) -> String {
    serde_json::to_string(out).unwrap_or_else(|_| String::from("{}"))
}

/// Rejections by reason, most first, then by name.
#[inline(never)]
fn rejections_out(t: &Totals) -> Vec<RejectionOut<'_>> {
    let mut rejections: Vec<RejectionOut<'_>> = t
        .rejections
        .iter()
        .map(|(reason, n)| RejectionOut {
            reason,
            requests: *n,
        })
        .collect();
    // Most first, then by name: an insertion sort of a handful of reasons.
    for i in 1..rejections.len() {
        let mut j = i;
        while j > 0 {
            let (Some(a), Some(b)) = (rejections.get(j - 1), rejections.get(j)) else {
                break;
            };
            if (b.requests, a.reason) > (a.requests, b.reason) {
                rejections.swap(j - 1, j);
                j -= 1;
            } else {
                break;
            }
        }
    }
    rejections
}

/// The last hour, minute by minute.
#[inline(never)]
fn last_hour_out(t: &Totals, now: u64) -> LastHourOut {
    let hour_sum = t.last_hour_sum(now);
    LastHourOut {
        requests: hour_sum.requests,
        tokens: hour_sum.tokens,
        cost_usd: usd(hour_sum.cost_micros),
        rejected: hour_sum.rejected,
        minutes: t
            .last_hour(now)
            .iter()
            .map(|b| MinuteOut::new(b, 60))
            .collect(),
    }
}

/// The last day, span by span.
#[inline(never)]
fn last_day_out(t: &Totals, now: u64) -> LastDayOut {
    let day = t.last_day(now);
    let day_sum = day.iter().fold(Bucket::default(), |mut s, b| {
        s.add(b);
        s
    });
    LastDayOut {
        span_s: crate::analytics::SPAN_MS / 1000,
        requests: day_sum.requests,
        tokens: day_sum.tokens,
        cost_usd: usd(day_sum.cost_micros),
        rejected: day_sum.rejected,
        spans: day
            .iter()
            .map(|b| MinuteOut::new(b, crate::analytics::SPAN_MS / 1000))
            .collect(),
    }
}

/// The newest requests, as given.
#[inline(never)]
fn recent_out(recent: &[Recent]) -> Vec<RecentOut<'_>> {
    recent
        .iter()
        .map(|r| RecentOut {
            at_ms: r.at_ms,
            consumer: &r.consumer,
            model: &r.model,
            account: (!r.account.is_empty()).then_some(r.account.as_str()),
            status: r.status,
            tokens: r.tokens,
            latency_ms: r.latency_ms,
            decision: &r.decision,
        })
        .collect()
}

/// Configured consumers with their windows, then the ones only counted (names from
/// `consumer_header`, `unknown` callers, `other`) with their totals and no windows.
#[inline(never)]
fn consumers_out<'r>(report: &'r UsageReport<'_>) -> Vec<ConsumerOut<'r>> {
    let t = report.totals;
    let empty = ConsumerTotals::default();
    let rejected_by = |name: &str| crate::analytics::count_of(&t.consumer_rejections, name);

    let mut consumers: Vec<ConsumerOut<'_>> = report
        .consumers
        .iter()
        .map(|c| ConsumerOut {
            name: c.name,
            windows: c.usage.windows.iter().map(WindowOut::from).collect(),
            concurrency: ConcurrencyOut {
                in_use: c.usage.concurrent_in_use,
                limit: c.usage.concurrent_limit,
            },
            totals: TotalsOut::from(t.consumers.get(c.name).unwrap_or(&empty)),
            rejected: rejected_by(c.name),
        })
        .collect();
    let counted = t
        .consumers
        .keys()
        .chain(t.consumer_rejections.iter().map(|(k, _)| k));
    for name in counted {
        if !consumers.iter().any(|c| c.name == name.as_str()) {
            consumers.push(ConsumerOut {
                name,
                windows: Vec::new(),
                concurrency: ConcurrencyOut {
                    in_use: 0,
                    limit: None,
                },
                totals: TotalsOut::from(t.consumers.get(name).unwrap_or(&empty)),
                rejected: rejected_by(name),
            });
        }
    }
    consumers
}

/// Configured accounts with their state and counts.
#[inline(never)]
fn accounts_out<'r>(report: &'r UsageReport<'_>) -> Vec<AccountOut<'r>> {
    report
        .accounts
        .iter()
        .map(|a| AccountOut {
            name: a.name,
            provider: a.provider,
            state: a.state.as_str(),
            cooling_until: a.cooling_until_ms.map(|ms| ms.div_ceil(1000)),
            disabled_reason: a.disabled.map(|d| d.reason),
            disabled_status: a.disabled.map(|d| d.status),
            disabled_since: a.disabled.map(|d| d.since_ms / 1000),
            probe_after: a.disabled.map(|d| d.probe_after_ms.div_ceil(1000)),
            headroom: a.headroom,
            requests: a.requests,
            tokens: a.tokens,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Account actions
// ---------------------------------------------------------------------------------------------

/// What `POST {admin.path}/accounts/{name}/{action}` does to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountAction {
    /// Back to ok at once (a pause stays).
    Reset,
    /// Never picked until resumed.
    Pause,
    /// Picked again (as its learned state allows).
    Resume,
}

impl AccountAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountAction::Reset => "reset",
            AccountAction::Pause => "pause",
            AccountAction::Resume => "resume",
        }
    }
}

/// The account and action named by `/accounts/{name}/{reset|pause|resume}`, the path below
/// `admin.path` (`Route::Admin`); `None` for any other path. The name is not checked against
/// the configuration.
pub fn account_target(rest: &str) -> Option<(&str, AccountAction)> {
    let (name, action) = rest.strip_prefix("/accounts/")?.split_once('/')?;
    let action = [
        AccountAction::Reset,
        AccountAction::Pause,
        AccountAction::Resume,
    ]
    .into_iter()
    .find(|a| a.as_str() == action)?;
    (!name.is_empty()).then_some((name, action))
}

/// The account named by `/accounts/{name}/reset`; `None` for any other path.
pub fn reset_target(rest: &str) -> Option<&str> {
    account_target(rest)
        .filter(|(_, a)| *a == AccountAction::Reset)
        .map(|(name, _)| name)
}

/// What the host answers to an account action, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionAnswer<'a> {
    pub status: u32,
    /// JSON.
    pub body: String,
    /// A 405 names the method allowed (`allow` header).
    pub allow: Option<&'static str>,
    /// The account acted on: for the host's `tollgate_account_state` gauge and log line.
    pub done: Option<ActionDone<'a>>,
}

/// An account action that was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionDone<'a> {
    pub name: &'a str,
    /// Its index in `cfg.accounts`; `None` for an account known from the roster only (the
    /// downstream stage of a failover setup).
    pub index: Option<usize>,
    pub action: AccountAction,
    pub transition: Transition,
}

/// Whether a state-changing admin request is refused as cross-site (a forged form POST): its
/// admin key came only from HTTP Basic auth, which a browser adds by itself to any page's
/// request, and the browser says another site sent it (`sec-fetch-site`), or its `origin`
/// names another host than `authority`. A client that sends the key itself (`x-api-key`,
/// `Bearer`) is never refused, nor one that sends neither header (not a browser).
pub fn cross_site(
    basic_only: bool,
    origin: Option<&str>,
    authority: Option<&str>,
    fetch_site: Option<&str>,
) -> bool {
    if !basic_only {
        return false;
    }
    if let Some(site) = fetch_site {
        return !matches!(site.trim(), "same-origin" | "none");
    }
    let Some(origin) = origin.map(str::trim) else {
        return false;
    };
    let host = origin.split_once("://").map_or(origin, |(_, h)| h);
    !authority.is_some_and(|a| a.trim().eq_ignore_ascii_case(host))
}

/// `POST {admin.path}/accounts/{name}/{reset|pause|resume}` (the admin key was checked):
/// `None` when `rest` names no account action. 405 for another method, 403 for a cross-site
/// request (see [`cross_site`]), 404 for a name that is neither configured nor (without
/// accounts of its own) in the roster, 503 when shared state stays busy, else 200 with
/// `{"account","state","was"}`.
pub fn account_action<'a>(
    store: &dyn Store,
    cfg: &'a Config,
    method: &str,
    rest: &'a str,
    cross_site: bool,
    now_ms: u64,
) -> Option<ActionAnswer<'a>> {
    let (name, action) = account_target(rest)?;
    let answer = |status, body: &str| ActionAnswer {
        status,
        body: body.to_owned(),
        allow: None,
        done: None,
    };
    if !method.eq_ignore_ascii_case("POST") {
        return Some(ActionAnswer {
            allow: Some("POST"),
            ..answer(405, r#"{"error":"use POST"}"#)
        });
    }
    if cross_site {
        return Some(answer(403, r#"{"error":"cross-site request refused"}"#));
    }
    let found = cfg.accounts.iter().position(|a| a.name == name);
    let listed =
        || cfg.accounts.is_empty() && accounts::read_roster(store).iter().any(|l| l.name == name);
    let result: Result<Option<Transition>, StoreError> = match (found, action) {
        (Some(i), _) => match (cfg.accounts.get(i), action) {
            (Some(a), AccountAction::Reset) => accounts::reset(store, a, now_ms).map(Some),
            (Some(a), AccountAction::Pause) => {
                accounts::set_paused(store, a, true, now_ms).map(Some)
            }
            (Some(a), AccountAction::Resume) => {
                accounts::set_paused(store, a, false, now_ms).map(Some)
            }
            (None, _) => Ok(None),
        },
        (None, _) if !listed() => Ok(None),
        (None, AccountAction::Reset) => accounts::reset_named(store, name, now_ms),
        (None, AccountAction::Pause) => accounts::set_paused_named(store, name, true, now_ms),
        (None, AccountAction::Resume) => accounts::set_paused_named(store, name, false, now_ms),
    };
    Some(match result {
        Ok(None) => answer(404, unknown_account_json()),
        Ok(Some(t)) => ActionAnswer {
            done: Some(ActionDone {
                name,
                index: found,
                action,
                transition: t,
            }),
            ..answer(200, &reset_json(name, &t))
        },
        Err(_) => answer(503, r#"{"error":"account state is busy; try again"}"#),
    })
}

/// The 200 body of `POST {path}/accounts/{name}/{action}` (the action's transition):
/// `{"account":"org-1","state":"ok","was":"disabled"}`.
pub fn reset_json(account: &str, t: &Transition) -> String {
    #[derive(Serialize)]
    struct ResetOut<'a> {
        account: &'a str,
        state: &'static str,
        was: &'static str,
    }
    serde_json::to_string(&ResetOut {
        account,
        state: t.after.as_str(),
        was: t.before.as_str(),
    })
    .unwrap_or_else(|_| String::from("{}"))
}

/// The 404 body of a reset naming no configured account (the name is not echoed).
pub fn unknown_account_json() -> &'static str {
    r#"{"error":"unknown account"}"#
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

/// The body of `GET {path}/`: one self-contained page (inline CSS and JS, no external asset)
/// that reads `{path}/usage` every 5 s with the Basic credentials the browser already holds.
pub fn dashboard_html(path: &str) -> String {
    let url = dashboard_url(path);
    String::from_utf8(inflate_page(&dashboard_deflate(url.as_bytes()), url.len()))
        .unwrap_or_default()
}

/// The dashboard response for a client's `accept-encoding`: the page gzip-encoded when the
/// client takes gzip (send `content-encoding: gzip` with it), else `dashboard_html`.
pub struct Dashboard {
    pub gzip: bool,
    pub body: Vec<u8>,
}

/// The dashboard for a request with this `accept-encoding` header (gzip when it lists gzip or
/// x-gzip without `q=0`: the codings `usage::decodable_accept_encoding` keeps).
pub fn dashboard(path: &str, accept_encoding: Option<&str>) -> Dashboard {
    let gzip = crate::usage::decodable_accept_encoding(accept_encoding)
        .split(", ")
        .any(|c| c == "gzip" || c == "x-gzip");
    if !gzip {
        return Dashboard {
            gzip,
            body: dashboard_html(path).into_bytes(),
        };
    }
    let url = dashboard_url(path);
    let deflated = dashboard_deflate(url.as_bytes());
    // The trailer's CRC-32 and size are of the page itself.
    let page = inflate_page(&deflated, url.len());
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    let mut body = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    body.extend_from_slice(&deflated);
    body.extend_from_slice(&crc32(&page).to_le_bytes());
    body.extend_from_slice(&u32::try_from(page.len()).unwrap_or(u32::MAX).to_le_bytes());
    Dashboard { gzip, body }
}

/// `{path}/usage` as the JavaScript string literal that replaces `"__USAGE_URL__"`.
fn dashboard_url(path: &str) -> String {
    js_string(&format!("{}/usage", path.trim_end_matches('/')))
}

/// `s` as a JavaScript string literal that is also safe inside an HTML `<script>` element.
fn js_string(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

// The page (admin/dashboard.html) is kept deflated: build.rs cuts it at its one
// `"__USAGE_URL__"` into two raw deflate pieces, the head ending with a sync flush (so more
// blocks can follow) and the tail holding the final block. 20 KB of page is ~6 KB of wasm.
const DASHBOARD_HEAD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard_head.deflate"));
const DASHBOARD_TAIL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard_tail.deflate"));
/// Bytes of the page without the marker.
const DASHBOARD_LEN: usize = include!(concat!(env!("OUT_DIR"), "/dashboard_len.txt"));

/// The page with `url` in place of the marker, as one raw deflate stream: `url` goes between
/// the two pieces as stored blocks, so the page is never compressed at run time.
fn dashboard_deflate(url: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DASHBOARD_HEAD.len() + url.len() + DASHBOARD_TAIL.len() + 8);
    out.extend_from_slice(DASHBOARD_HEAD);
    for chunk in url.chunks(usize::from(u16::MAX)) {
        // A stored block: BFINAL 0 and BTYPE 00 (the head ends byte-aligned), then LEN and
        // its one's complement, little-endian.
        let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(DASHBOARD_TAIL);
    out
}

/// The page inflated from `dashboard_deflate` (`url_len`: bytes of the URL in it).
fn inflate_page(deflated: &[u8], url_len: usize) -> Vec<u8> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, DASHBOARD_LEN + url_len)
        .unwrap_or_default()
}

/// The CRC-32 of gzip's trailer (bitwise: it runs once per dashboard load).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests;
