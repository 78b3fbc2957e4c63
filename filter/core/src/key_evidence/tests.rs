#![cfg(test)]
use super::samples::*;
use super::*;
use proptest::prelude::{any, proptest};

fn says(api: Api, status: u32, body: &str) -> bool {
    key_rejection(api, status, body.as_bytes()) == Some(DisableReason::InvalidKey)
}

#[test]
fn each_providers_invalid_key_answer_is_evidence() {
    let expired = GEMINI_INVALID.replace(
        "API key not valid. Please pass a valid API key.",
        "API key expired. Please renew the API key.",
    );
    let streamed = format!("[{}]", GEMINI_INVALID.trim());
    let unauthenticated = GEMINI_INVALID
        .replace("400", "401")
        .replace("INVALID_ARGUMENT", "UNAUTHENTICATED");
    let cases: [(Api, u32, &str); 6] = [
        (Api::Anthropic, 401, ANTHROPIC_INVALID),
        (Api::OpenAi, 401, OPENAI_INVALID),
        (Api::Gemini, 400, GEMINI_INVALID),
        (Api::Gemini, 400, &expired),
        (Api::Gemini, 400, &streamed),
        (Api::Gemini, 401, &unauthenticated),
    ];
    for (api, status, body) in cases {
        assert!(says(api, status, body), "{api:?} {status} {body}");
    }
}

#[test]
fn errors_about_the_request_rather_than_the_key_are_no_evidence() {
    let cases: [(Api, u32, &str); 14] = [
        // A client's `OpenAI-Organization` that the key does not belong to.
        (Api::OpenAi, 401, OPENAI_MISMATCHED_ORG),
        (
            Api::OpenAi,
            401,
            r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"invalid_project"}}"#,
        ),
        // A restricted key lacking a scope: the key is fine for other endpoints.
        (
            Api::OpenAi,
            401,
            r#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: model.request.","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
        (
            Api::OpenAi,
            403,
            r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#,
        ),
        // Even the invalid-key code counts only on a 401.
        (Api::OpenAi, 403, OPENAI_INVALID),
        (Api::OpenAi, 400, OPENAI_INVALID),
        (
            Api::Anthropic,
            403,
            r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#,
        ),
        (
            Api::Anthropic,
            401,
            r#"{"type":"error","error":{"type":"permission_error","message":"invalid x-api-key"}}"#,
        ),
        (Api::Anthropic, 403, ANTHROPIC_INVALID),
        // A client's `x-goog-user-project` the key may not bill.
        (
            Api::Gemini,
            403,
            r#"{"error":{"code":403,"message":"Caller does not have required permission to use project x. Grant the caller the roles/serviceusage.serviceUsageConsumer role","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"USER_PROJECT_DENIED","domain":"googleapis.com","metadata":{"consumer":"projects/x","service":"generativelanguage.googleapis.com"}}]}}"#,
        ),
        // A bad request: INVALID_ARGUMENT without the key's reason.
        (
            Api::Gemini,
            400,
            r#"{"error":{"code":400,"message":"* GenerateContentRequest.contents: contents is not specified","status":"INVALID_ARGUMENT"}}"#,
        ),
        // The reason outside an ErrorInfo, or with a status that does not go with it.
        (
            Api::Gemini,
            400,
            r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","reason":"API_KEY_INVALID"}]}}"#,
        ),
        (Api::Gemini, 403, GEMINI_INVALID),
        (Api::Gemini, 500, GEMINI_INVALID),
    ];
    for (api, status, body) in cases {
        assert!(!says(api, status, body), "{api:?} {status} {body}");
    }
}

#[test]
fn another_providers_invalid_key_shape_is_no_evidence() {
    for (api, status, body) in [
        (Api::OpenAi, 401, ANTHROPIC_INVALID),
        (Api::Gemini, 401, ANTHROPIC_INVALID),
        (Api::Anthropic, 401, OPENAI_INVALID),
        (Api::Gemini, 400, OPENAI_INVALID),
        (Api::OpenAi, 400, GEMINI_INVALID),
        // Anthropic's error without its envelope, or in another envelope.
        (
            Api::Anthropic,
            401,
            r#"{"error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
        (
            Api::Anthropic,
            401,
            r#"{"type":"message","error":{"type":"authentication_error"}}"#,
        ),
    ] {
        assert!(!says(api, status, body), "{api:?} {status}");
    }
}

#[test]
fn the_message_alone_never_disables() {
    // Gemini's words without the structured reason: the message may echo client input.
    let bare = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#;
    assert!(!says(Api::Gemini, 400, bare));
    // A client-chosen string that spells the evidence sits escaped inside a message.
    let echoed = r#"{"error":{"message":"The model `\"code\":\"invalid_api_key\"` does not exist","type":"invalid_request_error","param":null,"code":null}}"#;
    assert!(!says(Api::OpenAi, 401, echoed));
    let echoed = r#"{"type":"error","error":{"type":"not_found_error","message":"model: {\"type\":\"authentication_error\"}"}}"#;
    assert!(!says(Api::Anthropic, 401, echoed));
}

#[test]
fn a_repeated_field_is_no_evidence() {
    let twice = r#"{"error":{"code":"mismatched_organization","code":"invalid_api_key"}}"#;
    assert!(!says(Api::OpenAi, 401, twice));
    let twice =
        r#"{"type":"error","error":{"type":"permission_error","type":"authentication_error"}}"#;
    assert!(!says(Api::Anthropic, 401, twice));
}

#[test]
fn truncated_bodies_are_no_evidence_at_any_cut() {
    for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
        let (status, body) = invalid_key(api);
        let bytes = body.trim_end().as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                key_rejection(api, status, &bytes[..cut]),
                None,
                "{api:?} cut at {cut}"
            );
        }
        assert!(key_rejection(api, status, bytes).is_some());
    }
}

#[test]
fn garbage_is_no_evidence() {
    let deep = "[".repeat(100_000);
    let deep_obj = format!(
        "{}{}",
        r#"{"error":"#.repeat(10_000),
        r#"{"code":"invalid_api_key"}"#
    );
    let trailing = format!("{OPENAI_INVALID}xyz");
    let gzip: &[u8] = &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03, 0xab, 0x56];
    for body in [
        &b""[..],
        b"Unauthorized",
        b"<html><body>401 Authorization Required</body></html>",
        b"{\"error\":\"Unauthorized\"}",
        b"null",
        b"[]",
        gzip,
        deep.as_bytes(),
        deep_obj.as_bytes(),
        trailing.as_bytes(),
    ] {
        for (api, status) in [
            (Api::Anthropic, 401),
            (Api::OpenAi, 401),
            (Api::Gemini, 400),
        ] {
            assert_eq!(key_rejection(api, status, body), None, "{api:?}");
        }
    }
}

#[test]
fn reasons_round_trip_their_codes() {
    let r = DisableReason::InvalidKey;
    assert_eq!(DisableReason::from_code(u64::from(r.code())), Some(r));
    assert_eq!(DisableReason::from_code(0), None);
    assert_eq!(DisableReason::from_code(2), None);
    assert_eq!(r.as_str(), "invalid_key");
}

proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), status in 0u32..600) {
        for api in [Api::Anthropic, Api::OpenAi, Api::Gemini] {
            let _ = key_rejection(api, status, &bytes);
        }
    }
}
