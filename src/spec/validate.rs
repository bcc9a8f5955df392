//! Turns the raw document into a [`Cluster`], collecting every problem on the way.

use super::cluster::*;
use super::diag::Diagnostics;
use super::model::{self, Document};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// Oldest Kubernetes minor hakube renders kubeadm configs for.
pub const OLDEST_MINOR: u64 = 29;
/// Newest Kubernetes minor hakube knows (late 2026).
pub const NEWEST_MINOR: u64 = 37;
/// Oldest minor still maintained upstream.
pub const OLDEST_MAINTAINED_MINOR: u64 = 35;
pub const DEFAULT_K8S_VERSION: &str = "v1.37.0";

const ROLE_NAMES: [&str; 3] = ["loadbalancer", "control-plane", "worker"];

/// Validate `doc`. Returns the cluster when there are no errors; diagnostics always.
pub fn validate(doc: &Document, base_dir: &Path) -> (Option<Cluster>, Diagnostics) {
    let mut d = Diagnostics::default();
    let c = build(doc, base_dir, &mut d);
    if d.has_errors() { (None, d) } else { (c, d) }
}

fn build(doc: &Document, base_dir: &Path, d: &mut Diagnostics) -> Option<Cluster> {
    if doc.api_version != model::API_VERSION {
        d.error(
            "apiVersion",
            format!("unsupported apiVersion {:?}", doc.api_version),
            format!("use `apiVersion: {}`", model::API_VERSION),
        );
    }
    if doc.kind != model::KIND {
        d.error(
            "kind",
            format!("unsupported kind {:?}", doc.kind),
            format!("use `kind: {}`", model::KIND),
        );
    }
    let name = doc.metadata.name.clone();
    if !is_dns_label(&name) {
        d.error(
            "metadata.name",
            format!("{name:?} is not a valid cluster name"),
            "use lowercase letters, digits and '-', at most 63 characters, starting with a letter",
        );
    }
    let s = &doc.spec;

    let networks = networks(&s.networks, d);
    let hosts = hosts(s, networks.as_ref().map(|n| n.management), d);
    check_overlaps(&s.networks, d);
    super::family::refuse_ipv6(s, d);

    let lbs: Vec<&Host> = hosts.iter().filter(|h| h.roles.loadbalancer).collect();
    let cps: Vec<&Host> = hosts.iter().filter(|h| h.roles.control_plane).collect();
    check_counts(&hosts, &lbs, &cps, d);

    let kubernetes_pre = kubernetes_version(&s.kubernetes, d);
    let etcd = etcd(&s.etcd, base_dir, d);
    let lb = load_balancer(
        &s.load_balancer,
        &hosts,
        &lbs,
        networks.as_ref(),
        base_dir,
        &name,
        d,
    );
    let k8s = kubernetes(&s.kubernetes, kubernetes_pre, &name, lb.as_ref(), &cps, d);

    if let (Some(lb), Some(k)) = (&lb, &k8s) {
        super::ports::check(s, &hosts, lb, k, etcd.as_ref(), d);
    }
    super::limits::check(lb.as_ref(), etcd.as_ref(), k8s.as_ref(), d);
    super::grammar::check_document(doc, d);
    let pki = pki(&s.pki, d);

    Some(Cluster {
        name,
        base_dir: base_dir.to_path_buf(),
        hosts,
        networks: networks?,
        lb: lb?,
        etcd: etcd?,
        kubernetes: k8s?,
        pki: pki?,
    })
}

