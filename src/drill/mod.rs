//! `hakube drill`: break one thing on purpose, measure exactly what clients experienced,
//! restore it, and prove that nothing was lost.
//!
//! A drill checks that the cluster is healthy and that the fault cannot break quorum, starts a
//! client probe through the VIP and a watcher of the HA layers, injects the fault (the lab's
//! fault primitives, or SSH on real hosts), holds it, restores it on every exit path, waits for
//! `status` to be healthy again, and reads every acknowledged write back from etcd.

pub mod cli;
pub mod client;
pub mod fault;
pub mod metrics;
mod outcome;
mod writes;
use outcome::{Ending, verdict};
pub use outcome::{Outcome, ScenarioReport, WriteCheck};
mod prober;
pub mod report;
pub mod scenario;
mod svg;
pub mod watch;

use crate::lab::state::{LAB_ROOT, LabPaths, LabState};
use crate::spec::{Bootstrap, Cluster, EtcdManagement};
use crate::state::State;
use crate::status::{self, Health};
use anyhow::{Context, Result, bail};
use fault::{Action, Guard, Injector, LabInjector, SshInjector, Via};
use prober::{Mode, Prober};
use scenario::{NoPlan, Scenario};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use watch::{Change, Watcher, What};

/// The lab API server's etcd prefix for its key/value API (its `--kv-prefix` default, which
/// the lab unit does not change).
pub const LAB_KV_PREFIX: &str = "/hakube-lab/kv/";

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub host: Option<String>,
    pub force: bool,
    pub yes: bool,
    pub via: Via,
    /// How long after the restore the cluster may take to be healthy again.
    pub recovery_timeout: Duration,
    /// A probe request that takes longer has failed.
    pub request_timeout: Duration,
    /// Time between two requests of one probe stream.
    pub interval: Duration,
    /// Probing before the fault, to prove the probe works and show the baseline.
    pub baseline: Duration,
    /// Probing after recovery, to catch late effects (a VIP moving back, for example).
    pub tail: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(5),
            host: None,
            force: false,
            yes: false,
            via: Via::Auto,
            recovery_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            interval: Duration::from_millis(50),
            baseline: Duration::from_secs(1),
            tail: Duration::from_secs(1),
        }
    }
}

/// The lab a spec belongs to: it lives in `/var/lib/hakube-lab/<lab>/`, the lab's state
/// exists, its hosts are the spec's, and `bootstrap: lab`.
pub fn lab_of(spec: &Path, c: &Cluster) -> Option<String> {
    let p = spec.canonicalize().ok()?;
    let dir = p.parent()?;
    if dir.parent()? != Path::new(LAB_ROOT) || c.kubernetes.bootstrap != Bootstrap::Lab {
        return None;
    }
    let name = dir.file_name()?.to_str()?.to_string();
    let st = LabState::load(&LabPaths::new(&name)).ok()??;
    let same = c.hosts.iter().all(|h| {
        st.hosts
            .iter()
            .any(|l| l.name == h.name && IpAddr::V4(l.address) == h.address)
    });
    same.then_some(name)
}

/// A drill session on one cluster; runs scenarios one after another.
pub struct Drill {
    c: Cluster,
    opts: Options,
    injector: Arc<dyn Injector>,
    pub lab: Option<String>,
    api_tls: Option<Arc<rustls::ClientConfig>>,
    api_error: Option<String>,
    etcd_tls: Option<crate::etcd::Tls>,
    stats_password: Option<String>,
    /// Lab host -> its network namespace, when faults go through the lab.
    netns: Option<std::collections::BTreeMap<String, String>>,
    run_id: String,
    interrupts: tokio::sync::watch::Receiver<u32>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub fn utc(t: SystemTime) -> String {
    let d = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} UTC",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.millisecond()
    )
}

