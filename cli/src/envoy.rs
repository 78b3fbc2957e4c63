//! Finding tollgate in an Envoy bootstrap or an Istio `EnvoyFilter` (YAML or JSON): every wasm
//! http filter, downstream (`http_filters` of a connection manager) or upstream (a cluster's
//! `typed_extension_protocol_options…http_filters`, a router's `upstream_http_filters`), with
//! what Envoy would hand its VM: the `configuration` string and the environment.

use std::fmt;

use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Event, Yaml, YamlLoader};

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// `TypedStruct` wrappers (older Istio examples) carry the Wasm message under `value`.
const TYPED_STRUCT_TYPES: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// What a file holds, as far as the CLI's commands care.
#[derive(Debug)]
pub enum Document {
    /// An Envoy bootstrap (`static_resources`) or an Istio `EnvoyFilter`, parsed.
    Envoy(Vec<Yaml>),
    /// Anything else: taken as the filter's own JSON configuration.
    Tollgate,
}

/// Tells an Envoy/Istio document from a tollgate configuration. A tollgate configuration is
/// JSON; an Envoy bootstrap may be JSON or YAML. Only a document that has the shape of an
/// Envoy bootstrap or an Istio resource counts as one, so a broken tollgate JSON still gets
/// the filter's own message about it.
pub fn classify(text: &str) -> Result<Document, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let looks_json = trimmed.starts_with('{');
    // The filter's message for an empty configuration, or for JSON that is not valid (a
    // broken Envoy JSON too: it is JSON's error that helps).
    if trimmed.is_empty()
        || (looks_json && serde_json::from_str::<serde_json::Value>(trimmed).is_err())
    {
        return Ok(Document::Tollgate);
    }
    // Aliases are copied where they are used: a few lines of anchors can stand for billions of
    // nodes. The size is counted on the parser's events before anything is built.
    // JSON that YAML refuses (a repeated key, which serde_json's map lets pass): the filter's
    // parser says why, in its own words.
    let size = match expanded_size(trimmed) {
        Ok(size) => size,
        Err(_) if looks_json => return Ok(Document::Tollgate),
        Err(e) => return Err(format!("not JSON and not valid YAML: {e}")),
    };
    if size > MAX_NODES {
        return Err(format!(
            "its aliases expand to more than {MAX_NODES} YAML nodes: not an Envoy configuration"
        ));
    }
    let docs = match YamlLoader::load_from_str(trimmed) {
        Ok(docs) => docs,
        // Not YAML: for something that starts like JSON, the filter's parser says why.
        Err(_) if looks_json => return Ok(Document::Tollgate),
        Err(e) => return Err(format!("not JSON and not valid YAML: {e}")),
    };
    let envoy_like = docs.iter().any(|d| {
        !d["static_resources"].is_badvalue()
            || !d["spec"]["configPatches"].is_badvalue()
            || d["kind"].as_str().is_some()
    });
    if envoy_like {
        Ok(Document::Envoy(docs))
    } else if looks_json {
        Ok(Document::Tollgate)
    } else {
        Err(
            "neither a tollgate configuration (JSON) nor an Envoy bootstrap or Istio \
             EnvoyFilter (YAML)"
                .to_string(),
        )
    }
}

/// The most YAML nodes a document may stand for, aliases expanded (Envoy bootstraps have
/// thousands).
const MAX_NODES: u64 = 1_000_000;

/// Counts the nodes of a YAML stream as if every alias were copied in place.
#[derive(Default)]
struct SizeCounter {
    /// The open collections: (anchor id, nodes so far).
    open: Vec<(usize, u64)>,
    /// Each anchor's size (anchor ids count up from 1).
    anchors: Vec<u64>,
    total: u64,
}

impl SizeCounter {
    fn add(&mut self, n: u64) {
        match self.open.last_mut() {
            Some((_, count)) => *count = count.saturating_add(n),
            None => self.total = self.total.saturating_add(n),
        }
    }

    fn anchor(&mut self, id: usize, n: u64) {
        if id == 0 {
            return;
        }
        if self.anchors.len() <= id {
            self.anchors.resize(id + 1, 0);
        }
        if let Some(slot) = self.anchors.get_mut(id) {
            *slot = n;
        }
    }
}

impl MarkedEventReceiver for SizeCounter {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::Scalar(_, _, id, _) => {
                self.anchor(id, 1);
                self.add(1);
            }
            Event::SequenceStart(id, _) | Event::MappingStart(id, _) => self.open.push((id, 1)),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((id, n)) = self.open.pop() {
                    self.anchor(id, n);
                    self.add(n);
                }
            }
            Event::Alias(id) => {
                let n = self.anchors.get(id).copied().unwrap_or(1);
                self.add(n);
            }
            _ => {}
        }
    }
}

fn expanded_size(text: &str) -> Result<u64, yaml_rust2::ScanError> {
    let mut counter = SizeCounter::default();
    Parser::new_from_str(text).load(&mut counter, true)?;
    Ok(counter.total)
}

