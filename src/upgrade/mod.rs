//! `hakube upgrade`: the spec names the target versions; upgrade reads what runs, plans the
//! steps ([`plan`]), checks the cluster and a fresh verified backup, and runs the steps one at
//! a time behind health gates, recording each finished step so that a rerun goes on from there.
//!
//! It works through apply's context and helpers (files, dry-run, the drained member restart),
//! so `--dry-run` is the same code with its hands tied.

pub mod cli;
pub mod drain;
pub mod plan;

use crate::apply::report::Kind;
use crate::apply::{self, Ctx};
use crate::drill::client::{ClientProbe, ClientReport};
use crate::install::etcd as etcd_install;
use crate::spec::{Bootstrap, Cluster, EtcdManagement, Host};
use crate::state::State;
use crate::transport::{self, quote};
use anyhow::{Context, Result, anyhow, bail};
use plan::Step;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Options {
    pub spec_file: PathBuf,
    pub dry_run: bool,
    /// Run the drill's client probe and write check throughout.
    pub probe: bool,
    pub json: bool,
    /// Restart every load balancer, one at a time, even with no package to change.
    pub restart_lbs: bool,
    /// Workers upgraded at once (kubeadm).
    pub max_unavailable: usize,
    /// A verified backup younger than this is fresh enough; otherwise one is taken.
    pub backup_max_age: Duration,
    pub lab_apiserver: Option<PathBuf>,
    pub concurrency: usize,
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            spec_file: PathBuf::from("cluster.yaml"),
            dry_run: false,
            probe: false,
            json: false,
            restart_lbs: false,
            max_unavailable: 1,
            backup_max_age: Duration::from_secs(3600),
            lab_apiserver: None,
            concurrency: 30,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub key: String,
    pub description: String,
    #[serde(flatten)]
    pub step: Step,
    /// `done` (this run), `done before` (an earlier, interrupted run), `would run`, `pending`,
    /// `failed`.
    pub status: String,
    /// When the step started and ended, in seconds since the client probe started (--probe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_s: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dry_run: bool,
    pub steps: Vec<PlannedStep>,
    /// The verified backup the upgrade relies on.
    pub backup: Option<String>,
    pub probe: Option<ClientReport>,
    pub error: Option<String>,
    pub total_ms: u128,
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.steps.is_empty() && self.error.is_none() {
            s.push_str("upgrade: nothing to do, everything runs the spec's versions\n");
        }
        for (n, p) in self.steps.iter().enumerate() {
            let at = p
                .probe_s
                .map(|(a, b)| format!(" [{a:.1}s-{b:.1}s]"))
                .unwrap_or_default();
            s.push_str(&format!(
                "{:>3}. {:<11} {}{at}\n",
                n + 1,
                p.status,
                p.description
            ));
        }
        if let Some(b) = &self.backup {
            s.push_str(&format!("backup: {b}\n"));
        }
        if let Some(p) = &self.probe {
            s.push_str(&p.text());
            s.push('\n');
        }
        match &self.error {
            Some(e) => s.push_str(&format!("error: {e}\n")),
            None => s.push_str(&format!(
                "upgrade {} in {:.1}s\n",
                if self.dry_run { "dry-run done" } else { "done" },
                self.total_ms as f64 / 1000.0
            )),
        }
        s
    }
}

/// Steps finished so far, for the target they belong to; in the state folder, written
/// atomically after every step and removed when the upgrade completes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub target: String,
    pub done: Vec<String>,
}

pub fn progress_path(c: &Cluster) -> PathBuf {
    State::dir_of(c).join("upgrade-progress.json")
}

fn target_of(c: &Cluster, o: &Options) -> String {
    format!(
        "etcd={} kubernetes=v{} packages={:?} restart-lbs={}",
        c.etcd
            .install
            .as_ref()
            .map(|i| i.version.to_string())
            .unwrap_or_default(),
        c.kubernetes.version,
        c.lb.packages,
        o.restart_lbs
    )
}

fn load_progress(path: &Path, target: &str) -> Progress {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Progress>(&b).ok())
        .filter(|p| p.target == target)
        .unwrap_or_else(|| Progress {
            target: target.to_string(),
            done: vec![],
        })
}

