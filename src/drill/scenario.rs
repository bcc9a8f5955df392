//! The scenarios, what each one breaks on which host, and the safety rules that refuse a drill
//! on an unhealthy cluster or one that would break quorum. Pure functions of the spec and a
//! status snapshot.

use super::fault::Action;
use crate::spec::{Bootstrap, Cluster, EtcdManagement};
use crate::status::{Health, Status};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    LbFailover,
    LbHostLoss,
    ApiserverDown,
    ControlPlanePartition,
    EtcdMemberDown,
    EtcdLeaderLoss,
    WorkerLoss,
    /// No fault: the probe and the watcher on a healthy cluster for the whole hold, to prove
    /// that nothing fails on its own, or to measure an operation (apply, a member replacement)
    /// run meanwhile. Not part of `all`.
    Soak,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::LbFailover,
        Scenario::LbHostLoss,
        Scenario::ApiserverDown,
        Scenario::ControlPlanePartition,
        Scenario::EtcdMemberDown,
        Scenario::EtcdLeaderLoss,
        Scenario::WorkerLoss,
    ];

    /// The scenario's name, the one place it is written (the CLI and `parse` use it).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LbFailover => "lb-failover",
            Scenario::LbHostLoss => "lb-host-loss",
            Scenario::ApiserverDown => "apiserver-down",
            Scenario::ControlPlanePartition => "control-plane-partition",
            Scenario::EtcdMemberDown => "etcd-member-down",
            Scenario::EtcdLeaderLoss => "etcd-leader-loss",
            Scenario::WorkerLoss => "worker-loss",
            Scenario::Soak => "soak",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::CHOICES.into_iter().find(|x| x.name() == s)
    }

    /// Everything the command line accepts besides `all`.
    pub const CHOICES: [Scenario; 8] = [
        Scenario::LbFailover,
        Scenario::LbHostLoss,
        Scenario::ApiserverDown,
        Scenario::ControlPlanePartition,
        Scenario::EtcdMemberDown,
        Scenario::EtcdLeaderLoss,
        Scenario::WorkerLoss,
        Scenario::Soak,
    ];

    /// A scenario without a fault: any failed request fails it.
    pub fn is_soak(self) -> bool {
        self == Scenario::Soak
    }

    /// Whether the VIP is expected to move (the drill then reports how long it took).
    pub fn moves_vip(self) -> bool {
        matches!(self, Scenario::LbFailover | Scenario::LbHostLoss)
    }
}

impl clap::ValueEnum for Scenario {
    fn value_variants<'a>() -> &'a [Self] {
        &Scenario::CHOICES
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// What a fault takes away, by layer (host names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub load_balancers: Vec<String>,
    pub api_servers: Vec<String>,
    pub etcd_members: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scenario: Scenario,
    pub target: String,
    /// Why this host: "the VIP holder", "the etcd leader", ...
    pub chosen_as: String,
    pub actions: Vec<Action>,
    pub loss: Loss,
}

/// Why there is no plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlan {
    /// The scenario does not apply to this cluster (for example, it has no workers).
    Skip(String),
    /// The request cannot be carried out as asked.
    Invalid(String),
}

fn stop(host: &str, service: &str) -> Action {
    Action::Stop {
        host: host.into(),
        service: service.into(),
    }
}

fn api_action(c: &Cluster, host: &str) -> Action {
    match c.kubernetes.bootstrap {
        Bootstrap::Lab => stop(host, "hakube-lab-apiserver"),
        Bootstrap::Kubeadm => Action::StaticPod {
            host: host.into(),
            pod: "kube-apiserver".into(),
        },
    }
}

fn etcd_action(c: &Cluster, host: &str) -> Action {
    match c.etcd.management {
        EtcdManagement::Hakube => stop(host, "etcd"),
        EtcdManagement::Kubeadm => Action::StaticPod {
            host: host.into(),
            pod: "etcd".into(),
        },
    }
}

