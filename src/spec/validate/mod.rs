//! Turns the raw document into a [`Cluster`], collecting every problem on the way. One file per
//! section of the spec; `field` holds the checks they share.

mod etcd;
mod field;
mod hosts;
mod kubernetes;
mod load_balancer;
mod monitoring;
mod networks;
mod pki;

pub(crate) use field::is_dns_name;
pub use field::{did_you_mean, is_dns_label, parse_duration, parse_size};
pub use kubernetes::{DEFAULT_K8S_VERSION, NEWEST_MINOR, OLDEST_MAINTAINED_MINOR, OLDEST_MINOR};

use super::cluster::*;
use super::diag::Diagnostics;
use super::model::{self, Document};
use std::path::Path;

/// Validate `doc`. Returns the cluster when there are no errors; diagnostics always.
pub fn validate(doc: &Document, base_dir: &Path) -> (Option<Cluster>, Diagnostics) {
    let mut d = Diagnostics::default();
    let c = build(doc, base_dir, &mut d);
    if d.has_errors() { (None, d) } else { (c, d) }
}

fn build(doc: &Document, base_dir: &Path, d: &mut Diagnostics) -> Option<Cluster> {
    if doc.api_version != model::API_VERSION {
        d.error(
            "apiVersion",
            format!("unsupported apiVersion {:?}", doc.api_version),
            format!("use `apiVersion: {}`", model::API_VERSION),
        );
    }
    if doc.kind != model::KIND {
        d.error(
            "kind",
            format!("unsupported kind {:?}", doc.kind),
            format!("use `kind: {}`", model::KIND),
        );
    }
    let name = doc.metadata.name.clone();
    if !is_dns_label(&name) {
        d.error(
            "metadata.name",
            format!("{name:?} is not a valid cluster name"),
            "use lowercase letters, digits and '-', at most 63 characters, starting with a letter",
        );
    }
    let s = &doc.spec;

    let networks = networks::networks(&s.networks, d);
    let hosts = hosts::hosts(s, networks.as_ref().map(|n| n.management), d);
    networks::check_overlaps(&s.networks, d);
    super::family::refuse_ipv6(s, d);

    let lbs: Vec<&Host> = hosts.iter().filter(|h| h.roles.loadbalancer).collect();
    let cps: Vec<&Host> = hosts.iter().filter(|h| h.roles.control_plane).collect();
    hosts::check_counts(&hosts, &lbs, &cps, d);

    let kubernetes_pre = kubernetes::version(&s.kubernetes, d);
    let etcd = etcd::etcd(&s.etcd, base_dir, d);
    let lb = load_balancer::load_balancer(
        &s.load_balancer,
        &hosts,
        &lbs,
        networks.as_ref(),
        base_dir,
        &name,
        d,
    );
    let k8s = kubernetes::kubernetes(&s.kubernetes, kubernetes_pre, &name, lb.as_ref(), &cps, d);

    if let (Some(lb), Some(k)) = (&lb, &k8s) {
        super::ports::check(s, &hosts, lb, k, etcd.as_ref(), d);
    }
    super::limits::check(lb.as_ref(), etcd.as_ref(), k8s.as_ref(), d);
    super::grammar::check_document(doc, d);
    let pki = pki::pki(&s.pki, d);
    let monitoring = monitoring::monitoring(&s.monitoring, d);
    let node_os =
        super::node_os::check(&s.kubernetes, k8s.as_ref(), networks.as_ref(), base_dir, d);

    let access = field::one_of(
        d,
        "spec.access",
        s.access.as_deref().unwrap_or("auto"),
        &[
            ("direct", Access::Direct),
            ("ssh", Access::Ssh),
            ("auto", Access::Auto),
        ],
        "access",
        "use direct (probes connect from this machine), ssh (through each host's SSH connection, \
         for hosts behind a bastion) or auto (direct when a control plane answers, else ssh)",
        true,
    );
    Some(Cluster {
        // First: it runs before the `?` of the other fields.
        backup: super::backup::check(doc, base_dir, d)?,
        access: access?,
        name,
        base_dir: base_dir.to_path_buf(),
        hosts,
        networks: networks?,
        lb: lb?,
        etcd: etcd?,
        kubernetes: k8s?,
        node_os: node_os?,
        pki: pki?,
        monitoring: monitoring?,
    })
}
