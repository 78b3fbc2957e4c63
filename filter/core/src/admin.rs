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
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
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
pub fn usage_json(report: &UsageReport<'_>) -> String {
    let now = report.now_ms;
    let t = report.totals;
    let hour = t.last_hour(now);
    let hour_sum = t.last_hour_sum(now);
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
    // Consumers that were counted but are not configured (names from `consumer_header`,
    // `unknown` callers, `other`): their totals, without windows.
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

    let accounts: Vec<AccountOut<'_>> = report
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
        .collect();
    let count_state = |s: StateKind| report.accounts.iter().filter(|a| a.state == s).count();
    let rejected = t.rejected();
    let total = t.all.requests.saturating_add(rejected);
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
    let day = t.last_day(now);
    let day_sum = day.iter().fold(Bucket::default(), |mut s, b| {
        s.add(b);
        s
    });

    let out = UsageOut {
        now_s: now / 1000,
        since_s: (t.since_ms != 0).then_some(t.since_ms / 1000),
        total_requests: total,
        served_requests: t.all.requests,
        rejected_requests: rejected,
        success_rate: rate(t.all.requests.saturating_sub(t.all.errors), total),
        error_rate: rate(t.all.errors, total),
        rejection_rate: rate(rejected, total),
        rejections,
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
        last_hour: Apart(LastHourOut {
            requests: hour_sum.requests,
            tokens: hour_sum.tokens,
            cost_usd: usd(hour_sum.cost_micros),
            rejected: hour_sum.rejected,
            minutes: hour.iter().map(|b| MinuteOut::new(b, 60)).collect(),
        }),
        last_day: Apart(LastDayOut {
            span_s: crate::analytics::SPAN_MS / 1000,
            requests: day_sum.requests,
            tokens: day_sum.tokens,
            cost_usd: usd(day_sum.cost_micros),
            rejected: day_sum.rejected,
            spans: day
                .iter()
                .map(|b| MinuteOut::new(b, crate::analytics::SPAN_MS / 1000))
                .collect(),
        }),
        recent: Apart(
            report
                .recent
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
                .collect(),
        ),
        consumers: Apart(consumers),
        accounts: Apart(accounts),
    };
    serde_json::to_string(&out).unwrap_or_else(|_| String::from("{}"))
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
    let url = format!("{}/usage", path.trim_end_matches('/'));
    DASHBOARD.replace("\"__USAGE_URL__\"", &js_string(&url))
}

