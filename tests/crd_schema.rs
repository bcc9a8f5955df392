//! The rendered prometheus-operator objects (PrometheusRule, ServiceMonitor, ScrapeConfigs)
//! against the openAPIV3Schema of prometheus-operator v0.93.0's own CRDs, vendored in
//! `tests/data/prometheus-operator-v0.93.0/` (see its README). No root, no network.
//!
//! Kubernetes' structural schemas are JSON Schema plus `x-kubernetes-*` extensions. They are
//! mapped to what the API server enforces before validation:
//! * `x-kubernetes-int-or-string: true` is `anyOf: [integer, string]`;
//! * an object with `properties` and no `x-kubernetes-preserve-unknown-fields` rejects
//!   unknown fields (`kubectl apply`'s default `--validate=strict`);
//! * `x-kubernetes-list-type: set` is `uniqueItems`; `map` lists have unique keys
//!   (`x-kubernetes-list-map-keys`, a custom keyword below);
//! * `x-kubernetes-validations` are CEL rules, which no JSON Schema crate evaluates. The test
//!   lists the ones the CRDs have and checks each by hand; a new rule upstream fails the test
//!   until it is checked here too.

use hakube::render::{self, RenderedFile, Secrets};
use hakube::spec;
use jsonschema::{Keyword, ValidationError, paths::Location};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

const SEED: &str = include_str!("../examples/seed.yaml");

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/prometheus-operator-v0.93.0")
        .join(file)
}

/// The seed with monitoring labels and a namespace, as a kube-prometheus-stack install has.
fn rendered() -> Vec<RenderedFile> {
    let src = SEED.replace(
        "\nspec:\n",
        "\nspec:\n  monitoring:\n    labels: {release: kube-prometheus-stack, team: platform}\n    namespace: monitoring\n",
    );
    let l = spec::load_str(&src, "cluster.yaml", Path::new("/nonexistent"));
    let c = l
        .cluster
        .unwrap_or_else(|| panic!("seed with monitoring is invalid: {:?}", l.diagnostics.items));
    let secrets = Secrets {
        stats_password: "schema-password".into(),
    };
    render::render(&c, &secrets).expect("renders")
}

fn object(files: &[RenderedFile], name: &str) -> Value {
    let f = files
        .iter()
        .find(|f| f.path.ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("{name} not rendered"));
    serde_saphyr::from_str(&f.content).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"))
}

/// A CRD's served version's openAPIV3Schema, and the object's kind and apiVersion it is for.
struct Crd {
    file: &'static str,
    api_version: String,
    kind: String,
    schema: Value,
}

