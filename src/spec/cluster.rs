//! The validated, typed cluster model that every other layer (plan, render, apply, lab) uses.
//! Defaults are resolved here, once.

use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    /// How the operator's probes reach the hosts (`spec.access`).
    pub access: Access,
    /// Folder of the spec file; relative paths in the spec are resolved against it.
    pub base_dir: PathBuf,
    pub hosts: Vec<Host>,
    pub networks: Networks,
    pub lb: LoadBalancer,
    pub etcd: Etcd,
    pub kubernetes: Kubernetes,
    /// What a bare host needs to run kubeadm's Kubernetes (`bootstrap: kubeadm`).
    pub node_os: super::node_os::NodeOs,
    pub pki: Pki,
    pub backup: Backup,
    pub monitoring: Monitoring,
}

/// How hakube's probes (etcd's gRPC, the API servers and the VIP, HAProxy's stats page) reach
/// the hosts. Commands always run over SSH.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Straight from this machine.
    Direct,
    /// Through a local forward on each host's SSH connection (behind a bastion).
    Ssh,
    /// Direct if a control plane's etcd or API port answers from here, otherwise ssh.
    #[default]
    Auto,
}

/// Backups, with defaults resolved (`spec.backup`).
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    /// The spec has a `backup` section: status and doctor expect a verified backup younger than
    /// `max_age`.
    pub expected: bool,
    /// `hakube backup`'s folder, resolved against the spec's folder; `None` is the default
    /// (`.hakube/<cluster>/backups`).
    pub dir: Option<PathBuf>,
    #[serde(with = "millis")]
    pub max_age: Duration,
    pub keep_last: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub schedule: Option<BackupSchedule>,
}

/// The timer on the control planes.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSchedule {
    pub on_calendar: String,
    pub keep: u32,
    pub host_dir: String,
    #[serde(with = "millis")]
    pub randomized_delay: Duration,
}

/// Defaults of `spec.monitoring`.
pub const EXPORTER_ADDR: &str = "127.0.0.1:9468";
pub const ETCD_CERT_DIR: &str = "/etc/prometheus/secrets/etcd-certs";

/// Prometheus settings (see `model::Monitoring`).
#[derive(Debug, Clone, Serialize)]
pub struct Monitoring {
    pub labels: std::collections::BTreeMap<String, String>,
    pub namespace: String,
    pub exporter: std::net::SocketAddr,
    pub etcd_cert_dir: String,
    pub scrape_interval: std::time::Duration,
    pub prometheus_url: Option<String>,
}

/// Certificates hakube issues.
#[derive(Debug, Clone, Serialize)]
pub struct Pki {
    /// Lifetime of every leaf certificate (the CAs last 10 years).
    pub certificate_validity: std::time::Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Roles {
    pub loadbalancer: bool,
    pub control_plane: bool,
    pub worker: bool,
}

impl Roles {
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.loadbalancer {
            v.push("loadbalancer");
        }
        if self.control_plane {
            v.push("control-plane");
        }
        if self.worker {
            v.push("worker");
        }
        v
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    pub identity_file: Option<String>,
    pub proxy_jump: Option<String>,
    pub config_file: Option<String>,
    pub known_hosts_file: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub address: IpAddr,
    pub roles: Roles,
    pub interface: Option<String>,
    pub ssh: SshSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct Networks {
    pub management: IpNet,
    pub pods: IpNet,
    pub services: IpNet,
    pub storage: Option<IpNet>,
    pub dns_domain: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// HTTPS `GET /readyz`, expecting 200.
    Https,
    /// A plain TCP connect, as in the runbook. Kept for comparison drills.
    Tcp,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    pub kind: CheckKind,
    #[serde(with = "millis")]
    pub interval: Duration,
    pub fall: u32,
    pub rise: u32,
    #[serde(with = "millis")]
    pub timeout: Duration,
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
}

impl HealthCheck {
    /// HAProxy's `fastinter`: checks run this often while a server is changing state, so a
    /// failing one reaches `fall` sooner.
    pub fn fastinter(&self) -> Duration {
        (self.interval / 2).max(Duration::from_millis(100))
    }

    /// From a silent (partitioned) API server to HAProxy marking it DOWN, best and worst case:
    /// up to one `interval` until the next check, then `fall` checks that each fail when their
    /// connect times out (HAProxy's check connect timeout is min(connect timeout, inter) once
    /// `timeout check` is set), `fastinter` apart (`inter` for the plain TCP check, which
    /// renders no `fastinter`).
    /// How long an API server keeps serving after SIGTERM with `/readyz` failing, so that every
    /// HAProxy marks it DOWN before it closes its listener (connections still queued on a
    /// closing listener are reset, and HAProxy cannot retry them in TCP mode): the next check,
    /// `fall` failing ones `fastinter` apart, and one more as margin. A plain TCP check never
    /// sees `/readyz`, so there is nothing to wait for.
    pub fn shutdown_delay(&self) -> Duration {
        match self.kind {
            CheckKind::Https => self.interval + self.fastinter() * self.fall,
            CheckKind::Tcp => Duration::ZERO,
        }
    }

