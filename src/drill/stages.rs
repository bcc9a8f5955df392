//! The stages of one drill, in the order [`Drill::run`] takes them: check the cluster and
//! plan the fault ([`Drill::precheck`]), start the probe and the watcher and take a baseline
//! ([`Drill::baseline`]), aim at the kept-alive connection ([`Drill::aim`]), inject and hold
//! ([`Drill::inject_and_hold`]), restore ([`Drill::restore`]), wait for recovery
//! ([`Drill::recover`]), and collect what was seen into the report ([`Drill::collect`]).

use super::fault::{Action, Guard, Kind};
use super::outcome::{Disturbances, Ending, verdict};
use super::prober::{self, Prober};
use super::scenario::{self, NoPlan, Plan, Scenario};
use super::watch::{Event, Watcher};
use super::{ALERT_WAIT, Drill, Outcome, ScenarioReport, alerts, describe, metrics, ms_since, utc};
use crate::status::{self, Health};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What runs from the baseline to the collection: the probe, the watcher, and their clock.
pub(super) struct Probing {
    pub t0: Instant,
    wall0: SystemTime,
    /// The etcd key prefix of the probe's writes.
    prefix: String,
    pub watcher: Watcher,
    pub prober: Prober,
    /// Prometheus's alerts, when the spec names a Prometheus and the scenario expects some.
    pub alerts: Option<alerts::Watch>,
}

/// What injecting and holding the fault left behind.
pub(super) struct Held {
    /// When the injection began, in ms on the drill's clock.
    pub inject_ms: f64,
    pub failure: Option<String>,
    pub interrupted: bool,
}