/// `YYYYMMDDTHHMMSSZ`, for folder names.
pub fn stamp(t: SystemTime) -> String {
    let d = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

impl Drill {
    pub fn new(
        c: Cluster,
        spec: &Path,
        opts: Options,
        interrupts: tokio::sync::watch::Receiver<u32>,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Drill> {
        let lab = lab_of(spec, &c);
        let mut netns = None;
        let injector: Arc<dyn Injector> = match (opts.via, &lab) {
            (Via::Lab, None) => bail!(
                "--via lab: {} does not belong to a lab (a lab's spec is {LAB_ROOT}/<lab>/cluster.yaml, with bootstrap: lab)",
                spec.display()
            ),
            (Via::Auto | Via::Lab, Some(name)) => {
                if !nix::unistd::Uid::effective().is_root() {
                    bail!(
                        "drills on a lab use its fault primitives, which need root\n  help: run it with sudo"
                    );
                }
                let st = LabState::require(&LabPaths::new(name))?;
                netns = Some(
                    st.hosts
                        .iter()
                        .map(|h| (h.name.clone(), h.netns.clone()))
                        .collect(),
                );
                Arc::new(LabInjector {
                    lab: name.clone(),
                    exe: std::env::current_exe().context("cannot find the hakube binary")?,
                })
            }
            _ => Arc::new(SshInjector::new(&c)),
        };
        let state = State::open(&c)?;
        let (api_tls, api_error) = match state
            .api_ca_pem()
            .map(|ca| crate::probe::client_config(&ca))
        {
            Some(Ok(cfg)) => (Some(cfg), None),
            Some(Err(e)) => (None, Some(format!("the cluster CA is not usable: {e:#}"))),
            None => (
                None,
                Some(format!(
                    "no cluster CA to verify the API against (expected {})",
                    state.kubeadm_ca_path().display()
                )),
            ),
        };
        let etcd_tls = if c.etcd.management == EtcdManagement::Hakube {
            Some(state.operator_etcd_tls()?)
        } else {
            None
        };
        let stats_password = state.stats_password();
        let now = SystemTime::now();
        let run_id = format!("{}-{:04x}", stamp(now), rand::random::<u16>());
        Ok(Drill {
            c,
            opts,
            injector,
            lab,
            api_tls,
            api_error,
            etcd_tls,
            stats_password,
            netns,
            run_id,
            interrupts,
            log,
        })
    }

    pub fn via(&self) -> &'static str {
        self.injector.name()
    }

    fn interrupts(&self) -> u32 {
        *self.interrupts.borrow()
    }

    /// Resolves once `n` interrupts have arrived in total.
    async fn interrupted(&self, n: u32) {
        let mut rx = self.interrupts.clone();
        if rx.wait_for(|c| *c >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn say(&self, sc: Scenario, msg: &str) {
        (self.log)(&format!("[{}] {msg}", sc.name()));
    }

    fn mode(&self) -> Mode {
        match self.c.kubernetes.bootstrap {
            Bootstrap::Lab => Mode::Kv,
            Bootstrap::Kubeadm => Mode::ReadOnly,
        }
    }

    /// Run one scenario, from the precondition to the write check. `settle`: how long an
    /// unhealthy cluster may take to become healthy before the drill refuses (0 for a single
    /// drill; `all` gives the cluster a moment after the previous scenario).
    pub async fn run(&self, sc: Scenario, settle: Duration) -> ScenarioReport {
        let mut rep = ScenarioReport::new(sc, &self.c.name, self.injector.name());
        let base = self.interrupts();
        if base > 0 {
            return rep.end(Outcome::Interrupted, "not started: interrupted");
        }
        let Some(tls) = self.api_tls.clone() else {
            let why = self.api_error.clone().unwrap_or_default();
            return rep.end(Outcome::Error, why);
        };
        // 1. Where things stand, and what to break.
        self.say(sc, "checking the cluster");
        let until = Instant::now() + settle;
        let s = loop {
            let s = match status::gather(&self.c).await {
                Ok(s) => s,
                Err(e) => return rep.end(Outcome::Error, format!("status: {e:#}")),
            };
            if s.overall == Health::Healthy || Instant::now() >= until || self.interrupts() > base {
                break s;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let plan = match scenario::plan(&self.c, &s, sc, self.opts.host.as_deref()) {
            Ok(p) => p,
            Err(NoPlan::Skip(m)) => return rep.end(Outcome::Skipped, m),
            Err(NoPlan::Invalid(m)) => return rep.end(Outcome::Refused, m),
        };
        rep.target = Some(plan.target.clone());
        rep.chosen_as = Some(plan.chosen_as.clone());
        rep.faults = plan.actions.clone();
        rep.hold_ms = self.opts.duration.as_millis() as u64;
        let what = plan
            .actions
            .iter()
            .map(Action::describe)
            .collect::<Vec<_>>()
            .join(", ");
        // 2. Real hosts need --yes, and are named.
        if self.injector.name() == "ssh" && !self.opts.yes {
            let mut hosts: Vec<&str> = plan.actions.iter().map(Action::host).collect();
            hosts.dedup();
            return rep.end(
                Outcome::Refused,
                format!(
                    "{} acts on real hosts over SSH (the spec is not a lab's, or --via ssh): it would {what}, touching {}. Nothing was done.\n  help: pass --yes to go ahead",
                    sc.name(),
                    hosts.join(", ")
                ),
            );
        }
        // 3. Safety.
        let reasons = scenario::refusals(&self.c, &s, &plan);
        if !reasons.is_empty() {
            if !self.opts.force {
                return rep.end(
                    Outcome::Refused,
                    format!(
                        "refusing {} ({what}): {}. Nothing was done.\n  help: fix the cluster first, or pass --force to go ahead anyway",
                        sc.name(),
                        reasons.join("; ")
                    ),
                );
            }
            for r in reasons {
                let w = format!("--force: going ahead although {r}");
                self.say(sc, &format!("warning: {w}"));
                rep.warnings.push(w);
            }
        }
        self.drive(rep, sc, plan, &s, tls, base).await
    }

    /// On a lab, and unless --host says otherwise, the control-plane scenarios break the
    /// control plane that serves the probe's kept-alive connection, when it qualifies: the worst
    /// case for long-lived clients (watches), instead of a coin toss. On real hosts the target
    /// named before the drill stands.
    fn retarget(
        &self,
        plan: &scenario::Plan,
        s: &status::Status,
        kept: Option<String>,
    ) -> Option<scenario::Plan> {
        let sc = plan.scenario;
        let fits = matches!(
            sc,
            Scenario::ApiserverDown | Scenario::ControlPlanePartition | Scenario::EtcdMemberDown
        );
        let kept = kept?;
        if !fits || self.opts.host.is_some() || self.injector.name() != "lab" || kept == plan.target
        {
            return None;
        }
        let leader = s.etcd.iter().any(|m| m.name == kept && m.is_leader);
        if leader && sc != Scenario::ApiserverDown {
            return None;
        }
        let mut p = scenario::plan(&self.c, s, sc, Some(&kept)).ok()?;
        if !scenario::refusals(&self.c, s, &p).is_empty() {
            return None;
        }
        p.chosen_as = "it serves the probe's kept-alive connection".into();
        Some(p)
    }

    /// Probe, break, hold, restore, recover, check.
    async fn drive(
        &self,
        mut rep: ScenarioReport,
        sc: Scenario,
        plan: scenario::Plan,
        s: &status::Status,
        tls: Arc<rustls::ClientConfig>,
        base: u32,
    ) -> ScenarioReport {
        let holder = s.vip_holders.first().cloned();
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        let prefix = format!("drill/{}/{}/", self.run_id, sc.name());
        let target = prober::Target {
            addr: SocketAddr::new(self.c.lb.vip, self.c.lb.api_port),
            tls: tls.clone(),
            mode: self.mode(),
            prefix: prefix.clone(),
            interval: self.opts.interval,
            timeout: self.opts.request_timeout,
        };
        let watcher = Watcher::start(
            &self.c,
            t0,
            self.etcd_tls.clone(),
            self.stats_password.clone(),
            self.netns.as_ref(),
        );
        let prober = Prober::start(target.clone(), t0);
        rep.probe_start_ms = 0.0;
        self.say(
            sc,
            &format!(
                "probing https://{} every {} ms on two streams",
                self.c.control_plane_endpoint(),
                self.opts.interval.as_millis()
            ),
        );
        tokio::select! {
            _ = tokio::time::sleep(self.opts.baseline) => {}
            _ = self.interrupted(base + 1) => {}
        }
        if self.interrupts() > base || prober.successes() == 0 {
            let why = prober.last_error().unwrap_or_else(|| "no answer".into());
            let _ = prober.stop().await;
            let _ = watcher.stop().await;
            return if self.interrupts() > base {
                rep.end(
                    Outcome::Interrupted,
                    "interrupted before the fault; nothing was touched",
                )
            } else {
                rep.end(
                    Outcome::Error,
                    format!("the probe got no answer through the VIP ({why}); nothing was touched"),
                )
            };
        }

        // The control-plane scenarios hit the kept-alive connection when they can (the worst
        // case for long-lived clients such as watches). Where the target follows the connection
        // and it sits on a control plane they may not break (the etcd leader), it is moved off;
        // etcd-leader-loss cannot choose its target, so the connection is moved onto the
        // leader's API server. At most 5 reconnects; HAProxy's leastconn decides where each goes.
        let leader = s.etcd.iter().find(|m| m.is_leader).map(|m| m.name.clone());
        let auto = self.opts.host.is_none() && self.injector.name() == "lab";
        for _ in 0..5 {
            let on = self.kept_alive_server(&prober);
            let on_leader = on.is_some() && on == leader;
            let (wrong, why) = match sc {
                Scenario::ControlPlanePartition | Scenario::EtcdMemberDown => (
                    on.is_none() || on_leader,
                    "moving the kept-alive connection off the etcd leader",
                ),
                Scenario::EtcdLeaderLoss => (
                    leader.is_some() && !on_leader,
                    "moving the kept-alive connection onto the etcd leader",
                ),
                _ => (false, ""),
            };
            if !auto || !wrong || self.interrupts() > base {
                break;
            }
            self.say(sc, why);
            prober.reconnect_keepalive();
            tokio::time::sleep(self.opts.interval * 4).await;
        }
        rep.kept_alive_on = self.kept_alive_server(&prober);
        let plan = match self.retarget(&plan, s, rep.kept_alive_on.clone()) {
            Some(p) => {
                self.say(sc, &format!("target: {} ({})", p.target, p.chosen_as));
                rep.target = Some(p.target.clone());
                rep.chosen_as = Some(p.chosen_as.clone());
                rep.faults = p.actions.clone();
                p
            }
            None => plan,
        };
        let actions = plan.actions;

        // Inject; from here on the guard restores on every path.
        let mut guard = Guard::new(self.injector.clone());
        let inject_ms = ms_since(t0);
        let inject_wall = wall0 + Duration::from_secs_f64(inject_ms / 1000.0);
        rep.injected_at = Some(utc(inject_wall));
        self.say(sc, &format!("injecting: {}", describe(&actions)));
        let injected = guard.inject(&actions, self.opts.duration).await;
        rep.injected_after_ms = Some(ms_since(t0) - inject_ms);
        let mut failure: Option<String> = None;
        let mut interrupted = false;
        match injected {
            Ok(()) => {
                tokio::select! {
                    _ = tokio::time::sleep(self.opts.duration) => {}
                    _ = self.interrupted(base + 1) => {
                        interrupted = true;
                        self.say(sc, "interrupted: restoring now (the restore is not interruptible)");
                    }
                }
            }
            Err(e) => failure = Some(format!("injecting failed: {e:#}")),
        }
        self.say(
            sc,
            &format!(
                "restoring: {}",
                actions
                    .iter()
                    .map(Action::undo)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        rep.hold_ms = (ms_since(t0) - inject_ms).max(0.0) as u64;
        let restored = guard.restore().await;
        rep.restored_after_ms = Some(ms_since(t0) - inject_ms);
        let restore_failed = restored.as_ref().err().map(|e| format!("{e:#}"));
        if let Some(e) = &restore_failed {
            self.say(sc, &format!("RESTORE FAILED: {e}"));
        }

        // Recovery: status healthy, and the VIP back where keepalived's priorities put it
        // (with nopreempt it stays where the failover put it).
        let back_to =
            holder.filter(|h| self.c.lb.vrrp.preempt && self.top_priority_lb() == Some(h.as_str()));
        if interrupted {
            self.say(
                sc,
                "waiting for the cluster to recover (Ctrl-C again to stop waiting)",
            );
        }
        let restored_ms = ms_since(t0);
        let (recovered, last) = self
            .wait_recovered(
                t0,
                &prober,
                &watcher,
                restored_ms,
                back_to.as_deref(),
                base + 2,
            )
            .await;
        match recovered {
            Some(t) => {
                rep.recovered_after_ms = Some(t - inject_ms);
                self.say(
                    sc,
                    &format!("recovered after {:.2} s", (t - inject_ms) / 1000.0),
                );
            }
            None => self.say(sc, &format!("not recovered: {last}")),
        }
        if recovered.is_some() && self.interrupts() < base + 2 {
            tokio::select! {
                _ = tokio::time::sleep(self.opts.tail) => {}
                _ = self.interrupted(base + 2) => {}
            }
        }
        // Requests still in flight are waited for (up to the request timeout), but the probe
        // ends here.
        let end_ms = ms_since(t0);
        let recorded = prober.stop().await;
        let watched = watcher.stop().await;

        // Every acknowledged write must be there.
        let writes = self.check_writes(&recorded.writes, &prefix, &tls).await;

        // Relative to the injection from here on.
        let rel = |t: f64| t - inject_ms;
        rep.probe_start_ms = rel(0.0);
        rep.probe_end_ms = rel(end_ms);
        rep.initial_vip = watched.initial_vip.clone();
        rep.initial_leader = watched.initial_leader.clone();
        rep.changes = watched
            .changes
            .into_iter()
            .map(|mut c| {
                c.t_ms = rel(c.t_ms);
                c
            })
            .collect();
        let (detected, by) = detection(&rep.changes);
        rep.detected_after_ms = detected;
        rep.detected_by = by;
        if sc.moves_vip() {
            let first = rep.initial_vip.clone().unwrap_or_default();
            rep.vip_moved_after_ms = rep
                .changes
                .iter()
                .find(|c| {
                    c.what == What::Vip
                        && c.t_ms >= 0.0
                        && c.to
                            .split('+')
                            .any(|h| !h.ends_with('?') && h != first && h != "none")
                })
                .map(|c| c.t_ms);
        }
        rep.metrics = Some(metrics::compute(&recorded.samples, inject_ms, end_ms));
        rep.samples = recorded
            .samples
            .into_iter()
            .map(|mut s| {
                s.start_ms = rel(s.start_ms);
                s
            })
            .collect();
        rep.writes = Some(writes);

        let (outcome, message) = verdict(&Ending {
            scenario: sc,
            inject_failure: failure,
            restore_failure: restore_failed,
            recovered: rep.recovered_after_ms.is_some(),
            recovery_timeout: self.opts.recovery_timeout,
            last_status: last,
            writes: rep.writes.as_ref(),
            failed_requests: rep.metrics.as_ref().map_or(0, |m| m.failed),
            requests: rep.metrics.as_ref().map_or(0, |m| m.requests),
            interrupted,
        });
        rep.outcome = outcome;
        rep.message = message;
        rep
    }

    /// The control plane behind the probe's kept-alive connection: the only one its server
    /// certificate names by host name (certificates may name every control plane's address,
    /// so addresses count only when they single one out).
    fn kept_alive_server(&self, prober: &Prober) -> Option<String> {
        let names = prober.keepalive_peer();
        let only = |hit: &dyn Fn(&crate::spec::Host) -> bool| {
            let mut on = self.c.control_planes().filter(|h| hit(h));
            match (on.next(), on.next()) {
                (Some(h), None) => Some(h.name.clone()),
                _ => None,
            }
        };
        only(&|h| names.contains(&h.name))
            .or_else(|| only(&|h| names.contains(&h.address.to_string())))
    }

    /// The LB keepalived puts the VIP on when every LB is healthy (the highest priority).
    fn top_priority_lb(&self) -> Option<&str> {
        self.c
            .lb
            .vrrp
            .priorities
            .iter()
            .max_by_key(|(_, p)| **p)
            .map(|(n, _)| n.as_str())
    }

    /// Poll `status` until healthy, the VIP on `holder` (if given), every probe request of the
    /// last second answered (started after the restore; the ones of the last 300 ms may still
    /// be in flight), and every HAProxy rating every API server plainly UP (not half way, as
    /// `UP 1/2` after a check that failed during the fault), twice in a row. Returns when (the
    /// first of the two), in ms on the drill's clock, and the last reason it was not.
    async fn wait_recovered(
        &self,
        t0: Instant,
        prober: &Prober,
        watcher: &Watcher,
        restored_ms: f64,
        holder: Option<&str>,
        give_up_at: u32,
    ) -> (Option<f64>, String) {
        let deadline = Instant::now() + self.opts.recovery_timeout;
        let mut last = String::from("not checked");
        let mut said = String::new();
        let mut first_ok: Option<f64> = None;
        while Instant::now() < deadline {
            if self.interrupts() >= give_up_at {
                return (None, "interrupted while waiting for recovery".into());
            }
            match tokio::time::timeout(Duration::from_secs(10), status::gather(&self.c)).await {
                Ok(Ok(s)) => {
                    let on_holder = holder.is_none_or(|h| s.vip_holders == [h]);
                    let now = ms_since(t0);
                    let clients = prober.clients_ok((now - 1000.0).max(restored_ms), now - 300.0);
                    let unsettled = watcher.unsettled();
                    if s.overall == Health::Healthy && on_holder && clients && unsettled.is_empty()
                    {
                        match first_ok {
                            Some(t) => return (Some(t), String::new()),
                            None => first_ok = Some(now),
                        }
                    } else {
                        first_ok = None;
                    }
                    last = if first_ok.is_some() {
                        "healthy; confirming".into()
                    } else if s.overall != Health::Healthy {
                        s.verdicts
                            .iter()
                            .filter(|v| v.health != Health::Healthy)
                            .map(|v| format!("{}: {}", v.layer, v.reason))
                            .collect::<Vec<_>>()
                            .join("; ")
                    } else if !unsettled.is_empty() {
                        format!("HAProxy not settled: {}", unsettled.join(", "))
                    } else if !on_holder {
                        format!(
                            "the VIP is on {} (waiting for {})",
                            s.vip_holders.join("+"),
                            holder.unwrap_or("-")
                        )
                    } else {
                        format!(
                            "status is healthy, but clients still fail through the VIP ({})",
                            prober
                                .last_error()
                                .unwrap_or_else(|| "no answer yet".into())
                        )
                    };
                }
                Ok(Err(e)) => last = format!("status: {e:#}"),
                Err(_) => last = "status timed out".into(),
            }
            if last != said {
                (self.log)(&format!("  waiting: {last}"));
                said = last.clone();
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.interrupted(give_up_at) => {}
            }
        }
        (None, last)
    }
}

fn describe(actions: &[Action]) -> String {
    actions
        .iter()
        .map(Action::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The LBs named in a VIP label ("lb1?+lb2" -> lb1, lb2).
fn holders(label: &str) -> std::collections::BTreeSet<&str> {
    label
        .split('+')
        .map(|h| h.trim_end_matches('?'))
        .filter(|h| *h != "none")
        .collect()
}

/// When the cluster first reacted: a VIP move, a leader change, or an API server marked DOWN.
pub fn detection(changes: &[Change]) -> (Option<f64>, Option<String>) {
    changes
        .iter()
        .filter(|c| c.t_ms >= 0.0)
        .find(|c| match c.what {
            // Not a move: only whether an LB could be asked changed ("lb1" -> "lb1?").
            What::Vip => holders(&c.from) != holders(&c.to),
            What::Leader => true,
            What::Backend => c.to.starts_with("DOWN") || c.to.starts_with("MAINT"),
        })
        .map(|c| {
            let by = match c.what {
                What::Vip => format!("VIP {} → {}", c.from, c.to),
                What::Leader => format!("etcd leader {} → {}", c.from, c.to),
                What::Backend => format!("HAProxy marked {} {}", c.subject, c.to),
            };
            (Some(c.t_ms), Some(by))
        })
        .unwrap_or((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(t: f64, from: &str, to: &str) -> Change {
        Change {
            t_ms: t,
            what: What::Vip,
            subject: "vip".into(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn detection_ignores_changes_before_the_fault_and_mere_reachability() {
        let changes = vec![
            vip(-10.0, "lb2", "lb1"),
            vip(100.0, "lb1", "lb1?"),
            Change {
                t_ms: 200.0,
                what: What::Backend,
                subject: "master1@lb1".into(),
                from: "UP".into(),
                to: "UP 1/2".into(),
            },
            Change {
                t_ms: 300.0,
                what: What::Backend,
                subject: "master1@lb1".into(),
                from: "UP 1/2".into(),
                to: "DOWN".into(),
            },
            vip(400.0, "lb1?", "lb1?+lb2"),
        ];
        assert_eq!(
            detection(&changes),
            (Some(300.0), Some("HAProxy marked master1@lb1 DOWN".into()))
        );
        assert_eq!(detection(&changes[4..]).0, Some(400.0));
        assert_eq!(detection(&changes[..2]), (None, None));
    }
}
