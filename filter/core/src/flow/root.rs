//! The root context's side of the flow: the configuration, the tick (analytics, queued
//! account totals and learning, global charges) and the replies to the charges it sent.

use std::rc::Rc;

use super::host::{Buffer, GrpcCall, Host, Level};
use super::state::{log, Plugin};
use super::Flow;
use crate::config;
use crate::metrics;

/// The root tick's period: how late a worker's counters, global charges and account totals
/// can reach Envoy, the rate-limit service and the other workers.
pub const TICK_MS: u64 = 100;

/// One worker's root: the plugin for the current configuration.
pub struct Root {
    id: u32,
    plugin: Option<Rc<Plugin>>,
    /// Plugins of earlier configurations that requests still hold or that still have counts
    /// or charges to send: each tick flushes them until nothing refers to them.
    retired: Vec<Rc<Plugin>>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root {
            id,
            plugin: None,
            retired: Vec::new(),
        }
    }

    /// How many earlier configurations' plugins are still kept.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// The plugin of the current configuration, once one loaded.
    pub fn plugin(&self) -> Option<&Rc<Plugin>> {
        self.plugin.as_ref()
    }

    /// Loads the configuration (`size` bytes of the plugin configuration buffer); `false`
    /// refuses it, and Envoy then refuses the filter.
    pub fn configure<H: Host>(&mut self, h: &mut H, size: usize) -> bool {
        let Some(cfg) = self.read_config(h, size) else {
            return false;
        };
        self.plugin = Some(Rc::new(self.start(h, cfg)));
        true
    }

    /// The plugin configuration buffer, parsed; `None` (and an error logged) if refused.
    #[inline(never)]
    fn read_config<H: Host>(&self, h: &mut H, size: usize) -> Option<config::Config> {
        let raw = h
            .read(Buffer::PluginConfig, 0, size.max(1 << 20))
            .unwrap_or_default();
        let raw = if raw.iter().all(|b| b.is_ascii_whitespace()) {
            b"{}".to_vec()
        } else {
            raw
        };
        match config::parse(&raw) {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                log(
                    h,
                    Level::Error,
                    self.id,
                    format_args!("invalid configuration: {e}"),
                );
                None
            }
        }
    }

    /// The plugin of a loaded configuration, its tick, quota keys and metric series set up.
    #[inline(never)]
    fn start<H: Host>(&mut self, h: &mut H, cfg: config::Config) -> Plugin {
        let (consumers, accounts, stage) = (cfg.consumers.len(), cfg.accounts.len(), cfg.stage);
        log(
            h,
            Level::Info,
            self.id,
            format_args!(
                "configured ({consumers} consumers, {accounts} accounts, stage {stage:?})"
            ),
        );
        // The previous configuration's plugin is kept, and flushed each tick, while requests
        // hold it or its counts and charges are under way.
        if let Some(old) = self.plugin.take() {
            old.stats.borrow_mut().flush(h);
            self.retired.push(old);
        }
        let plugin = Plugin::new(cfg);
        // Charges after a response are sent from the tick, never from the request; counters,
        // account totals and learning reach the host from it, analytics about once a second.
        h.set_tick_period_ms(TICK_MS);
        if let Err(e) = plugin.prepare_store(h) {
            log(
                h,
                Level::Warn,
                self.id,
                format_args!("preparing quota keys: {e:?}"),
            );
        }
        define_series(h, &plugin.cfg);
        plugin
    }

    /// The root context is going away (its filter configuration was removed): counts made
    /// since the last tick reach the host now.
    pub fn on_done<H: Host>(&mut self, h: &mut H) {
        for plugin in self.plugin.iter().chain(&self.retired) {
            plugin.stats.borrow_mut().flush(h);
        }
    }

    pub fn on_tick<H: Host>(&mut self, h: &mut H) {
        for plugin in self.plugin.iter().chain(&self.retired) {
            tick(h, plugin);
        }
        // An earlier plugin goes once no request holds it and its charges are all answered.
        self.retired.retain(|p| {
            let charges = p.charges.borrow();
            Rc::strong_count(p) > 1 || !charges.is_empty() || charges.in_flight() > 0
        });
    }

    /// The reply to a charge call sent from `on_tick`: each descriptor it carried counts once.
    pub fn on_grpc_response<H: Host>(&mut self, h: &mut H, token: u32, status: u32) {
        let mut plugins = self.plugin.iter().chain(&self.retired);
        let Some(plugin) = plugins.find(|p| p.charges.borrow().issued(token)) else {
            return;
        };
        let n = plugin.charges.borrow_mut().finished(token, status == 0);
        let outcome = if status == 0 { "sent" } else { "dropped" };
        count_charges(h, plugin, outcome, n);
    }

    /// A new request's flow (none before a configuration loaded).
    pub fn new_request<H: Host>(&self, h: &H, id: u32) -> Option<Flow> {
        let plugin = self.plugin.clone()?;
        Some(Flow::new(id, plugin, h.now_ms()))
    }
}

/// One plugin's share of a tick: its analytics when due, its queued account totals and
/// learning, its counters, and its global charges.
fn tick<H: Host>(h: &mut H, plugin: &Rc<Plugin>) {
    let _ = plugin.analytics.borrow_mut().flush_if_due(h, h.now_ms());
    plugin.flush_pending(h);
    plugin.stats.borrow_mut().flush(h);
    let Some(global) = &plugin.cfg.global else {
        return;
    };
    // Each pending descriptor once, its usage of the tick summed, in as few calls as fit.
    loop {
        let Some(batch) = plugin.charges.borrow_mut().take(&global.domain) else {
            break;
        };
        let call = GrpcCall::rate_limit(global, &batch.body, 1000);
        match h.dispatch_grpc(&call) {
            Ok(token) => plugin
                .charges
                .borrow_mut()
                .dispatched(token, batch.descriptors),
            Err(_) => {
                plugin
                    .charges
                    .borrow_mut()
                    .dispatch_failed(batch.descriptors);
                count_charges(h, plugin, "dropped", batch.descriptors);
            }
        }
    }
}

/// `tollgate_global_charges_total{outcome}`: one count is one descriptor's usage summed over
/// one tick of one worker.
pub(crate) fn count_charges<H: Host>(h: &mut H, plugin: &Plugin, outcome: &str, n: usize) {
    let labels = [("outcome", outcome)];
    let mut stats = plugin.stats.borrow_mut();
    stats.count(h, "tollgate_global_charges_total", &labels, n as u64);
}

/// Defines every metric series of a configuration, so that each exists at 0 before its first
/// event.
#[inline(never)]
fn define_series<H: Host>(h: &mut H, cfg: &config::Config) {
    for s in metrics::series(cfg) {
        h.define_metric(s.kind, &s.name);
    }
}
