//! `hakube restore`: the whole cluster from one backup, also when quorum is lost or the hosts
//! are new.
//!
//! Nothing is touched until the backup is verified (and the snapshot to restore prepared and
//! proven by a second trial restore), every control plane is reachable and ready (etcdutl, disk
//! space, the etcd config apply wrote for this spec), and the snapshot sits checked on every
//! member. Then: stop every API server, then etcd on every member; move each data dir's content
//! aside (never deleted); `etcdutl snapshot restore` on every member with the full initial
//! cluster from the current spec, its own peer URL and a new cluster token; start the members
//! together; wait until every member is healthy; check revision and key count; start every API
//! server (fresh processes: no cache or watch from before the restore survives); `/readyz`
//! through the VIP.

use super::{Log, Verified};
use crate::spec::{Bootstrap, Cluster, EtcdManagement, Host, url};
use crate::state::State;
use crate::transport::{self, Transport, quote};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// `--bump-revision`'s default, as etcd documents it for restores.
pub const DEFAULT_BUMP: i64 = 1_000_000_000;
/// Where a kubeadm control plane's static pod manifests live.
const MANIFESTS: &str = "/etc/kubernetes/manifests";
const CONTROL_PODS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
const LAB_API: &str = "hakube-lab-apiserver";
const ETCD_ENV: &str = "/etc/etcd/etcd.env";
/// kubeadm etcd's own client certificate, for `etcdctl` inside its container.
const KUBEADM_ETCDCTL: &str = "etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
     --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key";

#[derive(Debug, Clone)]
pub struct Options {
    pub backup: PathBuf,
    pub yes: bool,
    pub dry_run: bool,
    pub bump: i64,
}

/// How etcd runs on the control planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtcdRunner {
    /// hakube's systemd unit.
    Systemd,
    /// kubeadm's static pod (`etcd.yaml`).
    StaticPod,
}

/// How the API servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiRunner {
    /// The lab's stand-in under systemd.
    LabSystemd,
    /// kubeadm's static pods (the API server, with the controller manager and the scheduler,
    /// which would otherwise act on what they cached before the restore).
    StaticPods,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Verify,
    Connect,
    Preflight,
    Copy,
    StopApiServers,
    StopEtcd,
    MoveAside,
    Restore,
    StartEtcd,
    WaitHealthy,
    CheckData,
    StartApiServers,
    VerifyVip,
}

impl Step {
    pub fn describe(self) -> &'static str {
        match self {
            Step::Verify => "verify the backup and prepare the snapshot to restore",
            Step::Connect => "connect to every control plane",
            Step::Preflight => {
                "check every control plane: etcdutl, disk space, the etcd config of this spec"
            }
            Step::Copy => "stream the snapshot to every member and check its SHA-256 there",
            Step::StopApiServers => "stop every API server",
            Step::StopEtcd => "stop etcd on every member",
            Step::MoveAside => "move each data dir's content aside (kept, never deleted)",
            Step::Restore => "etcdutl snapshot restore on every member",
            Step::StartEtcd => "start every member together",
            Step::WaitHealthy => "wait until every member serves a linearizable read",
            Step::CheckData => "check the restored revision and key count",
            Step::StartApiServers => "start every API server (fresh processes, no stale cache)",
            Step::VerifyVip => "GET /readyz through the VIP",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: Step,
    pub ms: u128,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Restored,
    DryRun,
    /// Refused before anything on a host was changed.
    Refused,
    /// Failed after the cluster was touched.
    Failed,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Restored | Outcome::DryRun => 0,
            Outcome::Failed => 2,
            Outcome::Refused => 3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub cluster: String,
    pub backup: String,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub etcd: EtcdRunner,
    pub api_servers: ApiRunner,
    pub backup_created_at: Option<String>,
    pub snapshot_revision: Option<i64>,
    pub bump: i64,
    /// The live cluster's revision before the restore, when it could still be read.
    pub revision_before: Option<i64>,
    pub restored_revision: Option<i64>,
    pub keys: Option<u64>,
    pub cluster_token: String,
    /// Where each member's previous data was moved.
    pub moved_aside: BTreeMap<String, String>,
    pub steps: Vec<StepReport>,
    /// From stopping the first API server to /readyz through the VIP.
    pub downtime_ms: Option<u128>,
    pub total_ms: u128,
}

/// One control plane and what the restore uses on it.
struct Member<'a> {
    host: &'a Host,
    t: Option<Arc<dyn Transport>>,
    /// The etcd member name (the spec's host name; kubeadm's from its etcd.yaml).
    name: String,
    peer: String,
    etcdutl: String,
}

impl Member<'_> {
    fn t(&self) -> Result<&dyn Transport> {
        self.t
            .as_deref()
            .ok_or_else(|| anyhow!("{}: not connected", self.host.name))
    }
}

