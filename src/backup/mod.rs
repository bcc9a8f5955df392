//! `hakube backup` and `hakube restore`: one etcd snapshot from a healthy member (a follower when
//! there is one), streamed to the operator machine and proven restorable before it is kept, in
//! one archive with the operator state, the spec and the load balancers' live configs.
//!
//! Layers: [`snapshot`] (pull and the three checks), [`archive`] (the file format and its
//! manifest), [`retention`] (which backups to keep), [`restore`] (the full-cluster restore) and
//! [`cli`] (the command line).

pub mod archive;
pub mod check;
pub mod cli;
pub mod restore;
pub mod retention;
pub mod snapshot;

use crate::spec::Cluster;
use crate::state::State;
use anyhow::{Context, Result, bail};
use archive::{Check, CheckKind, Identity, LbConfigs, Manifest, Member, Source, SourceKind};
use serde::{Deserialize, Serialize};
use snapshot::{Checks, Plan, Tools};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The record of the newest verified backup in a backup folder, for status and metrics.
pub const LAST_VERIFIED: &str = "last-verified.json";
/// Where `backup verify` records its result, next to the archive.
pub const VERIFY_SUFFIX: &str = ".verify.json";

/// A progress line on stderr.
pub type Log<'a> = &'a (dyn Fn(&str) + Sync);

/// The backup folder: `spec.backup.dir`, or `.hakube/<cluster>/backups` next to the spec.
pub fn default_dir(c: &Cluster) -> PathBuf {
    c.backup
        .dir
        .clone()
        .unwrap_or_else(|| State::dir_of(c).join("backups"))
}

/// The retention policy of the spec (`spec.backup.retention`).
pub fn spec_policy(c: &Cluster) -> retention::Policy {
    retention::Policy {
        keep_last: c.backup.keep_last,
        keep_daily: c.backup.keep_daily,
        keep_weekly: c.backup.keep_weekly,
    }
}