fn save_progress(path: &Path, p: &Progress) -> Result<()> {
    let text = serde_json::to_string_pretty(p)?;
    crate::pki::write_public(path, &format!("{text}\n"))
}

/// The whole of `hakube upgrade`. Always a report; what stops it is its `error`.
pub async fn run(c: Cluster, o: Options) -> Report {
    crate::transport::tunnel::setup(&c).await;
    let started = Instant::now();
    let mut report = Report {
        dry_run: o.dry_run,
        steps: vec![],
        backup: None,
        probe: None,
        error: None,
        total_ms: 0,
    };
    if let Err(e) = upgrade(c, &o, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    report.total_ms = started.elapsed().as_millis();
    report
}

async fn upgrade(c: Cluster, o: &Options, report: &mut Report) -> Result<()> {
    if !State::exists(&c) {
        bail!(
            "no operator state for cluster {} at {}: upgrade works on a cluster hakube built\n  \
             help: run it with the spec (and its .hakube folder) that `hakube apply` used",
            c.name,
            State::dir_of(&c).display()
        );
    }
    let _lock = if o.dry_run {
        None
    } else {
        Some(State::lock(&c)?)
    };
    let opts = apply::Options {
        dry_run: o.dry_run,
        concurrency: o.concurrency,
        lab_apiserver: o.lab_apiserver.clone(),
        connect_timeout: o.connect_timeout,
        ..Default::default()
    };
    let reporter = crate::output::events(o.json);
    let mut ctx = apply::context(c.clone(), opts.clone(), reporter.clone()).await?;
    ctx.set_phase("upgrade");
    // An interrupted run may have left a service stopped mid-step (an API server drained, a
    // keepalived stopped to move the VIP): start those first, then look again.
    let undrained =
        !o.dry_run && crate::apply::phase::control_plane::undrain_leftovers(&ctx).await?;
    if !o.dry_run && (progress_path(&ctx.c).exists() && heal(&ctx).await? || undrained) {
        ctx = apply::context(c, opts, reporter).await?;
        ctx.set_phase("upgrade");
    }
    // 1. What runs, and the plan (read-only so far).
    let input = observe(&ctx, o).await?;
    let steps = plan::plan(&input).map_err(|e| anyhow!("refused; nothing was changed:\n{e}"))?;
    let target = target_of(&ctx.c, o);
    let ppath = progress_path(&ctx.c);
    let mut progress = load_progress(&ppath, &target);
    report.steps = steps
        .iter()
        .map(|s| PlannedStep {
            key: s.key(),
            description: s.describe(),
            step: s.clone(),
            status: if progress.done.contains(&s.key()) {
                "done before".into()
            } else if o.dry_run {
                "would run".into()
            } else {
                "pending".into()
            },
            probe_s: None,
        })
        .collect();
    for (n, s) in report.steps.iter().enumerate() {
        ctx.log(
            Kind::Info,
            "",
            &format!("plan {}/{}: {}", n + 1, steps.len(), s.description),
        );
    }
    if steps.is_empty() {
        if !o.dry_run {
            let _ = std::fs::remove_file(&ppath);
        }
        return Ok(());
    }
    // 2. The etcd tarball, checked on this machine before anything is touched.
    if steps.iter().any(|s| matches!(s, Step::Etcd { .. }))
        && let Some(i) = &ctx.c.etcd.install
    {
        etcd_install::local_tarball(&ctx.c, i)?;
    }
    // 3. Preflight: healthy, and a fresh verified backup.
    if !o.dry_run {
        preflight_health(&ctx.c).await?;
    }
    report.backup = backup(&ctx, o).await?;
    let probe = if o.probe && !o.dry_run {
        ctx.log(Kind::Info, "", "starting the client probe through the VIP");
        Some(ClientProbe::start(&ctx.c, &o.spec_file, "upgrade", Duration::from_secs(20)).await?)
    } else {
        None
    };
    // 4. The steps, one at a time.
    let mut result = Ok(());
    for (n, step) in steps.iter().enumerate() {
        if progress.done.contains(&step.key()) {
            ctx.log(
                Kind::Ok,
                "",
                &format!("{} (done by an earlier run)", step.describe()),
            );
            continue;
        }
        ctx.log(
            Kind::Info,
            "",
            &format!("step {}: {}", n + 1, step.describe()),
        );
        let from = probe.as_ref().map(|p| p.elapsed_ms() / 1000.0);
        let r = run_step(&ctx, step).await;
        if let (Some(f), Some(p)) = (from, &probe) {
            report.steps[n].probe_s = Some((f, p.elapsed_ms() / 1000.0));
        }
        if let Err(e) = r {
            report.steps[n].status = "failed".into();
            result = Err(e.context(format!("step {}: {}", n + 1, step.describe())));
            break;
        }
        if !o.dry_run {
            progress.done.push(step.key());
            save_progress(&ppath, &progress)?;
            report.steps[n].status = "done".into();
        }
    }
    if let Some(p) = probe {
        ctx.log(
            Kind::Info,
            "",
            "stopping the client probe; checking every write",
        );
        let r = p.finish().await;
        ctx.log(Kind::Info, "", &r.text());
        report.probe = Some(r);
    }
    result?;
    if !o.dry_run {
        std::fs::remove_file(&ppath).ok();
    }
    Ok(())
}

/// Versions and roles as they are now.
async fn observe(ctx: &Ctx, o: &Options) -> Result<plan::Input> {
    let c = &ctx.c;
    let mut i = plan::Input {
        control_planes: c.control_planes().map(|h| h.name.clone()).collect(),
        load_balancers: c.load_balancers().map(|h| h.name.clone()).collect(),
        workers: c
            .hosts
            .iter()
            .filter(|h| h.roles.worker && !h.roles.control_plane)
            .map(|h| h.name.clone())
            .collect(),
        lb_restart: o.restart_lbs,
        max_unavailable: o.max_unavailable,
        ..Default::default()
    };
    if c.etcd.management == EtcdManagement::Hakube
        && let Some(inst) = &c.etcd.install
    {
        let tls = ctx.state.operator_etcd_tls()?;
        // A busy member may miss one short probe: ask again before calling it down.
        let mut members = vec![];
        for _ in 0..5 {
            members = crate::status::probes::etcd(c, &tls).await.0;
            if members.iter().all(|m| m.error.is_none()) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let mut unknown = vec![];
        for m in &members {
            match semver::Version::parse(&m.version) {
                Ok(v) if m.error.is_none() => {
                    i.etcd_now.insert(m.name.clone(), v);
                }
                _ => unknown.push(format!(
                    "{} ({})",
                    m.name,
                    m.error.clone().unwrap_or_else(|| "no version".into())
                )),
            }
            if m.is_leader {
                i.etcd_leader = Some(m.name.clone());
            }
        }
        if !unknown.is_empty() {
            bail!(
                "etcd does not answer on {}: upgrade needs every member healthy\n  help: `hakube \
                 status -f SPEC` shows why; fix it first",
                unknown.join(", ")
            );
        }
        // Members must already run from the link, or switching it would change nothing.
        let have = etcd_install::survey(ctx, &i.control_planes, inst).await?;
        let not_linked: Vec<&str> = have
            .iter()
            .filter(|(_, h)| h.current.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        let behind = i.etcd_now.values().any(|v| *v != inst.version);
        if behind && !not_linked.is_empty() {
            bail!(
                "etcd on {} does not run from {}: hakube did not install it, so it cannot \
                 switch it\n  help: first pin the running version (spec.etcd.version and source) \
                 and run `hakube apply`, then set the new version and run upgrade",
                not_linked.join(", "),
                etcd_install::LINK
            );
        }
        i.etcd_to = Some(inst.version.clone());
    }
    let vip = c.lb.vip.to_string();
    if !o.dry_run || o.restart_lbs || !c.lb.packages.is_empty() {
        i.vip_holder = crate::apply::phase::load_balancers::vip_holders(ctx, &vip)
            .await?
            .into_iter()
            .next();
    }
    for h in c.load_balancers() {
        let f = ctx.facts.get(&h.name).context("facts")?;
        let pins = crate::install::package_pins(&c.lb.packages, |p| {
            f.versions.get(&format!("pkg-{p}")).cloned()
        });
        if !pins.is_empty() {
            i.lb_packages.insert(h.name.clone(), pins);
        }
    }
    i.bootstrap = Some(match c.kubernetes.bootstrap {
        Bootstrap::Lab => plan::Bootstrap::Lab,
        Bootstrap::Kubeadm => plan::Bootstrap::Kubeadm,
    });
    i.k8s_to = Some(c.kubernetes.version.clone());
    let ca = api_ca(ctx)?;
    for h in c.control_planes() {
        if let Some(v) = api_version(c, &ca, h).await {
            i.api_now.insert(h.name.clone(), v);
        }
    }
    if c.kubernetes.bootstrap == Bootstrap::Kubeadm {
        for h in c
            .hosts
            .iter()
            .filter(|h| h.roles.control_plane || h.roles.worker)
        {
            let t = ctx.host(&h.name)?;
            let o = transport::run(
                t,
                "kubelet --version 2>/dev/null || true",
                "kubelet --version",
                transport::TIMEOUT,
            )
            .await?;
            if let Some(v) = o
                .stdout_str()
                .split_whitespace()
                .last()
                .and_then(|v| semver::Version::parse(v.trim_start_matches('v')).ok())
            {
                i.kubelet_now.insert(h.name.clone(), v);
            }
        }
    }
    Ok(i)
}

/// The CA that signs what the API servers serve: kubeadm's once apply copied it, else hakube's
/// cluster CA (the lab API server's).
fn api_ca(ctx: &Ctx) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    let pem = ctx
        .state
        .api_ca_pem()
        .unwrap_or_else(|| ctx.state.cluster_ca.cert_pem().to_string());
    crate::probe::client_config(&pem)
}

/// What the API server on `h` reports in /version (`v1.36.0-hakube-lab` reads as 1.36.0).
async fn api_version(
    c: &Cluster,
    ca: &std::sync::Arc<rustls::ClientConfig>,
    h: &Host,
) -> Option<semver::Version> {
    let addr = SocketAddr::new(h.address, c.kubernetes.api_server_port);
    let r = crate::probe::get(ca, addr, "/version", Duration::from_secs(3))
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    parse_git_version(v.get("gitVersion")?.as_str()?)
}

pub fn parse_git_version(s: &str) -> Option<semver::Version> {
    let v = semver::Version::parse(s.trim().trim_start_matches('v')).ok()?;
    Some(semver::Version::new(v.major, v.minor, v.patch))
}

/// Services hakube runs that an interrupted step may have left stopped.
const HEALED: [&str; 4] = ["etcd", "hakube-lab-apiserver", "haproxy", "keepalived"];

/// Start every enabled, inactive service of [`HEALED`]; whether any was started.
async fn heal(ctx: &Ctx) -> Result<bool> {
    let mut started = false;
    for (host, f) in &ctx.facts {
        for svc in HEALED {
            if f.services.get(svc) == Some(&(false, true)) {
                ctx.log(
                    Kind::Warn,
                    host,
                    &format!("{svc} is stopped (an interrupted upgrade step?); starting it"),
                );
                ctx.cmd(
                    host,
                    &format!("systemctl start {svc}"),
                    &format!("systemctl start {svc}"),
                )
                .await?;
                started = true;
            }
        }
    }
    Ok(started)
}

async fn preflight_health(c: &Cluster) -> Result<()> {
    // A moment to settle (a service just started, a VIP moving back).
    let mut s = crate::status::gather(c).await?;
    for _ in 0..30 {
        if s.overall == crate::status::Health::Healthy {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        s = crate::status::gather(c).await?;
    }
    if s.overall != crate::status::Health::Healthy {
        let why: Vec<String> = s
            .verdicts
            .iter()
            .filter(|v| v.health != crate::status::Health::Healthy)
            .map(|v| format!("{}: {}", v.layer, v.reason))
            .collect();
        bail!(
            "the cluster is not healthy, so upgrade does not start; nothing was changed:\n  {}\n  \
             help: `hakube doctor -f SPEC` names the cause; fix it and run upgrade again",
            why.join("\n  ")
        );
    }
    Ok(())
}

/// A verified backup younger than `--backup-max-age`, or a new one.
async fn backup(ctx: &Ctx, o: &Options) -> Result<Option<String>> {
    if ctx.c.etcd.management != EtcdManagement::Hakube {
        ctx.log(
            Kind::Warn,
            "",
            "etcd is kubeadm's: `kubeadm upgrade` takes its own etcd backup on each control plane",
        );
        return Ok(None);
    }
    let dir = crate::backup::default_dir(&ctx.c);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Some(l) = crate::backup::last_verified(&dir)
        && l.cluster == ctx.c.name
        && now.saturating_sub(l.verified_unix.max(l.created_unix)) <= o.backup_max_age.as_secs()
        && now.saturating_sub(l.created_unix) <= o.backup_max_age.as_secs()
    {
        ctx.log(
            Kind::Ok,
            "",
            &format!("fresh verified backup: {} ({})", l.file, l.created_at),
        );
        return Ok(Some(l.file));
    }
    if o.dry_run {
        ctx.log(
            Kind::Command,
            "",
            &format!(
                "would take and verify a backup into {} (none verified in the last {})",
                dir.display(),
                humantime::format_duration(o.backup_max_age)
            ),
        );
        return Ok(None);
    }
    ctx.log(Kind::Command, "", "taking and verifying a backup first");
    let bo = crate::backup::Options {
        spec_file: o.spec_file.clone(),
        out: None,
        policy: Default::default(),
        from_snapshot: None,
    };
    let log = |m: &str| ctx.log(Kind::Info, "", m);
    let r = crate::backup::backup(&ctx.c, &bo, &log)
        .await
        .context("the backup before the upgrade failed, so upgrade does not start")?;
    ctx.log(Kind::Ok, "", &format!("backup {} verified", r.file));
    Ok(Some(r.file))
}

async fn run_step(ctx: &Ctx, step: &Step) -> Result<()> {
    match step {
        Step::Etcd { host, to, .. } => etcd_member(ctx, host, to).await,
        Step::LoadBalancer {
            host,
            packages,
            vip_holder,
        } => load_balancer(ctx, host, packages, *vip_holder).await,
        Step::LabApiServer { host, to, .. } => lab_apiserver(ctx, host, to).await,
        Step::KubeadmControlPlane { host, first, to } => {
            kubeadm_control_plane(ctx, host, *first, to).await
        }
        Step::Workers { hosts, to } => workers(ctx, hosts, to).await,
    }
}

fn spec_host<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a Host> {
    ctx.c
        .host(name)
        .with_context(|| format!("{name} is not in the spec"))
}

async fn etcd_member(ctx: &Ctx, host: &str, to: &str) -> Result<()> {
    let i = ctx.c.etcd.install.clone().context("no pinned etcd")?;
    let h = spec_host(ctx, host)?;
    let tls = ctx.state.operator_etcd_tls()?;
    // Every member has the new release before the first switch (idempotent: stamps compare).
    let cps: Vec<String> = ctx.c.control_planes().map(|h| h.name.clone()).collect();
    let before = etcd_install::stage(ctx, &cps, &i).await?;
    let previous = before
        .get(host)
        .and_then(|s| s.current.clone())
        .unwrap_or_default();
    if !ctx.opts.dry_run {
        crate::apply::phase::etcd_member::all_healthy(ctx, &tls)
            .await
            .context("etcd is not fully healthy before this member's turn")?;
    }
    etcd_install::switch(ctx, host, &i).await?;
    crate::apply::phase::etcd_member::restart_member(ctx, h, &tls).await?;
    if ctx.opts.dry_run {
        ctx.log(
            Kind::Wait,
            host,
            &format!("would check that the member reports {to}"),
        );
        return Ok(());
    }
    let addr = crate::spec::url("https", h.address, ctx.c.etcd.client_port);
    let r = crate::apply::wait_for(
        &format!("{host}: etcd reports {to}"),
        Duration::from_secs(30),
        || async {
            let mut cl =
                crate::etcd::connect(std::slice::from_ref(&addr), &tls, Duration::from_secs(3))
                    .await?;
            let st = cl.status().await?;
            if st.version() == to {
                Ok(())
            } else {
                bail!("it reports {}", st.version())
            }
        },
    )
    .await;
    if let Err(e) = r {
        bail!(
            "{e:#}\n  help: to roll this member back: `ln -sfn {previous} {root}/.current.tmp && \
             mv -T {root}/.current.tmp {link} && systemctl restart etcd` on {host}",
            root = etcd_install::ROOT,
            link = etcd_install::LINK
        );
    }
    ctx.log(
        Kind::Ok,
        host,
        &format!("etcd member healthy and reports {to}"),
    );
    Ok(())
}

async fn wait_vip(ctx: &Ctx, what: &str, ok: impl Fn(&[String]) -> bool) -> Result<Vec<String>> {
    let vip = ctx.c.lb.vip.to_string();
    let seen = std::sync::Mutex::new(Vec::new());
    let (ok, vip, seen_ref) = (&ok, &vip, &seen);
    crate::apply::wait_for(what, Duration::from_secs(60), || async move {
        let holders = crate::apply::phase::load_balancers::vip_holders(ctx, vip).await?;
        if ok(&holders) {
            *seen_ref.lock().unwrap_or_else(|e| e.into_inner()) = holders;
            Ok(())
        } else {
            bail!("the VIP is on {holders:?}")
        }
    })
    .await?;
    Ok(seen.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// One load balancer: the VIP moves away first if it holds it (drained, see [`drain`]); then
/// packages and HAProxy, which must rate every API server UP before keepalived starts; then,
/// if keepalived will take the VIP back (preemption), the current holder is drained first.
async fn load_balancer(ctx: &Ctx, host: &str, packages: &[String], holder: bool) -> Result<()> {
    if holder {
        drain::start(ctx, host).await?;
        ctx.cmd(
            host,
            "systemctl stop keepalived",
            "systemctl stop keepalived (the VIP moves to another load balancer)",
        )
        .await?;
        if ctx.opts.dry_run {
            ctx.log(
                Kind::Wait,
                host,
                "would wait until another load balancer holds the VIP",
            );
        } else {
            let on = wait_vip(ctx, &format!("the VIP off {host}"), |h| {
                h.len() == 1 && h[0] != host
            })
            .await?;
            ctx.log(
                Kind::Ok,
                host,
                &format!("the VIP moved to {}", on.join(", ")),
            );
        }
        drain::stop(ctx, host).await?;
    }
    if !packages.is_empty() {
        let list = packages.join(" ");
        ctx.cmd(
            host,
            &format!("DEBIAN_FRONTEND=noninteractive apt-get install -y {list}"),
            &format!("apt-get install -y {list}"),
        )
        .await?;
    }
    ctx.cmd(
        host,
        "systemctl restart haproxy",
        "systemctl restart haproxy",
    )
    .await?;
    haproxy_rates_all_up(ctx, host).await?;
    // The LB the VIP will leave when this keepalived starts: the holder, if this one outranks it
    // and preempts.
    let returns_to = |holders: &[String]| {
        let prio = |h: &str| ctx.c.lb.vrrp.priorities.get(h).copied().unwrap_or(0);
        holders
            .iter()
            .find(|o| ctx.c.lb.vrrp.preempt && *o != host && prio(host) > prio(o))
            .cloned()
    };
    let leaving = if ctx.opts.dry_run {
        holder.then(|| "the holder".to_string())
    } else {
        let vip = ctx.c.lb.vip.to_string();
        returns_to(&crate::apply::phase::load_balancers::vip_holders(ctx, &vip).await?)
    };
    if let Some(other) = &leaving
        && !ctx.opts.dry_run
    {
        drain::start(ctx, other).await?;
    }
    let (script, display) = if holder {
        ("systemctl start keepalived", "systemctl start keepalived")
    } else {
        (
            "systemctl restart keepalived",
            "systemctl restart keepalived",
        )
    };
    let started = ctx.cmd(host, script, display).await;
    if let Some(other) = &leaving {
        if ctx.opts.dry_run {
            ctx.log(
                Kind::Wait,
                host,
                "would drain the VIP holder and wait until the VIP is back on this load balancer",
            );
        } else {
            let back = match started {
                Ok(_) => wait_vip(ctx, &format!("the VIP back on {host}"), |h| h == [host])
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            let lifted = drain::stop(ctx, other).await;
            back?;
            lifted?;
        }
    } else {
        started?;
    }
    if ctx.opts.dry_run {
        ctx.log(
            Kind::Wait,
            host,
            "would wait until exactly one load balancer holds the VIP",
        );
        return Ok(());
    }
    let on = wait_vip(ctx, "exactly one VIP holder", |h| h.len() == 1).await?;
    ctx.log(
        Kind::Ok,
        host,
        &format!(
            "HAProxy and keepalived restarted; the VIP is on {}",
            on.join(", ")
        ),
    );
    Ok(())
}

/// HAProxy on `host` rates every API server UP (waited for; skipped without a stats page).
async fn haproxy_rates_all_up(ctx: &Ctx, host: &str) -> Result<()> {
    if ctx.opts.dry_run {
        ctx.log(
            Kind::Wait,
            host,
            "would wait until its HAProxy rates every API server UP",
        );
        return Ok(());
    }
    if !ctx.c.lb.stats.enabled {
        return Ok(());
    }
    let pw = ctx.state.stats_password();
    let servers: Vec<String> = ctx.c.control_planes().map(|h| h.name.clone()).collect();
    let (pw, servers) = (&pw, &servers);
    crate::apply::wait_for(
        &format!("{host}: HAProxy rates every API server UP"),
        Duration::from_secs(30),
        || async move {
            let lbs = crate::status::probes::haproxy(&ctx.c, pw.as_deref()).await;
            let mine = lbs
                .iter()
                .find(|l| l.host == host)
                .context("no stats from it")?;
            let down: Vec<&String> = servers
                .iter()
                .filter(|s| {
                    !mine
                        .servers
                        .iter()
                        .any(|x| x.server == **s && x.status == "UP")
                })
                .collect();
            if down.is_empty() {
                Ok(())
            } else {
                bail!("not UP: {down:?}")
            }
        },
    )
    .await
}

/// The lab API server on `host`, drained, with the new version: stop (HAProxy sends new
/// connections elsewhere), the new unit, start, /readyz, HAProxy UP, /version says `to`.
async fn lab_apiserver(ctx: &Ctx, host: &str, to: &str) -> Result<()> {
    use crate::apply::files::LAB_APISERVER_UNIT;
    let h = spec_host(ctx, host)?;
    crate::apply::phase::control_plane::stop_lab_apiserver(ctx, host).await?;
    // The lab API server's unit and binary: the control plane's files.
    let changed = ctx
        .sync(host, crate::render::Component::ControlPlane)
        .await?;
    if changed.iter().any(|f| f.path == LAB_APISERVER_UNIT) {
        ctx.cmd(host, "systemctl daemon-reload", "systemctl daemon-reload")
            .await?;
    }
    crate::apply::phase::control_plane::start_lab_apiserver(ctx, h).await?;
    let ca = api_ca(ctx)?;
    if ctx.opts.dry_run {
        ctx.log(
            Kind::Wait,
            host,
            &format!("would check that /version reports {to}"),
        );
        return Ok(());
    }
    let want = parse_git_version(to);
    match api_version(&ctx.c, &ca, h).await {
        Some(v) if Some(&v) == want.as_ref() => {
            ctx.log(Kind::Ok, host, &format!("/version reports v{v}"));
            Ok(())
        }
        other => bail!(
            "{host}: the lab API server reports {}, not {to}",
            other
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "nothing".into())
        ),
    }
}

/// `apt-get install` of pinned Kubernetes packages, held again afterwards.
fn k8s_packages(pkgs: &[&str], to: &str) -> String {
    let v = to.trim_start_matches('v');
    let list: Vec<String> = pkgs.iter().map(|p| format!("{p}={v}-*")).collect();
    format!(
        "apt-mark unhold {names} >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y \
         {list} && apt-mark hold {names} >/dev/null",
        names = pkgs.join(" "),
        list = list.join(" ")
    )
}

fn kubectl(args: &str) -> String {
    format!("kubectl --kubeconfig /etc/kubernetes/admin.conf {args}")
}

/// The first control plane (from which nodes are drained and uncordoned).
fn first_cp(ctx: &Ctx) -> Result<String> {
    ctx.c
        .control_planes()
        .next()
        .map(|h| h.name.clone())
        .context("no control plane")
}

/// kubeadm's documented sequence for a control plane.
async fn kubeadm_control_plane(ctx: &Ctx, host: &str, first: bool, to: &str) -> Result<()> {
    let h = spec_host(ctx, host)?;
    let node = quote(host);
    let drain = kubectl(&format!(
        "drain {node} --ignore-daemonsets --delete-emptydir-data --timeout=5m"
    ));
    ctx.cmd(host, &drain, &drain).await?;
    let pk = k8s_packages(&["kubeadm"], to);
    ctx.cmd(host, &pk, &pk).await?;
    // hakube's etcd is external to kubeadm: it is upgraded by hakube, not by kubeadm.
    let etcd = if ctx.c.etcd.management == EtcdManagement::Hakube {
        " --etcd-upgrade=false"
    } else {
        ""
    };
    let up = if first {
        format!("kubeadm upgrade apply {to} --yes{etcd}")
    } else {
        format!("kubeadm upgrade node{etcd}")
    };
    ctx.cmd(host, &up, &up).await?;
    let pk = k8s_packages(&["kubelet", "kubectl"], to);
    ctx.cmd(host, &pk, &pk).await?;
    let restart = "systemctl daemon-reload && systemctl restart kubelet";
    ctx.cmd(host, restart, restart).await?;
    let un = kubectl(&format!("uncordon {node}"));
    ctx.cmd(host, &un, &un).await?;
    let ca = api_ca(ctx)?;
    crate::apply::phase::control_plane::readyz_gate(ctx, &ca, h).await?;
    crate::apply::phase::etcd_member::haproxy_rates_up(ctx, host).await?;
    Ok(())
}

/// One batch of workers (at most `--max-unavailable`), drained from the first control plane.
async fn workers(ctx: &Ctx, hosts: &[String], to: &str) -> Result<()> {
    let cp = first_cp(ctx)?;
    let cp = &cp;
    ctx.each(hosts.to_vec(), move |w| {
        Box::pin(async move {
            let node = quote(&w);
            let drain = kubectl(&format!(
                "drain {node} --ignore-daemonsets --delete-emptydir-data --timeout=5m"
            ));
            ctx.cmd(cp, &drain, &drain).await?;
            let pk = k8s_packages(&["kubeadm"], to);
            ctx.cmd(&w, &pk, &pk).await?;
            ctx.cmd(&w, "kubeadm upgrade node", "kubeadm upgrade node")
                .await?;
            let pk = k8s_packages(&["kubelet", "kubectl"], to);
            ctx.cmd(&w, &pk, &pk).await?;
            let restart = "systemctl daemon-reload && systemctl restart kubelet";
            ctx.cmd(&w, restart, restart).await?;
            let un = kubectl(&format!("uncordon {node}"));
            ctx.cmd(cp, &un, &un).await?;
            Ok(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_git_versions() {
        assert_eq!(
            parse_git_version("v1.36.2-hakube-lab"),
            Some(semver::Version::new(1, 36, 2))
        );
        assert_eq!(
            parse_git_version("v1.37.0"),
            Some(semver::Version::new(1, 37, 0))
        );
        assert_eq!(parse_git_version("nope"), None);
    }

    #[test]
    fn progress_is_per_target_and_atomic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("upgrade-progress.json");
        let mut pr = load_progress(&p, "etcd=3.5.1");
        assert!(pr.done.is_empty());
        pr.done.push("etcd/m2@3.5.1".into());
        save_progress(&p, &pr).unwrap();
        assert_eq!(load_progress(&p, "etcd=3.5.1"), pr);
        // Another target starts over.
        assert!(load_progress(&p, "etcd=3.5.2").done.is_empty());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn kubernetes_packages_are_pinned_and_held() {
        let s = k8s_packages(&["kubelet", "kubectl"], "v1.37.0");
        assert!(s.contains("apt-get install -y kubelet=1.37.0-* kubectl=1.37.0-*"));
        assert!(s.starts_with("apt-mark unhold kubelet kubectl"));
        assert!(s.ends_with("apt-mark hold kubelet kubectl >/dev/null"));
    }
}
