//! The filter's own answers to a request: one typed `Rejection`, built here, and answered
//! in the API's own error format with its metrics counted.

use super::host::{Action, Host};
use super::state::each_rate_header;
use super::{Flow, Phase};
use crate::analytics;
use crate::api::{self, Reason};
use crate::config;
use crate::limits::LimitKind;

/// Why and how a request is answered by tollgate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub reason: Reason,
    pub message: String,
    /// `retry-after` seconds.
    pub retry_after_s: Option<u64>,
    /// `false` adds `x-should-retry: false` (waiting cannot help).
    pub should_retry: bool,
    /// Whether the caller's `x-ratelimit-*` headers go with the answer.
    pub rate_headers: bool,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
            retry_after_s: None,
            should_retry: true,
            rate_headers: false,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Rejection {
        self.retry_after_s = Some(seconds);
        self
    }

    /// A limit that binds: `"{consumer}: {what}; retry in {n}s"`, or, when waiting cannot
    /// help, `"...; this request alone exceeds it"` with `x-should-retry: false`.
    pub fn over_limit(
        reason: Reason,
        consumer: &str,
        what: &str,
        retry_after_s: u64,
        should_retry: bool,
    ) -> Rejection {
        let retry = retry_after_s.max(1);
        let message = if should_retry {
            format!("{consumer}: {what}; retry in {retry}s")
        } else {
            format!("{consumer}: {what}; this request alone exceeds it")
        };
        Rejection {
            reason,
            message,
            retry_after_s: Some(retry),
            should_retry,
            rate_headers: false,
        }
    }
}

/// The reason of a local limit by its kind (`None`: a `concurrent` limit).
pub(crate) fn limit_reason(kind: Option<LimitKind>) -> Reason {
    match kind {
        Some(LimitKind::Requests) => Reason::Requests,
        Some(LimitKind::CostUsd) => Reason::Cost,
        Some(LimitKind::Tokens | LimitKind::InputTokens | LimitKind::OutputTokens) => {
            Reason::Tokens
        }
        None => Reason::Concurrency,
    }
}

impl Flow {
    /// Answers the request with an error in the API's own format.
    pub(crate) fn reject<H: Host>(&mut self, h: &mut H, r: Rejection) -> Action {
        // An account's own limits may have been charged before a later check refused.
        self.settle_account(h, None);
        let body = api::error_body(self.api, r.reason, &r.message);
        let mut extra: Vec<(&str, String)> = Vec::new();
        if r.rate_headers {
            each_rate_header(&self.rate_headers, |k, v| extra.push((k, v.to_string())));
        }
        if let Some(s) = r.retry_after_s {
            extra.push(("retry-after", s.to_string()));
        }
        if !r.should_retry {
            extra.push(("x-should-retry", "false".to_string()));
        }
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(extra.len() + 1);
        headers.push(("content-type", "application/json"));
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        h.send_response(r.reason.status(), &headers, body.as_bytes());
        self.phase = Phase::Answered;
        self.decision = Some(r.reason);
        let (consumer, model) = (self.consumer_name(), self.model_label(h));
        let reason = r.reason.as_str();
        if self.plugin.cfg.stage == config::Stage::Downstream {
            let now = h.now_ms();
            self.plugin
                .analytics
                .borrow_mut()
                .rejected(&analytics::Rejection {
                    consumer,
                    model_label: model,
                    reason,
                    status: r.reason.status() as u16,
                    response_ms: now.saturating_sub(self.started_ms),
                    now_ms: now,
                });
        }
        let mut stats = self.plugin.stats.borrow_mut();
        stats.count(
            h,
            "tollgate_rejections_total",
            &[("consumer", consumer), ("reason", reason)],
            1,
        );
        let labels = [
            ("consumer", consumer),
            ("model", model),
            ("outcome", reason),
        ];
        stats.count(h, "tollgate_requests_total", &labels, 1);
        Action::Pause
    }

    /// Answers with `reason` and `message` alone.
    pub(crate) fn refuse<H: Host>(
        &mut self,
        h: &mut H,
        reason: Reason,
        message: impl Into<String>,
    ) -> Action {
        self.reject(h, Rejection::new(reason, message))
    }
}
