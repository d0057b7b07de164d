//! The YAML reader: text → a tree of [`Node`]s, each knowing its key path
//! and line:column, built under a budget, and a serde `Deserializer` over that
//! tree whose errors carry the path and position of the node that failed.
//!
//! Why not decode the text with serde_norway directly (#15):
//! - aliases: serde_norway replays an aliased node each time it is
//!   referenced, so 1 MB of scalar aliased a few thousand times took 6.2 GB;
//!   here every alias is charged the size of the node it repeats *before* it
//!   is expanded, and the load stops once [`MAX_NODES`] nodes or
//!   [`MAX_SCALAR_BYTES`] bytes of scalars would be exceeded;
//! - tags (`!Foo`) were silently accepted; here each is a problem naming its key;
//! - serde stops at the first error; over this tree the loader can drop the
//!   failing node and decode again, so every problem is found in one run.
//!
//! Scalars resolve as serde_norway resolves them (YAML 1.2 core schema): a
//! string field takes any scalar as written, `null`/`~`/empty is nothing,
//! `true`/`false` are booleans, numbers are numbers.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Nodes a configuration may hold once its aliases are expanded.
pub const MAX_NODES: usize = 100_000;
/// Bytes of scalars a configuration may hold once its aliases are expanded.
pub const MAX_SCALAR_BYTES: usize = 4 << 20;
/// How deep mappings and sequences may nest.
pub const MAX_DEPTH: usize = 64;

/// One node of the document, with where it came from.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// Key path in the file as written: `processes[1].match.comm[0]`.
    pub path: String,
    /// Line and column (1-based) of its key, or of itself in a sequence.
    pub at: (usize, usize),
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys are scalars; each entry is (key node, value node).
    Map(Vec<(Node, Node)>),
}

/// A problem found while reading the text: its key path, position, message.
#[derive(Debug, Clone)]
pub(super) struct ReadProblem {
    pub path: String,
    pub at: Option<(usize, usize)>,
    pub message: String,
}

/// What reading the text gave: the tree (`None` for an empty document) and
/// the problems that did not stop the reading (tags). `Err`: a problem that
/// did (syntax, budget, depth, several documents).
pub(super) struct Read {
    pub root: Option<Node>,
    pub problems: Vec<ReadProblem>,
}

enum Frame {
    Seq {
        node: Node,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        node: Node,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, Cost)>,
    spent: Cost,
    problems: Vec<ReadProblem>,
    root: Option<Node>,
}

/// Nodes and scalar bytes of a subtree, and its height.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    bytes: usize,
    height: usize,
}

fn at(mark: Marker) -> (usize, usize) {
    (mark.line(), mark.col() + 1)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn cost(node: &Node) -> Cost {
    let mut c = Cost {
        nodes: 1,
        bytes: 0,
        height: 1,
    };
    let mut add = |ci: Cost| {
        c.nodes += ci.nodes;
        c.bytes += ci.bytes;
        c.height = c.height.max(ci.height + 1);
    };
    match &node.kind {
        Kind::Scalar { value, .. } => c.bytes = value.len(),
        Kind::Seq(items) => items.iter().for_each(|i| add(cost(i))),
        Kind::Map(entries) => entries.iter().for_each(|(k, v)| {
            add(cost(k));
            add(cost(v));
        }),
    }
    c
}

/// The same subtree under another path and position (an alias's copy).
fn rebase(node: &mut Node, path: String, pos: (usize, usize)) {
    node.path = path;
    node.at = pos;
    match &mut node.kind {
        Kind::Scalar { .. } => {}
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let p = format!("{}[{i}]", node.path);
                rebase(item, p, pos);
            }
        }
        Kind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let p = match &k.kind {
                    Kind::Scalar { value, .. } => join(&node.path, value),
                    _ => join(&node.path, "?"),
                };
                k.path = p.clone();
                k.at = pos;
                rebase(v, p, pos);
            }
        }
    }
}

fn fatal(path: &str, pos: (usize, usize), message: String) -> ReadProblem {
    ReadProblem {
        path: path.to_owned(),
        at: Some(pos),
        message,
    }
}

