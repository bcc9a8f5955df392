//! How a command reports: for people, or as JSON for programs (JSON on stdout, diagnostics on
//! stderr).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}
