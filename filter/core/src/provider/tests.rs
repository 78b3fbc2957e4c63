#![cfg(test)]
use super::*;
use crate::api::{error_body, Reason};
use proptest::prelude::{proptest, ProptestConfig};

#[test]
fn each_api_has_its_provider_and_all_lists_them_in_api_order() {
    for api in Api::ALL {
        assert_eq!(of(api).api(), api);
    }
    let listed: Vec<Api> = ALL.iter().map(|p| p.api()).collect();
    assert_eq!(listed, Api::ALL);
    for api in Api::ALL {
        assert_eq!(Api::from_name(api.as_str()), Some(api));
    }
    assert_eq!(Api::from_name("Anthropic"), None);
    assert_eq!(Api::from_name(""), None);
}

#[test]
fn every_endpoint_is_routed_by_the_provider_of_its_api() {
    let cases = [
        ("/v1/messages", Endpoint::Messages, None),
        ("/v1/chat/completions", Endpoint::ChatCompletions, None),
        ("/v1/completions", Endpoint::Completions, None),
        ("/v1/embeddings", Endpoint::Embeddings, None),
        ("/v1/responses", Endpoint::Responses, None),
        (
            "/v1beta/models/m:generateContent",
            Endpoint::GenerateContent,
            Some("m"),
        ),
        (
            "/v1/models/m:streamGenerateContent",
            Endpoint::StreamGenerateContent,
            Some("m"),
        ),
    ];
    for endpoint in Endpoint::ALL {
        let (path, _, model) = cases
            .iter()
            .find(|c| c.1 == endpoint)
            .expect("a path for every endpoint");
        let want = Route::Metered {
            endpoint,
            model: model.map(str::to_string),
        };
        assert_eq!(
            of(endpoint.api()).route(Method::Post, path),
            Some(want.clone())
        );
        assert_eq!(route(Method::Post, path, Api::OpenAi), Some(want), "{path}");
        for other in ALL.iter().filter(|p| p.api() != endpoint.api()) {
            assert_eq!(other.route(Method::Post, path), None, "{path}");
        }
        // Metered endpoints are POST only.
        assert_ne!(
            route(Method::Get, path, Api::OpenAi).map(|r| matches!(r, Route::Metered { .. })),
            Some(true),
            "{path}"
        );
    }
}

#[test]
fn methods_are_read_in_any_case() {
    assert_eq!(Method::of("POST"), Method::Post);
    assert_eq!(Method::of("post"), Method::Post);
    assert_eq!(Method::of("Get"), Method::Get);
    assert_eq!(Method::of("PUT"), Method::Other);
    assert_eq!(Method::of(""), Method::Other);
}

