//! Where a lab lives on disk, how its kernel objects are named, and its recorded state.
//!
//! Names are derived from the lab name alone, so `lab down` can find everything even when
//! `lab up` was killed before it recorded anything: network namespaces are
//! `hakube-lab.<lab>.<host>`, links start with `hkl<id>` (`<id>` = 6 hex digits of the
//! SHA-256 of the lab name; interface names are limited to 15 bytes).

use super::proc::ProcRef;
use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// All labs live below this folder.
pub const LAB_ROOT: &str = "/var/lib/hakube-lab";

/// The folders every host gets privately: bind mounts from the host's state folder.
pub const PRIVATE_DIRS: &[&str] = &[
    "etc/haproxy",
    "etc/keepalived",
    "etc/etcd",
    "etc/kubernetes",
    "etc/hakube",
    "etc/sysctl.d",
    "etc/modules-load.d",
    "etc/systemd/system",
    "etc/ssh",
    "var/lib/etcd",
    "var/lib/hakube",
    // Pinned installs (`/opt/hakube/etcd/vX.Y.Z`): each host has its own, as on real hosts.
    "opt/hakube",
    "run",
    "tmp",
    // root's home: a host must not run this machine's shell start-up files (a `.bashrc` that
    // starts pyenv costs every SSH session a third of a second of CPU).
    "root",
];

/// Validate a lab name: a DNS label of at most 32 characters.
pub fn check_name(name: &str) -> Result<()> {
    if !crate::spec::validate::is_dns_label(name) || name.len() > 32 {
        bail!(
            "{name:?} is not a valid lab name\n  help: use lowercase letters, digits and '-', starting with a letter, at most 32 characters"
        );
    }
    Ok(())
}

fn digest(name: &str) -> [u8; 32] {
    Sha256::digest(name.as_bytes()).into()
}

/// Short id used in link names.
pub fn lab_id(name: &str) -> String {
    hex::encode(&digest(name)[..3])
}

/// The default subnet: 10.77.0.0/24 for the lab `default`, else 10.77.N.0/24 with N from the name.
pub fn default_subnet(name: &str) -> Ipv4Net {
    let third = if name == "default" {
        0
    } else {
        let d = digest(name);
        1 + (u16::from_be_bytes([d[0], d[1]]) % 254) as u8
    };
    Ipv4Net::new(Ipv4Addr::new(10, 77, third, 0), 24).expect("prefix 24 is valid")
}

/// Paths of one lab.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub name: String,
    pub dir: PathBuf,
}

impl LabPaths {
    pub fn new(name: &str) -> LabPaths {
        LabPaths {
            name: name.to_string(),
            dir: Path::new(LAB_ROOT).join(name),
        }
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        Path::new(LAB_ROOT).join(format!("{}.lock", self.name))
    }
    /// The host's state folder.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host)
    }
    /// The host's private file tree: `fs/etc/haproxy` is the host's `/etc/haproxy`, and so on.
    pub fn host_fs(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("fs")
    }
    /// Holds `systemctl` (a link to the hakube binary); first in PATH on every host.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn ssh_dir(&self) -> PathBuf {
        self.dir.join("ssh")
    }
    pub fn ssh_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }
    pub fn cluster_yaml(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }
    /// PATH on lab hosts: the lab's bin folder first, then the usual system folders.
    pub fn host_path_env(&self) -> String {
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.bin_dir().display()
        )
    }
}

/// One planned or created host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostState {
    pub name: String,
    pub address: Ipv4Addr,
    pub roles: Vec<String>,
    pub netns: String,
    /// Root-side end of the host's veth pair (the host side is `eth0` inside the netns).
    pub veth: String,
    #[serde(default)]
    pub netns_inode: Option<u64>,
    #[serde(default)]
    pub mnt_inode: Option<u64>,
    /// The process that holds the host's mount and UTS namespaces.
    #[serde(default)]
    pub holder: Option<ProcRef>,
    #[serde(default)]
    pub sshd: Option<ProcRef>,
}

impl HostState {
    pub fn is_lb(&self) -> bool {
        self.roles.iter().any(|r| r == "loadbalancer")
    }
}

/// What `lab up` recorded. Written before each thing is created, so that `down` can undo a
/// half-finished `up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub name: String,
    pub id: String,
    pub subnet: Ipv4Net,
    pub bridge: String,
    pub vip: Ipv4Addr,
    /// `creating` while `lab up` runs, `up` when it finished.
    pub phase: String,
    pub hakube: PathBuf,
    pub etcd: Option<String>,
    pub hosts: Vec<HostState>,
    /// Prometheus and the exporter (`lab up --monitoring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<super::monitoring::MonitoringState>,
    /// The non-root login user (`lab up --user`); root logs in when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<super::user::LabUser>,
}

