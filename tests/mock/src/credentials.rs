//! Provider answers about a credential (`error` in a script): invalid key, organization or
//! project mismatch, permission, in each API's exact format, optionally echoing the key the
//! mock received (`echo_key`), as some providers and proxies do.

use crate::providers::{
    anthropic_error, default_message, error_body, error_body_escaped, openai_error_with, Api,
};
use crate::script::escape;

/// The providers' answers about a credential (`error` in a script).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The key itself is bad: the only evidence that should disable an account.
    InvalidKey,
    MismatchedOrganization,
    Permission,
    InvalidProject,
}

impl ErrorKind {
    pub fn parse(s: &str) -> Option<ErrorKind> {
        Some(match s {
            "invalid_key" => ErrorKind::InvalidKey,
            "mismatched_organization" => ErrorKind::MismatchedOrganization,
            "permission" => ErrorKind::Permission,
            "invalid_project" => ErrorKind::InvalidProject,
            _ => return None,
        })
    }
}

/// What an error body may quote from the request.
pub struct ErrorCtx<'a> {
    pub id: u64,
    /// The upstream credential received.
    pub key: Option<&'a str>,
    /// `echo_key`: quote the key verbatim after this much padding (else OpenAI masks it).
    pub echo_pad: Option<usize>,
    /// The request's `x-goog-user-project`.
    pub user_project: Option<&'a str>,
}

impl ErrorCtx<'_> {
    /// The echoed key, JSON-escaped, after its padding; `None` without `echo_key`.
    fn echo(&self) -> Option<String> {
        let pad = self.echo_pad?;
        Some(format!(
            "{}{}",
            echo_padding(pad),
            escape(self.key.unwrap_or("(none)"))
        ))
    }

    /// `message` with the echoed key appended, when echoing.
    fn with_echo(&self, message: &str) -> String {
        match self.echo() {
            Some(e) => format!("{message} (key {e})"),
            None => message.to_owned(),
        }
    }
}

/// Filler before a late echo: JSON-safe, no spaces, so a stream keeps it in one piece.
pub fn echo_padding(n: usize) -> String {
    const UNIT: &str = "0123456789abcdef";
    UNIT.chars().cycle().take(n).collect()
}

/// OpenAI's way of quoting a wrong key: its first 5 and last 4 characters.
fn openai_mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 9 {
        return "*".repeat(chars.len());
    }
    let head: String = chars.iter().take(5).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 9))
}

/// Default status and body of a credential error, in the API's exact format.
pub fn credential_error(api: Api, kind: ErrorKind, cx: &ErrorCtx) -> (u16, String) {
    match (api, kind) {
        (Api::Anthropic, ErrorKind::InvalidKey) => {
            let msg = match cx.echo() {
                Some(e) => format!("invalid x-api-key: {e}"),
                None => "invalid x-api-key".into(),
            };
            (401, anthropic_error("authentication_error", &msg, cx.id))
        }
        (Api::Anthropic, _) => (
            403,
            anthropic_error(
                "permission_error",
                &cx.with_echo(
                    "Your API key does not have permission to use the specified resource.",
                ),
                cx.id,
            ),
        ),
        (Api::OpenAi, ErrorKind::InvalidKey) => {
            let shown = cx
                .echo()
                .unwrap_or_else(|| escape(&openai_mask(cx.key.unwrap_or_default())));
            let msg = format!("Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys.");
            (
                401,
                openai_error_with("invalid_request_error", "\"invalid_api_key\"", &msg),
            )
        }
        (Api::OpenAi, kind) => {
            let (status, code, msg) = match kind {
                ErrorKind::MismatchedOrganization => (
                    401,
                    "\"mismatched_organization\"",
                    "OpenAI-Organization header should match organization for API key",
                ),
                ErrorKind::InvalidProject => (
                    401,
                    "\"mismatched_project\"",
                    "OpenAI-Project header should match project for API key",
                ),
                _ => (403, "null", "You are not allowed to sample from this model"),
            };
            let body = openai_error_with("invalid_request_error", code, &cx.with_echo(msg));
            (status, body)
        }
        (Api::Gemini, ErrorKind::InvalidKey) => {
            let msg = match cx.echo() {
                Some(e) => format!("API key not valid: {e}. Please pass a valid API key."),
                None => "API key not valid. Please pass a valid API key.".into(),
            };
            (
                400,
                format!(
                    "{{\"error\":{{\"code\":400,\"message\":\"{msg}\",\"status\":\"INVALID_ARGUMENT\",\"details\":[{{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"reason\":\"API_KEY_INVALID\",\"domain\":\"googleapis.com\",\"metadata\":{{\"service\":\"generativelanguage.googleapis.com\"}}}}]}}}}"
                ),
            )
        }
        (Api::Gemini, _) => {
            let p = escape(cx.user_project.unwrap_or("mock-project"));
            let msg = cx.with_echo(&format!("Caller does not have required permission to use project {p}. Grant the caller the roles/serviceusage.serviceUsageConsumer role, or a custom role with the serviceusage.services.use permission, by visiting https://console.developers.google.com/iam-admin/iam/project?project={p} and then retry. Propagation of the new permission may take a few minutes."));
            (
                403,
                format!(
                    "{{\"error\":{{\"code\":403,\"message\":\"{msg}\",\"status\":\"PERMISSION_DENIED\",\"details\":[{{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"reason\":\"USER_PROJECT_DENIED\",\"domain\":\"googleapis.com\",\"metadata\":{{\"consumer\":\"projects/{p}\",\"service\":\"generativelanguage.googleapis.com\"}}}}]}}}}"
                ),
            )
        }
    }
}

