//! Who is calling: the client credential a request presents, and the consumer it maps to.
//! Keys are compared by SHA-256 digest in constant time; a key never leaves this module
//! except as that digest.

use crate::config::{Config, KeyMatcher};

/// The consumer a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `consumers[i]`, by key or by a `consumer_header` naming it.
    Consumer(usize),
    /// A `consumer_header` name that matches no configured consumer: default `limits`.
    Unlisted(String),
    /// No known key, and `anonymous` is configured.
    Anonymous,
}

/// The client credential from the headers a provider SDK sends it in: `x-api-key`
/// (Anthropic), `Authorization: Bearer` (OpenAI), `x-goog-api-key` or `?key=` (Gemini).
pub fn presented_key<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
    goog_api_key: Option<&'a str>,
    path: &'a str,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    [
        x_api_key.map(str::trim),
        bearer,
        goog_api_key.map(str::trim),
        query_key(path),
    ]
    .into_iter()
    .flatten()
    .find(|k| !k.is_empty())
}

/// The value of the `key` query parameter (Gemini's `?key=`), if any.
pub fn query_key(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|v| !v.is_empty())
}

/// `path` without its `key` query parameter, so a client's Gemini key never goes upstream.
pub fn strip_query_key(path: &str) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    if !query.split('&').any(|p| p.starts_with("key=")) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("key="))
        .collect();
    Some(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// Maps a request to its consumer, or `None` for 401; the flag says whether a tollgate key
/// identified it (that key must then not go upstream).
#[inline(never)]
pub fn identify(
    cfg: &Config,
    key: Option<&str>,
    header_name: Option<&str>,
) -> Option<(Caller, bool)> {
    if let Some(key) = key {
        let digest = KeyMatcher::digest(key);
        // Every key is compared, whatever matched, so timing says nothing about which.
        let mut found = None;
        for (i, consumer) in cfg.consumers.iter().enumerate() {
            for km in &consumer.keys {
                if km.matches(&digest) && found.is_none() {
                    found = Some(i);
                }
            }
        }
        if let Some(i) = found {
            return Some((Caller::Consumer(i), true));
        }
    }
    if cfg.consumer_header.is_some() {
        if let Some(name) = header_name.map(str::trim).filter(|n| !n.is_empty()) {
            let caller = match cfg.consumers.iter().position(|c| c.name == name) {
                Some(i) => Caller::Consumer(i),
                None => Caller::Unlisted(name.to_string()),
            };
            return Some((caller, false));
        }
    }
    cfg.anonymous.as_ref().map(|_| (Caller::Anonymous, false))
}

/// Whether `key` is one of the admin keys.
pub fn is_admin_key(keys: &[KeyMatcher], key: &str) -> bool {
    let digest = KeyMatcher::digest(key);
    keys.iter().fold(false, |acc, km| km.matches(&digest) | acc)
}

#[cfg(test)]
mod tests {
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
}
