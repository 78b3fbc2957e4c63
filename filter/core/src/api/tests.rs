#![cfg(test)]
use super::*;

fn metered(endpoint: Endpoint) -> Route {
    Route::Metered {
        endpoint,
        model: None,
    }
}

fn gemini(model: &str, stream: bool) -> Route {
    Route::Metered {
        endpoint: if stream {
            Endpoint::StreamGenerateContent
        } else {
            Endpoint::GenerateContent
        },
        model: Some(model.into()),
    }
}

fn route(method: &str, path: &str) -> Route {
    classify(
        method,
        path,
        Api::OpenAi,
        Some("/tollgate"),
        &[crate::config::Passthrough {
            prefix: "/v1/files".into(),
            api: Api::OpenAi,
        }],
    )
}

#[test]
fn classifies_every_served_endpoint() {
    let cases: &[(&str, &str, Route)] = &[
        ("POST", "/v1/messages", metered(Endpoint::Messages)),
        (
            "POST",
            "/v1/messages?beta=true",
            metered(Endpoint::Messages),
        ),
        (
            "POST",
            "/v1/chat/completions",
            metered(Endpoint::ChatCompletions),
        ),
        ("POST", "/v1/completions", metered(Endpoint::Completions)),
        ("POST", "/v1/embeddings", metered(Endpoint::Embeddings)),
        ("POST", "/v1/responses", metered(Endpoint::Responses)),
        (
            "POST",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            gemini("gemini-2.0-flash", false),
        ),
        (
            "POST",
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            gemini("gemini-2.0-flash", true),
        ),
        (
            "POST",
            "/v1/messages/count_tokens",
            Route::Identity(Api::Anthropic),
        ),
        ("GET", "/v1/models", Route::Identity(Api::OpenAi)),
        (
            "GET",
            "/v1/models/claude-3-5-haiku-20241022",
            Route::Identity(Api::OpenAi),
        ),
        (
            "POST",
            "/v1/chat/completions?x=1",
            metered(Endpoint::ChatCompletions),
        ),
        (
            "POST",
            "/v1/chat/completions?next=/a/../b//c;d%2e",
            metered(Endpoint::ChatCompletions),
        ),
        (
            "GET",
            "/v1beta/models/gemini-1.5-pro",
            Route::Identity(Api::Gemini),
        ),
        (
            "GET",
            "/v1/files/file-abc.jsonl/content",
            Route::Identity(Api::OpenAi),
        ),
        ("GET", "/v1/files/...", Route::Identity(Api::OpenAi)),
        ("GET", "/v1/files/", Route::Identity(Api::OpenAi)),
        (
            "GET",
            "/tollgate/accounts/a%20b",
            Route::Admin("/accounts/a b".into()),
        ),
        ("GET", "/v1beta/models", Route::Identity(Api::Gemini)),
        ("GET", "/v1/files/abc", Route::Identity(Api::OpenAi)),
        ("GET", "/tollgate/health", Route::Admin("/health".into())),
        ("GET", "/tollgate", Route::Admin("".into())),
        ("GET", "/tollgatex", Route::NotFound(Api::OpenAi)),
        ("GET", "/v1/messages", Route::NotFound(Api::Anthropic)),
        ("POST", "/v1/unknown", Route::NotFound(Api::OpenAi)),
        (
            "POST",
            "/v1beta/models/x:deleteEverything",
            Route::NotFound(Api::Gemini),
        ),
    ];
    for (m, p, want) in cases {
        assert_eq!(&route(m, p), want, "{m} {p}");
    }
}

