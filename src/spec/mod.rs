//! The `cluster.yaml` spec: the raw document, its validation, and the typed cluster model.

pub mod cluster;
pub mod diag;
pub mod model;
pub mod ports;
pub mod source_map;
pub mod validate;

pub use cluster::*;
pub use diag::{Diagnostic, Diagnostics, Severity};

use source_map::{Location, SourceMap};
use std::path::Path;

/// The result of loading a spec: the cluster if it is valid, and every diagnostic.
pub struct Loaded {
    pub cluster: Option<Cluster>,
    pub diagnostics: Diagnostics,
}

/// Read and validate a spec file. I/O problems are errors; spec problems are diagnostics.
pub fn load_file(path: &Path) -> anyhow::Result<Loaded> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the cluster spec {}: {e}\n  help: pass the spec with -f FILE, or run `hakube lab up` to create one",
            path.display()
        )
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        std::path::PathBuf::from(".")
    } else {
        base
    };
    Ok(load_str(&src, &path.display().to_string(), &base))
}

/// Validate spec text. `file` is only used in messages.
pub fn load_str(src: &str, file: &str, base_dir: &Path) -> Loaded {
    let map = SourceMap::build(src);
    let mut diagnostics = Diagnostics::default();
    let mut opts = serde_saphyr::Options::default();
    opts.strict_booleans = true;
    let doc: Result<model::Document, _> = serde_saphyr::from_str_with_options(src, opts);
    let cluster = match doc {
        Ok(doc) => {
            let (c, d) = validate::validate(&doc, base_dir);
            diagnostics = d;
            c
        }
        Err(e) => {
            diagnostics.items.push(parse_error(&e, &map));
            None
        }
    };
    diagnostics.locate(file, src, &map);
    Loaded {
        cluster,
        diagnostics,
    }
}

fn parse_error(e: &serde_saphyr::Error, map: &SourceMap) -> Diagnostic {
    let location = e.location().map(|l| Location {
        line: l.line() as usize,
        column: l.column() as usize,
    });
    let text = e.without_snippet().to_string();
    // serde-saphyr appends " at line N column M"; we print the location ourselves.
    let msg = text
        .split(" at line ")
        .next()
        .unwrap_or(&text)
        .trim()
        .to_string();
    let mut d = Diagnostic::new(Severity::Error, "", msg.clone());
    d.location = location;
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        let expected = tail
            .split_once("expected one of ")
            .or_else(|| tail.split_once("expected "))
            .map(|x| x.1)
            .unwrap_or("");
        let candidates: Vec<&str> = expected
            .split(", ")
            .map(|s| s.trim().trim_matches('`'))
            .filter(|s| !s.is_empty() && !s.contains(' '))
            .collect();
        d.message = format!("unknown field `{field}`");
        d.help = Some(match validate::did_you_mean(field, &candidates) {
            Some(s) => format!("did you mean `{s}`? Fields here: {}", candidates.join(", ")),
            None if candidates.is_empty() => "remove it".into(),
            None => format!("remove it; fields here: {}", candidates.join(", ")),
        });
    } else if msg.contains("expected sequence") {
        d.help = Some("this field takes a list, for example `roles: [control-plane]` or one `- item` per line".into());
    } else if msg.contains("expected mapping") || msg.contains("expected struct") {
        d.help = Some(
            "this field takes a block of fields (`key: value` lines indented under it)".into(),
        );
    } else if msg.starts_with("missing field") {
        d.help = Some(
            "add the field; see the spec reference in the README or examples/seed.yaml".into(),
        );
    } else {
        d.help =
            Some("fix the YAML at this spot; see examples/seed.yaml for a complete spec".into());
    }
    let _ = map;
    d
}
