//! `spec.kubernetes`: the version, bootstrap, certificate SANs and API server flags.

use super::field::{self, is_dns_name};
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use std::collections::HashSet;
use std::net::IpAddr;

/// Oldest Kubernetes minor hakube renders kubeadm configs for.
pub const OLDEST_MINOR: u64 = 29;
/// Newest Kubernetes minor hakube knows (late 2026).
pub const NEWEST_MINOR: u64 = 37;
/// Oldest minor still maintained upstream.
pub const OLDEST_MAINTAINED_MINOR: u64 = 35;
pub const DEFAULT_K8S_VERSION: &str = "v1.37.0";

pub(super) fn version(
    k: &model::Kubernetes,
    d: &mut Diagnostics,
) -> Option<(semver::Version, KubeadmApi)> {
    let raw = k.version.as_deref().unwrap_or(DEFAULT_K8S_VERSION);
    let v = match semver::Version::parse(raw.trim().trim_start_matches('v')) {
        Ok(v) if v.pre.is_empty() && v.build.is_empty() => v,
        _ => {
            let t = raw.trim().trim_start_matches('v');
            let help = match t.split('.').collect::<Vec<_>>()[..] {
                [a, b] if a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok() => {
                    format!("give the patch release too, for example v{a}.{b}.0")
                }
                _ => format!("write it like {DEFAULT_K8S_VERSION}"),
            };
            d.error(
                "spec.kubernetes.version",
                format!("{raw:?} is not a Kubernetes release version"),
                help,
            );
            return None;
        }
    };
    if v.major == 0 || (v.major == 1 && v.minor < OLDEST_MINOR) {
        d.error(
            "spec.kubernetes.version",
            format!("Kubernetes {raw} is older than the oldest version hakube supports (1.{OLDEST_MINOR})"),
            format!("use 1.{OLDEST_MINOR} or newer (1.{OLDEST_MAINTAINED_MINOR}-1.{NEWEST_MINOR} are maintained); upgrade a running cluster one minor at a time"),
        );
        return None;
    }
    if v.major > 1 || v.minor > NEWEST_MINOR {
        d.error(
            "spec.kubernetes.version",
            format!(
                "Kubernetes {raw} is newer than the newest version hakube supports (1.{NEWEST_MINOR})"
            ),
            format!("use a 1.{NEWEST_MINOR} release (for example {DEFAULT_K8S_VERSION}) or older, or upgrade hakube"),
        );
        return None;
    }
    if v.minor < OLDEST_MAINTAINED_MINOR {
        d.warn(
            "spec.kubernetes.version",
            format!("Kubernetes 1.{} is no longer maintained upstream (1.{OLDEST_MAINTAINED_MINOR}-1.{NEWEST_MINOR} are)", v.minor),
            format!("plan an upgrade, one minor version at a time, to 1.{OLDEST_MAINTAINED_MINOR} or newer"),
        );
    }
    let api = if v.minor >= 31 {
        KubeadmApi::V1Beta4
    } else {
        KubeadmApi::V1Beta3
    };
    Some((v, api))
}

pub(super) fn kubernetes(
    k: &model::Kubernetes,
    version: Option<(semver::Version, KubeadmApi)>,
    cluster: &str,
    lb: Option<&LoadBalancer>,
    cps: &[&Host],
    d: &mut Diagnostics,
) -> Option<Kubernetes> {
    let bootstrap = field::one_of(
        d,
        "spec.kubernetes.bootstrap",
        k.bootstrap.as_deref().unwrap_or("kubeadm"),
        &[("kubeadm", Bootstrap::Kubeadm), ("lab", Bootstrap::Lab)],
        "bootstrap",
        "use kubeadm (or lab, in a hakube lab)",
        false,
    );
    // Sets, not list scans: 100 000 SANs must stay linear.
    let mut sans: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut ips: HashSet<IpAddr> = HashSet::new();
    for (i, s) in k.cert_sans.iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(a) => {
                ips.insert(a);
            }
            Err(_) if !is_dns_name(s.trim_start_matches("*.")) => d.error(
                format!("spec.kubernetes.certSANs[{i}]"),
                format!("{s:?} is neither an IP address nor a DNS name"),
                "use an address such as 10.1.1.100 or a name such as k8s-api.company.local",
            ),
            Err(_) => {}
        }
        if seen.insert(s) {
            sans.push(s.clone());
        }
    }
    let mut added = Vec::new();
    let need = lb
        .map(|lb| lb.vip)
        .into_iter()
        .chain(cps.iter().map(|h| h.address));
    for n in need {
        if ips.insert(n) {
            sans.push(n.to_string());
            added.push(n.to_string());
        }
    }
    if !added.is_empty() {
        d.info(
            "spec.kubernetes.certSANs",
            format!("added to the API server certificate SANs: {} (the VIP and every control-plane address)", added.join(", ")),
        );
    }
    for key in k.api_server_extra_args.keys() {
        let path = format!("spec.kubernetes.apiServerExtraArgs.{key}");
        match key.as_str() {
            "advertise-address" => d.error(
                path,
                "advertise-address differs per node and is set by hakube from each host's address",
                "remove it; hakube writes localAPIEndpoint.advertiseAddress for every control plane",
            ),
            "etcd-servers" | "etcd-cafile" | "etcd-certfile" | "etcd-keyfile" => d.error(
                path,
                "the etcd connection is managed by hakube from spec.etcd",
                "remove it",
            ),
            "secure-port" => d.error(path, "the API port is spec.kubernetes.apiServerPort", "set spec.kubernetes.apiServerPort instead"),
            _ => {}
        }
    }
    let mut args = k.api_server_extra_args.clone();
    if args.keys().any(|a| a.starts_with("audit-log-")) && !args.contains_key("audit-policy-file") {
        args.insert(
            "audit-policy-file".into(),
            "/etc/kubernetes/audit-policy.yaml".into(),
        );
        d.info(
            "spec.kubernetes.apiServerExtraArgs",
            "audit logging needs a policy, or kube-apiserver logs nothing: added audit-policy-file with hakube's default policy",
        );
    }
    let (version, kubeadm_api) = version?;
    Some(Kubernetes {
        version,
        kubeadm_api,
        bootstrap: bootstrap?,
        cluster_name: k
            .cluster_name
            .clone()
            .unwrap_or_else(|| cluster.to_string()),
        api_server_port: k.api_server_port.unwrap_or(6443),
        cert_sans: sans,
        api_server_extra_args: args,
        cri_socket: k
            .cri_socket
            .clone()
            .unwrap_or_else(|| "unix:///var/run/containerd/containerd.sock".into()),
    })
}
