//! Renders every config file each host needs from the validated [`Cluster`].
//!
//! Text configs (HAProxy, keepalived, etcd, systemd) come from minijinja templates in
//! `templates/`, compiled into the binary; structured ones (kubeadm, Prometheus rules) are built
//! as data and serialised, so they are always well-formed. Output is deterministic.

pub mod backup;
pub mod check;
pub mod kubeadm;
pub mod monitoring;

use crate::spec::{Bootstrap, CheckKind, Cluster, EtcdManagement, Host};
use anyhow::Context;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pseudo-host of cluster-wide files (monitoring); `_` cannot start a host name.
pub const CLUSTER_DIR: &str = "_cluster";
pub const HEADER: &str =
    "Rendered by hakube from cluster.yaml. Do not edit: change the spec and run `hakube apply`.";
pub const HAPROXY_ENV: &str = "/etc/haproxy/hakube.env";
/// keepalived's track script runs every this many seconds (keepalived takes whole seconds) ...
pub const TRACK_SCRIPT_INTERVAL_S: u64 = 1;
/// ... and one failure moves the VIP: with `fall 2` a stopped HAProxy kept the VIP 1.8-2.9 s,
/// with `fall 1` 0.8-1.7 s (docs/drills.md). A single slow check moves it too, which is cheap.
pub const TRACK_SCRIPT_FALL: u32 = 1;
/// How long `chk_haproxy` waits for HAProxy's own answer on 127.0.0.1 before it calls HAProxy
/// hung (keepalived's `timeout` takes whole seconds, curl's `--max-time` does not).
pub const HUNG_AFTER_MS: u64 = 500;
/// systemd writes 1 here when HAProxy's main process ends (ExecStopPost=, also after a crash or
/// kill -9) and 0 once it runs again (ExecStartPost=); keepalived watches it with inotify
/// (`track_file`), so an exited HAProxy moves the VIP at once, not at the next track-script run.
pub const HAPROXY_EXITED: &str = "/run/hakube/haproxy-exited";

/// What a file belongs to: each apply phase installs the files of its own component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// Kernel settings every host of a role needs (sysctl, modules).
    Host,
    /// Where packages come from (the Kubernetes apt repository).
    Packages,
    /// The container runtime's configuration (containerd, crictl).
    Runtime,
    /// HAProxy and keepalived.
    LoadBalancer,
    /// Certificates and the operator-state marker.
    Pki,
    /// etcd's environment and unit.
    Etcd,
    /// The API server: kubeadm's control-plane configs, or the lab API server.
    ControlPlane,
    /// A worker's kubeadm join config.
    Worker,
    /// Scheduled etcd snapshots on a control plane.
    Backup,
    /// Cluster-wide files that no host receives (monitoring objects), under [`CLUSTER_DIR`].
    #[default]
    Cluster,
}

/// One file for one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RenderedFile {
    /// A host name, or [`CLUSTER_DIR`] for cluster-wide files.
    pub host: String,
    /// The phase that installs it.
    pub component: Component,
    /// Absolute path on the host.
    pub path: String,
    pub mode: u32,
    #[serde(skip)]
    pub content: String,
    /// Holds a secret: never printed, written 0600.
    pub secret: bool,
    /// Services to reload or restart when this file changes.
    pub services: Vec<String>,
    /// Binary content (a program); when set, it replaces `content`.
    #[serde(skip)]
    pub binary: Option<std::sync::Arc<Vec<u8>>>,
    /// A program written from this local file, streamed, never held in memory (`hash` is set
    /// when the file is made). Hosts compare it by its stamp (`transport::STAMP_SUFFIX`).
    #[serde(skip)]
    pub source: Option<std::sync::Arc<std::path::PathBuf>>,
    /// The checksum, computed once: apply compares it with every host's copy.
    #[serde(skip)]
    pub hash: std::sync::OnceLock<String>,
}

impl RenderedFile {
    pub fn data(&self) -> &[u8] {
        match &self.binary {
            Some(b) => b,
            None => self.content.as_bytes(),
        }
    }
    /// A program: compared on hosts by its stamp rather than hashed each run.
    pub fn stamped(&self) -> bool {
        self.binary.is_some() || self.source.is_some()
    }
    pub fn sha256(&self) -> String {
        self.hash
            .get_or_init(|| hex::encode(sha2::Sha256::digest(self.data())))
            .clone()
    }
    pub fn with_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.binary = Some(std::sync::Arc::new(bytes));
        self.hash = std::sync::OnceLock::new();
        self
    }
}