fn now() -> (String, u64) {
    let t = SystemTime::now();
    (
        humantime::format_rfc3339_seconds(t).to_string(),
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// The identity a backup records: the CAs of the operator state.
pub fn identity(state: &State) -> Identity {
    let m = state.marker();
    Identity {
        etcd_ca_sha256: m.etcd_ca_sha256,
        cluster_ca_sha256: m.cluster_ca_sha256,
    }
}

/// A backup belongs to a cluster when it has the cluster's name and was made with the CAs of the
/// cluster's operator state. Names alone collide (every lab and many clusters keep a default
/// name) and the etcd cluster id changes with every restore; the CAs are random keys made once
/// per cluster and kept across restores and new hardware.
pub fn check_identity(m: &Manifest, c: &Cluster, state: &State) -> Result<String> {
    if m.cluster != c.name {
        bail!(
            "this backup is of cluster {:?}, but the spec describes cluster {:?}\n  help: restore it with \
             the spec of cluster {:?}, or pick a backup of {:?} (`hakube backup list -f SPEC`)",
            m.cluster,
            c.name,
            m.cluster,
            c.name
        );
    }
    let here = identity(state);
    if m.identity != here {
        bail!(
            "this backup of {:?} was made with other CAs than the ones in {} (etcd CA sha256 {}… in the \
             backup, {}… here): it is the backup of another cluster with the same name, or this \
             cluster's CAs were replaced since\n  help: use a backup taken with this state folder; the \
             backup's own state is inside it (`tar -xf BACKUP state/`)",
            m.cluster,
            state.dir().display(),
            short(&m.identity.etcd_ca_sha256),
            short(&here.etcd_ca_sha256),
        );
    }
    Ok(format!(
        "cluster {:?}, same CAs as {}",
        c.name,
        state.dir().display()
    ))
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The spec file (archived as it is).
    pub spec_file: PathBuf,
    pub out: Option<PathBuf>,
    pub policy: retention::Policy,
    /// Package this snapshot file instead of taking one.
    pub from_snapshot: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub file: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub file: String,
    pub cluster: String,
    pub archive_bytes: u64,
    pub snapshot_bytes: u64,
    pub revision: i64,
    pub keys: u64,
    pub source: Source,
    pub transfer_ms: u128,
    /// Snapshot bytes per second over the transfer, MiB/s.
    pub transfer_mib_s: f64,
    pub verify_ms: u128,
    pub total_ms: u128,
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    pub kept: usize,
    pub removed: Vec<Removed>,
}

/// Create `dir` 0700 when missing (an existing folder keeps its mode).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// One backup per folder at a time. Holding the lock, what an interrupted backup left (its
/// staging folder, a `.partial` archive) is removed.
fn lock_folder(dir: &Path) -> Result<crate::state::Lock> {
    let lock = match crate::state::try_lock(&dir.join(".backup.lock"))? {
        Ok(l) => l,
        Err(e) => bail!(
            "another hakube backup is writing to {} ({e})\n  help: wait for it to finish",
            dir.display()
        ),
    };
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        if name.starts_with('.') && name.contains(".staging-") && p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else if name.ends_with(".partial") && p.is_file() {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(lock)
}

/// A temporary folder next to `near` (same disk, room for the snapshot), or in the system's.
pub fn work_dir(near: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".hakube-work-")
        .tempdir_in(near)
        .or_else(|_| tempfile::Builder::new().prefix("hakube-work-").tempdir())
        .context("creating a temporary folder")
}

/// The members of one etcd cluster that serve a linearizable read, followers first.
async fn pick_source(c: &Cluster, tls: &crate::etcd::Tls) -> Result<crate::status::EtcdMember> {
    let s = crate::status::gather(c).await?;
    let mut up: Vec<crate::status::EtcdMember> = s
        .etcd
        .iter()
        .filter(|m| m.error.is_none())
        .cloned()
        .collect();
    up.sort_by_key(|m| m.is_leader);
    let mut why: Vec<String> = s
        .etcd
        .iter()
        .filter_map(|m| m.error.as_ref().map(|e| format!("{}: {e}", m.name)))
        .collect();
    for m in up {
        match crate::etcd::healthy(&m.endpoint, tls, Duration::from_secs(3)).await {
            Ok(()) => return Ok(m),
            Err(e) => why.push(format!("{}: {e:#}", m.name)),
        }
    }
    bail!(
        "no etcd member of {} serves a linearizable read, so no snapshot can be trusted to be current:\n  {}\n  \
         help: `hakube doctor -f SPEC` says why; with quorum lost, restore the last backup (`hakube restore`)",
        c.name,
        why.join("\n  ")
    )
}

/// The live configs of one load balancer: `(archive path, mode, bytes)`.
async fn lb_configs(c: &Cluster, h: &crate::spec::Host) -> Result<Vec<(String, u32, Vec<u8>)>> {
    const FILES: [&str; 2] = [
        "/etc/haproxy/haproxy.cfg",
        "/etc/keepalived/keepalived.conf",
    ];
    let t = crate::transport::ssh::Ssh::connect(h, &c.base_dir, Duration::from_secs(10)).await?;
    let script: String = FILES
        .iter()
        .map(|f| {
            format!(
                "if [ -f {f} ]; then printf '%s %s %s\\n' \"$(stat -c %a {f})\" \"$(wc -c < {f})\" {f}; cat {f}; fi\n"
            )
        })
        .collect();
    let out = crate::transport::run(
        &t,
        &script,
        "read haproxy.cfg and keepalived.conf",
        Duration::from_secs(20),
    )
    .await?;
    let files = parse_framed(&out.stdout)
        .with_context(|| format!("{}: cannot read the configs", h.name))?;
    Ok(files
        .into_iter()
        .map(|(path, mode, data)| {
            let base = path.rsplit('/').next().unwrap_or(&path).to_string();
            (format!("lb/{}/{base}", h.name), mode, data)
        })
        .collect())
}

/// Files framed as `MODE SIZE PATH\n` followed by SIZE bytes, one after the other.
pub fn parse_framed(mut b: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b
            .iter()
            .position(|x| *x == b'\n')
            .context("a header line without its end")?;
        let head = String::from_utf8_lossy(&b[..nl]).to_string();
        let mut parts = head.splitn(3, ' ');
        let (Some(mode), Some(size), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("cannot parse {head:?}");
        };
        let mode =
            u32::from_str_radix(mode.trim(), 8).with_context(|| format!("mode in {head:?}"))?;
        let size: usize = size
            .trim()
            .parse()
            .with_context(|| format!("size in {head:?}"))?;
        let rest = &b[nl + 1..];
        if rest.len() < size {
            bail!("{path}: {} bytes, expected {size}", rest.len());
        }
        out.push((path.to_string(), mode, rest[..size].to_vec()));
        b = &rest[size..];
    }
    Ok(out)
}

/// Every regular file of the operator state, but not the backups, locks or work folders.
fn state_members(c: &Cluster, skip: &Path) -> Result<Vec<Member>> {
    use std::os::unix::fs::PermissionsExt;
    let root = State::dir_of(c);
    let skip = skip.canonicalize().unwrap_or_else(|_| skip.to_path_buf());
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        if d.canonicalize().is_ok_and(|p| p == skip) || d == root.join("backups") {
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p)?;
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() && p.extension().is_none_or(|x| x != "lock") {
                let rel = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
                let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                out.push(Member::bytes(
                    format!("state/{rel}"),
                    md.permissions().mode() & 0o7777,
                    data,
                ));
            }
        }
    }
    let pw = &c.lb.stats.password_file;
    if !pw.starts_with(&root) && pw.is_file() {
        let name = pw
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        out.push(Member::bytes(
            format!("secrets/{name}"),
            0o600,
            std::fs::read(pw)?,
        ));
    }
    Ok(out)
}

