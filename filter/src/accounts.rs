//! Upstream accounts: which one serves a request and the credential headers it needs.
//! (Selection strategies, affinity and health build on this; see SPEC "Accounts".)

use crate::api::Api;
use crate::config::Account;

/// The `anthropic-version` sent when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Headers a client may use to carry a credential; all are removed before the upstream
/// when accounts are configured.
pub const CLIENT_CREDENTIAL_HEADERS: &[&str] = &["x-api-key", "authorization", "x-goog-api-key"];

/// The first account that serves `api`, in configuration order.
pub fn first_for(accounts: &[Account], api: Api) -> Option<usize> {
    accounts.iter().position(|a| a.provider == api)
}

/// The credential header an account's provider expects, with its value.
pub fn credential(account: &Account) -> (&'static str, String) {
    let key = account.key.expose();
    match account.provider {
        Api::Anthropic => ("x-api-key", key.to_string()),
        Api::OpenAi => ("authorization", format!("Bearer {key}")),
        Api::Gemini => ("x-goog-api-key", key.to_string()),
    }
}
