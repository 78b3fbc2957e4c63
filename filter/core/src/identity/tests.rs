#![cfg(test)]
use super::*;

#[test]
fn reads_the_key_from_each_sdk_header() {
    assert_eq!(presented_key(Some("a"), None, None, "/"), Some("a"));
    assert_eq!(presented_key(None, Some("Bearer b"), None, "/"), Some("b"));
    assert_eq!(
        presented_key(None, Some("bearer  b "), None, "/"),
        Some("b")
    );
    assert_eq!(presented_key(None, Some("Basic zzz"), None, "/"), None);
    assert_eq!(presented_key(None, None, Some("g"), "/"), Some("g"));
    assert_eq!(
        presented_key(None, None, None, "/v1beta/x?alt=sse&key=q"),
        Some("q")
    );
    assert_eq!(presented_key(Some(""), None, None, "/"), None);
}

fn config(json: &str) -> Config {
    crate::config::parse_with_env(json.as_bytes(), &|_| None).unwrap()
}

#[test]
fn a_trusted_name_no_consumer_has_never_gets_limits_of_its_own() {
    let named = r#"{"consumer_header": "x-consumer",
            "consumers": [{"name": "search-team"}], "limits": [{"tokens": 10, "per": "minute"}]"#;
    let cfg = config(&format!("{named}}}"));
    assert_eq!(
        identify(&cfg, None, Some("search-team")),
        Identity::Known(Caller::Consumer(0), false)
    );
    for invented in ["search-team-2", "x", "anonymous"] {
        assert_eq!(identify(&cfg, None, Some(invented)), Identity::UnknownName);
    }
    assert_eq!(identify(&cfg, None, None), Identity::Unauthenticated);
    assert_eq!(identify(&cfg, None, Some("  ")), Identity::UnknownName);
    assert_eq!(
        identify(&cfg, None, Some(" search-team")),
        Identity::UnknownName
    );
    let cfg = config(&format!(r#"{named}, "anonymous": {{}}}}"#));
    assert_eq!(
        identify(&cfg, None, Some("invented")),
        Identity::Known(Caller::Anonymous, false)
    );
}

#[test]
fn a_name_counts_only_when_the_config_trusts_a_source_of_names() {
    let cfg = config(r#"{"consumers": [{"name": "a", "keys": ["k"]}]}"#);
    assert_eq!(identify(&cfg, None, Some("a")), Identity::Unauthenticated);
    assert_eq!(
        identify(&cfg, Some("k"), None),
        Identity::Known(Caller::Consumer(0), true)
    );
    let cfg =
        config(r#"{"consumer_claim": {"metadata": "jwt_payload"}, "consumers": [{"name": "a"}]}"#);
    assert_eq!(
        identify(&cfg, None, Some("a")),
        Identity::Known(Caller::Consumer(0), false)
    );
    assert_eq!(identify(&cfg, None, Some("b")), Identity::UnknownName);
}

#[test]
fn finds_a_tollgate_key_sent_beside_the_callers_own() {
    let cfg = config(r#"{"consumers": [{"name": "a", "keys": ["tg-a"]}], "anonymous": {}}"#);
    let (key, auth, goog) = (
        Place::Header("x-api-key"),
        Place::Header("authorization"),
        Place::Header("x-goog-api-key"),
    );
    // x-api-key, authorization, x-goog-api-key; path; where a tollgate key is.
    type Case<'a> = ([Option<&'a str>; 3], &'a str, &'a [Place]);
    let cases: [Case; 8] = [
        ([Some("own"), Some("Bearer tg-a"), None], "/", &[auth]),
        ([Some("own"), Some("bearer  tg-a "), None], "/", &[auth]),
        ([None, Some("Bearer own"), Some("tg-a")], "/", &[goog]),
        (
            [None, None, Some("own")],
            "/v1beta/m?key=tg-a",
            &[Place::Query],
        ),
        (
            [Some("own"), Some("Bearer tg-a"), Some("tg-a")],
            "/",
            &[auth, goog],
        ),
        ([Some("tg-a"), None, Some("own")], "/", &[key]),
        // The caller's own keys only, or a lone credential (identify compared it).
        (
            [Some("own"), Some("Bearer own-2"), Some("own-3")],
            "/?key=own-4",
            &[],
        ),
        ([Some("tg-a"), Some("Basic tg-a"), Some("")], "/", &[]),
    ];
    for ([x, a, g], path, want) in cases {
        let found = tollgate_key_places(&cfg, x, a, g, path);
        assert_eq!(found, want, "{x:?} {a:?} {g:?} {path}");
    }
}

#[test]
fn a_pooled_key_never_travels_with_credential_or_field_mask_parameters() {
    for (path, want) in [
        ("/v1beta/models/g:generateContent", None),
        ("/v1beta/models/g:generateContent?alt=sse", None),
        (
            "/v1beta/models/g:generateContent?%6Bey=AIzaBOGUS&userProject=p",
            Some("/v1beta/models/g:generateContent"),
        ),
        (
            "/v1beta/models/g:streamGenerateContent?alt=sse&key=k&fields=candidates",
            Some("/v1beta/models/g:streamGenerateContent?alt=sse"),
        ),
        ("/x?access_token=t&quotaUser=u&%24fields=a", Some("/x")),
        ("/x?keys=1&key", Some("/x?keys=1")),
    ] {
        assert_eq!(strip_pooled_query(path).as_deref(), want, "{path}");
    }
}

#[test]
fn strips_the_key_query_parameter_only() {
    assert_eq!(strip_query_key("/a?key=1"), Some("/a".into()));
    assert_eq!(
        strip_query_key("/a?alt=sse&key=1"),
        Some("/a?alt=sse".into())
    );
    assert_eq!(strip_query_key("/a?alt=sse"), None);
    assert_eq!(strip_query_key("/a"), None);
}
