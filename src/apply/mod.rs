//! `hakube apply`: converge every host to the spec, in an ordered list of small phases.
//!
//! Each phase knows whether it has anything to do (it compares checksums and live state first),
//! does it, and in `--dry-run` describes the same steps instead: unified diffs of files and the
//! commands it would run. Dry-run and apply share one code path; only [`Ctx`]'s helpers
//! branch. One file per phase lives in `phase/`; [`phases`] is their order.

mod ctx;
pub mod facts;
pub mod files;
pub mod members;
pub mod ops;
pub(crate) mod phase;
pub mod report;

use crate::render::RenderedFile;
use crate::spec::Cluster;
use crate::state::State;
use crate::transport::{self, BoxFut, Transport};
use anyhow::{Result, bail};
/// What a [`Ctx`] starts from (for contexts built over other transports in tests).
pub(crate) use ctx::Found;
pub use ctx::{Ctx, HostStats, wait_for};
use ctx::{Hashes, Stale};
use facts::Facts;
pub use phase::convergence_limit;
use report::{Kind, Reporter};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
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
        Box::new(phase::prepare::Prepare),
        Box::new(phase::pki::Pki),
        Box::new(phase::etcd::Etcd),
        Box::new(phase::load_balancers::LoadBalancers),
        Box::new(phase::control_plane::ControlPlane),
        Box::new(phase::backups::Backups),
        Box::new(phase::workers::Workers),
        Box::new(phase::verify::Verify),
    ]
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub changed: usize,
    pub hosts: BTreeMap<String, HostStats>,
    pub phases: Vec<(String, u128)>,
    pub error: Option<String>,
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
    // A sudo that asks for a password is found by the first script on each host (see
    // `gather`): no round trip of its own.
    Ok(hosts)
}

/// The whole of `apply`: take the lock, connect, then the phases. Always a summary: whatever
/// stops it early is its `error`, so that `-o json` prints the same object either way.
pub async fn run(c: Cluster, opts: Options, reporter: Arc<dyn Reporter>) -> Summary {
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
    let connecting = Instant::now();
    match connect(&c, &opts).await {
        Ok(hosts) => {
            let connect_ms = connecting.elapsed().as_millis();
            let mut s = apply(c, opts, hosts, reporter).await;
            // Connecting is the first step of the breakdown, and part of the total.
            s.phases.insert(0, ("connect".into(), connect_ms));
            if let Some((_, total)) = s.phases.iter_mut().find(|(p, _)| p == "total") {
                *total = started.elapsed().as_millis();
            }
            s
        }
        Err(e) => failed(e, opts.dry_run),
    }
}

