//! `hakube apply`: converge every host to the spec, in an ordered list of small phases.
//!
//! Each phase knows whether it has anything to do (it compares checksums and live state first),
//! does it, and in `--dry-run` describes the same steps instead: unified diffs of files and the
//! commands it would run. Dry-run and apply share one code path; only the mutating helpers
//! ([`Ctx::sync`], [`Ctx::cmd`]) branch.

pub mod facts;
pub mod files;
pub mod members;
pub(crate) mod phases;

use crate::render::RenderedFile;
use crate::spec::Cluster;
use crate::state::State;
use crate::transport::{self, BoxFut, Output, Transport};
use anyhow::{Context, Result, bail};
use facts::Facts;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub concurrency: usize,
    pub force: bool,
    /// Replace the CAs the live cluster uses with this state folder's (every certificate is
    /// issued again and every member restarts): refused without it.
    pub replace_ca: bool,
    /// Leaf certificates to issue again (`hakube certs renew`), by name (`etcd/master1-peer`).
    pub renew: BTreeSet<String>,
    pub json: bool,
    /// The lab API server binary to install with `bootstrap: lab`.
    pub lab_apiserver: Option<PathBuf>,
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            concurrency: 30,
            force: false,
            replace_ca: false,
            renew: BTreeSet::new(),
            json: false,
            lab_apiserver: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A phase of apply.
pub trait Phase: Send + Sync {
    fn name(&self) -> &'static str;
    /// One line on what the phase does, for `--dry-run` and logs.
    fn describe(&self) -> &'static str;
    /// Whether the phase concerns this cluster at all (it may still find nothing to change).
    fn applies(&self, _c: &Cluster) -> bool {
        true
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>>;
}

/// The phases, in order.
pub fn phases() -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(phases::Prepare),
        Box::new(phases::Pki),
        Box::new(phases::Etcd),
        Box::new(phases::LoadBalancers),
        Box::new(phases::ControlPlane),
        Box::new(phases::Workers),
        Box::new(phases::Verify),
    ]
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct HostStats {
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub ms: u128,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub changed: usize,
    pub hosts: BTreeMap<String, HostStats>,
    pub phases: Vec<(String, u128)>,
    pub error: Option<String>,
}

pub struct Ctx {
    pub c: Cluster,
    pub opts: Options,
    pub hosts: BTreeMap<String, Arc<dyn Transport>>,
    pub facts: BTreeMap<String, Facts>,
    pub files: Vec<RenderedFile>,
    pub state: State,
    stats: Mutex<BTreeMap<String, HostStats>>,
    /// Services whose inputs changed in an earlier phase: host -> services.
    pending: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Checksums of every wanted file as found on the hosts, read once up front (one round
    /// trip per host) and kept current as files are written.
    hashes: Mutex<Hashes>,
    phase: Mutex<&'static str>,
    out: Mutex<()>,
}

#[derive(Serialize)]
struct Event<'a> {
    event: &'a str,
    phase: &'a str,
    host: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<&'a str>,
}

impl Ctx {
    pub fn host(&self, name: &str) -> Result<&dyn Transport> {
        self.hosts
            .get(name)
            .map(|t| t.as_ref())
            .with_context(|| format!("no connection to {name}"))
    }

    pub fn log(&self, kind: &str, host: &str, msg: &str) {
        self.emit(kind, host, msg, None);
    }

