//! The upgrade plan, as a pure function: what runs now and what the spec wants in, the ordered
//! steps or a refusal that names the exact path to take.
//!
//! Rules (docs/upgrade.md): Kubernetes one minor at a time; a kubelet never newer than the API
//! server and at most 3 minors older (2 before 1.25); etcd patch steps within a minor, one minor
//! at a time, and a new minor only from the newest patch of the one before (etcd's 3.5 -> 3.6
//! guide; k3s#13485). Order: etcd members with the leader last, then the load balancers with
//! the VIP holder last, then the control planes, then the workers in batches.

use semver::Version;
use serde::Serialize;
use std::collections::BTreeMap;

/// The newest patch of each etcd minor that hakube knows, and so requires before the next
/// minor. Update it as etcd releases; 3.5.26 is the floor etcd's 3.6 upgrade guide names.
pub const ETCD_NEWEST_PATCH: &[(u64, u64, u64)] = &[(3, 4, 37), (3, 5, 26), (3, 6, 6)];

fn newest_patch(major: u64, minor: u64) -> Option<u64> {
    ETCD_NEWEST_PATCH
        .iter()
        .find(|(a, b, _)| *a == major && *b == minor)
        .map(|(_, _, p)| *p)
}

/// The etcd versions to pass through from `from` to `to`, `to` included; empty when equal.
/// Refused: downgrades and major changes.
pub fn etcd_path(from: &Version, to: &Version) -> Result<Vec<Version>, String> {
    if from == to {
        return Ok(vec![]);
    }
    if to < from {
        return Err(format!(
            "etcd {from} -> {to} is a downgrade; `hakube upgrade` only goes forward\n  help: to \
             go back after a patch upgrade, pin {from} again only on members that never ran {to} \
             (the link /opt/hakube/etcd/current switches back); a minor downgrade needs \
             `etcdctl downgrade validate/enable` first"
        ));
    }
    if to.major != from.major {
        return Err(format!(
            "etcd {from} -> {to} changes the major version; hakube knows no such path"
        ));
    }
    let mut path = Vec::new();
    let mut cur = from.clone();
    while cur.minor < to.minor {
        let Some(newest) = newest_patch(cur.major, cur.minor) else {
            return Err(format!(
                "etcd {from} -> {to}: hakube does not know the newest {}.{} patch, which must \
                 come before {}.{}\n  help: upgrade by patch steps within {}.{} first",
                cur.major,
                cur.minor,
                cur.major,
                cur.minor + 1,
                cur.major,
                cur.minor
            ));
        };
        if cur.patch < newest {
            cur = Version::new(cur.major, cur.minor, newest);
            path.push(cur.clone());
        }
        cur = if cur.minor + 1 == to.minor {
            to.clone()
        } else {
            let m = cur.minor + 1;
            Version::new(cur.major, m, newest_patch(cur.major, m).unwrap_or(0))
        };
        path.push(cur.clone());
    }
    if cur != *to {
        path.push(to.clone());
    }
    Ok(path)
}

/// Kubernetes versions to pass through: one minor at a time (a `x` patch for the ones between).
pub fn k8s_path(from: &Version, to: &Version) -> Result<Vec<String>, String> {
    if to < from {
        return Err(format!(
            "Kubernetes {from} -> {to} is a downgrade, which Kubernetes does not support\n  help: \
             restore a backup taken before the upgrade (`hakube restore`)"
        ));
    }
    if to.major != from.major {
        return Err(format!(
            "Kubernetes {from} -> {to} changes the major version"
        ));
    }
    let mut path: Vec<String> = (from.minor + 1..to.minor)
        .map(|m| format!("v{}.{m}.x (its newest patch)", to.major))
        .collect();
    if from != to {
        path.push(format!("v{to}"));
    }
    Ok(path)
}

