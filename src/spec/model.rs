//! The raw `cluster.yaml` document, exactly as written by the user.
//!
//! Everything a user can get wrong in a value (addresses, CIDRs, durations, versions) is kept as
//! text here, so that `validate` can report every mistake at once with its location instead of
//! stopping at the first parse failure. `validate` turns this into the typed [`crate::spec::Cluster`].
//!
//! No struct denies unknown fields: serde would stop at the first one. `fields` checks every key
//! of the document against these structs' own field lists instead, and reports them all.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "hakube.io/v1alpha1";
pub const KIND: &str = "Cluster";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub ssh: Ssh,
    /// How hakube's own probes (etcd, API servers, the VIP, HAProxy stats) reach the hosts:
    /// `direct`, `ssh` (forwarded over each host's SSH connection), or `auto` (the default).
    pub access: Option<String>,
    #[serde(default)]
    pub hosts: Vec<Host>,
    pub networks: Networks,
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub etcd: Etcd,
    #[serde(default)]
    pub kubernetes: Kubernetes,
    #[serde(default)]
    pub pki: Pki,
    /// Present (even empty) when the cluster must have a recent verified backup.
    pub backup: Option<Backup>,
    #[serde(default)]
    pub monitoring: Monitoring,
}

/// Backups: where `hakube backup` keeps them and which it keeps, how old the newest may be, and
/// scheduled snapshots on the control planes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// The operator-side folder of `hakube backup` (relative to the spec's folder).
    pub dir: Option<String>,
    /// status and doctor report a problem when the newest verified backup is older (`25h`).
    pub max_age: Option<String>,
    #[serde(default)]
    pub retention: Retention,
    /// A systemd timer on every control plane that takes and verifies a local snapshot.
    pub schedule: Option<Schedule>,
}

/// Which of `hakube backup`'s archives to keep (the command's --keep-* flags override it).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// A systemd calendar expression (`OnCalendar=`), for example `daily` or `*-*-* 02:30`.
    pub on_calendar: Option<String>,
    /// Snapshots kept on each control plane.
    pub keep: Option<u32>,
    /// Where they are kept on the hosts.
    pub host_dir: Option<String>,
    /// `RandomizedDelaySec=`: spreads the control planes' runs apart.
    pub randomized_delay: Option<String>,
}

/// Prometheus: what `render` writes for it, and where hakube finds it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Labels on every rendered prometheus-operator object, for selector-based installs
    /// (`release: kube-prometheus-stack`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Namespace of the PrometheusRule, ServiceMonitor and ScrapeConfigs [monitoring].
    pub namespace: Option<String>,
    /// `HOST:PORT` where `hakube exporter` listens and Prometheus scrapes it [127.0.0.1:9468].
    pub exporter: Option<String>,
    /// Folder holding `ca.crt`, `client.crt`, `client.key` for scraping etcd
    /// [/etc/prometheus/secrets/etcd-certs].
    pub etcd_cert_dir: Option<String>,
    /// How often Prometheus scrapes and evaluates rules [15s].
    pub scrape_interval: Option<String>,
    /// Base URL of a Prometheus that runs the rendered rules (status and drills read it).
    pub prometheus_url: Option<String>,
}

/// Certificates hakube issues from its CAs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pki {
    /// How long leaf certificates last (`365d`; short ones, such as `10m`, for tests).
    pub certificate_validity: Option<String>,
}

