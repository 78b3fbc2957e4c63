//! The account a request goes upstream with: choosing it (or, in an upstream stage, one per
//! retry attempt), swapping the client's credential for the account's, learning the
//! account's health from its answers, and settling what its own limits charged.

use super::host::{Action, Host};
use super::reject::Rejection;
use super::state::show_transition;
use super::{Flow, Phase};
use crate::accounts::{self, AffinityUse, Attempt, Observation, Outcome};
use crate::api::{self, Reason, Route};
use crate::facts;
use crate::identity::{self, Place};
use crate::limits::Usage;
use crate::provider;
use crate::quota::{self, Amounts, OwnerKey};

impl Flow {
    /// Replaces the client's credentials with an account's: for a metered request the one
    /// `selection` picks (never one in `exclude`), else the first account of the API. With no
    /// accounts, only a tollgate key is removed, so it never reaches the upstream.
    pub(crate) fn choose_account<H: Host>(
        &mut self,
        h: &mut H,
        path: &str,
        metered: bool,
        session: Option<&str>,
        exclude: &[usize],
    ) -> Result<(), Action> {
        let plugin = self.plugin.clone();
        let cfg = &plugin.cfg;
        if cfg.accounts.is_empty() {
            self.without_pool(h, path);
            return Ok(());
        }
        // With a pooled key no query parameter may carry, re-target or mask a credential.
        if let Some(stripped) = identity::strip_pooled_query(path) {
            h.set_request_header(":path", &stripped);
        }
        let chosen = if metered {
            self.select_account(h, session, exclude)?
        } else {
            accounts::first_usable_for(h, &cfg.accounts, self.api, h.now_ms())
        };
        let Some(i) = chosen else {
            return Err(self.no_account(h));
        };
        self.account = Some(i);
        let Some(account) = cfg.accounts.get(i) else {
            self.remove_client_credentials(h, "");
            return Ok(());
        };
        let (name, value) = accounts::credential(account);
        // The account's credential replaces the client's in the same header.
        self.remove_client_credentials(h, name);
        // A pooled key's answers come back uncompressed: an error that echoes the key is
        // cleared of it, and read for evidence about the key, only in plain bytes.
        h.set_request_header("accept-encoding", "identity");
        // Nothing the client sends may scope or re-target the pooled key.
        let scoping = provider::scoping_headers().map(|h| h as &str);
        for n in scoping.chain(cfg.strip_request_headers.iter().map(String::as_str)) {
            if self.headers.has(n) {
                h.remove_request_header(n);
            }
        }
        h.set_request_header(name, &value);
        for (k, v) in provider::of(account.provider).default_headers() {
            if self.headers.get(k).is_none() {
                h.set_request_header(k, v);
            }
        }
        for (k, v) in &account.headers {
            h.set_request_header(k, v);
        }
        if let Some(route) = &account.route {
            h.set_request_header("x-tollgate-route", route);
            h.clear_route_cache();
        }
        self.fact(h, facts::ACCOUNT, &account.name);
        Ok(())
    }

    /// Without accounts: the caller's own credentials go upstream as sent, a tollgate key
    /// beside them never; a request that presented a tollgate key has its credentials (and
    /// a key in the query) removed.
    #[inline(never)]
    fn without_pool<H: Host>(&mut self, h: &mut H, path: &str) {
        if !self.presented_tollgate_key {
            self.remove_tollgate_keys(h, path);
            return;
        }
        if let Some(stripped) = identity::strip_query_key(path) {
            h.set_request_header(":path", &stripped);
        }
        self.remove_client_credentials(h, "");
    }

    /// The account `selection` picks for a metered request (`None`: none is usable); `Err`
    /// is the answer when every account of the API is cooling down.
    fn select_account<H: Host>(
        &mut self,
        h: &mut H,
        session: Option<&str>,
        exclude: &[usize],
    ) -> Result<Option<usize>, Action> {
        let plugin = self.plugin.clone();
        let need = self.need();
        let attempt = Attempt {
            api: self.api,
            need: &need,
            session,
            exclude,
            now_ms: h.now_ms(),
        };
        match accounts::select(h, &plugin.cfg, &attempt) {
            Outcome::Picked(p) => {
                self.account_ticket = p.ticket;
                self.probe = p.probe;
                if !p.counted {
                    plugin.queue_served(p.account, 1, 0);
                }
                if !matches!(p.affinity, AffinityUse::Off) {
                    self.count(
                        h,
                        "tollgate_affinity_total",
                        &[("outcome", p.affinity.as_str())],
                        1,
                    );
                }
                Ok(Some(p.account))
            }
            Outcome::AllCooling { retry_after_s } => Err(self.all_cooling(h, retry_after_s)),
            Outcome::NoAccount => Ok(None),
        }
    }

