//! `spec.hosts` and `spec.ssh`, and the count of each role.

use super::field::{did_you_mean, is_dns_label};
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

const ROLE_NAMES: [&str; 3] = ["loadbalancer", "control-plane", "worker"];

fn ssh(base: &model::Ssh, over: &model::Ssh) -> SshSettings {
    SshSettings {
        user: over
            .user
            .clone()
            .or(base.user.clone())
            .unwrap_or_else(|| "root".into()),
        port: over.port.or(base.port).unwrap_or(22),
        identity_file: over.identity_file.clone().or(base.identity_file.clone()),
        proxy_jump: over.proxy_jump.clone().or(base.proxy_jump.clone()),
        config_file: over.config_file.clone().or(base.config_file.clone()),
        known_hosts_file: over
            .known_hosts_file
            .clone()
            .or(base.known_hosts_file.clone()),
    }
}

pub(super) fn hosts(s: &model::Spec, mgmt: Option<IpNet>, d: &mut Diagnostics) -> Vec<Host> {
    if s.hosts.is_empty() {
        d.error(
            "spec.hosts",
            "no hosts",
            "list the load balancers, control planes and workers under spec.hosts",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if !is_dns_label(&h.name) {
            d.error(
                format!("{p}.name"),
                format!("{:?} is not a valid host name", h.name),
                "use lowercase letters, digits and '-', starting with a letter (for example master1)",
            );
        }
        if let Some(first) = names.insert(&h.name, i) {
            d.error(
                format!("{p}.name"),
                format!(
                    "duplicate host name {:?} (also spec.hosts[{first}])",
                    h.name
                ),
                "every host needs its own name",
            );
        }
        let address = match h.address.trim().parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                d.error(
                    format!("{p}.address"),
                    format!("{:?} is not an IP address", h.address),
                    "write the host's management address, for example 10.1.1.101",
                );
                None
            }
        };
        if let Some(a) = address {
            if let Some(first) = addrs.insert(a, i) {
                d.error(
                    format!("{p}.address"),
                    format!(
                        "duplicate address {a} (also spec.hosts[{first}], {})",
                        s.hosts[first].name
                    ),
                    "every host needs its own address",
                );
            }
            // An address of the other family is refused by family::refuse_ipv6.
            if let Some(m) = mgmt
                && m.addr().is_ipv4() == a.is_ipv4()
                && !m.contains(&a)
            {
                d.error(
                    format!("{p}.address"),
                    format!("{a} is outside the management network {m}"),
                    "fix the address, or widen spec.networks.management to include it",
                );
            }
        }
        let mut roles = Roles::default();
        if h.roles.is_empty() {
            d.error(
                format!("{p}.roles"),
                format!("host {} has no roles", h.name),
                "give it one or more of: loadbalancer, control-plane, worker",
            );
        }
        for (j, r) in h.roles.iter().enumerate() {
            let slot = match r.as_str() {
                "loadbalancer" => &mut roles.loadbalancer,
                "control-plane" => &mut roles.control_plane,
                "worker" => &mut roles.worker,
                other => {
                    let alias = match other {
                        "master" | "controlplane" | "control_plane" | "controller" => {
                            Some("control-plane")
                        }
                        "lb" | "load-balancer" | "haproxy" => Some("loadbalancer"),
                        "node" | "minion" => Some("worker"),
                        _ => did_you_mean(other, &ROLE_NAMES),
                    };
                    let help = match alias {
                        Some(a) => {
                            format!("did you mean `{a}`? Roles are: {}", ROLE_NAMES.join(", "))
                        }
                        None => format!("roles are: {}", ROLE_NAMES.join(", ")),
                    };
                    d.error(
                        format!("{p}.roles[{j}]"),
                        format!("unknown role {other:?}"),
                        help,
                    );
                    continue;
                }
            };
            if *slot {
                d.warn(
                    format!("{p}.roles[{j}]"),
                    format!("role {r} is listed twice"),
                    "remove the duplicate",
                );
            }
            *slot = true;
        }
        if let Some(a) = address {
            out.push(Host {
                name: h.name.clone(),
                address: a,
                roles,
                interface: h.interface.clone(),
                ssh: ssh(&s.ssh, &h.ssh),
            });
        }
    }
    out
}

pub(super) fn check_counts(hosts: &[Host], lbs: &[&Host], cps: &[&Host], d: &mut Diagnostics) {
    let _ = hosts;
    match cps.len() {
        0 => d.error(
            "spec.hosts",
            "no control-plane host",
            "give three hosts the role control-plane (etcd and the API servers run there)",
        ),
        1 => d.warn(
            "spec.hosts",
            "a single control plane is a single point of failure: losing it loses the API and etcd",
            "use three control planes to survive the loss of one",
        ),
        2 => d.error(
            "spec.hosts",
            "2 control planes are worse than 1: etcd quorum needs both, so losing either stops the cluster",
            "use 3 control planes (survives 1 loss) or 5 (survives 2)",
        ),
        n if n % 2 == 0 => d.error(
            "spec.hosts",
            format!(
                "{n} control planes: an even etcd member count survives no more losses than {} members but adds a voter",
                n - 1
            ),
            format!("use {} or {} control planes", n - 1, n + 1),
        ),
        n if n > 7 => d.warn(
            "spec.hosts",
            format!("{n} control planes: etcd gets slower with every voter beyond 7"),
            "use 3, 5 or 7 control planes",
        ),
        _ => {}
    }
    match lbs.len() {
        0 => d.error(
            "spec.hosts",
            "no loadbalancer host: nothing would hold the VIP",
            "give two hosts the role loadbalancer",
        ),
        1 => d.warn(
            "spec.hosts",
            format!(
                "a single load balancer ({}) is a single point of failure for the API endpoint",
                lbs[0].name
            ),
            "add a second host with the role loadbalancer, so keepalived can move the VIP",
        ),
        _ => {}
    }
}
