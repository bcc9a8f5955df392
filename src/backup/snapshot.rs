//! The etcd snapshot itself: pulled through etcd's Maintenance API, and proven by three checks on
//! the operator machine: the SHA-256 trailer etcd appends, `etcdutl snapshot status`, and a trial
//! restore opened with a real etcd on loopback and read back.

use super::check::{Check, CheckKind};
use crate::etcd::Tls;
use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, GetOptions};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Size of the digest etcd appends to a snapshot from its API.
const TRAILER: u64 = 32;

/// The etcd tools on the operator machine.
#[derive(Debug, Clone)]
pub struct Tools {
    pub etcd: PathBuf,
    pub etcdutl: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Tools> {
        let get = |name: &str| {
            crate::lab::prereq::find(name).with_context(|| {
                format!(
                    "{name} is not installed on this machine; hakube verifies every backup with etcd's own tools\n  \
                     help: install etcd, etcdctl and etcdutl of your cluster's etcd release (`bash scripts/setup.sh` \
                     installs 3.5.1 into /usr/local/bin)"
                )
            })
        };
        Ok(Tools {
            etcd: get("etcd")?,
            etcdutl: get("etcdutl")?,
        })
    }
}

/// The result of reading a snapshot file once: its SHA-256, and whether etcd's trailer matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub size: u64,
    /// Of the whole file, trailer included (what the manifest lists).
    pub sha256: String,
    /// `Err` says why the trailer is missing or wrong.
    pub verdict: Result<(), String>,
}

/// Hash `size` bytes from `r`: the whole, and everything but the last 32 bytes, which must be
/// the SHA-256 of the rest (what etcd's snapshot API appends; `etcdutl snapshot restore`
/// checks the same).
pub fn trailer_of(mut r: impl Read, size: u64) -> std::io::Result<Trailer> {
    let mut h = TrailerHasher::new(size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..k]);
    }
}

/// [`trailer_of`] fed chunk by chunk, so that a copy can check the trailer as it goes.
pub struct TrailerHasher {
    size: u64,
    at: u64,
    whole: Sha256,
    body: Sha256,
    tail: Vec<u8>,
}

impl TrailerHasher {
    /// For a file of `size` bytes.
    pub fn new(size: u64) -> TrailerHasher {
        TrailerHasher {
            size,
            at: 0,
            whole: Sha256::new(),
            body: Sha256::new(),
            tail: Vec::with_capacity(TRAILER as usize),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        let body_len = self.size.saturating_sub(TRAILER);
        self.whole.update(chunk);
        let in_body = body_len.saturating_sub(self.at).min(chunk.len() as u64) as usize;
        self.body.update(&chunk[..in_body]);
        if self.at + chunk.len() as u64 > body_len {
            self.tail.extend_from_slice(&chunk[in_body..]);
        }
        self.at += chunk.len() as u64;
    }

    pub fn finish(self) -> Trailer {
        let (size, at) = (self.size, self.at);
        let verdict = if at != size {
            Err(format!("read {at} bytes, expected {size}"))
        } else if size < TRAILER || size % 512 != TRAILER {
            Err(format!(
                "no SHA-256 trailer: {size} bytes is not a multiple of 512 plus 32, so the snapshot is \
                 truncated (or was not taken through etcd's snapshot API)"
            ))
        } else {
            let want = hex::encode(&self.tail);
            let got = hex::encode(self.body.finalize());
            if want == got {
                Ok(())
            } else {
                Err(format!(
                    "the SHA-256 of the data ({}…) is not the one etcd appended ({}…): the snapshot is corrupt",
                    &got[..12],
                    &want[..12]
                ))
            }
        };
        Trailer {
            size,
            sha256: hex::encode(self.whole.finalize()),
            verdict,
        }
    }
}

pub fn trailer(path: &Path) -> Result<Trailer> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    trailer_of(std::io::BufReader::new(f), size)
        .with_context(|| format!("reading {}", path.display()))
}

/// `etcdutl snapshot status -w json`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub hash: u64,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

