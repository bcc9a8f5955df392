//! How a command reports: for people, or as JSON for programs (JSON on stdout, diagnostics on
//! stderr).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Load a spec for a command that acts on the cluster: the cluster, or `None` after printing
/// every diagnostic and `<file>: the spec has errors; <consequence>` on stderr (exit 2).
pub fn load_spec(
    file: &std::path::Path,
    consequence: &str,
) -> anyhow::Result<Option<crate::spec::Cluster>> {
    let loaded = crate::spec::load_file(file)?;
    if loaded.cluster.is_none() {
        for d in &loaded.diagnostics.items {
            eprintln!("{d}");
        }
        eprintln!("{}: the spec has errors; {consequence}", file.display());
    }
    Ok(loaded.cluster)
}

/// Apply's (and upgrade's) events, rendered for people or as JSON lines on stdout.
pub fn events(json: bool) -> std::sync::Arc<dyn crate::apply::report::Reporter> {
    if json {
        std::sync::Arc::new(JsonEvents)
    } else {
        std::sync::Arc::new(TextEvents)
    }
}

/// Apply's events as JSON lines on stdout.
struct JsonEvents;

impl crate::apply::report::Reporter for JsonEvents {
    fn event(&self, e: &crate::apply::report::Event<'_>) {
        use std::io::Write;
        let line = serde_json::to_string(e).unwrap_or_default();
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

/// Apply's events as text: `[phase] mark host: message`, diffs indented below.
struct TextEvents;

impl crate::apply::report::Reporter for TextEvents {
    fn event(&self, e: &crate::apply::report::Event<'_>) {
        use crate::apply::report::Kind;
        use std::io::Write;
        let mark = match e.kind {
            Kind::Change => "~",
            Kind::Command => "$",
            Kind::Wait => "…",
            Kind::Ok => "✓",
            Kind::Warn => "!",
            Kind::Info => " ",
        };
        let h = if e.host.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.host)
        };
        // One lock per event, so that lines from hosts running in parallel never interleave.
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "[{:<13}] {mark} {h}{}", e.phase, e.message);
        for line in e.diff.into_iter().flat_map(str::lines) {
            let _ = writeln!(o, "                    {line}");
        }
    }
}