struct Run<'a> {
    c: &'a Cluster,
    log: Log<'a>,
    dry: bool,
    r: Report,
    stamp: String,
    /// Whether a host was changed: failures after this are `Failed`, before `Refused`.
    touched: bool,
}

impl Run<'_> {
    fn dd(&self) -> String {
        self.c.etcd.data_dir.clone()
    }
    fn snap_path(&self) -> String {
        format!("{}/hakube-restore-{}.db", self.dd(), self.stamp)
    }
    fn aside_dir(&self) -> String {
        format!("/etc/kubernetes/hakube-restore-{}", self.stamp)
    }

    /// Run `f` as one step: timed, logged, recorded.
    async fn step<T>(
        &mut self,
        step: Step,
        f: impl std::future::Future<Output = Result<(T, String)>>,
    ) -> Result<T> {
        (self.log)(&format!("{} …", step.describe()));
        let t = Instant::now();
        let r = f.await;
        let ms = t.elapsed().as_millis();
        let (ok, detail) = match &r {
            Ok((_, d)) => (true, d.clone()),
            Err(e) => (false, format!("{e:#}")),
        };
        let mark = if ok { "ok" } else { "FAILED" };
        let first = detail.lines().next().unwrap_or("");
        (self.log)(&format!(
            "  {mark} in {:.1}s{}",
            ms as f64 / 1000.0,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        ));
        self.r.steps.push(StepReport {
            step,
            ms,
            ok,
            detail,
        });
        r.map(|x| x.0)
    }

    /// In a dry run, print what a step would run on each member.
    fn show(&self, step: Step, scripts: &[(String, String)]) {
        (self.log)(&format!("would {}:", step.describe()));
        for (host, script) in scripts {
            for line in script.lines().filter(|l| !l.trim().is_empty()) {
                (self.log)(&format!("    {host}$ {}", line.trim()));
            }
        }
    }
}

fn runners(c: &Cluster) -> (EtcdRunner, ApiRunner) {
    let etcd = match c.etcd.management {
        EtcdManagement::Hakube => EtcdRunner::Systemd,
        EtcdManagement::Kubeadm => EtcdRunner::StaticPod,
    };
    let api = match c.kubernetes.bootstrap {
        Bootstrap::Lab => ApiRunner::LabSystemd,
        Bootstrap::Kubeadm => ApiRunner::StaticPods,
    };
    (etcd, api)
}

/// Restore the cluster from `o.backup`. Never returns an error: the report says what happened.
pub async fn restore(c: &Cluster, o: &Options, log: Log<'_>) -> Report {
    crate::transport::tunnel::setup(c).await;
    let started = Instant::now();
    let stamp = crate::drill::stamp(SystemTime::now());
    let token = format!(
        "{}-restore-{}-{:04x}",
        c.name,
        stamp.to_lowercase(),
        rand::random::<u16>()
    );
    let (etcd, api) = runners(c);
    let mut run = Run {
        c,
        log,
        dry: o.dry_run,
        stamp,
        touched: false,
        r: Report {
            cluster: c.name.clone(),
            backup: o.backup.display().to_string(),
            outcome: Outcome::Refused,
            error: None,
            etcd,
            api_servers: api,
            backup_created_at: None,
            snapshot_revision: None,
            bump: o.bump,
            revision_before: None,
            restored_revision: None,
            keys: None,
            cluster_token: token,
            moved_aside: BTreeMap::new(),
            steps: vec![],
            downtime_ms: None,
            total_ms: 0,
        },
    };
    let res = go(&mut run, o).await;
    run.r.total_ms = started.elapsed().as_millis();
    match res {
        Ok(()) => {
            run.r.outcome = if o.dry_run {
                Outcome::DryRun
            } else {
                Outcome::Restored
            }
        }
        Err(e) => {
            let mut msg = format!("{e:#}");
            if run.touched {
                run.r.outcome = Outcome::Failed;
                let aside: Vec<String> = run
                    .r
                    .moved_aside
                    .iter()
                    .map(|(h, p)| format!("{h}: {p}"))
                    .collect();
                msg.push_str(&format!(
                    "\n  the cluster was changed and the restore did not finish. The previous data of each member is kept{}.\n  \
                     help: fix the cause above, then run the same `hakube restore` again: it moves whatever is in the data \
                     dirs aside again and restores from the start",
                    if aside.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", aside.join(", "))
                    }
                ));
            } else {
                msg.push_str("\n  nothing on the hosts was changed");
            }
            run.r.error = Some(msg);
        }
    }
    run.r
}

