//! The backup archive: one uncompressed tar file, `manifest.json` first, then the snapshot, the
//! spec, the operator state and the load balancers' live configs. The manifest lists every other
//! file with its size, mode and SHA-256, so a damaged or edited archive is found before use.

pub use super::check::{Check, CheckKind};
use super::snapshot::{Trailer, TrailerHasher};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What the manifest's `format` says; a reader refuses any other.
pub const FORMAT: &str = "hakube-backup/1";
pub const MANIFEST: &str = "manifest.json";
pub const SNAPSHOT: &str = "snapshot.db";
/// Archive file names end with this.
pub const EXT: &str = ".tar";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub cluster: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_unix: u64,
    pub hakube_version: String,
    pub source: Source,
    pub identity: Identity,
    pub snapshot: SnapshotInfo,
    /// Every file of the archive but the manifest.
    pub files: Vec<FileEntry>,
    pub load_balancers: Vec<LbConfigs>,
    pub verification: Verification,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Taken by `hakube backup` through etcd's snapshot API.
    Live,
    /// An existing snapshot file packaged with `--from-snapshot`.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub kind: SourceKind,
    pub member: Option<String>,
    pub endpoint: Option<String>,
    /// Hex, as etcdctl prints it.
    pub member_id: Option<String>,
    pub etcd_cluster_id: Option<String>,
    pub etcd_version: Option<String>,
    pub was_leader: Option<bool>,
    pub file: Option<String>,
}

impl Source {
    /// A snapshot file packaged as it is.
    pub fn file(path: &Path) -> Source {
        Source {
            kind: SourceKind::File,
            member: None,
            endpoint: None,
            member_id: None,
            etcd_cluster_id: None,
            etcd_version: None,
            was_leader: None,
            file: Some(path.display().to_string()),
        }
    }
}

/// What ties a backup to its cluster: the name, and the CAs of the operator state that built it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub etcd_ca_sha256: String,
    pub cluster_ca_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub size: u64,
    pub sha256: String,
    /// The store's revision in the snapshot.
    pub revision: i64,
    /// Live keys at that revision, read back from the trial restore.
    pub keys: u64,
    /// Whether `keys` was also read from the live cluster at the same revision.
    pub keys_cross_checked: bool,
    /// `etcdutl snapshot status`: bolt keys of every bucket and the store's hash.
    pub total_keys: u64,
    pub hash: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    /// Octal, as `stat -c %a` prints it.
    pub mode: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbConfigs {
    pub host: String,
    pub files: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    pub ok: bool,
    pub at: String,
    pub checks: Vec<Check>,
}

impl Verification {
    /// The first failed check, if any.
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }
}

/// A file to put into an archive.
pub struct Member {
    pub path: String,
    pub mode: u32,
    pub data: Data,
}

pub enum Data {
    Bytes(Vec<u8>),
    /// A file on disk with its known SHA-256 (the snapshot: hashed once, during verification).
    File {
        path: PathBuf,
        sha256: String,
    },
}

impl Member {
    pub fn bytes(path: impl Into<String>, mode: u32, data: Vec<u8>) -> Member {
        Member {
            path: path.into(),
            mode,
            data: Data::Bytes(data),
        }
    }

