//! `rpc.discover`: the OpenRPC 1.3 document of a server, generated from its router (methods,
//! their params, results and errors, declared topics) and its configuration (the subscription
//! methods, signing).
//!
//! Param names come from the handler's param type when serde says them (a struct's fields;
//! a tuple gets `p0`, `p1`, …, or the names given to [`Method::params`]). JSON Schemas come
//! from `schemars` for descriptors marked `Method::with_schemas` (feature `schemars`);
//! everything else is described by the empty schema `{}`, which admits any value.
//!
//! [`Method::params`]: super::Method::params

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::{Map, Value, json};

use super::error;
use super::router::Router;
use super::typed::{Doc, Topic};
use crate::service::ServiceConfig;

/// The OpenRPC version of the documents served.
pub const OPENRPC_VERSION: &str = "1.3.2";

/// The API's title, version and description (`info` of the document).
#[derive(Clone, Debug, Default)]
pub(crate) struct ApiInfo {
    pub(crate) title: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) description: Option<String>,
}

/// What `rpc.discover` says about one registered method.
#[derive(Clone, Debug)]
pub(crate) struct MethodDoc {
    shape: ParamShape,
    doc: Doc,
    /// Registered from a [`Method`](super::Method) or a
    /// [`Notification`](super::Notification) (else by name, with nothing known of its result).
    typed: bool,
    /// Answers nothing worth reading: described without a result.
    pub(crate) notification: bool,
}

impl MethodDoc {
    /// A method registered by name with params `P`.
    pub(crate) fn untyped<P: DeserializeOwned>() -> Self {
        Self { shape: ParamShape::of::<P>(), doc: Doc::EMPTY, typed: false, notification: false }
    }

    /// A method that reads its params itself.
    pub(crate) fn raw() -> Self {
        Self { shape: ParamShape::Any, doc: Doc::EMPTY, typed: false, notification: false }
    }

    /// A method registered from a descriptor.
    pub(crate) fn typed<P: DeserializeOwned>(doc: Doc) -> Self {
        Self { shape: ParamShape::of::<P>(), doc, typed: true, notification: false }
    }
}

/// A topic declared with [`Router::topic`](super::Router::topic).
#[derive(Clone, Debug)]
pub(crate) struct TopicDoc {
    name: &'static str,
    summary: Option<&'static str>,
    #[cfg(feature = "schemars")]
    schema: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
}

impl TopicDoc {
    pub(crate) fn of<T: ?Sized>(topic: Topic<T>) -> Self {
        Self {
            name: topic.name(),
            summary: topic.summary,
            #[cfg(feature = "schemars")]
            schema: topic.schema,
        }
    }
}

/// How a handler's params are laid out, as far as serde tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParamShape {
    /// No params (`()`).
    None,
    /// A fixed number of positional params (a tuple).
    Positional(usize),
    /// Named params, also accepted in this order by position (a struct).
    Named(&'static [&'static str]),
    /// Any number of positional params of one type (a `Vec`).
    Variadic,
    /// Anything (a `serde_json::Value`, a map, params read by hand).
    Any,
}

impl ParamShape {
    /// The shape of `P`, found by watching what its `Deserialize` asks for (no params are
    /// deserialized: the probe answers every request with an error).
    pub(crate) fn of<P: DeserializeOwned>() -> Self {
        let mut probe = Probe(Self::Any);
        let _ = P::deserialize(&mut probe);
        probe.0
    }
}

/// A deserializer that records the first thing asked of it and fails.
struct Probe(ParamShape);

#[derive(Debug)]
struct Probed;

impl std::fmt::Display for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shape recorded")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Self
    }
}

impl Probe {
    fn record<T>(&mut self, shape: ParamShape) -> Result<T, Probed> {
        self.0 = shape;
        Err(Probed)
    }
}

macro_rules! any_shape {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
            self.record(ParamShape::Any)
        }
    )*};
}

impl<'de> Deserializer<'de> for &mut Probe {
    type Error = Probed;

