//! One verification step of a backup and its verdict.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// Every file against the manifest.
    Checksums,
    /// The backup belongs to the spec's cluster.
    Identity,
    /// The SHA-256 etcd appends to a snapshot.
    Trailer,
    /// `etcdutl snapshot status`.
    Status,
    /// Live keys at the snapshot's revision, from the cluster the snapshot came from.
    LiveCount,
    /// `etcdutl snapshot restore` into a temporary folder, opened with etcd and read back.
    TrialRestore,
    /// The snapshot a restore copies: revision raised and marked compacted, proven by a second
    /// trial restore.
    Prepared,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub check: CheckKind,
    pub ok: bool,
    pub detail: String,
    pub ms: u128,
}

impl Check {
    /// One line for humans: verdict, check, time, detail.
    pub fn line(&self) -> String {
        format!(
            "{} {:?} ({:.1}s): {}",
            if self.ok { "ok  " } else { "FAIL" },
            self.check,
            self.ms as f64 / 1000.0,
            self.detail
        )
    }
}
