//! The filter's own endpoints under `admin.path`: health (open), and behind an admin key
//! the dashboard, the usage report and an account's reset.

use super::host::{Action, Host, Level};
use super::state::log;
use super::{Flow, Phase};
use crate::accounts::{self, Health};
use crate::admin::{self, AccountView, ConsumerView, UsageReport};
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
        authorization: Option<&str>,
    ) -> Action {
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
        if let Some(name) = admin::reset_target(sub) {
            self.reset_account(h, method, name);
            return Action::Pause;
        }
        match sub {
            "/usage" => {
                let body = self.usage_report(h);
                h.send_response(200, &[JSON, NO_STORE], body.as_bytes());
            }
            "" | "/" => {
                let path = self.cfg().admin.as_ref().map_or("", |a| a.path.as_str());
                let page = admin::dashboard_html(path);
                h.send_response(
                    200,
                    &[("content-type", "text/html; charset=utf-8"), NO_STORE],
                    page.as_bytes(),
                );
            }
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
        })
    }

    /// `POST {admin.path}/accounts/{name}/reset`: the account is `ok` again at once.
    fn reset_account<H: Host>(&mut self, h: &mut H, method: &str, name: &str) {
        if !method.eq_ignore_ascii_case("POST") {
            h.send_response(405, &[JSON, ("allow", "POST")], br#"{"error":"use POST"}"#);
            return;
        }
        let plugin = self.plugin.clone();
        let now = h.now_ms();
        let found = plugin
            .cfg
            .accounts
            .iter()
            .enumerate()
            .find(|(_, a)| a.name == name);
        let reset = match found {
            Some((_, account)) => accounts::reset(h, account, now).map(Some),
            // Without accounts of its own (failover downstream stage): those of the roster.
            None if plugin.cfg.accounts.is_empty()
                && accounts::read_roster(h).iter().any(|l| l.name == name) =>
            {
                accounts::reset_named(h, name, now)
            }
            None => Ok(None),
        };
        match reset {
            Ok(None) => {
                h.send_response(404, &[JSON], admin::unknown_account_json().as_bytes());
            }
            Ok(Some(t)) => {
                let gauge = match found {
                    Some((i, _)) => plugin.stats.borrow_mut().account_gauge(h, i, name),
                    None => plugin.stats.borrow_mut().account_gauge_named(h, name),
                };
                if let Some(gauge) = gauge {
                    h.record_metric(gauge, 0);
                }
                if t.changed() {
                    let before = t.before.as_str();
                    let msg =
                        format_args!("account {name} reset to ok by the admin API (was {before})");
                    log(h, Level::Warn, self.id, msg);
                }
                h.send_response(200, &[JSON], admin::reset_json(name, &t).as_bytes());
            }
            Err(_) => {
                let body = br#"{"error":"account state is busy; try again"}"#;
                h.send_response(503, &[JSON], body);
            }
        }
    }
}