async fn go(run: &mut Run<'_>, o: &Options) -> Result<()> {
    let c = run.c;
    if !o.yes && !o.dry_run {
        bail!(
            "restore replaces the etcd data of every member of {} with the backup's, after stopping every API \
             server and etcd (downtime until it finishes); refused without --yes\n  help: `hakube restore {} -f SPEC \
             --dry-run` shows every step; add --yes to run them",
            c.name,
            o.backup.display()
        );
    }
    let state = State::open(c)?;
    let _lock = if o.dry_run {
        None
    } else {
        Some(State::lock(c)?)
    };

    // The highest revision any member still knows, so that the restored one is above anything a
    // client saw (each member answers alone: a serializable read needs no quorum). Asked only
    // for a backup whose manifest claims this cluster; verification below decides.
    let claimed = super::archive::read_manifest(&o.backup)
        .ok()
        .filter(|m| super::check_identity(m, c, &state).is_ok());
    if let Some(m) = claimed
        && !run.dry
        && run.r.etcd == EtcdRunner::Systemd
    {
        let tls = state.operator_etcd_tls()?;
        run.r.revision_before = highest_revision(c, &tls).await;
        if let Some(before) = run.r.revision_before {
            run.r.bump = o.bump + (before - m.snapshot.revision).max(0);
        }
    }
    let bump = run.r.bump;

    // 1. The backup, proven, and the snapshot to restore prepared from it.
    let log = run.log;
    let v: Verified = run
        .step(Step::Verify, async {
            let v = super::verify(&o.backup, Some((c, &state)), Some(bump), log).await?;
            for ch in &v.checks {
                log(&format!("    {}", ch.line()));
            }
            if let Some(f) = v.failure() {
                bail!(
                    "the backup is refused: {:?} check failed: {}",
                    f.check,
                    f.detail
                );
            }
            let d = format!("{} checks passed", v.checks.len());
            Ok((v, d))
        })
        .await?;
    let m = v.manifest.clone().context("the backup has no manifest")?;
    let (prepared, prepared_sha) = v.prepared.clone().context("no prepared snapshot")?;
    run.r.backup_created_at = Some(m.created_at.clone());
    run.r.snapshot_revision = Some(m.snapshot.revision);
    let want_rev = m.snapshot.revision + bump;
    let size = std::fs::metadata(&prepared)?.len();

    // 2. Every control plane, reachable and ready, with the snapshot copied and checked there.
    let members = ready_members(run, size).await?;
    let initial: String = members
        .iter()
        .map(|mb| format!("{}={}", mb.name, mb.peer))
        .collect::<Vec<_>>()
        .join(",");
    if let Err(e) = copy_snapshot(run, &members, &prepared, &prepared_sha, size).await {
        remove_copies(run, &members).await;
        return Err(e);
    }

    // 3. From here on the cluster is down until the end.
    let down = Instant::now();
    run.touched = !run.dry;
    let res = destructive(run, &members, &state, &initial, want_rev, m.snapshot.keys).await;
    if res.is_err() && !run.dry {
        remove_copies(run, &members).await;
    }
    res?;
    if !run.dry {
        run.r.downtime_ms = Some(down.elapsed().as_millis());
    }
    Ok(())
}

/// Connect to every control plane and check that it is ready for the restore; dry runs only
/// show the checks.
async fn ready_members<'c>(run: &mut Run<'c>, size: u64) -> Result<Vec<Member<'c>>> {
    let c = run.c;
    let cps: Vec<&Host> = c.control_planes().collect();
    let hosts = if run.dry {
        BTreeMap::new()
    } else {
        run.step(Step::Connect, async {
            let mut only = c.clone();
            only.hosts.retain(|h| h.roles.control_plane);
            let hosts = crate::apply::connect(&only, &crate::apply::Options::default())
                .await
                .context("restore needs every control plane of the spec (replace a lost host in the spec and run `hakube apply` first)")?;
            let d = format!("{} control planes", hosts.len());
            Ok((hosts, d))
        })
        .await?
    };
    let bin_dir = std::path::Path::new(&c.etcd.binary)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/usr/local/bin".into());
    let mut members: Vec<Member> = cps
        .iter()
        .map(|h| Member {
            host: h,
            t: hosts.get(&h.name).cloned(),
            name: h.name.clone(),
            peer: url("https", h.address, c.etcd.peer_port),
            etcdutl: format!("{bin_dir}/etcdutl"),
        })
        .collect();
    if run.dry {
        let scripts = members
            .iter()
            .map(|mb| (mb.host.name.clone(), preflight_script(run, &bin_dir)))
            .collect::<Vec<_>>();
        run.show(Step::Preflight, &scripts);
    } else {
        let pre = preflight_script(run, &bin_dir);
        let found = run
            .step(Step::Preflight, async {
                let found = all(members.iter().map(|mb| {
                    let s = &pre;
                    async move {
                        let o = transport::run(
                            mb.t()?,
                            s,
                            "restore preflight",
                            Duration::from_secs(60),
                        )
                        .await?;
                        Ok(parse_kv(&o.stdout_str()))
                    }
                }))
                .await?;
                let problems: Vec<String> = members
                    .iter()
                    .zip(&found)
                    .flat_map(|(mb, f)| preflight_problems(c, mb, f, size))
                    .collect();
                if !problems.is_empty() {
                    bail!("{}", problems.join("\n"));
                }
                let d = format!("{} members ready", members.len());
                Ok((found, d))
            })
            .await?;
        for (mb, f) in members.iter_mut().zip(&found) {
            if let Some(e) = f.get("etcdutl") {
                mb.etcdutl = e.clone();
            }
            if run.r.etcd == EtcdRunner::StaticPod
                && let Some(n) = f.get("name")
            {
                mb.name = n.clone();
            }
        }
    }
    Ok(members)
}

