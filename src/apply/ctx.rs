//! What every phase works with: the spec, the connections, the facts, the wanted files, and the
//! only helpers that change a host. Dry-run lives here and nowhere else: each helper either
//! acts or says what it would do, so that phases read the same in both modes.

use super::Options;
use super::facts::Facts;
use super::ops::Op;
use super::report::{Event, Kind, Reporter};
use crate::render::{Component, RenderedFile};
use crate::spec::Cluster;
use crate::state::State;
use crate::transport::{self, BoxFut, Output, Transport};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Serialize)]
pub struct HostStats {
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub ms: u128,
}

/// A file's checksum on a host, by (host, path); `None` where the file does not exist.
pub type Hashes = BTreeMap<(String, String), Option<String>>;

/// Stamped files (programs) that were hashed in full because their stamp was missing or stale,
/// with the `stat` seen then: (host, path) -> `size:inode:ctime`.
pub type Stale = BTreeMap<(String, String), String>;

/// How long one changing command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Files up to this size are written in one batch per host and component; larger ones
/// (binaries) one at a time.
const BATCH_MAX: usize = 256 * 1024;

pub struct Ctx {
    pub c: Cluster,
    pub opts: Options,
    pub hosts: BTreeMap<String, Arc<dyn Transport>>,
    pub facts: BTreeMap<String, Facts>,
    pub files: Vec<RenderedFile>,
    pub state: State,
    pub(super) stats: Mutex<BTreeMap<String, HostStats>>,
    /// Services whose inputs changed in an earlier phase: host -> services.
    pending: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Checksums of every wanted file as found on the hosts, read once up front (one round
    /// trip per host) and kept current as files are written.
    hashes: Mutex<Hashes>,
    /// Programs found as wanted whose stamp is to be recorded (see [`Stale`]).
    stale: Mutex<Stale>,
    /// Whether this run changed anything yet (a file written, a command run).
    acted: std::sync::atomic::AtomicBool,
    pub(super) phase: Mutex<&'static str>,
    reporter: Arc<dyn Reporter>,
}

/// What was found on the hosts before the first phase.
pub struct Found {
    pub facts: BTreeMap<String, Facts>,
    pub hashes: Hashes,
}

impl Ctx {
    pub fn new(
        c: Cluster,
        opts: Options,
        hosts: BTreeMap<String, Arc<dyn Transport>>,
        found: Found,
        files: Vec<RenderedFile>,
        state: State,
        reporter: Arc<dyn Reporter>,
    ) -> Ctx {
        let Found { facts, hashes } = found;
        Ctx {
            c,
            opts,
            hosts,
            facts,
            files,
            state,
            stats: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            hashes: Mutex::new(hashes),
            stale: Mutex::new(Stale::new()),
            acted: std::sync::atomic::AtomicBool::new(false),
            phase: Mutex::new("facts"),
            reporter,
        }
    }

    /// The programs that were hashed in full before the first phase (see [`Stale`]).
    pub(super) fn set_stale(&mut self, stale: Stale) {
        *self.stale.get_mut().unwrap_or_else(|e| e.into_inner()) = stale;
    }

    pub fn host(&self, name: &str) -> Result<&dyn Transport> {
        self.hosts
            .get(name)
            .map(|t| t.as_ref())
            .with_context(|| format!("no connection to {name}"))
    }

    pub fn facts(&self, name: &str) -> Result<&Facts> {
        self.facts
            .get(name)
            .with_context(|| format!("{name}: no facts were gathered"))
    }

    /// Whether `unit` was running on `host` when apply started.
    pub fn active(&self, host: &str, unit: &str) -> bool {
        self.facts.get(host).is_some_and(|f| f.active(unit))
    }

    pub fn dry_run(&self) -> bool {
        self.opts.dry_run
    }

    /// Whether this run has changed anything on a host so far (never in dry-run).
    pub fn acted(&self) -> bool {
        self.acted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn acting(&self) {
        self.acted.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn log(&self, kind: Kind, host: &str, msg: &str) {
        self.emit(kind, host, msg, None);
    }

    fn emit(&self, kind: Kind, host: &str, message: &str, diff: Option<&str>) {
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        self.reporter.event(&Event {
            kind,
            phase,
            host,
            message,
            diff,
        });
    }

    fn stat(&self, host: &str, f: impl FnOnce(&mut HostStats)) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(s.entry(host.to_string()).or_default());
    }

    /// Mark `svc` on `host` as needing a restart because its inputs changed.
    pub fn mark(&self, host: &str, svc: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.entry(host.to_string())
            .or_default()
            .insert(svc.to_string());
    }

    /// Whether `svc` on `host` was marked; clears the mark.
    pub fn take(&self, host: &str, svc: &str) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.get_mut(host).is_some_and(|s| s.remove(svc))
    }

