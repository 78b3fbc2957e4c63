//! The configuration document as written (SPEC "Configuration"), derived with serde: one
//! field per JSON field, in the order the "unknown field, expected one of …" reasons list them.
//! Types are checked here (through `de`); everything else, defaults included, is the
//! validation pass (`validate`).
//!
//! A required field is an `Option` too: the validation says `missing required field` in the
//! order it checks the fields.

use super::de::Ordered;
use super::{Duration, EstimateCfg, FailureMode, Glob, KeyMatcher, Secret, Stage, Strategy};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub stage: Option<Stage>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    pub consumer_header: Option<String>,
    pub anonymous: Option<RawAnonymous>,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    #[serde(default)]
    pub accounts: Vec<RawAccount>,
    pub selection: Option<RawSelection>,
    pub global: Option<RawGlobal>,
    pub estimate: Option<EstimateCfg>,
    pub pricing: Option<Ordered<RawPrice>>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub passthrough_paths: Vec<RawPassthrough>,
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub strip_request_headers: Vec<String>,
    pub consumer_claim: Option<RawConsumerClaim>,
    pub lease_ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsumer {
    pub name: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyMatcher>,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    pub models: Option<Vec<Glob>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnonymous {
    #[serde(default)]
    pub limits: Vec<RawLimit>,
}

/// A limit: exactly one amount field, then `per` and `window` (not with `concurrent`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub requests: Option<u64>,
    pub cost_usd: Option<f64>,
    pub concurrent: Option<u64>,
    pub per: Option<RawPer>,
    pub window: Option<RawWindow>,
}

/// `limits::Per` as written.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawPer {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

/// `limits::WindowKind` as written.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawWindow {
    Sliding,
    Fixed,
}

/// `api::Api` as written in `provider` and in a `passthrough_paths` entry's `api`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawApi {
    Anthropic,
    #[serde(rename = "openai")]
    OpenAi,
    Gemini,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub name: Option<String>,
    pub provider: Option<RawApi>,
    pub key: Option<Secret>,
    pub key_env: Option<String>,
    pub headers: Option<Ordered<String>>,
    pub route: Option<String>,
    pub weight: Option<u64>,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    pub disable_for: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelection {
    pub strategy: Option<Strategy>,
    pub affinity: Option<RawAffinity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAffinity {
    pub header: Option<String>,
    pub conversation: Option<bool>,
    pub ttl: Option<Duration>,
    pub max_sessions: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub cluster: Option<String>,
    pub domain: Option<String>,
    pub timeout: Option<Duration>,
    pub failure_mode: Option<FailureMode>,
}

/// USD per million tokens; unset cache prices fall back to the input price.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cache_write: Option<f64>,
    pub cache_read: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub path: Option<String>,
    pub keys: Option<Vec<KeyMatcher>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsumerClaim {
    pub metadata: Option<String>,
    pub claim: Option<String>,
}

/// A `passthrough_paths` entry: a prefix, or `{"prefix": "...", "api": "..."}`.
pub(super) enum RawPassthrough {
    Prefix(String),
    Entry(RawPassthroughEntry),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassthroughEntry {
    pub prefix: Option<String>,
    pub api: Option<RawApi>,
}

impl<'de> Deserialize<'de> for RawPassthrough {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PassthroughVisitor;

        impl<'de> Visitor<'de> for PassthroughVisitor {
            type Value = RawPassthrough;

            /// An entry of another type is refused as a prefix would be.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPassthrough, E> {
                Ok(RawPassthrough::Prefix(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPassthrough, A::Error> {
                RawPassthroughEntry::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawPassthrough::Entry)
            }
        }

        d.deserialize_any(PassthroughVisitor)
    }
}
