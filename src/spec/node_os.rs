//! `spec.kubernetes.{packages, containerRuntime, cni}`: what a bare Debian or Ubuntu host needs
//! before `kubeadm init` can work (the Kubernetes apt repository and its pinned key, containerd,
//! a pod network), checked once here so that apply only carries the results out.

use super::cluster::{Bootstrap, Kubernetes, Networks};
use super::diag::Diagnostics;
use super::model;
use serde::Serialize;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// The key that signs pkgs.k8s.io ("isv:kubernetes OBS Project"). Pinned: a key fetched over
/// HTTPS is trusted only if its fingerprint is this one (or the spec's, for a mirror).
pub const KUBERNETES_KEY_FINGERPRINT: &str = "DE15B14486CD377B9E876E1A234654DA9A296436";
pub const KEYRING: &str = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg";
pub const SOURCES_LIST: &str = "/etc/apt/sources.list.d/hakube-kubernetes.list";
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const CRICTL_CONFIG: &str = "/etc/crictl.yaml";
pub const CNI_MANIFEST: &str = "/etc/kubernetes/hakube/cni.yaml";

#[derive(Debug, Clone, Serialize)]
pub struct NodeOs {
    /// The apt repository line's URL, ending in `/`.
    pub repository: String,
    pub key_fingerprint: String,
    pub sandbox_image: String,
    pub cni: Option<Cni>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cni {
    pub name: CniName,
    pub version: String,
    pub source: CniSource,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CniName {
    Calico,
    Cilium,
    Flannel,
}

#[derive(Debug, Clone, Serialize)]
pub enum CniSource {
    /// On the operator's machine; checked here and uploaded by apply.
    File(PathBuf),
    /// Downloaded by the first control plane, checked there before use.
    Url(String),
}

/// The pause image kubeadm expects, by Kubernetes minor (`kubeadm config images list`): a
/// different one makes the kubelet and containerd disagree about the sandbox.
pub fn default_sandbox_image(minor: u64) -> &'static str {
    match minor {
        0..=30 => "registry.k8s.io/pause:3.9",
        31..=33 => "registry.k8s.io/pause:3.10",
        _ => "registry.k8s.io/pause:3.10.1",
    }
}

pub fn check(
    k: &model::Kubernetes,
    kube: Option<&Kubernetes>,
    networks: Option<&Networks>,
    base_dir: &Path,
    d: &mut Diagnostics,
) -> Option<NodeOs> {
    let kube = kube?;
    let (major, minor) = (kube.version.major, kube.version.minor);
    let repository = match &k.packages.repository {
        None => format!("https://pkgs.k8s.io/core:/stable:/v{major}.{minor}/deb/"),
        Some(r) => {
            let ok = (r.starts_with("https://") || r.starts_with("http://"))
                && r.ends_with('/')
                && r.chars()
                    .all(|c| c.is_ascii_graphic() && !"'\"`$\\[]".contains(c));
            if !ok {
                d.error(
                    "spec.kubernetes.packages.repository",
                    format!("{r:?} is not a usable apt repository URL"),
                    "give an http(s) URL ending in '/', without quotes, brackets or spaces, for example https://pkgs.k8s.io/core:/stable:/v1.37/deb/",
                );
            }
            if !r.contains(&format!("v{major}.{minor}")) {
                d.warn(
                    "spec.kubernetes.packages.repository",
                    format!("the repository URL does not name v{major}.{minor}, the spec's minor version"),
                    "pkgs.k8s.io has one repository per minor version; make sure the mirror carries this one",
                );
            }
            r.clone()
        }
    };
    let key_fingerprint = match &k.packages.key_fingerprint {
        None => KUBERNETES_KEY_FINGERPRINT.to_string(),
        Some(f) => {
            let f: String = f.chars().filter(|c| !c.is_whitespace()).collect();
            if f.len() != 40 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                d.error(
                    "spec.kubernetes.packages.keyFingerprint",
                    "a key fingerprint is 40 hexadecimal digits",
                    "copy it from `gpg --show-keys Release.key` (spaces are allowed)",
                );
            }
            f.to_ascii_uppercase()
        }
    };
    let sandbox_image = match &k.container_runtime.sandbox_image {
        None => default_sandbox_image(minor).to_string(),
        Some(i) => {
            if i.is_empty()
                || !i
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "./:-_@".contains(c))
            {
                d.error(
                    "spec.kubernetes.containerRuntime.sandboxImage",
                    format!("{i:?} is not an image reference"),
                    "use one such as registry.k8s.io/pause:3.10",
                );
            }
            i.clone()
        }
    };
    let cni = k.cni.as_ref().and_then(|c| cni(c, networks, base_dir, d));
    if kube.bootstrap == Bootstrap::Kubeadm && k.cni.is_none() {
        // A note, not a warning: a pod network may come from elsewhere (GitOps, say).
        d.info(
            "spec.kubernetes.cni",
            "no pod network named: hakube installs none, and every node stays NotReady after kubeadm init until one is applied (name calico, cilium or flannel with its manifest and sha256 to have apply do it)",
        );
    }
    Some(NodeOs {
        repository,
        key_fingerprint,
        sandbox_image,
        cni,
    })
}