/// The kubelet skew rule: never newer than the API server, at most 3 minors older (2 when the
/// API server is older than 1.25).
pub fn kubelet_skew_ok(api: &Version, kubelet: &Version) -> Result<(), String> {
    let max = if api.minor < 25 { 2 } else { 3 };
    if kubelet > api {
        return Err(format!(
            "a kubelet at {kubelet} would be newer than the API server at {api}"
        ));
    }
    if api.minor > kubelet.minor + max {
        return Err(format!(
            "a kubelet at {kubelet} would be {} minors behind the API server at {api} (at most {max})",
            api.minor - kubelet.minor
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootstrap {
    Lab,
    Kubeadm,
}

/// What runs now and what is wanted.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Control planes, load balancers and workers in spec order.
    pub control_planes: Vec<String>,
    pub load_balancers: Vec<String>,
    pub workers: Vec<String>,
    /// etcd versions by member host (hakube-managed etcd only).
    pub etcd_now: BTreeMap<String, Version>,
    pub etcd_leader: Option<String>,
    pub etcd_to: Option<Version>,
    pub vip_holder: Option<String>,
    /// Load balancers whose pinned packages differ: host -> `name=version`.
    pub lb_packages: BTreeMap<String, Vec<String>>,
    /// Restart every load balancer even with nothing to install (`--restart-lbs`).
    pub lb_restart: bool,
    /// API server versions by control plane; kubelet versions by host.
    pub api_now: BTreeMap<String, Version>,
    pub kubelet_now: BTreeMap<String, Version>,
    pub k8s_to: Option<Version>,
    pub bootstrap: Option<Bootstrap>,
    pub max_unavailable: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Step {
    /// Switch the member's link to `to`, restart it drained, check health and its version.
    Etcd {
        host: String,
        from: String,
        to: String,
        leader: bool,
    },
    /// Move the VIP away if held, install pinned packages, restart HAProxy and keepalived.
    LoadBalancer {
        host: String,
        packages: Vec<String>,
        vip_holder: bool,
    },
    /// The lab API server restarted drained with the new version string.
    LabApiServer {
        host: String,
        from: String,
        to: String,
    },
    /// drain, `kubeadm upgrade apply` (first) or `node`, packages, kubelet restart, uncordon,
    /// /readyz.
    KubeadmControlPlane {
        host: String,
        first: bool,
        to: String,
    },
    /// Workers of one batch: drain, `kubeadm upgrade node`, packages, kubelet, uncordon.
    Workers { hosts: Vec<String>, to: String },
}

impl Step {
    /// Stable key for the progress file: the step and its target, so a new target starts over.
    pub fn key(&self) -> String {
        match self {
            Step::Etcd { host, to, .. } => format!("etcd/{host}@{to}"),
            Step::LoadBalancer { host, packages, .. } => {
                format!("lb/{host}@{}", packages.join(","))
            }
            Step::LabApiServer { host, to, .. } => format!("lab-apiserver/{host}@{to}"),
            Step::KubeadmControlPlane { host, to, .. } => format!("kubeadm/{host}@{to}"),
            Step::Workers { hosts, to } => format!("workers/{}@{to}", hosts.join(",")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Step::Etcd {
                host,
                from,
                to,
                leader,
            } => format!(
                "etcd {host}: {from} -> {to}{}",
                if *leader { " (leader, last)" } else { "" }
            ),
            Step::LoadBalancer {
                host,
                packages,
                vip_holder,
            } => format!(
                "load balancer {host}: {}{}",
                if packages.is_empty() {
                    "rolling restart of haproxy and keepalived".to_string()
                } else {
                    format!("install {} and restart", packages.join(" "))
                },
                if *vip_holder {
                    " (VIP holder, last: the VIP moves away first)"
                } else {
                    ""
                }
            ),
            Step::LabApiServer { host, from, to } => {
                format!("lab API server {host}: {from} -> {to}")
            }
            Step::KubeadmControlPlane { host, first, to } => format!(
                "control plane {host}: kubeadm upgrade {} {to}",
                if *first { "apply" } else { "node" }
            ),
            Step::Workers { hosts, to } => {
                format!(
                    "workers {}: kubeadm upgrade node, kubelet {to}",
                    hosts.join(", ")
                )
            }
        }
    }
}

/// The steps in order, or why not (with the path to take).
pub fn plan(i: &Input) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut refusals = Vec::new();
    if let Some(to) = &i.etcd_to {
        let mut todo: Vec<(&String, &Version)> = Vec::new();
        for h in &i.control_planes {
            let Some(from) = i.etcd_now.get(h) else {
                continue;
            };
            match etcd_path(from, to) {
                Ok(p) if p.is_empty() => {}
                Ok(p) if p.len() == 1 => todo.push((h, from)),
                Ok(p) => refusals.push(format!(
                    "etcd on {h} runs {from}; {to} is not one supported step away.\n  help: go \
                     {from} -> {}, one `hakube upgrade` per step (set spec.etcd.version to each \
                     in turn)",
                    p.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                )),
                Err(e) => refusals.push(format!("{h}: {e}")),
            }
        }
        // Leader last: it then moves once, to a member already on the new version.
        todo.sort_by_key(|(h, _)| i.etcd_leader.as_ref() == Some(*h));
        for (h, from) in todo {
            steps.push(Step::Etcd {
                host: h.clone(),
                from: from.to_string(),
                to: to.to_string(),
                leader: i.etcd_leader.as_ref() == Some(h),
            });
        }
    }
    let mut lbs: Vec<&String> = i
        .load_balancers
        .iter()
        .filter(|h| i.lb_restart || i.lb_packages.get(*h).is_some_and(|p| !p.is_empty()))
        .collect();
    lbs.sort_by_key(|h| i.vip_holder.as_ref() == Some(*h));
    for h in lbs {
        steps.push(Step::LoadBalancer {
            host: h.clone(),
            packages: i.lb_packages.get(h).cloned().unwrap_or_default(),
            vip_holder: i.vip_holder.as_ref() == Some(h),
        });
    }
    if let (Some(to), Some(b)) = (&i.k8s_to, i.bootstrap) {
        let mut first_done = false;
        let mut todo = Vec::new();
        for h in &i.control_planes {
            let Some(from) = i.api_now.get(h) else {
                refusals.push(format!(
                    "{h}: its API server version is unknown, so no skew can be checked\n  help: \
                     start it (`hakube status` shows why it does not answer) and run again"
                ));
                continue;
            };
            if from == to {
                first_done = true;
                continue;
            }
            match k8s_path(from, to) {
                Ok(p) if p.len() == 1 => todo.push((h, from)),
                Ok(p) => refusals.push(format!(
                    "the API server on {h} runs v{from}; Kubernetes goes one minor at a time.\n  \
                     help: go v{from} -> {}, one `hakube upgrade` per minor (set \
                     spec.kubernetes.version to each in turn)",
                    p.join(" -> ")
                )),
                Err(e) => refusals.push(format!("{h}: {e}")),
            }
        }
        for (h, k) in &i.kubelet_now {
            if let Err(e) = kubelet_skew_ok(to, k) {
                refusals.push(format!(
                    "{h}: {e}\n  help: upgrade the kubelets in smaller steps first"
                ));
            }
        }
        for (h, from) in todo {
            steps.push(match b {
                Bootstrap::Lab => Step::LabApiServer {
                    host: h.clone(),
                    from: format!("v{from}"),
                    to: format!("v{to}"),
                },
                Bootstrap::Kubeadm => {
                    let first = !first_done;
                    first_done = true;
                    Step::KubeadmControlPlane {
                        host: h.clone(),
                        first,
                        to: format!("v{to}"),
                    }
                }
            });
        }
        if b == Bootstrap::Kubeadm {
            let behind: Vec<String> = i
                .workers
                .iter()
                .filter(|w| i.kubelet_now.get(*w) != Some(to))
                .cloned()
                .collect();
            for batch in behind.chunks(i.max_unavailable.max(1)) {
                steps.push(Step::Workers {
                    hosts: batch.to_vec(),
                    to: format!("v{to}"),
                });
            }
        }
    }
    if refusals.is_empty() {
        Ok(steps)
    } else {
        Err(refusals.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn etcd_patch_steps_within_a_minor() {
        assert_eq!(
            etcd_path(&v("3.5.0"), &v("3.5.1")).unwrap(),
            vec![v("3.5.1")]
        );
        assert_eq!(
            etcd_path(&v("3.5.0"), &v("3.5.26")).unwrap(),
            vec![v("3.5.26")]
        );
        assert!(etcd_path(&v("3.5.1"), &v("3.5.1")).unwrap().is_empty());
    }

    #[test]
    fn etcd_next_minor_only_from_the_newest_patch() {
        assert_eq!(
            etcd_path(&v("3.5.26"), &v("3.6.0")).unwrap(),
            vec![v("3.6.0")]
        );
        assert_eq!(
            etcd_path(&v("3.5.0"), &v("3.6.1")).unwrap(),
            vec![v("3.5.26"), v("3.6.1")]
        );
        assert_eq!(
            etcd_path(&v("3.4.10"), &v("3.6.0")).unwrap(),
            vec![v("3.4.37"), v("3.5.26"), v("3.6.0")]
        );
    }

    #[test]
    fn etcd_downgrades_and_majors_and_unknown_minors_are_refused() {
        assert!(
            etcd_path(&v("3.5.1"), &v("3.5.0"))
                .unwrap_err()
                .contains("downgrade")
        );
        assert!(
            etcd_path(&v("3.5.1"), &v("4.0.0"))
                .unwrap_err()
                .contains("major")
        );
        assert!(
            etcd_path(&v("3.3.1"), &v("3.4.0"))
                .unwrap_err()
                .contains("3.3 patch")
        );
    }

    #[test]
    fn kubernetes_one_minor_at_a_time() {
        assert_eq!(
            k8s_path(&v("1.36.2"), &v("1.37.0")).unwrap(),
            vec!["v1.37.0"]
        );
        assert_eq!(
            k8s_path(&v("1.36.0"), &v("1.36.3")).unwrap(),
            vec!["v1.36.3"]
        );
        assert_eq!(
            k8s_path(&v("1.34.1"), &v("1.37.0")).unwrap(),
            vec![
                "v1.35.x (its newest patch)",
                "v1.36.x (its newest patch)",
                "v1.37.0"
            ]
        );
        assert!(k8s_path(&v("1.37.0"), &v("1.36.0")).is_err());
    }

    #[test]
    fn kubelet_skew() {
        assert!(kubelet_skew_ok(&v("1.37.0"), &v("1.34.5")).is_ok());
        assert!(
            kubelet_skew_ok(&v("1.37.0"), &v("1.33.5"))
                .unwrap_err()
                .contains("4 minors")
        );
        assert!(
            kubelet_skew_ok(&v("1.37.0"), &v("1.37.1"))
                .unwrap_err()
                .contains("newer")
        );
        // Before 1.25 the window was 2.
        assert!(kubelet_skew_ok(&v("1.24.0"), &v("1.21.0")).is_err());
        assert!(kubelet_skew_ok(&v("1.24.0"), &v("1.22.0")).is_ok());
    }

    fn lab() -> Input {
        let cps: Vec<String> = ["m1", "m2", "m3"].map(String::from).to_vec();
        Input {
            control_planes: cps.clone(),
            load_balancers: vec!["lb1".into(), "lb2".into()],
            etcd_now: cps.iter().map(|h| (h.clone(), v("3.5.0"))).collect(),
            etcd_leader: Some("m1".into()),
            etcd_to: Some(v("3.5.1")),
            vip_holder: Some("lb1".into()),
            lb_restart: true,
            api_now: cps.iter().map(|h| (h.clone(), v("1.36.0"))).collect(),
            k8s_to: Some(v("1.37.0")),
            bootstrap: Some(Bootstrap::Lab),
            max_unavailable: 1,
            ..Default::default()
        }
    }

    fn keys(s: &[Step]) -> Vec<String> {
        s.iter().map(|s| s.key()).collect()
    }

    #[test]
    fn leader_last_vip_holder_last_then_api_servers() {
        let s = plan(&lab()).unwrap();
        assert_eq!(
            keys(&s),
            vec![
                "etcd/m2@3.5.1",
                "etcd/m3@3.5.1",
                "etcd/m1@3.5.1",
                "lb/lb2@",
                "lb/lb1@",
                "lab-apiserver/m1@v1.37.0",
                "lab-apiserver/m2@v1.37.0",
                "lab-apiserver/m3@v1.37.0",
            ]
        );
        assert!(matches!(&s[2], Step::Etcd { leader: true, .. }));
        assert!(matches!(
            &s[4],
            Step::LoadBalancer {
                vip_holder: true,
                ..
            }
        ));
    }

    #[test]
    fn a_resumed_plan_skips_what_is_done() {
        let mut i = lab();
        i.etcd_now.insert("m2".into(), v("3.5.1"));
        i.api_now.insert("m1".into(), v("1.37.0"));
        i.lb_restart = false;
        assert_eq!(
            keys(&plan(&i).unwrap()),
            vec![
                "etcd/m3@3.5.1",
                "etcd/m1@3.5.1",
                "lab-apiserver/m2@v1.37.0",
                "lab-apiserver/m3@v1.37.0",
            ]
        );
    }

    #[test]
    fn refusals_name_the_path() {
        let mut i = lab();
        i.etcd_to = Some(v("3.6.0"));
        let e = plan(&i).unwrap_err();
        assert!(e.contains("3.5.0 -> 3.5.26 -> 3.6.0"), "{e}");
        let mut i = lab();
        i.k8s_to = Some(v("1.38.0"));
        let e = plan(&i).unwrap_err();
        assert!(
            e.contains("v1.36.0 -> v1.37.x (its newest patch) -> v1.38.0"),
            "{e}"
        );
        let mut i = lab();
        i.api_now.remove("m3");
        assert!(
            plan(&i)
                .unwrap_err()
                .contains("m3: its API server version is unknown")
        );
    }

    #[test]
    fn kubeadm_first_control_plane_applies_workers_in_batches() {
        let mut i = lab();
        i.bootstrap = Some(Bootstrap::Kubeadm);
        i.etcd_to = None;
        i.lb_restart = false;
        i.workers = ["w1", "w2", "w3"].map(String::from).to_vec();
        i.kubelet_now = i
            .workers
            .iter()
            .chain(&i.control_planes)
            .map(|h| (h.clone(), v("1.36.0")))
            .collect();
        i.max_unavailable = 2;
        let s = plan(&i).unwrap();
        assert_eq!(
            keys(&s),
            vec![
                "kubeadm/m1@v1.37.0",
                "kubeadm/m2@v1.37.0",
                "kubeadm/m3@v1.37.0",
                "workers/w1,w2@v1.37.0",
                "workers/w3@v1.37.0",
            ]
        );
        assert!(matches!(
            &s[0],
            Step::KubeadmControlPlane { first: true, .. }
        ));
        assert!(matches!(
            &s[1],
            Step::KubeadmControlPlane { first: false, .. }
        ));
        // Resumed after the first control plane: nobody runs `upgrade apply` again.
        i.api_now.insert("m1".into(), v("1.37.0"));
        let s = plan(&i).unwrap();
        assert!(matches!(
            &s[0],
            Step::KubeadmControlPlane { first: false, .. }
        ));
        // A kubelet 4 minors behind the target is refused.
        i.kubelet_now.insert("w1".into(), v("1.33.0"));
        assert!(plan(&i).unwrap_err().contains("w1: a kubelet at 1.33.0"));
    }
}