    /// Answers 429 when every account of the API is cooling down.
    #[inline(never)]
    fn all_cooling<H: Host>(&mut self, h: &mut H, retry_after_s: u64) -> Action {
        let retry = retry_after_s.max(1);
        let api = self.api.as_str();
        let msg = format!("every {api} account is cooling down; retry in {retry}s");
        let r = Rejection::new(Reason::AccountsCooling, msg).retry_after(retry);
        self.reject(h, r)
    }

    /// Refuses a request no account of its API can serve.
    #[inline(never)]
    fn no_account<H: Host>(&mut self, h: &mut H) -> Action {
        let msg = format!("no usable {} account is configured", self.api.as_str());
        self.refuse(h, Reason::NoAccount, msg)
    }

    /// Removes any tollgate key from a request that keeps the caller's own credentials.
    fn remove_tollgate_keys<H: Host>(&self, h: &mut H, path: &str) {
        let hd = &self.headers;
        let places = identity::tollgate_key_places(
            &self.plugin.cfg,
            hd.get("x-api-key"),
            hd.get("authorization"),
            hd.get("x-goog-api-key"),
            path,
        );
        for place in places {
            match place {
                Place::Header(name) => h.remove_request_header(name),
                Place::Query => {
                    if let Some(stripped) = identity::strip_query_key(path) {
                        h.set_request_header(":path", &stripped);
                    }
                }
            }
        }
    }

    /// Removes the credentials the client sent (a caller's own or a tollgate key), but for
    /// `except`, which the caller replaces.
    fn remove_client_credentials<H: Host>(&self, h: &mut H, except: &str) {
        for n in provider::client_credential_headers() {
            if n != except && self.headers.has(n) {
                h.remove_request_header(n);
            }
        }
    }

    /// Learns the account's health from a response (status and rate-limit headers), and
    /// logs a change of state once.
    pub(crate) fn observe_account<H: Host>(&mut self, h: &mut H, obs: Observation) {
        let plugin = self.plugin.clone();
        let (Some(i), Some(account)) = (self.account, self.account()) else {
            return;
        };
        let Some(gauge) = plugin.stats.borrow_mut().account_gauge(h, i, &account.name) else {
            return;
        };
        if obs.is_empty() && !self.probe {
            // Nothing to learn; but a cooling that ended on time must show as ok again
            // (looked at once a second: the gauge is read back from the host).
            let now = h.now_ms();
            if !plugin.stats.borrow_mut().gauge_check_due(i, now) {
                return;
            }
            if h.metric(gauge).unwrap_or(0) > 0 {
                if let Ok(health) = accounts::read_health(h, account) {
                    let now = health.kind_at(h.now_ms()).gauge();
                    h.record_metric(gauge, now.max(0) as u64);
                }
            }
            return;
        }
        if let Ok(t) = accounts::record(h, account, &obs, h.now_ms()) {
            show_transition(h, self.id, gauge, &account.name, &t);
        }
    }

    /// `observe_account` for an account this instance does not list, by name (a stream
    /// error found by the downstream stage of a failover setup; see `accounts::record_named`).
    pub(crate) fn observe_named_account<H: Host>(
        &mut self,
        h: &mut H,
        name: &str,
        obs: &Observation,
    ) {
        let now = h.now_ms();
        let Ok(Some(t)) = accounts::record_named(h, name, obs, now) else {
            return;
        };
        let gauge = self.plugin.stats.borrow_mut().account_gauge_named(h, name);
        if let Some(gauge) = gauge {
            show_transition(h, self.id, gauge, name, &t);
        }
    }

