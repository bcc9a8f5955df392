//! Operator state: the folder `.hakube/<cluster>` next to the spec, holding both CAs, the leaf
//! certificates issued from them, the copy of kubeadm's CA, and the apply lock.
//!
//! Commands that build the cluster open it with [`State::open_or_init`] (created when missing);
//! `apply --dry-run` with [`State::plan`] (what is missing is made in memory, nothing is written);
//! commands that only look (status, doctor, drill) with [`State::open`], which refuses a missing
//! folder instead of minting a CA the live cluster would reject, and writes nothing.

use crate::pki::{self, Ca, Usage};
use crate::render::{self, Secrets};
use crate::spec::{Bootstrap, Cluster};
use anyhow::{Context, Result, bail};
use sha2::Digest;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How a command may touch the state folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Creates what is missing and records what it issues (apply, render).
    Write,
    /// Reads what exists; what is missing is made in memory and never written (dry-run).
    Plan,
    /// Reads only; a missing folder is an error (status, doctor, drill).
    Read,
}

/// The cluster's operator state.
pub struct State {
    dir: PathBuf,
    access: Access,
    pub etcd_ca: Ca,
    pub cluster_ca: Ca,
    stats_password_file: PathBuf,
    bootstrap: Bootstrap,
    /// Leaves to issue again this run (`etcd/master1-server`, ...), each once.
    renew: BTreeSet<String>,
    renewed: Mutex<BTreeSet<String>>,
    leaf_validity: std::time::Duration,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl State {
    /// The state folder of a cluster: `.hakube/<name>` next to its spec.
    pub fn dir_of(c: &Cluster) -> PathBuf {
        c.base_dir.join(".hakube").join(&c.name)
    }

    fn missing(c: &Cluster) -> Vec<PathBuf> {
        let dir = Self::dir_of(c);
        [Self::etcd_ca_dir(&dir), Self::cluster_ca_dir(&dir)]
            .iter()
            .flat_map(|d| [d.join(pki::CA_CERT), d.join(pki::CA_KEY)])
            .filter(|p| !p.exists())
            .collect()
    }

    /// Whether the cluster's CAs exist in its state folder.
    pub fn exists(c: &Cluster) -> bool {
        Self::missing(c).is_empty()
    }

    /// For commands that only look: the state must exist; nothing is written.
    pub fn open(c: &Cluster) -> Result<State> {
        let missing = Self::missing(c);
        if !missing.is_empty() {
            bail!(
                "no operator state for cluster {} next to this spec: {} is missing\n  \
                 help: run `hakube apply -f SPEC` first, or point -f at the spec that apply used \
                 (the .hakube folder next to it holds the cluster's CAs)",
                c.name,
                missing[0].display(),
            );
        }
        Self::build(c, Access::Read)
    }

    /// For commands that build the cluster: missing CAs are created (0600 keys).
    pub fn open_or_init(c: &Cluster) -> Result<State> {
        Self::build(c, Access::Write)
    }

    /// For `apply --dry-run`: like [`State::open_or_init`], but what is missing stays in memory.
    pub fn plan(c: &Cluster) -> Result<State> {
        Self::build(c, Access::Plan)
    }

    fn build(c: &Cluster, access: Access) -> Result<State> {
        let dir = Self::dir_of(c);
        let ca = |d: PathBuf, cn: String| -> Result<Ca> {
            match access {
                Access::Write => Ca::load_or_create(&d, &cn),
                Access::Read => Ca::load(&d),
                Access::Plan if d.join(pki::CA_CERT).exists() || d.join(pki::CA_KEY).exists() => {
                    Ca::load(&d)
                }
                Access::Plan => Ok(Ca::generate(&d, &cn)?.0),
            }
        };
        Ok(State {
            etcd_ca: ca(Self::etcd_ca_dir(&dir), format!("{} etcd CA", c.name))?,
            cluster_ca: ca(Self::cluster_ca_dir(&dir), format!("{} cluster CA", c.name))?,
            stats_password_file: c.lb.stats.password_file.clone(),
            bootstrap: c.kubernetes.bootstrap,
            renew: BTreeSet::new(),
            renewed: Mutex::new(BTreeSet::new()),
            leaf_validity: c.pki.certificate_validity,
            access,
            dir,
        })
    }

    fn etcd_ca_dir(dir: &Path) -> PathBuf {
        dir.join("pki").join("etcd")
    }

    fn cluster_ca_dir(dir: &Path) -> PathBuf {
        dir.join("pki").join("cluster")
    }

    /// Issue these leaves again (once each) instead of reusing them; with [`Access::Write`] the
    /// old ones are moved to `pki/retired/<time>/`, never deleted.
    pub fn renewing(mut self, names: BTreeSet<String>) -> State {
        self.renew = names;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Where the copy of kubeadm's cluster CA is kept (kubeadm clusters).
    pub fn kubeadm_ca_path(&self) -> PathBuf {
        self.dir.join("pki").join("kubernetes-ca.crt")
    }

    /// Keep kubeadm's CA next to the spec, so that status can verify the API servers.
    pub fn save_kubeadm_ca(&self, pem: &str) -> Result<()> {
        if self.access != Access::Write {
            return Ok(());
        }
        pki::write_public(&self.kubeadm_ca_path(), pem)
    }

    fn formed_path(&self) -> PathBuf {
        self.dir.join("etcd-formed")
    }

    /// Whether apply has seen this cluster's etcd formed (healthy) at least once: from then on
    /// an empty data dir means lost data, not a member that has yet to start.
    pub fn etcd_formed(&self) -> bool {
        self.formed_path().exists()
    }

    pub fn record_etcd_formed(&self) -> Result<()> {
        if self.access != Access::Write || self.etcd_formed() {
            return Ok(());
        }
        pki::write_public(
            &self.formed_path(),
            "etcd formed; from now on apply refuses to start members without data while no \
             member answers\n",
        )
    }

    /// The CA that signs what the API servers serve: hakube's cluster CA for the lab API server,
    /// kubeadm's own (copied by apply) otherwise; `None` before kubeadm has run.
    pub fn api_ca_pem(&self) -> Option<String> {
        match self.bootstrap {
            Bootstrap::Lab => Some(self.cluster_ca.cert_pem().to_string()),
            Bootstrap::Kubeadm => std::fs::read_to_string(self.kubeadm_ca_path()).ok(),
        }
    }

    /// Secrets for rendering. Written only with [`Access::Write`]; a dry-run on a new cluster
    /// plans with a password it does not keep, and a reader gets an error when there is none.
    pub fn secrets(&self) -> Result<Secrets> {
        let p = &self.stats_password_file;
        let stats_password = match self.access {
            Access::Write => render::read_or_create_secret(p)?,
            Access::Plan if !p.exists() => render::random_secret(),
            _ => render::read_secret(p)?,
        };
        Ok(Secrets { stats_password })
    }

    /// The stats password, when there is one (observers).
    pub fn stats_password(&self) -> Option<String> {
        render::read_secret(&self.stats_password_file).ok()
    }

    /// A leaf kept in the state folder, issued again only when missing or its SANs changed, so
    /// that a re-apply changes nothing. Only [`Access::Write`] records what it issues.
    pub fn leaf(
        &self,
        ca: &Ca,
        sub: &str,
        name: &str,
        cn: &str,
        sans: &[String],
        usage: Usage,
    ) -> Result<Leaf> {
        let dir = self.dir.join("pki").join(sub);
        let (crt, key, sidecar) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.sans")),
        );
        let want = sans.join(",");
        let id = format!("{sub}/{name}");
        let renew = self.renew.contains(&id)
            && !self
                .renewed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id);
        if !renew
            && let (Ok(cert_pem), Ok(key_pem), Ok(s)) = (
                std::fs::read_to_string(&crt),
                std::fs::read_to_string(&key),
                std::fs::read_to_string(&sidecar),
            )
            && s == want
        {
            return Ok(Leaf { cert_pem, key_pem });
        }
        if renew {
            if self.access == Access::Write {
                self.retire(sub, &[&crt, &key, &sidecar])?;
            }
            self.renewed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id);
        }
        if self.access != Access::Write {
            let (cert_pem, key_pem) = ca.issue(cn, sans, usage, self.leaf_validity)?;
            return Ok(Leaf { cert_pem, key_pem });
        }
        ca.issue_to(&dir, name, cn, sans, usage, self.leaf_validity)?;
        pki::write_public(&sidecar, &want)?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(Leaf {
            cert_pem: read(&crt)?,
            key_pem: read(&key)?,
        })
    }

    /// Move a leaf's files to `pki/retired/<time>/<sub>/`.
    fn retire(&self, sub: &str, files: &[&Path]) -> Result<()> {
        let stamp = crate::drill::stamp(std::time::SystemTime::now());
        let to = self.dir.join("pki").join("retired").join(stamp).join(sub);
        for f in files.iter().filter(|f| f.exists()) {
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            let dest = to.join(f.file_name().unwrap_or_default());
            std::fs::rename(f, &dest)
                .with_context(|| format!("moving {} to {}", f.display(), dest.display()))?;
        }
        Ok(())
    }

    /// hakube's own etcd client certificate (status, membership changes, snapshots).
    pub fn operator_etcd_tls(&self) -> Result<crate::etcd::Tls> {
        let leaf = self.leaf(
            &self.etcd_ca,
            "etcd",
            "hakube-operator",
            "hakube-operator",
            &[],
            Usage::Client,
        )?;
        Ok(crate::etcd::Tls {
            ca_pem: self.etcd_ca.cert_pem().to_string(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        })
    }

    /// What apply records on each control plane, so that a mismatch can say which state folder
    /// the cluster was built from.
    pub fn marker(&self) -> Marker {
        Marker {
            state_dir: self.dir.display().to_string(),
            operator_host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            etcd_ca_sha256: sha256_hex(self.etcd_ca.cert_pem()),
            cluster_ca_sha256: sha256_hex(self.cluster_ca.cert_pem()),
        }
    }

    /// Take the apply lock (creating the state folder): one apply per cluster at a time.
    pub fn lock(c: &Cluster) -> Result<Lock> {
        let dir = Self::dir_of(c);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("apply.lock");
        match try_lock(&path)? {
            Ok(l) => Ok(l),
            Err(e) => bail!(
                "another hakube apply is running on cluster {} ({}: {e})\n  help: wait for it to finish",
                c.name,
                path.display()
            ),
        }
    }
}