    any_shape!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any
    );

    fn deserialize_unit<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        self.record(ParamShape::None)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, Probed> {
        self.record(ParamShape::None)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Probed> {
        // Absent params read as `None`; present ones have the inner type's shape.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Probed> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        self.record(ParamShape::Variadic)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, _: V) -> Result<V::Value, Probed> {
        self.record(ParamShape::Positional(len))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        _: V,
    ) -> Result<V::Value, Probed> {
        self.record(ParamShape::Positional(len))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        self.record(ParamShape::Named(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        self.record(ParamShape::Any)
    }
}

/// The JSON Schemas of a typed method's params and result (feature `schemars`).
#[cfg(feature = "schemars")]
#[derive(Clone, Copy)]
pub(crate) struct SchemaFns {
    params: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    result: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

#[cfg(feature = "schemars")]
impl SchemaFns {
    pub(crate) const fn of<P: schemars::JsonSchema, R: schemars::JsonSchema>() -> Self {
        Self { params: schema_of::<P>, result: schema_of::<R> }
    }
}

#[cfg(feature = "schemars")]
impl std::fmt::Debug for SchemaFns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaFns")
    }
}

/// `T`'s schema, a `$ref` into `components.schemas` for named types.
#[cfg(feature = "schemars")]
pub(crate) fn schema_of<T: schemars::JsonSchema>(
    g: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// Where the schemas of a document come from: `schemars` with the feature on (draft-07, as
/// the OpenRPC meta-schema expects, with shared definitions under `components.schemas`).
struct Schemas {
    #[cfg(feature = "schemars")]
    generator: schemars::SchemaGenerator,
}

impl Schemas {
    fn new() -> Self {
        Self {
            #[cfg(feature = "schemars")]
            generator: schemars::generate::SchemaSettings::draft07()
                .with(|s| s.definitions_path = "/components/schemas".into())
                .into_generator(),
        }
    }

    /// The params' and the result's schemas of `doc`, when it has them: one schema per
    /// param of `shape`, and the result's.
    #[cfg(feature = "schemars")]
    fn of_method(
        &mut self,
        doc: &Doc,
        shape: ParamShape,
    ) -> Option<(Vec<Value>, Vec<String>, Value)> {
        let fns = doc.schemas?;
        let params = (fns.params)(&mut self.generator).to_value();
        let mut result = (fns.result)(&mut self.generator);
        // A struct's schema is a `$ref`: split what it refers to.
        let target = match params.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/components/schemas/")
                .and_then(|name| self.generator.definitions().get(name))
                .cloned()
                .unwrap_or(Value::Null),
            None => params,
        };
        let mut required = Vec::new();
        let mut parts: Vec<Value> = match shape {
            ParamShape::Positional(n) => {
                let items = target.get("prefixItems").or_else(|| target.get("items"));
                match items {
                    Some(Value::Array(items)) => items.clone(),
                    // A one-element tuple may come as `items: {..}`.
                    Some(item) if n == 1 => vec![item.clone()],
                    _ => vec![json!({}); n],
                }
            }
            ParamShape::Named(fields) => {
                let properties = target.get("properties");
                if let Some(Value::Array(r)) = target.get("required") {
                    required = r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
                }
                fields
                    .iter()
                    .map(|f| properties.and_then(|p| p.get(*f)).cloned().unwrap_or(json!({})))
                    .collect()
            }
            ParamShape::Variadic => {
                vec![target.get("items").cloned().unwrap_or(json!({}))]
            }
            ParamShape::None | ParamShape::Any => Vec::new(),
        };
        for part in &mut parts {
            if let Ok(mut schema) = schemars::Schema::try_from(part.take()) {
                for t in self.generator.transforms_mut() {
                    t.transform(&mut schema);
                }
                *part = schema.to_value();
            }
        }
        for t in self.generator.transforms_mut() {
            t.transform(&mut result);
        }
        Some((parts, required, result.to_value()))
    }

    #[cfg(feature = "schemars")]
    fn of_topic(&mut self, topic: &TopicDoc) -> Value {
        match topic.schema {
            Some(f) => {
                let mut schema = f(&mut self.generator);
                for t in self.generator.transforms_mut() {
                    t.transform(&mut schema);
                }
                schema.to_value()
            }
            None => json!({}),
        }
    }

    #[cfg(not(feature = "schemars"))]
    fn of_topic(&mut self, _: &TopicDoc) -> Value {
        json!({})
    }

    /// The shared definitions, for `components.schemas`.
    fn into_components(self) -> Option<Map<String, Value>> {
        #[cfg(feature = "schemars")]
        {
            let mut generator = self.generator;
            let definitions = generator.take_definitions(true);
            (!definitions.is_empty()).then_some(definitions)
        }
        #[cfg(not(feature = "schemars"))]
        {
            None
        }
    }
}

/// An error object of the document.
fn error_object(code: i64, message: &str) -> Value {
    json!({ "code": code, "message": message })
}

/// The errors any method may answer with, besides its own.
fn common_errors(config: &ServiceConfig) -> Vec<Value> {
    let mut errors = vec![
        error_object(error::INVALID_PARAMS, "Invalid params"),
        error_object(error::INTERNAL_ERROR, "Internal error"),
        error_object(error::LIMIT_EXCEEDED, "Limit exceeded"),
    ];
    if config.signing.is_some() {
        errors.push(error_object(error::BAD_SIGNATURE, "Bad signature"));
    }
    errors
}

/// A content descriptor.
fn descriptor(name: &str, schema: Value, required: bool) -> Value {
    let mut d = json!({ "name": name, "schema": schema });
    if required {
        d["required"] = Value::Bool(true);
    }
    d
}

/// The method object of a registered method.
fn method_object(name: &str, doc: &MethodDoc, schemas: &mut Schemas, common: &[Value]) -> Value {
    #[cfg(feature = "schemars")]
    let described = schemas.of_method(&doc.doc, doc.shape);
    #[cfg(not(feature = "schemars"))]
    let described: Option<(Vec<Value>, Vec<String>, Value)> = {
        let _ = schemas;
        None
    };
    let (param_schemas, required, result_schema) = match described {
        Some((p, r, result)) => (Some(p), Some(r), result),
        None => (None, None, json!({})),
    };
    let schema_at = |i: usize| {
        param_schemas.as_ref().and_then(|p| p.get(i)).cloned().unwrap_or_else(|| json!({}))
    };
    let given = doc.doc.params.unwrap_or(&[]);
    let mut method = Map::new();
    method.insert("name".into(), name.into());
    let (structure, params): (Option<&str>, Vec<Value>) = match doc.shape {
        ParamShape::None => (None, Vec::new()),
        ParamShape::Positional(n) => {
            let params = (0..n)
                .map(|i| {
                    let name = given.get(i).map_or_else(|| format!("p{i}"), |n| (*n).to_owned());
                    descriptor(&name, schema_at(i), true)
                })
                .collect();
            (Some("by-position"), params)
        }
        ParamShape::Named(fields) => {
            let params = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    // Without schemas, whether a field may be left out is unknown: not claimed.
                    let req = required.as_ref().is_some_and(|r| r.iter().any(|n| n == f));
                    descriptor(f, schema_at(i), req)
                })
                .collect();
            // A struct takes its params by name or, in field order, by position.
            (Some("either"), params)
        }
        ParamShape::Variadic => {
            let name = given.first().copied().unwrap_or("values");
            let mut d = descriptor(name, schema_at(0), false);
            d["description"] = "Any number of positional params, each matching the schema".into();
            d["x-variadic"] = Value::Bool(true);
            (Some("by-position"), vec![d])
        }
        ParamShape::Any => {
            method.insert("x-params".into(), "any".into());
            (None, Vec::new())
        }
    };
    method.insert("params".into(), params.into());
    if let Some(structure) = structure {
        method.insert("paramStructure".into(), structure.into());
    }
    if !doc.notification {
        let result_name = doc.doc.result.unwrap_or("result");
        method.insert("result".into(), descriptor(result_name, result_schema, false));
    }
    if let Some(summary) = doc.doc.summary {
        method.insert("summary".into(), summary.into());
    }
    if let Some(description) = doc.doc.description {
        method.insert("description".into(), description.into());
    }
    if doc.doc.deprecated {
        method.insert("deprecated".into(), true.into());
    }
    let mut errors: Vec<Value> =
        doc.doc.errors.iter().map(|(code, message)| error_object(*code, message)).collect();
    errors.extend(common.iter().cloned());
    method.insert("errors".into(), errors.into());
    if !doc.typed {
        method.insert("x-typed".into(), false.into());
    }
    Value::Object(method)
}