#[test]
fn gemini_generate_verbs_under_v1_are_metered_like_v1beta() {
    // google-genai, Google's own SDK, calls `/v1/models/...` unless told `v1beta`.
    let cases: &[(&str, &str, Route)] = &[
        (
            "POST",
            "/v1/models/gemini-2.0-flash:generateContent",
            gemini("gemini-2.0-flash", false),
        ),
        (
            "POST",
            "/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            gemini("gemini-2.5-pro", true),
        ),
        (
            "POST",
            "/v1/models/gemini-2.5-pr%6F:generateContent",
            gemini("gemini-2.5-pro", false),
        ),
        (
            "POST",
            "/v1/models/gemini-2.0-flash:countTokens",
            Route::Identity(Api::Gemini),
        ),
        (
            "POST",
            "/v1/models/a:b:generateContent",
            Route::BadRequest {
                api: Api::Gemini,
                message: "the model name in the path has a character that model names never have",
            },
        ),
        // Not a Gemini verb: nothing to serve, and never metered as one.
        (
            "POST",
            "/v1/models/gpt-4o:deleteEverything",
            Route::NotFound(Api::OpenAi),
        ),
        ("POST", "/v1/models/gpt-4o", Route::NotFound(Api::OpenAi)),
        // A GET stays the model list of whichever API the client speaks.
        (
            "GET",
            "/v1/models/gemini-2.0-flash:generateContent",
            Route::Identity(Api::OpenAi),
        ),
    ];
    for (m, p, want) in cases {
        assert_eq!(&route(m, p), want, "{m} {p}");
    }
}

#[test]
fn refuses_paths_that_are_not_normal_before_anything_else() {
    let cases: &[(&str, &str, Api)] = &[
        // Dot segments: an upstream that normalises serves another endpoint with the
        // pooled key.
        ("GET", "/v1/models/../messages/batches", Api::OpenAi),
        ("GET", "/v1beta/models/../files", Api::Gemini),
        ("GET", "/v1/models/..", Api::OpenAi),
        ("POST", "/v1/./messages", Api::OpenAi),
        ("POST", "/v1/messages/.", Api::Anthropic),
        ("GET", "/v1/files/../../admin", Api::OpenAi),
        ("GET", "/tollgate/../v1/models", Api::OpenAi),
        // Empty segments and backslashes.
        ("POST", "//v1/messages", Api::OpenAi),
        ("POST", "/v1//messages", Api::OpenAi),
        ("POST", "/v1/messages//", Api::Anthropic),
        ("POST", "/v1\\messages", Api::OpenAi),
        ("GET", "/v1/models\\..\\files", Api::OpenAi),
        // Matrix parameters and fragments mean nothing to these APIs.
        ("POST", "/v1/messages;key=SECRET", Api::Anthropic),
        ("POST", "/v1/chat/completions;x", Api::OpenAi),
        ("GET", "/tollgate;key=SECRET", Api::OpenAi),
        ("POST", "/v1/messages#/../files", Api::Anthropic),
        // Percent-encoded '.', '/', '\\', ';' in any case, and twice encoded.
        ("GET", "/v1/models/%2e%2e/messages/batches", Api::OpenAi),
        ("GET", "/v1/models/%2E%2E/messages/batches", Api::OpenAi),
        ("GET", "/v1/models/.%2e/messages", Api::OpenAi),
        ("GET", "/v1/models%2f..%2fmessages", Api::OpenAi),
        ("GET", "/v1/models%2F..%2Fmessages", Api::OpenAi),
        ("GET", "/v1/models/x%5c..%5cfiles", Api::OpenAi),
        ("GET", "/v1/models/x%5C..%5Cfiles", Api::OpenAi),
        ("POST", "/v1/messages%3bkey=SECRET", Api::Anthropic),
        ("POST", "/v1/messages%3Bkey=SECRET", Api::Anthropic),
        ("GET", "/v1/models/%252e%252e/messages", Api::OpenAi),
        ("GET", "/v1/models%252fx", Api::OpenAi),
        (
            "POST",
            "/v1beta/models/gemini-2.0-flash%2F..%2Fgemini-2.5-pro:generateContent",
            Api::Gemini,
        ),
        ("GET", "/v1beta/models/gemini%2e..%2fx", Api::Gemini),
        // Malformed escapes, control characters, bytes that are not UTF-8.
        ("POST", "/v1/messages%zz", Api::Anthropic),
        ("POST", "/v1/messages%2", Api::Anthropic),
        ("POST", "/v1/messages%", Api::Anthropic),
        ("POST", "/v1/messages%00", Api::Anthropic),
        ("GET", "/v1/models/x%0A", Api::OpenAi),
        ("GET", "/v1/models/%FF", Api::OpenAi),
    ];
    for &(m, p, api) in cases {
        let got = route(m, p);
        let Route::BadRequest {
            api: got_api,
            message,
        } = got
        else {
            panic!("{m} {p}: {got:?}");
        };
        assert_eq!(got_api, api, "{m} {p}");
        assert!(!message.contains("SECRET"), "{message}");
    }
    // The API of the error body follows the path, then the client's headers.
    let hinted = classify("POST", "/v1//x", Api::Anthropic, None, &[]);
    assert!(matches!(
        hinted,
        Route::BadRequest {
            api: Api::Anthropic,
            ..
        }
    ));
    let gemini = classify("GET", "/v1beta//x", Api::Anthropic, None, &[]);
    assert!(matches!(
        gemini,
        Route::BadRequest {
            api: Api::Gemini,
            ..
        }
    ));
    let files = crate::config::Passthrough {
        prefix: "/v1/files".into(),
        api: Api::OpenAi,
    };
    let passthrough = classify("GET", "/v1/files/../x", Api::Anthropic, None, &[files]);
    assert!(matches!(
        passthrough,
        Route::BadRequest {
            api: Api::OpenAi,
            ..
        }
    ));
}