    pub fn silent_detect(&self) -> (Duration, Duration) {
        let t = self.connect_timeout.min(self.interval);
        let gap = match self.kind {
            CheckKind::Https => self.fastinter(),
            CheckKind::Tcp => self.interval,
        };
        let rest = (t + gap) * self.fall.saturating_sub(1);
        (t + rest, self.interval + t + rest)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Vrrp {
    pub router_id: u8,
    pub version: u8,
    #[serde(with = "millis")]
    pub advert_interval: Duration,
    #[serde(skip)]
    pub auth_pass: Option<String>,
    /// Priority per LB host, highest first in `lb_hosts` order.
    pub priorities: BTreeMap<String, u8>,
    /// Track-script weight: negative, and larger than the priority spread, so that an LB whose
    /// HAProxy or API path is broken always drops below every healthy peer.
    pub track_weight: i32,
    pub script_user: String,
    /// HAProxy answers `/healthz` on 127.0.0.1:track_port: 200 while it runs and has an API
    /// server UP; keepalived's track script asks it.
    pub track_port: u16,
    /// true: the highest-priority healthy LB always holds the VIP, so a recovered LB takes it
    /// back (a second, short client disruption). false (`nopreempt`): the VIP stays where it is.
    pub preempt: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub enabled: bool,
    pub port: u16,
    pub user: String,
    /// Operator-side file with the password; resolved against the spec folder.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub enabled: bool,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ingress {
    pub http_port: u16,
    pub https_port: u16,
    pub http_node_port: u16,
    pub https_node_port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadBalancer {
    pub vip: IpAddr,
    pub api_port: u16,
    pub vrrp: Vrrp,
    pub health_check: HealthCheck,
    pub stats: Stats,
    pub metrics: Metrics,
    pub ingress: Option<Ingress>,
    /// Pinned package versions: package -> version (`haproxy`, `keepalived`).
    pub packages: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdManagement {
    Hakube,
    Kubeadm,
}

#[derive(Debug, Clone, Serialize)]
pub struct Etcd {
    pub management: EtcdManagement,
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    #[serde(with = "millis")]
    pub election_timeout: Duration,
    pub quota_backend_bytes: u64,
    pub data_dir: String,
    pub binary: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// A pinned etcd that hakube installs (`spec.etcd.version` and `source`).
    pub install: Option<EtcdInstall>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdInstall {
    pub version: semver::Version,
    pub source: EtcdSource,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdSource {
    /// Resolved against the spec's folder.
    Path(std::path::PathBuf),
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootstrap {
    Kubeadm,
    /// The lab API server stand-in (`hakube-lab-apiserver`), for the lab only.
    Lab,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KubeadmApi {
    #[serde(rename = "kubeadm.k8s.io/v1beta3")]
    V1Beta3,
    #[serde(rename = "kubeadm.k8s.io/v1beta4")]
    V1Beta4,
}

impl KubeadmApi {
    pub fn as_str(&self) -> &'static str {
        match self {
            KubeadmApi::V1Beta3 => "kubeadm.k8s.io/v1beta3",
            KubeadmApi::V1Beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Kubernetes {
    pub version: semver::Version,
    pub kubeadm_api: KubeadmApi,
    pub bootstrap: Bootstrap,
    pub cluster_name: String,
    pub api_server_port: u16,
    /// Every SAN, the automatically added ones included.
    pub cert_sans: Vec<String>,
    pub api_server_extra_args: BTreeMap<String, String>,
    pub cri_socket: String,
}

impl Cluster {
    pub fn load_balancers(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.roles.loadbalancer)
    }
    pub fn control_planes(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.roles.control_plane)
    }
    pub fn workers(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.roles.worker)
    }
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    /// `VIP:port`, the endpoint every client and kubelet uses.
    pub fn control_plane_endpoint(&self) -> String {
        match self.lb.vip {
            IpAddr::V6(v6) => format!("[{v6}]:{}", self.lb.api_port),
            IpAddr::V4(v4) => format!("{v4}:{}", self.lb.api_port),
        }
    }
    /// etcd member name for a control plane: its host name.
    pub fn etcd_initial_cluster(&self) -> String {
        self.control_planes()
            .map(|h| {
                format!(
                    "{}={}",
                    h.name,
                    url("https", h.address, self.etcd.peer_port)
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
    pub fn etcd_client_urls(&self) -> Vec<String> {
        self.control_planes()
            .map(|h| url("https", h.address, self.etcd.client_port))
            .collect()
    }
}

pub fn url(scheme: &str, addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
    }
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
