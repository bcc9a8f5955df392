//! Facts gathered from every host before anything changes, and their checks against the spec.

use crate::spec::{Cluster, Host};
use crate::transport::{self, Transport};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BINARIES: [&str; 11] = [
    "haproxy",
    "keepalived",
    "etcd",
    "etcdctl",
    "curl",
    "kubeadm",
    "kubelet",
    "systemctl",
    "sysctl",
    "containerd",
    "gpg",
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub kernel: String,
    /// Remote clock minus local clock, in milliseconds.
    pub clock_offset_ms: i64,
    pub swap_on: bool,
    /// (interface, address/prefix)
    pub addresses: Vec<(String, String)>,
    /// Binary name -> path, for those found.
    pub binaries: BTreeMap<String, String>,
    pub versions: BTreeMap<String, String>,
    /// Service -> (active, enabled)
    pub services: BTreeMap<String, (bool, bool)>,
    /// etcd's data dir has a member directory.
    pub etcd_data: bool,
    /// kubeadm has run here (init or join).
    pub kubeadm_done: bool,
    /// The CRI socket of the spec answers to a socket test (a runtime is up).
    pub cri_socket: bool,
}

impl Facts {
    /// The interface carrying `addr`, if any.
    pub fn interface_of(&self, addr: &str) -> Option<&str> {
        self.addresses
            .iter()
            .find(|(_, a)| a.split('/').next() == Some(addr))
            .map(|(i, _)| i.as_str())
    }
    pub fn active(&self, svc: &str) -> bool {
        self.services.get(svc).is_some_and(|s| s.0)
    }
    pub fn enabled(&self, svc: &str) -> bool {
        self.services.get(svc).is_some_and(|s| s.1)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What to ask one host: only the versions and services its roles need, since every
/// `systemctl` and `--version` is a process on a host that may be busy.
pub fn facts_script(c: &Cluster, h: &Host) -> String {
    let mut s = String::from(
        "echo \"hostname=$(hostname)\"\n\
         echo \"os=$(. /etc/os-release 2>/dev/null; echo \"$ID $VERSION_ID\")\"\n\
         echo \"arch=$(uname -m)\"\n\
         echo \"kernel=$(uname -r)\"\n\
         echo \"swap=$(tail -n +2 /proc/swaps 2>/dev/null | wc -l)\"\n\
         ip -o addr show 2>/dev/null\n",
    );
    for b in BINARIES {
        s.push_str(&format!(
            "p=$(command -v {b} 2>/dev/null) && echo \"bin.{b}=$p\"\n"
        ));
    }
    let mut services: Vec<&str> = Vec::new();
    if h.roles.loadbalancer {
        s.push_str("haproxy -v 2>/dev/null | head -1 | sed 's/^/ver.haproxy=/'\n");
        s.push_str("keepalived --version 2>&1 | head -1 | sed 's/^/ver.keepalived=/'\n");
        services.extend(["haproxy", "keepalived"]);
        // Installed package versions, only for the pinned ones (compared by the prepare phase).
        for p in c.lb.packages.keys() {
            s.push_str(&format!(
                "v=$(dpkg-query -W -f='${{Version}}' {p} 2>/dev/null) && echo \"ver.pkg-{p}=$v\"\n"
            ));
        }
    }
    if h.roles.control_plane {
        s.push_str(&format!(
            "{} --version 2>/dev/null | head -1 | sed 's/^/ver.etcd=/'\n",
            transport::quote(&c.etcd.binary)
        ));
        services.extend(["etcd", "hakube-lab-apiserver"]);
    }
    if c.kubernetes.bootstrap == crate::spec::Bootstrap::Kubeadm
        && (h.roles.control_plane || h.roles.worker)
    {
        services.extend(["containerd", "kubelet"]);
        let sock = c.kubernetes.cri_socket.trim_start_matches("unix://");
        s.push_str(&format!(
            "[ -S {} ] && echo cri_socket=1\n",
            transport::quote(sock)
        ));
    }
    for svc in services {
        s.push_str(&format!(
            "a=$(systemctl is-active {svc} 2>/dev/null); e=$(systemctl is-enabled {svc} 2>/dev/null); echo \"svc.{svc}=$a $e\"\n"
        ));
    }
    s.push_str(&format!(
        "[ -d {}/member ] && echo etcd_data=1\n",
        transport::quote(&c.etcd.data_dir)
    ));
    s.push_str("[ -f /etc/kubernetes/kubelet.conf ] && echo kubeadm_done=1\n");
    s.push_str("true\n");
    s
}

pub fn parse(text: &str, _unused: i64) -> Facts {
    let mut f = Facts {
        addresses: crate::observe::iface::parse(text)
            .into_iter()
            .map(|a| (a.iface.clone(), a.cidr()))
            .collect(),
        ..Facts::default()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k {
            "hostname" => f.hostname = v.into(),
            "os" => f.os = v.into(),
            "arch" => f.arch = v.into(),
            "kernel" => f.kernel = v.into(),
            "swap" => f.swap_on = v.parse::<u32>().unwrap_or(0) > 0,
            "etcd_data" => f.etcd_data = true,
            "kubeadm_done" => f.kubeadm_done = true,
            "cri_socket" => f.cri_socket = true,
            _ => {
                if let Some(b) = k.strip_prefix("bin.") {
                    f.binaries.insert(b.into(), v.into());
                } else if let Some(b) = k.strip_prefix("ver.") {
                    f.versions.insert(b.into(), v.into());
                } else if let Some(s) = k.strip_prefix("svc.") {
                    let mut it = v.split_whitespace();
                    let active = it.next() == Some("active");
                    let enabled = it.next() == Some("enabled");
                    f.services.insert(s.into(), (active, enabled));
                }
            }
        }
    }
    f
}

pub async fn gather(t: &dyn Transport, c: &Cluster) -> Result<Facts> {
    let h = c
        .host(t.host())
        .ok_or_else(|| anyhow::anyhow!("{} is not in the spec", t.host()))?;
    let script = facts_script(c, h);
    // Two sessions on the one connection: the clock probe need not wait for the facts.
    let (out, offset) = tokio::join!(
        transport::run(t, &script, "gather facts", Duration::from_secs(60)),
        clock_offset(t)
    );
    let mut f = parse(&out?.stdout_str(), 0);
    f.clock_offset_ms = offset?;
    Ok(f)
}

/// The remote clock's offset, from the quicker of two `date` round trips; what the round
/// trip cannot tell apart (half of it) is given to the host's benefit.
async fn clock_offset(t: &dyn Transport) -> Result<i64> {
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..2 {
        let t0 = now_ms();
        let out = transport::run(t, "date +%s%3N", "date", Duration::from_secs(30)).await?;
        let t1 = now_ms();
        let Ok(remote) = out.stdout_str().trim().parse::<i64>() else {
            continue;
        };
        let rtt = t1 - t0;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, remote - (t0 + t1) / 2));
        }
    }
    Ok(match best {
        Some((rtt, off)) if off.abs() > rtt / 2 => off - off.signum() * (rtt / 2),
        _ => 0,
    })
}