/// Leaf certificates last between a minute (tests) and the CAs' ten years.
fn pki(p: &model::Pki, d: &mut Diagnostics) -> Option<Pki> {
    const PATH: &str = "spec.pki.certificateValidity";
    let raw = p.certificate_validity.as_deref().unwrap_or("365d");
    match parse_duration(raw) {
        Ok(v) if v < Duration::from_secs(60) || v > Duration::from_secs(3650 * 86400) => {
            d.error(
                PATH,
                format!("{raw} is outside 1m-3650d"),
                "leaf certificates must outlive a renewal (at least 1m) and not the CAs (10 years); 365d is usual",
            );
            None
        }
        Ok(v) => {
            if v < Duration::from_secs(7 * 86400) {
                d.warn(
                    PATH,
                    format!("certificates last only {raw}"),
                    "fine for tests; in production renew with `hakube certs renew` well before they expire, or use 365d",
                );
            }
            Some(Pki {
                certificate_validity: v,
            })
        }
        Err(err) => {
            d.error(
                PATH,
                format!("not a duration: {err}"),
                "write it like 365d or 10m",
            );
            None
        }
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(crate) fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// Parse `2GiB`, `512MiB`, `8589934592` and friends.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        u => return Err(format!("unknown unit {u:?}; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn cidr(d: &mut Diagnostics, path: &str, raw: &str) -> Option<IpNet> {
    match raw.trim().parse::<IpNet>() {
        Ok(n) if n.trunc() != n => {
            d.error(
                path,
                format!("{raw} has host bits set"),
                format!("did you mean {}?", n.trunc()),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            d.error(
                path,
                format!("{raw:?} is not a CIDR"),
                "write a network as address/prefix, for example 10.1.1.0/24",
            );
            None
        }
    }
}

fn networks(n: &model::Networks, d: &mut Diagnostics) -> Option<Networks> {
    let management = cidr(d, "spec.networks.management", &n.management);
    let pods = cidr(
        d,
        "spec.networks.pods",
        n.pods.as_deref().unwrap_or("10.244.0.0/16"),
    );
    let services = cidr(
        d,
        "spec.networks.services",
        n.services.as_deref().unwrap_or("10.96.0.0/12"),
    );
    let storage = match &n.storage {
        Some(s) => Some(cidr(d, "spec.networks.storage", s)?),
        None => None,
    };
    let dns_domain = n
        .dns_domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    if !is_dns_name(&dns_domain) {
        d.error(
            "spec.networks.dnsDomain",
            format!("{dns_domain:?} is not a DNS domain"),
            "use a name such as cluster.local",
        );
    }
    Some(Networks {
        management: management?,
        pods: pods?,
        services: services?,
        storage,
        dns_domain,
    })
}

fn check_overlaps(n: &model::Networks, d: &mut Diagnostics) {
    let list: Vec<(&str, Option<IpNet>)> = vec![
        ("management", n.management.parse().ok()),
        (
            "pods",
            n.pods.as_deref().unwrap_or("10.244.0.0/16").parse().ok(),
        ),
        (
            "services",
            n.services.as_deref().unwrap_or("10.96.0.0/12").parse().ok(),
        ),
        ("storage", n.storage.as_deref().and_then(|s| s.parse().ok())),
    ];
    for i in 0..list.len() {
        for j in i + 1..list.len() {
            if let ((a, Some(na)), (b, Some(nb))) = (list[i], list[j])
                && (na.contains(&nb.network()) || nb.contains(&na.network()))
            {
                d.error(
                    format!("spec.networks.{b}"),
                    format!("the {b} network {nb} overlaps the {a} network {na}"),
                    "give every network its own range; overlapping ranges make routing ambiguous",
                );
            }
        }
    }
}

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

fn hosts(s: &model::Spec, mgmt: Option<IpNet>, d: &mut Diagnostics) -> Vec<Host> {
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

fn check_counts(hosts: &[Host], lbs: &[&Host], cps: &[&Host], d: &mut Diagnostics) {
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

#[allow(clippy::too_many_arguments)]
fn load_balancer(
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
    let v = &l.vrrp;
    let router_id = match v.router_id.unwrap_or(51) {
        r @ 1..=255 => Some(r as u8),
        r => {
            d.error(
                "spec.loadBalancer.vrrp.routerId",
                format!("VRRP router id {r} is outside 1-255"),
                "pick a router id in 1-255 that no other VRRP group on this network uses",
            );
            None
        }
    };
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
    let advert = match parse_duration(v.advert_interval.as_deref().unwrap_or(default_advert)) {
        Ok(a) => {
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
            Some(a)
        }
        Err(e) => {
            d.error(
                "spec.loadBalancer.vrrp.advertInterval",
                format!("not a duration: {e}"),
                "write it like 200ms or 1s",
            );
            None
        }
    };
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
        for (h, p) in lbs.iter().zip(super::vrrp::default_priorities(lbs.len())) {
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
            if !(1..=254).contains(p) {
                d.error(
                    path.clone(),
                    format!("priority {p} is outside 1-254"),
                    "255 is reserved for the address owner; use 1-254",
                );
            } else {
                priorities.insert(name.clone(), *p as u8);
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
                    "list every load balancer, or none to get 110, 100, 90, ...",
                );
            }
        }
    }
    super::vrrp::check_floor(&v.priorities, lbs.len(), d);
    let track_weight = super::vrrp::track_weight(priorities.values());
    let hc = &l.health_check;
    let kind = match hc.kind.as_deref().unwrap_or("https") {
        "https" => CheckKind::Https,
        "tcp" => {
            d.warn(
                "spec.loadBalancer.healthCheck.type",
                "a TCP check passes while the API server is up but not ready (etcd lost, still starting)",
                "use type: https, which checks GET /readyz",
            );
            CheckKind::Tcp
        }
        other => {
            d.error(
                "spec.loadBalancer.healthCheck.type",
                format!("unknown check type {other:?}"),
                "use https or tcp",
            );
            CheckKind::Https
        }
    };
    let dur =
        |d: &mut Diagnostics, field: &str, raw: &Option<String>, def: &str| -> Option<Duration> {
            match parse_duration(raw.as_deref().unwrap_or(def)) {
                Ok(x) if x.is_zero() => {
                    d.error(
                        format!("spec.loadBalancer.healthCheck.{field}"),
                        "must be greater than zero",
                        format!("for example {def}"),
                    );
                    None
                }
                Ok(x) => Some(x),
                Err(e) => {
                    d.error(
                        format!("spec.loadBalancer.healthCheck.{field}"),
                        format!("not a duration: {e}"),
                        format!("write it like {def}"),
                    );
                    None
                }
            }
        };
    // A check connects within min(connectTimeout, interval) (HAProxy's rule once `timeout
    // check` is set), so with 400ms a silent API server is out within 1.4 s (fall 2), against
    // 2.6-3.3 s with 1s (docs/drills.md). The answer may take up to `timeout`: a slow /readyz
    // (during an etcd election, or a loaded server) must not eject a live API server.
    let interval = dur(d, "interval", &hc.interval, "400ms");
    let timeout = dur(d, "timeout", &hc.timeout, "2s");
    let connect_timeout = dur(d, "connectTimeout", &hc.connect_timeout, "1s");
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
        vrrp: Vrrp {
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
        },
        health_check: HealthCheck {
            kind,
            interval: interval?,
            fall,
            rise,
            timeout: timeout?,
            connect_timeout: connect_timeout?,
        },
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

/// Pinned package versions, as apt spells them (they go into `apt-get install NAME=VERSION`).
fn packages(p: &model::Packages, d: &mut Diagnostics) -> BTreeMap<String, String> {
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

/// `spec.etcd.version` and `source`: both or neither.
fn etcd_install(
    e: &model::Etcd,
    base_dir: &Path,
    d: &mut Diagnostics,
) -> Option<Option<EtcdInstall>> {
    let (raw, src) = match (&e.version, &e.source) {
        (None, None) => return Some(None),
        (Some(_), None) => {
            d.error(
                "spec.etcd.version",
                "a pinned etcd version needs the tarball it comes from",
                "add spec.etcd.source with `path:` (a local etcd-vX.Y.Z-linux-amd64.tar.gz) or `url:`, and its `sha256:`",
            );
            return None;
        }
        (None, Some(_)) => {
            d.error(
                "spec.etcd.source",
                "an etcd source without spec.etcd.version",
                "add spec.etcd.version, for example v3.5.1",
            );
            return None;
        }
        (Some(v), Some(s)) => (v, s),
    };
    let mut ok = true;
    let version = match semver::Version::parse(raw.trim().trim_start_matches('v')) {
        Ok(v) if v.pre.is_empty() && v.build.is_empty() => Some(v),
        _ => {
            d.error(
                "spec.etcd.version",
                format!("{raw:?} is not an etcd release version"),
                "write it like v3.5.1",
            );
            None
        }
    };
    if e.binary.is_some() {
        d.error(
            "spec.etcd.binary",
            "spec.etcd.binary and spec.etcd.version exclude each other: a pinned etcd runs from /opt/hakube/etcd/current/etcd",
            "remove spec.etcd.binary, or remove version and source to run your own binary",
        );
        ok = false;
    }
    let source = match (&src.path, &src.url) {
        (Some(p), None) => Some(EtcdSource::Path(base_dir.join(p))),
        (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {
            Some(EtcdSource::Url(u.clone()))
        }
        (None, Some(u)) => {
            d.error(
                "spec.etcd.source.url",
                format!("{u:?} is not an http(s) URL"),
                "for example https://github.com/etcd-io/etcd/releases/download/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz",
            );
            None
        }
        _ => {
            d.error(
                "spec.etcd.source",
                "give exactly one of `path` and `url`",
                "path: a tarball next to the spec (air-gapped); url: where the operator machine downloads it",
            );
            None
        }
    };
    let sha = src
        .sha256
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let sha = if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(sha)
    } else {
        d.error(
            "spec.etcd.source.sha256",
            "missing or not a SHA-256 (64 hex digits)",
            "copy it from the release's SHA256SUMS, or run `sha256sum` on the tarball",
        );
        None
    };
    if !ok {
        return None;
    }
    Some(Some(EtcdInstall {
        version: version?,
        source: source?,
        sha256: sha?,
    }))
}

fn etcd(e: &model::Etcd, base_dir: &Path, d: &mut Diagnostics) -> Option<Etcd> {
    let install = etcd_install(e, base_dir, d);
    let management = match e.management.as_deref().unwrap_or("hakube") {
        "hakube" => Some(EtcdManagement::Hakube),
        "kubeadm" => Some(EtcdManagement::Kubeadm),
        other => {
            let help = match did_you_mean(other, &["hakube", "kubeadm"]) {
                Some(s) => format!("did you mean {s}?"),
                None => "use hakube (a systemd service with hakube's PKI) or kubeadm (static pods)"
                    .into(),
            };
            d.error(
                "spec.etcd.management",
                format!("unknown etcd management {other:?}"),
                help,
            );
            None
        }
    };
    let mut dur = |field: &str, raw: &Option<String>, def: &str| match parse_duration(
        raw.as_deref().unwrap_or(def),
    ) {
        Ok(x) if x.is_zero() => {
            d.error(
                format!("spec.etcd.{field}"),
                "must be greater than zero",
                format!("for example {def}"),
            );
            None
        }
        Ok(x) => Some(x),
        Err(err) => {
            d.error(
                format!("spec.etcd.{field}"),
                format!("not a duration: {err}"),
                format!("write it like {def}"),
            );
            None
        }
    };
    let hb = dur("heartbeatInterval", &e.heartbeat_interval, "100ms");
    let el = dur("electionTimeout", &e.election_timeout, "1000ms");
    if let (Some(h), Some(el)) = (hb, el)
        && el < h * 5
    {
        d.error(
            "spec.etcd.electionTimeout",
            format!(
                "election timeout {} is less than 5 x the heartbeat {}; etcd refuses to start",
                humantime::format_duration(el),
                humantime::format_duration(h)
            ),
            "keep the election timeout at about 10 x the heartbeat interval",
        );
    }
    let quota = match parse_size(e.quota_backend_bytes.as_deref().unwrap_or("2GiB")) {
        Ok(q) => {
            if q > 8 << 30 {
                d.warn(
                    "spec.etcd.quotaBackendBytes",
                    "etcd suggests at most 8GiB; larger databases make snapshots, defrags and restores slow",
                    "keep the quota at 8GiB or less",
                );
            }
            if q < 16 << 20 {
                d.warn(
                    "spec.etcd.quotaBackendBytes",
                    "a quota under 16MiB fills quickly and raises NOSPACE",
                    "use 2GiB for production",
                );
            }
            Some(q)
        }
        Err(err) => {
            d.error(
                "spec.etcd.quotaBackendBytes",
                err,
                "write it like 2GiB or 8GiB",
            );
            None
        }
    };
    Some(Etcd {
        management: management?,
        heartbeat_interval: hb?,
        election_timeout: el?,
        quota_backend_bytes: quota?,
        data_dir: e.data_dir.clone().unwrap_or_else(|| "/var/lib/etcd".into()),
        binary: match (&e.binary, &install) {
            (Some(b), _) => b.clone(),
            (None, Some(Some(_))) => crate::install::etcd::BINARY.into(),
            (None, _) => "/usr/local/bin/etcd".into(),
        },
        client_port: e.client_port.unwrap_or(2379),
        peer_port: e.peer_port.unwrap_or(2380),
        install: install?,
    })
}

fn kubernetes_version(
    k: &model::Kubernetes,
    d: &mut Diagnostics,
) -> Option<(semver::Version, KubeadmApi)> {
    let raw = k.version.as_deref().unwrap_or(DEFAULT_K8S_VERSION);
    let v = match semver::Version::parse(raw.trim().trim_start_matches('v')) {
        Ok(v) if v.pre.is_empty() && v.build.is_empty() => v,
        _ => {
            let t = raw.trim().trim_start_matches('v');
            let help = match t.split('.').collect::<Vec<_>>()[..] {
                [a, b] if a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok() => {
                    format!("give the patch release too, for example v{a}.{b}.0")
                }
                _ => format!("write it like {DEFAULT_K8S_VERSION}"),
            };
            d.error(
                "spec.kubernetes.version",
                format!("{raw:?} is not a Kubernetes release version"),
                help,
            );
            return None;
        }
    };
    if v.major == 0 || (v.major == 1 && v.minor < OLDEST_MINOR) {
        d.error(
            "spec.kubernetes.version",
            format!("Kubernetes {raw} is older than the oldest version hakube supports (1.{OLDEST_MINOR})"),
            format!("use 1.{OLDEST_MINOR} or newer (1.{OLDEST_MAINTAINED_MINOR}-1.{NEWEST_MINOR} are maintained); upgrade a running cluster one minor at a time"),
        );
        return None;
    }
    if v.major > 1 || v.minor > NEWEST_MINOR {
        d.error(
            "spec.kubernetes.version",
            format!(
                "Kubernetes {raw} is newer than the newest version hakube supports (1.{NEWEST_MINOR})"
            ),
            format!("use a 1.{NEWEST_MINOR} release (for example {DEFAULT_K8S_VERSION}) or older, or upgrade hakube"),
        );
        return None;
    }
    if v.minor < OLDEST_MAINTAINED_MINOR {
        d.warn(
            "spec.kubernetes.version",
            format!("Kubernetes 1.{} is no longer maintained upstream (1.{OLDEST_MAINTAINED_MINOR}-1.{NEWEST_MINOR} are)", v.minor),
            format!("plan an upgrade, one minor version at a time, to 1.{OLDEST_MAINTAINED_MINOR} or newer"),
        );
    }
    let api = if v.minor >= 31 {
        KubeadmApi::V1Beta4
    } else {
        KubeadmApi::V1Beta3
    };
    Some((v, api))
}

fn kubernetes(
    k: &model::Kubernetes,
    version: Option<(semver::Version, KubeadmApi)>,
    cluster: &str,
    lb: Option<&LoadBalancer>,
    cps: &[&Host],
    d: &mut Diagnostics,
) -> Option<Kubernetes> {
    let bootstrap = match k.bootstrap.as_deref().unwrap_or("kubeadm") {
        "kubeadm" => Some(Bootstrap::Kubeadm),
        "lab" => Some(Bootstrap::Lab),
        other => {
            d.error(
                "spec.kubernetes.bootstrap",
                format!("unknown bootstrap {other:?}"),
                "use kubeadm (or lab, in a hakube lab)",
            );
            None
        }
    };
    // Sets, not list scans: 100 000 SANs must stay linear.
    let mut sans: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut ips: HashSet<IpAddr> = HashSet::new();
    for (i, s) in k.cert_sans.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(a) => {
                ips.insert(a);
            }
            Err(_) if !is_dns_name(s.trim_start_matches("*.")) => d.error(
                format!("spec.kubernetes.certSANs[{i}]"),
                format!("{s:?} is neither an IP address nor a DNS name"),
                "use an address such as 10.1.1.100 or a name such as k8s-api.company.local",
            ),
            Err(_) => {}
        }
        if seen.insert(s) {
            sans.push(s.clone());
        }
    }
    let mut added = Vec::new();
    let need = lb
        .map(|lb| lb.vip)
        .into_iter()
        .chain(cps.iter().map(|h| h.address));
    for n in need {
        if ips.insert(n) {
            sans.push(n.to_string());
            added.push(n.to_string());
        }
    }
    if !added.is_empty() {
        d.info(
            "spec.kubernetes.certSANs",
            format!("added to the API server certificate SANs: {} (the VIP and every control-plane address)", added.join(", ")),
        );
    }
    for key in k.api_server_extra_args.keys() {
        let path = format!("spec.kubernetes.apiServerExtraArgs.{key}");
        match key.as_str() {
            "advertise-address" => d.error(
                path,
                "advertise-address differs per node and is set by hakube from each host's address",
                "remove it; hakube writes localAPIEndpoint.advertiseAddress for every control plane",
            ),
            "etcd-servers" | "etcd-cafile" | "etcd-certfile" | "etcd-keyfile" => d.error(
                path,
                "the etcd connection is managed by hakube from spec.etcd",
                "remove it",
            ),
            "secure-port" => d.error(path, "the API port is spec.kubernetes.apiServerPort", "set spec.kubernetes.apiServerPort instead"),
            _ => {}
        }
    }
    let mut args = k.api_server_extra_args.clone();
    if args.keys().any(|a| a.starts_with("audit-log-")) && !args.contains_key("audit-policy-file") {
        args.insert(
            "audit-policy-file".into(),
            "/etc/kubernetes/audit-policy.yaml".into(),
        );
        d.info(
            "spec.kubernetes.apiServerExtraArgs",
            "audit logging needs a policy, or kube-apiserver logs nothing: added audit-policy-file with hakube's default policy",
        );
    }
    let (version, kubeadm_api) = version?;
    Some(Kubernetes {
        version,
        kubeadm_api,
        bootstrap: bootstrap?,
        cluster_name: k
            .cluster_name
            .clone()
            .unwrap_or_else(|| cluster.to_string()),
        api_server_port: k.api_server_port.unwrap_or(6443),
        cert_sans: sans,
        api_server_extra_args: args,
        cri_socket: k
            .cri_socket
            .clone()
            .unwrap_or_else(|| "unix:///var/run/containerd/containerd.sock".into()),
    })
}

/// The closest candidate, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&input.to_lowercase(), &c.to_lowercase()),
                *c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
