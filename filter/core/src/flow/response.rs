//! The answer: the account's health from its headers, an error head held and cleared of a
//! pooled key, the provider's rate-limit headers swapped for the caller's, the body metered
//! per API (JSON, SSE, compressed), and the request's end counted once: reconcile, global
//! charge, account totals, learning, metrics and access-log facts.

use super::host::{Action, Buffer, Headers, Host};
use super::state::{each_rate_header, UsageSource};
use super::{ErrorHead, Flow, Phase, BODY_WINDOW, ERROR_HEAD, HELD_CHUNK};
use crate::accounts;
use crate::analytics::Fact;
use crate::config::Account;
use crate::facts;
use crate::limits::Usage;
use crate::metrics;
use crate::provider;
use crate::quota::{self, OwnerKey};
use crate::usage::ResponseMeter;

impl Flow {
    #[inline(never)]
    pub(crate) fn response_headers<H: Host>(&mut self, h: &mut H, end_of_stream: bool) -> Action {
        if !matches!(
            self.phase,
            Phase::Proxied | Phase::Passthrough | Phase::Attempt
        ) {
            return Action::Continue;
        }
        // One read of the header map serves the account, the stripping and the meter.
        let all = h.response_headers();
        let status: u32 = all.get(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        self.upstream_status = status;
        // Envoy's own reply (route timeout, failed connection) is no answer of the provider:
        // it neither cools an account nor is metered as a cut-off stream. Envoy answers
        // with an error status, so a 2xx needs no look at the response's details.
        let local_reply = !(200..300).contains(&status)
            && h.property(&facts::RESPONSE_CODE_DETAILS)
                .is_some_and(|d| d != "via_upstream");
        let plugin = self.plugin.clone();
        let account = self.account.and_then(|i| plugin.cfg.accounts.get(i));
        if status >= 400 && !local_reply {
            if let Some(account) = account {
                self.hold_error_head(h, account, &all);
            }
        }
        if account.is_some() && !local_reply {
            self.observe_upstream(h, status, &all);
        }
        if self.phase == Phase::Attempt {
            // Each attempt's answer is counted here, by the account that got it (a retried
            // 429 included); the downstream stage counts none for a staged account.
            if let (Some(a), false) = (account, local_reply) {
                self.count_attempt(h, a, status);
            }
            // The downstream stage strips the provider's headers after it, too.
            return Action::Continue;
        }
        // The provider's rate-limit headers describe the pooled account, not the caller.
        for (name, _) in all.iter() {
            if provider::is_rate_limit_header(name) {
                h.remove_response_header(name);
            }
        }
        each_rate_header(&self.rate_headers, |k, v| h.set_response_header(k, v));
        if self.phase == Phase::Passthrough || local_reply {
            return Action::Continue;
        }
        let Some(endpoint) = self.endpoint else {
            return Action::Continue;
        };
        let content_type = all.get("content-type").unwrap_or_default();
        let encoding = all.get("content-encoding").unwrap_or_default();
        let strip = self.strip_usage;
        let meter = ResponseMeter::new(endpoint, content_type, encoding, strip);
        if strip {
            // The usage-only chunk is removed from the stream: its length changes.
            h.remove_response_header("content-length");
        }
        self.meter = Some(meter);
        if end_of_stream {
            self.finish_response(h);
        }
        Action::Continue
    }

    /// An error answer from a pooled account: an upstream that echoes the pooled key never
    /// shows it to the client (in a header here, in the body once its head is read).
    #[inline(never)]
    fn hold_error_head<H: Host>(&mut self, h: &mut H, account: &Account, all: &Headers) {
        for (name, value) in all.iter() {
            if let Some(masked) = account.key.redact(value) {
                h.set_response_header(name, &String::from_utf8_lossy(&masked));
            }
        }
        self.error_head = ErrorHead::Holding;
    }

    /// The account's health from the answer's status and rate-limit headers.
    #[inline(never)]
    fn observe_upstream<H: Host>(&mut self, h: &mut H, status: u32, all: &Headers) {
        let headers: Vec<(&str, String)> = all
            .iter()
            .filter(|(k, _)| *k == "retry-after" || provider::is_rate_limit_header(k))
            .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
            .collect();
        let obs = accounts::observe_response(status, &headers, h.now_ms());
        self.observe_account(h, obs);
    }

    /// `tollgate_upstream_responses_total` for one attempt of the upstream stage.
    #[inline(never)]
    fn count_attempt<H: Host>(&mut self, h: &mut H, a: &Account, status: u32) {
        let mut buf = [0u8; 20];
        let code = metrics::decimal(u64::from(status), &mut buf);
        let labels = [("account", a.name.as_str()), ("code", code)];
        self.count(h, "tollgate_upstream_responses_total", &labels, 1);
    }

    pub(crate) fn response_body<H: Host>(
        &mut self,
        h: &mut H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.error_head == ErrorHead::Holding {
            if body_size < ERROR_HEAD && !end_of_stream {
                // Envoy keeps the body until the head is in (bounded by ERROR_HEAD).
                return Action::Pause;
            }
            let _ = self.read_error_head(h, body_size);
        }
        let Some(meter) = self.meter.as_mut() else {
            // An upstream-stage attempt meters nothing, but its account's lease lives on.
            self.renew_leases(h);
            return Action::Continue;
        };
        if !meter.rewrites() {
            // A chunk goes on to the client first and is metered when the next one comes
            // (or the stream ends): the first bytes of a stream wait for no parsing. Only a
            // small chunk is held that way; a large one is metered now, read in windows, so
            // the VM never holds more than a window of any body.
            let held = std::mem::take(&mut self.unmetered);
            if !held.is_empty() {
                meter.feed(&held);
            }
            if body_size <= HELD_CHUNK && !end_of_stream {
                self.unmetered = h
                    .read(Buffer::ResponseBody, 0, body_size)
                    .unwrap_or_default();
            } else {
                let mut at = 0;
                while at < body_size {
                    let want = (body_size - at).min(BODY_WINDOW);
                    let Some(window) = h.read(Buffer::ResponseBody, at, want) else {
                        break;
                    };
                    if window.is_empty() {
                        break;
                    }
                    at += window.len();
                    meter.feed(&window);
                }
                if end_of_stream {
                    meter.feed_last(&[]);
                }
            }
        } else {
            let chunk = if body_size > 0 {
                h.read(Buffer::ResponseBody, 0, body_size)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            // Strip mode changes the chunk before it goes on: metered now. The last chunk
            // also flushes whatever it still holds.
            let replacement = if end_of_stream {
                meter.feed_last(&chunk)
            } else {
                meter.feed(&chunk)
            };
            if let Some(replacement) = replacement {
                h.replace(Buffer::ResponseBody, 0, chunk.len(), &replacement);
            }
        }
        self.renew_leases(h);
        if end_of_stream {
            self.finish_response(h);
        }
        Action::Continue
    }

    pub(crate) fn response_trailers<H: Host>(&mut self, h: &mut H) -> Action {
        // Trailers end the body: no body callback says end of stream.
        if self.error_head == ErrorHead::Holding {
            // Held, so under ERROR_HEAD: the head is the whole body.
            let held = self.read_error_head(h, ERROR_HEAD);
            if let Some(meter) = self.meter.as_mut() {
                meter.feed(&held);
            }
        }
        if self.meter.is_some() {
            self.finish_response(h);
        }
        Action::Continue
    }

    /// Reads the held head of an upstream error answer: evidence about the key for the
    /// account's health, and every occurrence of the key replaced (same length: the
    /// `content-length` already went out) before the client sees it.
    /// Returns the head as it goes on (masked where it held the key).
    fn read_error_head<H: Host>(&mut self, h: &mut H, body_size: usize) -> Vec<u8> {
        self.error_head = ErrorHead::Read;
        let plugin = self.plugin.clone();
        let Some(account) = self.account.and_then(|i| plugin.cfg.accounts.get(i)) else {
            return Vec::new();
        };
        let want = body_size.min(ERROR_HEAD);
        let Some(head) = h.read(Buffer::ResponseBody, 0, want) else {
            return Vec::new();
        };
        // Only the provider saying the key itself is invalid disables the account.
        let obs = accounts::observe_error_body(account.provider, self.upstream_status, &head);
        let head = match account.key.redact(&head) {
            Some(masked) => {
                h.replace(Buffer::ResponseBody, 0, head.len(), &masked);
                masked
            }
            None => head,
        };
        if !obs.is_empty() {
            self.observe_account(h, obs);
        }
        head
    }

    /// A flowing response renews its concurrency leases: the consumer's, and the account's
    /// own (each writes only when due; a lease not renewed for `lease_ttl` frees itself).
    fn renew_leases<H: Host>(&mut self, h: &mut H) {
        let ttl = self.plugin.cfg.lease_ttl;
        let now = h.now_ms();
        if let (Some(ticket), Some(owner)) = (self.ticket.as_mut(), self.owner.as_ref()) {
            if ticket.lease.is_some() {
                let _ = quota::renew(h, owner, ticket, now, ttl);
            }
        }
        let plugin = self.plugin.clone();
        let account = self.account.and_then(|i| plugin.cfg.accounts.get(i));
        if let (Some(ticket), Some(account)) = (self.account_ticket.as_mut(), account) {
            if ticket.lease.is_some() {
                let owner = OwnerKey::account(&account.name);
                let _ = quota::renew(h, &owner, ticket, now, ttl);
            }
        }
    }

    /// The response ended (completely, reset or aborted): count it once.
    #[inline(never)]
    pub(crate) fn finish_response<H: Host>(&mut self, h: &mut H) {
        if let Some(meter) = self.meter.as_mut() {
            // A stream cut short: the chunk already sent is counted too.
            let held = std::mem::take(&mut self.unmetered);
            if !held.is_empty() {
                meter.feed(&held);
            }
        }
        let Some(mut meter) = self.meter.take() else {
            if self.phase == Phase::Proxied {
                self.phase = Phase::Answered;
                if self.upstream_status == 0 && self.global_call.is_none() {
                    // The client left before any answer, after the request went upstream:
                    // the provider still reads (and bills) the prompt.
                    let input = Usage {
                        input: self.estimate,
                        ..Usage::default()
                    };
                    self.record(h, input, UsageSource::Estimated);
                } else {
                    // The upstream never answered (reset, timeout): nothing was produced.
                    self.record(h, Usage::default(), UsageSource::None);
                }
            }
            return;
        };
        self.phase = Phase::Answered;
        let m = meter.finish();
        if self.upstream_status >= 400 && !m.complete {
            // The provider refused the request and reports no usage: it bills nothing, so
            // neither do budgets (the reservation is refunded; it still counts as a request).
            self.record(h, Usage::default(), UsageSource::Refused);
            return;
        }
        // What the upstream did not report (reliably) is charged from the estimates: the
        // input estimate, and for an undecodable body at least the reserved output.
        let usage = m.charged(self.estimate, self.need().output_tokens);
        if m.complete {
            self.learn(h, usage.input_side());
        }
        // An error event inside a successful stream; an error status was observed already.
        let ok = (200..300).contains(&self.upstream_status);
        if let Some(err) = m.stream_error.filter(|_| ok) {
            let obs = accounts::observe_stream_error(err);
            if self.account.is_some() {
                self.observe_account(h, obs);
            } else if let Some(name) = h.property(&[facts::ACCOUNT]) {
                // Two stages: the upstream stage picked the account, and its attempt ended
                // before the stream's last bytes got here.
                self.observe_named_account(h, &name, &obs);
            }
        }
        let flagged = if m.unsupported_encoding {
            Some(("unsupported_encoding", UsageSource::Undecodable))
        } else if m.corrupt_encoding {
            Some(("corrupt_encoding", UsageSource::Undecodable))
        } else if m.invalid_usage {
            Some(("invalid_usage", UsageSource::Invalid))
        } else {
            None
        };
        let source = match flagged {
            Some((reason, source)) => {
                self.count(
                    h,
                    "tollgate_usage_fallbacks_total",
                    &[("reason", reason)],
                    1,
                );
                source
            }
            None if m.output_estimated || !m.complete => UsageSource::Estimated,
            None => UsageSource::Reported,
        };
        self.record(h, usage, source);
    }

    /// Feeds the real input count back into the per-model ratio, and records the error of
    /// the estimate that was used.
    fn learn<H: Host>(&mut self, h: &mut H, real: u64) {
        let raw = self.info.as_ref().map_or(0, |i| i.input_estimate);
        let Some(model) = self.info.as_ref().and_then(|i| i.model.as_deref()) else {
            return;
        };
        if real == 0 || raw == 0 {
            return;
        }
        let plugin = &self.plugin;
        if !plugin.observed.borrow_mut().push(model, real, raw) {
            let _ = crate::learn::observe(h, &plugin.learned, model, real, raw);
        }
        let error = (real.abs_diff(self.estimate) as f64 * 100.0 / real as f64).round() as i64;
        plugin
            .stats
            .borrow_mut()
            .histogram(h, "tollgate_estimate_error_percent", error);
    }

    /// Metrics and access-log facts for a finished request.
    #[inline(never)]
    fn record<H: Host>(&mut self, h: &mut H, usage: Usage, source: UsageSource) {
        self.reconcile(h, &usage);
        self.charge_global(h, &usage);
        self.settle_account(h, Some(&usage));
        let mut buf = [0u8; 20];
        self.fact(
            h,
            facts::INPUT_TOKENS,
            metrics::decimal(usage.input_side(), &mut buf),
        );
        self.fact(
            h,
            facts::OUTPUT_TOKENS,
            metrics::decimal(usage.output, &mut buf),
        );
        self.fact(h, facts::USAGE, source.as_str());
        let (consumer, model) = (self.consumer_name(), self.model_label(h));
        let account = self.account();
        // In a failover setup the upstream stage chose the account (a configured name, set
        // only by tollgate) and counted each attempt's answer itself.
        let staged = match account {
            Some(_) => None,
            None => h.property(&[facts::ACCOUNT]),
        };
        let account = account.map(|a| a.name.as_str()).or(staged.as_deref());
        let now = h.now_ms();
        let cost_micros = self.price().map(|p| p.cost_micros(&usage));
        self.plugin.analytics.borrow_mut().served(
            &Fact {
                consumer,
                model_label: model,
                account,
                usage,
                cost_micros: cost_micros.unwrap_or(0),
                response_ms: now.saturating_sub(self.started_ms),
                ok: (200..300).contains(&self.upstream_status),
                now_ms: now,
            },
            u16::try_from(self.upstream_status).unwrap_or(0),
        );
        let account = account.unwrap_or("none");
        let code = metrics::decimal(u64::from(self.upstream_status), &mut buf);
        let mut stats = self.plugin.stats.borrow_mut();
        let labels = [
            ("consumer", consumer),
            ("model", model),
            ("outcome", "admitted"),
        ];
        stats.count(h, "tollgate_requests_total", &labels, 1);
        if staged.is_none() {
            let labels = [("account", account), ("code", code)];
            stats.count(h, "tollgate_upstream_responses_total", &labels, 1);
        }
        if let Some(cost) = cost_micros {
            let labels = [("consumer", consumer), ("model", model)];
            stats.count(h, "tollgate_cost_usd_micros_total", &labels, cost);
        }
        for (ty, n) in [
            ("input", usage.input),
            ("output", usage.output),
            ("cache_read", usage.cache_read),
            ("cache_write", usage.cache_write),
        ] {
            let labels = [
                ("consumer", consumer),
                ("model", model),
                ("account", account),
                ("type", ty),
            ];
            stats.count(h, "tollgate_tokens_total", &labels, n);
        }
    }
}