pub async fn status(tools: &Tools, path: &Path) -> Result<Status> {
    let out = tokio::process::Command::new(&tools.etcdutl)
        .args(["snapshot", "status", "-w", "json"])
        .arg(path)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", tools.etcdutl.display()))?;
    if !out.status.success() {
        bail!(
            "etcdutl snapshot status failed: {}",
            crate::transport::tail(&String::from_utf8_lossy(&out.stderr), 4)
        );
    }
    let mut st: Status = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "etcdutl snapshot status printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })?;
    // etcdutl says 0 for a store that never had a key; etcd serves such a store at revision 1.
    st.revision = st.revision.max(1);
    Ok(st)
}

/// What a trial restore read back.
#[derive(Debug, Clone)]
pub struct Trial {
    pub revision: i64,
    pub keys: u64,
    /// The SHA-256 of the prepared snapshot, when one was asked for.
    pub prepared: Option<String>,
}

/// Two free loopback ports, held until both are chosen so that they differ.
fn free_ports() -> Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// What a restore needs beyond a trial: the same snapshot with its revision raised by `bump` and
/// marked compacted there, written to `dest`.
///
/// etcdutl gained `--bump-revision` and `--mark-compacted` only after 3.5.1, so hakube does the
/// same itself: it compacts the trial etcd at the snapshot's revision R, defragments it, takes a
/// snapshot of it and sets the recorded compaction revision (`finishedCompactRev` and
/// `scheduledCompactRev` in the meta bucket) to R + bump. etcd starts a store at its compaction
/// revision when that is above every key's (mvcc `restore()`), so the restored cluster serves
/// revision R + bump, and every read or watch below it gets "compacted": exactly what the two
/// flags do. A second trial restore proves it before anything is touched.
#[derive(Debug, Clone)]
pub struct Prepare {
    pub bump: i64,
    pub dest: PathBuf,
}