fn crd(file: &'static str, version: &str) -> Crd {
    let path = data(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let group = doc["spec"]["group"].as_str().expect("CRD has spec.group");
    let kind = doc["spec"]["names"]["kind"]
        .as_str()
        .expect("CRD has a kind");
    let v = doc["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == version))
        .unwrap_or_else(|| panic!("{file} has no version {version}"));
    assert_eq!(v["served"], true, "{file}: {version} is not served");
    Crd {
        file,
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        schema: v["schema"]["openAPIV3Schema"].clone(),
    }
}

/// Rewrites the Kubernetes extensions into JSON Schema (module docs); collects CEL rules.
fn structural(s: &mut Value, at: &str, cel: &mut Vec<(String, String)>) {
    let Some(m) = s.as_object_mut() else { return };
    if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) && !m.contains_key("anyOf") {
        m.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if m.contains_key("properties") && !m.contains_key("additionalProperties") && !preserve {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    if m.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
        m.insert("uniqueItems".into(), Value::Bool(true));
    }
    if let Some(rules) = m.get("x-kubernetes-validations").and_then(Value::as_array) {
        for r in rules {
            cel.push((at.to_string(), r["rule"].as_str().unwrap_or("").to_string()));
        }
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        for (k, v) in props.iter_mut() {
            structural(v, &format!("{at}/{k}"), cel);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = m.get_mut(key) {
            structural(v, &format!("{at}/{key}"), cel);
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(Value::Array(vs)) = m.get_mut(key) {
            for v in vs {
                structural(v, at, cel);
            }
        }
    }
}

/// `x-kubernetes-list-type: map`: no two items share the values of the map keys.
struct UniqueMapKeys(Vec<String>);

impl<'i> Keyword<'i> for UniqueMapKeys {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        let Some(items) = instance.as_array() else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::new();
        for it in items {
            let key: Vec<String> = self.0.iter().map(|k| it[k].to_string()).collect();
            if !seen.insert(key.clone()) {
                return Err(ValidationError::custom(format!(
                    "two items of a map list share the keys {:?} = {key:?}",
                    self.0
                )));
            }
        }
        Ok(())
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        self.validate(instance).is_ok()
    }
}

fn map_keys<'a>(
    _parent: &'a Map<String, Value>,
    value: &'a Value,
    _path: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let keys = value
        .as_array()
        .map(|ks| {
            ks.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(Box::new(UniqueMapKeys(keys)))
}

struct Checked {
    validator: jsonschema::Validator,
    crd: Crd,
    /// (schema location, CEL rule) of every `x-kubernetes-validations` rule.
    cel: Vec<(String, String)>,
}

fn checker(file: &'static str, version: &str) -> Checked {
    let crd = crd(file, version);
    let mut schema = crd.schema.clone();
    let mut cel = vec![];
    structural(&mut schema, "", &mut cel);
    // Draft 2020-12, not 4: draft 4's meta-schema asserts `format: regex` (ECMA-262) on every
    // `pattern` and rejects the CRDs' RE2 `(?i)`, which fancy-regex then compiles fine.
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_keyword("x-kubernetes-list-map-keys", map_keys)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{file}: schema does not compile: {e}"));
    Checked {
        validator,
        crd,
        cel,
    }
}

impl Checked {
    /// Every schema error of `obj`, with its JSON pointer; empty when it is valid.
    fn errors(&self, obj: &Value) -> Vec<String> {
        let mut out: Vec<String> = self
            .validator
            .iter_errors(obj)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if obj["apiVersion"] != self.crd.api_version.as_str() || obj["kind"] != self.crd.kind {
            out.push(format!(
                "is {} {}, the CRD {} serves {} {}",
                obj["apiVersion"], obj["kind"], self.crd.file, self.crd.api_version, self.crd.kind
            ));
        }
        out
    }

    fn assert_valid(&self, name: &str, obj: &Value) {
        let errs = self.errors(obj);
        assert!(
            errs.is_empty(),
            "{name} does not pass {}:\n{}",
            self.crd.file,
            errs.join("\n")
        );
    }

    fn assert_invalid(&self, what: &str, obj: &Value, needle: &str) {
        let errs = self.errors(obj);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{what}: expected an error about {needle:?}, got {errs:?}"
        );
    }
}

fn rules() -> Checked {
    checker("monitoring.coreos.com_prometheusrules.yaml", "v1")
}
fn monitors() -> Checked {
    checker("monitoring.coreos.com_servicemonitors.yaml", "v1")
}
fn scrapes() -> Checked {
    checker("monitoring.coreos.com_scrapeconfigs.yaml", "v1alpha1")
}

#[test]
fn rendered_prometheusrule_passes_the_crd_schema() {
    let files = rendered();
    let obj = object(&files, "prometheusrule.yaml");
    let c = rules();
    c.assert_valid("prometheusrule.yaml", &obj);
    assert_eq!(
        obj["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert!(c.cel.is_empty(), "new CEL rules to check: {:?}", c.cel);
}

#[test]
fn rendered_servicemonitor_passes_the_crd_schema() {
    let files = rendered();
    let obj = object(&files, "servicemonitor-etcd.yaml");
    let c = monitors();
    c.assert_valid("servicemonitor-etcd.yaml", &obj);
    assert_eq!(obj["spec"]["serviceDiscoveryRole"], "EndpointSlice");
    assert!(c.cel.is_empty(), "new CEL rules to check: {:?}", c.cel);
}

#[test]
fn rendered_scrapeconfigs_pass_the_crd_schema() {
    let files = rendered();
    let c = scrapes();
    for name in ["scrapeconfig-haproxy.yaml", "scrapeconfig-hakube.yaml"] {
        let obj = object(&files, name);
        c.assert_valid(name, &obj);
        // The CRD's one CEL rule, on spec: at most one of basicAuth, authorization, oauth2.
        let auth = ["basicAuth", "authorization", "oauth2"]
            .iter()
            .filter(|k| obj["spec"].get(**k).is_some())
            .count();
        assert!(auth <= 1, "{name}: {auth} auth methods set");
    }
    let known =
        "[has(self.basicAuth), has(self.authorization), has(self.oauth2)].filter(x, x).size() <= 1";
    let found: Vec<String> = c
        .cel
        .iter()
        .map(|(at, r)| {
            format!(
                "{at} {}",
                r.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![format!("/spec {known}")],
        "the ScrapeConfig CRD's CEL rules changed: check the new ones above"
    );
}

#[test]
fn servicemonitor_with_an_unknown_discovery_role_fails() {
    let mut obj = object(&rendered(), "servicemonitor-etcd.yaml");
    obj["spec"]["serviceDiscoveryRole"] = json!("EndpointSlices");
    monitors().assert_invalid(
        "serviceDiscoveryRole EndpointSlices",
        &obj,
        "/spec/serviceDiscoveryRole",
    );
}

#[test]
fn servicemonitor_with_a_misspelt_field_fails() {
    let mut obj = object(&rendered(), "servicemonitor-etcd.yaml");
    let eps = obj["spec"]["endpoints"].take();
    obj["spec"]["endpoint"] = eps;
    monitors().assert_invalid("spec.endpoint", &obj, "endpoint");
}

#[test]
fn rule_with_a_wrong_type_fails() {
    let mut obj = object(&rendered(), "prometheusrule.yaml");
    // `for` is a duration string; a bare number is what a hand edit would write.
    obj["spec"]["groups"][0]["rules"][0]["for"] = json!(300);
    rules().assert_invalid("for: 300", &obj, "/spec/groups/0/rules/0/for");
    let mut obj = object(&rendered(), "prometheusrule.yaml");
    obj["spec"]["groups"][0]["rules"][0]["for"] = json!("5 minutes");
    rules().assert_invalid("for: 5 minutes", &obj, "/spec/groups/0/rules/0/for");
}

#[test]
fn rule_expr_is_int_or_string() {
    let mut obj = object(&rendered(), "prometheusrule.yaml");
    obj["spec"]["groups"][0]["rules"][0]["expr"] = json!(1);
    rules().assert_valid("expr: 1", &obj);
    obj["spec"]["groups"][0]["rules"][0]["expr"] = json!(true);
    rules().assert_invalid("expr: true", &obj, "/spec/groups/0/rules/0/expr");
}

#[test]
fn scrapeconfig_with_targets_as_a_string_fails() {
    let mut obj = object(&rendered(), "scrapeconfig-hakube.yaml");
    obj["spec"]["staticConfigs"][0]["targets"] = json!("10.1.1.1:9468");
    scrapes().assert_invalid("targets string", &obj, "/spec/staticConfigs/0/targets");
}

#[test]
fn object_for_another_kind_fails() {
    let obj = object(&rendered(), "scrapeconfig-hakube.yaml");
    monitors().assert_invalid("a ScrapeConfig as ServiceMonitor", &obj, "the CRD");
}
