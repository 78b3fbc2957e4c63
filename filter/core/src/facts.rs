//! The filter-state keys tollgate writes (and, in a two-stage setup, reads back from the
//! other stage), each named once. Envoy's access log reads them as
//! `%FILTER_STATE(wasm.<key>:PLAIN)%`: one path segment each, so no key holds a NUL.

use crate::config::{Config, Stage};

/// The caller's consumer name (`anonymous` for the anonymous caller).
pub const CONSUMER: &str = "tollgate.consumer";
/// The account whose credential went upstream.
pub const ACCOUNT: &str = "tollgate.account";
/// The input estimate used at admission, in tokens (decimal).
pub const ESTIMATE: &str = "tollgate.estimate";
/// The request's conversation fingerprint (16 hex digits), for an upstream stage's affinity.
pub const FINGERPRINT: &str = "tollgate.fingerprint";
/// The affinity session id.
pub const SESSION: &str = "tollgate.session";
/// Indexes of the accounts earlier attempts of this request used (comma-separated).
pub const TRIED: &str = "tollgate.tried";
/// The model the request named.
pub const MODEL: &str = "tollgate.model";
/// `admitted` or the rejection reason.
pub const DECISION: &str = "tollgate.decision";
/// Input-side tokens charged (decimal).
pub const INPUT_TOKENS: &str = "tollgate.input_tokens";
/// Output tokens charged (decimal).
pub const OUTPUT_TOKENS: &str = "tollgate.output_tokens";
/// Where the usage numbers came from (`reported`, `estimated`, ...).
pub const USAGE: &str = "tollgate.usage";

/// Every key above, in one list (for tests and documentation).
pub const ALL: [&str; 11] = [
    CONSUMER,
    ACCOUNT,
    ESTIMATE,
    FINGERPRINT,
    SESSION,
    TRIED,
    MODEL,
    DECISION,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    USAGE,
];

/// Whether another tollgate stage reads `key` back (so it is written even with
/// `access_log_facts: false`): a downstream stage without accounts publishes the caller, the
/// estimate and the conversation for the upstream stage that picks the account; an upstream
/// stage publishes the account (for the downstream stage's metering) and the accounts tried
/// (for the next attempt). Every other fact is read only by an access log.
pub fn read_by_other_stage(key: &str, cfg: &Config) -> bool {
    match cfg.stage {
        Stage::Downstream => {
            cfg.accounts.is_empty() && [CONSUMER, ESTIMATE, FINGERPRINT, SESSION].contains(&key)
        }
        Stage::Upstream => key == ACCOUNT || key == TRIED,
    }
}

/// Envoy's details of the response (`via_upstream` when the upstream answered).
pub const RESPONSE_CODE_DETAILS: [&str; 2] = ["response", "code_details"];
/// Where `jwt_authn` puts a verified token's payload (then the metadata key and the claim).
pub const JWT_AUTHN: [&str; 3] = [
    "metadata",
    "filter_metadata",
    "envoy.filters.http.jwt_authn",
];