#[test]
fn an_admin_path_may_not_cover_any_served_path() {
    // The list `config` checked `admin.path` against before the providers held it.
    const API_PATHS: &[&str] = &[
        "/v1/messages/count_tokens",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/models",
        "/v1beta/models",
    ];
    let old = |p: &str| {
        API_PATHS.iter().any(|api| {
            api.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    };
    for p in [
        "/v1",
        "/v1beta",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/chat",
        "/v1/models",
        "/v1/models/x",
        "/v1beta/models",
        "/v1/mess",
        "/tollgate",
        "/v2",
        "/v1/files",
        "/v1/responses",
    ] {
        assert_eq!(covers_api_path(p), old(p), "{p}");
    }
    assert!(covers_api_path("/v1"));
    assert!(!covers_api_path("/tollgate"));
}

#[test]
fn a_passthrough_prefix_without_an_api_belongs_to_the_provider_that_owns_it() {
    for (prefix, api) in [
        ("/v1beta/", Api::Gemini),
        ("/v1beta", Api::Gemini),
        ("/v1beta/cachedContents", Api::Gemini),
        ("/v1betax", Api::OpenAi),
        ("/v1/messages/batches", Api::Anthropic),
        ("/v1/messages", Api::Anthropic),
        ("/v1/complete", Api::Anthropic),
        ("/v1/completions", Api::OpenAi),
        ("/v1/files", Api::OpenAi),
        ("/", Api::OpenAi),
    ] {
        assert_eq!(default_passthrough_api(prefix), api, "{prefix}");
    }
}

#[test]
fn an_unserved_path_speaks_the_api_that_owns_it() {
    for (path, api) in [
        ("/v1beta/anything", Some(Api::Gemini)),
        ("/v1/messages", Some(Api::Anthropic)),
        ("/v1/messages/batches", Some(Api::Anthropic)),
        ("/v1/complete", None),
        ("/v1beta", None),
        ("/v1/unknown", None),
    ] {
        assert_eq!(path_api(path), api, "{path}");
    }
}

#[test]
fn each_provider_sends_its_credential_its_own_way() {
    let key = "FAKE-KEY";
    assert_eq!(
        of(Api::Anthropic).credential(key),
        ("x-api-key", key.to_string())
    );
    assert_eq!(
        of(Api::OpenAi).credential(key),
        ("authorization", format!("Bearer {key}"))
    );
    assert_eq!(
        of(Api::Gemini).credential(key),
        ("x-goog-api-key", key.to_string())
    );
    for p in ALL {
        assert_eq!(p.credential(key).0, p.credential_header());
    }
    assert_eq!(
        client_credential_headers().collect::<Vec<_>>(),
        ["x-api-key", "authorization", "x-goog-api-key"]
    );
    assert_eq!(
        scoping_headers().collect::<Vec<_>>(),
        [
            "openai-organization",
            "openai-project",
            "x-goog-user-project"
        ]
    );
    assert_eq!(
        of(Api::Anthropic).default_headers(),
        [("anthropic-version", "2023-06-01")]
    );
    assert!(of(Api::OpenAi).default_headers().is_empty());
    assert!(of(Api::Gemini).default_headers().is_empty());
}

#[test]
fn rate_limit_headers_are_known_by_prefix_in_any_case() {
    assert!(is_rate_limit_header("Anthropic-RateLimit-Tokens-Reset"));
    assert!(is_rate_limit_header("x-ratelimit-remaining-tokens"));
    assert!(is_rate_limit_header("X-RateLimit-Anything"));
    assert!(!is_rate_limit_header("retry-after"));
    assert!(!is_rate_limit_header("x-ratelimit"));
    assert!(!is_rate_limit_header("anthropic-version"));
    assert!(!is_rate_limit_header(""));
}

#[test]
fn rate_limit_header_names_say_their_dimension_and_field() {
    let dim = |dim, field| Some(RateHeader::Dim { dim, field });
    let unified = |window, field| Some(RateHeader::Unified { window, field });
    for (name, want) in [
        (
            "anthropic-ratelimit-input-tokens-remaining",
            dim("input-tokens", "remaining"),
        ),
        (
            "anthropic-ratelimit-requests-reset",
            dim("requests", "reset"),
        ),
        ("x-ratelimit-remaining-tokens", dim("tokens", "remaining")),
        ("x-ratelimit-reset-requests", dim("requests", "reset")),
        (
            "anthropic-ratelimit-unified-status",
            unified(None, "status"),
        ),
        ("anthropic-ratelimit-unified-reset", unified(None, "reset")),
        (
            "anthropic-ratelimit-unified-7d-status",
            unified(Some("7d"), "status"),
        ),
        ("anthropic-ratelimit-tokens", None),
        ("x-ratelimit-tokens", None),
        ("retry-after", None),
        ("x-goog-anything", None),
    ] {
        assert_eq!(rate_header(name), want, "{name}");
    }
}

#[test]
fn stream_error_names_classify_as_before() {
    let named = |kind: &'static str| ErrorNames {
        kind: Some(kind),
        ..ErrorNames::default()
    };
    for (names, want) in [
        // Moved from `accounts`: the names each class is known by.
        (named("rate_limit_exceeded"), StreamError::RateLimited),
        (named("RESOURCE_EXHAUSTED"), StreamError::RateLimited),
        (named("UNAVAILABLE"), StreamError::Overloaded),
        (named("invalid_request_error"), StreamError::Other),
        (named(""), StreamError::Other),
        (named("rate_limit_error"), StreamError::RateLimited),
        (named("overloaded_error"), StreamError::Overloaded),
        (ErrorNames::default(), StreamError::Other),
        (
            ErrorNames {
                code: Some("rate_limit_exceeded"),
                ..ErrorNames::default()
            },
            StreamError::RateLimited,
        ),
        (
            ErrorNames {
                status: Some("UNAVAILABLE"),
                code_num: 503,
                ..ErrorNames::default()
            },
            StreamError::Overloaded,
        ),
        (
            ErrorNames {
                code_num: 429,
                ..ErrorNames::default()
            },
            StreamError::RateLimited,
        ),
        (
            ErrorNames {
                code_num: 529,
                ..ErrorNames::default()
            },
            StreamError::Overloaded,
        ),
        (
            ErrorNames {
                code_num: 500,
                ..ErrorNames::default()
            },
            StreamError::Other,
        ),
        // A rate limit wins over an overload, whichever field says which.
        (
            ErrorNames {
                kind: Some("overloaded_error"),
                code_num: 429,
                ..ErrorNames::default()
            },
            StreamError::RateLimited,
        ),
        // Gemini's statuses match exactly; the others by what the name holds.
        (named("resource_exhausted"), StreamError::Other),
        (named("server_overloaded"), StreamError::Overloaded),
    ] {
        assert_eq!(classify_stream_error(&names), want, "{names:?}");
    }
}

#[test]
fn tollgates_own_errors_are_byte_identical_in_every_format() {
    // Every body as tollgate wrote it before the providers held the formats.
    let cases: &[(Api, Reason, &str)] = &[
        (
            Api::Anthropic,
            Reason::Auth,
            r#"{"type":"error","error":{"type":"authentication_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Auth,
            r#"{"error":{"message":"m \"q\" é\n","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Auth,
            r#"{"error":{"code":401,"message":"m \"q\" é\n","status":"UNAUTHENTICATED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::Model,
            r#"{"type":"error","error":{"type":"permission_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Model,
            r#"{"error":{"message":"m \"q\" é\n","type":"invalid_request_error","param":null,"code":"model_not_allowed"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Model,
            r#"{"error":{"code":403,"message":"m \"q\" é\n","status":"PERMISSION_DENIED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::NotFound,
            r#"{"type":"error","error":{"type":"not_found_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::NotFound,
            r#"{"error":{"message":"m \"q\" é\n","type":"invalid_request_error","param":null,"code":"not_found"}}"#,
        ),
        (
            Api::Gemini,
            Reason::NotFound,
            r#"{"error":{"code":404,"message":"m \"q\" é\n","status":"NOT_FOUND"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::BadRequest,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::BadRequest,
            r#"{"error":{"message":"m \"q\" é\n","type":"invalid_request_error","param":null,"code":"invalid_request"}}"#,
        ),
        (
            Api::Gemini,
            Reason::BadRequest,
            r#"{"error":{"code":400,"message":"m \"q\" é\n","status":"INVALID_ARGUMENT"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::TooLarge,
            r#"{"type":"error","error":{"type":"request_too_large","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::TooLarge,
            r#"{"error":{"message":"m \"q\" é\n","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#,
        ),
        (
            Api::Gemini,
            Reason::TooLarge,
            r#"{"error":{"code":413,"message":"m \"q\" é\n","status":"INVALID_ARGUMENT"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::Tokens,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Tokens,
            r#"{"error":{"message":"m \"q\" é\n","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Tokens,
            r#"{"error":{"code":429,"message":"m \"q\" é\n","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::Requests,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Requests,
            r#"{"error":{"message":"m \"q\" é\n","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Requests,
            r#"{"error":{"code":429,"message":"m \"q\" é\n","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::Cost,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Cost,
            r#"{"error":{"message":"m \"q\" é\n","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Cost,
            r#"{"error":{"code":429,"message":"m \"q\" é\n","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::Concurrency,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Concurrency,
            r#"{"error":{"message":"m \"q\" é\n","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Concurrency,
            r#"{"error":{"code":429,"message":"m \"q\" é\n","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::AccountsCooling,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::AccountsCooling,
            r#"{"error":{"message":"m \"q\" é\n","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            Api::Gemini,
            Reason::AccountsCooling,
            r#"{"error":{"code":429,"message":"m \"q\" é\n","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::Global,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::Global,
            r#"{"error":{"message":"m \"q\" é\n","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
        ),
        (
            Api::Gemini,
            Reason::Global,
            r#"{"error":{"code":429,"message":"m \"q\" é\n","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::GlobalUnavailable,
            r#"{"type":"error","error":{"type":"api_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::GlobalUnavailable,
            r#"{"error":{"message":"m \"q\" é\n","type":"server_error","param":null,"code":"service_unavailable"}}"#,
        ),
        (
            Api::Gemini,
            Reason::GlobalUnavailable,
            r#"{"error":{"code":503,"message":"m \"q\" é\n","status":"UNAVAILABLE"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::NoAccount,
            r#"{"type":"error","error":{"type":"api_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::NoAccount,
            r#"{"error":{"message":"m \"q\" é\n","type":"server_error","param":null,"code":"service_unavailable"}}"#,
        ),
        (
            Api::Gemini,
            Reason::NoAccount,
            r#"{"error":{"code":503,"message":"m \"q\" é\n","status":"UNAVAILABLE"}}"#,
        ),
        (
            Api::Anthropic,
            Reason::UnknownConsumer,
            r#"{"type":"error","error":{"type":"permission_error","message":"m \"q\" é\n"}}"#,
        ),
        (
            Api::OpenAi,
            Reason::UnknownConsumer,
            r#"{"error":{"message":"m \"q\" é\n","type":"invalid_request_error","param":null,"code":"permission_denied"}}"#,
        ),
        (
            Api::Gemini,
            Reason::UnknownConsumer,
            r#"{"error":{"code":403,"message":"m \"q\" é\n","status":"PERMISSION_DENIED"}}"#,
        ),
    ];
    assert_eq!(cases.len(), 14 * Api::ALL.len());
    for &(api, reason, want) in cases {
        assert_eq!(
            error_body(api, reason, "m \"q\" é\n"),
            want,
            "{api:?} {reason:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn header_and_error_names_never_panic(s in "\\PC{0,80}", n in 0u64..1000) {
        let _ = is_rate_limit_header(&s);
        let _ = rate_header(&s);
        let _ = path_api(&s);
        let _ = default_passthrough_api(&s);
        let _ = covers_api_path(&s);
        let _ = route(Method::Post, &s, Api::OpenAi);
        let names = ErrorNames { kind: Some(&s), code: Some(&s), code_num: n, status: Some(&s) };
        let _ = classify_stream_error(&names);
    }
}