impl Builder {
    /// The path and position a node starting at `mark` takes, and whether it is a key.
    fn place(&self, mark: Marker) -> (String, (usize, usize), bool) {
        match self.stack.last() {
            None => (String::new(), (1, 1), false),
            Some(Frame::Seq { node, items, .. }) => {
                (format!("{}[{}]", node.path, items.len()), at(mark), false)
            }
            Some(Frame::Map { node, key, .. }) => match key {
                Some(k) => (k.path.clone(), k.at, false),
                None => (node.path.clone(), at(mark), true),
            },
        }
    }

    fn charge(&mut self, c: Cost, path: &str, pos: (usize, usize)) -> Result<(), ReadProblem> {
        self.spent.nodes += c.nodes;
        self.spent.bytes += c.bytes;
        if self.spent.nodes > MAX_NODES || self.spent.bytes > MAX_SCALAR_BYTES {
            return Err(fatal(
                path,
                pos,
                format!(
                    "the configuration expands to more than {MAX_NODES} nodes or {} MiB of values (are aliases repeating a large node?)",
                    MAX_SCALAR_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }

    fn tag(&mut self, tag: Option<yaml_rust2::parser::Tag>, path: &str, pos: (usize, usize)) {
        if let Some(tag) = tag {
            self.problems.push(ReadProblem {
                path: path.to_owned(),
                at: Some(pos),
                message: format!(
                    "YAML tags are not supported ({}): remove it, or quote the value if it is text",
                    super::error::excerpt(&format!("{}{}", tag.handle, tag.suffix))
                ),
            });
        }
    }

    /// A finished node: into its parent, or the root.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), ReadProblem> {
        if anchor > 0 {
            let c = cost(&node);
            self.anchors.insert(anchor, (node.clone(), c));
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                node: map,
                entries,
                key,
                ..
            }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => {
                    let Kind::Scalar { value, .. } = &node.kind else {
                        return Err(fatal(
                            &map.path,
                            node.at,
                            "a key must be a plain value, not a mapping or a sequence".to_owned(),
                        ));
                    };
                    let path = join(&map.path, value);
                    *key = Some(Node { path, ..node });
                }
            },
        }
        Ok(())
    }

    fn event(&mut self, event: Event, mark: Marker) -> Result<(), ReadProblem> {
        let is_seq = matches!(event, Event::SequenceStart(..));
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                let (path, pos, is_key) = self.place(mark);
                let path = if is_key { join(&path, &value) } else { path };
                self.tag(tag, &path, pos);
                self.charge(
                    Cost {
                        nodes: 1,
                        bytes: value.len(),
                        height: 1,
                    },
                    &path,
                    pos,
                )?;
                let node = Node {
                    path,
                    at: pos,
                    kind: Kind::Scalar {
                        value,
                        plain: style == TScalarStyle::Plain,
                    },
                };
                self.finish(node, anchor)
            }
            Event::Alias(id) => {
                let (path, pos, is_key) = self.place(mark);
                let Some(c) = self.anchors.get(&id).map(|(_, c)| *c) else {
                    return Err(fatal(&path, pos, "refers to an unknown anchor".to_owned()));
                };
                if is_key {
                    return Err(fatal(&path, pos, "an alias cannot be a key".to_owned()));
                }
                // Aliases of aliases could nest without bound (and recursion
                // over the tree with them): the copy must fit the depth too.
                if self.stack.len() + c.height > MAX_DEPTH {
                    return Err(fatal(
                        &path,
                        pos,
                        format!("nests deeper than {MAX_DEPTH} levels"),
                    ));
                }
                // Charged before the copy is made.
                self.charge(c, &path, pos)?;
                let mut node = self.anchors[&id].0.clone();
                rebase(&mut node, path, pos);
                self.finish(node, 0)
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                let (path, pos, is_key) = self.place(mark);
                if is_key {
                    return Err(fatal(
                        &path,
                        at(mark),
                        "a key must be a plain value, not a mapping or a sequence".to_owned(),
                    ));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(fatal(
                        &path,
                        pos,
                        format!("nests deeper than {MAX_DEPTH} levels"),
                    ));
                }
                self.tag(tag, &path, pos);
                self.charge(
                    Cost {
                        nodes: 1,
                        bytes: 0,
                        height: 1,
                    },
                    &path,
                    pos,
                )?;
                let node = Node {
                    path,
                    at: pos,
                    kind: Kind::Seq(Vec::new()),
                };
                self.stack.push(if is_seq {
                    Frame::Seq {
                        node,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        node,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    }
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        mut node,
                        anchor,
                        items,
                    }) => {
                        node.kind = Kind::Seq(items);
                        (node, anchor)
                    }
                    Some(Frame::Map {
                        mut node,
                        anchor,
                        entries,
                        ..
                    }) => {
                        node.kind = Kind::Map(entries);
                        (node, anchor)
                    }
                    None => return Ok(()),
                };
                self.finish(node, anchor)
            }
            _ => Ok(()),
        }
    }
}