/// An exclusive `flock` on `path` (created when missing), or why another process holds it.
pub fn try_lock(path: &Path) -> Result<std::result::Result<Lock, nix::Error>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(Lock)
            .map_err(|(_, e)| e),
    )
}

/// A lock (apply's, backup's): released by the kernel when the process dies, so a killed run
/// never leaves it behind.
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Which operator state built a cluster, as recorded on its control planes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub state_dir: String,
    pub operator_host: String,
    pub etcd_ca_sha256: String,
    pub cluster_ca_sha256: String,
}

/// Where the marker lives on each control plane.
pub const MARKER_PATH: &str = "/etc/hakube/operator-state.json";

/// The SHA-256 of a file's text, as `sha256sum` prints it.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(dir: &Path) -> Cluster {
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed.yaml"),
        )
        .unwrap();
        let loaded = crate::spec::load_str(&src, "seed.yaml", dir);
        loaded.cluster.expect("the seed spec is valid")
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn open_refuses_a_missing_state_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cluster(tmp.path());
        let err = State::open(&c).err().expect("no state yet").to_string();
        assert!(err.contains("no operator state"), "{err}");
        assert!(err.contains("run `hakube apply"), "{err}");
        assert!(files_under(tmp.path()).is_empty());
    }

    #[test]
    fn plan_writes_nothing_even_when_it_issues() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cluster(tmp.path());
        let s = State::plan(&c).unwrap();
        let tls = s.operator_etcd_tls().unwrap();
        assert!(tls.cert_pem.contains("BEGIN CERTIFICATE"));
        s.secrets().unwrap();
        assert!(
            files_under(tmp.path()).is_empty(),
            "{:?}",
            files_under(tmp.path())
        );
    }

    #[test]
    fn write_then_open_sees_the_same_cas_and_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cluster(tmp.path());
        let w = State::open_or_init(&c).unwrap();
        let first = w.operator_etcd_tls().unwrap();
        let r = State::open(&c).unwrap();
        assert_eq!(w.etcd_ca.cert_pem(), r.etcd_ca.cert_pem());
        assert_eq!(r.operator_etcd_tls().unwrap().cert_pem, first.cert_pem);
        assert_eq!(w.marker(), r.marker());
        // A reader that has to issue (SANs changed) keeps it to itself.
        let before = files_under(tmp.path()).len();
        r.leaf(
            &r.etcd_ca,
            "etcd",
            "x",
            "x",
            &["x.local".into()],
            Usage::Client,
        )
        .unwrap();
        assert_eq!(files_under(tmp.path()).len(), before);
    }
}