    /// Bring the files of `component` on `host` up to date. Returns the changed ones and marks
    /// their services. In dry-run, reports unified diffs (secrets only by size) instead.
    pub async fn sync(&self, host: &str, component: Component) -> Result<Vec<RenderedFile>> {
        let want: Vec<&RenderedFile> = self
            .files
            .iter()
            .filter(|f| f.host == host && f.component == component)
            .collect();
        if want.is_empty() {
            return Ok(vec![]);
        }
        let t = self.host(host)?;
        let paths: Vec<String> = want.iter().map(|f| f.path.clone()).collect();
        let cached: Option<Vec<Option<String>>> = {
            let h = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
            paths
                .iter()
                .map(|p| h.get(&(host.to_string(), p.clone())).cloned())
                .collect()
        };
        let have = match cached {
            Some(v) => v,
            None => transport::remote_hashes(t, &paths).await?,
        };
        let mut changed = Vec::new();
        let mut batch = Vec::new();
        for (f, h) in want.iter().zip(have) {
            if h.as_deref() == Some(f.sha256().as_str()) {
                self.stat(host, |s| s.unchanged += 1);
                self.restamp(t, f).await?;
                continue;
            }
            let verb = if h.is_none() { "create" } else { "update" };
            if self.opts.dry_run {
                let diff = if let Some(src) = &f.source {
                    let size = std::fs::metadata(&**src).map(|m| m.len()).unwrap_or(0);
                    format!("({size} bytes from {}, contents not shown)", src.display())
                } else if f.secret || f.binary.is_some() {
                    format!("({} bytes, contents not shown)", f.data().len())
                } else {
                    let old = match h {
                        Some(_) => transport::read_file(t, &f.path).await?.unwrap_or_default(),
                        None => Vec::new(),
                    };
                    let old = String::from_utf8_lossy(&old).to_string();
                    similar::TextDiff::from_lines(&old, &f.content)
                        .unified_diff()
                        .context_radius(3)
                        .header(
                            &format!("{host}:{} (current)", f.path),
                            &format!("{host}:{} (wanted)", f.path),
                        )
                        .to_string()
                };
                self.emit(
                    Kind::Change,
                    host,
                    &format!("would {verb} {} ({:04o})", f.path, f.mode),
                    Some(&diff),
                );
            } else if f.source.is_some() || f.binary.is_some() || f.data().len() > BATCH_MAX {
                self.acting();
                if let Some(src) = &f.source {
                    let file = tokio::fs::File::open(&**src)
                        .await
                        .with_context(|| format!("reading {}", src.display()))?;
                    transport::write_stamped(t, &f.path, Box::pin(file), f.mode, &f.sha256())
                        .await?;
                } else if f.binary.is_some() {
                    let input: transport::Input = Box::pin(f.data());
                    transport::write_stamped(t, &f.path, input, f.mode, &f.sha256()).await?;
                } else {
                    transport::write_file(t, &f.path, f.data(), f.mode).await?;
                }
                self.written(host, f, verb);
            } else {
                self.acting();
                batch.push((*f, verb));
            }
            self.stat(host, |s| s.changed += 1);
            for svc in &f.services {
                self.mark(host, svc);
            }
            changed.push((*f).clone());
        }
        // Together, so that a certificate and its key change at once.
        let files: Vec<(&str, &[u8], u32)> = batch
            .iter()
            .map(|(f, _)| (f.path.as_str(), f.data(), f.mode))
            .collect();
        transport::write_files(t, &files).await?;
        for (f, verb) in batch {
            self.written(host, f, verb);
        }
        Ok(changed)
    }

    fn written(&self, host: &str, f: &RenderedFile, verb: &str) {
        self.hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((host.to_string(), f.path.clone()), Some(f.sha256()));
        self.log(Kind::Change, host, &format!("{verb}d {}", f.path));
    }