/// What an action takes away. A stopped etcd member takes its API server with it: the API
/// server of a stacked control plane talks to its local member only.
pub fn loss(c: &Cluster, actions: &[Action]) -> Loss {
    let mut l = Loss::default();
    for a in actions {
        let h = a.host().to_string();
        let roles = c.host(&h).map(|x| x.roles).unwrap_or_default();
        let (lb, api, etcd) = match a {
            Action::Partition { .. } => {
                (roles.loadbalancer, roles.control_plane, roles.control_plane)
            }
            Action::Stop { service, .. } => match service.trim_end_matches(".service") {
                "haproxy" | "keepalived" => (true, false, false),
                "etcd" => (false, true, true),
                _ => (false, true, false),
            },
            Action::StaticPod { pod, .. } => (false, true, pod == "etcd"),
            Action::Load { .. } => (false, false, false),
        };
        for (yes, list) in [
            (lb, &mut l.load_balancers),
            (api, &mut l.api_servers),
            (etcd, &mut l.etcd_members),
        ] {
            if yes && !list.contains(&h) {
                list.push(h.clone());
            }
        }
    }
    l
}

fn leader(s: &Status) -> Option<&str> {
    s.etcd
        .iter()
        .find(|m| m.error.is_none() && m.is_leader)
        .map(|m| m.name.as_str())
}

