//! `hakube backup [list|verify]` and `hakube restore`: the command line.

use super::archive::Check;
use super::restore;
use super::retention::Policy;
use crate::spec::Cluster;
use crate::state::State;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    about = "Take a verified backup: one etcd snapshot, the operator state, the spec and the LB configs",
    long_about = "Takes one snapshot through etcd's snapshot API from one healthy member (a follower when \
there is one; it works with a member down), streams it to this machine, and keeps it only once it is \
proven: the SHA-256 that etcd appends, `etcdutl snapshot status`, the key count at its revision on the \
live cluster, and a trial restore opened with a real etcd on loopback and read back. The archive \
(one .tar, 0600) holds the snapshot, the operator state (CAs and keys), the spec, each load \
balancer's live haproxy.cfg and keepalived.conf, and a manifest with every file's SHA-256, the \
versions, the time, the revision, the key count and the checks. It is written as NAME.tar.partial \
and renamed when complete. Then old backups are removed: the newest --keep-last, and the newest of \
each of the last --keep-daily days and --keep-weekly weeks stay (spec.backup.retention sets \
the defaults).\n\nProgress goes to stderr; `-o \
json` prints a summary on stdout. Exit status: 0 kept, 2 failed (nothing kept). See docs/backup.md."
)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// The cluster spec.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Where backups go [default: .hakube/<cluster>/backups next to the spec, created 0700].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep this many newest backups [default: spec.backup.retention.keepLast, else 7].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub keep_last: Option<u16>,
    /// Also keep the newest backup of each of the last N days that have one [default:
    /// spec.backup.retention.daily, else 7].
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u16>,
    /// Also keep the newest backup of each of the last N weeks that have one [default:
    /// spec.backup.retention.weekly, else 4].
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u16>,
    /// Package an existing etcd snapshot file (say, from `etcdctl snapshot save` on a kubeadm
    /// control plane) instead of taking one; it is verified the same way.
    #[arg(long, value_name = "FILE")]
    pub from_snapshot: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Every backup with its age, size, revision, keys and verification result, newest first.
    List {
        /// The cluster spec (for the default folder).
        #[arg(
            short = 'f',
            long = "file",
            default_value = "cluster.yaml",
            value_name = "FILE"
        )]
        file: PathBuf,
        /// The backup folder [default: .hakube/<cluster>/backups next to the spec].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Verify a backup again: every file against its manifest, then the snapshot's trailer,
    /// `etcdutl snapshot status` and a trial restore. With -f, also that it belongs to that
    /// spec's cluster. A bare etcd snapshot file gets the snapshot checks alone.
    ///
    /// Exit status: 0 verified, 1 refused (damaged, or another cluster's), 2 error.
    Verify {
        /// The backup archive (or a bare etcd snapshot).
        #[arg(value_name = "FILE")]
        backup: PathBuf,
        /// The cluster the backup must belong to.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, clap::Args)]
#[command(
    about = "Restore the whole cluster from a backup (also with quorum lost, or onto new hosts)",
    long_about = "Verifies the backup first (every file, that it belongs to this cluster, the snapshot's three \
checks) and prepares the snapshot to restore (revision raised by --bump-revision and marked \
compacted, proven by a second trial restore); checks every control plane (etcdutl, disk space, the \
etcd config apply wrote for this spec) and copies the snapshot to each member, checked there. Only \
then: stops every API server, then etcd on every member; moves each data dir's content aside into \
hakube-pre-restore-<time> inside it (never deleted); restores every member with the initial \
cluster of the CURRENT spec (so new hosts and addresses work), its own peer URL and a new cluster \
token; starts the members together, waits until all are healthy, checks the revision and key \
count, starts every API server and checks /readyz through the VIP. With etcd.management: \
kubeadm the same goes through the static pod manifests.\n\nExit status: 0 restored (or dry run), \
2 failed after the cluster was changed (the report says where the old data is), 3 refused with \
nothing changed. See docs/backup.md."
)]
pub struct RestoreArgs {
    /// The backup archive.
    #[arg(value_name = "BACKUP")]
    pub backup: PathBuf,
    /// The cluster spec: where to restore (its hosts and addresses, not the backup's).
    #[arg(
        short = 'f',
        long = "file",
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Go ahead: every member's data is replaced (moved aside, not deleted).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Verify and prepare, then print every step and command; change nothing on the hosts.
    #[arg(long)]
    pub dry_run: bool,
    /// Raise the restored revision by this much, above anything a client saw before.
    #[arg(long, default_value_t = restore::DEFAULT_BUMP, value_parser = clap::value_parser!(i64).range(1..), value_name = "N")]
    pub bump_revision: i64,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn load(file: &Path) -> Result<Option<Cluster>> {
    crate::output::load_spec(file, "nothing was done")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Progress on stderr, with the time since the start.
fn progress() -> impl Fn(&str) + Sync {
    let start = Instant::now();
    move |m: &str| eprintln!("{:>6.1}s {m}", start.elapsed().as_secs_f64())
}

fn checks_line(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| format!("{:?} {}", c.check, if c.ok { "ok" } else { "FAILED" }))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run_backup(a: BackupArgs) -> Result<i32> {
    match a.command {
        Some(BackupCommand::List { file, dir, output }) => return list(&file, dir, output),
        Some(BackupCommand::Verify {
            backup,
            file,
            output,
        }) => return verify(&backup, file.as_deref(), output),
        None => {}
    }
    let Some(c) = load(&a.file)? else {
        return Ok(2);
    };
    let spec = super::spec_policy(&c);
    let policy = Policy {
        keep_last: a.keep_last.map_or(spec.keep_last, usize::from),
        keep_daily: a.keep_daily.map_or(spec.keep_daily, usize::from),
        keep_weekly: a.keep_weekly.map_or(spec.keep_weekly, usize::from),
    };
    let o = super::Options {
        spec_file: a.file.clone(),
        out: a.out.clone(),
        policy,
        from_snapshot: a.from_snapshot.clone(),
    };
    let log = progress();
    let r = runtime()?.block_on(super::backup(&c, &o, &log))?;
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    let from = match (&r.source.member, r.source.was_leader) {
        (Some(m), Some(true)) => format!("from {m} (the leader)"),
        (Some(m), _) => format!("from {m} (a follower)"),
        _ => format!("from {}", r.source.file.as_deref().unwrap_or("a file")),
    };
    println!("wrote {}", r.file);
    println!(
        "  snapshot   {} {from}, revision {}, {} keys",
        super::human(r.snapshot_bytes),
        r.revision,
        r.keys
    );
    println!("  verified   {}", checks_line(&r.checks));
    println!(
        "  time       transfer {:.1}s ({:.1} MiB/s), verify {:.1}s, total {:.1}s",
        r.transfer_ms as f64 / 1000.0,
        r.transfer_mib_s,
        r.verify_ms as f64 / 1000.0,
        r.total_ms as f64 / 1000.0
    );
    println!(
        "  retention  {} kept, {} removed (keep last {}, daily {}, weekly {})",
        r.kept,
        r.removed.len(),
        policy.keep_last,
        policy.keep_daily,
        policy.keep_weekly
    );
    for w in &r.warnings {
        println!("  warning    {w}");
    }
    Ok(0)
}

/// "3d 4h", "2h 5m", "7m", "12s".
pub fn age(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn list(file: &Path, dir: Option<PathBuf>, output: Output) -> Result<i32> {
    let dir = match dir {
        Some(d) => d,
        None => match load(file)? {
            Some(c) => super::default_dir(&c),
            None => return Ok(2),
        },
    };
    let items = super::list(&dir)?;
    if output == Output::Json {
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "lastVerified": super::last_verified(&dir),
            "backups": items,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if items.is_empty() {
        println!("no backups in {}", dir.display());
        return Ok(0);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "file",
        "created (UTC)",
        "age",
        "size",
        "revision",
        "keys",
        "verified",
    ]);
    for l in &items {
        let name = Path::new(&l.file)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let size = super::human(l.bytes);
        let Some(m) = &l.manifest else {
            let why = l
                .error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            t.add_row(vec![
                name,
                "-".into(),
                "-".into(),
                size,
                "-".into(),
                "-".into(),
                format!("UNREADABLE: {why}"),
            ]);
            continue;
        };
        let verified = match &l.reverified {
            Some(r) if r.ok => format!("ok (again {} ago)", age(now.saturating_sub(r.at_unix))),
            Some(r) => format!(
                "FAILED {} ago: {}",
                age(now.saturating_sub(r.at_unix)),
                r.detail
            ),
            None if m.verification.ok => "ok".into(),
            None => "FAILED".into(),
        };
        t.add_row(vec![
            name,
            m.created_at.clone(),
            age(now.saturating_sub(m.created_unix)),
            size,
            m.snapshot.revision.to_string(),
            m.snapshot.keys.to_string(),
            verified,
        ]);
    }
    println!("{}\n{t}", dir.display());
    if let Some(l) = super::last_verified(&dir) {
        println!(
            "last verified backup: {} ({} ago)",
            l.file,
            age(now.saturating_sub(l.created_unix))
        );
    }
    Ok(0)
}

fn verify(backup: &Path, file: Option<&Path>, output: Output) -> Result<i32> {
    let cluster = match file {
        Some(f) => match load(f)? {
            Some(c) => Some(c),
            None => return Ok(2),
        },
        None => None,
    };
    let state = cluster.as_ref().map(State::open).transpose()?;
    let log = progress();
    let v = runtime()?.block_on(async {
        let with = cluster.as_ref().zip(state.as_ref());
        super::verify(backup, with, None, &log).await
    })?;
    super::record_reverify(backup, &v);
    if output == Output::Json {
        let j = serde_json::json!({
            "file": backup.display().to_string(),
            "ok": v.ok,
            "checks": v.checks,
            "manifest": v.manifest,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        for c in &v.checks {
            println!("  {}", c.line());
        }
        match v.failure() {
            None => println!("{}: verified", backup.display()),
            Some(f) => eprintln!(
                "error: {} is refused: {:?} check failed: {}",
                backup.display(),
                f.check,
                f.detail
            ),
        }
    }
    Ok(if v.ok { 0 } else { 1 })
}

pub fn run_restore(a: RestoreArgs) -> Result<i32> {
    let Some(c) = load(&a.file)? else {
        return Ok(2);
    };
    let o = restore::Options {
        backup: a.backup.clone(),
        yes: a.yes,
        dry_run: a.dry_run,
        bump: a.bump_revision,
    };
    let log = progress();
    let r = runtime()?.block_on(restore::restore(&c, &o, &log));
    if a.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", restore::render_text(&r));
    }
    if let Some(e) = &r.error {
        eprintln!("error: {e}");
    }
    Ok(r.outcome.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(12), "12s");
        assert_eq!(age(7 * 60 + 5), "7m");
        assert_eq!(age(2 * 3600 + 5 * 60), "2h 5m");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
    }
}