    /// Its manifest entry.
    pub fn entry(&self) -> Result<FileEntry> {
        let (size, sha256) = match &self.data {
            Data::Bytes(b) => (b.len() as u64, hex::encode(Sha256::digest(b))),
            Data::File { path, sha256 } => (
                std::fs::metadata(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .len(),
                sha256.clone(),
            ),
        };
        Ok(FileEntry {
            path: self.path.clone(),
            size,
            mode: format!("{:04o}", self.mode),
            sha256,
        })
    }
}

fn header(size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Write the archive to `dest` (created 0600): the manifest, then `members` in order. The file is
/// flushed to disk before this returns.
pub fn write(dest: &Path, manifest: &Manifest, members: &[Member]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
    let m = serde_json::to_vec_pretty(manifest)?;
    let mtime = manifest.created_unix;
    b.append_data(&mut header(m.len() as u64, 0o600, mtime), MANIFEST, &m[..])?;
    for mem in members {
        match &mem.data {
            Data::Bytes(d) => b.append_data(
                &mut header(d.len() as u64, mem.mode, mtime),
                &mem.path,
                &d[..],
            )?,
            Data::File { path, .. } => {
                let f = std::fs::File::open(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let len = f.metadata()?.len();
                b.append_data(&mut header(len, mem.mode, mtime), &mem.path, f)?;
            }
        }
    }
    let w = b.into_inner().context("finishing the archive")?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
        .with_context(|| format!("flushing {}", dest.display()))?;
    Ok(())
}

/// Why an archive cannot be read at all.
fn damaged(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is truncated or damaged: {e}\n  help: use another backup; `hakube backup list` shows them",
        path.display()
    )
}

/// The manifest alone (the first entry: cheap, for listing).
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    let mut entries = a.entries().map_err(|e| damaged(path, e))?;
    let mut first = match entries.next() {
        Some(e) => e.map_err(|e| damaged(path, e))?,
        None => bail!("{} is empty or not a hakube backup", path.display()),
    };
    manifest_entry(path, &mut first)
}

fn manifest_entry<R: Read>(path: &Path, e: &mut tar::Entry<R>) -> Result<Manifest> {
    let name = e
        .path()
        .map_err(|x| damaged(path, x))?
        .display()
        .to_string();
    if name != MANIFEST {
        bail!(
            "{} is not a hakube backup: its first file is {name}, not {MANIFEST}",
            path.display()
        );
    }
    let mut buf = Vec::new();
    e.read_to_end(&mut buf).map_err(|x| damaged(path, x))?;
    let m: Manifest = serde_json::from_slice(&buf)
        .with_context(|| format!("{}: {MANIFEST} is not a valid manifest", path.display()))?;
    if m.format != FORMAT {
        bail!(
            "{}: unknown backup format {:?} (this hakube reads {FORMAT})",
            path.display(),
            m.format
        );
    }
    Ok(m)
}

/// An archive read in full: the manifest, where the snapshot was extracted, the small files, and
/// every way the files differ from the manifest.
pub struct Opened {
    pub manifest: Manifest,
    pub snapshot: PathBuf,
    /// The snapshot's trailer, checked while it was extracted.
    pub trailer: Option<Trailer>,
    pub files: BTreeMap<String, Vec<u8>>,
    pub mismatches: Vec<String>,
}

/// Read every file, extract the snapshot into `work` (hashing as it goes), and compare each file
/// with the manifest.
pub fn open(path: &Path, work: &Path) -> Result<Opened> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut a = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut entries = a.entries().map_err(|e| damaged(path, e))?;
    let manifest = match entries.next() {
        Some(e) => manifest_entry(path, &mut e.map_err(|x| damaged(path, x))?)?,
        None => bail!("{} is empty or not a hakube backup", path.display()),
    };
    let snapshot = work.join(SNAPSHOT);
    let mut found: Vec<FileEntry> = Vec::new();
    let mut files = BTreeMap::new();
    let mut trailer = None;
    for e in entries {
        let mut e = e.map_err(|x| damaged(path, x))?;
        let name = e
            .path()
            .map_err(|x| damaged(path, x))?
            .display()
            .to_string();
        let mode = e.header().mode().map_err(|x| damaged(path, x))?;
        let (size, sha256) = if name == SNAPSHOT {
            let mut out = std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&snapshot)
                    .with_context(|| format!("creating {}", snapshot.display()))?,
            );
            let (t, n) = extract(&mut e, &mut out).map_err(|x| damaged(path, x))?;
            out.flush()?;
            if n != e.size() {
                return Err(damaged(path, ends_inside(&name, n, e.size())));
            }
            let r = (t.size, t.sha256.clone());
            trailer = Some(t);
            r
        } else {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map_err(|x| damaged(path, x))?;
            if buf.len() as u64 != e.size() {
                return Err(damaged(
                    path,
                    ends_inside(&name, buf.len() as u64, e.size()),
                ));
            }
            let r = (buf.len() as u64, hex::encode(Sha256::digest(&buf)));
            files.insert(name.clone(), buf);
            r
        };
        found.push(FileEntry {
            path: name,
            size,
            mode: format!("{:04o}", mode & 0o7777),
            sha256,
        });
    }
    let mismatches = compare(&manifest.files, &found);
    Ok(Opened {
        manifest,
        snapshot,
        trailer,
        files,
        mismatches,
    })
}

