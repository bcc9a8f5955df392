//! Address families: hakube supports IPv4 only, and says so field by field.
//!
//! IPv6 would need more than brackets in URLs (which `render` already writes): kubeadm's
//! preflight wants `net.ipv6.conf.default.forwarding`, keepalived runs IPv6 instances as VRRPv3
//! only, pods and services need networks of the hosts' family (or explicit dual stack, which the
//! spec cannot express), and `apply`, `status`, `drill` and the lab (IPv4 subnets only) have
//! never run over it. Half of that would be worse than a clear refusal. The storage network and
//! certSANs are not refused: hakube renders nothing from the first, and an IPv6 SAN only names
//! the API server.

use super::diag::Diagnostics;
use super::model;
use ipnet::IpNet;
use std::net::IpAddr;

const IPV4_ONLY: &str = "hakube supports IPv4 only";

/// One error per field that holds an IPv6 address or network.
pub fn refuse_ipv6(s: &model::Spec, d: &mut Diagnostics) {
    let net = |raw: &str| raw.trim().parse::<IpNet>().ok();
    let management = net(&s.networks.management);
    let hosts_v4 = management.is_none_or(|m| m.addr().is_ipv4());
    if let Some(m @ IpNet::V6(_)) = management {
        d.error(
            "spec.networks.management",
            format!("the management network {m} is IPv6; {IPV4_ONLY}"),
            "use an IPv4 management network, for example 10.1.1.0/24 (IPv6 needs VRRPv3 over IPv6, kubeadm's IPv6 forwarding and IPv6 pod and service networks, which hakube does not render yet)",
        );
    }
    for (field, raw, example) in [
        ("pods", &s.networks.pods, "10.244.0.0/16"),
        ("services", &s.networks.services, "10.96.0.0/12"),
    ] {
        if let Some(n @ IpNet::V6(_)) = raw.as_deref().and_then(net) {
            let why = if hosts_v4 {
                "the hosts are IPv4, and dual stack is not supported"
            } else {
                IPV4_ONLY
            };
            d.error(
                format!("spec.networks.{field}"),
                format!("the {field} network {n} is IPv6, but {why}"),
                format!("use an IPv4 network such as {example} (the default), or leave it out"),
            );
        }
    }
    for (i, h) in s.hosts.iter().enumerate() {
        if let Ok(a @ IpAddr::V6(_)) = h.address.trim().parse::<IpAddr>() {
            d.error(
                format!("spec.hosts[{i}].address"),
                format!("host {} has the IPv6 address {a}; {IPV4_ONLY}", h.name),
                "give the host its IPv4 management address",
            );
        }
    }
    if let Ok(v @ IpAddr::V6(_)) = s.load_balancer.vip.trim().parse::<IpAddr>() {
        d.error(
            "spec.loadBalancer.vip",
            format!("the VIP {v} is IPv6; {IPV4_ONLY}"),
            "pick a free IPv4 address in the management network, for example 10.1.1.100",
        );
    }
}
