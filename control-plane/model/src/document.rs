//! Documents: Kubernetes-style `apiVersion` / `kind` / `metadata` / `spec`, parsed from YAML or
//! JSON and validated before a [`Document`] exists.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{self, ModelError, ModelErrors, Report};
use super::spec::{
    AuthorizationPolicySpec, HttpRouteSpec, RateLimitPolicySpec, ServiceSpec, SidecarSpec,
    TlsPolicySpec,
};
use super::{API_VERSION, DEFAULT_NAMESPACE, names, validate};
use crate::text as syntax;

/// The kinds of mesh documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    HttpRoute,
    AuthorizationPolicy,
    RateLimitPolicy,
    TlsPolicy,
    Sidecar,
}

// === impl Kind ===

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::HttpRoute,
        Kind::AuthorizationPolicy,
        Kind::RateLimitPolicy,
        Kind::TlsPolicy,
        Kind::Sidecar,
    ];

    /// The `kind:` string, as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::HttpRoute => "HTTPRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::TlsPolicy => "TlsPolicy",
            Kind::Sidecar => "Sidecar",
        }
    }

    /// The short name, as kubectl has them (`svc`), for the command line and the API's paths.
    pub fn short_name(self) -> Option<&'static str> {
        match self {
            Kind::Service => Some("svc"),
            Kind::HttpRoute => Some("hr"),
            Kind::AuthorizationPolicy => Some("ap"),
            Kind::RateLimitPolicy => Some("rlp"),
            Kind::TlsPolicy => Some("tlsp"),
            Kind::Sidecar => None,
        }
    }

    fn known() -> String {
        Kind::ALL.map(Kind::as_str).join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// Case-sensitive, as Kubernetes is; a wrong case gets a hint.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(k) = Kind::ALL.into_iter().find(|k| k.as_str() == s) {
            return Ok(k);
        }
        match Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
        {
            Some(k) => Err(format!(
                "unknown kind {s:?} (kinds are case-sensitive: did you mean {:?}?)",
                k.as_str()
            )),
            None => Err(format!(
                "unknown kind {s:?}; known kinds: {}",
                Kind::known()
            )),
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What identifies a document: (kind, namespace, name). Displays as `HTTPRoute shop/reviews`,
/// the prefix of every error about the document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for DocumentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// `metadata`, validated: `name` and `namespace` are DNS-1123 labels, labels are Kubernetes
/// labels. `namespace` is always set (default `"default"`), so the stored form is explicit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Opaque to the mesh (tools keep notes here, as in Kubernetes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// `metadata` as written: everything optional, so that a missing name is reported as
/// `metadata.name: is required` together with the other problems.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMetadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The typed `spec` of a document; the variant is the document's kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Service(ServiceSpec),
    HttpRoute(HttpRouteSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    RateLimitPolicy(RateLimitPolicySpec),
    TlsPolicy(TlsPolicySpec),
    Sidecar(SidecarSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Service(_) => Kind::Service,
            Spec::HttpRoute(_) => Kind::HttpRoute,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Spec::TlsPolicy(_) => Kind::TlsPolicy,
            Spec::Sidecar(_) => Kind::Sidecar,
        }
    }
}

/// One validated document. There is no way to build one without passing the per-document
/// checks; references to other documents are checked by [`Mesh::build`](super::Mesh::build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    metadata: Metadata,
    spec: Spec,
}

/// The serialized shape of a document (field order fixed here, which makes
/// [`Document::canonical_json`] stable).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    api_version: &'static str,
    kind: Kind,
    metadata: &'a Metadata,
    spec: &'a Spec,
}

// === impl Document ===

impl Document {
    /// Validates `metadata` and `spec` (the per-document checks).
    pub fn new(metadata: Metadata, spec: Spec) -> Result<Self, ModelErrors> {
        let key = DocumentKey {
            kind: spec.kind(),
            namespace: metadata.namespace.clone(),
            name: metadata.name.clone(),
        };
        let mut r = Report::new(key.to_string());
        check_metadata(&mut r, &metadata);
        let doc = Self { metadata, spec };
        validate::document(&mut r, &doc);
        r.into_errors().into_result(doc)
    }