/// Secrets that end up in rendered files. Kept on the operator's side, 0600.
pub struct Secrets {
    pub stats_password: String,
}

impl Secrets {
    /// Read the stats password file, creating it (0600, random) when it does not exist.
    pub fn load_or_create(c: &Cluster) -> anyhow::Result<Secrets> {
        let p = &c.lb.stats.password_file;
        let stats_password = read_or_create_secret(p)?;
        Ok(Secrets { stats_password })
    }
}

/// Read a secret file: it must be private (no group or other bits) and fit the env-file grammar.
pub fn read_secret(p: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let s = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read the secret file {}", p.display()))?;
    let mode = std::fs::metadata(p)?.permissions().mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the secret file {} is readable by group or others (mode {:04o})\n  help: chmod 600 {}",
            p.display(),
            mode & 0o777,
            p.display()
        );
    }
    let s = s.trim().to_string();
    // The password goes into haproxy's environment file, which systemd and sh read.
    let rule = &crate::spec::grammar::STATS_PASSWORD;
    if let Err(why) = rule.check(&s) {
        anyhow::bail!(
            "the secret file {}: in the password, {why}\n  help: {}; besides letters and digits it may hold {}",
            p.display(),
            rule.help,
            rule.allowed_punctuation()
        );
    }
    Ok(s)
}

/// A new random secret (32 alphanumerics: nothing any config grammar reads specially).
pub fn random_secret() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Read a secret file, creating it (0600, random) when it does not exist.
pub fn read_or_create_secret(p: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !p.exists() {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let pw = random_secret();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .with_context(|| format!("creating the secret file {}", p.display()))?;
        std::io::Write::write_all(&mut f, format!("{pw}\n").as_bytes())?;
        return Ok(pw);
    }
    read_secret(p)
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .expect("static syntax config");
    env.set_syntax(syntax);
    let templates = [
        (
            "haproxy.cfg",
            include_str!("../../templates/haproxy.cfg.j2"),
        ),
        (
            "keepalived.conf",
            include_str!("../../templates/keepalived.conf.j2"),
        ),
        (
            "check_apiserver.sh",
            include_str!("../../templates/check_apiserver.sh.j2"),
        ),
        (
            "check_haproxy.sh",
            include_str!("../../templates/check_haproxy.sh.j2"),
        ),
        ("etcd.env", include_str!("../../templates/etcd.env.j2")),
        (
            "etcd.service",
            include_str!("../../templates/etcd.service.j2"),
        ),
    ];
    for (name, src) in templates {
        // Built-in templates are tested; a failure here is a bug in hakube, not user input.
        env.add_template(name, src)
            .expect("built-in template parses");
    }
    env
}