    /// A program found as wanted but hashed in full (no stamp yet, or a stale one): record its
    /// stamp, so that the next run need not read it. Not a change; nothing in dry-run.
    async fn restamp(&self, t: &dyn Transport, f: &RenderedFile) -> Result<()> {
        if self.opts.dry_run || !f.stamped() {
            return Ok(());
        }
        let key = (t.host().to_string(), f.path.clone());
        let stat = self
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some(stat) = stat {
            transport::restamp(t, &f.path, &f.sha256(), &stat).await?;
            self.log(
                Kind::Ok,
                t.host(),
                &format!("{} as wanted; stamped it (size, inode, change time) so that later runs need not read it", f.path),
            );
        }
        Ok(())
    }

    /// Run an operation that changes the host. In dry-run, only say so.
    pub async fn run(&self, host: &str, op: impl Into<Op>) -> Result<Option<Output>> {
        let op = op.into();
        if self.opts.dry_run {
            self.log(Kind::Command, host, &format!("would run: {op}"));
            return Ok(None);
        }
        self.log(Kind::Command, host, &op.to_string());
        self.acting();
        let t = self.host(host)?;
        match transport::run(t, &op.script(), &op.to_string(), COMMAND_TIMEOUT).await {
            Ok(o) => Ok(Some(o)),
            Err(e) => {
                self.stat(host, |s| s.failed += 1);
                Err(e.into())
            }
        }
    }

    /// A command with no type of its own (`display` never holds a secret): [`Ctx::run`] of an
    /// [`Op::Script`].
    pub async fn cmd(&self, host: &str, script: &str, display: &str) -> Result<Option<Output>> {
        self.run(host, Op::script_with_display(script, display))
            .await
    }

    /// A change made other than by a command on the host (an etcd API call, a file kept on the
    /// operator's side): `what` is reported, and in dry-run `act` is not called.
    pub async fn act<T, F, Fut>(&self, host: &str, what: &str, act: F) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.opts.dry_run {
            self.log(Kind::Command, host, &format!("would run: {what}"));
            return Ok(None);
        }
        self.log(Kind::Command, host, what);
        self.acting();
        act().await.map(Some)
    }

    /// Write one file that is not rendered (it depends on live state). In dry-run, only say so.
    pub async fn write(&self, host: &str, path: &str, data: &[u8], mode: u32) -> Result<()> {
        if self.opts.dry_run {
            self.log(
                Kind::Change,
                host,
                &format!("would write {path} ({mode:04o})"),
            );
            return Ok(());
        }
        self.acting();
        transport::write_file(self.host(host)?, path, data, mode).await?;
        self.stat(host, |s| s.changed += 1);
        self.log(Kind::Change, host, &format!("wrote {path}"));
        Ok(())
    }

    /// Poll `check` until it passes or `limit` runs out, reporting `what` is awaited and `done`
    /// once it is. In dry-run, only say what would be awaited.
    pub async fn wait<F, Fut>(
        &self,
        host: &str,
        what: &str,
        done: &str,
        limit: Duration,
        check: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        if self.opts.dry_run {
            self.log(Kind::Wait, host, &format!("would wait for {what}"));
            return Ok(());
        }
        self.log(Kind::Wait, host, &format!("waiting for {what}"));
        let who = if host.is_empty() {
            what.to_string()
        } else {
            format!("{host}: {what}")
        };
        wait_for(&who, limit, check).await?;
        self.log(Kind::Ok, host, done);
        Ok(())
    }

    /// Run `f` for every host in `names`, at most `concurrency` at a time; collect all errors.
    pub async fn each<'a, F>(&'a self, names: Vec<String>, f: F) -> Result<()>
    where
        F: Fn(String) -> BoxFut<'a, Result<()>>,
    {
        use futures::stream::StreamExt;
        let errors: Vec<String> = futures::stream::iter(names.into_iter().map(|n| {
            let start = Instant::now();
            let fut = f(n.clone());
            async move {
                let r = fut.await;
                self.stat(&n, |s| s.ms += start.elapsed().as_millis());
                r.err().map(|e| format!("{e:#}"))
            }
        }))
        .buffer_unordered(self.opts.concurrency.max(1))
        .filter_map(|e| async move { e })
        .collect()
        .await;
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("\n"))
        }
    }
}

/// Poll `check` until it succeeds or `limit` passes; the last error explains a timeout.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not reached within {}s", limit.as_secs())));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