impl Drill {
    /// Where things stand, and what to break: waits up to `settle` for a healthy cluster,
    /// plans the fault, and refuses what needs `--yes` or `--force`. `Err` is the report of
    /// a drill that does not go ahead.
    pub(super) async fn precheck(
        &self,
        mut rep: ScenarioReport,
        sc: Scenario,
        settle: Duration,
        base: u32,
    ) -> Result<(ScenarioReport, status::Status, Plan), ScenarioReport> {
        self.say(sc, "checking the cluster");
        let until = Instant::now() + settle;
        let s = loop {
            let s = match status::gather(&self.c).await {
                Ok(s) => s,
                Err(e) => return Err(rep.end(Outcome::Error, format!("status: {e:#}"))),
            };
            if s.overall == Health::Healthy || Instant::now() >= until || self.interrupts() > base {
                break s;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mut plan = match scenario::plan(&self.c, &s, sc, self.opts.host.as_deref()) {
            Ok(p) => p,
            Err(NoPlan::Skip(m)) => return Err(rep.end(Outcome::Skipped, m)),
            Err(NoPlan::Invalid(m)) => return Err(rep.end(Outcome::Refused, m)),
        };
        if sc.is_soak() && self.opts.load {
            match scenario::soak_load(&s) {
                Ok((actions, on)) => {
                    plan.actions = actions;
                    plan.target = on;
                    plan.chosen_as = "the VIP holder and the etcd leader, under load".into();
                }
                Err(m) => return Err(rep.end(Outcome::Refused, m)),
            }
        }
        rep.target = Some(plan.target.clone());
        rep.chosen_as = Some(plan.chosen_as.clone());
        rep.faults = plan.actions.clone();
        rep.hold_ms = self.opts.duration.as_millis() as u64;
        let what = describe(&plan.actions);
        // Real hosts need --yes, and are named.
        if self.injector.kind() == Kind::Ssh && !self.opts.yes {
            let mut hosts: Vec<&str> = plan.actions.iter().map(Action::host).collect();
            hosts.dedup();
            return Err(rep.end(
                Outcome::Refused,
                format!(
                    "{} acts on real hosts over SSH (the spec is not a lab's, or --via ssh): it would {what}, touching {}. Nothing was done.\n  help: pass --yes to go ahead",
                    sc.name(),
                    hosts.join(", ")
                ),
            ));
        }
        // Safety.
        let reasons = scenario::refusals(&self.c, &s, &plan);
        if !reasons.is_empty() {
            if !self.opts.force {
                return Err(rep.end(
                    Outcome::Refused,
                    format!(
                        "refusing {} ({what}): {}. Nothing was done.\n  help: fix the cluster first, or pass --force to go ahead anyway",
                        sc.name(),
                        reasons.join("; ")
                    ),
                ));
            }
            for r in reasons {
                let w = format!("--force: going ahead although {r}");
                self.say(sc, &format!("warning: {w}"));
                rep.warnings.push(w);
            }
        }
        Ok((rep, s, plan))
    }

    /// Start the watcher and the probe through the VIP, and probe for the baseline. `Err`
    /// (with both stopped, nothing touched) when interrupted or the probe gets no answer.
    pub(super) async fn baseline(
        &self,
        rep: &mut ScenarioReport,
        sc: Scenario,
        tls: Arc<rustls::ClientConfig>,
        base: u32,
    ) -> Result<Probing, (Outcome, String)> {
        let t0 = Instant::now();
        let wall0 = SystemTime::now();
        let prefix = format!("drill/{}/{}/", self.run_id, sc.name());
        let target = prober::Target {
            addr: SocketAddr::new(self.c.lb.vip, self.c.lb.api_port),
            tls,
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
        let prober = Prober::start(target, t0);
        let alerts = self
            .c
            .monitoring
            .prometheus_url
            .as_deref()
            .filter(|_| !alerts::expected(sc).is_empty())
            .map(|u| alerts::Watch::start(u, sc));
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
            return Err(if self.interrupts() > base {
                (
                    Outcome::Interrupted,
                    "interrupted before the fault; nothing was touched".into(),
                )
            } else {
                (
                    Outcome::Error,
                    format!("the probe got no answer through the VIP ({why}); nothing was touched"),
                )
            });
        }
        Ok(Probing {
            t0,
            wall0,
            prefix,
            watcher,
            prober,
            alerts,
        })
    }

    /// The control-plane scenarios hit the kept-alive connection when they can (the worst
    /// case for long-lived clients such as watches). Where the target follows the connection
    /// and it sits on a control plane they may not break (the etcd leader), it is moved off;
    /// etcd-leader-loss cannot choose its target, so the connection is moved onto the
    /// leader's API server. At most 5 reconnects; HAProxy's leastconn decides where each goes.
    /// Returns the plan, retargeted when the connection says so.
    pub(super) async fn aim(
        &self,
        rep: &mut ScenarioReport,
        sc: Scenario,
        plan: Plan,
        s: &status::Status,
        prober: &Prober,
        base: u32,
    ) -> Plan {
        let leader = s.etcd.iter().find(|m| m.is_leader).map(|m| m.name.clone());
        let auto = self.opts.host.is_none() && self.injector.kind() == Kind::Lab;
        for _ in 0..5 {
            let on = self.kept_alive_server(prober);
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
        rep.kept_alive_on = self.kept_alive_server(prober);
        match self.retarget(&plan, s, rep.kept_alive_on.clone()) {
            Some(p) => {
                self.say(sc, &format!("target: {} ({})", p.target, p.chosen_as));
                rep.target = Some(p.target.clone());
                rep.chosen_as = Some(p.chosen_as.clone());
                rep.faults = p.actions.clone();
                p
            }
            None => plan,
        }
    }

    /// On a lab, and unless --host says otherwise, the control-plane scenarios break the
    /// control plane that serves the probe's kept-alive connection, when it qualifies: the worst
    /// case for long-lived clients (watches), instead of a coin toss. On real hosts the target
    /// named before the drill stands.
    fn retarget(&self, plan: &Plan, s: &status::Status, kept: Option<String>) -> Option<Plan> {
        let sc = plan.scenario;
        let fits = matches!(
            sc,
            Scenario::ApiserverDown | Scenario::ControlPlanePartition | Scenario::EtcdMemberDown
        );
        let kept = kept?;
        if !fits
            || self.opts.host.is_some()
            || self.injector.kind() != Kind::Lab
            || kept == plan.target
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

    /// Inject, then hold for the drill's duration (or until interrupted). From here on the
    /// guard restores on every path.
    pub(super) async fn inject_and_hold(
        &self,
        rep: &mut ScenarioReport,
        sc: Scenario,
        guard: &mut Guard,
        actions: &[Action],
        p: &Probing,
        base: u32,
    ) -> Held {
        let inject_ms = ms_since(p.t0);
        let inject_wall = p.wall0 + Duration::from_secs_f64(inject_ms / 1000.0);
        rep.injected_at = Some(utc(inject_wall));
        self.say(sc, &format!("injecting: {}", describe(actions)));
        if let Some(a) = &p.alerts {
            a.injected(Instant::now());
        }
        let injected = guard.inject(actions, self.opts.duration).await;
        for w in guard.skipped.drain(..) {
            self.say(sc, &w);
            rep.warnings.push(w);
        }
        rep.injected_after_ms = Some(ms_since(p.t0) - inject_ms);
        let mut held = Held {
            inject_ms,
            failure: None,
            interrupted: false,
        };
        match injected {
            Ok(()) => {
                tokio::select! {
                    _ = tokio::time::sleep(self.opts.duration) => {}
                    _ = self.interrupted(base + 1) => {
                        held.interrupted = true;
                        self.say(sc, "interrupted: restoring now (the restore is not interruptible)");
                    }
                }
                // Hold on until the expected alerts fired, or it is clear they will not.
                if let Some(a) = p
                    .alerts
                    .as_ref()
                    .filter(|a| !held.interrupted && !a.all_fired())
                {
                    self.say(
                        sc,
                        &format!("holding until {} fire", alerts::expected(sc).join(", ")),
                    );
                    let until = p.t0 + Duration::from_secs_f64(inject_ms / 1000.0) + ALERT_WAIT;
                    while !a.all_fired() && Instant::now() < until {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                            _ = self.interrupted(base + 1) => {
                                held.interrupted = true;
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => held.failure = Some(format!("injecting failed: {e:#}")),
        }
        held
    }

    /// Put back what was broken; the error when that failed.
    pub(super) async fn restore(
        &self,
        rep: &mut ScenarioReport,
        sc: Scenario,
        mut guard: Guard,
        actions: &[Action],
        p: &Probing,
        held: &Held,
    ) -> Option<String> {
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
        rep.hold_ms = (ms_since(p.t0) - held.inject_ms).max(0.0) as u64;
        let restored = guard.restore().await;
        rep.restored_after_ms = Some(ms_since(p.t0) - held.inject_ms);
        let restore_failed = restored.as_ref().err().map(|e| format!("{e:#}"));
        if let Some(e) = &restore_failed {
            self.say(sc, &format!("RESTORE FAILED: {e}"));
        }
        restore_failed
    }

    /// Recovery: status healthy, and the VIP back where keepalived's priorities put it
    /// (with nopreempt it stays where the failover put it); then the tail. Returns the last
    /// reason it was not recovered (empty when it was).
    pub(super) async fn recover(
        &self,
        rep: &mut ScenarioReport,
        sc: Scenario,
        holder: Option<String>,
        p: &Probing,
        held: &Held,
        base: u32,
    ) -> String {
        let back_to =
            holder.filter(|h| self.c.lb.vrrp.preempt && self.top_priority_lb() == Some(h.as_str()));
        if held.interrupted {
            self.say(
                sc,
                "waiting for the cluster to recover (Ctrl-C again to stop waiting)",
            );
        }
        let restored_ms = ms_since(p.t0);
        let (recovered, last) = self
            .wait_recovered(
                p.t0,
                &p.prober,
                &p.watcher,
                restored_ms,
                back_to.as_deref(),
                base + 2,
            )
            .await;
        match recovered {
            Some(t) => {
                rep.recovered_after_ms = Some(t - held.inject_ms);
                self.say(
                    sc,
                    &format!("recovered after {:.2} s", (t - held.inject_ms) / 1000.0),
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
        if let Some(a) = p.alerts.as_ref().filter(|_| recovered.is_some()) {
            let until = Instant::now() + ALERT_WAIT;
            while !a.all_resolved() && Instant::now() < until && self.interrupts() < base + 2 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        last
    }

    /// Stop the probe and the watcher, read every acknowledged write back, put what was seen
    /// into the report (times relative to the injection), and give the verdict.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn collect(
        &self,
        mut rep: ScenarioReport,
        sc: Scenario,
        p: Probing,
        held: Held,
        restore_failed: Option<String>,
        last: String,
        tls: &Arc<rustls::ClientConfig>,
    ) -> ScenarioReport {
        // Requests still in flight are waited for (up to the request timeout), but the probe
        // ends here.
        let end_ms = ms_since(p.t0);
        let recorded = p.prober.stop().await;
        let watched = p.watcher.stop().await;

        // Every acknowledged write must be there.
        let writes = self.check_writes(&recorded.writes, &p.prefix, tls).await;

        let inject_ms = held.inject_ms;
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
        let (detected, by) = super::detection(&rep.changes);
        rep.detected_after_ms = detected;
        rep.detected_by = by;
        if sc.moves_vip() {
            let first = rep.initial_vip.clone().unwrap_or_default();
            rep.vip_moved_after_ms = rep
                .changes
                .iter()
                .find(|c| {
                    c.t_ms >= 0.0
                        && matches!(&c.event, Event::Vip { to, .. } if to.gained_from(&first))
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

        if sc.is_soak() {
            rep.disturbances = Some(Disturbances::count(&rep.changes));
        }
        let (outcome, message) = verdict(&Ending {
            scenario: sc,
            inject_failure: held.failure,
            restore_failure: restore_failed,
            recovered: rep.recovered_after_ms.is_some(),
            recovery_timeout: self.opts.recovery_timeout,
            last_status: last,
            writes: rep.writes.as_ref(),
            failed_requests: rep.metrics.as_ref().map_or(0, |m| m.failed),
            requests: rep.metrics.as_ref().map_or(0, |m| m.requests),
            interrupted: held.interrupted,
            must_be_quiet: rep.disturbances.filter(|_| self.opts.load),
        });
        rep.outcome = outcome;
        rep.message = message;
        if let Some(a) = p.alerts {
            let (timings, err) = a.stop();
            if let Some(m) = alerts::missed(&timings, err.as_deref())
                && rep.outcome == Outcome::Passed
            {
                rep.outcome = Outcome::Failed;
                rep.message = Some(m);
            }
            rep.alerts = timings;
        }
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