/// Run apply (or its dry-run) on connected hosts.
pub async fn apply(
    c: Cluster,
    opts: Options,
    hosts: BTreeMap<String, Arc<dyn Transport>>,
    reporter: Arc<dyn Reporter>,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary {
        dry_run: opts.dry_run,
        changed: 0,
        hosts: BTreeMap::new(),
        phases: vec![],
        error: None,
    };
    let gathering = Instant::now();
    let ctx = match prepare_ctx(c, opts, hosts, reporter).await {
        Ok(ctx) => {
            // Facts, the clock probe and every file's checksum, before the first phase.
            summary
                .phases
                .push(("facts".into(), gathering.elapsed().as_millis()));
            ctx
        }
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
        ctx.log(Kind::Info, "", p.describe());
        let t = Instant::now();
        let r = p.run(&ctx).await;
        let ms = t.elapsed().as_millis();
        summary.phases.push((p.name().to_string(), ms));
        ctx.log(
            Kind::Info,
            "",
            &format!("done in {:.1}s", ms as f64 / 1000.0),
        );
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
pub async fn context(c: Cluster, opts: Options, reporter: Arc<dyn Reporter>) -> Result<Ctx> {
    let hosts = connect(&c, &opts).await?;
    prepare_ctx(c, opts, hosts, reporter).await
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
    reporter: Arc<dyn Reporter>,
) -> Result<Ctx> {
    let limit = opts.concurrency.max(1);
    // Read and hashed once, shared by every control plane's file.
    let lab_bin = match (&opts.lab_apiserver, c.kubernetes.bootstrap) {
        (Some(p), _) => Some(files::Program::load(p)?),
        (None, crate::spec::Bootstrap::Lab) => {
            Some(files::Program::load(&default_lab_apiserver()?)?)
        }
        _ => None,
    };
    // Which files each host should have: only their paths count here (an interface found on the
    // host may change their contents), and a planned state writes nothing before the checks.
    let planned = files::desired(&c, &State::plan(&c)?, lab_bin.as_ref())?;
    let Gathered {
        facts,
        hashes,
        stale,
    } = gather(&c, &hosts, &planned, limit).await?;
    drop(planned);
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
    let mut files = files::desired(&c, &state, lab_bin.as_ref())?;
    if !opts.replace_ca {
        check_same_cas(&c, &state, &files, &hashes, &hosts).await?;
    }
    if fresh && !opts.dry_run {
        state = State::open_or_init(&c)?.renewing(opts.renew.clone());
        files = files::desired(&c, &state, lab_bin.as_ref())?;
    }
    let mut ctx = Ctx::new(
        c,
        opts,
        hosts,
        Found { facts, hashes },
        files,
        state,
        reporter,
    );
    ctx.set_stale(stale);
    Ok(ctx)
}

/// What the hosts told before the first phase.
struct Gathered {
    facts: BTreeMap<String, Facts>,
    hashes: Hashes,
    stale: Stale,
}

/// One round trip per host, at most `limit` at a time: facts, clock and the checksum of every
/// file in `files` (programs by their stamps). Then every problem at once, before anything
/// changes; a sudo that asks for a password is one message for all hosts.
async fn gather(
    c: &Cluster,
    hosts: &BTreeMap<String, Arc<dyn Transport>>,
    files: &[RenderedFile],
    limit: usize,
) -> Result<Gathered> {
    use futures::stream::StreamExt;
    let mut wanted: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for f in files {
        wanted
            .entry(f.host.as_str())
            .or_default()
            .push((f.path.as_str(), f.stamped()));
    }
    let results: Vec<_> = futures::stream::iter(hosts.iter().map(|(n, t)| {
        let want = wanted.get(n.as_str()).cloned().unwrap_or_default();
        async move {
            let r = facts::gather(t.as_ref(), c, &want).await;
            (n, want, r)
        }
    }))
    .buffer_unordered(limit)
    .collect()
    .await;
    let mut out = Gathered {
        facts: BTreeMap::new(),
        hashes: Hashes::new(),
        stale: Stale::new(),
    };
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    for (n, want, r) in results {
        match r {
            Ok((f, sums)) => {
                for ((path, _), sum) in want.into_iter().zip(sums) {
                    let key = (n.clone(), path.to_string());
                    if let transport::Sum::Hashed { stat, .. } = &sum {
                        out.stale.insert(key.clone(), stat.clone());
                    }
                    out.hashes.insert(key, sum.hash().map(String::from));
                }
                out.facts.insert(n.clone(), f);
            }
            Err(facts::GatherError::Transport(transport::Error::SudoRefused {
                host,
                user,
                detail,
                ..
            })) => refused.push((user, detail, host)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(msg) = transport::error::sudo_refusals(refused, "nothing was changed") {
        bail!("{msg}");
    }
    errors.sort();
    errors.extend(facts::check(c, &out.facts));
    if !errors.is_empty() {
        bail!(
            "the hosts do not match the spec; nothing was changed:\n{}",
            errors.join("\n")
        );
    }
    Ok(out)
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

/// Every wanted file's checksum on its host, one round trip per host, in parallel (what
/// [`gather`] does with the facts, for contexts built over other transports in tests).
#[cfg(test)]
pub(crate) async fn prefetch_hashes(
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