/// Restore `snapshot` into `work` with etcdutl, open it with etcd on free loopback ports, read
/// the revision and the number of keys (and make the prepared snapshot, if asked), then kill
/// that etcd by its PID. The caller removes `work`.
pub async fn trial_restore(
    tools: &Tools,
    snapshot: &Path,
    work: &Path,
    prepare: Option<&Prepare>,
) -> Result<Trial> {
    // A port taken between choosing and binding makes etcd exit at once: try again.
    let mut last = None;
    for attempt in 0..3 {
        let dir = work.join(format!("trial-{attempt}"));
        let _ = std::fs::remove_dir_all(&dir);
        match trial_once(tools, snapshot, &dir, prepare).await {
            Ok(t) => return Ok(t),
            Err(e) if format!("{e:#}").contains("address already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("trial restore failed")))
}

async fn trial_once(
    tools: &Tools,
    snapshot: &Path,
    dir: &Path,
    prepare: Option<&Prepare>,
) -> Result<Trial> {
    let (client, peer) = free_ports()?;
    let peer_url = format!("http://127.0.0.1:{peer}");
    let client_url = format!("http://127.0.0.1:{client}");
    let data = dir.join("data");
    std::fs::create_dir_all(dir)?;
    let out = tokio::process::Command::new(&tools.etcdutl)
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "trial"])
        .arg(format!("--initial-cluster=trial={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .args(["--initial-cluster-token", "hakube-trial-restore"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", tools.etcdutl.display()))?;
    if !out.status.success() {
        bail!(
            "etcdutl snapshot restore failed: {}",
            crate::transport::tail(&String::from_utf8_lossy(&out.stderr), 4)
        );
    }
    let log_path = dir.join("etcd.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new(&tools.etcd)
        .args(["--name", "trial"])
        .arg("--data-dir")
        .arg(&data)
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=trial={peer_url}"))
        .args(["--log-level", "warn", "--unsafe-no-fsync"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", tools.etcd.display()))?;
    let mut read = read_back(&client_url, &mut child, &log_path).await;
    if let (Ok(t), Some(p)) = (&mut read, prepare) {
        let db = data.join("member/snap/db");
        match prepare_bumped(&client_url, &mut child, &db, t.revision, p).await {
            Ok(sha) => t.prepared = Some(sha),
            Err(e) => read = Err(e),
        }
    }
    // Killed by its own PID, whatever happened; the folder goes with the caller's temp dir.
    let _ = child.kill().await;
    let _ = child.wait().await;
    read
}

/// Compact and defragment the trial etcd, stop it cleanly, and turn its database `db` into the
/// prepared snapshot. Returns the prepared snapshot's SHA-256.
async fn prepare_bumped(
    url: &str,
    child: &mut tokio::process::Child,
    db: &Path,
    revision: i64,
    p: &Prepare,
) -> Result<String> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    let mut c = Client::connect([url], Some(opts)).await?;
    match c
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
    {
        Ok(_) => {}
        // Compacted there already: the revision is recorded as it is.
        Err(e) if e.to_string().contains("compacted") => {}
        Err(e) => return Err(e).context("compacting the trial etcd"),
    }
    // A defragmented file holds only live pages: the records patched below appear once.
    c.defragment()
        .await
        .context("defragmenting the trial etcd")?;
    drop(c);
    // SIGTERM: etcd commits and closes its database, which is then what its snapshot API would
    // have streamed, without the copy.
    let pid = child.id().context("the trial etcd has no PID")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the trial etcd did not stop within 30 s")??;
    std::fs::rename(db, &p.dest)
        .with_context(|| format!("moving {} to {}", db.display(), p.dest.display()))?;
    bump_db(&p.dest, revision, revision + p.bump)
}

async fn read_back(url: &str, child: &mut tokio::process::Child, log: &Path) -> Result<Trial> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let log_tail = || crate::transport::tail(&std::fs::read_to_string(log).unwrap_or_default(), 4);
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("the trial etcd exited ({st}): {}", log_tail());
        }
        let attempt = async {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(10));
            let mut c = Client::connect([url], Some(opts)).await?;
            let r = c
                .get(
                    "",
                    Some(GetOptions::new().with_all_keys().with_count_only()),
                )
                .await?;
            let revision = r.header().map(|h| h.revision()).unwrap_or(0);
            anyhow::Ok(Trial {
                revision,
                keys: r.count().max(0) as u64,
                prepared: None,
            })
        };
        match tokio::time::timeout(Duration::from_secs(12), attempt).await {
            Ok(Ok(t)) => return Ok(t),
            _ if Instant::now() > deadline => {
                bail!("the trial etcd did not answer within 60 s: {}", log_tail())
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A client for one member, without a per-request deadline (a snapshot stream takes as long as
/// the database is large).
async fn stream_client(endpoint: &str, tls: &Tls) -> Result<Client> {
    // Through an SSH forward when spec.access says so; TLS checks the member's own address.
    let (url, name) = crate::transport::tunnel::url(endpoint)
        .await
        .with_context(|| format!("cannot reach etcd at {endpoint}"))?;
    let mut tls_opts = crate::etcd::tls_options(tls);
    if let Some(n) = name {
        tls_opts = tls_opts.domain_name(n);
    }
    let opts = ConnectOptions::new()
        .with_tls(tls_opts)
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(10), Client::connect([url], Some(opts)))
        .await
        .with_context(|| format!("connecting to etcd at {endpoint} timed out"))?
        .with_context(|| format!("cannot connect to etcd at {endpoint}"))
}

/// Stream a snapshot from one member into `dest` (flushed to disk). `progress` gets the bytes
/// so far and the total. Returns the size.
///
/// The disk writes run on their own thread, fed 1 MiB at a time, so that receiving never waits
/// for the disk (as `etcdctl snapshot save` overlaps them too).
pub async fn pull(
    endpoint: &str,
    tls: &Tls,
    dest: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut c = stream_client(endpoint, tls).await?;
    let mut stream = c
        .snapshot()
        .await
        .with_context(|| format!("{endpoint}: etcd snapshot"))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = f;
        while let Some(chunk) = rx.blocking_recv() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    });
    const BATCH: usize = 1 << 20;
    let mut buf = Vec::with_capacity(BATCH);
    let mut got = 0u64;
    let mut done = false;
    let mut last = Instant::now();
    let received: Result<()> =
        async {
            while let Some(m) = stream.message().await.with_context(|| {
                format!("{endpoint}: the snapshot stream broke after {got} bytes")
            })? {
                buf.extend_from_slice(m.blob());
                got += m.blob().len() as u64;
                done = m.remaining_bytes() == 0;
                if buf.len() >= BATCH {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(BATCH));
                    if tx.send(full).await.is_err() {
                        break; // the writer failed: its error follows
                    }
                }
                if last.elapsed() >= Duration::from_secs(1) {
                    progress(got, got + m.remaining_bytes());
                    last = Instant::now();
                }
            }
            Ok(())
        }
        .await;
    if !buf.is_empty() {
        let _ = tx.send(buf).await;
    }
    drop(tx);
    writer
        .await?
        .with_context(|| format!("writing {}", dest.display()))?;
    received?;
    if !done {
        bail!(
            "{endpoint}: the snapshot stream ended after {got} bytes, before etcd said it was complete"
        );
    }
    progress(got, got);
    Ok(got)
}