fn ends_inside(name: &str, got: u64, want: u64) -> String {
    format!("the archive ends inside {name} ({got} of {want} bytes)")
}

/// Copy a tar entry to `w`, hashing it and checking etcd's trailer on the way.
/// Returns the bytes copied too.
fn extract<R: Read>(e: &mut tar::Entry<R>, w: &mut impl Write) -> std::io::Result<(Trailer, u64)> {
    let mut h = TrailerHasher::new(e.size());
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = e.read(&mut buf)?;
        if k == 0 {
            return Ok((h.finish(), n));
        }
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// Every difference between what the manifest lists and what the archive holds.
pub fn compare(listed: &[FileEntry], found: &[FileEntry]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for f in found {
        *seen.entry(f.path.as_str()).or_default() += 1;
        match listed.iter().find(|l| l.path == f.path) {
            None => out.push(format!(
                "{} is in the archive but not in the manifest",
                f.path
            )),
            Some(l) if l.size != f.size => out.push(format!(
                "{}: {} bytes, the manifest says {}",
                f.path, f.size, l.size
            )),
            Some(l) if l.sha256 != f.sha256 => out.push(format!(
                "{}: sha256 {}…, the manifest says {}…",
                f.path,
                &f.sha256[..12],
                &l.sha256[..l.sha256.len().min(12)]
            )),
            Some(l) if l.mode != f.mode => out.push(format!(
                "{}: mode {}, the manifest says {}",
                f.path, f.mode, l.mode
            )),
            Some(_) => {}
        }
    }
    for l in listed {
        match seen.get(l.path.as_str()) {
            None => out.push(format!(
                "{} is in the manifest but missing from the archive",
                l.path
            )),
            Some(n) if *n > 1 => out.push(format!("{} is in the archive {n} times", l.path)),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            cluster: "c1".into(),
            created_at: "2026-11-26T10:00:00Z".into(),
            created_unix: 1_795_600_000,
            hakube_version: "0.1.0".into(),
            source: Source::file(Path::new("x.db")),
            identity: Identity {
                etcd_ca_sha256: "a".into(),
                cluster_ca_sha256: "b".into(),
            },
            snapshot: SnapshotInfo {
                size: 0,
                sha256: String::new(),
                revision: 1,
                keys: 0,
                keys_cross_checked: false,
                total_keys: 0,
                hash: 0,
            },
            files,
            load_balancers: vec![],
            verification: Verification::default(),
            warnings: vec![],
        }
    }

    fn build(
        dir: &Path,
        name: &str,
        members: &[Member],
        tamper: impl Fn(&mut Manifest),
    ) -> PathBuf {
        let mut m = manifest(members.iter().map(|x| x.entry().unwrap()).collect());
        tamper(&mut m);
        let p = dir.join(name);
        write(&p, &m, members).unwrap();
        p
    }

    fn members() -> Vec<Member> {
        vec![
            Member::bytes(SNAPSHOT, 0o600, b"snapshot bytes".to_vec()),
            Member::bytes("state/pki/etcd/ca.key", 0o600, b"key".to_vec()),
            Member::bytes("spec/cluster.yaml", 0o644, b"spec".to_vec()),
        ]
    }

    #[test]
    fn a_written_archive_matches_its_manifest_and_keeps_modes() {
        let t = tempfile::tempdir().unwrap();
        let p = build(t.path(), "a.tar", &members(), |_| {});
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_manifest(&p).unwrap().cluster, "c1");
        let w = tempfile::tempdir().unwrap();
        let o = open(&p, w.path()).unwrap();
        assert!(o.mismatches.is_empty(), "{:?}", o.mismatches);
        assert_eq!(std::fs::read(&o.snapshot).unwrap(), b"snapshot bytes");
        assert_eq!(o.files["spec/cluster.yaml"], b"spec");
        let key = o.manifest.files.iter().find(|f| f.path.ends_with("ca.key"));
        assert_eq!(key.unwrap().mode, "0600");
    }

    #[test]
    fn a_manifest_that_does_not_match_its_files_is_found() {
        let t = tempfile::tempdir().unwrap();
        let w = tempfile::tempdir().unwrap();
        let wrong_sum = build(t.path(), "sum.tar", &members(), |m| {
            m.files[0].sha256 = "0".repeat(64);
        });
        let o = open(&wrong_sum, w.path()).unwrap();
        assert_eq!(o.mismatches.len(), 1, "{:?}", o.mismatches);
        assert!(
            o.mismatches[0].starts_with("snapshot.db: sha256"),
            "{:?}",
            o.mismatches
        );

        let missing = build(t.path(), "missing.tar", &members(), |m| {
            m.files.push(FileEntry {
                path: "lb/lb1/haproxy.cfg".into(),
                size: 1,
                mode: "0644".into(),
                sha256: "0".repeat(64),
            });
        });
        let o = open(&missing, w.path()).unwrap();
        assert!(
            o.mismatches[0].contains("missing from the archive"),
            "{:?}",
            o.mismatches
        );

        let extra = build(t.path(), "extra.tar", &members(), |m| {
            m.files.pop();
        });
        let o = open(&extra, w.path()).unwrap();
        assert!(
            o.mismatches[0].contains("not in the manifest"),
            "{:?}",
            o.mismatches
        );

        let mode = build(t.path(), "mode.tar", &members(), |m| {
            m.files[1].mode = "0644".into();
        });
        let o = open(&mode, w.path()).unwrap();
        assert!(o.mismatches[0].contains("mode 0600"), "{:?}", o.mismatches);
    }

    #[test]
    fn a_flipped_byte_or_a_cut_archive_is_found() {
        let t = tempfile::tempdir().unwrap();
        let w = tempfile::tempdir().unwrap();
        let p = build(t.path(), "a.tar", &members(), |_| {});
        let bytes = std::fs::read(&p).unwrap();
        // The snapshot's content sits right after the manifest and the snapshot's header.
        let at = bytes
            .windows(14)
            .position(|x| x == b"snapshot bytes")
            .unwrap();
        let mut flipped = bytes.clone();
        flipped[at + 3] ^= 0x01;
        let f = t.path().join("flipped.tar");
        std::fs::write(&f, &flipped).unwrap();
        let o = open(&f, w.path()).unwrap();
        assert!(
            o.mismatches
                .iter()
                .any(|m| m.starts_with("snapshot.db: sha256"))
        );

        let cut = t.path().join("cut.tar");
        std::fs::write(&cut, &bytes[..at + 5]).unwrap();
        let e = open(&cut, w.path())
            .err()
            .expect("a cut archive is refused");
        assert!(format!("{e:#}").contains("truncated or damaged"), "{e:#}");

        let junk = t.path().join("junk.tar");
        std::fs::write(&junk, b"not a tar file at all").unwrap();
        assert!(read_manifest(&junk).is_err());
    }
}