/// Where a wasm filter sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In a connection manager's `http_filters`.
    Downstream,
    /// In a cluster's upstream `http_filters` or a router's `upstream_http_filters`: Envoy runs
    /// it once per retry attempt.
    Upstream,
}

/// One tollgate wasm filter found in a document.
#[derive(Debug, Clone)]
pub struct Filter {
    /// How messages name it: `filter "tollgate" (listener "tollgate", http_filters[0])`.
    pub label: String,
    pub placement: Placement,
    pub vm_id: String,
    /// `allow_on_headers_stop_iteration`, which tollgate needs (SPEC "Configuration").
    pub stop_iteration: bool,
    /// The `configuration` string, or why there is none Envoy could hand the filter.
    pub configuration: Result<String, String>,
    /// `vm_config.environment_variables.host_env_keys`: read from Envoy's environment.
    pub host_env_keys: Vec<String>,
    /// `vm_config.environment_variables.key_values`: set inline.
    pub key_values: Vec<(String, String)>,
}

impl Filter {
    /// The VM's environment as Envoy builds it: inline `key_values`, then `host_env_keys` read
    /// from the process environment (`shell`). A variable in neither is not in the VM.
    pub fn lookup(&self, name: &str, shell: &dyn Fn(&str) -> Option<String>) -> EnvLookup {
        if let Some((_, v)) = self.key_values.iter().find(|(k, _)| k == name) {
            return EnvLookup::Inline(v.clone());
        }
        if self.host_env_keys.iter().any(|k| k == name) {
            return match shell(name) {
                Some(v) => EnvLookup::Shell(v),
                None => EnvLookup::NotInShell,
            };
        }
        EnvLookup::NotPassed
    }
}

/// Where a filter's environment variable comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvLookup {
    Inline(String),
    Shell(String),
    /// Listed in `host_env_keys` but not set in this shell.
    NotInShell,
    /// Not in `host_env_keys` nor `key_values`: Envoy's VM never sees it.
    NotPassed,
}

/// A wasm filter that is not tollgate's (another plugin), skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub label: String,
}

/// Every wasm http filter in `docs`: tollgate's, and the others (by label).
pub fn filters(docs: &[Yaml]) -> (Vec<Filter>, Vec<Skipped>) {
    let mut w = Walker::default();
    for (i, doc) in docs.iter().enumerate() {
        let mut ctx = Ctx::default();
        if docs.len() > 1 {
            ctx.doc = Some(i);
        }
        w.walk(doc, &mut ctx, &[]);
    }
    (w.found, w.skipped)
}

/// The names of the clusters a bootstrap defines (`static_resources.clusters[].name`), or
/// `None` when it defines none here (an Istio resource, clusters from xDS).
pub fn static_clusters(docs: &[Yaml]) -> Option<Vec<String>> {
    let names: Vec<String> = docs
        .iter()
        .filter_map(|d| d["static_resources"]["clusters"].as_vec())
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    (!names.is_empty()).then_some(names)
}

/// What the walk knows about the enclosing objects.
#[derive(Debug, Clone, Default)]
struct Ctx {
    doc: Option<usize>,
    /// `listener "x"`, `cluster "x"`, `configPatches[1]`.
    owner: Option<String>,
    upstream: bool,
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.doc {
            parts.push(format!("document {}", d + 1));
        }
        if let Some(o) = &self.owner {
            parts.push(o.clone());
        }
        f.write_str(&parts.join(", "))
    }
}

#[derive(Default)]
struct Walker {
    found: Vec<Filter>,
    skipped: Vec<Skipped>,
}

