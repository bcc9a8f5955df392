//! Every unknown field of a spec, in one run.
//!
//! serde stops at the first unknown field. Instead, the model's own field lists are read once
//! (by driving its `Deserialize` impls with a tracing deserializer that records the `fields` each
//! struct asks for), and every key of the document is checked against them. The model therefore
//! stays the only list of fields; nothing here names one.

use super::diag::{Diagnostic, Diagnostics, Severity};
use super::model::Document;
use super::source_map::{Key, Location, SourceMap};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

type Error = de::value::Error;

/// Field names per struct path; sequence items are written `[]` (`spec.hosts[].ssh`).
#[derive(Debug, Default)]
pub struct Schema {
    structs: HashMap<String, &'static [&'static str]>,
    /// The trace reached every field; false means a type it cannot drive (see its test).
    pub complete: bool,
}

impl Schema {
    /// The fields of the struct at `path` (with indices), if a struct lives there.
    pub fn fields(&self, path: &str) -> Option<&'static [&'static str]> {
        self.structs.get(&generic(path)).copied()
    }
}

/// `spec.hosts[3].ssh` -> `spec.hosts[].ssh`.
fn generic(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// The schema of [`Document`], traced once.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut s = Schema::default();
        // A failure leaves a partial schema: fewer unknown fields found, never a false one.
        s.complete = <Document as serde::Deserialize>::deserialize(Tracer {
            path: String::new(),
            out: &mut s,
        })
        .is_ok();
        s
    })
}

/// Report every key that its struct does not know, with a "did you mean".
pub fn unknown_fields(map: &SourceMap, d: &mut Diagnostics) {
    let schema = schema();
    // Keys come grouped by their mapping: look each mapping's fields up once.
    let mut last: Option<(&Rc<str>, Option<&'static [&'static str]>)> = None;
    for k in &map.keys {
        let fields = match last {
            Some((p, f)) if Rc::ptr_eq(p, &k.parent) => f,
            _ => schema.fields(&k.parent),
        };
        last = Some((&k.parent, fields));
        check(fields, k, &k.parent, k.location, None, d);
    }
    // Keys that reach a struct through an alias or a merge must fit there too.
    for a in &map.aliases {
        for k in map.anchored_keys.get(&a.anchor).into_iter().flatten() {
            if *k.parent != *a.target {
                let fields = schema.fields(&a.target);
                check(fields, k, &a.target, a.location, Some(k.location), d);
            }
        }
    }
}

fn check(
    fields: Option<&'static [&'static str]>,
    k: &Key,
    parent: &str,
    at: Location,
    from: Option<Location>,
    d: &mut Diagnostics,
) {
    // `<<` is YAML's merge key, which the parser expands.
    if &*k.name == "<<" {
        return;
    }
    let Some(fields) = fields else {
        return;
    };
    if fields.contains(&&*k.name) {
        return;
    }
    let path = super::source_map::join(parent, &k.name);
    let mut message = format!("unknown field `{}`", k.name);
    if let Some(l) = from {
        message.push_str(&format!(" (from the anchor on line {})", l.line));
    }
    let help = match super::validate::did_you_mean(&k.name, fields) {
        Some(s) => format!("did you mean `{s}`? Fields here: {}", fields.join(", ")),
        None => format!("remove it; fields here: {}", fields.join(", ")),
    };
    let mut diag = Diagnostic::new(Severity::Error, path, message).help(help);
    diag.location = Some(at);
    d.items.push(diag);
}

/// `deserialize_x` methods that hand the visitor a placeholder value.
macro_rules! placeholders {
    ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {
        $(fn $method<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.$visit($value)
        })*
    };
}