#[test]
fn says_what_is_wrong_with_a_path_without_quoting_it() {
    let cases: &[(&str, &str)] = &[
        ("/v1/models/../x", "path has a '.' or '..' segment"),
        ("/v1//x", "path has an empty segment ('//')"),
        ("/v1\\x", "path has a backslash"),
        ("/v1/messages;key=SECRET", "path has ';' parameters"),
        ("/v1/messages#x", "path has a fragment ('#')"),
        (
            "/v1/messages%3bkey=SECRET",
            "path has a percent-encoded '.', '/', '\\' or ';'",
        ),
        ("/v1/x%4", "path has a malformed percent-encoding"),
        ("/v1/x%01", "path has a control character"),
        ("/v1/x%C3", "path is not UTF-8 once percent-decoded"),
    ];
    for &(p, want) in cases {
        assert_eq!(
            route("POST", p),
            Route::BadRequest {
                api: provider::path_api(p).unwrap_or(Api::OpenAi),
                message: want
            },
            "{p}"
        );
    }
}

#[test]
fn decodes_the_gemini_model_in_the_path_before_anyone_matches_it() {
    let metered = gemini;
    let cases: &[(&str, Route)] = &[
        // Pricing and allow-lists see the name the upstream serves.
        (
            "/v1beta/models/gemini-2.5-pr%6F:generateContent",
            metered("gemini-2.5-pro", false),
        ),
        (
            "/v1beta/models/gemini-2.5-pr%6f:streamGenerateContent?alt=sse",
            metered("gemini-2.5-pro", true),
        ),
        (
            "/v1beta/models/%67emini-1.5-flash:generateContent?key=k%2F",
            metered("gemini-1.5-flash", false),
        ),
        (
            "/v1beta/models/caf%C3%A9:generateContent",
            metered("caf\u{e9}", false),
        ),
        // An encoded ':' is a ':' to an upstream that decodes before it routes, and so
        // to tollgate: the request is metered, never passed through unmetered.
        (
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent",
            metered("gemini-2.0-flash", false),
        ),
        (
            "/v1beta/models/gemini-2.0-flash%3astreamGenerateContent",
            metered("gemini-2.0-flash", true),
        ),
        (
            "/v1beta/models/gemini-2.0-flash:generat%65Content",
            metered("gemini-2.0-flash", false),
        ),
        (
            "/v1beta/models/gemini-2.0-flash:countTokens",
            Route::Identity(Api::Gemini),
        ),
    ];
    for (p, want) in cases {
        assert_eq!(&route("POST", p), want, "{p}");
    }
    let refused: &[(&str, &str)] = &[
        (
            "/v1beta/models/a/b:generateContent",
            "the model name in the path has a '/'",
        ),
        (
            "/v1beta/models/:generateContent",
            "the model name in the path is empty",
        ),
        (
            "/v1beta/models/gemini-2.5-pr%FF:generateContent",
            "path is not UTF-8 once percent-decoded",
        ),
        // Which ':' is the verb's would be the upstream's guess.
        (
            "/v1beta/models/a:b:generateContent",
            "the model name in the path has a character that model names never have",
        ),
        (
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent:countTokens",
            "the model name in the path has a character that model names never have",
        ),
        (
            "/v1beta/models/gemini-2.0-flash%20:generateContent",
            "the model name in the path has a character that model names never have",
        ),
        (
            "/v1beta/models/gemini-2.0-flash%3Fx:generateContent",
            "the model name in the path has a character that model names never have",
        ),
        (
            "/v1beta/models/gemini-2.0-flash%2525:generateContent",
            "the model name in the path has a character that model names never have",
        ),
        (
            "/v1beta/models/a/b:countTokens",
            "the model name in the path has a '/'",
        ),
    ];
    for &(p, want) in refused {
        assert_eq!(
            route("POST", p),
            Route::BadRequest {
                api: Api::Gemini,
                message: want
            },
            "{p}"
        );
    }
    let long = format!("/v1beta/models/{}:generateContent", "g".repeat(257));
    assert_eq!(
        route("POST", &long),
        Route::BadRequest {
            api: Api::Gemini,
            message: "the model name in the path is too long"
        }
    );
}

