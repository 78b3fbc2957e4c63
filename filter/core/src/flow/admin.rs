//! The filter's own endpoints under `admin.path`: health (open), and behind an admin key
//! the dashboard, the usage report and an account's reset.

use super::host::{Action, Headers, Host, Level};
use super::state::log;
use super::{Flow, Phase};
use crate::accounts::{self, Health};
use crate::admin::{self, AccountView, ActionAnswer, ConsumerView, UsageReport};
use crate::api::{Api, Reason};
use crate::config;
use crate::identity;
use crate::quota::{self, OwnerKey};

const JSON: (&str, &str) = ("content-type", "application/json");
const NO_STORE: (&str, &str) = ("cache-control", "no-store");

impl Flow {
    /// The filter's own endpoints under `admin.path`.
    #[inline(never)]
    pub(crate) fn admin<H: Host>(
        &mut self,
        h: &mut H,
        method: &str,
        sub: &str,
        key: Option<&str>,
        request: &Headers,
    ) -> Action {
        let authorization = request.get("authorization");
        self.phase = Phase::Answered;
        if sub == "/health" {
            h.send_response(200, &[JSON], admin::health_json().as_bytes());
            return Action::Pause;
        }
        let keys = self
            .cfg()
            .admin
            .as_ref()
            .map(|a| a.keys.as_slice())
            .unwrap_or(&[]);
        let basic = authorization.and_then(admin::basic_password);
        let ok = key
            .into_iter()
            .chain(basic.as_deref())
            .any(|k| identity::is_admin_key(keys, k));
        if !ok {
            self.decision = Some(Reason::Auth);
            let headers = [JSON, ("www-authenticate", "Basic realm=\"tollgate\"")];
            h.send_response(401, &headers, br#"{"error":"admin key required"}"#);
            return Action::Pause;
        }
        let plugin = self.plugin.clone();
        let now = h.now_ms();
        // A browser adds Basic credentials to any site's request by itself: an action riding
        // on them alone must come from the same site.
        let cross_site = !key.is_some_and(|k| identity::is_admin_key(keys, k))
            && admin::cross_site(
                true,
                request.get("origin"),
                request.get(":authority"),
                request.get("sec-fetch-site"),
            );
        if let Some(answer) = admin::account_action(h, &plugin.cfg, method, sub, cross_site, now) {
            self.account_answer(h, &answer);
            return Action::Pause;
        }
        match sub {
            "/usage" => {
                let body = self.usage_report(h);
                h.send_response(200, &[JSON, NO_STORE], body.as_bytes());
            }
            "" | "/" => self.dashboard(h, request),
            _ => h.send_response(404, &[JSON], br#"{"error":"not found"}"#),
        }
        Action::Pause
    }

    /// `GET {admin.path}/usage`: every consumer's windows, every account's health, totals.
    fn usage_report<H: Host>(&self, h: &mut H) -> String {
        let plugin = self.plugin.clone();
        let cfg = &plugin.cfg;
        let now = h.now_ms();
        // This worker's facts now; the other workers' within a second.
        let _ = plugin.analytics.borrow_mut().flush(h, now);
        plugin.flush_pending(h);
        let totals = crate::analytics::load(h);
        let recent = crate::analytics::load_recent(h);
        let consumers = consumer_views(h, cfg, now);
        // An instance without accounts (the downstream stage of a failover setup) shows the
        // pool its upstream stage published.
        let roster = if cfg.accounts.is_empty() {
            accounts::read_roster(h)
        } else {
            Vec::new()
        };
        let listed = roster.iter().map(|l| {
            let health = accounts::read_health_named(h, &l.name);
            (l.name.as_str(), l.provider, health)
        });
        let healths: Vec<(&str, Api, Health)> = cfg
            .accounts
            .iter()
            .map(|a| {
                let health = accounts::read_health(h, a).unwrap_or_else(|_| Health::fresh(a));
                (a.name.as_str(), a.provider, health)
            })
            .chain(listed)
            .collect();
        let views = healths
            .iter()
            .map(|(name, api, health)| AccountView::from_health(name, api.as_str(), health, now))
            .collect();
        admin::usage_json(&UsageReport {
            now_ms: now,
            consumers,
            accounts: views,
            totals: &totals,
            recent: &recent,
        })
    }

    /// `GET {admin.path}/`: the dashboard page.
    #[inline(never)]
    fn dashboard<H: Host>(&self, h: &mut H, request: &Headers) {
        let path = self.cfg().admin.as_ref().map_or("", |a| a.path.as_str());
        let page = admin::dashboard(path, request.get("accept-encoding"));
        // Framed by another site's page, its buttons could be clicked by a trick:
        // their same-origin requests pass the cross-site check.
        let mut headers = vec![
            ("content-type", "text/html; charset=utf-8"),
            NO_STORE,
            ("vary", "accept-encoding"),
            ("x-frame-options", "DENY"),
            ("content-security-policy", "frame-ancestors 'none'"),
        ];
        if page.gzip {
            headers.push(("content-encoding", "gzip"));
        }
        h.send_response(200, &headers, &page.body);
    }

    /// Sends the answer of an account action (reset, pause, resume), and shows a change on
    /// the account's `tollgate_account_state` gauge and in the log.
    fn account_answer<H: Host>(&mut self, h: &mut H, answer: &ActionAnswer<'_>) {
        if let Some(done) = &answer.done {
            let plugin = self.plugin.clone();
            let gauge = match done.index {
                Some(i) => plugin.stats.borrow_mut().account_gauge(h, i, done.name),
                None => plugin.stats.borrow_mut().account_gauge_named(h, done.name),
            };
            if let Some(gauge) = gauge {
                h.record_metric(gauge, done.transition.after.gauge().max(0) as u64);
            }
            let t = &done.transition;
            if t.changed() {
                let msg = format_args!(
                    "account {} is now {} by the admin API ({}; was {})",
                    done.name,
                    t.after.as_str(),
                    done.action.as_str(),
                    t.before.as_str()
                );
                log(h, Level::Warn, self.id, msg);
            }
        }
        let mut headers = vec![JSON];
        if let Some(allow) = answer.allow {
            headers.push(("allow", allow));
        }
        h.send_response(answer.status, &headers, answer.body.as_bytes());
    }
}

/// Every configured consumer's windows now (and `anonymous`'s when configured).
#[inline(never)]
fn consumer_views<'c, H: Host>(
    h: &mut H,
    cfg: &'c config::Config,
    now: u64,
) -> Vec<ConsumerView<'c>> {
    let snapshot = |name: &str, limits| {
        quota::usage_snapshot(h, &OwnerKey::consumer(name), limits, now).unwrap_or_default()
    };
    let mut consumers: Vec<ConsumerView<'_>> = cfg
        .consumers
        .iter()
        .map(|c| ConsumerView {
            name: &c.name,
            usage: snapshot(&c.name, &c.limits),
        })
        .collect();
    if let Some(a) = &cfg.anonymous {
        consumers.push(ConsumerView {
            name: config::ANONYMOUS,
            usage: snapshot(config::ANONYMOUS, &a.limits),
        });
    }
    consumers
}