/// 8-byte big-endian main revision, `_`, 8-byte sub revision: how mvcc writes a revision.
fn rev_bytes(main: i64) -> [u8; 17] {
    let mut b = [0u8; 17];
    b[..8].copy_from_slice(&main.to_be_bytes());
    b[8] = b'_';
    b
}

/// Every offset of `pat` in the file's first `len` bytes.
fn find_all(f: &mut std::fs::File, len: u64, pat: &[u8]) -> Result<Vec<u64>> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(0))?;
    let finder = memchr::memmem::Finder::new(pat);
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut base = 0u64; // file offset of buf[0]
    let mut chunk = vec![0u8; 4 << 20];
    let mut read = 0u64;
    while read < len {
        let want = chunk.len().min((len - read) as usize);
        let k = f.read(&mut chunk[..want])?;
        if k == 0 {
            break;
        }
        read += k as u64;
        buf.extend_from_slice(&chunk[..k]);
        for i in finder.find_iter(&buf) {
            out.push(base + i as u64);
        }
        // Keep the last pat.len()-1 bytes: a match may straddle two reads.
        let keep = (pat.len() - 1).min(buf.len());
        let drop = buf.len() - keep;
        buf.drain(..drop);
        base += drop as u64;
    }
    Ok(out)
}

/// Set the compaction revision recorded in an etcd database from `from` to `to`, then append the
/// SHA-256 trailer that makes it a snapshot. The database must be defragmented (one copy of each
/// record). Returns the snapshot's SHA-256.
pub fn bump_db(path: &Path, from: i64, to: i64) -> Result<String> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let body = f.metadata()?.len();
    if body == 0 || body % 512 != 0 {
        bail!(
            "{}: {body} bytes is not a database of whole pages",
            path.display()
        );
    }
    for (name, required) in [
        (&b"finishedCompactRev"[..], true),
        (&b"scheduledCompactRev"[..], false),
    ] {
        let mut pat = name.to_vec();
        pat.extend_from_slice(&rev_bytes(from));
        let at = find_all(&mut f, body, &pat)?;
        match at.len() {
            0 if !required => continue,
            1 => {
                f.seek(SeekFrom::Start(at[0] + name.len() as u64))?;
                f.write_all(&to.to_be_bytes())?;
            }
            n => bail!(
                "{}: found {n} records of {} at revision {from} (want one); cannot raise the revision safely",
                path.display(),
                String::from_utf8_lossy(name)
            ),
        }
    }
    f.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut left = body;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let k = f.read(&mut buf[..(left.min(1 << 20)) as usize])?;
        if k == 0 {
            bail!("{}: shorter than it was", path.display());
        }
        h.update(&buf[..k]);
        left -= k as u64;
    }
    let mut whole = h.clone();
    let digest = h.finalize();
    whole.update(digest);
    f.seek(SeekFrom::Start(body))?;
    f.write_all(&digest)?;
    f.sync_all()?;
    Ok(hex::encode(whole.finalize()))
}

#[cfg(test)]
mod bump_tests {
    use super::*;

    const SIZE: usize = (4 << 20) + 2 * 4096;

    fn db_with(records: &[(usize, &[u8], i64)]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let mut v = vec![0u8; SIZE];
        for (at, name, rev) in records {
            v[*at..*at + name.len()].copy_from_slice(name);
            v[*at + name.len()..*at + name.len() + 17].copy_from_slice(&rev_bytes(*rev));
        }
        let p = d.path().join("db");
        std::fs::write(&p, &v).unwrap();
        (d, p)
    }