/// Pick the target and the faults of a scenario.
pub fn plan(c: &Cluster, s: &Status, sc: Scenario, host: Option<&str>) -> Result<Plan, NoPlan> {
    let role_ok = |h: &str, want: &str| -> Result<(), NoPlan> {
        let Some(x) = c.host(h) else {
            return Err(NoPlan::Invalid(format!(
                "there is no host {h:?} in the spec (hosts: {})",
                c.hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if !x.roles.names().contains(&want) {
            return Err(NoPlan::Invalid(format!(
                "{} needs a {want} host; {h} is {}",
                sc.name(),
                x.roles.names().join(", ")
            )));
        }
        Ok(())
    };
    let leader = leader(s);
    // A control plane that is not the etcd leader and whose member is up.
    let follower = || {
        c.control_planes()
            .map(|h| h.name.as_str())
            .find(|n| {
                Some(*n) != leader
                    && s.etcd
                        .iter()
                        .find(|m| m.name == *n)
                        .is_none_or(|m| m.error.is_none())
            })
            .map(String::from)
    };
    let (target, chosen_as): (String, String) = match (sc, host) {
        (Scenario::LbFailover | Scenario::LbHostLoss, Some(h)) => {
            role_ok(h, "loadbalancer")?;
            (h.into(), "chosen with --host".into())
        }
        (Scenario::LbFailover | Scenario::LbHostLoss, None) => match s.vip_holders.as_slice() {
            [one] => (one.clone(), "the VIP holder".into()),
            [] => return Err(NoPlan::Invalid("no load balancer holds the VIP".into())),
            many => {
                return Err(NoPlan::Invalid(format!(
                    "the VIP is on {} load balancers at once (split brain)",
                    many.join(", ")
                )));
            }
        },
        (Scenario::EtcdLeaderLoss, h) => {
            let Some(l) = leader else {
                return Err(NoPlan::Invalid("etcd reports no leader".into()));
            };
            if let Some(h) = h
                && h != l
            {
                return Err(NoPlan::Invalid(format!(
                    "{h} is not the etcd leader ({l} is); use etcd-member-down to stop a follower"
                )));
            }
            (l.to_string(), "the etcd leader".into())
        }
        (Scenario::EtcdMemberDown, Some(h)) if Some(h) == leader => {
            return Err(NoPlan::Invalid(format!(
                "{h} is the etcd leader; etcd-member-down stops a follower (use etcd-leader-loss)"
            )));
        }
        (
            Scenario::ApiserverDown | Scenario::ControlPlanePartition | Scenario::EtcdMemberDown,
            Some(h),
        ) => {
            role_ok(h, "control-plane")?;
            (h.into(), "chosen with --host".into())
        }
        (
            Scenario::ApiserverDown | Scenario::ControlPlanePartition | Scenario::EtcdMemberDown,
            None,
        ) => match follower() {
            Some(h) => (h, "a control plane that is not the etcd leader".into()),
            None => {
                return Err(NoPlan::Invalid(
                    "no control plane with a running etcd follower".into(),
                ));
            }
        },
        (Scenario::WorkerLoss, Some(h)) => {
            role_ok(h, "worker")?;
            (h.into(), "chosen with --host".into())
        }
        (Scenario::WorkerLoss, None) => match c.workers().next() {
            Some(w) => (w.name.clone(), "the first worker".into()),
            None => return Err(NoPlan::Skip("the cluster has no workers".into())),
        },
        (Scenario::Soak, Some(_)) => {
            return Err(NoPlan::Invalid(
                "soak breaks nothing, so --host has nothing to pick".into(),
            ));
        }
        (Scenario::Soak, None) => ("none".into(), "no fault is injected".into()),
    };
    let t = target.as_str();
    let actions = match sc {
        Scenario::LbFailover => vec![stop(t, "haproxy")],
        Scenario::LbHostLoss | Scenario::ControlPlanePartition | Scenario::WorkerLoss => {
            vec![Action::Partition { host: t.into() }]
        }
        Scenario::ApiserverDown => vec![api_action(c, t)],
        Scenario::EtcdMemberDown | Scenario::EtcdLeaderLoss => vec![etcd_action(c, t)],
        Scenario::Soak => vec![],
    };
    Ok(Plan {
        scenario: sc,
        loss: loss(c, &actions),
        target,
        chosen_as,
        actions,
    })
}

/// The loads of `soak --load`: CPU and jitter on the VIP holder; CPU, disk next to etcd's data
/// and jitter on the etcd leader (the two hosts whose slowness moves the VIP or the leader).
/// Returns the actions and the hosts they touch.
pub fn soak_load(s: &Status) -> Result<(Vec<Action>, String), String> {
    use super::fault::Load;
    let holder = match s.vip_holders.as_slice() {
        [one] => one.clone(),
        other => {
            return Err(format!(
                "a soak under load needs one VIP holder, not {other:?}"
            ));
        }
    };
    let leader = leader(s)
        .ok_or("a soak under load needs an etcd leader, and etcd reports none")?
        .to_string();
    let load = |host: &str, load| Action::Load {
        host: host.into(),
        load,
    };
    let actions = vec![
        load(&holder, Load::Cpu),
        load(&leader, Load::Cpu),
        load(&leader, Load::Disk { etcd: true }),
        load(&holder, Load::Jitter),
        load(&leader, Load::Jitter),
    ];
    Ok((actions, format!("{holder}, {leader}")))
}

/// Reasons to refuse the plan on this cluster right now (empty: go ahead).
pub fn refusals(c: &Cluster, s: &Status, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let l = &plan.loss;
    // etcd quorum.
    let n = c.control_planes().count();
    if n > 0 && (c.etcd.management == EtcdManagement::Hakube || !s.etcd.is_empty()) {
        let up: Vec<&str> = s
            .etcd
            .iter()
            .filter(|m| m.error.is_none())
            .map(|m| m.name.as_str())
            .collect();
        let down: Vec<&str> = s
            .etcd
            .iter()
            .filter(|m| m.error.is_some())
            .map(|m| m.name.as_str())
            .collect();
        let after = up
            .iter()
            .filter(|m| !l.etcd_members.iter().any(|x| x == *m))
            .count();
        let quorum = n / 2 + 1;
        if after < quorum && !l.etcd_members.is_empty() {
            let already = if down.is_empty() {
                String::new()
            } else {
                format!(" ({} already down)", down.join(", "))
            };
            out.push(format!(
                "it would break etcd quorum: taking {} leaves {after} of {n} members{already}, and quorum needs {quorum}",
                l.etcd_members.join(", ")
            ));
        }
    }
    // The last load balancer.
    let working: Vec<&str> = s
        .lbs
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| p.host.as_str())
        .collect();
    if !l.load_balancers.is_empty()
        && !working
            .iter()
            .any(|w| !l.load_balancers.iter().any(|x| x == w))
    {
        out.push(format!(
            "it would take the last working load balancer ({}): nothing would serve the VIP",
            l.load_balancers.join(", ")
        ));
    }
    // The last API server.
    let ready: Vec<&str> = s
        .api
        .iter()
        .filter(|a| a.target != "VIP" && a.readyz == Some(200))
        .map(|a| a.target.as_str())
        .collect();
    if !l.api_servers.is_empty() && !ready.iter().any(|r| !l.api_servers.iter().any(|x| x == r)) {
        out.push(format!(
            "it would take the last ready API server ({})",
            l.api_servers.join(", ")
        ));
    }
    if s.overall != Health::Healthy {
        let why = s.unhealthy();
        out.push(format!(
            "the cluster is not healthy ({}); a drill needs a healthy start to measure anything",
            why.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ApiProbe, EtcdMember, LbProbe, Verdict};

    fn cluster() -> Cluster {
        let y = "apiVersion: hakube.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  hosts:\n    - {name: lb1, address: 10.0.0.11, roles: [loadbalancer]}\n    - {name: lb2, address: 10.0.0.12, roles: [loadbalancer]}\n    - {name: m1, address: 10.0.0.101, roles: [control-plane]}\n    - {name: m2, address: 10.0.0.102, roles: [control-plane]}\n    - {name: m3, address: 10.0.0.103, roles: [control-plane]}\n    - {name: w1, address: 10.0.0.201, roles: [worker]}\n  networks: {management: 10.0.0.0/24}\n  loadBalancer: {vip: 10.0.0.100}\n  kubernetes: {bootstrap: lab}\n";
        crate::spec::load_str(y, "cluster.yaml", std::path::Path::new("/tmp"))
            .cluster
            .expect("valid spec")
    }

    fn member(name: &str, id: u64, leader: u64, up: bool) -> EtcdMember {
        EtcdMember {
            name: name.into(),
            member_id: id,
            leader,
            is_leader: up && id == leader,
            error: (!up).then(|| "connection refused".into()),
            ..Default::default()
        }
    }

    /// A healthy status: VIP on lb1, leader m1; `down` lists hosts whose etcd is down.
    fn status(down: &[&str]) -> Status {
        let healthy = down.is_empty();
        Status {
            cluster: "t".into(),
            vip: "10.0.0.100:6443".into(),
            vip_holders: vec!["lb1".into()],
            vip_unknown: vec![],
            vip_answers: true,
            lbs: ["lb1", "lb2"]
                .iter()
                .map(|h| LbProbe {
                    host: h.to_string(),
                    servers: vec![],
                    error: None,
                })
                .collect(),
            api: ["VIP", "m1", "m2", "m3"]
                .iter()
                .map(|t| ApiProbe {
                    target: t.to_string(),
                    address: String::new(),
                    readyz: Some(if down.contains(t) { 500 } else { 200 }),
                    livez: Some(200),
                    latency_ms: Some(1.0),
                    error: None,
                })
                .collect(),
            etcd: [("m1", 1), ("m2", 2), ("m3", 3)]
                .iter()
                .map(|(n, id)| member(n, *id, 1, !down.contains(n)))
                .collect(),
            etcd_quota_bytes: 0,
            etcd_alarms: vec![],
            certs: vec![],
            nodes: None,
            backups: None,
            reached: Default::default(),
            verdicts: vec![Verdict {
                layer: "etcd".into(),
                health: if healthy {
                    Health::Healthy
                } else {
                    Health::Degraded
                },
                reason: format!("down: {}", down.join(", ")),
            }],
            overall: if healthy {
                Health::Healthy
            } else {
                Health::Degraded
            },
            took_ms: 0,
            prometheus: None,
        }
    }

    fn targets(
        sc: Scenario,
        s: &Status,
        host: Option<&str>,
    ) -> Result<(String, Vec<Action>), NoPlan> {
        plan(&cluster(), s, sc, host).map(|p| (p.target, p.actions))
    }

    #[test]
    fn each_scenario_picks_its_target() {
        let s = status(&[]);
        let cases: &[(Scenario, &str, Action)] = &[
            (Scenario::LbFailover, "lb1", stop("lb1", "haproxy")),
            (
                Scenario::LbHostLoss,
                "lb1",
                Action::Partition { host: "lb1".into() },
            ),
            (
                Scenario::ApiserverDown,
                "m2",
                stop("m2", "hakube-lab-apiserver"),
            ),
            (
                Scenario::ControlPlanePartition,
                "m2",
                Action::Partition { host: "m2".into() },
            ),
            (Scenario::EtcdMemberDown, "m2", stop("m2", "etcd")),
            (Scenario::EtcdLeaderLoss, "m1", stop("m1", "etcd")),
            (
                Scenario::WorkerLoss,
                "w1",
                Action::Partition { host: "w1".into() },
            ),
        ];
        for (sc, host, action) in cases {
            let (t, a) = targets(*sc, &s, None).unwrap();
            assert_eq!((t.as_str(), &a[0]), (*host, action), "{sc:?}");
        }
    }

    #[test]
    fn host_must_fit_the_scenario() {
        let s = status(&[]);
        let bad: &[(Scenario, &str, &str)] = &[
            (Scenario::LbFailover, "m1", "needs a loadbalancer host"),
            (Scenario::EtcdMemberDown, "m1", "is the etcd leader"),
            (Scenario::EtcdLeaderLoss, "m2", "is not the etcd leader"),
            (Scenario::WorkerLoss, "nope", "no host \"nope\""),
        ];
        for (sc, h, msg) in bad {
            match targets(*sc, &s, Some(h)) {
                Err(NoPlan::Invalid(m)) => assert!(m.contains(msg), "{sc:?}: {m}"),
                other => panic!("{sc:?} {h}: {other:?}"),
            }
        }
        assert_eq!(
            targets(Scenario::ApiserverDown, &s, Some("m3")).unwrap().0,
            "m3"
        );
    }

    #[test]
    fn refusals_protect_quorum_the_last_lb_and_the_last_api_server() {
        let c = cluster();
        let healthy = status(&[]);
        let p = plan(&c, &healthy, Scenario::EtcdMemberDown, None).unwrap();
        assert!(refusals(&c, &healthy, &p).is_empty());

        // One member already down: stopping another breaks quorum.
        let degraded = status(&["m3"]);
        let p = plan(&c, &degraded, Scenario::EtcdMemberDown, None).unwrap();
        assert_eq!(p.target, "m2");
        let r = refusals(&c, &degraded, &p);
        assert!(
            r[0].contains("break etcd quorum")
                && r[0].contains("leaves 1 of 3")
                && r[0].contains("m3 already down"),
            "{r:?}"
        );
        assert!(r.iter().any(|x| x.contains("not healthy")), "{r:?}");

        // The other LB's HAProxy does not answer: lb1 is the last one.
        let mut s = status(&[]);
        s.lbs[1].error = Some("refused".into());
        let p = plan(&c, &s, Scenario::LbFailover, None).unwrap();
        assert!(refusals(&c, &s, &p)[0].contains("last working load balancer"));

        // Two API servers not ready: m1 is the last.
        let mut s = status(&[]);
        for a in &mut s.api[2..] {
            a.readyz = Some(500);
        }
        let p = plan(&c, &s, Scenario::ApiserverDown, Some("m1")).unwrap();
        assert!(refusals(&c, &s, &p)[0].contains("last ready API server"));
    }

    #[test]
    fn soak_breaks_nothing_and_takes_no_host() {
        let c = cluster();
        let s = status(&[]);
        let p = plan(&c, &s, Scenario::Soak, None).unwrap();
        assert!(p.actions.is_empty());
        assert_eq!(p.loss, Loss::default());
        assert!(refusals(&c, &s, &p).is_empty());
        assert!(matches!(
            plan(&c, &s, Scenario::Soak, Some("m1")),
            Err(NoPlan::Invalid(_))
        ));
        assert!(
            !Scenario::ALL.contains(&Scenario::Soak),
            "not part of `all`"
        );
        assert_eq!(Scenario::parse("soak"), Some(Scenario::Soak));
    }

    #[test]
    fn a_partitioned_control_plane_loses_its_api_server_and_member() {
        let c = cluster();
        let l = loss(&c, &[Action::Partition { host: "m2".into() }]);
        assert_eq!(
            (l.load_balancers.len(), l.api_servers, l.etcd_members),
            (0, vec!["m2".to_string()], vec!["m2".to_string()])
        );
        let l = loss(&c, &[stop("m1", "etcd")]);
        assert_eq!(l.api_servers, ["m1"]);
    }

    #[test]
    fn a_cluster_without_workers_skips_worker_loss() {
        let mut c = cluster();
        c.hosts.retain(|h| !h.roles.worker);
        assert!(matches!(
            plan(&c, &status(&[]), Scenario::WorkerLoss, None),
            Err(NoPlan::Skip(_))
        ));
    }
}
