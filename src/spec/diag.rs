//! Diagnostics: every problem found in a spec, with where it is and how to fix it.

use super::source_map::{Location, SourceMap};
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Field path in the spec, for example `spec.hosts[2].address`.
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The source line the location points into, for display.
    #[serde(skip)]
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn new(severity: Severity, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            path: path.into(),
            message: message.into(),
            help: None,
            file: None,
            location: None,
            source_line: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Collects diagnostics while validating.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error(
        &mut self,
        path: impl Into<String>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.items
            .push(Diagnostic::new(Severity::Error, path, msg).help(help));
    }
    pub fn warn(
        &mut self,
        path: impl Into<String>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.items
            .push(Diagnostic::new(Severity::Warning, path, msg).help(help));
    }
    pub fn info(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.items.push(Diagnostic::new(Severity::Info, path, msg));
    }
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn count(&self, s: Severity) -> usize {
        self.items.iter().filter(|d| d.severity == s).count()
    }

    /// Attach file, line and column to every diagnostic, and sort them by position.
    pub fn locate(&mut self, file: &str, src: &str, map: &SourceMap) {
        let lines: Vec<&str> = src.lines().collect();
        for d in &mut self.items {
            d.file = Some(file.to_string());
            if d.location.is_none() {
                d.location = map.locate(&d.path);
            }
            if let Some(l) = d.location {
                d.source_line = lines.get(l.line.saturating_sub(1)).map(|s| s.to_string());
            }
        }
        self.items.sort_by_key(|d| {
            (
                std::cmp::Reverse(d.severity),
                d.location
                    .map(|l| (l.line, l.column))
                    .unwrap_or((usize::MAX, 0)),
            )
        });
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "note",
        };
        let at = match (&self.file, self.location) {
            (Some(file), Some(l)) => format!("{file}:{}:{}: ", l.line, l.column),
            (Some(file), None) => format!("{file}: "),
            _ => String::new(),
        };
        let path = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path)
        };
        writeln!(f, "{sev}: {at}{path}{}", self.message)?;
        if let (Some(line), Some(l)) = (&self.source_line, self.location) {
            let n = l.line.to_string();
            writeln!(f, "  {n} | {line}")?;
            writeln!(
                f,
                "  {} | {}^",
                " ".repeat(n.len()),
                " ".repeat(l.column.saturating_sub(1))
            )?;
        }
        if let Some(h) = &self.help {
            writeln!(f, "  help: {h}")?;
        }
        Ok(())
    }
}