/// HAProxy and keepalived want durations as `1s` / `500ms`.
pub fn hap_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Seconds with up to two decimals, for keepalived's `advert_int`.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}", ms / 1000)
    } else {
        let s = format!("{:.2}", ms as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

/// An address as it goes into `bind`/`server` lines (IPv6 in brackets).
pub fn bind_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

fn host_ctx(h: &Host) -> serde_json::Value {
    json!({"name": h.name, "address": h.address.to_string(), "address_bind": bind_addr(h.address)})
}

/// Render every file for every host, sorted by host and path.
pub fn render(c: &Cluster, secrets: &Secrets) -> anyhow::Result<Vec<RenderedFile>> {
    let env = env();
    let mut out = Vec::new();
    for h in &c.hosts {
        if h.roles.loadbalancer {
            load_balancer(c, h, secrets, &env, &mut out)?;
        }
        if h.roles.control_plane && c.etcd.management == EtcdManagement::Hakube {
            etcd(c, h, &env, &mut out)?;
        }
        out.extend(backup::render(c, h));
        if c.kubernetes.bootstrap == Bootstrap::Kubeadm && (h.roles.control_plane || h.roles.worker)
        {
            out.extend(kubeadm::render(c, h)?);
            out.extend(node_os(c, h)?);
            out.push(file(
                h,
                Component::Host,
                "/etc/sysctl.d/90-hakube-kubernetes.conf",
                0o644,
                KUBE_SYSCTL.into(),
                &["sysctl"],
            ));
            out.push(file(
                h,
                Component::Host,
                "/etc/modules-load.d/hakube-kubernetes.conf",
                0o644,
                KUBE_MODULES.into(),
                &["modules"],
            ));
        }
    }
    out.extend(monitoring::render(c)?);
    out.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
    Ok(out)
}

/// A bare host's way to Kubernetes: the apt repository, containerd's configuration, and on the
/// first control plane a local CNI manifest.
fn node_os(c: &Cluster, h: &Host) -> anyhow::Result<Vec<RenderedFile>> {
    use crate::spec::node_os::{
        CNI_MANIFEST, CONTAINERD_CONFIG, CRICTL_CONFIG, CniSource, KEYRING, SOURCES_LIST,
    };
    let os = &c.node_os;
    let mut out = vec![
        file(
            h,
            Component::Packages,
            SOURCES_LIST,
            0o644,
            format!(
                "# {HEADER}\n# Kubernetes v{}.{} packages, signed by the key with fingerprint {}.\ndeb [signed-by={KEYRING}] {} /\n",
                c.kubernetes.version.major,
                c.kubernetes.version.minor,
                os.key_fingerprint,
                os.repository
            ),
            &["apt-update"],
        ),
        file(
            h,
            Component::Runtime,
            CONTAINERD_CONFIG,
            0o644,
            format!(
                "# {HEADER}\n# The kubelet (kubeadm's default) drives cgroups through systemd, so containerd must\n\
                 # too; and both must agree on the pause image.\nversion = 2\n\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{}\"\n\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n",
                os.sandbox_image
            ),
            &["containerd"],
        ),
        file(
            h,
            Component::Runtime,
            CRICTL_CONFIG,
            0o644,
            format!(
                "# {HEADER}\nruntime-endpoint: {sock}\nimage-endpoint: {sock}\ntimeout: 10\n",
                sock = c.kubernetes.cri_socket
            ),
            &[],
        ),
    ];
    let first = c.control_planes().next().map(|x| x.name.as_str());
    if let Some(cni) = &os.cni
        && Some(h.name.as_str()) == first
        && let CniSource::File(path) = &cni.source
    {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the CNI manifest {}", path.display()))?;
        // Verbatim: its checksum is the spec's, checked again on the host before use.
        out.push(RenderedFile {
            host: h.name.clone(),
            component: Component::ControlPlane,
            path: CNI_MANIFEST.into(),
            mode: 0o644,
            content: text,
            services: vec![],
            ..Default::default()
        });
    }
    Ok(out)
}

const KUBE_SYSCTL: &str = "# Rendered by hakube. Pod networking needs forwarding and bridged traffic through iptables.\n\
net.ipv4.ip_forward = 1\n\
net.bridge.bridge-nf-call-iptables = 1\n\
net.bridge.bridge-nf-call-ip6tables = 1\n";
const KUBE_MODULES: &str = "# Rendered by hakube. Needed by containerd (overlay) and kube-proxy (br_netfilter).\noverlay\nbr_netfilter\n";

fn file(
    h: &Host,
    component: Component,
    path: &str,
    mode: u32,
    mut content: String,
    services: &[&str],
) -> RenderedFile {
    if !content.ends_with('\n') {
        content.push('\n');
    }
    RenderedFile {
        host: h.name.clone(),
        component,
        path: path.into(),
        mode,
        content,
        secret: false,
        services: services.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn load_balancer(
    c: &Cluster,
    h: &Host,
    secrets: &Secrets,
    env: &Environment<'_>,
    out: &mut Vec<RenderedFile>,
) -> anyhow::Result<()> {
    let lb = &c.lb;
    let hc = &lb.health_check;
    let api_servers: Vec<_> = c
        .control_planes()
        .map(|s| json!({"name": s.name, "endpoint": format!("{}:{}", bind_addr(s.address), c.kubernetes.api_server_port)}))
        .collect();
    let workers: Vec<_> = c.workers().map(host_ctx).collect();
    let ctx = json!({
        "header": HEADER,
        "cluster": c.name,
        "host": host_ctx(h),
        "env_file": HAPROXY_ENV,
        "api_backend": crate::observe::API_BACKEND,
        "lb": {
            "vip_bind": bind_addr(lb.vip),
            "track_port": lb.vrrp.track_port,
            "api_port": lb.api_port,
            "connect_timeout": hap_duration(hc.connect_timeout),
            "check_timeout": hap_duration(hc.timeout),
            "check_kind": match hc.kind { CheckKind::Https => "https", CheckKind::Tcp => "tcp" },
            "inter": hap_duration(hc.interval),
            // Probe faster while a server is changing state, and keep probing a down one often
            // enough that it comes back quickly.
            "fastinter": hap_duration(hc.fastinter()),
            "downinter": hap_duration(hc.interval),
            "fall": hc.fall,
            "rise": hc.rise,
            "stats": {"enabled": lb.stats.enabled, "port": lb.stats.port},
            "metrics": {"enabled": lb.metrics.enabled, "port": lb.metrics.port},
        },
        "api_servers": api_servers,
        "workers": workers,
        "ingress": lb.ingress,
    });
    let cfg = env
        .get_template("haproxy.cfg")?
        .render(minijinja::value::Serde(&ctx))?;
    out.push(file(
        h,
        Component::LoadBalancer,
        "/etc/haproxy/haproxy.cfg",
        0o644,
        cfg,
        &["haproxy"],
    ));
    out.push(RenderedFile {
        host: h.name.clone(),
        component: Component::LoadBalancer,
        path: HAPROXY_ENV.into(),
        mode: 0o600,
        content: format!(
            "# {HEADER}\nHAKUBE_STATS_USER={}\nHAKUBE_STATS_PASSWORD={}\n",
            lb.stats.user, secrets.stats_password
        ),
        secret: true,
        services: vec!["haproxy".into()],
        ..Default::default()
    });
    out.push(file(
        h,
        Component::LoadBalancer,
        "/etc/systemd/system/haproxy.service.d/10-hakube.conf",
        0o644,
        format!(
            "# {HEADER}\n[Service]\nEnvironmentFile={HAPROXY_ENV}\n\
             # keepalived's track_file: HAProxy runs (0) or has exited (1), however it ended.\n\
             ExecStartPost=/bin/sh -c 'mkdir -p {dir} && echo 0 > {HAPROXY_EXITED}'\n\
             ExecStopPost=/bin/sh -c 'mkdir -p {dir} && echo 1 > {HAPROXY_EXITED}'\n",
            dir = HAPROXY_EXITED
                .rsplit_once('/')
                .map(|x| x.0)
                .unwrap_or("/run")
        ),
        &["daemon-reload"],
    ));

    // keepalived
    let lbs: Vec<&Host> = c.load_balancers().collect();
    let prio = lb.vrrp.priorities.get(&h.name).copied().unwrap_or(100);
    let top = lb.vrrp.priorities.values().max().copied().unwrap_or(prio);
    let peers: Vec<String> = lbs
        .iter()
        .filter(|p| p.name != h.name)
        .map(|p| p.address.to_string())
        .collect();
    let prefix = c.networks.management.prefix_len();
    let ifc = h.interface.clone().unwrap_or_else(|| "eth0".into());
    // Validation checked the spec's interface; this also covers one found on the host by apply.
    let rule = &crate::spec::grammar::INTERFACE;
    if let Err(why) = rule.check(&ifc) {
        anyhow::bail!(
            "host {}: interface {ifc:?} {why}\n  help: {}",
            h.name,
            rule.help
        );
    }
    let ctx = json!({
        "header": HEADER,
        "cluster": c.name,
        "host": host_ctx(h),
        "api_port": lb.api_port,
        "track_port": lb.vrrp.track_port,
        "hung_after_s": HUNG_AFTER_MS as f64 / 1000.0,
        "vrrp": {
            // keepalived honours nopreempt only on instances that start as BACKUP.
            "state": if prio == top && lb.vrrp.preempt { "MASTER" } else { "BACKUP" },
            "preempt": lb.vrrp.preempt,
            "interface": ifc,
            "router_id": lb.vrrp.router_id,
            "priority": prio,
            "advert": seconds(lb.vrrp.advert_interval),
            "version": lb.vrrp.version,
            "peers": peers,
            "auth_pass": if lb.vrrp.version == 2 { lb.vrrp.auth_pass.clone() } else { None },
            "vip": format!("{}/{}", lb.vip, prefix),
            "weight": lb.vrrp.track_weight,
            "track_interval": TRACK_SCRIPT_INTERVAL_S,
            "track_fall": TRACK_SCRIPT_FALL,
            "exited_file": HAPROXY_EXITED,
            "script_user": lb.vrrp.script_user,
        },
    });
    let kc = env
        .get_template("keepalived.conf")?
        .render(minijinja::value::Serde(&ctx))?;
    out.push(RenderedFile {
        secret: lb.vrrp.version == 2 && lb.vrrp.auth_pass.is_some(),
        ..file(
            h,
            Component::LoadBalancer,
            "/etc/keepalived/keepalived.conf",
            0o600,
            kc,
            &["keepalived"],
        )
    });
    for name in ["check_haproxy.sh", "check_apiserver.sh"] {
        let script = env
            .get_template(name)?
            .render(minijinja::value::Serde(&ctx))?;
        out.push(file(
            h,
            Component::LoadBalancer,
            &format!("/etc/keepalived/{name}"),
            0o755,
            script,
            &["keepalived"],
        ));
    }
    let mut sysctl = format!(
        "# {HEADER}\n# HAProxy binds the VIP before keepalived has put it on this host.\nnet.ipv4.ip_nonlocal_bind = 1\n"
    );
    if lb.vip.is_ipv6() {
        sysctl.push_str("net.ipv6.ip_nonlocal_bind = 1\n");
    }
    out.push(file(
        h,
        Component::Host,
        "/etc/sysctl.d/90-hakube-loadbalancer.conf",
        0o644,
        sysctl,
        &["sysctl"],
    ));
    Ok(())
}

fn etcd(
    c: &Cluster,
    h: &Host,
    env: &Environment<'_>,
    out: &mut Vec<RenderedFile>,
) -> anyhow::Result<()> {
    let e = &c.etcd;
    let ctx = json!({
        "header": HEADER,
        "cluster": c.name,
        "host": host_ctx(h),
        "etcd": {
            "data_dir": e.data_dir,
            "binary": e.binary,
            "peer_url": crate::spec::url("https", h.address, e.peer_port),
            "client_url": crate::spec::url("https", h.address, e.client_port),
            "client_port": e.client_port,
            "metrics_port": crate::spec::ports::ETCD_METRICS_PORT,
            "initial_cluster": c.etcd_initial_cluster(),
            "token": format!("{}-etcd", c.name),
            "heartbeat_ms": e.heartbeat_interval.as_millis() as u64,
            "election_ms": e.election_timeout.as_millis() as u64,
            "quota": e.quota_backend_bytes,
        },
    });
    let envfile = env
        .get_template("etcd.env")?
        .render(minijinja::value::Serde(&ctx))?;
    out.push(file(
        h,
        Component::Etcd,
        "/etc/etcd/etcd.env",
        0o640,
        envfile,
        &["etcd"],
    ));
    let unit = env
        .get_template("etcd.service")?
        .render(minijinja::value::Serde(&ctx))?;
    out.push(file(
        h,
        Component::Etcd,
        "/etc/systemd/system/etcd.service",
        0o644,
        unit,
        &["daemon-reload", "etcd"],
    ));
    Ok(())
}

/// Write `files` under `out/<host>/<path>`. Returns how many files changed. Files that an
/// earlier render wrote and this one no longer does are removed; others are left alone.
pub fn write_tree(files: &[RenderedFile], out: &Path) -> anyhow::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let manifest = out.join(".hakube-render");
    let previous: BTreeSet<PathBuf> = std::fs::read_to_string(&manifest)
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect();
    let mut now = BTreeSet::new();
    let mut changed = 0;
    for f in files {
        let rel = PathBuf::from(&f.host).join(f.path.trim_start_matches('/'));
        let dest = out.join(&rel);
        now.insert(rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let same = std::fs::read(&dest)
            .map(|b| b == f.content.as_bytes())
            .unwrap_or(false);
        if !same {
            // Create restrictive first, so a secret is never briefly world-readable.
            let tmp = dest.with_extension("hakube-tmp");
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut fh = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::io::Write::write_all(&mut fh, f.content.as_bytes())?;
            }
            std::fs::rename(&tmp, &dest)?;
            changed += 1;
        }
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))?;
    }
    for stale in previous.difference(&now) {
        let _ = std::fs::remove_file(out.join(stale));
    }
    let list: Vec<String> = now.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&manifest, list.join("\n") + "\n")?;
    Ok(changed)
}
