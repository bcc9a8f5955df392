//! The etcd snapshot itself: pulled through etcd's Maintenance API, and proven by three checks on
//! the operator machine: the SHA-256 trailer etcd appends, `etcdutl snapshot status`, and a trial
//! restore opened with a real etcd on loopback and read back.

use super::archive::{Check, CheckKind};
use crate::etcd::Tls;
use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, GetOptions};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

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
    let body_len = size.saturating_sub(TRAILER);
    let mut whole = Sha256::new();
    let mut body = Sha256::new();
    let mut tail = Vec::with_capacity(TRAILER as usize);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        let chunk = &buf[..k];
        whole.update(chunk);
        let end = at + k as u64;
        let in_body = body_len.saturating_sub(at).min(k as u64) as usize;
        body.update(&chunk[..in_body]);
        if end > body_len {
            tail.extend_from_slice(&chunk[in_body..]);
        }
        at = end;
    }
    let verdict = if at != size {
        Err(format!("read {at} bytes, expected {size}"))
    } else if size < TRAILER || size % 512 != TRAILER {
        Err(format!(
            "no SHA-256 trailer: {size} bytes is not a multiple of 512 plus 32, so the snapshot is \
             truncated (or was not taken through etcd's snapshot API)"
        ))
    } else {
        let want = hex::encode(&tail);
        let got = hex::encode(body.finalize());
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
    Ok(Trailer {
        size,
        sha256: hex::encode(whole.finalize()),
        verdict,
    })
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
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "etcdutl snapshot status printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })
}

/// What a trial restore read back.
#[derive(Debug, Clone, Copy)]
pub struct Trial {
    pub revision: i64,
    pub keys: u64,
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
    if let (Ok(t), Some(p)) = (&read, prepare) {
        read = prepare_bumped(&client_url, t.revision, p).await.map(|_| *t);
    }
    // Killed by its own PID, whatever happened; the folder goes with the caller's temp dir.
    let _ = child.kill().await;
    let _ = child.wait().await;
    read
}

async fn prepare_bumped(url: &str, revision: i64, p: &Prepare) -> Result<()> {
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
    pull_client(&mut c, url, &p.dest, &|_, _| {}).await?;
    patch_compacted(&p.dest, revision, revision + p.bump)
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
    let opts = ConnectOptions::new()
        .with_tls(crate::etcd::tls_options(tls))
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
    tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    .with_context(|| format!("connecting to etcd at {endpoint} timed out"))?
    .with_context(|| format!("cannot connect to etcd at {endpoint}"))
}

/// Stream a snapshot from one member into `dest` (flushed to disk). `progress` gets the bytes
/// so far and the total. Returns the size.
pub async fn pull(
    endpoint: &str,
    tls: &Tls,
    dest: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64> {
    let mut c = stream_client(endpoint, tls).await?;
    pull_client(&mut c, endpoint, dest, progress).await
}

async fn pull_client(
    c: &mut Client,
    endpoint: &str,
    dest: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
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
    let mut w = tokio::io::BufWriter::with_capacity(4 << 20, tokio::fs::File::from_std(f));
    let mut got = 0u64;
    let mut done = false;
    let mut last = Instant::now();
    while let Some(m) = stream
        .message()
        .await
        .with_context(|| format!("{endpoint}: the snapshot stream broke after {got} bytes"))?
    {
        w.write_all(m.blob()).await?;
        got += m.blob().len() as u64;
        done = m.remaining_bytes() == 0;
        if last.elapsed() >= Duration::from_secs(1) {
            progress(got, got + m.remaining_bytes());
            last = Instant::now();
        }
    }
    if !done {
        bail!(
            "{endpoint}: the snapshot stream ended after {got} bytes, before etcd said it was complete"
        );
    }
    w.flush().await?;
    w.into_inner()
        .sync_all()
        .await
        .with_context(|| format!("flushing {}", dest.display()))?;
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

/// Set the compaction revision recorded in a snapshot from `from` to `to`, and write the SHA-256
/// trailer again. The snapshot must be defragmented (one copy of each record).
pub fn patch_compacted(path: &Path, from: i64, to: i64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    if size < TRAILER || size % 512 != TRAILER {
        bail!("{}: no SHA-256 trailer to rewrite", path.display());
    }
    let body = size - TRAILER;
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
    f.seek(SeekFrom::Start(body))?;
    f.write_all(&h.finalize())?;
    f.sync_all()?;
    Ok(())
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

/// What a snapshot must show, when it is known beforehand (from a manifest).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    pub revision: Option<i64>,
    pub keys: Option<u64>,
}

/// The trailer, `etcdutl snapshot status` and the trial restore, in that order; `live` (the
/// key count at the snapshot's revision from the source cluster) runs between the last two.
pub async fn verify<F, Fut>(
    tools: &Tools,
    snapshot: &Path,
    work: &Path,
    expect: Expect,
    checks: &mut Checks,
    live: Option<F>,
    prepare: Option<&Prepare>,
) -> Option<Facts>
where
    F: FnOnce(i64) -> Fut,
    Fut: std::future::Future<Output = Result<(Option<u64>, String)>>,
{
    let t = Instant::now();
    let tr = trailer(snapshot).and_then(|tr| match &tr.verdict {
        Ok(()) => {
            let d = format!("{} bytes, SHA-256 trailer matches", tr.size);
            Ok((tr, d))
        }
        Err(why) => bail!("{why}"),
    });
    let tr = checks.record(CheckKind::Trailer, t, tr)?;
    let t = Instant::now();
    let st = status(tools, snapshot).await.and_then(|s| {
        if let Some(r) = expect.revision
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
    let mut want_keys = expect.keys;
    if let Some(f) = live {
        let t = Instant::now();
        let n = checks.record(CheckKind::LiveCount, t, f(st.revision).await)?;
        want_keys = want_keys.or(n);
    }
    let t = Instant::now();
    let trial = trial_restore(tools, snapshot, work, prepare)
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