    /// Every document of a YAML stream (`---` separators; empty documents are skipped). All
    /// documents are checked and every error is returned; an input with no document at all is
    /// an error. A YAML syntax error stops the parse; its message has the line and column.
    pub fn parse_yaml(text: &str) -> Result<Vec<Document>, ModelErrors> {
        let mut docs = Vec::new();
        let mut errors = ModelErrors::default();
        // libyaml reports a raw control character at the start of the token it was in (line 1
        // column 1, for a NUL in a block scalar): find it first, and say where it is.
        if let Err(message) = syntax::check_yaml_characters(text) {
            return Err(ModelError {
                document: "input".into(),
                field: String::new(),
                message: format!("invalid YAML: {message}"),
            }
            .into());
        }
        let mut index = 0;
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            index += 1;
            // Through serde_yaml_ng's own Value first: it refuses duplicate keys, which a
            // direct conversion would silently resolve to the last one.
            let value = serde_yaml_ng::Value::deserialize(de)
                .map_err(|e| syntax::yaml_message(&e))
                .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()));
            match value {
                // The YAML iterator repeats a syntax error forever: stop at the first.
                Err(message) => {
                    errors.push(ModelError {
                        document: format!("document #{index}"),
                        field: String::new(),
                        message: format!("invalid YAML: {message}"),
                    });
                    break;
                }
                Ok(Value::Null) => continue,
                Ok(value) => match Self::from_value(&value, index) {
                    Ok(doc) => docs.push(doc),
                    Err(e) => errors.extend(e),
                },
            }
        }
        if docs.is_empty() && errors.is_empty() {
            errors.push(empty_input());
        }
        errors.into_result(docs)
    }

    /// One JSON document (an object, not an array). A key repeated in an object is an error
    /// (as it is in YAML), naming its path.
    pub fn parse_json(text: &str) -> Result<Document, ModelErrors> {
        match strict_json(text)? {
            value @ Value::Object(_) => Self::from_json_value(&value),
            other => Err(not_an_object(&other, 1).into()),
        }
    }

    /// JSON documents: one document, or an array of them (errors of a document that cannot be
    /// named say `document #N`, its position in the array, as in a YAML stream). All are
    /// checked and every error is returned.
    pub fn parse_json_set(text: &str) -> Result<Vec<Document>, ModelErrors> {
        let items = match strict_json(text)? {
            Value::Array(items) => items,
            one => vec![one],
        };
        let mut docs = Vec::with_capacity(items.len());
        let mut errors = ModelErrors::default();
        for (i, item) in items.iter().enumerate() {
            match Self::from_value(item, i + 1) {
                Ok(doc) => docs.push(doc),
                Err(e) => errors.extend(e),
            }
        }
        if docs.is_empty() && errors.is_empty() {
            errors.push(empty_input());
        }
        errors.into_result(docs)
    }

    /// One document that is already a JSON value (an admin API payload, a stored body).
    pub fn from_json_value(value: &Value) -> Result<Document, ModelErrors> {
        Self::from_value(value, 1)
    }

    fn from_value(value: &Value, index: usize) -> Result<Document, ModelErrors> {
        let Value::Object(object) = value else {
            return Err(not_an_object(value, index).into());
        };
        let meta = object.get("metadata");
        let mut r = Report::new(label(value, index));

        for key in object.keys() {
            if !["apiVersion", "kind", "metadata", "spec"].contains(&key.as_str()) {
                r.error(
                    key.as_str(),
                    "unknown field; a document has only apiVersion, kind, metadata and spec",
                );
            }
        }
        match object.get("apiVersion") {
            None => r.error("apiVersion", format!("is required ({API_VERSION:?})")),
            Some(Value::String(v)) if v == API_VERSION => {}
            Some(other) => r.error(
                "apiVersion",
                format!("must be {API_VERSION:?}, not {}", show(other)),
            ),
        }
        let kind = match object.get("kind") {
            None => {
                r.error("kind", format!("is required (one of {})", Kind::known()));
                None
            }
            Some(Value::String(k)) => k.parse::<Kind>().map_err(|e| r.error("kind", e)).ok(),
            Some(other) => {
                r.error("kind", format!("must be a string, not {}", show(other)));
                None
            }
        };
        let metadata = match meta {
            None => {
                r.error("metadata", "is required (with at least metadata.name)");
                None
            }
            Some(m) => parse_metadata(&mut r, m),
        };
        let spec = match (kind, object.get("spec")) {
            (_, None) => {
                r.error("spec", "is required");
                None
            }
            (None, Some(_)) => None,
            (Some(kind), Some(spec)) => parse_spec(&mut r, kind, spec),
        };
        // The per-document checks run even after an envelope error (a wrong apiVersion, say),
        // so that one round shows every problem.
        match (metadata, spec) {
            (Some(metadata), Some(spec)) => {
                let doc = Self { metadata, spec };
                validate::document(&mut r, &doc);
                r.into_errors().into_result(doc)
            }
            _ => Err(r.into_errors()),
        }
    }

    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        &self.metadata.namespace
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn key(&self) -> DocumentKey {
        DocumentKey {
            kind: self.kind(),
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }

    fn envelope(&self) -> Envelope<'_> {
        Envelope {
            api_version: API_VERSION,
            kind: self.kind(),
            metadata: &self.metadata,
            spec: &self.spec,
        }
    }

    /// The document as YAML; `parse_yaml` gives back an equal document.
    pub fn to_yaml(&self) -> String {
        // Plain structs with string keys: serializing cannot fail.
        serde_yaml_ng::to_string(&self.envelope())
            .expect("a Document is plain data with string keys")
    }

    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self.envelope()).expect("a Document is plain data with string keys")
    }

    /// A stable serialization: the same document (whatever its key order, quoting, comments or
    /// YAML vs JSON source) always gives the same string, so a store can tell that a re-apply
    /// changes nothing. Keys are in a fixed order (struct order, sorted maps), absent optional
    /// fields are omitted, `metadata.namespace` is always present.
    pub fn canonical_json(&self) -> String {
        // Straight from the typed document, not through `serde_json::Value`: the key order of
        // a `Value` depends on whether some crate in the build enables serde_json's
        // `preserve_order`, and a stored canonical form must not change with that.
        serde_json::to_string(&self.envelope()).expect("a Document is plain data with string keys")
    }
}