/// Reads the text into a tree, under the budget.
pub(super) fn read(text: &str) -> Result<Read, ReadProblem> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        spent: Cost::default(),
        problems: Vec::new(),
        root: None,
    };
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| ReadProblem {
            path: String::new(),
            at: Some((e.marker().line(), e.marker().col() + 1)),
            message: format!("not valid YAML: {}", e.info()),
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(fatal(
                        "",
                        at(mark),
                        "holds more than one YAML document".to_owned(),
                    ));
                }
            }
            other => builder.event(other, mark)?,
        }
    }
    Ok(Read {
        root: builder.root,
        problems: builder.problems,
    })
}

impl Node {
    /// Removes the node at `path` (as written); whether it was found.
    pub fn remove(&mut self, path: &str) -> bool {
        match &mut self.kind {
            Kind::Scalar { .. } => false,
            Kind::Seq(items) => {
                if let Some(i) = items.iter().position(|n| n.path == path) {
                    items.remove(i);
                    return true;
                }
                items.iter_mut().any(|n| n.remove(path))
            }
            Kind::Map(entries) => {
                if let Some(i) = entries.iter().position(|(k, _)| k.path == path) {
                    entries.remove(i);
                    return true;
                }
                entries.iter_mut().any(|(_, v)| v.remove(path))
            }
        }
    }

    /// A path of the decoded config (sequence indices counted after nodes
    /// were removed) turned into the path as written in the file.
    pub fn original_path(&self, path: &str) -> String {
        let mut node = self;
        let mut rest = path;
        loop {
            let next = match (&node.kind, rest.as_bytes().first()) {
                (Kind::Seq(items), Some(b'[')) => {
                    let Some(end) = rest.find(']') else { break };
                    let Ok(i) = rest[1..end].parse::<usize>() else {
                        break;
                    };
                    let Some(item) = items.get(i) else { break };
                    rest = &rest[end + 1..];
                    item
                }
                (Kind::Map(entries), Some(_)) => {
                    let r = rest.strip_prefix('.').unwrap_or(rest);
                    let end = r.find(['.', '[']).unwrap_or(r.len());
                    let key = &r[..end];
                    let found = entries.iter().find(
                        |(k, _)| matches!(&k.kind, Kind::Scalar { value, .. } if value == key),
                    );
                    let Some((_, v)) = found else { break };
                    rest = &r[end..];
                    v
                }
                _ => break,
            };
            node = next;
        }
        format!("{}{rest}", node.path)
    }
}

/// A decoding error with the path and position of the node where it arose.
#[derive(Debug)]
pub(super) struct DeError {
    pub message: String,
    pub path: Option<String>,
    pub at: Option<(usize, usize)>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            path: None,
            at: None,
        }
    }
}

/// Deserializes one node; errors that arise within it are stamped with it
/// (the innermost stamp wins, as in serde_path_to_error).
pub(super) struct NodeDe<'a>(pub &'a Node);

impl NodeDe<'_> {
    fn stamp(&self) -> impl FnOnce(DeError) -> DeError + '_ {
        move |mut e| {
            if e.path.is_none() {
                e.path = Some(self.0.path.clone());
                e.at = Some(self.0.at);
            }
            e
        }
    }

    fn null(&self) -> bool {
        matches!(&self.0.kind, Kind::Scalar { value, plain: true }
            if value.is_empty() || matches!(value.as_str(), "~" | "null" | "Null" | "NULL"))
    }
}

