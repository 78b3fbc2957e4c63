//! The request body of a metered endpoint: read in windows, then the model checks, the
//! local admission (reservation against the caller's limits), the account, the body
//! rewrite, and the global admission call; and the settling of reservations afterwards.

use super::host::{Action, Buffer, GrpcCall, Host, Level};
use super::reject::{limit_reason, Rejection};
use super::state::log;
use super::{Flow, Phase, BODY_WINDOW};
use crate::api::Reason;
use crate::config::FailureMode;
use crate::facts;
use crate::identity::Caller;
use crate::learn;
use crate::limits::{Limit, Usage};
use crate::metrics;
use crate::quota::{self, Admission, Amounts, Settled};
use crate::ratelimit::{self, Decision, RlsError};
use crate::store::StoreError;

impl Flow {
    pub(crate) fn request_body<H: Host>(
        &mut self,
        h: &mut H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.phase != Phase::ReadingBody {
            return Action::Continue;
        }
        if body_size as u64 > self.plugin.cfg.max_body_bytes {
            return self.too_large(h);
        }
        while self.fed < body_size {
            let want = (body_size - self.fed).min(BODY_WINDOW);
            let Some(window) = h.read(Buffer::RequestBody, self.fed, want) else {
                break;
            };
            if window.is_empty() {
                break;
            }
            self.fed += window.len();
            let fed = match self.scanner.as_mut() {
                Some(s) => s.feed(&window),
                None => Ok(()),
            };
            if let Err(e) = fed {
                return self.refuse(h, Reason::BadRequest, e.to_string());
            }
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(scanner) = self.scanner.take() else {
            return Action::Continue;
        };
        let info = match scanner.finish() {
            Ok(info) => info,
            Err(e) => return self.refuse(h, Reason::BadRequest, e.to_string()),
        };
        self.info = Some(info);
        self.admit_and_forward(h, body_size)
    }

    pub(crate) fn request_trailers<H: Host>(&mut self, h: &mut H) -> Action {
        if self.phase != Phase::ReadingBody {
            return Action::Continue;
        }
        // No LLM API sends request trailers; they would end the body without an
        // end-of-stream body callback, so admission, the credential and metering would be
        // skipped. Refused rather than trusted.
        self.scanner = None;
        let msg = "request trailers are not supported on this endpoint";
        self.refuse(h, Reason::BadRequest, msg)
    }

    /// The body is read: check the model, admit, choose the account, rewrite, forward.
    #[inline(never)]
    fn admit_and_forward<H: Host>(&mut self, h: &mut H, body_size: usize) -> Action {
        let model = self
            .info
            .as_ref()
            .and_then(|i| i.model.clone())
            .unwrap_or_default();
        if let Some(answer) = self.refuse_model(h, &model) {
            return answer;
        }
        let raw = self.info.as_ref().map_or(0, |i| i.input_estimate);
        self.estimate = if model.is_empty() {
            raw
        } else {
            learn::apply(raw, self.plugin.ratio(h, &model, h.now_ms()))
        };
        if let Err(answer) = self.admit(h) {
            return answer;
        }
        let path = self.headers.get(":path").unwrap_or_default().to_string();
        let session = self.session(h);
        if self.plugin.cfg.accounts.is_empty() {
            self.without_accounts(h);
        }
        let mut buf = [0u8; 20];
        self.fact(
            h,
            facts::ESTIMATE,
            metrics::decimal(self.estimate, &mut buf),
        );
        if let Err(answer) = self.choose_account(h, &path, true, session.as_deref(), &[]) {
            self.cancel_reservation(h);
            return answer;
        }
        if self.info.is_some() {
            self.splice_usage_option(h, body_size);
            self.fact(h, facts::MODEL, &model);
        }
        self.phase = Phase::Proxied;
        self.admit_global(h).unwrap_or(Action::Continue)
    }

    /// The caller's refusal of the request's model, if any: a consumer's `models` that do
    /// not match it, or a budget while the model has no price (a budget binds on every model:
    /// one with no price would cost nothing against it).
    #[inline(never)]
    fn refuse_model<H: Host>(&mut self, h: &mut H, model: &str) -> Option<Action> {
        if let Some(Caller::Consumer(i)) = &self.caller {
            if let Some(c) = self.plugin.cfg.consumers.get(*i) {
                if let Some(globs) = &c.models {
                    if !globs.iter().any(|g| g.matches(model)) {
                        let msg = format!("{}: model {model:?} is not allowed", c.name);
                        return Some(self.refuse(h, Reason::Model, msg));
                    }
                }
            }
        }
        let limits = Self::caller_limit_list(&self.plugin, self.caller.as_ref());
        let named = self.info.as_ref().and_then(|i| i.model.as_deref());
        if self.plugin.cfg.refuses_unpriced(named, limits) {
            let msg = crate::pricing::no_price_message(self.consumer_name(), named);
            return Some(self.refuse(h, Reason::Model, msg));
        }
        None
    }

    /// The request's session for account affinity (published as a fact), if any.
    fn session<H: Host>(&mut self, h: &mut H) -> Option<String> {
        let affinity = self.plugin.cfg.selection.affinity.as_ref();
        let header = affinity
            .and_then(|a| a.header.as_deref())
            .and_then(|n| self.headers.get(n));
        let fingerprint = self.info.as_ref().and_then(|i| i.fingerprint);
        let session = crate::accounts::session_id(affinity, header, fingerprint);
        if let Some(s) = &session {
            self.fact(h, facts::SESSION, s);
        }
        session
    }

    /// Without accounts here: publishes the conversation fingerprint for an upstream stage
    /// that keeps conversations on one account (with accounts, this stage chooses them and
    /// no upstream stage needs it), and lets only codings the meter decodes come back, since
    /// metering cannot be switched off (a pooled key asks for `identity` itself, in
    /// `choose_account`).
    #[inline(never)]
    fn without_accounts<H: Host>(&mut self, h: &mut H) {
        if let Some(fp) = self.info.as_ref().and_then(|i| i.fingerprint) {
            self.fact(h, facts::FINGERPRINT, &format!("{fp:016x}"));
        }
        let sent = self.headers.get("accept-encoding");
        let encoding = crate::usage::decodable_accept_encoding(sent);
        if sent != Some(encoding.as_str()) {
            h.set_request_header("accept-encoding", &encoding);
        }
    }

    /// Asks a streaming request for its usage (`stream_options.include_usage`) where the
    /// scanner found it missing; the usage-only chunk is then cut from the answer.
    #[inline(never)]
    fn splice_usage_option<H: Host>(&mut self, h: &mut H, body_size: usize) {
        let Some(splice) = self.info.as_ref().and_then(|i| i.usage_splice.as_ref()) else {
            return;
        };
        // Envoy replaces a body buffer only from its start (or appends), so the bytes
        // before the splice point are copied back with the insertion; the scanner puts the
        // splice right after the root `{` where it can.
        let mut head = if splice.offset == 0 {
            Vec::new()
        } else {
            h.read(Buffer::RequestBody, 0, splice.offset)
                .unwrap_or_default()
        };
        let fits = head.len() == splice.offset;
        head.extend_from_slice(splice.insert.as_bytes());
        if fits && h.replace(Buffer::RequestBody, 0, splice.offset + splice.remove, &head) {
            let len = body_size.saturating_sub(splice.remove) + splice.insert.len();
            h.set_request_header("content-length", &len.to_string());
            // The usage-only chunk is cut from the stream, which needs it uncompressed.
            h.set_request_header("accept-encoding", "identity");
            self.strip_usage = true;
        }
    }

    /// Reserves the request's estimate against the caller's limits; `Err` is the answer.
    fn admit<H: Host>(&mut self, h: &mut H) -> Result<(), Action> {
        let plugin = self.plugin.clone();
        let (limits, owner) = Self::caller_limits(&plugin, self.caller.as_ref());
        let Some(owner) = owner.filter(|_| !limits.is_empty()) else {
            return Ok(());
        };
        let amounts = self.need();
        let (now, ttl) = (h.now_ms(), plugin.cfg.lease_ttl);
        match quota::admit(h, &owner, limits, &amounts, now, ttl) {
            Ok(Admission::Admitted { ticket, headers }) => {
                self.ticket = Some(ticket);
                self.rate_headers = headers;
                self.owner = Some(owner);
                Ok(())
            }
            Ok(Admission::Rejected { rejection, headers }) => {
                self.rate_headers = headers;
                Err(self.over_limit(h, limits, &rejection))
            }
            Err(e) => Err(self.quota_busy(h, &e)),
        }
    }

    /// Answers 429 for a refusal by the caller's limits.
    #[inline(never)]
    fn over_limit<H: Host>(
        &mut self,
        h: &mut H,
        limits: &[Limit],
        rejection: &quota::Rejection,
    ) -> Action {
        let what = limits
            .get(rejection.limit)
            .map_or_else(String::new, |l| l.to_string());
        let mut r = Rejection::over_limit(
            limit_reason(rejection.kind),
            self.consumer_name(),
            &what,
            rejection.retry_after_s,
            rejection.should_retry,
        );
        r.rate_headers = true;
        self.reject(h, r)
    }

    /// Answers 429 when the quota store stayed contended.
    #[inline(never)]
    fn quota_busy<H: Host>(&mut self, h: &mut H, e: &StoreError) -> Action {
        log(
            h,
            Level::Warn,
            self.id,
            format_args!("quota store contended ({e:?}); answering 429"),
        );
        let msg = format!("{}: quota state is busy; retry in 1s", self.consumer_name());
        self.reject(h, Rejection::new(Reason::Tokens, msg).retry_after(1))
    }

    /// Asks the global rate-limit service; `Some(action)` when the request waits for it or
    /// was answered, `None` to go on at once.
    #[inline(never)]
    fn admit_global<H: Host>(&mut self, h: &mut H) -> Option<Action> {
        let plugin = self.plugin.clone();
        let global = plugin.cfg.global.as_ref()?;
        let limits = Self::caller_limit_list(&plugin, self.caller.as_ref());
        let model = self.info.as_ref().and_then(|i| i.model.as_deref());
        let account = self
            .account()
            .map(|a| (a.name.as_str(), a.limits.as_slice()));
        let mut descriptors =
            ratelimit::request_descriptors(self.consumer_name(), limits, model, account);
        if descriptors.is_empty() {
            return None;
        }
        let adm = ratelimit::admission(&global.domain, &mut descriptors, &self.need());
        self.global_descriptors = descriptors;
        // A window the service already said is too full for this reservation stays so until
        // it ends: answered here as the service would, with no call.
        let (refusals, now) = (&plugin.refusals, h.now_ms());
        let known = refusals
            .borrow_mut()
            .check(&self.global_descriptors, &adm.checks, now);
        if let Some(r) = known {
            return Some(self.global_refused(h, r));
        }
        let call = GrpcCall::rate_limit(global, &adm.body, 1);
        match h.dispatch_grpc(&call) {
            Ok(token) => {
                self.global_call = Some((token, adm.checks));
                Some(Action::Pause)
            }
            Err(status) => {
                let why = format!("dispatch failed: {}", dispatch_error(status));
                match self.global_failed(h, &why, false) {
                    Action::Continue => None,
                    other => Some(other),
                }
            }
        }
    }

    /// The global service's reply to the admission call.
    pub(crate) fn global_reply<H: Host>(
        &mut self,
        h: &mut H,
        token: u32,
        status: u32,
        size: usize,
    ) {
        let Some((expected, checks)) = self.global_call.take() else {
            return;
        };
        if expected != token {
            return;
        }
        let decision = if status == 0 {
            self.global_answer(h, size, &checks)
        } else {
            Decision::Error(RlsError::UnknownCode)
        };
        match decision {
            Decision::Admit(headroom) => {
                self.plugin.set_degraded(h, self.id, false, "");
                self.rate_headers = ratelimit::binding_with(self.rate_headers, &headroom);
                h.resume_request();
            }
            Decision::Reject(r) => {
                self.plugin.set_degraded(h, self.id, false, "");
                self.global_refused(h, r);
            }
            Decision::Error(e) => self.global_reply_failed(h, status, e),
        }
    }

    /// The decision in the service's answer (`size` bytes of gRPC reply); its refusals are
    /// remembered. A step of its own, as are the reply's cold branches: V8 compiles every
    /// function whole when the filter loads (see lib.rs), so no function grows large.
    #[inline(never)]
    fn global_answer<H: Host>(
        &mut self,
        h: &mut H,
        size: usize,
        checks: &[ratelimit::Check],
    ) -> Decision {
        let body = h.read(Buffer::GrpcReply, 0, size).unwrap_or_default();
        let (decision, statuses) = ratelimit::read_answer(&body, checks);
        let (refusals, now) = (&self.plugin.refusals, h.now_ms());
        refusals
            .borrow_mut()
            .learn(&self.global_descriptors, checks, &statuses, now);
        decision
    }

    /// The admission call failed (gRPC `status`, or an answer that does not read).
    #[cold]
    #[inline(never)]
    fn global_reply_failed<H: Host>(&mut self, h: &mut H, status: u32, e: RlsError) {
        let why = if status == 0 {
            e.to_string()
        } else {
            format!("gRPC status {status}")
        };
        self.global_failed(h, &why, true);
    }

    /// Answers 429 for a refusal of the global limits (live, or remembered by `refusals`).
    #[cold]
    #[inline(never)]
    fn global_refused<H: Host>(&mut self, h: &mut H, r: ratelimit::Rejection) -> Action {
        self.cancel_reservation(h);
        // An account's limit is named as such: the consumer has no such limit.
        let account = r
            .index
            .and_then(|i| self.global_descriptors.get(i))
            .and_then(|d| d.account())
            .map(|a| format!("account {a}: "))
            .unwrap_or_default();
        self.global_descriptors.clear();
        let unit = r.unit.map_or("tokens", |u| u.as_str());
        let what = match (r.limit, r.per) {
            (Some(l), Some(p)) => {
                format!("{account}{l} {unit} per {} (global)", p.as_str())
            }
            _ => format!("{account}global {unit} limit"),
        };
        let consumer = self.consumer_name();
        let rejection = Rejection::over_limit(
            Reason::Global,
            consumer,
            &what,
            r.retry_after_s,
            r.should_retry,
        );
        self.reject(h, rejection)
    }

    /// The global service did not answer usably: `failure_mode` decides.
    #[cold]
    #[inline(never)]
    fn global_failed<H: Host>(&mut self, h: &mut H, why: &str, paused: bool) -> Action {
        self.plugin.set_degraded(h, self.id, true, why);
        let global = self.plugin.cfg.global.as_ref();
        if global.is_some_and(|g| g.failure_mode == FailureMode::Deny) {
            self.cancel_reservation(h);
            self.global_descriptors.clear();
            let msg = "the global rate-limit service is unavailable";
            return self.refuse(h, Reason::GlobalUnavailable, msg);
        }
        self.count(h, "tollgate_global_degraded_total", &[], 1);
        if paused {
            h.resume_request();
        }
        Action::Continue
    }

    /// Gives back the whole local reservation of a request that will not go upstream.
    pub(crate) fn cancel_reservation<H: Host>(&mut self, h: &mut H) {
        self.settle_quota(h, &Amounts::ZERO);
    }

    /// Queues the real usage for the global service (sent by the root context).
    #[inline(never)]
    pub(crate) fn charge_global<H: Host>(&mut self, h: &mut H, usage: &Usage) {
        if self.plugin.cfg.global.is_none() || self.global_descriptors.is_empty() {
            return;
        }
        let actual = Amounts::from_usage(usage, self.price().as_ref());
        let descriptors = std::mem::take(&mut self.global_descriptors);
        let lost = self.plugin.charges.borrow_mut().add(&descriptors, &actual);
        if lost > 0 {
            super::root::count_charges(h, &self.plugin, "dropped", lost as usize);
        }
    }

    /// Replaces the reservation with real usage (or refunds it all when nothing was used).
    #[inline(never)]
    pub(crate) fn reconcile<H: Host>(&mut self, h: &mut H, usage: &Usage) {
        let actual = Amounts::from_usage(usage, self.price().as_ref());
        self.settle_quota(h, &actual);
    }

    /// Replaces the caller's reservation with `actual` (once; later calls do nothing).
    fn settle_quota<H: Host>(&mut self, h: &mut H, actual: &Amounts) {
        let (Some(ticket), Some(owner)) = (self.ticket.take(), self.owner.take()) else {
            return;
        };
        let plugin = self.plugin.clone();
        let limits = Self::caller_limit_list(&plugin, self.caller.as_ref());
        let now = h.now_ms();
        match quota::reconcile(h, &owner, limits, &ticket, actual, now) {
            Ok(Settled::Dropped) | Err(_) => {
                log(
                    h,
                    Level::Warn,
                    self.id,
                    format_args!("reconciliation dropped after retries"),
                );
                self.count(h, "tollgate_reconcile_dropped_total", &[], 1);
            }
            _ => {}
        }
    }
}

/// A gRPC dispatch failure by its proxy-wasm status name.
fn dispatch_error(status: u32) -> &'static str {
    match status {
        1 => "NotFound",
        2 => "BadArgument",
        4 => "ParseFailure",
        10 => "InternalFailure",
        _ => "unexpected status",
    }
}