/// Take (or package) one snapshot, prove it, archive it, apply retention.
pub async fn backup(c: &Cluster, o: &Options, log: Log<'_>) -> Result<Report> {
    crate::transport::tunnel::setup(c).await;
    let started = Instant::now();
    let state = State::open(c)?;
    let tools = Tools::find()?;
    let out_dir = o.out.clone().unwrap_or_else(|| default_dir(c));
    private_dir(&out_dir)?;
    let _lock = lock_folder(&out_dir)?;
    let (created_at, created_unix) = now();
    let mut name = format!("{}-{}", c.name, crate::drill::stamp(SystemTime::now()));
    let mut n = 1;
    while out_dir.join(format!("{name}{}", archive::EXT)).exists() {
        n += 1;
        name = format!("{}-{}-{n}", c.name, crate::drill::stamp(SystemTime::now()));
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.staging-"))
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a folder in {}", out_dir.display()))?;
    let snap = staging.path().join(archive::SNAPSHOT);
    let tls = state.operator_etcd_tls()?;
    let mut warnings = Vec::new();

    // 1. The snapshot.
    let transfer_ms;
    let (source, endpoint) = match &o.from_snapshot {
        Some(f) => {
            log(&format!("packaging the snapshot {}", f.display()));
            let t = Instant::now();
            std::fs::copy(f, &snap).with_context(|| format!("copying {}", f.display()))?;
            transfer_ms = t.elapsed().as_millis();
            let src = Source::file(f);
            (src, None)
        }
        None => {
            if c.etcd.management == crate::spec::EtcdManagement::Kubeadm {
                bail!(
                    "etcd.management is kubeadm: etcd serves kubeadm's own CA, for which hakube holds no client certificate\n  \
                     help: on a control plane, take one with `etcdctl snapshot save` (kubeadm's certificates are in \
                     /etc/kubernetes/pki/etcd), copy it here and run `hakube backup --from-snapshot FILE`"
                );
            }
            let m = pick_source(c, &tls).await?;
            let role = if m.is_leader {
                "the leader: no follower is healthy"
            } else {
                "a follower"
            };
            log(&format!(
                "snapshot from {} ({role}, etcd {}, {} database)",
                m.name,
                m.version,
                human(m.db_size)
            ));
            let partial = staging
                .path()
                .join(format!("{}.partial", archive::SNAPSHOT));
            let t0 = Instant::now();
            let progress = |got: u64, total: u64| {
                let s = t0.elapsed().as_secs_f64().max(0.001);
                log(&format!(
                    "snapshot: {} of {} ({:.1} MiB/s)",
                    human(got),
                    human(total),
                    mib(got) / s
                ));
            };
            snapshot::pull(&m.endpoint, &tls, &partial, &progress).await?;
            std::fs::rename(&partial, &snap)?;
            transfer_ms = t0.elapsed().as_millis();
            let src = Source {
                kind: SourceKind::Live,
                member: Some(m.name.clone()),
                endpoint: Some(m.endpoint.clone()),
                member_id: Some(format!("{:x}", m.member_id)),
                etcd_cluster_id: Some(format!("{:x}", m.cluster_id)),
                etcd_version: Some(m.version.clone()),
                was_leader: Some(m.is_leader),
                file: None,
            };
            (src, Some(m.endpoint))
        }
    };
    let snapshot_bytes = std::fs::metadata(&snap)?.len();

    // 2. Prove it: trailer, etcdutl status, the live count at its revision, a trial restore.
    let t = Instant::now();
    log("verifying: SHA-256 trailer, etcdutl snapshot status, trial restore");
    let work = staging.path().join("work");
    std::fs::create_dir_all(&work)?;
    let mut checks = Checks::default();
    let live = endpoint.clone().map(|ep| {
        let tls = tls.clone();
        let f: snapshot::LiveCount = Box::new(move |rev: i64| {
            Box::pin(async move {
                match snapshot::live_count(&ep, &tls, rev).await? {
                    Some(n) => Ok((Some(n), format!("{n} keys at revision {rev} on {ep}"))),
                    None => Ok((
                        None,
                        format!("revision {rev} is compacted on {ep}: not cross-checked"),
                    )),
                }
            })
        });
        f
    });
    let plan = Plan {
        live,
        ..Plan::default()
    };
    let facts = snapshot::verify(&tools, &snap, &work, plan, &mut checks).await;
    let _ = std::fs::remove_dir_all(&work);
    let verify_ms = t.elapsed().as_millis();
    for ch in &checks.list {
        log(&format!("  {}", ch.line()));
    }
    let Some(facts) = facts else {
        let f = checks.list.iter().find(|c| !c.ok);
        bail!(
            "the snapshot failed verification ({}); nothing was kept\n  help: run the backup again; if it fails \
             the same way, `hakube doctor -f SPEC` (a member's database may be corrupt)",
            f.map(|f| format!("{:?}: {}", f.check, f.detail))
                .unwrap_or_default()
        );
    };
    let cross = checks
        .list
        .iter()
        .any(|c| c.check == CheckKind::LiveCount && !c.detail.contains("not cross"));

    // 3. The rest of the archive: spec, operator state, the load balancers' live configs.
    let mut members = vec![Member {
        path: archive::SNAPSHOT.into(),
        mode: 0o600,
        data: archive::Data::File {
            path: snap.clone(),
            sha256: facts.sha256.clone(),
        },
    }];
    let spec_name = o
        .spec_file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "cluster.yaml".into());
    let spec = std::fs::read(&o.spec_file)
        .with_context(|| format!("reading {}", o.spec_file.display()))?;
    members.push(Member::bytes(format!("spec/{spec_name}"), 0o600, spec));
    members.extend(state_members(c, &out_dir)?);
    // A snapshot file may be from any time: today's LB configs would not belong with it.
    let lbs = if o.from_snapshot.is_some() {
        warnings.push("no load balancer configs: packaged from a snapshot file".into());
        vec![]
    } else {
        futures::future::join_all(
            c.load_balancers()
                .map(|h| async move { (h.name.clone(), lb_configs(c, h).await) }),
        )
        .await
    };
    let mut lb_list = Vec::new();
    for (host, r) in lbs {
        match r {
            Ok(files) => {
                lb_list.push(LbConfigs {
                    host,
                    files: files.iter().map(|f| f.0.clone()).collect(),
                    error: None,
                });
                members.extend(files.into_iter().map(|(p, m, d)| Member::bytes(p, m, d)));
            }
            Err(e) => {
                let e = format!("{e:#}");
                warnings.push(format!(
                    "{host}: its live configs are not in this backup: {e}"
                ));
                lb_list.push(LbConfigs {
                    host,
                    files: vec![],
                    error: Some(e),
                });
            }
        }
    }
    for w in &warnings {
        log(&format!("warning: {w}"));
    }
    let files = members
        .iter()
        .map(Member::entry)
        .collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        cluster: c.name.clone(),
        created_at: created_at.clone(),
        created_unix,
        hakube_version: env!("CARGO_PKG_VERSION").into(),
        source: source.clone(),
        identity: identity(&state),
        snapshot: archive::SnapshotInfo {
            size: facts.size,
            sha256: facts.sha256.clone(),
            revision: facts.status.revision,
            keys: facts.trial.keys,
            keys_cross_checked: cross,
            total_keys: facts.status.total_key,
            hash: facts.status.hash,
        },
        files,
        load_balancers: lb_list,
        verification: archive::Verification {
            ok: true,
            at: now().0,
            checks: checks.list.clone(),
        },
        warnings: warnings.clone(),
    };

    // 4. NAME.tar.partial, flushed, then renamed: a crash never leaves a half archive under the
    // final name.
    let final_path = out_dir.join(format!("{name}{}", archive::EXT));
    let partial = out_dir.join(format!("{name}{}.partial", archive::EXT));
    archive::write(&partial, &manifest, &members)?;
    std::fs::rename(&partial, &final_path)?;
    if let Ok(d) = std::fs::File::open(&out_dir) {
        let _ = d.sync_all();
    }
    drop(staging);
    let archive_bytes = std::fs::metadata(&final_path)?.len();
    record_last_verified(&out_dir, &final_path, &manifest)?;

    // 5. Retention, over this cluster's archives in the folder.
    let (kept, removed) = apply_retention(&out_dir, &c.name, o.policy)?;
    for r in &removed {
        log(&format!("retention: removed {} ({})", r.file, r.created_at));
    }
    Ok(Report {
        file: final_path.display().to_string(),
        cluster: c.name.clone(),
        archive_bytes,
        snapshot_bytes,
        revision: manifest.snapshot.revision,
        keys: manifest.snapshot.keys,
        source,
        transfer_ms,
        transfer_mib_s: mib(snapshot_bytes) / (transfer_ms.max(1) as f64 / 1000.0),
        verify_ms,
        total_ms: started.elapsed().as_millis(),
        checks: checks.list,
        warnings,
        kept,
        removed,
    })
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// "812 B", "20.0 KiB", "200.3 MiB", "1.2 GiB".
pub fn human(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", mib(b)),
        _ => format!("{:.1} GiB", b as f64 / 1_073_741_824.0),
    }
}

