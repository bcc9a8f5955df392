//! The lab network: one bridge per lab in the root namespace (holding the subnet's .1), and a
//! veth pair per host whose inner end is `eth0` in the host's network namespace. No default
//! route inside hosts, no NAT, no forwarding: hosts reach each other and the bridge address,
//! nothing else.

use super::state::{HostState, LabState};
use anyhow::{Context, Result, bail};
use ipnet::{IpNet, Ipv4Net};
use std::process::{Command, Stdio};

/// Run `ip ARGS`; the error carries ip's own message.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Run a command and fail with its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Run `ip ARGS` ignoring failure (cleanup of things that may already be gone).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every route destination in the main table except `default`.
pub fn routes() -> Result<Vec<(IpNet, String)>> {
    let out = Command::new("ip")
        .args(["-j", "route", "show"])
        .output()
        .context("cannot run `ip -j route show`")?;
    if !out.status.success() {
        bail!(
            "`ip -j route show` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cannot parse `ip -j route show`")?;
    let mut nets = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let Some(dst) = r.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        let dev = r
            .get("dev")
            .and_then(|d| d.as_str())
            .unwrap_or("?")
            .to_string();
        let net = if dst.contains('/') {
            dst.parse::<IpNet>().ok()
        } else {
            dst.parse::<std::net::IpAddr>().ok().map(IpNet::from)
        };
        if let Some(n) = net {
            nets.push((n, dev));
        }
    }
    Ok(nets)
}

/// Refuse a subnet that overlaps an existing route (another lab's bridge included).
pub fn check_subnet_free(subnet: Ipv4Net, lab: &str) -> Result<()> {
    let ours = IpNet::V4(subnet);
    for (net, dev) in routes()? {
        if net.contains(&ours.network()) || ours.contains(&net.network()) {
            bail!(
                "the lab subnet {subnet} collides with the route {net} on {dev}\n  help: pick a free range with `hakube lab up --name {lab} --subnet 10.X.Y.0/24`"
            );
        }
    }
    Ok(())
}