impl Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.envelope().serialize(s)
    }
}

/// The document's name as well as it can be given before anything is checked:
/// `Service ns/name`, `Service (document #2)` or `document #2`.
fn label(value: &Value, index: usize) -> String {
    let kind = value.get("kind").and_then(Value::as_str);
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    match (kind, name) {
        (Some(k), Some(n)) => format!("{k} {namespace}/{n}"),
        (Some(k), None) => format!("{k} (document #{index})"),
        _ => format!("document #{index}"),
    }
}

fn not_an_object(value: &Value, index: usize) -> ModelError {
    ModelError {
        document: format!("document #{index}"),
        field: String::new(),
        message: format!(
            "must be an object with apiVersion, kind, metadata and spec, not {}",
            json_type(value)
        ),
    }
}

/// JSON text as a value, refusing duplicate keys: the error names the document the key is in
/// (`RateLimitPolicy shop/x: spec.requestsPerSecond: duplicate key at line 9 column 22`).
fn strict_json(text: &str) -> Result<Value, ModelError> {
    if text.trim().is_empty() {
        return Err(empty_input());
    }
    match syntax::parse_json(text) {
        Ok(value) => Ok(value),
        Err(syntax::JsonError::Duplicate {
            mut path,
            line,
            column,
        }) => {
            // The value as serde_json alone reads it (the last key wins) only to name the
            // document; it is refused either way.
            let lenient: Value = serde_json::from_str(text).unwrap_or_default();
            let (doc, index) = match path.first() {
                Some(syntax::Step::Index(i)) if lenient.is_array() => {
                    let i = *i;
                    path.remove(0);
                    (lenient.get(i).cloned().unwrap_or_default(), i + 1)
                }
                _ => (lenient, 1),
            };
            Err(ModelError {
                document: error::clip_parts(&label(&doc, index)),
                field: syntax::path_text(&path),
                message: format!(
                    "duplicate key at line {line} column {column} (a key may appear only once \
                     in an object)"
                ),
            })
        }
        Err(e @ syntax::JsonError::Syntax(_)) => Err(ModelError {
            document: "document #1".into(),
            field: String::new(),
            message: format!("invalid JSON: {e}"),
        }),
    }
}

fn empty_input() -> ModelError {
    ModelError {
        document: "input".into(),
        field: String::new(),
        message: "contains no document".into(),
    }
}

fn check_metadata(r: &mut Report, m: &Metadata) {
    if let Err(e) = names::dns_label(&m.name) {
        r.error("metadata.name", e);
    }
    if let Err(e) = names::dns_label(&m.namespace) {
        r.error("metadata.namespace", e);
    }
    for (k, v) in &m.labels {
        if let Err(e) = names::label_key(k).and_then(|()| names::label_value(v)) {
            r.error(format!("metadata.labels.{k}"), e);
        }
    }
}

fn parse_metadata(r: &mut Report, value: &Value) -> Option<Metadata> {
    let raw: RawMetadata = deserialize_at(r, "metadata", value)?;
    let mark = r.mark();
    let name = raw.name.unwrap_or_else(|| {
        r.error("metadata.name", "is required");
        String::new()
    });
    let m = Metadata {
        name,
        namespace: raw
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        labels: raw.labels,
        annotations: raw.annotations,
    };
    if r.mark() == mark {
        check_metadata(r, &m);
    }
    r.ok_since(mark, m)
}

fn parse_spec(r: &mut Report, kind: Kind, value: &Value) -> Option<Spec> {
    Some(match kind {
        Kind::Service => Spec::Service(deserialize_at(r, "spec", value)?),
        Kind::HttpRoute => Spec::HttpRoute(deserialize_at(r, "spec", value)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(deserialize_at(r, "spec", value)?),
        Kind::RateLimitPolicy => Spec::RateLimitPolicy(deserialize_at(r, "spec", value)?),
        Kind::TlsPolicy => Spec::TlsPolicy(deserialize_at(r, "spec", value)?),
        Kind::Sidecar => Spec::Sidecar(deserialize_at(r, "spec", value)?),
    })
}

/// Deserializes `value`, reporting a failure at its full path under `root`
/// (`spec.rules[0].backends[1].weigth: unknown field ...`). serde stops at the first shape
/// error, so a document gets one such error; range and reference checks then report all.
fn deserialize_at<T: serde::de::DeserializeOwned>(
    r: &mut Report,
    root: &str,
    value: &Value,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let mut field = if path == "." {
                root.to_string()
            } else {
                format!("{root}.{path}")
            };
            let mut message = e.inner().to_string();
            // "missing field `port`" at `spec.ports[0]` reads better as
            // `spec.ports[0].port: is required`.
            if let Some(name) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                field = format!("{field}.{name}");
                message = "is required".into();
            }
            r.error(field, message);
            None
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => json_type(other).to_string(),
    }
}
