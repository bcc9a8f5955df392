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

/// Connect to every host in parallel, and check that each runs commands as root. All failures
/// are reported together. (Apply itself uses [`reach`], whose first script is the sudo check.)
pub async fn connect(c: &Cluster, opts: &Options) -> Result<BTreeMap<String, Arc<dyn Transport>>> {
    let (hosts, _, _) = reach(c, opts, |_, _| async {}).await?;
    if c.hosts.iter().any(|h| h.ssh.user != "root") {
        transport::check_sudo(&hosts, opts.concurrency, "nothing was changed")
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(hosts)
}

/// Connect to every host, `opts.concurrency` at a time, running `then` on each connection as
/// soon as it is up (so that a host's first script need not wait for the slowest connect).
/// Returns the connections, `then`'s answers and how long the connects took. If any host cannot
/// be reached, every such host is reported and nothing else is returned.
async fn reach<'a, T, F, Fut>(
    c: &'a Cluster,
    opts: &Options,
    then: F,
) -> Result<(BTreeMap<String, Arc<dyn Transport>>, Vec<(String, T)>, u128)>
where
    F: Fn(&'a crate::spec::Host, Arc<dyn Transport>) -> Fut,
    Fut: Future<Output = T>,
{
    use futures::stream::StreamExt;
    let started = Instant::now();
    let last_connect = std::sync::Mutex::new(0u128);
    let (then, last) = (&then, &last_connect);
    type Connected<T> = transport::Result<(Arc<dyn Transport>, T)>;
    let results: Vec<(String, Connected<T>)> =
        futures::stream::iter(c.hosts.iter().map(|h| async move {
            let r = transport::ssh::Ssh::connect(h, &c.base_dir, opts.connect_timeout).await;
            {
                let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
                *l = (*l).max(started.elapsed().as_millis());
            }
            let r = match r {
                Ok(s) => {
                    let t = Arc::new(s) as Arc<dyn Transport>;
                    let answer = then(h, t.clone()).await;
                    Ok((t, answer))
                }
                Err(e) => Err(e),
            };
            (h.name.clone(), r)
        }))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut hosts = BTreeMap::new();
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    for (name, r) in results {
        match r {
            Ok((t, a)) => {
                hosts.insert(name.clone(), t);
                answers.push((name, a));
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
    let connect_ms = *last_connect.lock().unwrap_or_else(|e| e.into_inner());
    Ok((hosts, answers, connect_ms))
}

/// Connect and gather: each host's one script runs as soon as its connection is up. Then every
/// problem at once, before anything changes.
async fn reach_and_gather(c: &Cluster, opts: &Options) -> Result<Reached> {
    let started = Instant::now();
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
    let planned = files::desired(c, &State::plan(c)?, lab_bin.as_ref())?;
    let mut wanted: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for f in &planned {
        wanted
            .entry(f.host.as_str())
            .or_default()
            .push((f.path.as_str(), f.stamped()));
    }
    let wanted = &wanted;
    let (hosts, answers, connect_ms) = reach(c, opts, |h, t| async move {
        let want = wanted.get(h.name.as_str()).cloned().unwrap_or_default();
        let r = facts::gather(t.as_ref(), c, &want).await;
        (want, r)
    })
    .await?;
    let gathered = collect(c, answers)?;
    Ok(Reached {
        hosts,
        gathered,
        lab_bin,
        connect_ms,
        gather_ms: started.elapsed().as_millis().saturating_sub(connect_ms),
    })
}

/// The hosts, connected, and what they told.
pub struct Reached {
    hosts: BTreeMap<String, Arc<dyn Transport>>,
    gathered: Gathered,
    lab_bin: Option<files::Program>,
    /// Until the last connection was up; then until the last host had answered.
    connect_ms: u128,
    gather_ms: u128,
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
    crate::transport::tunnel::setup(&c).await;
    match reach_and_gather(&c, &opts).await {
        Ok(reached) => {
            let mut s = apply(c, opts, reached, reporter).await;
            // The whole run, from the lock on.
            if let Some((_, total)) = s.phases.iter_mut().find(|(p, _)| p == "total") {
                *total = started.elapsed().as_millis();
            }
            s
        }
        Err(e) => failed(e, opts.dry_run),
    }
}

/// Run apply (or its dry-run) on reached hosts.
pub async fn apply(
    c: Cluster,
    opts: Options,
    reached: Reached,
    reporter: Arc<dyn Reporter>,
) -> Summary {
    let started = Instant::now();
    // Connecting, then the rest of the facts, the clock probe and every file's checksum (they
    // overlap: a host's script starts once its own connection is up).
    let mut summary = Summary {
        dry_run: opts.dry_run,
        changed: 0,
        hosts: BTreeMap::new(),
        phases: vec![
            ("connect".into(), reached.connect_ms),
            ("facts".into(), reached.gather_ms),
        ],
        error: None,
    };
    let ctx = match prepare_ctx(c, opts, reached, reporter).await {
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
    let reached = reach_and_gather(&c, &opts).await?;
    prepare_ctx(c, opts, reached, reporter).await
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
    reached: Reached,
    reporter: Arc<dyn Reporter>,
) -> Result<Ctx> {
    let Reached {
        hosts,
        gathered: Gathered {
            facts,
            hashes,
            stale,
        },
        lab_bin,
        ..
    } = reached;
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

/// Each host's answer to its one script (facts, clock and the checksum of every wanted file,
/// programs by their stamps), with the files it was asked about; then every problem at once,
/// before anything changes. A sudo that asks for a password is one message for all hosts.
type Answer<'a> = (
    Vec<(&'a str, bool)>,
    std::result::Result<(Facts, Vec<transport::Sum>), facts::GatherError>,
);

fn collect(c: &Cluster, results: Vec<(String, Answer<'_>)>) -> Result<Gathered> {
    let mut out = Gathered {
        facts: BTreeMap::new(),
        hashes: Hashes::new(),
        stale: Stale::new(),
    };
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    for (n, (want, r)) in results {
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
