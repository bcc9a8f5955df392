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
    /// The scheduled-backup timer's unit file exists (control planes).
    pub backup_timer: bool,
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
        if c.etcd.management == crate::spec::EtcdManagement::Hakube {
            use crate::render::backup::{TIMER, TIMER_PATH};
            services.push(TIMER);
            s.push_str(&format!("[ -e {TIMER_PATH} ] && echo backup_timer=1\n"));
        }
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
            "backup_timer" => f.backup_timer = true,
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

/// Between the facts and the checksums in the output of [`gather_script`].
const SUMS: &str = "--- hakube sums";

/// The one script apply runs on a host before the first phase: the remote clock at its start
/// and end (a clock probe needs no round trip of its own), the facts, then the checksum of every
/// file any phase may sync (`(path, stamped)`, see [`transport::hash_lines`]).
pub fn gather_script(c: &Cluster, h: &Host, files: &[(&str, bool)]) -> String {
    format!(
        "echo \"clock0=$(date +%s%3N)\"\n{facts}echo '{SUMS}'\n{sums}echo \"clock1=$(date +%s%3N)\"\n",
        facts = facts_script(c, h),
        sums = transport::hash_lines(files.iter().copied()),
    )
}

/// What [`gather_script`] printed, sent at `t0` and received in full at `t1` (local ms).
pub fn parse_gathered(
    host: &str,
    text: &str,
    n: usize,
    t0: i64,
    t1: i64,
) -> Result<(Facts, Vec<transport::Sum>)> {
    let (head, tail) = text.split_once(&format!("\n{SUMS}\n")).ok_or_else(|| {
        anyhow::anyhow!("{host}: the facts script stopped early (no checksums in its output)")
    })?;
    let mut f = parse(head, 0);
    let value = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<i64>().ok())
    };
    let sums: String = tail
        .lines()
        .filter(|l| !l.starts_with("clock1="))
        .map(|l| format!("{l}\n"))
        .collect();
    let sums = transport::parse_sums(host, &sums, n)?;
    if let (Some(d0), Some(d1)) = (value(head, "clock0="), value(tail, "clock1=")) {
        f.clock_offset_ms = clock_offset(t0, t1, d0, d1);
    }
    Ok((f, sums))
}

/// The remote clock's offset from one script that read it at its start (`d0`) and end (`d1`):
/// `d0` was read at some local time in `[t0, t1 - (d1 - d0)]`; what that window cannot tell
/// apart (half of it) is given to the host's benefit.
fn clock_offset(t0: i64, t1: i64, d0: i64, d1: i64) -> i64 {
    let window = ((t1 - t0) - (d1 - d0).max(0)).max(0);
    let off = d0 - (t0 + window / 2);
    if off.abs() > window / 2 {
        off - off.signum() * (window / 2)
    } else {
        0
    }
}

/// Facts, the clock offset and the checksums of `files` (`(path, stamped)`) from one host, in
/// one round trip.
pub async fn gather(
    t: &dyn Transport,
    c: &Cluster,
    files: &[(&str, bool)],
) -> std::result::Result<(Facts, Vec<transport::Sum>), GatherError> {
    let h = c
        .host(t.host())
        .ok_or_else(|| anyhow::anyhow!("{} is not in the spec", t.host()))?;
    let script = gather_script(c, h, files);
    let t0 = now_ms();
    // Long enough to hash a program in full on a busy host (the first run after its stamp).
    let out = transport::run(
        t,
        &script,
        "gather facts and checksums",
        Duration::from_secs(120),
    )
    .await
    .map_err(GatherError::Transport)?;
    let t1 = now_ms();
    Ok(parse_gathered(
        t.host(),
        &out.stdout_str(),
        files.len(),
        t0,
        t1,
    )?)
}

/// Why a host's facts could not be gathered; a refused sudo is told apart, so that every host
/// that refuses is reported once, together.
#[derive(Debug)]
pub enum GatherError {
    Transport(transport::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for GatherError {
    fn from(e: anyhow::Error) -> Self {
        GatherError::Other(e)
    }
}

impl std::fmt::Display for GatherError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatherError::Transport(e) => write!(f, "{e}"),
            GatherError::Other(e) => write!(f, "{e:#}"),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_script_gives_facts_checksums_and_the_clock() {
        let h = "c".repeat(64);
        let text = format!(
            "clock0=1000500\nhostname=lb1\nbin.systemctl=/bin/systemctl\n\
             2: eth0    inet 10.1.1.11/24 brd 10.1.1.255 scope global eth0\\       valid_lft forever\n\
             svc.haproxy=active enabled\n{SUMS}\n{h}\n-\n{h} hashed 5:6:7.8\nclock1=1000520\n"
        );
        let (f, sums) = parse_gathered("lb1", &text, 3, 1000000, 1000100).expect("parse");
        assert_eq!(f.hostname, "lb1");
        assert!(f.active("haproxy") && f.binaries.contains_key("systemctl"));
        assert_eq!(f.interface_of("10.1.1.11"), Some("eth0"));
        assert_eq!(
            sums,
            vec![
                transport::Sum::Hash(h.clone()),
                transport::Sum::Missing,
                transport::Sum::Hashed {
                    hash: h,
                    stat: "5:6:7.8".into()
                }
            ]
        );
        // 100 ms there and back, 20 of them in the script: d0 was read within [t0, t0+80], so
        // the host is 420 to 500 ms ahead; it gets the benefit.
        assert_eq!(f.clock_offset_ms, 420);
        assert!(parse_gathered("lb1", "clock0=1\nhostname=x\n", 0, 0, 1).is_err());
    }

    #[test]
    fn the_clock_window_goes_to_the_hosts_benefit() {
        // In sync, seen through a slow round trip: no offset.
        assert_eq!(clock_offset(0, 400, 150, 160), 0);
        // Read 1 s ahead within a 100 ms window: 900 to 1000 ms ahead (or behind).
        assert_eq!(clock_offset(0, 100, 1000, 1000), 900);
        assert_eq!(clock_offset(0, 100, -1000, -1000), -1000);
    }
}