/// The newest verified backup of a folder, as recorded by `backup` and `backup verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastVerified {
    pub cluster: String,
    pub file: String,
    pub created_at: String,
    pub created_unix: u64,
    pub verified_at: String,
    pub verified_unix: u64,
    pub revision: i64,
    pub keys: u64,
}

/// Read a folder's record (`None` when there is none yet).
pub fn last_verified(dir: &Path) -> Option<LastVerified> {
    serde_json::from_slice(&std::fs::read(dir.join(LAST_VERIFIED)).ok()?).ok()
}

/// Record `file` as the folder's newest verified backup, unless a newer one is recorded.
fn record_last_verified(dir: &Path, file: &Path, m: &Manifest) -> Result<()> {
    if last_verified(dir).is_some_and(|l| l.cluster == m.cluster && l.created_unix > m.created_unix)
    {
        return Ok(());
    }
    let (verified_at, verified_unix) = now();
    let rec = LastVerified {
        cluster: m.cluster.clone(),
        file: file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        created_at: m.created_at.clone(),
        created_unix: m.created_unix,
        verified_at,
        verified_unix,
        revision: m.snapshot.revision,
        keys: m.snapshot.keys,
    };
    let tmp = dir.join(format!("{LAST_VERIFIED}.partial"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&rec)?)?;
    std::fs::rename(&tmp, dir.join(LAST_VERIFIED))?;
    Ok(())
}

