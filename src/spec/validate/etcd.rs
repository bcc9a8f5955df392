//! `spec.etcd`.

use super::field::{self, parse_size};
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;

pub(super) fn etcd(e: &model::Etcd, d: &mut Diagnostics) -> Option<Etcd> {
    let management = field::one_of(
        d,
        "spec.etcd.management",
        e.management.as_deref().unwrap_or("hakube"),
        &[
            ("hakube", EtcdManagement::Hakube),
            ("kubeadm", EtcdManagement::Kubeadm),
        ],
        "etcd management",
        "use hakube (a systemd service with hakube's PKI) or kubeadm (static pods)",
        true,
    );
    let hb = field::positive_duration(
        d,
        "spec.etcd.heartbeatInterval",
        e.heartbeat_interval.as_deref(),
        "100ms",
    );
    let el = field::positive_duration(
        d,
        "spec.etcd.electionTimeout",
        e.election_timeout.as_deref(),
        "1000ms",
    );
    if let (Some(h), Some(el)) = (hb, el)
        && el < h * 5
    {
        d.error(
            "spec.etcd.electionTimeout",
            format!(
                "election timeout {} is less than 5 x the heartbeat {}; etcd refuses to start",
                humantime::format_duration(el),
                humantime::format_duration(h)
            ),
            "keep the election timeout at about 10 x the heartbeat interval",
        );
    }
    let quota = match parse_size(e.quota_backend_bytes.as_deref().unwrap_or("2GiB")) {
        Ok(q) => {
            if q > 8 << 30 {
                d.warn(
                    "spec.etcd.quotaBackendBytes",
                    "etcd suggests at most 8GiB; larger databases make snapshots, defrags and restores slow",
                    "keep the quota at 8GiB or less",
                );
            }
            if q < 16 << 20 {
                d.warn(
                    "spec.etcd.quotaBackendBytes",
                    "a quota under 16MiB fills quickly and raises NOSPACE",
                    "use 2GiB for production",
                );
            }
            Some(q)
        }
        Err(err) => {
            d.error(
                "spec.etcd.quotaBackendBytes",
                err,
                "write it like 2GiB or 8GiB",
            );
            None
        }
    };
    Some(Etcd {
        management: management?,
        heartbeat_interval: hb?,
        election_timeout: el?,
        quota_backend_bytes: quota?,
        data_dir: e.data_dir.clone().unwrap_or_else(|| "/var/lib/etcd".into()),
        binary: e
            .binary
            .clone()
            .unwrap_or_else(|| "/usr/local/bin/etcd".into()),
        client_port: e.client_port.unwrap_or(2379),
        peer_port: e.peer_port.unwrap_or(2380),
    })
}
