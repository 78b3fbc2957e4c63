//! The path-tracking layer between the JSON text and the serde-derived document structs.
//!
//! The text is read once into a [`Node`] tree (so a syntax error anywhere is reported before
//! any field, object fields keep their order and repeated fields stay visible). [`NodeDe`] then
//! feeds the derived structs from the tree, and words every error as the configuration always
//! has: the field path, then the reason (`limits[0].per: expected one of second, …, got a
//! number`; serde's own messages name neither the path nor the JSON type).
//!
//! Two rules of the configuration live here rather than in each struct: in an object of fields,
//! `null` counts as absent; and every field name is checked (unknown, repeated) before any value
//! is read.

use super::{quote, ConfigError};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Whole numbers written as floats (`1e6`) are accepted up to 2^53, where f64 stays exact.
const MAX_WHOLE_F64: f64 = 9_007_199_254_740_992.0;

const NEGATIVE_OR_FRACTION: &str = "expected a non-negative whole number, got ";

/// A JSON document tree that keeps object fields in order and keeps repeated fields, so the
/// validation can report duplicates and `pricing` keeps its precedence order (serde_json's
/// `Value` does neither without its `preserve_order` feature).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    /// Non-negative integers.
    Uint(u64),
    /// Negative integers.
    Int(i64),
    Float(f64),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    /// What the node is, for "expected …, got …" reasons (never its content).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Uint(_) | Node::Int(_) | Node::Float(_) => "a number",
            Node::String(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        de::Deserialize::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(u64::try_from(v).map_or(Node::Int(v), Node::Uint))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Node>()? {
            entries.push(entry);
        }
        Ok(Node::Object(entries))
    }
}

impl<'de> de::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Field paths
// ---------------------------------------------------------------------------------------------

/// `parent.name`, or `parent["name"]` when the name is not a plain identifier.
pub(super) fn field_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain {
        key_path(parent, name)
    } else if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// The path of a free-form map key (`pricing["claude-*"]`).
pub(super) fn key_path(parent: &str, key: &str) -> String {
    format!("{parent}[{}]", quote(key))
}