fn dir_names(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the network namespaces known to `ip netns`.
pub fn netns_names() -> Vec<String> {
    dir_names("/run/netns")
}

/// Names of the links in the root namespace.
pub fn link_names() -> Vec<String> {
    dir_names("/sys/class/net")
}

/// Create the lab bridge with the subnet's .1 address. Multicast snooping is off so VRRP
/// adverts (224.0.0.18, IP protocol 112) always reach every port; STP is off so ports forward
/// at once.
pub fn create_bridge(st: &LabState) -> Result<()> {
    let addr = format!("{}/{}", st.gateway(), st.subnet.prefix_len());
    ip(&[
        "link",
        "add",
        &st.bridge,
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    ip(&[
        "link",
        "set",
        &st.bridge,
        "alias",
        &format!("hakube lab {}", st.name),
    ])?;
    ip(&["addr", "add", &addr, "dev", &st.bridge])?;
    ip(&["link", "set", &st.bridge, "up"])?;
    Ok(())
}

/// Create the host's network namespace.
pub fn create_netns(h: &HostState) -> Result<()> {
    ip(&["netns", "add", &h.netns])
}

/// Wire the host into the bridge and give it its address. LB hosts get
/// `net.ipv4.ip_nonlocal_bind=1` (a per-namespace sysctl) so HAProxy can bind the VIP before
/// keepalived holds it.
pub fn wire_host(st: &LabState, h: &HostState) -> Result<()> {
    ip(&[
        "link", "add", &h.veth, "type", "veth", "peer", "name", "eth0", "netns", &h.netns,
    ])?;
    ip(&[
        "link",
        "set",
        &h.veth,
        "alias",
        &format!("hakube lab {} {}", st.name, h.name),
    ])?;
    ip(&["link", "set", &h.veth, "master", &st.bridge, "up"])?;
    let addr = format!("{}/{}", h.address, st.subnet.prefix_len());
    let ns = h.netns.as_str();
    ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    if h.is_lb() {
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_nonlocal_bind=1",
            ],
        )?;
    }
    Ok(())
}

/// nftables table that drops a partitioned host's traffic (inside its own namespace, so the
/// root namespace's firewall is never touched).
const PARTITION_TABLE: &str = "hakube_lab_partition";

/// Drop every frame in and out of the host's `eth0`: loopback still works and the link stays
/// up, so this is a partition, not a cable pull (established TCP connections stall rather than
/// reset). It filters at the device (nftables netdev ingress/egress), because keepalived sends
/// its gratuitous ARPs on a packet socket that the inet and arp hooks never see: a partitioned
/// VIP holder would otherwise still re-announce the VIP and pull clients to itself. Kernels
/// before 5.16 have no egress hook; there the inet and arp tables are used instead.
pub fn partition(h: &HostState) -> Result<()> {
    let device = format!(
        "table netdev {PARTITION_TABLE} {{\n\
         chain ingress {{ type filter hook ingress device \"eth0\" priority -500; policy drop; }}\n\
         chain egress {{ type filter hook egress device \"eth0\" priority -500; policy drop; }}\n\
         }}\n"
    );
    let stack = format!(
        "table inet {PARTITION_TABLE} {{\n\
         chain input {{ type filter hook input priority -300; policy drop; iif \"lo\" accept; }}\n\
         chain output {{ type filter hook output priority -300; policy drop; oif \"lo\" accept; }}\n\
         }}\n\
         table arp {PARTITION_TABLE} {{\n\
         chain input {{ type filter hook input priority 0; policy drop; }}\n\
         chain output {{ type filter hook output priority 0; policy drop; }}\n\
         }}\n"
    );
    heal(h);
    nft(h, &device).or_else(|e| nft(h, &stack).map_err(|e2| e2.context(format!("{e:#}"))))
}

fn nft(h: &HostState, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &h.netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ip netns exec ... nft`\n  help: install nftables (apt-get install nftables)")?;
    use std::io::Write;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .context("cannot send the rules to nft")?;
    }
    let out = child.wait_with_output().context("nft did not finish")?;
    if !out.status.success() {
        bail!(
            "nft refused the partition rules on {}: {}",
            h.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Remove the partition tables (if any).
pub fn heal(h: &HostState) {
    for family in ["netdev", "inet", "arp"] {
        nft_table(h, "delete", family);
    }
}

/// Whether the host is partitioned right now.
pub fn is_partitioned(h: &HostState) -> bool {
    ["netdev", "inet"]
        .iter()
        .any(|family| nft_table(h, "list", family))
}

/// `nft VERB table FAMILY hakube_lab_partition` inside the host; whether it succeeded.
fn nft_table(h: &HostState, verb: &str, family: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.netns,
            "nft",
            verb,
            "table",
            family,
            PARTITION_TABLE,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Delay every packet the host sends by `ms` (0 removes the delay). Needs sch_netem.
pub fn delay(h: &HostState, ms: u32) -> Result<()> {
    if ms == 0 {
        ip_quiet(&[
            "netns", "exec", &h.netns, "tc", "qdisc", "del", "dev", "eth0", "root",
        ]);
        return Ok(());
    }
    let out = Command::new("ip")
        .args([
            "netns", "exec", &h.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
            "delay",
        ])
        .arg(format!("{ms}ms"))
        .output()
        .context("cannot run tc")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Specified qdisc kind is unknown")
            || err.contains("No such file")
            || err.contains("Unknown qdisc")
        {
            bail!(
                "this kernel has no netem queueing discipline (module sch_netem, CONFIG_NET_SCH_NETEM), so the lab cannot add delay\n  help: try `modprobe sch_netem`; if the module does not exist, use a kernel built with it (partition and heal still work)"
            );
        }
        bail!(
            "tc could not add {ms} ms of delay on {}: {}",
            h.name,
            err.trim()
        );
    }
    Ok(())
}
