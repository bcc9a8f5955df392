//! `spec.loadBalancer`: the VIP, VRRP, HAProxy's health check, stats, metrics and ingress.

use super::field::{self, did_you_mean};
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

#[allow(clippy::too_many_arguments)]
pub(super) fn load_balancer(
    l: &model::LoadBalancer,
    hosts: &[Host],
    lbs: &[&Host],
    networks: Option<&Networks>,
    base_dir: &Path,
    cluster: &str,
    d: &mut Diagnostics,
) -> Option<LoadBalancer> {
    let vip = match l.vip.trim().parse::<IpAddr>() {
        Ok(v) => Some(v),
        Err(_) => {
            d.error(
                "spec.loadBalancer.vip",
                format!("{:?} is not an IP address", l.vip),
                "pick a free address in the management network, for example 10.1.1.100",
            );
            None
        }
    };
    if let Some(v) = vip {
        if let Some(n) = networks
            && n.management.addr().is_ipv4() == v.is_ipv4()
            && !n.management.contains(&v)
        {
            d.error(
                "spec.loadBalancer.vip",
                format!(
                    "the VIP {v} is outside the management network {}",
                    n.management
                ),
                "the VIP must be on the LBs' subnet so that gratuitous ARP can move it",
            );
        }
        if let Some(n) = networks
            && n.management.contains(&v)
            && (v == n.management.network() || v == n.management.broadcast())
        {
            d.error(
                "spec.loadBalancer.vip",
                format!(
                    "the VIP {v} is the network or broadcast address of {}",
                    n.management
                ),
                "pick a host address",
            );
        }
        if let Some(h) = hosts.iter().find(|h| h.address == v) {
            d.error(
                "spec.loadBalancer.vip",
                format!("the VIP {v} is also the address of host {}", h.name),
                "the VIP must be an address no host owns",
            );
        }
    }
    let co_located = lbs.iter().any(|h| h.roles.control_plane);
    let api_port = match l.api_port {
        Some(p) => p,
        None if co_located => {
            d.info(
                "spec.loadBalancer.apiPort",
                "a load balancer shares a host with a control plane, so HAProxy serves the API on 8443",
            );
            8443
        }
        None => 6443,
    };
    let vrrp = vrrp(&l.vrrp, lbs, d);
    let health_check = health_check(&l.health_check, d);
    let st = &l.stats;
    let stats_user = st.user.clone().unwrap_or_else(|| "admin".into());
    let password_file = match &st.password_file {
        Some(p) => base_dir.join(p),
        None => base_dir
            .join(".hakube")
            .join(cluster)
            .join("secrets")
            .join("haproxy-stats.password"),
    };
    let ingress = l.ingress.as_ref().map(|i| Ingress {
        http_port: i.http_port.unwrap_or(80),
        https_port: i.https_port.unwrap_or(443),
        http_node_port: i.http_node_port.unwrap_or(30080),
        https_node_port: i.https_node_port.unwrap_or(30443),
    });
    Some(LoadBalancer {
        vip: vip?,
        api_port,
        vrrp: vrrp?,
        health_check: health_check?,
        stats: Stats {
            enabled: st.enabled.unwrap_or(true),
            port: st.port.unwrap_or(9000),
            user: stats_user,
            password_file,
        },
        metrics: Metrics {
            enabled: l.metrics.enabled.unwrap_or(true),
            port: l.metrics.port.unwrap_or(8405),
        },
        ingress,
        packages: packages(&l.packages, d),
    })
}