/// Everything wrong with the hosts, for all hosts at once.
pub fn check(c: &Cluster, facts: &BTreeMap<String, Facts>) -> Vec<String> {
    let mut problems = Vec::new();
    for h in &c.hosts {
        let Some(f) = facts.get(&h.name) else {
            continue;
        };
        let addr = h.address.to_string();
        match (f.interface_of(&addr), &h.interface) {
            (None, _) => problems.push(format!(
                "{}: address {addr} is not configured on any interface (found: {})\n  help: fix spec.hosts address for {}, or configure the address on the host",
                h.name,
                f.addresses.iter().map(|(i, a)| format!("{i} {a}")).collect::<Vec<_>>().join(", "),
                h.name
            )),
            (Some(found), Some(want)) if found != want => problems.push(format!(
                "{}: address {addr} is on interface {found}, but the spec says {want}\n  help: set interface: {found}, or remove it to use what the host has",
                h.name
            )),
            _ => {}
        }
        if f.clock_offset_ms.abs() > 500 {
            problems.push(format!(
                "{}: clock is {} ms off this machine's (limit 500 ms); etcd and certificates need synchronised clocks\n  help: enable NTP (systemd-timesyncd or chrony) on every host",
                h.name, f.clock_offset_ms
            ));
        }
        needs(h, f, &mut problems, c);
    }
    problems
}

fn needs(h: &Host, f: &Facts, problems: &mut Vec<String>, c: &Cluster) {
    // Load-balancer packages are installed by the prepare phase; these cannot be.
    let mut missing = Vec::new();
    if h.roles.control_plane
        && c.etcd.management == crate::spec::EtcdManagement::Hakube
        && c.etcd.install.is_none()
        && !f.versions.contains_key("etcd")
    {
        problems.push(format!(
            "{}: no etcd binary at {} (spec.etcd.binary)\n  help: install etcd 3.5 there, or point spec.etcd.binary at it",
            h.name, c.etcd.binary
        ));
    }
    if !f.binaries.contains_key("systemctl") {
        missing.push("systemctl");
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{}: missing {}\n  help: apt-get install -y {}",
            h.name,
            missing.join(", "),
            missing
                .iter()
                .map(|m| if *m == "systemctl" { "systemd" } else { m })
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
}