/// The subscribe and unsubscribe methods of the hub, with the declared topics.
fn subscription_methods(
    router: &Router,
    config: &ServiceConfig,
    schemas: &mut Schemas,
    common: &[Value],
) -> [Value; 2] {
    let m = &config.hub.methods;
    let topics: Vec<Value> = router
        .declared_topics()
        .iter()
        .map(|t| {
            let mut topic = json!({ "name": t.name, "schema": schemas.of_topic(t) });
            if let Some(summary) = t.summary {
                topic["summary"] = summary.into();
            }
            topic
        })
        .collect();
    // Names served by a subscription handler, which may take a filter (`logs` and the like).
    let handled: Vec<Value> = router
        .subscription_names()
        .into_iter()
        .map(|name| json!({ "name": name, "handler": true, "filter": true }))
        .collect();
    let position = json!({ "type": ["integer", "null"], "minimum": 0 });
    let (params, structure, result) = if m.eth_style {
        let params = vec![
            descriptor("name", json!({ "type": "string" }), true),
            // Replay options, and for a handled name its filter (one object).
            descriptor(
                "options",
                json!({
                    "type": "object",
                    "properties": { "since": position, "epoch": position },
                }),
                false,
            ),
        ];
        (params, "by-position", descriptor("subscription", json!({ "type": "string" }), false))
    } else {
        let params = vec![
            descriptor("topic", json!({ "type": "string" }), true),
            descriptor("since", position.clone(), false),
            descriptor("epoch", position.clone(), false),
            // Taken by names served by a subscription handler (`x-subscription.handled`).
            descriptor("filter", json!({ "type": ["object", "null"] }), false),
        ];
        let answer = json!({
            "type": "object",
            "properties": {
                "subscription": { "type": "string" },
                "topic": { "type": "string" },
                "seq": { "type": "integer", "minimum": 0 },
                "epoch": { "type": "integer", "minimum": 0 },
            },
            "required": ["subscription", "topic", "epoch"],
        });
        (params, "either", descriptor("subscription", answer, false))
    };
    let mut errors = vec![
        error_object(error::FORBIDDEN, "Not permitted to subscribe to this topic"),
        error_object(error::UNAVAILABLE, "Broker unavailable"),
        error_object(error::METHOD_NOT_FOUND, "Subscriptions need a WebSocket connection"),
    ];
    errors.extend(common.iter().cloned());
    let notification = json!({
        "method": m.notification,
        "params": {
            "type": "object",
            "properties": {
                "subscription": { "type": "string" },
                "topic": { "type": "string" },
                "seq": { "type": "integer", "minimum": 0 },
                "result": {},
            },
            "required": ["subscription", "result"],
        },
    });
    let subscribe = json!({
        "name": m.subscribe,
        "summary": "Subscribes to a topic; its values arrive as notifications",
        "paramStructure": structure,
        "params": params,
        "result": result,
        "errors": errors,
        "x-subscription": {
            "notification": notification,
            "unsubscribe": m.unsubscribe,
            "notices": { "lagged": m.lagged, "gap": m.gap, "reset": m.reset },
            "topics": topics,
            "handled": handled,
        },
    });
    let unsubscribe = json!({
        "name": m.unsubscribe,
        "summary": "Ends a subscription; false when there was none",
        "paramStructure": "by-position",
        "params": [descriptor("subscription", json!({ "type": "string" }), true)],
        "result": descriptor("removed", json!({ "type": "boolean" }), false),
        "errors": common,
    });
    [subscribe, unsubscribe]
}

