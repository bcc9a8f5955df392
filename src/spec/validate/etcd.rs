//! `spec.etcd`.

use super::field::{self, parse_size};
use crate::spec::cluster::*;
use crate::spec::diag::Diagnostics;
use crate::spec::model;
use std::path::Path;

pub(super) fn etcd(e: &model::Etcd, base_dir: &Path, d: &mut Diagnostics) -> Option<Etcd> {
    let install = etcd_install(e, base_dir, d);
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
        binary: match (&e.binary, &install) {
            (Some(b), _) => b.clone(),
            (None, Some(Some(_))) => crate::install::etcd::BINARY.into(),
            (None, _) => "/usr/local/bin/etcd".into(),
        },
        client_port: e.client_port.unwrap_or(2379),
        peer_port: e.peer_port.unwrap_or(2380),
        install: install?,
    })
}

/// `spec.etcd.version` and `source`: both or neither.
fn etcd_install(
    e: &model::Etcd,
    base_dir: &Path,
    d: &mut Diagnostics,
) -> Option<Option<EtcdInstall>> {
    let (raw, src) = match (&e.version, &e.source) {
        (None, None) => return Some(None),
        (Some(_), None) => {
            d.error(
                "spec.etcd.version",
                "a pinned etcd version needs the tarball it comes from",
                "add spec.etcd.source with `path:` (a local etcd-vX.Y.Z-linux-amd64.tar.gz) or `url:`, and its `sha256:`",
            );
            return None;
        }
        (None, Some(_)) => {
            d.error(
                "spec.etcd.source",
                "an etcd source without spec.etcd.version",
                "add spec.etcd.version, for example v3.5.1",
            );
            return None;
        }
        (Some(v), Some(s)) => (v, s),
    };
    let mut ok = true;
    let version = match semver::Version::parse(raw.trim().trim_start_matches('v')) {
        Ok(v) if v.pre.is_empty() && v.build.is_empty() => Some(v),
        _ => {
            d.error(
                "spec.etcd.version",
                format!("{raw:?} is not an etcd release version"),
                "write it like v3.5.1",
            );
            None
        }
    };
    if e.binary.is_some() {
        d.error(
            "spec.etcd.binary",
            "spec.etcd.binary and spec.etcd.version exclude each other: a pinned etcd runs from /opt/hakube/etcd/current/etcd",
            "remove spec.etcd.binary, or remove version and source to run your own binary",
        );
        ok = false;
    }
    let source = match (&src.path, &src.url) {
        (Some(p), None) => Some(EtcdSource::Path(base_dir.join(p))),
        (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {
            Some(EtcdSource::Url(u.clone()))
        }
        (None, Some(u)) => {
            d.error(
                "spec.etcd.source.url",
                format!("{u:?} is not an http(s) URL"),
                "for example https://github.com/etcd-io/etcd/releases/download/v3.5.1/etcd-v3.5.1-linux-amd64.tar.gz",
            );
            None
        }
        _ => {
            d.error(
                "spec.etcd.source",
                "give exactly one of `path` and `url`",
                "path: a tarball next to the spec (air-gapped); url: where the operator machine downloads it",
            );
            None
        }
    };
    let sha = src
        .sha256
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let sha = if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(sha)
    } else {
        d.error(
            "spec.etcd.source.sha256",
            "missing or not a SHA-256 (64 hex digits)",
            "copy it from the release's SHA256SUMS, or run `sha256sum` on the tarball",
        );
        None
    };
    if !ok {
        return None;
    }
    Some(Some(EtcdInstall {
        version: version?,
        source: source?,
        sha256: sha?,
    }))
}
