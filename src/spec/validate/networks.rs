//! `spec.networks`.

use super::field::is_dns_name;
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use ipnet::IpNet;

fn cidr(d: &mut Diagnostics, path: &str, raw: &str) -> Option<IpNet> {
    match raw.trim().parse::<IpNet>() {
        Ok(n) if n.trunc() != n => {
            d.error(
                path,
                format!("{raw} has host bits set"),
                format!("did you mean {}?", n.trunc()),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            d.error(
                path,
                format!("{raw:?} is not a CIDR"),
                "write a network as address/prefix, for example 10.1.1.0/24",
            );
            None
        }
    }
}

pub(super) fn networks(n: &model::Networks, d: &mut Diagnostics) -> Option<Networks> {
    let management = cidr(d, "spec.networks.management", &n.management);
    let pods = cidr(
        d,
        "spec.networks.pods",
        n.pods.as_deref().unwrap_or("10.244.0.0/16"),
    );
    let services = cidr(
        d,
        "spec.networks.services",
        n.services.as_deref().unwrap_or("10.96.0.0/12"),
    );
    let storage = match &n.storage {
        Some(s) => Some(cidr(d, "spec.networks.storage", s)?),
        None => None,
    };
    let dns_domain = n
        .dns_domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    if !is_dns_name(&dns_domain) {
        d.error(
            "spec.networks.dnsDomain",
            format!("{dns_domain:?} is not a DNS domain"),
            "use a name such as cluster.local",
        );
    }
    Some(Networks {
        management: management?,
        pods: pods?,
        services: services?,
        storage,
        dns_domain,
    })
}

pub(super) fn check_overlaps(n: &model::Networks, d: &mut Diagnostics) {
    let list: Vec<(&str, Option<IpNet>)> = vec![
        ("management", n.management.parse().ok()),
        (
            "pods",
            n.pods.as_deref().unwrap_or("10.244.0.0/16").parse().ok(),
        ),
        (
            "services",
            n.services.as_deref().unwrap_or("10.96.0.0/12").parse().ok(),
        ),
        ("storage", n.storage.as_deref().and_then(|s| s.parse().ok())),
    ];
    for i in 0..list.len() {
        for j in i + 1..list.len() {
            if let ((a, Some(na)), (b, Some(nb))) = (list[i], list[j])
                && (na.contains(&nb.network()) || nb.contains(&na.network()))
            {
                d.error(
                    format!("spec.networks.{b}"),
                    format!("the {b} network {nb} overlaps the {a} network {na}"),
                    "give every network its own range; overlapping ranges make routing ambiguous",
                );
            }
        }
    }
}
