//! One port plan per host: every listener hakube renders or implies there, so that clashes are
//! found before anything runs, and so that later work (doctor, firewall rules) has one source.

use super::cluster::*;
use super::diag::Diagnostics;
use super::model;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODE_PORTS: (u16, u16) = (30000, 32767);
/// Where a user widens the node-port range (the API server flag, through kubeadm).
pub const NODE_PORT_RANGE_ARG: &str = "service-node-port-range";
/// etcd's plain-HTTP `/health` and `/metrics` on loopback, the same for both managements.
pub const ETCD_METRICS_PORT: u16 = 2381;
/// kubeadm's stacked etcd ignores `spec.etcd.clientPort`/`peerPort`.
pub const KUBEADM_ETCD_PORTS: (u16, u16) = (2379, 2380);

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
        })
    }
}

/// Where a listener binds: every address of the host, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindAddress {
    Any,
    Ip(IpAddr),
}

impl BindAddress {
    /// Two binds of one port conflict when either is the wildcard or both are the same address.
    pub fn overlaps(self, other: BindAddress) -> bool {
        match (self, other) {
            (BindAddress::Any, _) | (_, BindAddress::Any) => true,
            (BindAddress::Ip(a), BindAddress::Ip(b)) => a == b,
        }
    }
    pub fn is_loopback(self) -> bool {
        matches!(self, BindAddress::Ip(a) if a.is_loopback())
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddress::Any => f.write_str("*"),
            BindAddress::Ip(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for BindAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who listens. Each owner knows what it is called and which spec field (if any) sets its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Owner {
    Sshd,
    HaproxyApi,
    HaproxyTrack,
    HaproxyStats,
    HaproxyMetrics,
    HaproxyIngressHttp,
    HaproxyIngressHttps,
    EtcdClient,
    EtcdPeer,
    EtcdMetrics,
    ApiServer,
    KubeScheduler,
    KubeControllerManager,
    Kubelet,
    KubeletHealthz,
    KubeProxyMetrics,
    KubeProxyHealthz,
    NodePortHttp,
    NodePortHttps,
}

impl Owner {
    pub fn describe(self) -> &'static str {
        match self {
            Owner::Sshd => "sshd",
            Owner::HaproxyApi => "HAProxy's API frontend",
            Owner::HaproxyTrack => "HAProxy's health endpoint for keepalived",
            Owner::HaproxyStats => "HAProxy's stats page",
            Owner::HaproxyMetrics => "HAProxy's metrics",
            Owner::HaproxyIngressHttp => "the HTTP ingress frontend",
            Owner::HaproxyIngressHttps => "the HTTPS ingress frontend",
            Owner::EtcdClient => "etcd clients",
            Owner::EtcdPeer => "etcd peers",
            Owner::EtcdMetrics => "etcd's metrics and /health",
            Owner::ApiServer => "the API server",
            Owner::KubeScheduler => "kube-scheduler",
            Owner::KubeControllerManager => "kube-controller-manager",
            Owner::Kubelet => "the kubelet",
            Owner::KubeletHealthz => "the kubelet's /healthz",
            Owner::KubeProxyMetrics => "kube-proxy's metrics",
            Owner::KubeProxyHealthz => "kube-proxy's /healthz",
            Owner::NodePortHttp => "the ingress HTTP NodePort",
            Owner::NodePortHttps => "the ingress HTTPS NodePort",
        }
    }

    /// The spec field that sets this port; `None` when the component fixes it.
    pub fn field(self) -> Option<&'static str> {
        Some(match self {
            // A host's own `ssh.port` overrides it; the message names the host.
            Owner::Sshd => "spec.ssh.port",
            Owner::HaproxyApi => "spec.loadBalancer.apiPort",
            Owner::HaproxyTrack => "spec.loadBalancer.vrrp.trackPort",
            Owner::HaproxyStats => "spec.loadBalancer.stats.port",
            Owner::HaproxyMetrics => "spec.loadBalancer.metrics.port",
            Owner::HaproxyIngressHttp => "spec.loadBalancer.ingress.httpPort",
            Owner::HaproxyIngressHttps => "spec.loadBalancer.ingress.httpsPort",
            Owner::EtcdClient => "spec.etcd.clientPort",
            Owner::EtcdPeer => "spec.etcd.peerPort",
            Owner::ApiServer => "spec.kubernetes.apiServerPort",
            Owner::NodePortHttp => "spec.loadBalancer.ingress.httpNodePort",
            Owner::NodePortHttps => "spec.loadBalancer.ingress.httpsNodePort",
            _ => return None,
        })
    }

    fn is_haproxy(self) -> bool {
        matches!(
            self,
            Owner::HaproxyApi
                | Owner::HaproxyTrack
                | Owner::HaproxyStats
                | Owner::HaproxyMetrics
                | Owner::HaproxyIngressHttp
                | Owner::HaproxyIngressHttps
        )
    }

    fn is_node_port(self) -> bool {
        matches!(self, Owner::NodePortHttp | Owner::NodePortHttps)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub address: BindAddress,
    pub port: u16,
    pub protocol: Protocol,
    pub owner: Owner,
    /// `owner` in words, for people and JSON readers.
    pub description: &'static str,
    /// The spec field that sets the port, if any.
    pub field: Option<&'static str>,
}

impl Listener {
    fn new(owner: Owner, address: BindAddress, port: u16) -> Listener {
        Listener {
            address,
            port,
            protocol: Protocol::Tcp,
            owner,
            description: owner.describe(),
            field: owner.field(),
        }
    }

    /// The address in words, the same for every host, for messages that cover several hosts.
    fn where_(&self, vip: IpAddr) -> String {
        match self.address {
            BindAddress::Any => "every address".into(),
            BindAddress::Ip(a) if a == vip => format!("the VIP {a}"),
            BindAddress::Ip(a) if a.is_loopback() => a.to_string(),
            BindAddress::Ip(_) => "the host's address".into(),
        }
    }
}

/// Every listener of one host, in spec order (sshd, load balancer, etcd, Kubernetes, node
/// ports).
#[derive(Debug, Clone, Serialize)]
pub struct PortPlan {
    pub host: String,
    pub listeners: Vec<Listener>,
}

/// The plan of host `h`. `etcd` is `None` while validating a spec whose etcd section is broken.
pub fn plan(h: &Host, lb: &LoadBalancer, k: &Kubernetes, etcd: Option<&Etcd>) -> PortPlan {
    use BindAddress::{Any, Ip};
    let mut v = Vec::new();
    let mut add = |owner, address, port| v.push(Listener::new(owner, address, port));
    let own = Ip(h.address);
    // hakube reaches every host over SSH; sshd listens on every address by default.
    add(Owner::Sshd, Any, h.ssh.port);
    if h.roles.loadbalancer {
        add(Owner::HaproxyApi, Ip(lb.vip), lb.api_port);
        add(Owner::HaproxyTrack, Ip(LOOPBACK), lb.vrrp.track_port);
        if lb.stats.enabled {
            add(Owner::HaproxyStats, own, lb.stats.port);
        }
        if lb.metrics.enabled {
            add(Owner::HaproxyMetrics, own, lb.metrics.port);
        }
        if let Some(i) = &lb.ingress {
            add(Owner::HaproxyIngressHttp, Ip(lb.vip), i.http_port);
            add(Owner::HaproxyIngressHttps, Ip(lb.vip), i.https_port);
        }
    }
    if h.roles.control_plane {
        // Both managements bind the client port on the host address and loopback, the peer
        // port on the host address, and metrics on loopback (templates/etcd.env.j2, kubeadm).
        if let Some(e) = etcd {
            add(Owner::EtcdClient, own, e.client_port);
            add(Owner::EtcdClient, Ip(LOOPBACK), e.client_port);
            add(Owner::EtcdPeer, own, e.peer_port);
            add(Owner::EtcdMetrics, Ip(LOOPBACK), ETCD_METRICS_PORT);
        }
        // kube-apiserver and the lab API server both bind every address.
        add(Owner::ApiServer, Any, k.api_server_port);
    }
    let node = k.bootstrap == Bootstrap::Kubeadm && (h.roles.control_plane || h.roles.worker);
    if node {
        if h.roles.control_plane {
            // kubeadm binds both to 127.0.0.1.
            add(Owner::KubeScheduler, Ip(LOOPBACK), 10259);
            add(Owner::KubeControllerManager, Ip(LOOPBACK), 10257);
        }
        add(Owner::Kubelet, Any, 10250);
        add(Owner::KubeletHealthz, Ip(LOOPBACK), 10248);
        add(Owner::KubeProxyMetrics, Ip(LOOPBACK), 10249);
        add(Owner::KubeProxyHealthz, Any, 10256);
        // kube-proxy takes NodePort traffic on every address of every node.
        if let Some(i) = &lb.ingress {
            add(Owner::NodePortHttp, Any, i.http_node_port);
            add(Owner::NodePortHttps, Any, i.https_node_port);
        }
    }
    PortPlan {
        host: h.name.clone(),
        listeners: v,
    }
}

impl Cluster {
    /// Every listener on `h`.
    pub fn port_plan(&self, h: &Host) -> PortPlan {
        plan(h, &self.lb, &self.kubernetes, Some(&self.etcd))
    }
    /// The port plan of every host, in host order.
    pub fn port_plans(&self) -> Vec<PortPlan> {
        self.hosts.iter().map(|h| self.port_plan(h)).collect()
    }
}

/// The node-port range the API server will use, and the spec path that sets it (if any).
pub fn node_port_range(
    k: &Kubernetes,
    d: &mut Diagnostics,
) -> (Option<(u16, u16)>, Option<String>) {
    let Some(raw) = k.api_server_extra_args.get(NODE_PORT_RANGE_ARG) else {
        return (Some(DEFAULT_NODE_PORTS), None);
    };
    let path = format!("spec.kubernetes.apiServerExtraArgs.{NODE_PORT_RANGE_ARG}");
    // kube-apiserver takes `a-b`, `a+n` (a to a+n) or a single port.
    let t = raw.trim();
    let parsed = if let Some((a, b)) = t.split_once('-') {
        a.trim()
            .parse::<u16>()
            .ok()
            .zip(b.trim().parse::<u16>().ok())
    } else if let Some((a, n)) = t.split_once('+') {
        a.trim()
            .parse::<u16>()
            .ok()
            .zip(n.trim().parse::<u16>().ok())
            .and_then(|(a, n)| Some((a, a.checked_add(n)?)))
    } else {
        t.parse::<u16>().ok().map(|a| (a, a))
    };
    match parsed {
        Some((a, b)) if a >= 1 && a <= b => (Some((a, b)), Some(path)),
        _ => {
            d.error(
                path.clone(),
                format!("{raw:?} is not a port range"),
                "write it like 30000-32767 (first-last, within 1-65535)",
            );
            (None, Some(path))
        }
    }
}

/// One finding, possibly on many hosts; reported once with every host it concerns.
struct Finding {
    warn: bool,
    path: String,
    message: String,
    help: String,
    hosts: Vec<String>,
}

fn host_list(hosts: &[String]) -> String {
    const SHOWN: usize = 5;
    let (head, rest) = hosts.split_at(hosts.len().min(SHOWN));
    let mut s = head.join(", ");
    if !rest.is_empty() {
        s.push_str(&format!(" and {} more", rest.len()));
    }
    s
}

/// Every port clash on every host, kubeadm's fixed etcd ports, and node ports against the
/// node-port range. Linear in the number of hosts.
pub fn check(
    spec: &model::Spec,
    hosts: &[Host],
    lb: &LoadBalancer,
    k: &Kubernetes,
    etcd: Option<&Etcd>,
    d: &mut Diagnostics,
) {
    if let Some(e) = etcd
        && e.management == EtcdManagement::Kubeadm
    {
        for (field, port, fixed) in [
            ("clientPort", e.client_port, KUBEADM_ETCD_PORTS.0),
            ("peerPort", e.peer_port, KUBEADM_ETCD_PORTS.1),
        ] {
            if port != fixed {
                d.error(
                    format!("spec.etcd.{field}"),
                    format!("kubeadm's stacked etcd always uses port {fixed}, not {port}"),
                    format!("remove {field} (it applies only to `management: hakube`), or set management: hakube"),
                );
            }
        }
    }
    let (range, range_path) = node_port_range(k, d);
    let range_words = |(a, b): (u16, u16)| match &range_path {
        Some(_) => format!("the service node-port range {a}-{b}"),
        None => format!("the default service node-port range {a}-{b}"),
    };
    if let (Some(i), Some((a, b))) = (&lb.ingress, range) {
        for (owner, p) in [
            (Owner::NodePortHttp, i.http_node_port),
            (Owner::NodePortHttps, i.https_node_port),
        ] {
            if !(a..=b).contains(&p) {
                let widen = match &range_path {
                    Some(path) => format!("widen {path}"),
                    None => format!(
                        "set spec.kubernetes.apiServerExtraArgs.{NODE_PORT_RANGE_ARG} to a range that includes it"
                    ),
                };
                d.error(
                    owner.field().unwrap_or("spec.loadBalancer.ingress"),
                    format!(
                        "{} {p} is outside {}: the API server refuses a Service with that node port",
                        owner.describe(),
                        range_words((a, b))
                    ),
                    format!("pick a port in {a}-{b}, or {widen}"),
                );
            }
        }
    }

    // Keyed by (path, message) so that one clash on every control plane is one error.
    let mut findings: Vec<Finding> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut note = |warn: bool, path: String, message: String, help: String, host: &str| {
        let i = *index
            .entry((path.clone(), message.clone()))
            .or_insert_with(|| {
                findings.push(Finding {
                    warn,
                    path,
                    message,
                    help,
                    hosts: Vec::new(),
                });
                findings.len() - 1
            });
        findings[i].hosts.push(host.to_string());
    };
    for h in hosts {
        let p = plan(h, lb, k, etcd);
        for l in p.listeners.iter().filter(|l| l.port == 0) {
            note(
                false,
                l.field.unwrap_or("spec").to_string(),
                format!(
                    "{} on port 0: the kernel would pick a random port",
                    l.description
                ),
                "give it a port in 1-65535".into(),
                &h.name,
            );
        }
        // A host has a couple of dozen listeners: sort them (stable, so plan order is kept
        // within a port) and compare neighbours with the same port.
        let mut sorted: Vec<&Listener> = p.listeners.iter().collect();
        sorted.sort_by_key(|l| (l.port, l.protocol));
        for ls in sorted.chunk_by(|a, b| (a.port, a.protocol) == (b.port, b.protocol)) {
            if ls.len() < 2 {
                continue;
            }
            let (port, proto) = (&ls[0].port, ls[0].protocol);
            let mut seen: Vec<(Owner, Owner)> = Vec::new();
            for (j, b) in ls.iter().enumerate() {
                for a in &ls[..j] {
                    if a.owner == b.owner || seen.contains(&(a.owner, b.owner)) {
                        continue;
                    }
                    let (overlap, both_haproxy) = (
                        a.address.overlaps(b.address),
                        a.owner.is_haproxy() && b.owner.is_haproxy(),
                    );
                    if !overlap && !both_haproxy {
                        continue;
                    }
                    seen.push((a.owner, b.owner));
                    let (path, help) = clash_fix(spec, a, b, *port);
                    let mut message = format!(
                        "{} ({}) and {} ({}) would both bind port {port}/{proto}",
                        a.description,
                        a.where_(lb.vip),
                        b.description,
                        b.where_(lb.vip),
                    );
                    if !overlap {
                        // Legal for the kernel, but a port should name one HAProxy service:
                        // scrape targets, firewall rules and `curl` by port would reach the
                        // wrong frontend.
                        message.push_str(
                            "; the addresses differ, but hakube gives every HAProxy frontend its own port",
                        );
                    }
                    note(false, path, message, help, &h.name);
                }
            }
        }
        // A host port inside the node-port range loses its traffic to any NodePort Service
        // that is given the same port.
        if let Some((a, b)) = range
            && k.bootstrap == Bootstrap::Kubeadm
            && (h.roles.control_plane || h.roles.worker)
        {
            let mut seen: Vec<Owner> = Vec::new();
            for l in &p.listeners {
                if l.owner.is_node_port()
                    || l.address.is_loopback()
                    || !(a..=b).contains(&l.port)
                    || seen.contains(&l.owner)
                {
                    continue;
                }
                seen.push(l.owner);
                let path = l
                    .field
                    .map(str::to_string)
                    .or_else(|| range_path.clone())
                    .unwrap_or_else(|| "spec.kubernetes.apiServerExtraArgs".into());
                note(
                    true,
                    path,
                    format!(
                        "{} on port {} is inside {}: a NodePort Service given this port takes its traffic on every node",
                        l.description,
                        l.port,
                        range_words((a, b))
                    ),
                    format!("move it out of {a}-{b}"),
                    &h.name,
                );
            }
        }
    }
    for f in findings {
        let on = if f.hosts.len() == 1 {
            format!("on host {}", f.hosts[0])
        } else {
            format!("on hosts {}", host_list(&f.hosts))
        };
        let msg = format!("{on}: {}", f.message);
        if f.warn {
            d.warn(f.path, msg, f.help);
        } else {
            d.error(f.path, msg, f.help);
        }
    }
}

/// Whether the spec sets `owner`'s port itself, rather than leaving it to a default.
fn written(s: &model::Spec, owner: Owner) -> bool {
    let l = &s.load_balancer;
    let ingress = |f: fn(&model::Ingress) -> Option<u16>| l.ingress.as_ref().and_then(f).is_some();
    match owner {
        Owner::Sshd => s.ssh.port.is_some() || s.hosts.iter().any(|h| h.ssh.port.is_some()),
        Owner::HaproxyApi => l.api_port.is_some(),
        Owner::HaproxyTrack => l.vrrp.track_port.is_some(),
        Owner::HaproxyStats => l.stats.port.is_some(),
        Owner::HaproxyMetrics => l.metrics.port.is_some(),
        Owner::HaproxyIngressHttp => ingress(|i| i.http_port),
        Owner::HaproxyIngressHttps => ingress(|i| i.https_port),
        Owner::NodePortHttp => ingress(|i| i.http_node_port),
        Owner::NodePortHttps => ingress(|i| i.https_node_port),
        Owner::EtcdClient => s.etcd.client_port.is_some(),
        Owner::EtcdPeer => s.etcd.peer_port.is_some(),
        Owner::ApiServer => s.kubernetes.api_server_port.is_some(),
        _ => false,
    }
}

/// Which field to point at, and how to fix a clash between `a` (earlier) and `b` (later).
fn clash_fix(s: &model::Spec, a: &Listener, b: &Listener, port: u16) -> (String, String) {
    let pair = [a.owner, b.owner];
    if pair.contains(&Owner::HaproxyApi) && pair.contains(&Owner::ApiServer) {
        return (
            "spec.loadBalancer.apiPort".into(),
            "the API server binds every address of its host; set spec.loadBalancer.apiPort: 8443"
                .into(),
        );
    }
    // Point at the later listener's field; at the earlier one's when only that one is written
    // in the spec or can be changed at all.
    let b_first =
        b.field.is_some() && (a.field.is_none() || written(s, b.owner) || !written(s, a.owner));
    let (moved, fixed) = if b_first { (b, a) } else { (a, b) };
    let field = moved.field.unwrap_or("spec");
    let help = match fixed.field {
        None => format!(
            "{} always uses port {port}; give {} another port in {field}",
            fixed.description, moved.description
        ),
        Some(_) => format!(
            "give {} its own port in {field}, or move {} ({})",
            moved.description,
            fixed.description,
            fixed.field.unwrap_or_default()
        ),
    };
    (field.to_string(), help)
}