    fn emit(&self, kind: &str, host: &str, msg: &str, diff: Option<&str>) {
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let _g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let mut o = std::io::stdout().lock();
        if self.opts.json {
            let e = Event {
                event: kind,
                phase,
                host,
                message: msg,
                diff,
            };
            let _ = writeln!(o, "{}", serde_json::to_string(&e).unwrap_or_default());
        } else {
            let mark = match kind {
                "change" => "~",
                "command" => "$",
                "wait" => "…",
                "ok" => "✓",
                "warn" => "!",
                _ => " ",
            };
            let h = if host.is_empty() {
                String::new()
            } else {
                format!("{host}: ")
            };
            let _ = writeln!(o, "[{phase:<13}] {mark} {h}{msg}");
            if let Some(d) = diff {
                for line in d.lines() {
                    let _ = writeln!(o, "                    {line}");
                }
            }
        }
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

    /// Bring the files of `host` that match `filter` up to date. Returns the changed ones and
    /// marks their services. In dry-run, prints unified diffs (secrets only by size) instead.
    pub async fn sync(
        &self,
        host: &str,
        filter: impl Fn(&RenderedFile) -> bool,
    ) -> Result<Vec<RenderedFile>> {
        let want: Vec<&RenderedFile> = self
            .files
            .iter()
            .filter(|f| f.host == host && filter(f))
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
        for (f, h) in want.iter().zip(have) {
            if h.as_deref() == Some(f.sha256().as_str()) {
                self.stat(host, |s| s.unchanged += 1);
                continue;
            }
            let verb = if h.is_none() { "create" } else { "update" };
            if self.opts.dry_run {
                let diff = if f.secret || f.binary.is_some() {
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
                    "change",
                    host,
                    &format!("would {verb} {} ({:04o})", f.path, f.mode),
                    Some(&diff),
                );
            } else {
                transport::write_file(t, &f.path, f.data(), f.mode).await?;
                self.hashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((host.to_string(), f.path.clone()), Some(f.sha256()));
                self.log("change", host, &format!("{verb}d {}", f.path));
            }
            self.stat(host, |s| s.changed += 1);
            for svc in &f.services {
                self.mark(host, svc);
            }
            changed.push((*f).clone());
        }
        Ok(changed)
    }

    /// Run a command that changes the host. In dry-run, only say so.
    pub async fn cmd(&self, host: &str, script: &str, display: &str) -> Result<Option<Output>> {
        if self.opts.dry_run {
            self.log("command", host, &format!("would run: {display}"));
            return Ok(None);
        }
        self.log("command", host, display);
        let t = self.host(host)?;
        match transport::run(t, script, display, Duration::from_secs(180)).await {
            Ok(o) => Ok(Some(o)),
            Err(e) => {
                self.stat(host, |s| s.failed += 1);
                Err(e.into())
            }
        }
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

/// Connect to every host in parallel. All failures are reported together.
pub async fn connect(c: &Cluster, opts: &Options) -> Result<BTreeMap<String, Arc<dyn Transport>>> {
    use futures::stream::StreamExt;
    let results: Vec<(String, transport::Result<Arc<dyn Transport>>)> =
        futures::stream::iter(c.hosts.iter().map(|h| async move {
            let r = transport::ssh::Ssh::connect(h, &c.base_dir, opts.connect_timeout)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Transport>);
            (h.name.clone(), r)
        }))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut hosts = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, r) in results {
        match r {
            Ok(t) => {
                hosts.insert(name, t);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        errors.sort();
        bail!(
            "cannot reach {} host(s); nothing was changed:\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    Ok(hosts)
}

/// The whole of `apply`: take the lock, connect, then the phases. Always a summary: whatever
/// stops it early is its `error`, so that `-o json` prints the same object either way.
pub async fn run(c: Cluster, opts: Options) -> Summary {
    let started = Instant::now();
    let failed = |e: anyhow::Error, dry_run: bool| Summary {
        dry_run,
        changed: 0,
        hosts: BTreeMap::new(),
        phases: vec![("total".into(), started.elapsed().as_millis())],
        error: Some(format!("{e:#}")),
    };
    let _lock = if opts.dry_run {
        None
    } else {
        match State::lock(&c) {
            Ok(l) => Some(l),
            Err(e) => return failed(e, opts.dry_run),
        }
    };
    // A pinned etcd's tarball is checked here, before any host is touched.
    if let Some(i) = &c.etcd.install
        && let Err(e) = crate::install::etcd::local_tarball(&c, i)
    {
        return failed(e, opts.dry_run);
    }
    match connect(&c, &opts).await {
        Ok(hosts) => apply(c, opts, hosts).await,
        Err(e) => failed(e, opts.dry_run),
    }
}

/// Run apply (or its dry-run) on connected hosts.
pub async fn apply(
    c: Cluster,
    opts: Options,
    hosts: BTreeMap<String, Arc<dyn Transport>>,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary {
        dry_run: opts.dry_run,
        changed: 0,
        hosts: BTreeMap::new(),
        phases: vec![],
        error: None,
    };
    let ctx = match prepare_ctx(c, opts, hosts).await {
        Ok(ctx) => ctx,
        Err(e) => {
            summary.error = Some(format!("{e:#}"));
            return summary;
        }
    };
    for p in phases() {
        if !p.applies(&ctx.c) {
            continue;
        }
        *ctx.phase.lock().unwrap_or_else(|e| e.into_inner()) = p.name();
        ctx.log("info", "", p.describe());
        let t = Instant::now();
        let r = p.run(&ctx).await;
        let ms = t.elapsed().as_millis();
        summary.phases.push((p.name().to_string(), ms));
        ctx.log("info", "", &format!("done in {:.1}s", ms as f64 / 1000.0));
        if let Err(e) = r {
            summary.error = Some(format!("phase {}: {e:#}", p.name()));
            break;
        }
    }
    summary.hosts = ctx.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    summary.changed = summary.hosts.values().map(|s| s.changed).sum();
    summary
        .phases
        .push(("total".into(), started.elapsed().as_millis()));
    summary
}

/// Connect and gather facts as apply does, for commands that work through apply's helpers
/// (`hakube upgrade`): the same files, state and dry-run behaviour.
pub async fn context(c: Cluster, opts: Options) -> Result<Ctx> {
    let hosts = connect(&c, &opts).await?;
    prepare_ctx(c, opts, hosts).await
}

impl Ctx {
    /// Name the current step in log lines (`[etcd         ]`).
    pub fn set_phase(&self, name: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }
}

async fn prepare_ctx(
    c: Cluster,
    opts: Options,
    hosts: BTreeMap<String, Arc<dyn Transport>>,
) -> Result<Ctx> {
    // Facts from every host in parallel, then every problem at once.
    let mut facts = BTreeMap::new();
    let mut errors = Vec::new();
    use futures::stream::StreamExt;
    let limit = opts.concurrency.max(1);
    let gathered: Vec<(String, Result<Facts>)> =
        futures::stream::iter(hosts.iter().map(|(n, t)| {
            let c = &c;
            async move { (n.clone(), facts::gather(t.as_ref(), c).await) }
        }))
        .buffer_unordered(limit)
        .collect()
        .await;
    for (n, r) in gathered {
        match r {
            Ok(f) => {
                facts.insert(n, f);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    errors.extend(facts::check(&c, &facts));
    if !errors.is_empty() {
        bail!(
            "the hosts do not match the spec; nothing was changed:\n{}",
            errors.join("\n")
        );
    }
    // The interface that carries each address, as found on the host.
    let mut c = c;
    for h in &mut c.hosts {
        if h.interface.is_none() {
            h.interface = facts
                .get(&h.name)
                .and_then(|f| f.interface_of(&h.address.to_string()))
                .map(String::from);
        }
    }
    // A new state folder is only written once the hosts are known not to use other CAs.
    let fresh = !State::exists(&c);
    let mut state = if opts.dry_run || fresh {
        State::plan(&c)?
    } else {
        State::open_or_init(&c)?
    }
    .renewing(opts.renew.clone());
    let lab_bin = match (&opts.lab_apiserver, c.kubernetes.bootstrap) {
        (Some(p), _) => Some(p.clone()),
        (None, crate::spec::Bootstrap::Lab) => Some(default_lab_apiserver()?),
        _ => None,
    };
    let mut files = files::desired(&c, &state, lab_bin.as_deref())?;
    let hashes = prefetch_hashes(&hosts, &files, limit).await?;
    if !opts.replace_ca {
        check_same_cas(&c, &state, &files, &hashes, &hosts).await?;
    }
    if fresh && !opts.dry_run {
        state = State::open_or_init(&c)?.renewing(opts.renew.clone());
        files = files::desired(&c, &state, lab_bin.as_deref())?;
    }
    Ok(Ctx {
        c,
        opts,
        hosts,
        facts,
        files,
        state,
        stats: Mutex::new(BTreeMap::new()),
        pending: Mutex::new(BTreeMap::new()),
        hashes: Mutex::new(hashes),
        phase: Mutex::new("facts"),
        out: Mutex::new(()),
    })
}

/// Refuse to hand the cluster CAs it does not trust: a CA file on a host that differs from this
/// state folder's means the cluster was built from another one (a copied spec without its
/// `.hakube` folder, say), and going on would replace every certificate at once.
async fn check_same_cas(
    c: &Cluster,
    state: &State,
    files: &[RenderedFile],
    hashes: &Hashes,
    hosts: &BTreeMap<String, Arc<dyn Transport>>,
) -> Result<()> {
    let cas = [
        ("/etc/etcd/pki/ca.crt", "etcd CA", &state.etcd_ca),
        (
            &*format!("{}/ca.crt", files::LAB_PKI),
            "cluster CA",
            &state.cluster_ca,
        ),
    ];
    let mut found = vec![];
    for f in files {
        let Some((_, what, ca)) = cas.iter().find(|(p, _, _)| *p == f.path) else {
            continue;
        };
        if let Some(Some(live)) = hashes.get(&(f.host.clone(), f.path.clone()))
            && *live != f.sha256()
        {
            found.push(format!(
                "  {}: {} is {} (sha256 {}…), not this state's {} ({}, sha256 {}…)",
                f.host,
                f.path,
                what,
                &live[..live.len().min(16)],
                what,
                ca.cert_path().display(),
                &f.sha256()[..16],
            ));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let host = files
        .iter()
        .find(|f| {
            f.path == crate::state::MARKER_PATH
                && matches!(hashes.get(&(f.host.clone(), f.path.clone())), Some(Some(_)))
        })
        .map(|f| f.host.clone());
    let built_from = match host.as_ref().and_then(|h| hosts.get(h)) {
        Some(t) => match transport::read_file(t.as_ref(), crate::state::MARKER_PATH).await {
            Ok(Some(bytes)) => serde_json::from_slice::<crate::state::Marker>(&bytes)
                .map(|m| {
                    format!(
                        "the hosts say it was built from the state folder {} on {}",
                        m.state_dir, m.operator_host
                    )
                })
                .unwrap_or_else(|_| {
                    format!("{} on the hosts is unreadable", crate::state::MARKER_PATH)
                }),
            _ => "the hosts do not say which state folder built it".to_string(),
        },
        None => "the hosts do not say which state folder built it".to_string(),
    };
    bail!(
        "cluster {} was built with other CAs than the ones in {}; nothing was changed:\n{}\n  \
         {built_from}.\n  help: run hakube with the spec next to that .hakube folder (or copy the \
         folder next to this spec). To replace the cluster's CAs on purpose (every certificate is \
         issued again and etcd and the API servers restart with them, with downtime), pass \
         --replace-ca",
        c.name,
        state.dir().display(),
        found.join("\n"),
    )
}

/// A file's checksum on a host, by (host, path); `None` where the file does not exist.
type Hashes = BTreeMap<(String, String), Option<String>>;

/// Every wanted file's checksum on its host, one round trip per host, in parallel.
async fn prefetch_hashes(
    hosts: &BTreeMap<String, Arc<dyn Transport>>,
    files: &[RenderedFile],
    limit: usize,
) -> Result<Hashes> {
    use futures::stream::StreamExt;
    let results: Vec<Result<Hashes>> =
        futures::stream::iter(hosts.iter().map(|(n, t)| async move {
            let paths: Vec<String> = files
                .iter()
                .filter(|f| &f.host == n)
                .map(|f| f.path.clone())
                .collect();
            let sums = transport::remote_hashes(t.as_ref(), &paths).await?;
            Ok(paths
                .into_iter()
                .zip(sums)
                .map(|(p, h)| ((n.clone(), p), h))
                .collect())
        }))
        .buffer_unordered(limit)
        .collect()
        .await;
    let mut out = Hashes::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// The lab API server binary next to this executable.
pub fn default_lab_apiserver() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("hakube-lab-apiserver");
    if !p.exists() {
        bail!(
            "bootstrap: lab needs the hakube-lab-apiserver binary next to hakube ({})\n  help: cargo build --bins",
            p.display()
        );
    }
    Ok(p)
}
