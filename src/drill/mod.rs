//! `hakube drill`: break one thing on purpose, measure exactly what clients experienced,
//! restore it, and prove that nothing was lost.
//!
//! A drill checks that the cluster is healthy and that the fault cannot break quorum, starts a
//! client probe through the VIP and a watcher of the HA layers, injects the fault (the lab's
//! fault primitives, or SSH on real hosts), holds it, restores it on every exit path, waits for
//! `status` to be healthy again, and reads every acknowledged write back from etcd.

pub mod alerts;
pub mod cli;
pub mod client;
pub mod fault;
pub mod metrics;
mod outcome;
mod writes;
pub use outcome::{Outcome, ScenarioReport, WriteCheck};
mod prober;
pub mod report;
pub mod scenario;
mod stages;
mod svg;
pub mod watch;

use crate::lab::state::{LAB_ROOT, LabPaths, LabState};
use crate::spec::{Bootstrap, Cluster, EtcdManagement};
use crate::state::State;
use crate::status;
use anyhow::{Context, Result, bail};
use fault::{Action, Guard, Injector, LabInjector, SshInjector, Via};
use prober::Mode;
use scenario::Scenario;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use watch::{Change, Event};

/// The lab API server's etcd prefix for its key/value API (its `--kv-prefix` default, which
/// the lab unit does not change).
/// How long after the injection (and after recovery) expected alerts may take to fire (and
/// to resolve).
const ALERT_WAIT: Duration = Duration::from_secs(90);

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
    /// `soak` under load: CPU, disk and jitter on the VIP holder and the etcd leader, and any
    /// VIP move, leader change or backend change fails it.
    pub load: bool,
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
            load: false,
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
                    ssh: SshInjector::new(&c),
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

    pub fn via(&self) -> fault::Kind {
        self.injector.kind()
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
    /// drill; `all` gives the cluster a moment after the previous scenario). The stages are in
    /// `stages.rs`.
    pub async fn run(&self, sc: Scenario, settle: Duration) -> ScenarioReport {
        let rep = ScenarioReport::new(sc, &self.c.name, self.injector.kind());
        let base = self.interrupts();
        if base > 0 {
            return rep.end(Outcome::Interrupted, "not started: interrupted");
        }
        let Some(tls) = self.api_tls.clone() else {
            let why = self.api_error.clone().unwrap_or_default();
            return rep.end(Outcome::Error, why);
        };
        match self.precheck(rep, sc, settle, base).await {
            Ok((rep, s, plan)) => self.drive(rep, sc, plan, &s, tls, base).await,
            Err(rep) => rep,
        }
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
        let probing = match self.baseline(&mut rep, sc, tls.clone(), base).await {
            Ok(p) => p,
            Err((outcome, why)) => return rep.end(outcome, why),
        };
        let plan = self.aim(&mut rep, sc, plan, s, &probing.prober, base).await;
        let mut guard = Guard::new(self.injector.clone());
        let held = self
            .inject_and_hold(&mut rep, sc, &mut guard, &plan.actions, &probing, base)
            .await;
        let restore_failed = self
            .restore(&mut rep, sc, guard, &plan.actions, &probing, &held)
            .await;
        let last = self
            .recover(&mut rep, sc, holder, &probing, &held, base)
            .await;
        self.collect(rep, sc, probing, held, restore_failed, last, &tls)
            .await
    }
}

fn describe(actions: &[Action]) -> String {
    actions
        .iter()
        .map(Action::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// When the cluster first reacted: a VIP move, a leader change, or an API server marked DOWN.
pub fn detection(changes: &[Change]) -> (Option<f64>, Option<String>) {
    changes
        .iter()
        .filter(|c| c.t_ms >= 0.0)
        .find_map(|c| {
            let by = match &c.event {
                // Not a move: only whether an LB could be asked changed ("lb1" -> "lb1?").
                Event::Vip { from, to } if from.names() != to.names() => {
                    format!("VIP {from} → {to}")
                }
                Event::Leader { from, to } => format!("etcd leader {from} → {to}"),
                Event::Backend { to, .. } if to.is_out() => {
                    format!("HAProxy marked {} {to}", c.subject())
                }
                _ => return None,
            };
            Some((Some(c.t_ms), Some(by)))
        })
        .unwrap_or((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::haproxy::ServerState;
    use crate::observe::vip::{Holder, Holders};
    use watch::Rating;

    /// A label as the watcher prints it: `lb1?+lb2`.
    fn label(text: &str) -> Holders {
        Holders(
            text.split('+')
                .filter(|h| *h != "none")
                .map(|h| Holder {
                    lb: h.trim_end_matches('?').into(),
                    unconfirmed: h.ends_with('?'),
                })
                .collect(),
        )
    }

    fn vip(t: f64, from: &str, to: &str) -> Change {
        Change {
            t_ms: t,
            event: Event::Vip {
                from: label(from),
                to: label(to),
            },
        }
    }

    fn backend(t: f64, from: &str, to: &str) -> Change {
        Change {
            t_ms: t,
            event: Event::Backend {
                server: "master1".into(),
                lb: "lb1".into(),
                from: Rating::State(ServerState::parse(from)),
                to: Rating::State(ServerState::parse(to)),
            },
        }
    }

    #[test]
    fn detection_ignores_changes_before_the_fault_and_mere_reachability() {
        let changes = vec![
            vip(-10.0, "lb2", "lb1"),
            vip(100.0, "lb1", "lb1?"),
            backend(200.0, "UP", "UP 1/2"),
            backend(300.0, "UP 1/2", "DOWN"),
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