/// Stream the prepared snapshot into every member's data dir and check its SHA-256 there,
/// before anything stops.
async fn copy_snapshot(
    run: &mut Run<'_>,
    members: &[Member<'_>],
    prepared: &std::path::Path,
    prepared_sha: &str,
    size: u64,
) -> Result<()> {
    let snap = run.snap_path();
    let copy_script = format!(
        "set -e; umask 077; mkdir -p {dd}; chmod 700 {dd}; cat > {p}.partial; mv -f {p}.partial {p}; sha256sum {p} | cut -d' ' -f1",
        dd = quote(&run.dd()),
        p = quote(&snap)
    );
    if run.dry {
        run.show(
            Step::Copy,
            &members
                .iter()
                .map(|mb| (mb.host.name.clone(), format!("{copy_script}   # stdin: the prepared snapshot ({size} bytes), SHA-256 {prepared_sha}")))
                .collect::<Vec<_>>(),
        );
    } else {
        run.step(Step::Copy, async {
            all(members.iter().map(|mb| {
                let (s, p, want) = (&copy_script, prepared, prepared_sha);
                async move {
                    let f = tokio::fs::File::open(p).await?;
                    let input: transport::Input =
                        Box::pin(tokio::io::BufReader::with_capacity(1 << 20, f));
                    let t = mb.t()?;
                    let o =
                        tokio::time::timeout(Duration::from_secs(1800), t.exec_stream(s, input))
                            .await
                            .map_err(|_| {
                                anyhow!("{}: copying the snapshot timed out", mb.host.name)
                            })??;
                    if o.status != 0 {
                        bail!(
                            "{}: cannot write the snapshot: {}",
                            mb.host.name,
                            transport::tail(&o.stderr, 4)
                        );
                    }
                    let got = o.stdout_str().trim().to_string();
                    if got != want {
                        bail!(
                            "{}: the copied snapshot has SHA-256 {got}, expected {want}",
                            mb.host.name
                        );
                    }
                    Ok(())
                }
            }))
            .await?;
            Ok((
                (),
                format!(
                    "{} to {} members, SHA-256 checked on each",
                    super::human(size),
                    members.len()
                ),
            ))
        })
        .await?;
    }
    Ok(())
}

async fn destructive(
    run: &mut Run<'_>,
    members: &[Member<'_>],
    state: &State,
    initial: &str,
    want_rev: i64,
    keys: u64,
) -> Result<()> {
    let c = run.c;
    // Stop the API servers first, so that none serves or caches anything while etcd changes.
    let n = members.len();
    host_step(
        run,
        Step::StopApiServers,
        members,
        vec![stop_api_script(run); n],
    )
    .await?;
    host_step(run, Step::StopEtcd, members, vec![stop_etcd_script(run); n]).await?;
    let moved = host_step(run, Step::MoveAside, members, vec![aside_script(run); n]).await?;
    for (mb, out) in members.iter().zip(moved) {
        let v = out.trim().to_string();
        if !v.is_empty() {
            run.r.moved_aside.insert(mb.host.name.clone(), v);
        }
    }
    let token = run.r.cluster_token.clone();
    let scripts = members
        .iter()
        .map(|mb| restore_script(run, mb, initial, &token))
        .collect();
    host_step(run, Step::Restore, members, scripts).await?;
    // Every member at once: each waits for a quorum of its peers before it is ready.
    host_step(
        run,
        Step::StartEtcd,
        members,
        vec![start_etcd_script(run); n],
    )
    .await?;
    let tls = state.operator_etcd_tls()?;
    if run.dry {
        run.show(
            Step::WaitHealthy,
            &[("operator".into(), wait_display(run.r.etcd).into())],
        );
        run.show(
            Step::CheckData,
            &[(
                "operator".into(),
                format!("revision >= {want_rev} and {keys} keys (every key, count only)"),
            )],
        );
    } else {
        let kind = run.r.etcd;
        run.step(Step::WaitHealthy, async {
            wait_healthy(c, kind, members, &tls).await?;
            Ok(((), format!("{} members healthy", members.len())))
        })
        .await?;
        let (rev, n) = run
            .step(Step::CheckData, async {
                let (rev, n) = match kind {
                    EtcdRunner::Systemd => read_revision(c, &tls).await?,
                    EtcdRunner::StaticPod => read_revision_on_host(members).await?,
                };
                if rev < want_rev {
                    bail!(
                        "the restored cluster is at revision {rev}, expected at least {want_rev}"
                    );
                }
                if n != keys {
                    bail!("the restored cluster holds {n} keys, the backup {keys}");
                }
                Ok(((rev, n), format!("revision {rev}, {n} keys")))
            })
            .await?;
        run.r.restored_revision = Some(rev);
        run.r.keys = Some(n);
    }
    host_step(
        run,
        Step::StartApiServers,
        members,
        vec![start_api_script(run); n],
    )
    .await?;
    let vip = SocketAddr::new(c.lb.vip, c.lb.api_port);
    if run.dry {
        run.show(
            Step::VerifyVip,
            &[(
                "operator".into(),
                format!("GET https://{vip}/readyz until 200"),
            )],
        );
        return Ok(());
    }
    let ca = state.api_ca_pem();
    run.step(Step::VerifyVip, async move {
        let Some(ca) = ca else {
            return Ok((
                (),
                "no copy of the cluster CA next to the spec: not checked".to_string(),
            ));
        };
        let cfg = crate::probe::client_config(&ca)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = crate::probe::get(&cfg, vip, "/readyz", Duration::from_secs(2)).await;
            match r {
                Ok(x) if x.status == 200 => {
                    return Ok(((), format!("https://{vip}/readyz is 200")));
                }
                _ if Instant::now() > deadline => {
                    bail!(
                        "https://{vip}/readyz is not 200 after 120 s: {:?}",
                        r.map(|x| x.status)
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    })
    .await
}

/// A step that runs one script on every member in parallel (or shows it in a dry run);
/// returns each member's stdout.
async fn host_step<'m>(
    run: &mut Run<'_>,
    step: Step,
    members: &'m [Member<'m>],
    scripts: Vec<String>,
) -> Result<Vec<String>> {
    if run.dry {
        let shown: Vec<(String, String)> = members
            .iter()
            .zip(&scripts)
            .map(|(mb, s)| (mb.host.name.clone(), s.clone()))
            .collect();
        run.show(step, &shown);
        return Ok(vec![String::new(); members.len()]);
    }
    let timeout = match step {
        Step::StartEtcd | Step::StopApiServers | Step::StopEtcd => Duration::from_secs(180),
        _ => Duration::from_secs(600),
    };
    run.step(step, async {
        let outs = all(members.iter().zip(&scripts).map(|(mb, s)| async move {
            let o = transport::run(mb.t()?, s, step.describe(), timeout).await?;
            Ok(o.stdout_str())
        }))
        .await?;
        let d = format!("{} members", members.len());
        Ok((outs, d))
    })
    .await
}

/// Run every future at once; every failure is reported.
async fn all<T, Fut>(futs: impl IntoIterator<Item = Fut>) -> Result<Vec<T>>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let rs = futures::future::join_all(futs).await;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for r in rs {
        match r {
            Ok(v) => out.push(v),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        bail!("{}", errors.join("\n"))
    }
}

async fn remove_copies(run: &Run<'_>, members: &[Member<'_>]) {
    let p = quote(&run.snap_path());
    let s = format!("rm -f {p} {p}.partial");
    let _ = all(members.iter().map(|mb| {
        let s = &s;
        async move {
            transport::run(
                mb.t()?,
                s,
                "remove the snapshot copy",
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
        }
    }))
    .await;
}

/// `key=value` lines.
fn parse_kv(s: &str) -> BTreeMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn preflight_script(run: &Run<'_>, bin_dir: &str) -> String {
    let dd = quote(&run.dd());
    let mut s = format!(
        "E=''; for x in {bin}/etcdutl \"$(command -v etcdutl 2>/dev/null)\"; do \
         if [ -n \"$x\" ] && [ -x \"$x\" ] && \"$x\" version >/dev/null 2>&1; then E=$x; break; fi; done; echo \"etcdutl=$E\"\n\
         D={dd}; while [ ! -d \"$D\" ]; do D=$(dirname \"$D\"); done; echo \"avail_kb=$(df -Pk \"$D\" | awk 'NR==2{{print $4}}')\"\n",
        bin = quote(bin_dir),
    );
    match run.r.etcd {
        EtcdRunner::Systemd => s.push_str(&format!(
            "if [ -f {ETCD_ENV} ]; then sed -n -e 's/^ETCD_NAME=/name=/p' -e 's/^ETCD_INITIAL_ADVERTISE_PEER_URLS=/peer=/p' \
             -e 's/^ETCD_DATA_DIR=/data_dir=/p' {ETCD_ENV}; fi\n"
        )),
        EtcdRunner::StaticPod => s.push_str(&format!(
            "if [ -f {MANIFESTS}/etcd.yaml ]; then echo manifest=1; grep -oE -- '--(name|initial-advertise-peer-urls|data-dir)=[^ \"]+' \
             {MANIFESTS}/etcd.yaml | sed -e 's/^--initial-advertise-peer-urls=/peer=/' -e 's/^--data-dir=/data_dir=/' -e 's/^--//'; fi\n\
             command -v crictl >/dev/null && echo crictl=1\n"
        )),
    }
    match run.r.api_servers {
        ApiRunner::LabSystemd => s.push_str(&format!(
            "systemctl cat {LAB_API} >/dev/null 2>&1 && echo api=1\n"
        )),
        ApiRunner::StaticPods => s.push_str(&format!(
            "[ -f {MANIFESTS}/kube-apiserver.yaml ] && echo api=1\n"
        )),
    }
    s.push_str("true\n");
    s
}

fn preflight_problems(
    c: &Cluster,
    mb: &Member,
    f: &BTreeMap<String, String>,
    size: u64,
) -> Vec<String> {
    let h = &mb.host.name;
    let mut out = Vec::new();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if get("etcdutl").is_empty() {
        out.push(format!(
            "{h}: no working etcdutl (looked next to {} and in PATH)\n  help: install etcdutl from the same etcd release as etcd",
            c.etcd.binary
        ));
    }
    let need = 2 * size + (64 << 20);
    match get("avail_kb").parse::<u64>() {
        Ok(kb) if kb * 1024 < need => out.push(format!(
            "{h}: {:.0} MiB free for {}, the restore needs {:.0} MiB (a copy of the snapshot and the restored data)",
            super::mib(kb * 1024),
            c.etcd.data_dir,
            super::mib(need)
        )),
        Ok(_) => {}
        Err(_) => out.push(format!("{h}: cannot tell the free space of {}", c.etcd.data_dir)),
    }
    let (what, apply_hint) = match c.etcd.management {
        EtcdManagement::Hakube => (
            ETCD_ENV.to_string(),
            "run `hakube apply -f SPEC` first: it installs etcd's config for this spec",
        ),
        EtcdManagement::Kubeadm => (
            format!("{MANIFESTS}/etcd.yaml"),
            "join this host with `hakube apply -f SPEC` first",
        ),
    };
    if get("peer").is_empty() {
        out.push(format!("{h}: no {what}\n  help: {apply_hint}"));
    } else {
        if c.etcd.management == EtcdManagement::Hakube && get("name") != mb.host.name {
            out.push(format!(
                "{h}: {what} names the member {:?}, the spec {:?}\n  help: {apply_hint}",
                get("name"),
                mb.host.name
            ));
        }
        if get("peer") != mb.peer {
            out.push(format!(
                "{h}: {what} advertises the peer URL {}, the spec {}\n  help: {apply_hint}",
                get("peer"),
                mb.peer
            ));
        }
        if !get("data_dir").is_empty() && get("data_dir") != c.etcd.data_dir {
            out.push(format!(
                "{h}: {what} uses the data dir {}, the spec {}\n  help: {apply_hint}",
                get("data_dir"),
                c.etcd.data_dir
            ));
        }
    }
    if c.etcd.management == EtcdManagement::Kubeadm && get("crictl").is_empty() {
        out.push(format!(
            "{h}: no crictl, needed to see kubeadm's static pods stop"
        ));
    }
    if get("api").is_empty() {
        out.push(format!(
            "{h}: no API server is installed here\n  help: run `hakube apply -f SPEC` first"
        ));
    }
    out
}

/// Wait until `crictl` lists no running container whose name matches `re`.
fn wait_pods_gone(re: &str) -> String {
    format!(
        "i=0; while [ -n \"$(crictl ps -q --name '{re}' 2>/dev/null)\" ]; do i=$((i+1)); \
         if [ $i -gt 120 ]; then echo 'containers {re} still run after 120 s' >&2; exit 1; fi; sleep 1; done"
    )
}

fn stop_api_script(run: &Run<'_>) -> String {
    match run.r.api_servers {
        ApiRunner::LabSystemd => format!(
            "systemctl stop {LAB_API}; if systemctl is-active --quiet {LAB_API}; then echo '{LAB_API} is still active' >&2; exit 1; fi"
        ),
        ApiRunner::StaticPods => {
            let a = run.aside_dir();
            let mut s = format!("set -e; mkdir -p {a}\n");
            for p in CONTROL_PODS {
                s.push_str(&format!(
                    "if [ -f {MANIFESTS}/{p}.yaml ]; then mv {MANIFESTS}/{p}.yaml {a}/; fi\n"
                ));
            }
            s.push_str(&wait_pods_gone(&CONTROL_PODS.join("|")));
            s
        }
    }
}

fn start_api_script(run: &Run<'_>) -> String {
    match run.r.api_servers {
        ApiRunner::LabSystemd => format!("systemctl start {LAB_API}"),
        ApiRunner::StaticPods => {
            let a = run.aside_dir();
            let mut s = String::from("set -e\n");
            for p in CONTROL_PODS {
                s.push_str(&format!(
                    "if [ -f {a}/{p}.yaml ]; then mv {a}/{p}.yaml {MANIFESTS}/; fi\n"
                ));
            }
            // A fresh kubelet, so that nothing on this node holds state from before the restore.
            s.push_str(&format!(
                "rmdir {a} 2>/dev/null || true\nsystemctl restart kubelet"
            ));
            s
        }
    }
}

fn stop_etcd_script(run: &Run<'_>) -> String {
    match run.r.etcd {
        EtcdRunner::Systemd => {
            "systemctl stop etcd; if systemctl is-active --quiet etcd; then echo 'etcd is still active' >&2; exit 1; fi".into()
        }
        EtcdRunner::StaticPod => {
            let a = run.aside_dir();
            format!(
                "set -e; mkdir -p {a}; if [ -f {MANIFESTS}/etcd.yaml ]; then mv {MANIFESTS}/etcd.yaml {a}/; fi\n{}",
                wait_pods_gone("^etcd$")
            )
        }
    }
}

/// Members restored from one snapshot hold the same data by construction, and the data is
/// checked right after they start; etcd's initial corruption check (on in hakube's etcd.env)
/// would only stall this start: members started together cannot answer each other's hash
/// requests before their own check ends, so each waits out its timeout per peer. It is off for
/// this one start, through a runtime drop-in (gone at reboot at the latest) removed right after.
const RESTORE_DROPIN: &str = "/run/systemd/system/etcd.service.d/50-hakube-restore.conf";
const RESTORE_ENV: &str = "/run/hakube-restore-etcd.env";

fn start_etcd_script(run: &Run<'_>) -> String {
    match run.r.etcd {
        EtcdRunner::Systemd => format!(
            "set -e
             trap 'rm -f {RESTORE_DROPIN} {RESTORE_ENV}; rmdir $(dirname {RESTORE_DROPIN}) 2>/dev/null; systemctl daemon-reload' EXIT
             mkdir -p $(dirname {RESTORE_DROPIN})
             echo ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK=false > {RESTORE_ENV}
             printf '[Service]\nEnvironmentFile={RESTORE_ENV}\n' > {RESTORE_DROPIN}
             systemctl daemon-reload
             systemctl start etcd"
        ),
        EtcdRunner::StaticPod => {
            let a = run.aside_dir();
            format!("mv {a}/etcd.yaml {MANIFESTS}/etcd.yaml")
        }
    }
}

/// Move everything in the data dir into `hakube-pre-restore-STAMP` inside it (the same file
/// system, and the data dir may be a mount point), except earlier ones and the snapshot copy.
/// Prints the folder, or nothing when the data dir was empty.
fn aside_script(run: &Run<'_>) -> String {
    let dd = quote(&run.dd());
    let keep = format!("hakube-restore-{}.db", run.stamp);
    format!(
        "set -e; DD={dd}; A=\"$DD/hakube-pre-restore-{stamp}\"; mkdir -p \"$A\"; chmod 700 \"$A\"\n\
         for e in \"$DD\"/* \"$DD\"/.[!.]* \"$DD\"/..?*; do\n\
           [ -e \"$e\" ] || continue\n\
           case \"${{e##*/}}\" in hakube-pre-restore-*|{keep}) continue;; esac\n\
           mv \"$e\" \"$A\"/\n\
         done\n\
         if [ -z \"$(ls -A \"$A\")\" ]; then rmdir \"$A\"; else echo \"$A\"; fi",
        stamp = run.stamp,
    )
}

fn restore_script(run: &Run<'_>, mb: &Member, initial: &str, token: &str) -> String {
    let dd = quote(&run.dd());
    let snap = quote(&run.snap_path());
    let tmp = quote(&format!("{}/hakube-restore-{}.d", run.dd(), run.stamp));
    format!(
        "set -e\n\
         {e} snapshot restore {snap} --data-dir {tmp} --name {name} --initial-cluster {ic} \
         --initial-cluster-token {tok} --initial-advertise-peer-urls {peer}\n\
         mv {tmp}/member {dd}/member; rmdir {tmp}; rm -f {snap}; chmod 700 {dd}",
        e = quote(&mb.etcdutl),
        name = quote(&mb.name),
        ic = quote(initial),
        tok = quote(token),
        peer = quote(&mb.peer),
    )
}

fn wait_display(e: EtcdRunner) -> &'static str {
    match e {
        EtcdRunner::Systemd => {
            "a linearizable read on every member, with hakube's client certificate"
        }
        EtcdRunner::StaticPod => {
            "on each member: crictl exec <etcd container> etcdctl endpoint health (kubeadm's certificates)"
        }
    }
}

async fn wait_healthy(
    c: &Cluster,
    kind: EtcdRunner,
    members: &[Member<'_>],
    tls: &crate::etcd::Tls,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = match kind {
            EtcdRunner::Systemd => {
                let checks = members.iter().map(|mb| async move {
                    let ep = url("https", mb.host.address, c.etcd.client_port);
                    crate::etcd::healthy(&ep, tls, Duration::from_secs(2))
                        .await
                        .map_err(|e| anyhow!("{}: {e:#}", mb.host.name))
                });
                futures::future::join_all(checks)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>>>()
                    .map(|_| ())
            }
            EtcdRunner::StaticPod => all(members.iter().map(|mb| async move {
                let s = format!(
                    "crictl exec $(crictl ps -q --name '^etcd$' | head -1) {KUBEADM_ETCDCTL} endpoint health"
                );
                transport::run(mb.t()?, &s, "etcdctl endpoint health", Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }))
            .await
            .map(|_| ()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the restored members are not all healthy after 120 s"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// The highest revision of any member that answers, each read alone (serializable).
async fn highest_revision(c: &Cluster, tls: &crate::etcd::Tls) -> Option<i64> {
    let asks = c.etcd_client_urls().into_iter().map(|ep| async move {
        let t = Duration::from_secs(2);
        let mut cl = crate::etcd::connect(std::slice::from_ref(&ep), tls, t).await?;
        let opts = etcd_client::GetOptions::new()
            .with_count_only()
            .with_serializable();
        let r = tokio::time::timeout(t, cl.get("health", Some(opts))).await??;
        anyhow::Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .max()
}

/// The cluster's revision and number of keys, read with hakube's client certificate.
async fn read_revision(c: &Cluster, tls: &crate::etcd::Tls) -> Result<(i64, u64)> {
    let mut cl = crate::etcd::connect(&c.etcd_client_urls(), tls, Duration::from_secs(3)).await?;
    let r = cl
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_count_only(),
            ),
        )
        .await?;
    Ok((
        r.header().map(|h| h.revision()).unwrap_or(0),
        r.count().max(0) as u64,
    ))
}

/// The same through etcdctl in kubeadm's etcd container on the first member.
async fn read_revision_on_host(members: &[Member<'_>]) -> Result<(i64, u64)> {
    let mb = members.first().context("no control plane")?;
    let s = format!(
        "crictl exec $(crictl ps -q --name '^etcd$' | head -1) {KUBEADM_ETCDCTL} get '' --prefix --count-only -w json"
    );
    let o = transport::run(
        mb.t()?,
        &s,
        "etcdctl get --count-only",
        Duration::from_secs(20),
    )
    .await?;
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).context("etcdctl printed no JSON")?;
    Ok((
        v["header"]["revision"].as_i64().unwrap_or(0),
        v["count"].as_u64().unwrap_or(0),
    ))
}

/// The report as text.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let verdict = match r.outcome {
        Outcome::Restored => "restored",
        Outcome::DryRun => "dry run: nothing was changed",
        Outcome::Refused => "REFUSED",
        Outcome::Failed => "FAILED",
    };
    s.push_str(&format!(
        "restore of {} from {}: {verdict}\n",
        r.cluster, r.backup
    ));
    if let Some(t) = &r.backup_created_at {
        s.push_str(&format!(
            "  backup taken   {t}, revision {}\n",
            r.snapshot_revision.unwrap_or(0)
        ));
    }
    if let Some(b) = r.revision_before {
        s.push_str(&format!("  before         revision {b}\n"));
    }
    if let (Some(rev), Some(k)) = (r.restored_revision, r.keys) {
        s.push_str(&format!(
            "  restored       revision {rev} (raised by {}, marked compacted), {k} keys, cluster token {}\n",
            r.bump, r.cluster_token
        ));
    }
    for (h, p) in &r.moved_aside {
        s.push_str(&format!("  previous data  {h}: {p}\n"));
    }
    if !r.steps.is_empty() {
        s.push_str("  steps:\n");
        for st in &r.steps {
            s.push_str(&format!(
                "    {:<18} {:>6.1}s  {}\n",
                format!("{:?}", st.step),
                st.ms as f64 / 1000.0,
                if st.ok { "ok" } else { "FAILED" }
            ));
        }
    }
    if let Some(d) = r.downtime_ms {
        s.push_str(&format!(
            "  downtime       {:.1}s (API servers stopped until /readyz through the VIP)\n",
            d as f64 / 1000.0
        ));
    }
    s.push_str(&format!(
        "  total          {:.1}s\n",
        r.total_ms as f64 / 1000.0
    ));
    s
}