/// SSH settings. On `spec.ssh` they are defaults; on a host they override those.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ssh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    pub proxy_jump: Option<String>,
    /// An ssh_config file passed to `ssh -F` (the lab writes one).
    pub config_file: Option<String>,
    /// A known_hosts file; by default the user's own, checked strictly.
    pub known_hosts_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub name: String,
    pub address: String,
    pub roles: Vec<String>,
    /// The interface that carries `address`; found from the host's facts when absent.
    pub interface: Option<String>,
    #[serde(default)]
    pub ssh: Ssh,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Networks {
    pub management: String,
    pub pods: Option<String>,
    pub services: Option<String>,
    pub storage: Option<String>,
    pub dns_domain: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub vip: String,
    /// The port HAProxy serves the Kubernetes API on (VIP:apiPort is the control-plane endpoint).
    pub api_port: Option<u16>,
    #[serde(default)]
    pub vrrp: Vrrp,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub stats: Stats,
    #[serde(default)]
    pub metrics: Metrics,
    pub ingress: Option<Ingress>,
    #[serde(default)]
    pub packages: Packages,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vrrp {
    pub router_id: Option<i64>,
    /// 2 or 3. Version 3 allows sub-second adverts but has no authentication.
    pub version: Option<u8>,
    /// Advert interval, for example `100ms` or `1s`.
    pub advert_interval: Option<String>,
    /// VRRPv2 PASS authentication (clear text, at most 8 characters).
    pub auth_pass: Option<String>,
    /// Priority per LB host name; by default the first LB gets 110 and each next one 10 less.
    #[serde(default)]
    pub priorities: BTreeMap<String, i64>,
    /// The user keepalived runs the track script as (`enable_script_security`).
    pub script_user: Option<String>,
    /// Port of HAProxy's own health endpoint on 127.0.0.1, which the track script asks.
    pub track_port: Option<u16>,
    /// Whether the highest-priority LB takes the VIP back once it is healthy again.
    pub preempt: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `https` (GET /readyz over TLS, the default) or `tcp` (the runbook's plain connect check).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub enabled: Option<bool>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Local file holding the stats password; created (0600) with a random password if absent.
    pub password_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    pub enabled: Option<bool>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    pub http_port: Option<u16>,
    pub https_port: Option<u16>,
    pub http_node_port: Option<u16>,
    pub https_node_port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Etcd {
    /// `hakube` (systemd service and PKI managed by hakube) or `kubeadm` (static pods).
    pub management: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub election_timeout: Option<String>,
    /// Backend quota, for example `2GiB` or `8GiB`.
    pub quota_backend_bytes: Option<String>,
    pub data_dir: Option<String>,
    /// Path of the etcd binary on the hosts (management `hakube`); with `version` hakube
    /// installs etcd itself and this defaults to `/opt/hakube/etcd/current/etcd`.
    pub binary: Option<String>,
    pub client_port: Option<u16>,
    pub peer_port: Option<u16>,
    /// The etcd release to install on every control plane, for example `v3.5.1` (needs `source`).
    pub version: Option<String>,
    /// Where the release tarball comes from (the layout of etcd's own release tarballs).
    pub source: Option<EtcdSource>,
}

/// An etcd release tarball: a local file (air-gapped) or a URL, and its SHA-256.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSource {
    /// A tarball on the operator machine, relative to the spec file.
    pub path: Option<String>,
    /// A URL the operator machine downloads the tarball from.
    pub url: Option<String>,
    pub sha256: Option<String>,
}

/// Package versions to pin on the load balancers (`apt-get install haproxy=VERSION`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Packages {
    pub haproxy: Option<String>,
    pub keepalived: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kubernetes {
    pub version: Option<String>,
    /// `kubeadm` for real clusters, `lab` for the lab API server stand-in.
    pub bootstrap: Option<String>,
    pub cluster_name: Option<String>,
    /// The port each API server binds on its own host.
    pub api_server_port: Option<u16>,
    #[serde(default, rename = "certSANs")]
    pub cert_sans: Vec<String>,
    #[serde(default)]
    pub api_server_extra_args: BTreeMap<String, String>,
    pub cri_socket: Option<String>,
    /// Where kubeadm, kubelet and kubectl come from (bootstrap: kubeadm).
    #[serde(default)]
    pub packages: KubePackages,
    #[serde(default)]
    pub container_runtime: ContainerRuntime,
    /// The pod network, applied after `kubeadm init`.
    pub cni: Option<Cni>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubePackages {
    /// An apt repository (pkgs.k8s.io for the spec's minor, or a mirror of it).
    pub repository: Option<String>,
    /// The fingerprint of the key that signs it; the key is refused unless it matches.
    pub key_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRuntime {
    /// The pause image containerd uses for pod sandboxes.
    pub sandbox_image: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cni {
    /// calico, cilium or flannel.
    pub name: Option<String>,
    pub version: Option<String>,
    /// A local file (relative to the spec) or an https URL of the manifest.
    pub manifest: Option<String>,
    pub sha256: Option<String>,
}