/// A backup in a folder, as `backup list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub file: String,
    pub bytes: u64,
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be read.
    pub error: Option<String>,
    /// The last `backup verify`, when there was one.
    pub reverified: Option<Reverified>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reverified {
    pub at: String,
    pub at_unix: u64,
    pub ok: bool,
    pub detail: String,
}

/// Every archive in `dir`, newest first (unreadable ones last).
pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd.flatten() {
        let p = e.path();
        if !p.to_string_lossy().ends_with(archive::EXT) || !p.is_file() {
            continue;
        }
        let (manifest, error) = match archive::read_manifest(&p) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let side = PathBuf::from(format!("{}{VERIFY_SUFFIX}", p.display()));
        let reverified = std::fs::read(&side)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(Listed {
            file: p.display().to_string(),
            bytes: e.metadata().map(|m| m.len()).unwrap_or(0),
            manifest,
            error,
            reverified,
        });
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.manifest.as_ref().map(|m| m.created_unix)));
    Ok(out)
}

/// Keep what the policy selects among `cluster`'s archives in `dir`; remove the rest (with
/// their sidecars). Archives that cannot be read are never removed.
pub fn apply_retention(
    dir: &Path,
    cluster: &str,
    p: retention::Policy,
) -> Result<(usize, Vec<Removed>)> {
    let all: Vec<(String, Manifest)> = list(dir)?
        .into_iter()
        .filter_map(|l| l.manifest.map(|m| (l.file, m)))
        .filter(|(_, m)| m.cluster == cluster)
        .collect();
    let times: Vec<u64> = all.iter().map(|(_, m)| m.created_unix).collect();
    let keep = retention::select(&times, p);
    let mut removed = Vec::new();
    for ((file, m), why) in all.iter().zip(&keep) {
        if why.is_empty() {
            std::fs::remove_file(file).with_context(|| format!("removing {file}"))?;
            let _ = std::fs::remove_file(format!("{file}{VERIFY_SUFFIX}"));
            removed.push(Removed {
                file: file.clone(),
                created_at: m.created_at.clone(),
            });
        }
    }
    Ok((all.len() - removed.len(), removed))
}