/// A generic error body for a scripted status, with the key echoed when asked.
pub fn status_error(api: Api, status: u16, cx: &ErrorCtx) -> String {
    match cx.echo() {
        Some(_) => error_body_escaped(api, status, &cx.with_echo(default_message(status)), cx.id),
        None => error_body(api, status, None, cx.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const KEY: &str = "sk-proj-AAAA\"\\BBBB";

    fn cx(echo_pad: Option<usize>) -> ErrorCtx<'static> {
        ErrorCtx {
            id: 9,
            key: Some(KEY),
            echo_pad,
            user_project: Some("proj-x"),
        }
    }

    fn body(api: Api, kind: ErrorKind, echo_pad: Option<usize>) -> (u16, Value) {
        let (status, b) = credential_error(api, kind, &cx(echo_pad));
        (
            status,
            serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")),
        )
    }

    #[test]
    fn credential_errors_use_each_providers_status_and_exact_shape() {
        use ErrorKind::*;
        let cases: &[(Api, ErrorKind, u16, &str, &str)] = &[
            (
                Api::Anthropic,
                InvalidKey,
                401,
                "/error/type",
                "authentication_error",
            ),
            (
                Api::Anthropic,
                Permission,
                403,
                "/error/type",
                "permission_error",
            ),
            (
                Api::Anthropic,
                MismatchedOrganization,
                403,
                "/error/type",
                "permission_error",
            ),
            (
                Api::Anthropic,
                InvalidProject,
                403,
                "/error/type",
                "permission_error",
            ),
            (
                Api::OpenAi,
                InvalidKey,
                401,
                "/error/code",
                "invalid_api_key",
            ),
            (
                Api::OpenAi,
                MismatchedOrganization,
                401,
                "/error/code",
                "mismatched_organization",
            ),
            (
                Api::OpenAi,
                InvalidProject,
                401,
                "/error/code",
                "mismatched_project",
            ),
            (
                Api::OpenAi,
                Permission,
                403,
                "/error/type",
                "invalid_request_error",
            ),
            (
                Api::Gemini,
                InvalidKey,
                400,
                "/error/details/0/reason",
                "API_KEY_INVALID",
            ),
            (
                Api::Gemini,
                Permission,
                403,
                "/error/status",
                "PERMISSION_DENIED",
            ),
            (
                Api::Gemini,
                InvalidProject,
                403,
                "/error/details/0/reason",
                "USER_PROJECT_DENIED",
            ),
            (
                Api::Gemini,
                MismatchedOrganization,
                403,
                "/error/status",
                "PERMISSION_DENIED",
            ),
        ];
        for (api, kind, want_status, ptr, want) in cases {
            let (status, v) = body(*api, *kind, None);
            assert_eq!(status, *want_status, "{api:?} {kind:?}");
            assert_eq!(
                v.pointer(ptr).and_then(Value::as_str),
                Some(*want),
                "{api:?} {kind:?}: {v}"
            );
            assert!(
                !v.to_string().contains("AAAA"),
                "{api:?} {kind:?} leaks the key unasked"
            );
        }
        let (_, v) = body(Api::Anthropic, InvalidKey, None);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["message"], "invalid x-api-key");
        let (_, v) = body(Api::OpenAi, InvalidKey, None);
        assert_eq!(
            v["error"]["message"],
            "Incorrect API key provided: sk-pr*********BBBB. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        assert_eq!(v["error"]["param"], Value::Null);
        let (_, v) = body(Api::OpenAi, MismatchedOrganization, None);
        assert_eq!(
            v,
            json!({"error": {"message": "OpenAI-Organization header should match organization for API key",
                "type": "invalid_request_error", "param": null, "code": "mismatched_organization"}})
        );
        let (_, v) = body(Api::OpenAi, Permission, None);
        assert_eq!(v["error"]["code"], Value::Null);
        let (_, v) = body(Api::Gemini, InvalidKey, None);
        assert_eq!(
            v,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}]}})
        );
        let (_, v) = body(Api::Gemini, InvalidProject, None);
        assert_eq!(v["error"]["code"], 403);
        assert_eq!(
            v["error"]["details"][0]["metadata"]["consumer"],
            "projects/proj-x"
        );
    }

    #[test]
    fn echo_key_quotes_the_key_verbatim_in_every_error_message() {
        use ErrorKind::*;
        for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
            for kind in [
                InvalidKey,
                MismatchedOrganization,
                Permission,
                InvalidProject,
            ] {
                for pad in [0, 10 << 10] {
                    let (_, v) = body(api, kind, Some(pad));
                    let msg = v["error"]["message"].as_str().unwrap();
                    let at = msg
                        .find(KEY)
                        .unwrap_or_else(|| panic!("{api:?} {kind:?}: {msg}"));
                    assert!(at >= pad, "{api:?} {kind:?}: key at {at}, padding {pad}");
                }
            }
            let v: Value = serde_json::from_str(&status_error(api, 500, &cx(Some(0)))).unwrap();
            assert!(
                v["error"]["message"].as_str().unwrap().contains(KEY),
                "{api:?}"
            );
            let plain = status_error(api, 500, &cx(None));
            assert_eq!(plain, error_body(api, 500, None, 9));
        }
        let (_, v) = body(Api::OpenAi, InvalidKey, Some(0));
        assert_eq!(
            v["error"]["message"].as_str().unwrap(),
            format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys.")
        );
    }

    #[test]
    fn openai_mask_keeps_five_and_four_characters_and_hides_short_keys() {
        assert_eq!(openai_mask("sk-proj-0123456789"), "sk-pr*********6789");
        assert_eq!(openai_mask("short"), "*****");
        assert_eq!(openai_mask("ééééééééééé"), "ééééé**éééé");
        assert_eq!(openai_mask(""), "");
    }
}
