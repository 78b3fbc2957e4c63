//! Who is calling: the client credential a request presents, and the consumer it maps to.
//! Keys are compared by SHA-256 digest in constant time; a key never leaves this module
//! except as that digest.

use crate::config::{Config, KeyMatcher};

/// The consumer a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `consumers[i]`, by key or by a trusted name (`consumer_header`, `consumer_claim`).
    Consumer(usize),
    /// No known key (or a trusted name no consumer has), and `anonymous` is configured.
    Anonymous,
}

/// Who a request is, or why it is nobody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The caller; the flag says whether a tollgate key identified it (that key must then
    /// not go upstream).
    Known(Caller, bool),
    /// No known key and no trusted name, and no `anonymous`: 401.
    Unauthenticated,
    /// A trusted name that matches no configured consumer, and no `anonymous`: 403. Such a
    /// name never gets limits of its own (a fresh name per request would escape them).
    UnknownName,
}

/// The client credential from the headers a provider SDK sends it in: `x-api-key`
/// (Anthropic), `Authorization: Bearer` (OpenAI), `x-goog-api-key` or `?key=` (Gemini).
pub fn presented_key<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
    goog_api_key: Option<&'a str>,
    path: &'a str,
) -> Option<&'a str> {
    credentials(x_api_key, authorization, goog_api_key, path)
        .into_iter()
        .find_map(|(_, k)| k)
}

/// Where a client credential can be: a header, or Gemini's `?key=` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Header(&'static str),
    Query,
}

/// Every credential a request presents, in the order `presented_key` prefers them (empty
/// values are none).
fn credentials<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
    goog_api_key: Option<&'a str>,
    path: &'a str,
) -> [(Place, Option<&'a str>); 4] {
    let bearer = authorization.and_then(|v| {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    [
        (Place::Header("x-api-key"), x_api_key.map(str::trim)),
        (Place::Header("authorization"), bearer),
        (Place::Header("x-goog-api-key"), goog_api_key.map(str::trim)),
        (Place::Query, query_key(path)),
    ]
    .map(|(place, k)| (place, k.filter(|k| !k.is_empty())))
}

/// Where a request that no tollgate key identified (a consumer header, `anonymous`) still
/// carries one: `presented_key` reads only the first credential, so a tollgate key sent
/// beside the caller's own would otherwise go upstream with it (SPEC: a tollgate key never
/// reaches the upstream). A lone credential is the one `identify` already compared.
pub fn tollgate_key_places(
    cfg: &Config,
    x_api_key: Option<&str>,
    authorization: Option<&str>,
    goog_api_key: Option<&str>,
    path: &str,
) -> Vec<Place> {
    let found = credentials(x_api_key, authorization, goog_api_key, path);
    if found.iter().filter(|(_, k)| k.is_some()).count() < 2 {
        return Vec::new();
    }
    found
        .into_iter()
        .filter_map(|(place, k)| k.filter(|k| consumer_of(cfg, k).is_some()).map(|_| place))
        .collect()
}

/// The consumer whose key `key` is. Every key is compared, whatever matched, so timing says
/// nothing about which.
fn consumer_of(cfg: &Config, key: &str) -> Option<usize> {
    let digest = KeyMatcher::digest(key);
    let mut found = None;
    for (i, consumer) in cfg.consumers.iter().enumerate() {
        for km in &consumer.keys {
            if km.matches(&digest) && found.is_none() {
                found = Some(i);
            }
        }
    }
    found
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
    strip_query(path, |name| name == "key")
}

/// `path` without the query parameters whose name `drop` picks, or `None` when none is there.
fn strip_query(path: &str, drop: impl Fn(&str) -> bool) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    let dropped = |pair: &str| drop(pair.split('=').next().unwrap_or_default());
    if !query.split('&').any(dropped) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !dropped(p)).collect();
    Some(if kept.iter().all(|p| p.is_empty()) {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// Query parameters that carry or re-target a Google credential (`key`, OAuth tokens, the
/// billed project, the quota user) or mask the response's fields (so its usage could be
/// left out): removed, whatever their percent-encoding, whenever a pooled key is used.
const POOLED_QUERY_DROPS: &[&str] = &[
    "key",
    "access_token",
    "oauth_token",
    "userProject",
    "quotaUser",
    "fields",
    "$fields",
];

/// `path` without the query parameters a pooled key must not travel with (see
/// `POOLED_QUERY_DROPS`; names compared after percent-decoding, so `%6Bey` is `key`), or
/// `None` when there is none.
pub fn strip_pooled_query(path: &str) -> Option<String> {
    strip_query(path, |name| {
        let decoded = crate::api::percent_decode(name.as_bytes());
        let name = decoded.as_deref().unwrap_or(name.as_bytes());
        POOLED_QUERY_DROPS.iter().any(|d| d.as_bytes() == name)
    })
}

/// Maps a request to its consumer. `trusted_name` is the name a trusted source gave
/// (`consumer_header` set by a filter before this one, or the `consumer_claim` of a JWT that
/// `jwt_authn` verified).
#[inline(never)]
pub fn identify(cfg: &Config, key: Option<&str>, trusted_name: Option<&str>) -> Identity {
    if let Some(i) = key.and_then(|k| consumer_of(cfg, k)) {
        return Identity::Known(Caller::Consumer(i), true);
    }
    let anonymous = cfg.anonymous.is_some();
    if cfg.consumer_header.is_some() || cfg.consumer_claim.is_some() {
        // Compared exactly: a signed claim is the identity provider's word as it stands (a
        // display name " search-team" is not search-team); header values come trimmed.
        if let Some(name) = trusted_name.filter(|n| !n.is_empty()) {
            return match cfg.consumers.iter().position(|c| c.name == name) {
                Some(i) => Identity::Known(Caller::Consumer(i), false),
                None if anonymous => Identity::Known(Caller::Anonymous, false),
                None => Identity::UnknownName,
            };
        }
    }
    if anonymous {
        Identity::Known(Caller::Anonymous, false)
    } else {
        Identity::Unauthenticated
    }
}

/// Whether `s` is a configured consumer or admin key.
pub fn is_configured_key(cfg: &Config, s: &str) -> bool {
    let admin = cfg.admin.as_ref().map_or(&[][..], |a| a.keys.as_slice());
    consumer_of(cfg, s).is_some() || is_admin_key(admin, s)
}

/// Whether `key` is one of the admin keys.
pub fn is_admin_key(keys: &[KeyMatcher], key: &str) -> bool {
    let digest = KeyMatcher::digest(key);
    keys.iter().fold(false, |acc, km| km.matches(&digest) | acc)
}

#[cfg(test)]
mod tests;