/// A verified backup, ready for restore: the manifest, the extracted snapshot (in a temporary
/// folder that lives as long as this) and the checks.
pub struct Verified {
    pub manifest: Option<Manifest>,
    pub snapshot: PathBuf,
    /// The snapshot to restore (revision raised) and its SHA-256, when asked for.
    pub prepared: Option<(PathBuf, String)>,
    pub checks: Vec<Check>,
    pub ok: bool,
    _work: tempfile::TempDir,
}

impl Verified {
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }
}

fn is_tar(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 512];
    let n = f.read(&mut head)?;
    Ok(n == 512 && &head[257..262] == b"ustar")
}

/// Verify a backup archive again (every file against its manifest, the cluster's identity when
/// one is given, then the snapshot's three checks), or a bare etcd snapshot file (its three
/// checks only).
/// With `bump`, also prepare the snapshot a restore copies to the members (see
/// [`snapshot::Prepare`]) and prove it with a second trial restore.
pub async fn verify(
    path: &Path,
    cluster: Option<(&Cluster, &State)>,
    bump: Option<i64>,
    log: Log<'_>,
) -> Result<Verified> {
    let tools = Tools::find()?;
    let work = work_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )?;
    let mut checks = Checks::default();
    if !is_tar(path)? {
        log(&format!(
            "{}: a bare etcd snapshot (no manifest): checking the snapshot alone",
            path.display()
        ));
        let snap = path.to_path_buf();
        let ok = snapshot::verify(&tools, &snap, work.path(), Plan::default(), &mut checks)
            .await
            .is_some();
        return Ok(Verified {
            manifest: None,
            snapshot: snap,
            prepared: None,
            ok,
            checks: checks.list,
            _work: work,
        });
    }
    let t = Instant::now();
    log(&format!(
        "reading {} and checking every file against its manifest",
        path.display()
    ));
    let opened = archive::open(path, work.path());
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            checks.record::<()>(CheckKind::Checksums, t, Err(e));
            return Ok(Verified {
                manifest: None,
                snapshot: work.path().join(archive::SNAPSHOT),
                prepared: None,
                ok: false,
                checks: checks.list,
                _work: work,
            });
        }
    };
    let m = opened.manifest.clone();
    let r = if opened.mismatches.is_empty() {
        Ok(((), format!("{} files match the manifest", m.files.len())))
    } else {
        Err(anyhow::anyhow!(
            "the manifest does not match the files: {}",
            opened.mismatches.join("; ")
        ))
    };
    let mut ok = checks.record(CheckKind::Checksums, t, r).is_some();
    let mut prepared = None;
    if ok && let Some((c, st)) = cluster {
        let t = Instant::now();
        ok = checks
            .record(
                CheckKind::Identity,
                t,
                check_identity(&m, c, st).map(|d| ((), d)),
            )
            .is_some();
    }
    if ok {
        let prepare = bump.map(|bump| snapshot::Prepare {
            bump,
            dest: work.path().join("prepared.db"),
        });
        let plan = Plan {
            revision: Some(m.snapshot.revision),
            keys: Some(m.snapshot.keys),
            trailer: opened.trailer.clone(),
            live: None,
            prepare: prepare.clone(),
        };
        let facts =
            snapshot::verify(&tools, &opened.snapshot, work.path(), plan, &mut checks).await;
        ok = facts.is_some();
        if let (Some(p), Some(sha)) = (&prepare, facts.and_then(|f| f.trial.prepared)) {
            // The second trial: the prepared snapshot opens at the raised revision with every
            // key (its etcdutl restore checks the rewritten trailer too).
            let t = Instant::now();
            let want = m.snapshot.revision + p.bump;
            let r = async {
                let tri =
                    snapshot::trial_restore(&tools, &p.dest, &work.path().join("second"), None)
                        .await?;
                if tri.revision != want || tri.keys != m.snapshot.keys {
                    bail!(
                        "the prepared snapshot opens at revision {} with {} keys, expected {want} and {}",
                        tri.revision,
                        tri.keys,
                        m.snapshot.keys
                    );
                }
                Ok((
                    sha,
                    format!(
                        "revision raised to {want} and marked compacted; {} keys (second trial restore)",
                        tri.keys
                    ),
                ))
            };
            let r = r.await;
            match checks.record(CheckKind::Prepared, t, r) {
                Some(sha) => prepared = Some((p.dest.clone(), sha)),
                None => ok = false,
            }
        }
    }
    Ok(Verified {
        manifest: Some(m),
        snapshot: opened.snapshot,
        prepared,
        ok,
        checks: checks.list,
        _work: work,
    })
}