    #[test]
    fn the_recorded_compaction_is_raised_and_the_trailer_appended() {
        // The finished record straddles the boundary between two reads (4 MiB each).
        let fin = (4 << 20) - 10;
        let (_d, p) = db_with(&[
            (fin, b"finishedCompactRev", 42),
            (9000, b"scheduledCompactRev", 42),
        ]);
        let sha = bump_db(&p, 42, 1_000_000_042).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), SIZE + 32);
        let at = fin + 18;
        assert_eq!(&b[at..at + 17], &rev_bytes(1_000_000_042));
        let at = 9000 + 19;
        assert_eq!(&b[at..at + 17], &rev_bytes(1_000_000_042));
        assert_eq!(sha, hex::encode(Sha256::digest(&b)));
        assert_eq!(trailer(&p).unwrap().verdict, Ok(()));
    }

    #[test]
    fn a_missing_or_doubled_record_is_refused() {
        let (_d, p) = db_with(&[(100, b"scheduledCompactRev", 42)]);
        let e = bump_db(&p, 42, 99).unwrap_err().to_string();
        assert!(e.contains("found 0 records of finishedCompactRev"), "{e}");
        let (_d, p) = db_with(&[
            (100, b"finishedCompactRev", 42),
            (5000, b"finishedCompactRev", 42),
        ]);
        let e = bump_db(&p, 42, 99).unwrap_err().to_string();
        assert!(e.contains("found 2 records"), "{e}");
        // Another revision is not this compaction's record.
        let (_d, p) = db_with(&[(100, b"finishedCompactRev", 41)]);
        assert!(bump_db(&p, 42, 99).is_err());
    }
}

/// Live keys at `revision` on one member; `None` when that revision is compacted already.
pub async fn live_count(endpoint: &str, tls: &Tls, revision: i64) -> Result<Option<u64>> {
    let mut c = crate::etcd::connect(&[endpoint.to_string()], tls, Duration::from_secs(10)).await?;
    match c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_count_only()
                    .with_revision(revision),
            ),
        )
        .await
    {
        Ok(r) => Ok(Some(r.count().max(0) as u64)),
        Err(e) if e.to_string().contains("compacted") => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("{endpoint}: count of keys at revision {revision}"))
        }
    }
}

/// The checks run so far, in order; a failed one ends the run.
#[derive(Default)]
pub struct Checks {
    pub list: Vec<Check>,
}

impl Checks {
    /// Record one check: `r` gives the value and a line of detail, or why it failed.
    pub fn record<T>(
        &mut self,
        check: CheckKind,
        started: Instant,
        r: Result<(T, String)>,
    ) -> Option<T> {
        let ms = started.elapsed().as_millis();
        match r {
            Ok((v, detail)) => {
                self.list.push(Check {
                    check,
                    ok: true,
                    detail,
                    ms,
                });
                Some(v)
            }
            Err(e) => {
                self.list.push(Check {
                    check,
                    ok: false,
                    detail: format!("{e:#}"),
                    ms,
                });
                None
            }
        }
    }

    pub fn ok(&self) -> bool {
        self.list.iter().all(|c| c.ok)
    }
}

/// What the checks found out about a snapshot.
#[derive(Debug, Clone)]
pub struct Facts {
    pub size: u64,
    pub sha256: String,
    pub status: Status,
    pub trial: Trial,
}

/// The key count at a revision on the live cluster the snapshot came from (`None`: compacted
/// there already), and a line of detail.
pub type LiveCount<'a> =
    Box<dyn FnOnce(i64) -> crate::transport::BoxFut<'a, Result<(Option<u64>, String)>> + Send + 'a>;

/// What the checks know beforehand and what they do besides.
#[derive(Default)]
pub struct Plan<'a> {
    /// From a manifest: what the snapshot must show.
    pub revision: Option<i64>,
    pub keys: Option<u64>,
    /// Computed while the snapshot was copied; read from the file when `None`.
    pub trailer: Option<Trailer>,
    /// Runs between `etcdutl snapshot status` and the trial restore.
    pub live: Option<LiveCount<'a>>,
    pub prepare: Option<Prepare>,
}