pub(super) fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Where a value sits, built on the stack as the tree is walked and written out only for an
/// error.
#[derive(Clone, Copy)]
pub(super) enum Path<'a> {
    Root,
    /// A struct field.
    Field(&'a Path<'a>, &'a str),
    /// A key of a free-form map (`headers`, `pricing`).
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match *self {
            Path::Root => String::new(),
            Path::Field(parent, name) => field_path(&parent.render(), name),
            Path::Key(parent, key) => key_path(&parent.render(), key),
            Path::Index(parent, i) => index_path(&parent.render(), i),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The error
// ---------------------------------------------------------------------------------------------

/// A reason, and the path once the innermost value that knows it has been left.
#[derive(Debug)]
pub(super) struct Error {
    path: Option<String>,
    /// The struct field a derived visitor named (missing or repeated field), appended to the
    /// struct's path.
    field: Option<&'static str>,
    reason: String,
}

impl Error {
    fn new(reason: String) -> Error {
        Error {
            path: None,
            field: None,
            reason,
        }
    }

    /// Gives a pathless error the path of the value it came from.
    fn at(mut self, path: &Path<'_>) -> Error {
        if self.path.is_none() {
            self.path = Some(match self.field.take() {
                Some(field) => Path::Field(path, field).render(),
                None => path.render(),
            });
        }
        self
    }

    pub(super) fn into_config_error(self) -> ConfigError {
        ConfigError {
            path: self.path.unwrap_or_default(),
            reason: self.reason,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Error {}

/// The JSON type of what a visitor refused, in the words of [`Node::kind`].
fn unexpected_kind(unexp: de::Unexpected<'_>) -> &'static str {
    use de::Unexpected as U;
    match unexp {
        U::Bool(_) => "a boolean",
        U::Unsigned(_) | U::Signed(_) | U::Float(_) => "a number",
        U::Char(_) | U::Str(_) => "a string",
        U::Unit | U::Option => "null",
        U::Seq => "an array",
        U::Map => "an object",
        _ => "a value",
    }
}

fn one_of(expected: &[&str], got: &str) -> String {
    format!("expected one of {}, got {got}", expected.join(", "))
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::new(format!("expected {exp}, got {}", unexpected_kind(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::invalid_type(unexp, exp)
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error::new(one_of(expected, &quote(variant)))
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        Error::new(format!(
            "unknown field, expected one of {}",
            expected.join(", ")
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        Error {
            field: Some(field),
            ..Error::new("missing required field".to_string())
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Error {
            field: Some(field),
            ..Error::new("duplicate field".to_string())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The deserializer
// ---------------------------------------------------------------------------------------------

/// Reads `T` (a derived document struct) from the tree, naming the path of any error.
pub(super) fn from_node<'de, T: de::Deserialize<'de>>(node: &Node) -> Result<T, ConfigError> {
    T::deserialize(NodeDe {
        node,
        path: &Path::Root,
    })
    .map_err(Error::into_config_error)
}

/// One value of the tree and where it sits.
struct NodeDe<'a> {
    node: &'a Node,
    path: &'a Path<'a>,
}

impl NodeDe<'_> {
    /// `expected <what>, got <the JSON type>`, at this value.
    fn expected(&self, what: &str) -> Error {
        self.refuse(format!("expected {what}, got {}", self.node.kind()))
    }

    fn refuse(&self, reason: String) -> Error {
        Error::new(reason).at(self.path)
    }

    /// An object's fields as a map; `fields`: `null` counts as absent and paths are `a.b`.
    fn entries<'de, V: Visitor<'de>>(
        &self,
        entries: &[(String, Node)],
        fields: bool,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_map(Entries {
            iter: entries.iter(),
            path: self.path,
            value: None,
            fields,
        })
        .map_err(|e| e.at(self.path))
    }
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = Error;

    /// For values of more than one shape (a `passthrough_paths` entry).
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let r = match self.node {
            Node::Null => v.visit_unit(),
            Node::Bool(b) => v.visit_bool(*b),
            Node::Uint(n) => v.visit_u64(*n),
            Node::Int(n) => v.visit_i64(*n),
            Node::Float(n) => v.visit_f64(*n),
            Node::String(s) => v.visit_str(s),
            Node::Array(items) => v.visit_seq(Items {
                iter: items.iter().enumerate(),
                path: self.path,
            }),
            Node::Object(entries) => return self.entries(entries, true, v),
        };
        r.map_err(|e| e.at(self.path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::Bool(b) => v.visit_bool(*b),
            _ => Err(self.expected("true or false")),
        }
    }

    /// A whole number: integers, and floats without a fraction up to 2^53 (`1e6`).
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = match *self.node {
            Node::Uint(n) => n,
            Node::Float(f) if f.fract() == 0.0 && (0.0..=MAX_WHOLE_F64).contains(&f) => f as u64,
            Node::Int(n) => return Err(self.refuse(format!("{NEGATIVE_OR_FRACTION}{n}"))),
            Node::Float(f) => return Err(self.refuse(format!("{NEGATIVE_OR_FRACTION}{f}"))),
            _ => return Err(self.expected("a whole number")),
        };
        v.visit_u64(n)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = match *self.node {
            Node::Uint(n) => n as f64,
            Node::Int(n) => n as f64,
            Node::Float(n) => n,
            _ => return Err(self.expected("a number")),
        };
        v.visit_f64(n)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::String(s) => v.visit_str(s),
            _ => Err(self.expected("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    /// `null` is `None`.
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::Array(items) => v
                .visit_seq(Items {
                    iter: items.iter().enumerate(),
                    path: self.path,
                })
                .map_err(|e| e.at(self.path)),
            _ => Err(self.expected("an array")),
        }
    }

    /// A free-form map (`headers`, `pricing`): every entry in order, repeated keys included.
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.node {
            Node::Object(entries) => self.entries(entries, false, v),
            _ => Err(self.expected("an object")),
        }
    }

    /// Every field name is checked against `fields` (unknown, repeated) before a value is read.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let Node::Object(entries) = self.node else {
            return Err(self.expected("an object"));
        };
        for (i, (name, _)) in entries.iter().enumerate() {
            let refuse = |reason: String| Err(Error::new(reason).at(&Path::Field(self.path, name)));
            if !fields.contains(&name.as_str()) {
                return refuse(format!(
                    "unknown field, expected one of {}",
                    fields.join(", ")
                ));
            }
            if entries.iter().take(i).any(|(earlier, _)| earlier == name) {
                return refuse("duplicate field".to_string());
            }
        }
        self.entries(entries, true, v)
    }

    /// One of the unit variants' names, e.g. `expected one of second, minute, …, got "fortnight"`.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let got = match self.node {
            Node::String(s) if variants.contains(&s.as_str()) => {
                return v
                    .visit_enum(de::value::StrDeserializer::<Error>::new(s))
                    .map_err(|e| e.at(self.path));
            }
            Node::String(s) => quote(s),
            other => other.kind().to_string(),
        };
        Err(Error::new(one_of(variants, &got)).at(self.path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 char bytes byte_buf unit unit_struct
        tuple tuple_struct identifier
    }
}

/// An array's items, each at `parent[i]`.
struct Items<'a> {
    iter: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'a Path<'a>,
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, node)) = self.iter.next() else {
            return Ok(None);
        };
        let path = Path::Index(self.path, i);
        seed.deserialize(NodeDe { node, path: &path })
            .map(Some)
            .map_err(|e| e.at(&path))
    }
}

/// An object's entries, as struct fields (`fields`: `parent.name`, `null` skipped) or as a
/// free-form map (`parent["key"]`, every entry).
struct Entries<'a> {
    iter: std::slice::Iter<'a, (String, Node)>,
    path: &'a Path<'a>,
    /// The entry whose key was just read.
    value: Option<&'a (String, Node)>,
    fields: bool,
}

impl<'a> Entries<'a> {
    fn child(&self, key: &'a str) -> Path<'a> {
        if self.fields {
            Path::Field(self.path, key)
        } else {
            Path::Key(self.path, key)
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let entry = loop {
            match self.iter.next() {
                None => return Ok(None),
                Some((_, Node::Null)) if self.fields => continue,
                Some(entry) => break entry,
            }
        };
        self.value = Some(entry);
        let key = entry.0.as_str();
        seed.deserialize(de::value::StrDeserializer::<Error>::new(key))
            .map(Some)
            .map_err(|e| e.at(&self.child(key)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, node)) = self.value.take() else {
            return Err(de::Error::custom("a value without its key"));
        };
        let path = self.child(key);
        seed.deserialize(NodeDe { node, path: &path })
            .map_err(|e| e.at(&path))
    }
}

/// An object's entries in document order, repeated keys kept (`headers`, `pricing`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ordered<T>(pub(super) Vec<(String, T)>);

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }

        d.deserialize_map(OrderedVisitor(std::marker::PhantomData))
    }
}
