//! Files `lab up` writes for the operator: the lab's SSH key, known_hosts and ssh_config, and a
//! cluster.yaml for the lab's hosts.

use super::state::{LabPaths, LabState};
use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net};
use std::fs;

/// Create the lab's client key (once) and return its public half.
pub fn client_key(paths: &LabPaths) -> Result<String> {
    let dir = paths.ssh_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = paths.ssh_key();
    if !key.exists() {
        let k = key.to_string_lossy();
        let comment = format!("hakube-lab-{}", paths.name);
        super::net::run(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &k],
        )?;
    }
    let pubkey = key.with_extension("pub");
    fs::read_to_string(&pubkey).with_context(|| format!("cannot read {}", pubkey.display()))
}

/// known_hosts with every host's key under its name and its address.
pub fn write_known_hosts(paths: &LabPaths, st: &LabState) -> Result<()> {
    let mut out = String::new();
    for h in &st.hosts {
        let pubkey = paths
            .host_fs(&h.name)
            .join("etc/ssh/ssh_host_ed25519_key.pub");
        let line = fs::read_to_string(&pubkey)
            .with_context(|| format!("cannot read {}", pubkey.display()))?;
        // "ssh-ed25519 AAAA... root@host": keep type and key.
        let key: Vec<&str> = line.split_whitespace().take(2).collect();
        out.push_str(&format!("{},{} {}\n", h.name, h.address, key.join(" ")));
    }
    fs::write(paths.known_hosts(), out)
        .with_context(|| format!("cannot write {}", paths.known_hosts().display()))
}

/// An ssh_config that reaches every host by name, with strict host-key checking against the
/// lab's own known_hosts.
pub fn write_ssh_config(paths: &LabPaths, st: &LabState) -> Result<()> {
    let mut out = format!(
        "# Written by `hakube lab up` for lab {name}. Use: ssh -F {cfg} HOST\n",
        name = st.name,
        cfg = paths.ssh_config().display()
    );
    for h in &st.hosts {
        out.push_str(&format!("Host {}\n    HostName {}\n", h.name, h.address));
    }
    let patterns: Vec<String> = st
        .hosts
        .iter()
        .flat_map(|h| [h.name.clone(), h.address.to_string()])
        .collect();
    out.push_str(&format!(
        "Host {patterns}\n    User {user}\n    Port 22\n    IdentityFile {key}\n    IdentitiesOnly yes\n    \
         UserKnownHostsFile {kh}\n    GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    \
         PasswordAuthentication no\n    ConnectTimeout 5\n    LogLevel ERROR\n    \
         # Every lab host shares this machine's cores: OpenSSH's default key exchange\n    \
         # (sntrup761x25519) made connecting 100 hosts 4.5 times slower than X25519 alone.\n    \
         KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n",
        patterns = patterns.join(" "),
        user = st.login(),
        key = paths.ssh_key().display(),
        kh = paths.known_hosts().display(),
    ));
    fs::write(paths.ssh_config(), out)
        .with_context(|| format!("cannot write {}", paths.ssh_config().display()))
}

/// Pod and service ranges that do not overlap the lab subnet.
fn cluster_ranges(subnet: Ipv4Net) -> (&'static str, &'static str) {
    let lab = IpNet::V4(subnet);
    let overlaps = |c: &str| {
        let n: IpNet = c.parse().expect("constant CIDR");
        n.contains(&lab.network()) || lab.contains(&n.network())
    };
    let pods = ["10.244.0.0/16", "172.30.0.0/16", "192.168.128.0/17"]
        .into_iter()
        .find(|c| !overlaps(c));
    let services = ["10.96.0.0/12", "172.31.0.0/16", "192.168.0.0/17"]
        .into_iter()
        .find(|c| !overlaps(c));
    (
        pods.unwrap_or("172.30.0.0/16"),
        services.unwrap_or("172.31.0.0/16"),
    )
}

/// The cluster spec for the lab's hosts (`bootstrap: lab`).
pub fn cluster_yaml(paths: &LabPaths, st: &LabState) -> String {
    let (pods, services) = cluster_ranges(st.subnet);
    let mut hosts = String::new();
    for h in &st.hosts {
        hosts.push_str(&format!(
            "    - {{ name: {}, address: {}, roles: [{}] }}\n",
            h.name,
            h.address,
            h.roles.join(", ")
        ));
    }
    let etcd = st.etcd.as_deref().unwrap_or("/usr/local/bin/etcd");
    format!(
        "# Written by `hakube lab up` for lab {name}: {n} hosts on {subnet}, reachable with\n\
         # ssh -F {ssh_config} HOST. Edit freely; `hakube lab up` writes it only when it creates the lab.\n\
         apiVersion: hakube.io/v1alpha1\n\
         kind: Cluster\n\
         metadata:\n  name: {name}\n\
         spec:\n\
         \x20 ssh:\n\
         \x20   user: {user}\n\
         \x20   port: 22\n\
         \x20   configFile: {ssh_config}\n\
         \x20   identityFile: {key}\n\
         \x20   knownHostsFile: {known_hosts}\n\
         \x20 hosts:\n{hosts}\
         \x20 networks:\n\
         \x20   management: {subnet}\n\
         \x20   pods: {pods}\n\
         \x20   services: {services}\n\
         \x20 loadBalancer:\n\
         \x20   vip: {vip}\n\
         \x20   apiPort: 6443\n\
         \x20   healthCheck:\n\
         \x20     type: https\n\
         \x20 etcd:\n\
         \x20   management: hakube\n\
         \x20   binary: {etcd}\n\
         \x20 kubernetes:\n\
         \x20   bootstrap: lab\n",
        name = st.name,
        n = st.hosts.len(),
        subnet = st.subnet,
        ssh_config = paths.ssh_config().display(),
        key = paths.ssh_key().display(),
        known_hosts = paths.known_hosts().display(),
        vip = st.vip,
        user = st.login(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_avoid_the_lab_subnet() {
        assert_eq!(
            cluster_ranges("10.77.0.0/24".parse().unwrap()),
            ("10.244.0.0/16", "10.96.0.0/12")
        );
        assert_eq!(
            cluster_ranges("10.244.3.0/24".parse().unwrap()),
            ("172.30.0.0/16", "10.96.0.0/12")
        );
        assert_eq!(
            cluster_ranges("10.100.0.0/24".parse().unwrap()),
            ("10.244.0.0/16", "172.31.0.0/16")
        );
    }
}