    /// The upstream stage: one retry attempt. Picks an account not tried by earlier attempts
    /// of this request (the downstream published consumer, estimate and session).
    #[inline(never)]
    pub(crate) fn upstream_attempt<H: Host>(&mut self, h: &mut H) -> Action {
        self.headers = h.request_headers();
        let path = self.headers.get(":path").unwrap_or_default().to_string();
        let method = self.headers.get(":method").unwrap_or_default().to_string();
        self.api = api::api_hint(
            self.headers.has("anthropic-version"),
            self.headers.has("x-api-key"),
            self.headers.has("x-goog-api-key"),
        );
        let metered = match api::classify(
            &method,
            &path,
            self.api,
            None,
            &self.plugin.cfg.passthrough_paths,
        ) {
            Route::Metered { endpoint, .. } => {
                self.api = endpoint.api();
                true
            }
            Route::Identity(api) => {
                self.api = api;
                false
            }
            Route::BadRequest { api, message } => {
                // The downstream stage refuses these first; this is defence in depth.
                self.api = api;
                return self.refuse(h, Reason::BadRequest, message);
            }
            _ => return Action::Continue,
        };
        // Only a request the downstream stage identified (and, when metered, admitted) may
        // leave with a pooled key: anything else skipped it (say, by a path around it).
        let estimate = h.property(&[facts::ESTIMATE]);
        let passed = if metered {
            estimate.is_some()
        } else {
            h.property(&[facts::CONSUMER]).is_some()
        };
        if !passed {
            let msg = "this request was not admitted by tollgate's downstream stage";
            return self.refuse(h, Reason::Auth, msg);
        }
        self.estimate = estimate.and_then(|v| v.parse().ok()).unwrap_or(0);
        let affinity = self.plugin.cfg.selection.affinity.as_ref();
        let header = affinity
            .and_then(|a| a.header.as_deref())
            .and_then(|n| self.headers.get(n))
            .map(str::to_string);
        let fingerprint = h
            .property(&[facts::FINGERPRINT])
            .and_then(|f| u64::from_str_radix(&f, 16).ok());
        let session = accounts::session_id(affinity, header.as_deref(), fingerprint)
            .or_else(|| h.property(&[facts::SESSION]));
        let tried_s = h.property(&[facts::TRIED]).unwrap_or_default();
        let tried: Vec<usize> = tried_s.split(',').filter_map(|t| t.parse().ok()).collect();
        // Credentials the downstream left (a caller's own) never go upstream from a pool.
        self.presented_tollgate_key = true;
        if let Err(answer) = self.choose_account(h, &path, metered, session.as_deref(), &tried) {
            return answer;
        }
        if let Some(i) = self.account {
            let list = if tried_s.is_empty() {
                i.to_string()
            } else {
                format!("{tried_s},{i}")
            };
            self.fact(h, facts::TRIED, &list);
            if !tried.is_empty() {
                if let Some(name) = self.account().map(|a| a.name.clone()) {
                    self.count(h, "tollgate_failovers_total", &[("account", &name)], 1);
                }
            }
        }
        self.phase = Phase::Attempt;
        Action::Continue
    }

    /// The end of an upstream-stage attempt (once): the account's reservation is settled and
    /// its concurrency lease freed.
    pub(crate) fn end_attempt<H: Host>(&mut self, h: &mut H) {
        self.phase = Phase::Answered;
        self.settle_account(h, None);
    }

    /// Settles what the account's own limits charged: real usage when known, the
    /// reservation for a served attempt whose usage is counted downstream, nothing for a
    /// failed one; and adds the tokens to the account's totals.
    #[inline(never)]
    pub(crate) fn settle_account<H: Host>(&mut self, h: &mut H, usage: Option<&Usage>) {
        let plugin = self.plugin.clone();
        let (Some(i), Some(account)) = (
            self.account,
            self.account.and_then(|i| plugin.cfg.accounts.get(i)),
        ) else {
            return;
        };
        let now = h.now_ms();
        if let Some(u) = usage {
            plugin.queue_served(i, 0, u.total());
        }
        let Some(ticket) = self.account_ticket.take() else {
            return;
        };
        let ok = (200..300).contains(&self.upstream_status);
        let actual = match usage {
            Some(u) => Amounts::from_usage(u, None),
            None if ok => ticket.charged,
            None => Amounts::ZERO,
        };
        let owner = OwnerKey::account(&account.name);
        let _ = quota::reconcile(h, &owner, &account.limits, &ticket, &actual, now);
    }
}
