//! Renders every config file each host needs from the validated [`Cluster`].

use crate::spec::Cluster;
use serde::Serialize;
use sha2::Digest;
use std::path::Path;

/// One file for one host. `host` is `_cluster` for cluster-wide files (monitoring).
#[derive(Debug, Clone, Serialize)]
pub struct RenderedFile {
    pub host: String,
    /// Absolute path on the host.
    pub path: String,
    pub mode: u32,
    #[serde(skip)]
    pub content: String,
    /// Holds a secret: never printed, written 0600.
    pub secret: bool,
    /// Services to reload or restart when this file changes.
    pub services: Vec<String>,
}

impl RenderedFile {
    pub fn sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.content.as_bytes()))
    }
}

pub struct Secrets {
    pub stats_password: String,
}

impl Secrets {
    pub fn load_or_create(_c: &Cluster) -> anyhow::Result<Secrets> {
        Ok(Secrets { stats_password: String::new() })
    }
}

pub fn render(_c: &Cluster, _s: &Secrets) -> anyhow::Result<Vec<RenderedFile>> {
    Ok(Vec::new())
}

pub fn write_tree(_files: &[RenderedFile], _out: &Path) -> anyhow::Result<usize> {
    Ok(0)
}