/// A deserializer that hands every struct all of its fields with placeholder values, recording
/// the field names on the way.
struct Tracer<'a> {
    path: String,
    out: &'a mut Schema,
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom(format!(
            "cannot trace the type at {}",
            self.path
        )))
    }
    placeholders! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0),
        deserialize_i16 => visit_i16(0),
        deserialize_i32 => visit_i32(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u8(0),
        deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f32(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
    }
    fn deserialize_option<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }
    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_seq(TraceSeq {
            path: format!("{}[]", self.path),
            out: self.out,
            done: false,
        })
    }
    /// Free-form maps (priorities, extra arguments) have no fixed keys: nothing to record.
    fn deserialize_map<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(
            &str,
            &str,
        )>()))
    }
    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.out.structs.insert(self.path.clone(), fields);
        v.visit_map(TraceMap {
            path: self.path,
            fields,
            next: 0,
            out: self.out,
        })
    }
    /// Unit variants only: the first one.
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let first = variants.first().copied().unwrap_or_default();
        v.visit_enum(IntoDeserializer::<Error>::into_deserializer(first))
    }
    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple tuple_struct identifier
    }
}

struct TraceSeq<'a> {
    path: String,
    out: &'a mut Schema,
    done: bool,
}

impl<'de> SeqAccess<'de> for TraceSeq<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        seed.deserialize(Tracer {
            path: self.path.clone(),
            out: self.out,
        })
        .map(Some)
    }
}

struct TraceMap<'a> {
    path: String,
    fields: &'static [&'static str],
    next: usize,
    out: &'a mut Schema,
}

impl<'de> MapAccess<'de> for TraceMap<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(f) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*f))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let f = self.fields.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        let path = if self.path.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", self.path)
        };
        seed.deserialize(Tracer {
            path,
            out: self.out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_knows_every_struct_of_the_model() {
        let s = schema();
        assert!(
            s.complete,
            "a model field has a type the tracer cannot drive; teach Tracer its deserialize_* method"
        );
        let root = s.fields("").expect("root");
        assert_eq!(root, ["apiVersion", "kind", "metadata", "spec"]);
        assert!(s.fields("spec.hosts[7]").expect("hosts").contains(&"roles"));
        assert!(
            s.fields("spec.hosts[0].ssh")
                .expect("host ssh")
                .contains(&"proxyJump")
        );
        assert!(
            s.fields("spec.loadBalancer.healthCheck")
                .expect("healthCheck")
                .contains(&"type"),
            "renamed fields use their YAML names"
        );
        assert!(
            s.fields("spec.kubernetes")
                .expect("k8s")
                .contains(&"certSANs")
        );
        assert!(s.fields("spec.loadBalancer.ingress").is_some());
        // Free-form maps have no fixed fields.
        assert!(s.fields("spec.loadBalancer.vrrp.priorities").is_none());
        assert!(s.fields("spec.kubernetes.apiServerExtraArgs").is_none());
    }

    #[test]
    fn every_unknown_field_is_reported_once() {
        let src = "apiVersion: x\nbogus: 1\nspec:\n  hosts:\n    - {name: a, adress: b}\n    - {name: c, rolse: []}\n  kubernetes:\n    apiServerExtraArgs: {anything: goes}\n";
        let map = SourceMap::build(src);
        let mut d = Diagnostics::default();
        unknown_fields(&map, &mut d);
        let got: Vec<(&str, usize)> = d
            .items
            .iter()
            .map(|x| (x.path.as_str(), x.location.map(|l| l.line).unwrap_or(0)))
            .collect();
        assert_eq!(
            got,
            [
                ("bogus", 2),
                ("spec.hosts[0].adress", 5),
                ("spec.hosts[1].rolse", 6)
            ]
        );
        assert!(
            d.items[1]
                .help
                .as_deref()
                .unwrap_or_default()
                .contains("did you mean `address`")
        );
    }

    #[test]
    fn merged_keys_must_fit_where_they_land() {
        let src = "x: &s {user: root, identityFile: k}\nspec:\n  ssh:\n    <<: *s\n  loadBalancer:\n    stats: *s\n";
        let mut d = Diagnostics::default();
        unknown_fields(&SourceMap::build(src), &mut d);
        let got: Vec<&str> = d.items.iter().map(|x| x.path.as_str()).collect();
        // `x` itself is unknown; `user` fits stats, `identityFile` does not; ssh takes both.
        assert_eq!(got, ["x", "spec.loadBalancer.stats.identityFile"]);
        assert!(d.items[1].message.contains("from the anchor on line 1"));
    }
}