impl LabState {
    pub fn load(paths: &LabPaths) -> Result<Option<LabState>> {
        let f = paths.state_file();
        match std::fs::read_to_string(&f) {
            Ok(s) => Ok(Some(serde_json::from_str(&s).with_context(|| {
                format!(
                    "the lab state {} is damaged\n  help: run `hakube lab down --name {}` to clean up by name",
                    f.display(),
                    paths.name
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", f.display())),
        }
    }

    /// Load a lab that must exist.
    pub fn require(paths: &LabPaths) -> Result<LabState> {
        Self::load(paths)?.with_context(|| {
            format!(
                "there is no lab named {:?} (no {})\n  help: start it with `hakube lab up --name {}`",
                paths.name,
                paths.state_file().display(),
                paths.name
            )
        })
    }

    /// Write atomically (temp file + rename), so a kill never leaves half a file.
    pub fn save(&self, paths: &LabPaths) -> Result<()> {
        let f = paths.state_file();
        let tmp = f.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &f).with_context(|| format!("cannot write {}", f.display()))?;
        Ok(())
    }

    pub fn host(&self, name: &str) -> Result<&HostState> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            format!(
                "lab {:?} has no host {name:?}\n  help: its hosts are {}",
                self.name,
                self.hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The user hakube logs in as: the lab's user, or root.
    pub fn login(&self) -> &str {
        self.user.as_ref().map_or("root", |u| u.name.as_str())
    }

    pub fn gateway(&self) -> Ipv4Addr {
        nth(self.subnet, 1)
    }
}

/// The `n`th address of a subnet.
pub fn nth(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// How many hosts of each role.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub lbs: u32,
    pub control_planes: u32,
    pub workers: u32,
}

/// Host names and addresses, in the runbook's style: lbN at .11+, masterN at .101+ (the VIP is
/// .100), workerN at .201+, running on past .254 in a subnet larger than a /24 (a /23 holds 310
/// workers: a 100-host lab).
pub fn plan_hosts(lab: &str, t: Topology, subnet: Ipv4Net) -> Result<Vec<HostState>> {
    if subnet.prefix_len() > 24 {
        bail!(
            "the lab subnet {subnet} is too small\n  help: use a /24 or larger, for example 10.77.0.0/24"
        );
    }
    // Every address but the network's and the broadcast's, from .201 on.
    let worker_room = (1u32 << (32 - u32::from(subnet.prefix_len()))).saturating_sub(202);
    let groups: [(&str, &str, u32, u32, u32); 3] = [
        ("lb", "loadbalancer", t.lbs, 11, 89),
        ("master", "control-plane", t.control_planes, 101, 99),
        ("worker", "worker", t.workers, 201, worker_room),
    ];
    let id = lab_id(lab);
    let mut hosts = Vec::new();
    for (prefix, role, count, first, max) in groups {
        if count > max {
            bail!(
                "at most {max} hosts with the role {role} fit the lab's address plan in {subnet} (asked for {count}){}",
                if role == "worker" {
                    "\n  help: a larger subnet holds more workers, for example --subnet 10.77.0.0/23 (310)"
                } else {
                    ""
                }
            );
        }
        for i in 1..=count {
            let name = format!("{prefix}{i}");
            let index = hosts.len();
            hosts.push(HostState {
                address: nth(subnet, first + i - 1),
                roles: vec![role.to_string()],
                netns: format!("hakube-lab.{lab}.{name}"),
                veth: format!("hkl{id}v{index}"),
                netns_inode: None,
                mnt_inode: None,
                holder: None,
                sshd: None,
                name,
            });
        }
    }
    if hosts.is_empty() {
        bail!("a lab needs at least one host");
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_gets_the_documented_subnet_and_others_differ() {
        assert_eq!(default_subnet("default").to_string(), "10.77.0.0/24");
        let other = default_subnet("second");
        assert_ne!(other, default_subnet("default"));
        assert_eq!(other, default_subnet("second"));
    }

    #[test]
    fn workers_run_on_past_the_first_24_in_a_larger_subnet() {
        let t = |workers| Topology {
            lbs: 2,
            control_planes: 5,
            workers,
        };
        let e = plan_hosts("big", t(55), "10.9.8.0/24".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 54") && e.contains("/23"), "{e}");
        let hosts = plan_hosts("big", t(93), "10.9.8.0/23".parse().unwrap()).unwrap();
        assert_eq!(hosts.len(), 100);
        let at = |n: &str| {
            hosts
                .iter()
                .find(|h| h.name == n)
                .map(|h| h.address.to_string())
        };
        assert_eq!(at("worker54").as_deref(), Some("10.9.8.254"));
        assert_eq!(at("worker55").as_deref(), Some("10.9.8.255"));
        assert_eq!(at("worker56").as_deref(), Some("10.9.9.0"));
        assert_eq!(at("worker93").as_deref(), Some("10.9.9.37"));
        assert!(plan_hosts("big", t(310), "10.9.8.0/23".parse().unwrap()).is_ok());
        assert!(plan_hosts("big", t(311), "10.9.8.0/23".parse().unwrap()).is_err());
    }

    #[test]
    fn runbook_shape_and_short_link_names() {
        let t = Topology {
            lbs: 2,
            control_planes: 3,
            workers: 2,
        };
        let hosts = plan_hosts(
            "a-rather-long-lab-name-of-32-chr",
            t,
            "10.9.8.0/24".parse().unwrap(),
        )
        .unwrap();
        let names: Vec<_> = hosts
            .iter()
            .map(|h| (h.name.as_str(), h.address.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("lb1", "10.9.8.11"),
                ("lb2", "10.9.8.12"),
                ("master1", "10.9.8.101"),
                ("master2", "10.9.8.102"),
                ("master3", "10.9.8.103"),
                ("worker1", "10.9.8.201"),
                ("worker2", "10.9.8.202")
            ]
            .map(|(a, b)| (a, b.to_string()))
        );
        assert!(hosts.iter().all(|h| h.veth.len() <= 15));
        assert!(
            plan_hosts(
                "x",
                Topology {
                    lbs: 0,
                    control_planes: 0,
                    workers: 55
                },
                "10.0.0.0/24".parse().unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("default").is_ok());
        assert!(check_name("Bad_Name").is_err());
        assert!(check_name("").is_err());
    }
}