/// The trailer, `etcdutl snapshot status`, the live count and the trial restore, in that order;
/// the first failure ends the run.
pub async fn verify(
    tools: &Tools,
    snapshot: &Path,
    work: &Path,
    plan: Plan<'_>,
    checks: &mut Checks,
) -> Option<Facts> {
    let t = Instant::now();
    let tr = match plan.trailer {
        Some(tr) => Ok(tr),
        None => trailer(snapshot),
    };
    let tr = tr.and_then(|tr| match &tr.verdict {
        Ok(()) => {
            let d = format!("{} bytes, SHA-256 trailer matches", tr.size);
            Ok((tr, d))
        }
        Err(why) => bail!("{why}"),
    });
    let tr = checks.record(CheckKind::Trailer, t, tr)?;
    let t = Instant::now();
    let st = status(tools, snapshot).await.and_then(|s| {
        if let Some(r) = plan.revision
            && r != s.revision
        {
            bail!("revision {}, the manifest says {r}", s.revision);
        }
        let d = format!(
            "revision {}, {} bolt keys, {} bytes, hash {:08x}",
            s.revision, s.total_key, s.total_size, s.hash
        );
        Ok((s, d))
    });
    let st = checks.record(CheckKind::Status, t, st)?;
    let mut want_keys = plan.keys;
    if let Some(f) = plan.live {
        let t = Instant::now();
        let n = checks.record(CheckKind::LiveCount, t, f(st.revision).await)?;
        want_keys = want_keys.or(n);
    }
    let t = Instant::now();
    let trial = trial_restore(tools, snapshot, work, plan.prepare.as_ref())
        .await
        .and_then(|tri| {
            if tri.revision != st.revision {
                bail!(
                    "the restored etcd is at revision {}, the snapshot at {}",
                    tri.revision,
                    st.revision
                );
            }
            if let Some(k) = want_keys
                && k != tri.keys
            {
                bail!("the restored etcd holds {} keys, expected {k}", tri.keys);
            }
            let d = format!(
                "restored and opened with etcd: revision {}, {} keys",
                tri.revision, tri.keys
            );
            Ok((tri, d))
        });
    let trial = checks.record(CheckKind::TrialRestore, t, trial)?;
    Some(Facts {
        size: tr.size,
        sha256: tr.sha256,
        status: st,
        trial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(&Sha256::digest(body));
        v
    }

    fn check(bytes: &[u8]) -> Trailer {
        trailer_of(bytes, bytes.len() as u64).unwrap()
    }

    #[test]
    fn a_snapshot_with_its_trailer_passes() {
        let body: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let snap = with_trailer(&body);
        let t = check(&snap);
        assert_eq!(t.verdict, Ok(()));
        assert_eq!(t.size, 4096 + 32);
        assert_eq!(t.sha256, hex::encode(Sha256::digest(&snap)));
        // Chunk boundaries must not matter: read it a few bytes at a time.
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert_eq!(trailer_of(Slow(&snap), snap.len() as u64).unwrap(), t);
    }

    #[test]
    fn a_flipped_bit_anywhere_fails() {
        let body = vec![0x5au8; 1024];
        let snap = with_trailer(&body);
        for at in [0, 511, 1023, 1024, 1055] {
            let mut bad = snap.clone();
            bad[at] ^= 0x10;
            let v = check(&bad).verdict;
            assert!(
                v.as_ref().is_err_and(|e| e.contains("corrupt")),
                "byte {at}: {v:?}"
            );
        }
    }

    #[test]
    fn a_truncated_or_bare_snapshot_has_no_trailer() {
        let snap = with_trailer(&[1u8; 2048]);
        for len in [0, 31, 2048, 2048 + 31, 1000] {
            let v = check(&snap[..len]).verdict;
            assert!(
                v.as_ref().is_err_and(|e| e.contains("no SHA-256 trailer")),
                "{len}: {v:?}"
            );
        }
    }

    #[test]
    fn a_short_read_is_reported() {
        let snap = with_trailer(&[1u8; 512]);
        let t = trailer_of(&snap[..100], snap.len() as u64).unwrap();
        assert!(t.verdict.is_err_and(|e| e.contains("read 100 bytes")));
    }
}
