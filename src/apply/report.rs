//! What apply tells its caller as it goes. The library never prints: it hands each event to a
//! [`Reporter`], and the CLI renders them as text or JSON lines.

use serde::Serialize;

/// The kind of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// What a phase is about to do, or a remark.
    Info,
    /// A file was (or would be) written.
    Change,
    /// A command was (or would be) run.
    Command,
    /// Waiting for a state (or, in dry-run, the wait that would happen).
    Wait,
    /// A state was reached.
    Ok,
    /// Something the operator should read.
    Warn,
}

/// One thing apply did or would do.
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "event")]
    pub kind: Kind,
    pub phase: &'a str,
    /// Empty for cluster-wide events.
    pub host: &'a str,
    pub message: &'a str,
    /// A unified diff (dry-run), secrets shown only by size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<&'a str>,
}

/// Receives apply's events, possibly from several hosts' tasks at once.
pub trait Reporter: Send + Sync {
    fn event(&self, e: &Event<'_>);
}

/// Drops every event (tests, callers that only want the summary).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Keeps every event as an owned line `phase|host|kind|message`, for tests.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<String>>);

impl Reporter for Recorder {
    fn event(&self, e: &Event<'_>) {
        let line = format!("{}|{}|{:?}|{}", e.phase, e.host, e.kind, e.message);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
