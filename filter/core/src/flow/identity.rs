//! A request's headers in the downstream stage: the route, the caller's identity, the
//! refusals that need no body, and either holding the headers for the body (metered
//! endpoints) or choosing the credential now (everything else).

use super::host::{Action, Headers, Host};
use super::state::KNOWN_KEYS;
use super::{Flow, Phase};
use crate::api::{self, Reason, Route};
use crate::facts;
use crate::identity::{self, Caller, Identity};
use crate::request::RequestScanner;

impl Flow {
    /// The downstream stage's request headers.
    #[inline(never)]
    pub(crate) fn downstream_headers<H: Host>(&mut self, h: &mut H, end_of_stream: bool) -> Action {
        let headers = h.request_headers();
        let path = headers.get(":path").unwrap_or_default().to_string();
        let method = headers.get(":method").unwrap_or_default();
        let x_api_key = headers.get("x-api-key");
        let authorization = headers.get("authorization");
        let goog = headers.get("x-goog-api-key");
        self.api = api::api_hint(
            headers.get("anthropic-version").is_some(),
            x_api_key.is_some(),
            goog.is_some(),
        );
        // A client never picks the route cluster itself.
        if headers.has("x-tollgate-route") {
            h.remove_request_header("x-tollgate-route");
        }
        let plugin = self.plugin.clone();
        let cfg = &plugin.cfg;
        let route = api::classify(
            method,
            &path,
            self.api,
            cfg.admin.as_ref().map(|a| a.path.as_str()),
            &cfg.passthrough_paths,
        );
        let key = identity::presented_key(x_api_key, authorization, goog, &path);
        match route {
            Route::Admin(sub) => {
                // The admin key is never taken from the URL (`?key=`).
                let key = identity::presented_key(x_api_key, authorization, None, "");
                return self.admin(h, method, &sub, key, &headers);
            }
            Route::BadRequest { api, message } => {
                self.api = api;
                return self.refuse(h, Reason::BadRequest, message);
            }
            Route::NotFound(api) => return self.not_found(h, api, method, &path, key),
            Route::Identity(api) => self.api = api,
            Route::Metered { endpoint, .. } => self.api = endpoint.api(),
        }
        match self.identify(h, &headers, key) {
            Identity::Known(caller, by_key) => {
                self.presented_tollgate_key = by_key;
                self.caller = Some(caller);
            }
            unknown => return self.unidentified(h, &unknown, key.is_some()),
        }
        self.fact(h, facts::CONSUMER, self.consumer_name());
        match route {
            Route::Metered { endpoint, model } => {
                if end_of_stream {
                    return self.refuse(h, Reason::BadRequest, "request body is required");
                }
                let declared = headers
                    .get("content-length")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if declared.is_some_and(|n| n > cfg.max_body_bytes) {
                    return self.too_large(h);
                }
                // The fingerprint serves affinity here, or an upstream stage (which has the
                // accounts when this stage has none).
                let scanner = RequestScanner::new(endpoint, model);
                let fingerprinted = cfg.selection.affinity.is_some() || cfg.accounts.is_empty();
                self.scanner = Some(if fingerprinted {
                    scanner
                } else {
                    scanner.without_fingerprint()
                });
                self.endpoint = Some(endpoint);
                self.phase = Phase::ReadingBody;
                self.headers = headers;
                // Hold the headers until the body is read: the credential and the quota
                // decision depend on it (needs allow_on_headers_stop_iteration).
                Action::Pause
            }
            _ => {
                self.headers = headers;
                if let Err(answer) = self.choose_account(h, &path, false, None, &[]) {
                    return answer;
                }
                self.decision = None;
                self.phase = Phase::Passthrough;
                Action::Continue
            }
        }
    }

    /// Refuses a path not served here with 404, counted under the caller's consumer when its
    /// key is valid.
    #[inline(never)]
    fn not_found<H: Host>(
        &mut self,
        h: &mut H,
        api: api::Api,
        method: &str,
        path: &str,
        key: Option<&str>,
    ) -> Action {
        self.api = api;
        if let Identity::Known(c, _) = identity::identify(&self.plugin.cfg, key, None) {
            self.caller = Some(c);
        }
        // Never the query or `;` parameters: a client may have put a secret there.
        let msg = format!("{method} {} is not served here", api::display_path(path));
        self.refuse(h, Reason::NotFound, msg)
    }

    /// Who is calling: a consumer's key (remembered per worker once checked), or a name
    /// trusted from a header only when a filter before this one set it, or from the payload
    /// of a JWT that `jwt_authn` verified (dynamic metadata no client can set).
    fn identify<H: Host>(&self, h: &mut H, headers: &Headers, key: Option<&str>) -> Identity {
        let plugin = &self.plugin;
        let cfg = &plugin.cfg;
        let claimed = cfg.consumer_claim.as_ref().and_then(|c| {
            let [a, b, c_] = facts::JWT_AUTHN;
            h.property(&[a, b, c_, &c.metadata, &c.claim])
        });
        let trusted_name = match &claimed {
            Some(name) => Some(name.as_str()),
            None => cfg
                .consumer_header
                .as_deref()
                .and_then(|n| headers.get(n))
                .map(str::trim)
                .filter(|n| !n.is_empty()),
        };
        let known = key.and_then(|k| plugin.known_keys.borrow().get(k).copied());
        match known {
            Some(i) => Identity::Known(Caller::Consumer(i), true),
            None => {
                let found = identity::identify(cfg, key, trusted_name);
                if let (Some(k), Identity::Known(Caller::Consumer(i), true)) = (key, &found) {
                    let mut known = plugin.known_keys.borrow_mut();
                    if known.len() >= KNOWN_KEYS {
                        known.clear();
                    }
                    known.insert(k.to_string(), *i);
                }
                found
            }
        }
    }

    /// Refuses a caller that is not identified: 401 without a valid key, 403 for a trusted
    /// name that is not configured.
    #[inline(never)]
    fn unidentified<H: Host>(&mut self, h: &mut H, identity: &Identity, has_key: bool) -> Action {
        if matches!(identity, Identity::UnknownName) {
            let msg = "this consumer is not configured here";
            return self.refuse(h, Reason::UnknownConsumer, msg);
        }
        let msg = if has_key {
            "invalid API key"
        } else {
            "no API key: send it in x-api-key or Authorization: Bearer"
        };
        self.refuse(h, Reason::Auth, msg)
    }

    pub(crate) fn too_large<H: Host>(&mut self, h: &mut H) -> Action {
        let max = self.plugin.cfg.max_body_bytes;
        self.refuse(
            h,
            Reason::TooLarge,
            format!("request body is larger than {max} bytes"),
        )
    }
}