/// `s` as a JavaScript string literal that is also safe inside an HTML `<script>` element.
fn js_string(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

const DASHBOARD: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>tollgate · usage</title>
<style>
:root {
  --bg: #f6f7f9; --card: #fff; --ink: #1c2430; --muted: #6a7381; --line: #e3e6eb;
  --ok: #1f9d55; --warn: #d98a00; --bad: #d64545; --accent: #3b6fd8; --track: #edf0f4;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { display: flex; align-items: baseline; gap: 12px; padding: 18px 28px 8px; }
header h1 { margin: 0; font-size: 20px; letter-spacing: .2px; }
header .sub { color: var(--muted); }
#status { margin-left: auto; font-size: 12px; padding: 3px 10px; border-radius: 999px;
  background: var(--track); color: var(--muted); }
#status.err { background: #fde8e8; color: var(--bad); }
main { padding: 8px 28px 28px; display: grid; gap: 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; }
.card, section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.card { padding: 12px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .4px; }
.card .v { font-size: 24px; font-weight: 600; margin-top: 2px; font-variant-numeric: tabular-nums; }
.card .n { color: var(--muted); font-size: 12px; }
section { padding: 14px 16px; overflow-x: auto; }
section h2 { margin: 0 0 10px; font-size: 15px; }
section h2 small { color: var(--muted); font-weight: normal; margin-left: 6px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 18px; }
@media (max-width: 900px) { .charts { grid-template-columns: 1fr; } }
.chart .head { display: flex; justify-content: space-between; color: var(--muted); font-size: 12px; }
.chart .head b { color: var(--ink); font-size: 16px; font-variant-numeric: tabular-nums; }
.bars { display: flex; align-items: flex-end; gap: 2px; height: 90px; margin-top: 6px;
  border-bottom: 1px solid var(--line); }
.bars div { flex: 1; background: var(--accent); border-radius: 2px 2px 0 0; min-height: 1px; opacity: .85; }
.bars div.zero { background: var(--track); }
.bars.dense { gap: 0; }
.bars.dense div { border-radius: 0; }
.axis { display: flex; justify-content: space-between; color: var(--muted); font-size: 11px; }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; color: var(--muted); font-weight: 500; font-size: 12px;
  border-bottom: 1px solid var(--line); padding: 6px 8px; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: 8px; vertical-align: top; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.ok { background: #e3f6eb; color: var(--ok); }
.badge.cooling { background: #fff3dc; color: var(--warn); }
.badge.disabled { background: #fde8e8; color: var(--bad); }
.badge.paused { background: #eceef2; color: var(--muted); }
.bars div.bad { background: var(--bad); }
.recent td { padding: 5px 8px; font-size: 13px; white-space: nowrap; }
.recent .ok { color: var(--ok); }
.recent .bad { color: var(--bad); }
button.act { font: inherit; font-size: 12px; padding: 1px 8px; margin-right: 4px; border: 1px solid var(--line);
  border-radius: 6px; background: var(--card); color: var(--ink); cursor: pointer; }
button.act:hover { border-color: var(--accent); }
.muted { color: var(--muted); }
.limit { display: grid; grid-template-columns: 140px minmax(120px, 1fr) 210px; gap: 10px;
  align-items: center; font-size: 12px; margin: 2px 0 6px; min-width: 440px; }
.meter { height: 8px; background: var(--track); border-radius: 4px; overflow: hidden; }
.meter > div { height: 100%; background: var(--ok); }
.meter > div.warn { background: var(--warn); }
.meter > div.bad { background: var(--bad); }
.meter > div.plain { background: var(--accent); }
.limit .t { font-variant-numeric: tabular-nums; white-space: nowrap; text-align: right; }
.mbar { min-width: 160px; padding-top: 6px; }
.empty { color: var(--muted); padding: 8px 0; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
</style>
</head>
<body>
<header>
  <h1>tollgate</h1><span class="sub">usage and accounts · refreshed every 5 s</span>
  <span id="status">loading…</span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="k">Requests</div><div class="v" id="total_requests">–</div><div class="n" id="errors_note">&nbsp;</div></div>
    <div class="card"><div class="k">Rejected</div><div class="v" id="rejected_requests">–</div><div class="n" id="rejected_note">refused by tollgate</div></div>
    <div class="card"><div class="k">Success rate</div><div class="v" id="success_rate">–</div><div class="n" id="rates_note">upstream 2xx</div></div>
    <div class="card"><div class="k">Latency p50 / p95 / p99</div><div class="v" id="latency">–</div><div class="n">ms, to the end of the response</div></div>
    <div class="card"><div class="k">Tokens</div><div class="v" id="total_tokens">–</div><div class="n">input + cache + output</div></div>
    <div class="card"><div class="k">Cost estimate</div><div class="v" id="cost_estimate_usd">–</div><div class="n">USD, from pricing</div></div>
    <div class="card"><div class="k">Avg response</div><div class="v" id="average_response_time_ms">–</div><div class="n">to the end of the response</div></div>
    <div class="card"><div class="k">Last hour</div><div class="v" id="requests_last_hour">–</div><div class="n">requests</div></div>
    <div class="card"><div class="k">Active accounts</div><div class="v" id="active_accounts">–</div><div class="n">served in the last hour</div></div>
    <div class="card"><div class="k">Rate-limited</div><div class="v" id="rate_limited_accounts">–</div><div class="n" id="disabled_note">accounts cooling down</div></div>
  </div>
  <section>
    <h2>Last hour <small>per minute</small></h2>
    <div class="charts">
      <div class="chart"><div class="head"><span>Requests</span><b id="hour_requests">–</b></div><div class="bars" id="bars_requests"></div><div class="axis"><span>−60 min</span><span>now</span></div></div>
      <div class="chart"><div class="head"><span>Rejected</span><b id="hour_rejected">–</b></div><div class="bars" id="bars_rejected"></div><div class="axis"><span>−60 min</span><span>now</span></div></div>
      <div class="chart"><div class="head"><span>Tokens</span><b id="hour_tokens">–</b></div><div class="bars" id="bars_tokens"></div><div class="axis"><span>−60 min</span><span>now</span></div></div>
      <div class="chart"><div class="head"><span>Cost</span><b id="hour_cost">–</b></div><div class="bars" id="bars_cost"></div><div class="axis"><span>−60 min</span><span>now</span></div></div>
    </div>
  </section>
  <section>
    <h2>Last 24 hours <small>per 5 minutes</small></h2>
    <div class="charts">
      <div class="chart"><div class="head"><span>Requests</span><b id="day_requests">–</b></div><div class="bars dense" id="bars_day_requests"></div><div class="axis"><span>−24 h</span><span>now</span></div></div>
      <div class="chart"><div class="head"><span>Rejected</span><b id="day_rejected">–</b></div><div class="bars dense" id="bars_day_rejected"></div><div class="axis"><span>−24 h</span><span>now</span></div></div>
      <div class="chart"><div class="head"><span>Tokens</span><b id="day_tokens">–</b></div><div class="bars dense" id="bars_day_tokens"></div><div class="axis"><span>−24 h</span><span>now</span></div></div>
    </div>
  </section>
  <div class="grid2">
    <section>
      <h2>Rejections <small>by reason</small></h2>
      <div id="rejections"></div>
    </section>
    <section>
      <h2>Top models <small>by requests</small></h2>
      <div id="models"></div>
    </section>
  </div>
  <section>
    <h2>Recent requests <small>newest first</small></h2>
    <div id="recent" class="recent"></div>
  </section>
  <section>
    <h2>Accounts</h2>
    <div id="accounts"></div>
  </section>
  <section>
    <h2>Consumers <small>how full each limit window is</small></h2>
    <div id="consumers"></div>
  </section>
</main>
<footer id="since"></footer>
<script>
"use strict";
const USAGE_URL = "__USAGE_URL__";
const ADMIN_BASE = USAGE_URL.slice(0, -"/usage".length);
const $ = (id) => document.getElementById(id);
// An empty icon of its own: the browser's favicon.ico request would be traffic tollgate counts.
const icon = document.createElement("link");
icon.rel = "icon";
icon.href = "data:,";
document.head.appendChild(icon);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function int(n) { return Number(n || 0).toLocaleString("en-US"); }
function short(n) {
  n = Number(n || 0);
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return int(n);
}
function usd(x) {
  x = Number(x || 0);
  if (x === 0) return "$0.00";
  if (x >= 1) return "$" + x.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
  if (x >= 0.01) return "$" + x.toFixed(4);
  return "$" + parseFloat(x.toPrecision(3));
}
function dur(s) {
  s = Math.max(0, Math.round(s));
  if (s < 90) return s + "s";
  if (s < 5400) return Math.round(s / 60) + "m";
  if (s < 172800) return Math.round(s / 3600) + "h";
  return Math.round(s / 86400) + "d";
}
function clock(unix) { return new Date(unix * 1000).toLocaleTimeString([], {hour12: false}); }
function amount(kind, v) { return kind === "cost_usd" ? usd(v) : short(v); }

function table(headers, rows) {
  if (!rows.length) return el("div", "empty", "nothing yet");
  const t = el("table"), head = el("tr");
  for (const [h, num] of headers) head.appendChild(el("th", num ? "num" : "", h));
  t.appendChild(el("thead")).appendChild(head);
  const body = t.appendChild(el("tbody"));
  for (const r of rows) body.appendChild(r);
  return t;
}
function cell(tr, content, cls) {
  const td = el("td", cls || "");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  tr.appendChild(td);
  return td;
}
function meter(frac, plain) {
  const m = el("div", "meter");
  const f = el("div", plain ? "plain" : frac >= 0.9 ? "bad" : frac >= 0.7 ? "warn" : "");
  f.style.width = Math.min(100, Math.max(0, frac * 100)).toFixed(1) + "%";
  m.appendChild(f);
  return m;
}
function bars(id, minutes, pick, label, cls) {
  const box = $(id), max = Math.max(...minutes.map(pick), 0);
  box.replaceChildren();
  for (const m of minutes) {
    const v = pick(m), b = el("div", v ? (cls || "") : "zero");
    b.style.height = max ? Math.max(2, (v / max) * 100) + "%" : "1px";
    b.title = clock(m.start_s) + " · " + label(v);
    box.appendChild(b);
  }
}

function pct(x) { return (Math.round(Number(x || 0) * 1000) / 10) + "%"; }
async function act(name, action) {
  const st = $("status");
  try {
    const r = await fetch(location.origin + ADMIN_BASE + "/accounts/" + encodeURIComponent(name) + "/" + action,
      {method: "POST", credentials: "same-origin", cache: "no-store"});
    if (!r.ok) throw new Error(action + " " + name + ": " + r.status);
    await load();
  } catch (e) {
    st.className = "err";
    st.textContent = String(e.message || e);
  }
}

function render(d) {
  $("total_requests").textContent = int(d.total_requests);
  $("errors_note").textContent = int(d.served_requests) + " served · " + int(d.rejected_requests) + " rejected";
  $("rejected_requests").textContent = int(d.rejected_requests);
  $("rejected_note").textContent = d.rejections.length
    ? "most: " + d.rejections[0].reason + " (" + int(d.rejections[0].requests) + ")" : "refused by tollgate";
  $("success_rate").textContent = d.total_requests ? pct(d.success_rate) : "–";
  $("rates_note").textContent = pct(d.error_rate) + " upstream errors · " + pct(d.rejection_rate) + " rejected";
  const lat = d.latency_ms;
  $("latency").textContent = lat.p50 === null ? "–" : int(lat.p50) + " / " + int(lat.p95) + " / " + int(lat.p99);
  $("total_tokens").textContent = int(d.total_tokens);
  $("cost_estimate_usd").textContent = usd(d.cost_estimate_usd);
  $("average_response_time_ms").textContent = int(Math.round(d.average_response_time_ms)) + " ms";
  $("requests_last_hour").textContent = int(d.requests_last_hour);
  $("active_accounts").textContent = int(d.active_accounts) + " / " + int(d.accounts.length);
  $("rate_limited_accounts").textContent = int(d.rate_limited_accounts);
  const off = [];
  if (d.disabled_accounts) off.push(int(d.disabled_accounts) + " disabled");
  if (d.paused_accounts) off.push(int(d.paused_accounts) + " paused");
  $("disabled_note").textContent = off.length ? off.join(" · ") : "accounts cooling down";

  const h = d.last_hour;
  $("hour_requests").textContent = int(h.requests + h.rejected);
  $("hour_tokens").textContent = int(h.tokens);
  $("hour_cost").textContent = usd(h.cost_usd);
  bars("bars_requests", h.minutes, (m) => m.requests + m.rejected, (v) => int(v) + " requests");
  $("hour_rejected").textContent = int(h.rejected);
  bars("bars_rejected", h.minutes, (m) => m.rejected, (v) => int(v) + " rejected", "bad");
  const day = d.last_day;
  $("day_requests").textContent = int(day.requests + day.rejected);
  $("day_rejected").textContent = int(day.rejected);
  $("day_tokens").textContent = int(day.tokens);
  bars("bars_day_requests", day.spans, (m) => m.requests + m.rejected, (v) => int(v) + " requests");
  bars("bars_day_rejected", day.spans, (m) => m.rejected, (v) => int(v) + " rejected", "bad");
  bars("bars_day_tokens", day.spans, (m) => m.tokens, (v) => int(v) + " tokens");

  const topRej = d.rejections.length ? d.rejections[0].requests : 0;
  const rej = d.rejections.map((x) => {
    const tr = el("tr");
    tr.dataset.reason = x.reason;
    cell(tr, x.reason.replace(/_/g, " "));
    cell(tr, int(x.requests), "num");
    const b = el("div", "mbar");
    b.appendChild(meter(topRej ? x.requests / topRej : 0, true));
    cell(tr, b);
    return tr;
  });
  $("rejections").replaceChildren(table([["Reason"], ["Requests", 1], [""]], rej));

  const recent = d.recent.map((r) => {
    const tr = el("tr");
    tr.dataset.decision = r.decision;
    cell(tr, clock(r.at_ms / 1000), "muted");
    cell(tr, r.consumer);
    cell(tr, r.model);
    cell(tr, r.account === null ? "–" : r.account, r.account === null ? "muted" : "");
    cell(tr, String(r.status || "–"), "num " + (r.status >= 200 && r.status < 300 ? "ok" : "bad"));
    cell(tr, int(r.tokens), "num");
    cell(tr, int(r.latency_ms) + " ms", "num");
    cell(tr, r.decision, r.decision === "admitted" ? "ok" : "bad");
    return tr;
  });
  $("recent").replaceChildren(table([["Time"], ["Consumer"], ["Model"], ["Account"], ["Status", 1],
    ["Tokens", 1], ["Latency", 1], ["Decision"]], recent));
  bars("bars_tokens", h.minutes, (m) => m.tokens, (v) => int(v) + " tokens");
  bars("bars_cost", h.minutes, (m) => m.cost_usd, usd);

  const acc = d.accounts.map((a) => {
    const tr = el("tr");
    tr.dataset.account = a.name;
    cell(tr, a.name);
    cell(tr, a.provider, "muted");
    cell(tr, el("span", "badge " + a.state, a.state));
    cell(tr, a.disabled_reason ? a.disabled_reason.replace("_", " ") + " (" + a.disabled_status + ") since " +
        clock(a.disabled_since) + (a.probe_after > d.now_s ? " · probe in " + dur(a.probe_after - d.now_s) : " · probe due")
      : a.cooling_until ? "until " + clock(a.cooling_until) + " (" + dur(a.cooling_until - d.now_s) + ")" : "–", "muted");
    const hr = a.headroom, parts = [];
    if (hr.requests !== null) parts.push(int(hr.requests) + " req");
    if (hr.tokens !== null) parts.push(short(hr.tokens) + " tok");
    if (hr.input_tokens !== null) parts.push(short(hr.input_tokens) + " in");
    if (hr.output_tokens !== null) parts.push(short(hr.output_tokens) + " out");
    cell(tr, parts.length ? parts.join(" · ") : "unknown", parts.length ? "" : "muted");
    cell(tr, int(a.requests), "num");
    cell(tr, int(a.tokens), "num");
    const acts = el("span");
    for (const action of [a.state === "paused" ? "resume" : "pause", "reset"]) {
      const b = el("button", "act", action);
      b.type = "button";
      b.addEventListener("click", () => act(a.name, action));
      acts.appendChild(b);
    }
    cell(tr, acts);
    return tr;
  });
  $("accounts").replaceChildren(table(
    [["Account"], ["Provider"], ["State"], ["Why / until"], ["Headroom left"], ["Requests", 1], ["Tokens", 1], [""]], acc));

  const cons = d.consumers.map((c) => {
    const tr = el("tr"), t = c.totals;
    tr.dataset.consumer = c.name;
    cell(tr, c.name);
    const req = el("div");
    req.appendChild(el("div", "", int(t.requests)));
    if (c.rejected) req.appendChild(el("div", "muted", int(c.rejected) + " rejected"));
    cell(tr, req, "num");
    const tok = el("div");
    tok.appendChild(el("div", "", int(t.tokens)));
    tok.appendChild(el("div", "muted", short(t.input_tokens) + " in · " +
      short(t.cache_read_tokens + t.cache_write_tokens) + " cache · " + short(t.output_tokens) + " out"));
    cell(tr, tok, "num");
    cell(tr, usd(t.cost_usd), "num");
    const lim = el("div");
    for (const w of c.windows) {
      const row = el("div", "limit");
      row.appendChild(el("span", "", w.kind.replace("_", " ") + " / " + w.per + (w.window === "fixed" ? " (fixed)" : "")));
      row.appendChild(meter(w.limit ? w.used / w.limit : 1));
      row.appendChild(el("span", "t", amount(w.kind, w.used) + " of " + amount(w.kind, w.limit) +
        (w.used ? " · resets in " + dur(w.reset_s) : "")));
      lim.appendChild(row);
    }
    if (c.concurrency.limit !== null) {
      const row = el("div", "limit");
      row.appendChild(el("span", "", "in flight"));
      row.appendChild(meter(c.concurrency.in_use / c.concurrency.limit));
      row.appendChild(el("span", "t", int(c.concurrency.in_use) + " of " + int(c.concurrency.limit)));
      lim.appendChild(row);
    }
    if (!lim.childNodes.length) lim.appendChild(el("span", "muted", "no limits"));
    cell(tr, lim);
    return tr;
  });
  $("consumers").replaceChildren(table(
    [["Consumer"], ["Requests", 1], ["Tokens", 1], ["Cost", 1], ["Limits"]], cons));

  const top = d.top_models.length ? d.top_models[0].requests : 0;
  const models = d.top_models.map((m) => {
    const tr = el("tr");
    cell(tr, m.model);
    cell(tr, int(m.requests), "num");
    const b = el("div", "mbar");
    b.appendChild(meter(top ? m.requests / top : 0, true));
    cell(tr, b);
    cell(tr, int(m.tokens), "num");
    return tr;
  });
  $("models").replaceChildren(table([["Model"], ["Requests", 1], [""], ["Tokens", 1]], models));

  $("since").textContent = d.since_s
    ? "Counting since " + new Date(d.since_s * 1000).toLocaleString() + " (this Envoy's start of traffic)."
    : "No request counted yet.";
}

async function load() {
  const st = $("status");
  try {
    // From the origin, not the page URL: a page opened with credentials in its URL
    // (user:key@host) would otherwise resolve to a URL with them, which fetch refuses.
    const r = await fetch(location.origin + USAGE_URL, {credentials: "same-origin", cache: "no-store"});
    if (r.status === 401) throw new Error("admin key required: reload to sign in");
    if (!r.ok) throw new Error("usage API answered " + r.status);
    render(await r.json());
    st.className = "";
    st.textContent = "updated " + new Date().toLocaleTimeString([], {hour12: false});
  } catch (e) {
    st.className = "err";
    st.textContent = String(e.message || e);
  }
}
load();
setInterval(load, 5000);
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests;
