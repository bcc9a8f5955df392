//! The `cluster.yaml` spec: the raw document, its validation, and the typed cluster model.

pub mod backup;
pub mod calendar;
pub mod cluster;
pub mod diag;
pub mod family;
pub mod fields;
pub mod grammar;
pub mod limits;
pub mod model;
pub mod node_os;
pub mod ports;
pub mod source_map;
pub mod validate;
pub mod vrrp;

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
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the cluster spec {}: {e}\n  help: pass the spec with -f FILE, or run `hakube lab up` to create one",
            path.display()
        )
    })?;
    let src = text(&bytes).map_err(|why| {
        anyhow::anyhow!(
            "{} is not a cluster spec: {why}\n  help: a spec is a YAML text file; examples/seed.yaml is a complete one",
            path.display()
        )
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        std::path::PathBuf::from(".")
    } else {
        base
    };
    Ok(load_str(src, &path.display().to_string(), &base))
}

/// The file as text, or why it is not text.
fn text(bytes: &[u8]) -> Result<&str, String> {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err("it is UTF-16 text; save it as UTF-8".into());
    }
    let s = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "it is not UTF-8 text (byte {} is invalid), so probably a binary file",
            e.valid_up_to() + 1
        )
    })?;
    if let Some(i) = s.find('\0') {
        return Err(format!(
            "it holds a NUL byte (byte {}), so it is a binary file, not text",
            i + 1
        ));
    }
    Ok(s)
}

/// The YAML library's limits, raised so that a large cluster (100 000 hosts) still loads; the
/// defaults stop at 250 000 nodes.
fn options() -> serde_saphyr::Options {
    let mut opts = serde_saphyr::Options::default();
    opts.strict_booleans = true;
    // Every duplicate is reported by the source map, with both lines; parsing goes on so that
    // other problems are found in the same run.
    opts.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::FirstWins;
    let mut budget = opts.budget.clone().unwrap_or_default();
    budget.max_nodes = budget.max_nodes.max(4_000_000);
    budget.max_events = budget.max_events.max(8_000_000);
    opts.budget = Some(budget);
    opts
}

/// Validate spec text. `file` is only used in messages.
pub fn load_str(src: &str, file: &str, base_dir: &Path) -> Loaded {
    let map = SourceMap::build(src);
    let mut diagnostics = Diagnostics::default();
    let cluster = load_doc(src, &map, base_dir, &mut diagnostics);
    diagnostics.locate(file, src, &map);
    Loaded {
        cluster,
        diagnostics,
    }
}

fn load_doc(
    src: &str,
    map: &SourceMap,
    base_dir: &Path,
    diagnostics: &mut Diagnostics,
) -> Option<Cluster> {
    use source_map::Root;
    const START: &str = "start from examples/seed.yaml: a spec begins with `apiVersion: hakube.io/v1alpha1` and `kind: Cluster`";
    if map.syntax_error.is_none() {
        let what = match map.root {
            None => Some("the spec is empty: it holds no YAML, only whitespace or comments"),
            Some(Root::Scalar { null: true }) => Some("the spec is empty: its document is null"),
            Some(Root::Scalar { null: false }) => {
                Some("the spec is a single value, not a cluster description")
            }
            Some(Root::Sequence) => Some("the spec is a list, not a cluster description"),
            Some(Root::Mapping) => None,
        };
        if let Some(what) = what {
            diagnostics.error("", what, START);
            return None;
        }
    }
    // Only the first document is read; a second one with content is an error of its own, an
    // empty one (a trailing `---`) is harmless.
    let mut first = src;
    if let Some(l) = map.second_document {
        if map.second_document_has_content {
            let mut d = Diagnostic::new(
                Severity::Error,
                "",
                "a second YAML document starts here: hakube expects one cluster per file",
            )
            .help("put each cluster in its own file, or remove this `---` and everything after it");
            d.location = Some(l);
            diagnostics.items.push(d);
        }
        first = &src[..line_start(src, l.line)];
    }
    for dup in &map.duplicates {
        let k = &dup.key;
        let mut d = Diagnostic::new(
            Severity::Error,
            k.path(),
            format!(
                "`{}` is given twice in the same block, on line {} and on line {}",
                k.name, dup.first.line, k.location.line
            ),
        )
        .help("keep one of them: YAML allows each key once per block, and hakube would not know which value you meant");
        d.location = Some(k.location);
        diagnostics.items.push(d);
    }
    fields::unknown_fields(map, diagnostics);
    let doc: Result<model::Document, _> = serde_saphyr::from_str_with_options(first, options());
    match doc {
        Ok(doc) => {
            let (c, d) = validate::validate(&doc, base_dir);
            diagnostics.items.extend(d.items);
            if diagnostics.has_errors() { None } else { c }
        }
        Err(e) => {
            let d = parse_error(&e);
            // A misspelt required field is already reported with its right spelling.
            let misspelt = d
                .message
                .strip_prefix("missing field ")
                .map(|f| format!("did you mean {f}?"))
                .is_some_and(|hint| {
                    diagnostics
                        .items
                        .iter()
                        .any(|x| x.help.as_deref().is_some_and(|h| h.starts_with(&hint)))
                });
            if !misspelt {
                diagnostics.items.push(d);
            }
            None
        }
    }
}

/// Byte offset where 1-based `line` starts (the end of `src` past the last line).
fn line_start(src: &str, line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    src.match_indices('\n')
        .nth(line - 2)
        .map(|(i, _)| i + 1)
        .unwrap_or(src.len())
}

fn parse_error(e: &serde_saphyr::Error) -> Diagnostic {
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
    // The source map reports duplicates and extra documents in the user's terms; these are
    // the library's words for the same things, should a case slip past it.
    if msg.contains("DuplicateKeyPolicy") || msg.starts_with("duplicate mapping key") {
        d.message = "a key is given twice in the same block".into();
        d.help = Some("keep one of them: YAML allows each key once per block".into());
    } else if msg.contains("from_str_multiple") || msg.contains("multiple YAML documents") {
        d.message =
            "a second YAML document starts here: hakube expects one cluster per file".into();
        d.help = Some("put each cluster in its own file".into());
    } else if msg.starts_with("budget breached") {
        d.message = format!("the spec is too large for hakube to read ({msg})");
        d.help = Some("a spec holds at most 4 000 000 YAML nodes (about 400 000 hosts); split it, or look for a runaway generator".into());
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
    d
}