/// Record a `backup verify` result next to the archive (for `backup list`), and refresh the
/// folder's last-verified record when it passed.
pub fn record_reverify(path: &Path, v: &Verified) {
    let (at, at_unix) = now();
    let detail = match v.failure() {
        Some(f) => format!("{:?}: {}", f.check, f.detail),
        None => format!("{} checks passed", v.checks.len()),
    };
    let r = Reverified {
        at,
        at_unix,
        ok: v.ok,
        detail,
    };
    if let Ok(b) = serde_json::to_vec_pretty(&r) {
        let _ = std::fs::write(format!("{}{VERIFY_SUFFIX}", path.display()), b);
    }
    if v.ok
        && let (Some(m), Some(dir)) = (&v.manifest, path.parent())
    {
        let _ = record_last_verified(dir, path, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_files_parse() {
        let b = b"644 5 /etc/haproxy/haproxy.cfg\nhello600 0 /etc/keepalived/keepalived.conf\n";
        let v = parse_framed(b).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            ("/etc/haproxy/haproxy.cfg".into(), 0o644, b"hello".to_vec())
        );
        assert_eq!(v[1].1, 0o600);
        assert!(v[1].2.is_empty());
        assert!(parse_framed(b"644 50 /x\nshort").is_err());
        assert!(parse_framed(b"").unwrap().is_empty());
    }
}