fn parse_int(v: &str) -> Option<Result<u64, i64>> {
    let (neg, digits) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    if digits.starts_with(['+', '-']) {
        return None;
    }
    let (radix, digits) = if let Some(d) = digits.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = digits.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = digits.strip_prefix("0b") {
        (2, d)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = u64::from_str_radix(digits, radix).ok()?;
    if neg {
        0i64.checked_sub_unsigned(n).map(Err)
    } else {
        Some(Ok(n))
    }
}

fn parse_float(v: &str) -> Option<f64> {
    match v {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ if v.chars().any(|c| c.is_ascii_digit())
            && v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
        {
            v.parse().ok()
        }
        _ => None,
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let stamp = self.stamp();
        let out = match &self.0.kind {
            Kind::Scalar { value, plain: true } => {
                if self.null() {
                    visitor.visit_unit()
                } else if let Some(b) = match value.as_str() {
                    "true" | "True" | "TRUE" => Some(true),
                    "false" | "False" | "FALSE" => Some(false),
                    _ => None,
                } {
                    visitor.visit_bool(b)
                } else if let Some(n) = parse_int(value) {
                    match n {
                        Ok(u) => visitor.visit_u64(u),
                        Err(i) => visitor.visit_i64(i),
                    }
                } else if let Some(f) = parse_float(value) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(value)
                }
            }
            Kind::Scalar { value, .. } => visitor.visit_str(value),
            Kind::Seq(items) => visitor.visit_seq(SeqDe(items.iter())),
            Kind::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
            }),
        };
        out.map_err(stamp)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Scalar { value, .. } => visitor.visit_str(value).map_err(self.stamp()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.null() {
            visitor.visit_none().map_err(self.stamp())
        } else {
            let stamp = self.stamp();
            visitor.visit_some(NodeDe(self.0)).map_err(stamp)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.null() {
            // `web:` with nothing under it: an empty section, as serde_norway reads it.
            let empty: &[(Node, Node)] = &[];
            return visitor
                .visit_map(MapDe {
                    entries: empty.iter(),
                    value: None,
                })
                .map_err(self.stamp());
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.null() {
            let empty: &[Node] = &[];
            return visitor.visit_seq(SeqDe(empty.iter())).map_err(self.stamp());
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let stamp = self.stamp();
        visitor.visit_newtype_struct(NodeDe(self.0)).map_err(stamp)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Scalar { value, .. } => {
                let variant: de::value::StrDeserializer<'_, DeError> =
                    value.as_str().into_deserializer();
                visitor.visit_enum(variant).map_err(self.stamp())
            }
            // `{variant: value}`: an enum with data, as serde_norway reads it.
            Kind::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor
                    .visit_enum(EnumDe { key, value })
                    .map_err(self.stamp())
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit_struct tuple tuple_struct
    }
}

/// An enum written as a one-entry mapping: the key names the variant.
struct EnumDe<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = DeError;
    type Variant = NodeDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'a>), DeError> {
        let variant = seed.deserialize(NodeDe(self.key))?;
        Ok((variant, NodeDe(self.value)))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

struct SeqDe<'a>(std::slice::Iter<'a, Node>);

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.0.next() {
            Some(node) => seed.deserialize(NodeDe(node)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(NodeDe(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(node) => seed.deserialize(NodeDe(node)),
            None => Err(de::Error::custom("a value without a key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(node: &Node, out: &mut Vec<(String, (usize, usize))>) {
        out.push((node.path.clone(), node.at));
        match &node.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => items.iter().for_each(|i| paths(i, out)),
            Kind::Map(entries) => entries.iter().for_each(|(_, v)| paths(v, out)),
        }
    }

    #[test]
    fn nodes_know_their_path_and_line() {
        let r = read("a:\n  b: [x, y]\nc:\n  - d: 1\n").expect("reads");
        let mut out = Vec::new();
        paths(r.root.as_ref().expect("root"), &mut out);
        let want: Vec<(String, (usize, usize))> = [
            ("", (1, 1)),
            ("a", (1, 1)),
            ("a.b", (2, 3)),
            ("a.b[0]", (2, 7)),
            ("a.b[1]", (2, 10)),
            ("c", (3, 1)),
            ("c[0]", (4, 6)),
            ("c[0].d", (4, 5)),
        ]
        .into_iter()
        .map(|(p, a)| (p.to_owned(), a))
        .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn aliases_are_charged_before_they_expand() {
        // Each level doubles: 2^40 nodes if expanded.
        let mut text = String::from("a0: &a0 [x, x]\n");
        for i in 1..40 {
            text.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
        }
        let e = read(&text).err().expect("over budget");
        assert!(e.message.contains("expands to more than"), "{e:?}");
        // A few aliases of a small node are fine, and land at their own path.
        let r = read("x: &v [a, b]\ny: *v\n").expect("reads");
        let mut out = Vec::new();
        paths(r.root.as_ref().expect("root"), &mut out);
        assert!(out.contains(&("y[1]".to_owned(), (2, 1))), "{out:?}");
    }

    #[test]
    fn tags_are_problems_naming_the_key() {
        let r = read("a:\n  b: !Foo 1\n").expect("reads");
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].path, "a.b");
        assert_eq!(r.problems[0].at, Some((2, 3)));
    }

    #[test]
    fn depth_and_documents_are_bounded() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(
            read(&deep)
                .err()
                .expect("too deep")
                .message
                .contains("deeper")
        );
        assert!(read("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn original_paths_skip_removed_items() {
        let mut root = read("s:\n  - a: 1\n  - a: 2\n  - a: 3\n")
            .expect("reads")
            .root
            .expect("root");
        assert!(root.remove("s[1]"));
        assert_eq!(root.original_path("s[1].a"), "s[2].a");
        assert_eq!(root.original_path("s[0].b"), "s[0].b");
    }

    #[test]
    fn enums_as_names_or_one_entry_mappings() {
        use serde::Deserialize;
        #[derive(Deserialize, Debug, PartialEq)]
        #[serde(rename_all = "lowercase", deny_unknown_fields)]
        enum E {
            Plain,
            Http { url: String },
            Tcp(String),
        }
        let r = read("- plain\n- http: {url: u}\n- tcp: a:1\n- http: {bogus: 1}\n").expect("reads");
        let root = r.root.expect("root");
        let Kind::Seq(items) = &root.kind else {
            panic!("a sequence")
        };
        let e: Vec<Result<E, DeError>> = items.iter().map(|n| E::deserialize(NodeDe(n))).collect();
        assert_eq!(e[0].as_ref().expect("plain"), &E::Plain);
        assert_eq!(e[1].as_ref().expect("http"), &E::Http { url: "u".into() });
        assert_eq!(e[2].as_ref().expect("tcp"), &E::Tcp("a:1".into()));
        let bad = e[3].as_ref().expect_err("unknown field");
        assert_eq!(bad.path.as_deref(), Some("[3].http.bogus"), "{bad:?}");
    }

    #[test]
    fn scalars_resolve_like_serde_norway() {
        use serde::Deserialize;
        #[derive(Deserialize, Debug, PartialEq)]
        struct T {
            s: String,
            n: usize,
            b: bool,
            o: Option<String>,
            v: Vec<String>,
        }
        let r = read("s: 123\nn: 0x10\nb: True\no: ~\nv: [true, '1', x]\n").expect("reads");
        let t = T::deserialize(NodeDe(r.root.as_ref().expect("root"))).expect("decodes");
        assert_eq!(
            t,
            T {
                s: "123".into(),
                n: 16,
                b: true,
                o: None,
                v: vec!["true".into(), "1".into(), "x".into()]
            }
        );
        let r = read("s: x\nn: '5'\nb: true\no: y\nv: []\n").expect("reads");
        let e = T::deserialize(NodeDe(r.root.as_ref().expect("root"))).expect_err("quoted number");
        assert_eq!(e.path.as_deref(), Some("n"));
        assert_eq!(e.at, Some((2, 1)));
    }
}
