//! The files apply wants on each host: everything `render` produces, plus certificates from the
//! local PKI and, with `bootstrap: lab`, the lab API server.

use crate::apply::ops::ETCD_TLS;
use crate::pki::Usage;
use crate::render::{self, Component, RenderedFile};
use crate::spec::{Bootstrap, Cluster, EtcdManagement, Host};
use crate::state::{self, Leaf, State};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const LAB_APISERVER_BIN: &str = "/var/lib/hakube/bin/hakube-lab-apiserver";
pub const LAB_APISERVER_UNIT: &str = "/etc/systemd/system/hakube-lab-apiserver.service";
pub const LAB_PKI: &str = "/etc/hakube/lab-apiserver";

fn secret(
    h: &Host,
    component: Component,
    path: &str,
    content: String,
    services: &[&str],
) -> RenderedFile {
    RenderedFile {
        host: h.name.clone(),
        component,
        path: path.into(),
        mode: 0o600,
        content,
        secret: true,
        services: services.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn public(
    h: &Host,
    component: Component,
    path: &str,
    content: String,
    services: &[&str],
) -> RenderedFile {
    RenderedFile {
        mode: 0o644,
        secret: false,
        ..secret(h, component, path, content, services)
    }
}

/// A program installed on hosts: hashed once per run (streamed, never held in memory), written
/// from its file when a host needs it. Every control plane's [`RenderedFile`] shares it and
/// carries the checksum already.
#[derive(Clone)]
pub struct Program {
    pub path: Arc<PathBuf>,
    pub sha256: String,
}

impl Program {
    pub fn load(path: &Path) -> Result<Program> {
        let sha256 = crate::install::sha256_file(path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Program {
            path: Arc::new(path.to_path_buf()),
            sha256,
        })
    }

    /// `f` with this program as its content.
    fn file(&self, f: RenderedFile) -> RenderedFile {
        let hash = std::sync::OnceLock::new();
        let _ = hash.set(self.sha256.clone());
        RenderedFile {
            content: String::new(),
            source: Some(self.path.clone()),
            hash,
            ..f
        }
    }
}

/// Every file for every host. `lab_apiserver` is the stand-in's binary, for `bootstrap: lab`.
pub fn desired(
    c: &Cluster,
    pki: &State,
    lab_apiserver: Option<&Program>,
) -> Result<Vec<RenderedFile>> {
    let secrets = pki.secrets()?;
    let marker = serde_json::to_string_pretty(&pki.marker())? + "\n";
    let mut files: Vec<RenderedFile> = render::render(c, &secrets)?
        .into_iter()
        .filter(|f| f.host != render::CLUSTER_DIR)
        .collect();
    for h in c.control_planes() {
        let name = &h.name;
        let addr = h.address.to_string();
        if c.etcd.management == EtcdManagement::Hakube || c.kubernetes.bootstrap == Bootstrap::Lab {
            files.push(public(
                h,
                Component::Pki,
                state::MARKER_PATH,
                marker.clone(),
                &[],
            ));
        }
        if c.etcd.management == EtcdManagement::Hakube {
            let ca = pki.etcd_ca.cert_pem().to_string();
            let server_sans = vec![
                addr.clone(),
                name.clone(),
                "127.0.0.1".into(),
                "localhost".into(),
            ];
            let Leaf {
                cert_pem: sc,
                key_pem: sk,
            } = pki.leaf(
                &pki.etcd_ca,
                "etcd",
                &format!("{name}-server"),
                name,
                &server_sans,
                Usage::Server,
            )?;
            let Leaf {
                cert_pem: pc,
                key_pem: pk,
            } = pki.leaf(
                &pki.etcd_ca,
                "etcd",
                &format!("{name}-peer"),
                name,
                &[addr.clone(), name.clone()],
                Usage::Peer,
            )?;
            let Leaf {
                cert_pem: ac,
                key_pem: ak,
            } = pki.leaf(
                &pki.etcd_ca,
                "etcd",
                "apiserver-etcd-client",
                "kube-apiserver-etcd-client",
                &[],
                Usage::Client,
            )?;
            files.push(public(
                h,
                Component::Pki,
                "/etc/etcd/pki/ca.crt",
                ca,
                &["etcd"],
            ));
            files.push(public(
                h,
                Component::Pki,
                "/etc/etcd/pki/server.crt",
                sc,
                &[ETCD_TLS],
            ));
            files.push(secret(
                h,
                Component::Pki,
                "/etc/etcd/pki/server.key",
                sk,
                &[ETCD_TLS],
            ));
            files.push(public(
                h,
                Component::Pki,
                "/etc/etcd/pki/peer.crt",
                pc,
                &[ETCD_TLS],
            ));
            files.push(secret(
                h,
                Component::Pki,
                "/etc/etcd/pki/peer.key",
                pk,
                &[ETCD_TLS],
            ));
            files.push(public(
                h,
                Component::Pki,
                "/etc/etcd/pki/apiserver-etcd-client.crt",
                ac,
                &["hakube-lab-apiserver"],
            ));
            files.push(secret(
                h,
                Component::Pki,
                "/etc/etcd/pki/apiserver-etcd-client.key",
                ak,
                &["hakube-lab-apiserver"],
            ));
        }
        if c.kubernetes.bootstrap == Bootstrap::Lab {
            let mut sans = vec![
                addr.clone(),
                name.clone(),
                c.lb.vip.to_string(),
                "127.0.0.1".into(),
                "localhost".into(),
            ];
            for s in &c.kubernetes.cert_sans {
                if !sans.contains(s) {
                    sans.push(s.clone());
                }
            }
            let Leaf {
                cert_pem: cc,
                key_pem: ck,
            } = pki.leaf(
                &pki.cluster_ca,
                "cluster",
                &format!("{name}-apiserver"),
                "kube-apiserver",
                &sans,
                Usage::Server,
            )?;
            let svc = ["hakube-lab-apiserver"];
            files.push(public(
                h,
                Component::Pki,
                &format!("{LAB_PKI}/ca.crt"),
                pki.cluster_ca.cert_pem().to_string(),
                &svc,
            ));
            files.push(public(
                h,
                Component::Pki,
                &format!("{LAB_PKI}/apiserver.crt"),
                cc,
                &svc,
            ));
            files.push(secret(
                h,
                Component::Pki,
                &format!("{LAB_PKI}/apiserver.key"),
                ck,
                &svc,
            ));
            files.push(public(
                h,
                Component::ControlPlane,
                LAB_APISERVER_UNIT,
                lab_unit(c, h),
                &["daemon-reload", "hakube-lab-apiserver"],
            ));
            if let Some(bin) = lab_apiserver {
                // The binary itself; compared by its stamp on the host, see
                // `transport::STAMP_SUFFIX`.
                files.push(bin.file(RenderedFile {
                    mode: 0o755,
                    ..public(
                        h,
                        Component::ControlPlane,
                        LAB_APISERVER_BIN,
                        String::new(),
                        &["hakube-lab-apiserver"],
                    )
                }));
            }
        }
    }
    files.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
    Ok(files)
}

fn lab_unit(c: &Cluster, h: &Host) -> String {
    let endpoint = format!("https://127.0.0.1:{}", c.etcd.client_port);
    format!(
        "# {header}\n\
         [Unit]\n\
         Description=hakube lab API server on {name} (a STAND-IN for kube-apiserver, lab only)\n\
         After=etcd.service\n\n\
         [Service]\n\
         ExecStart={bin} --listen 0.0.0.0:{port} --cert {pki}/apiserver.crt --key {pki}/apiserver.key \
         --etcd-endpoints {endpoint} --etcd-cafile /etc/etcd/pki/ca.crt \
         --etcd-certfile /etc/etcd/pki/apiserver-etcd-client.crt --etcd-keyfile /etc/etcd/pki/apiserver-etcd-client.key \
         --kubernetes-version v{version} --shutdown-delay {delay}ms\n\
         Restart=always\n\
         RestartSec=1s\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        header = render::HEADER,
        name = h.name,
        bin = LAB_APISERVER_BIN,
        port = c.kubernetes.api_server_port,
        pki = LAB_PKI,
        version = c.kubernetes.version,
        delay = c.lb.health_check.shutdown_delay().as_millis(),
    )
}