/// `spec.loadBalancer.vrrp`: keepalived's router id, version, advert interval and priorities.
fn vrrp(v: &model::Vrrp, lbs: &[&Host], d: &mut Diagnostics) -> Option<Vrrp> {
    let router_id = field::in_range(
        d,
        "spec.loadBalancer.vrrp.routerId",
        "VRRP router id",
        v.router_id.unwrap_or(51),
        1..=255,
        "pick a router id in 1-255 that no other VRRP group on this network uses",
    )
    .map(|r| r as u8);
    let version = match v.version.unwrap_or(3) {
        x @ (2 | 3) => x,
        x => {
            d.error(
                "spec.loadBalancer.vrrp.version",
                format!("VRRP version {x} does not exist"),
                "use 3 (or 2)",
            );
            3
        }
    };
    let default_advert = if version == 3 { "200ms" } else { "1s" };
    let advert = field::duration(
        d,
        "spec.loadBalancer.vrrp.advertInterval",
        v.advert_interval.as_deref(),
        default_advert,
        "200ms or 1s",
    );
    if let Some(a) = advert {
        let ms = a.as_millis();
        if version == 2 && (ms % 1000 != 0 || !(1000..=255_000).contains(&ms)) {
            d.error(
                "spec.loadBalancer.vrrp.advertInterval",
                format!(
                    "VRRPv2 adverts are whole seconds from 1 to 255, not {}",
                    humantime::format_duration(a)
                ),
                "use a whole number of seconds, or `version: 3` for sub-second adverts",
            );
        } else if version == 3 && (ms % 10 != 0 || !(10..=40_950).contains(&ms)) {
            d.error(
                "spec.loadBalancer.vrrp.advertInterval",
                format!(
                    "VRRPv3 adverts go from 10ms to 40.95s in steps of 10ms, not {}",
                    humantime::format_duration(a)
                ),
                "for example 100ms or 200ms",
            );
        }
    }
    if let Some(p) = &v.auth_pass {
        if p.chars().count() > 8 {
            d.error(
                "spec.loadBalancer.vrrp.authPass",
                format!("authPass has {} characters; keepalived silently uses only the first 8", p.chars().count()),
                "use at most 8 characters. PASS auth is clear text anyway: rely on unicast peers and a firewall for VRRP (protocol 112)",
            );
        }
        if version == 3 {
            d.error(
                "spec.loadBalancer.vrrp.authPass",
                "VRRPv3 has no authentication; keepalived ignores authPass",
                "remove authPass (hakube uses unicast peers; firewall protocol 112 to the LBs), or set version: 2",
            );
        } else {
            d.warn(
                "spec.loadBalancer.vrrp.authPass",
                "VRRPv2 PASS authentication travels in clear text and protects nothing",
                "keep unicast peers and firewall VRRP (protocol 112) to the LB addresses",
            );
        }
    }
    let mut priorities = BTreeMap::new();
    if v.priorities.is_empty() {
        for (h, p) in lbs
            .iter()
            .zip(crate::spec::vrrp::default_priorities(lbs.len()))
        {
            priorities.insert(h.name.clone(), p);
        }
    } else {
        let mut seen: HashMap<i64, &str> = HashMap::new();
        let names: Vec<&str> = lbs.iter().map(|h| h.name.as_str()).collect();
        let is_lb: HashSet<&str> = names.iter().copied().collect();
        for (name, p) in &v.priorities {
            let path = format!("spec.loadBalancer.vrrp.priorities.{name}");
            if !is_lb.contains(name.as_str()) {
                let help = match did_you_mean(name, &names) {
                    Some(s) => format!("did you mean {s}? Load balancers: {}", names.join(", ")),
                    None => format!(
                        "priorities are keyed by load-balancer host name: {}",
                        names.join(", ")
                    ),
                };
                d.error(
                    path.clone(),
                    format!("{name} is not a loadbalancer host"),
                    help,
                );
            }
            if let Some(p) = field::in_range(
                d,
                path.clone(),
                "priority",
                *p,
                1..=254,
                "255 is reserved for the address owner; use 1-254",
            ) {
                priorities.insert(name.clone(), p as u8);
            }
            if let Some(other) = seen.insert(*p, name) {
                d.error(
                    path,
                    format!("priority {p} is also given to {other}"),
                    "give every load balancer its own priority, or the VIP owner is decided by address order",
                );
            }
        }
        for h in lbs {
            if !v.priorities.contains_key(&h.name) {
                d.error(
                    "spec.loadBalancer.vrrp.priorities",
                    format!("no priority for load balancer {}", h.name),
                    "list every load balancer, or none to get 254, 244, 234, ...",
                );
            }
        }
    }
    crate::spec::vrrp::check_floor(&v.priorities, lbs.len(), d);
    let track_weight = crate::spec::vrrp::track_weight(priorities.values());
    Some(Vrrp {
        router_id: router_id?,
        version,
        advert_interval: advert?,
        auth_pass: v.auth_pass.clone(),
        priorities,
        track_weight,
        script_user: v
            .script_user
            .clone()
            .unwrap_or_else(|| "keepalived_script".into()),
        track_port: v.track_port.unwrap_or(8406),
        preempt: v.preempt.unwrap_or(true),
    })
}