fn cni(
    c: &model::Cni,
    networks: Option<&Networks>,
    base_dir: &Path,
    d: &mut Diagnostics,
) -> Option<Cni> {
    let name = match c.name.as_deref() {
        Some("calico") => Some(CniName::Calico),
        Some("cilium") => Some(CniName::Cilium),
        Some("flannel") => Some(CniName::Flannel),
        other => {
            d.error(
                "spec.kubernetes.cni.name",
                match other {
                    Some(o) => format!("unknown pod network {o:?}"),
                    None => "the pod network needs a name".into(),
                },
                "use calico, cilium or flannel",
            );
            None
        }
    };
    let version = match c.version.as_deref() {
        Some(v) if !v.is_empty() => Some(v.to_string()),
        _ => {
            d.error(
                "spec.kubernetes.cni.version",
                "the pod network's version must be pinned",
                "give the version of the manifest, for example v3.28.0",
            );
            None
        }
    };
    let sha256 = match c.sha256.as_deref() {
        Some(s) if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) => {
            Some(s.to_ascii_lowercase())
        }
        _ => {
            d.error(
                "spec.kubernetes.cni.sha256",
                "the manifest's SHA-256 (64 hexadecimal digits) is required",
                "compute it with `sha256sum MANIFEST`",
            );
            None
        }
    };
    let source = match c.manifest.as_deref() {
        Some(u) if u.starts_with("https://") => {
            if !u
                .chars()
                .all(|c| c.is_ascii_graphic() && !"'\"`$\\".contains(c))
            {
                d.error(
                    "spec.kubernetes.cni.manifest",
                    "the URL holds characters a shell would read",
                    "percent-encode them",
                );
            }
            Some(CniSource::Url(u.to_string()))
        }
        Some(p) if !p.contains("://") => {
            let path = base_dir.join(p);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let have = hex::encode(sha2::Sha256::digest(&bytes));
                    if let Some(want) = &sha256
                        && &have != want
                    {
                        d.error(
                            "spec.kubernetes.cni.sha256",
                            format!("{} has SHA-256 {have}, not {want}", path.display()),
                            "if the file is the one you mean, put its checksum in the spec; otherwise fetch it again",
                        );
                    }
                    if let Some(n) = networks {
                        let cidr = n.pods.to_string();
                        if !String::from_utf8_lossy(&bytes).contains(&cidr) {
                            d.error(
                                "spec.kubernetes.cni.manifest",
                                format!("{} does not mention the pod network {cidr} (spec.networks.pods)", path.display()),
                                "set the manifest's pod CIDR (flannel: net-conf.json \"Network\"; calico: CALICO_IPV4POOL_CIDR; cilium: clusterPoolIPv4PodCIDRList) and update the sha256",
                            );
                        }
                    }
                    Some(CniSource::File(path))
                }
                Err(e) => {
                    d.error(
                        "spec.kubernetes.cni.manifest",
                        format!("cannot read {}: {e}", path.display()),
                        "give a path relative to the spec, or an https URL",
                    );
                    None
                }
            }
        }
        _ => {
            d.error(
                "spec.kubernetes.cni.manifest",
                "the manifest must be a local file or an https URL",
                "for example ./calico.yaml or https://raw.githubusercontent.com/projectcalico/calico/v3.28.0/manifests/calico.yaml",
            );
            None
        }
    };
    Some(Cni {
        name: name?,
        version: version?,
        source: source?,
        sha256: sha256?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_image_follows_the_minor() {
        assert_eq!(default_sandbox_image(30), "registry.k8s.io/pause:3.9");
        assert_eq!(default_sandbox_image(31), "registry.k8s.io/pause:3.10");
        assert_eq!(default_sandbox_image(37), "registry.k8s.io/pause:3.10.1");
    }
}