#[test]
fn classifies_decoded_paths_as_the_upstream_will_route_them() {
    // An encoded letter must not turn a metered endpoint into a passthrough or a 404.
    let cases: &[(&str, &str, Route)] = &[
        ("POST", "/v1/m%65ssages", metered(Endpoint::Messages)),
        (
            "POST",
            "/v1/chat/c%6Fmpletions?x=%2e%2e",
            metered(Endpoint::ChatCompletions),
        ),
        ("GET", "/v1/fil%65s/abc", Route::Identity(Api::OpenAi)),
        ("GET", "/tollg%61te/usage", Route::Admin("/usage".into())),
    ];
    for (m, p, want) in cases {
        assert_eq!(&route(m, p), want, "{m} {p}");
    }
    // A broad passthrough keeps other Gemini verbs, never a refused or metered one.
    let v1beta = [crate::config::Passthrough {
        prefix: "/v1beta/".into(),
        api: Api::Gemini,
    }];
    let gemini = |p: &str| classify("POST", p, Api::OpenAi, None, &v1beta);
    assert_eq!(
        gemini("/v1beta/models/text-embedding-004:embedContent"),
        Route::Identity(Api::Gemini)
    );
    assert!(matches!(
        gemini("/v1beta/models/a/b:generateContent"),
        Route::BadRequest { .. }
    ));
    assert!(matches!(
        gemini("/v1beta/models/gemini-2.0-flash:generat%65Content"),
        Route::Metered { .. }
    ));
}

#[test]
fn display_path_drops_the_query_fragment_and_parameters() {
    let cases = [
        ("/v1/x?key=SECRET", "/v1/x"),
        ("/v1/x;key=SECRET?a=b", "/v1/x"),
        ("/v1/x#frag", "/v1/x"),
        ("/v1/x", "/v1/x"),
        ("", ""),
    ];
    for (p, want) in cases {
        assert_eq!(display_path(p), want, "{p}");
    }
}

#[test]
fn writes_errors_in_each_apis_format() {
    let a: serde_json::Value =
        serde_json::from_str(&error_body(Api::Anthropic, Reason::Auth, "bad \"key\"")).unwrap();
    assert_eq!(a["type"], "error");
    assert_eq!(a["error"]["type"], "authentication_error");
    assert_eq!(a["error"]["message"], "bad \"key\"");
    let o: serde_json::Value =
        serde_json::from_str(&error_body(Api::OpenAi, Reason::Tokens, "slow down")).unwrap();
    assert_eq!(o["error"]["code"], "rate_limit_exceeded");
    let g: serde_json::Value =
        serde_json::from_str(&error_body(Api::Gemini, Reason::NotFound, "nope")).unwrap();
    assert_eq!(g["error"]["code"], 404);
    assert_eq!(g["error"]["status"], "NOT_FOUND");
}

#[test]
fn guesses_the_api_from_client_headers() {
    assert_eq!(api_hint(true, false, false), Api::Anthropic);
    assert_eq!(api_hint(false, true, false), Api::Anthropic);
    assert_eq!(api_hint(false, false, true), Api::Gemini);
    assert_eq!(api_hint(false, false, false), Api::OpenAi);
}