/// `spec.loadBalancer.healthCheck`: how HAProxy checks each API server.
fn health_check(hc: &model::HealthCheck, d: &mut Diagnostics) -> Option<HealthCheck> {
    let kind = field::one_of(
        d,
        "spec.loadBalancer.healthCheck.type",
        hc.kind.as_deref().unwrap_or("https"),
        &[("https", CheckKind::Https), ("tcp", CheckKind::Tcp)],
        "check type",
        "use https or tcp",
        false,
    )
    .unwrap_or(CheckKind::Https);
    if kind == CheckKind::Tcp {
        d.warn(
            "spec.loadBalancer.healthCheck.type",
            "a TCP check passes while the API server is up but not ready (etcd lost, still starting)",
            "use type: https, which checks GET /readyz",
        );
    }
    let dur = |d: &mut Diagnostics, field: &str, raw: &Option<String>, def: &str| {
        let path = format!("spec.loadBalancer.healthCheck.{field}");
        field::positive_duration(d, &path, raw.as_deref(), def)
    };
    // A check connects within min(connectTimeout, interval) (HAProxy's rule once `timeout
    // check` is set), so with 400ms and a 200ms connect a silent API server is out within
    // 1.0 s (fall 2), against 2.6-3.3 s with 1s (docs/drills.md). Connecting is the kernel's
    // SYN-ACK, fast on a loaded host too; the answer may take up to `timeout`: a slow /readyz
    // (during an etcd election, or a loaded server) must not eject a live API server. The same
    // connect timeout sends a client's connection to another API server after 200ms.
    let interval = dur(d, "interval", &hc.interval, "400ms");
    let timeout = dur(d, "timeout", &hc.timeout, "2s");
    let connect_timeout = dur(d, "connectTimeout", &hc.connect_timeout, "200ms");
    let fall = hc.fall.unwrap_or(2);
    let rise = hc.rise.unwrap_or(2);
    for (f, x) in [("fall", fall), ("rise", rise)] {
        if x == 0 {
            d.error(
                format!("spec.loadBalancer.healthCheck.{f}"),
                format!("{f} must be at least 1"),
                "2 is a good value",
            );
        }
    }
    if let Some(i) = interval
        && i > Duration::from_secs(5)
    {
        d.warn(
            "spec.loadBalancer.healthCheck.interval",
            format!(
                "a dead API server stays in rotation for up to {} (interval x fall)",
                humantime::format_duration(i.saturating_mul(fall.max(1)))
            ),
            "use the default 400ms, or at most 2s",
        );
    }
    Some(HealthCheck {
        kind,
        interval: interval?,
        fall,
        rise,
        timeout: timeout?,
        connect_timeout: connect_timeout?,
    })
}

/// Pinned package versions, as apt spells them (they go into `apt-get install NAME=VERSION`).
pub(super) fn packages(p: &model::Packages, d: &mut Diagnostics) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, v) in [("haproxy", &p.haproxy), ("keepalived", &p.keepalived)] {
        let Some(v) = v else { continue };
        let ok = !v.is_empty()
            && v.chars().next().is_some_and(|c| c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
        if ok {
            out.insert(name.to_string(), v.clone());
        } else {
            d.error(
                format!("spec.loadBalancer.packages.{name}"),
                format!("{v:?} is not a Debian package version"),
                format!(
                    "write it as `apt-cache policy {name}` lists it, for example 2.6.12-1+deb12u4"
                ),
            );
        }
    }
    out
}