/// The built-in methods besides `rpc.discover` itself.
fn builtins(common: &[Value]) -> [Value; 2] {
    let builtin = |name: &str, summary: &str, result: &str, errors: Vec<Value>| {
        json!({
            "name": name,
            "summary": summary,
            "params": [],
            "result": descriptor(result, json!({ "type": "object" }), false),
            "errors": errors,
        })
    };
    // The monitoring policy may keep the metrics from a client.
    let mut metrics_errors = vec![error_object(error::FORBIDDEN, "Forbidden")];
    metrics_errors.extend(common.iter().cloned());
    [
        builtin(
            "rpc.health",
            "The server's name, status and pub/sub protocol (with details for clients the monitoring policy allows)",
            "health",
            common.to_vec(),
        ),
        builtin(
            "rpc.metrics",
            "Counters and latency histograms per method",
            "metrics",
            metrics_errors,
        ),
    ]
}

/// The OpenRPC document of a server serving `router` with `config`.
pub fn document(router: &Router, config: &ServiceConfig) -> Value {
    let mut schemas = Schemas::new();
    let common = common_errors(config);
    let mut methods: Vec<Value> = router
        .entries()
        .map(|(name, entry)| method_object(name, &entry.doc, &mut schemas, &common))
        .collect();
    methods.extend(subscription_methods(router, config, &mut schemas, &common));
    methods.extend(builtins(&common));
    let info = router.api_info();
    let mut info_object = json!({
        "title": info.title.as_deref().unwrap_or(&config.name),
        "version": info.version.as_deref().unwrap_or("0.0.0"),
    });
    if let Some(description) = &info.description {
        info_object["description"] = description.as_str().into();
    }
    let mut doc = json!({ "openrpc": OPENRPC_VERSION, "info": info_object, "methods": methods });
    if let Some(definitions) = schemas.into_components() {
        doc["components"] = json!({ "schemas": definitions });
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Named {
        a: i64,
        #[serde(rename = "bee")]
        b: Option<String>,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Wrapper(Named);

    #[test]
    fn shapes_of_params() {
        assert_eq!(ParamShape::of::<()>(), ParamShape::None);
        assert_eq!(ParamShape::of::<(i64, String)>(), ParamShape::Positional(2));
        assert_eq!(ParamShape::of::<(u8,)>(), ParamShape::Positional(1));
        assert_eq!(ParamShape::of::<Named>(), ParamShape::Named(&["a", "bee"]));
        assert_eq!(ParamShape::of::<Wrapper>(), ParamShape::Named(&["a", "bee"]));
        assert_eq!(ParamShape::of::<Option<(i64,)>>(), ParamShape::Positional(1));
        assert_eq!(ParamShape::of::<Vec<i64>>(), ParamShape::Variadic);
        assert_eq!(ParamShape::of::<Value>(), ParamShape::Any);
        assert_eq!(ParamShape::of::<std::collections::HashMap<String, i64>>(), ParamShape::Any);
    }
}