/// One step of the path from the document to a node.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Walker {
    fn walk(&mut self, node: &Yaml, ctx: &mut Ctx, path: &[Seg<'_>]) {
        match node {
            Yaml::Hash(h) => {
                if let Some(wasm) = wasm_message(node) {
                    self.add(wasm, ctx, path);
                    return;
                }
                for (k, v) in h {
                    let Some(key) = k.as_str() else { continue };
                    let mut inner = ctx.clone();
                    if key == "typed_extension_protocol_options" || key == "upstream_http_filters" {
                        inner.upstream = true;
                    }
                    let mut p = path.to_vec();
                    p.push(Seg::Key(key));
                    self.walk(v, &mut inner, &p);
                }
            }
            Yaml::Array(items) => {
                let parent = match path.last() {
                    Some(Seg::Key(k)) => *k,
                    _ => "",
                };
                for (i, item) in items.iter().enumerate() {
                    let mut inner = ctx.clone();
                    match parent {
                        "listeners" | "clusters" => {
                            let kind = parent.trim_end_matches('s');
                            inner.owner = Some(match item["name"].as_str() {
                                Some(n) => format!("{kind} {n:?}"),
                                None => format!("{parent}[{i}]"),
                            });
                        }
                        "configPatches" => inner.owner = Some(format!("configPatches[{i}]")),
                        _ => {}
                    }
                    let mut p = path.to_vec();
                    p.push(Seg::Index(i));
                    self.walk(item, &mut inner, &p);
                }
            }
            _ => {}
        }
    }

    /// `wasm` is the `envoy.extensions.filters.http.wasm.v3.Wasm` message found at `path`.
    fn add(&mut self, wasm: &Yaml, ctx: &Ctx, path: &[Seg<'_>]) {
        let config = &wasm["config"];
        let vm = &config["vm_config"];
        let name = config["name"]
            .as_str()
            .or_else(|| config["root_id"].as_str())
            .unwrap_or("");
        let mut label = format!("filter {name:?}");
        let mut where_ = ctx.to_string();
        if let Some(slot) = filter_slot(path) {
            if !where_.is_empty() {
                where_.push_str(", ");
            }
            if ctx.upstream && slot.starts_with("http_filters") {
                where_.push_str("upstream ");
            }
            where_.push_str(&slot);
        }
        if !where_.is_empty() {
            label.push_str(&format!(" ({where_})"));
        }
        if !is_tollgate(config) {
            self.skipped.push(Skipped { label });
            return;
        }
        let env = &vm["environment_variables"];
        let host_env_keys = env["host_env_keys"]
            .as_vec()
            .map(|v| {
                v.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let key_values = env["key_values"]
            .as_hash()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        self.found.push(Filter {
            label,
            placement: if ctx.upstream {
                Placement::Upstream
            } else {
                Placement::Downstream
            },
            vm_id: vm["vm_id"].as_str().unwrap_or("").to_string(),
            stop_iteration: config["allow_on_headers_stop_iteration"].as_bool() == Some(true),
            configuration: configuration(&config["configuration"]),
            host_env_keys,
            key_values,
        });
    }
}

/// The `Wasm` message of a `typed_config` node, if it is one (directly or in a `TypedStruct`).
fn wasm_message(node: &Yaml) -> Option<&Yaml> {
    let ty = node["@type"].as_str()?;
    if ty == WASM_TYPE {
        return Some(node);
    }
    (TYPED_STRUCT_TYPES.contains(&ty) && node["type_url"].as_str() == Some(WASM_TYPE))
        .then(|| &node["value"])
}

/// `http_filters[2]` or `upstream_http_filters[0]`: the list slot holding the filter whose
/// `typed_config` is at the end of `path` (in an Istio patch, the filter is the patch's value).
fn filter_slot(path: &[Seg<'_>]) -> Option<String> {
    let n = path.len();
    match (path.get(n.checked_sub(3)?), path.get(n.checked_sub(2)?)) {
        (Some(Seg::Key(list)), Some(Seg::Index(i))) if list.ends_with("http_filters") => {
            Some(format!("{list}[{i}]"))
        }
        _ => None,
    }
}

/// Whether a wasm `config` (PluginConfig) runs tollgate: its name, root id, VM id or module
/// file says so. Another plugin's filter is none of this CLI's business.
fn is_tollgate(config: &Yaml) -> bool {
    let vm = &config["vm_config"];
    let code = &vm["code"];
    let named = |y: &Yaml| y.as_str().is_some_and(|s| s.contains("tollgate"));
    named(&config["name"])
        || named(&config["root_id"])
        || named(&vm["vm_id"])
        || named(&code["local"]["filename"])
        || named(&code["remote"]["http_uri"]["uri"])
}

/// The JSON Envoy hands the filter: a `StringValue`'s `value`. Envoy passes another type's
/// serialized protobuf bytes, which tollgate cannot read.
fn configuration(node: &Yaml) -> Result<String, String> {
    if node.is_badvalue() || node.is_null() {
        return Err(
            "the wasm filter has no configuration: tollgate needs its JSON in \
                    configuration (\"@type\": type.googleapis.com/google.protobuf.StringValue)"
                .to_string(),
        );
    }
    match node["@type"].as_str() {
        Some(STRING_VALUE_TYPE) => match &node["value"] {
            Yaml::String(s) => Ok(s.clone()),
            other => Err(format!(
                "configuration.value: expected the JSON configuration as a string, got {}",
                kind(other)
            )),
        },
        Some(other) => Err(format!(
            "configuration: \"@type\" is {other}; tollgate reads its JSON from a \
             {STRING_VALUE_TYPE}"
        )),
        None => Err(format!(
            "configuration: no \"@type\"; tollgate reads its JSON from a {STRING_VALUE_TYPE}"
        )),
    }
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(y: &Yaml) -> &'static str {
    match y {
        Yaml::Real(_) | Yaml::Integer(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Boolean(_) => "a boolean",
        Yaml::Array(_) => "a list",
        Yaml::Hash(_) => "a mapping",
        Yaml::Null => "null",
        Yaml::Alias(_) | Yaml::BadValue => "nothing",
    }
}

#[cfg(test)]
mod tests;
