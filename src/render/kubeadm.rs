//! kubeadm configuration in the API version and shape the Kubernetes version needs.
//!
//! v1beta4 (1.31+) writes `extraArgs` as a list of `{name, value}`; v1beta3 as a map. Per-node
//! values live in InitConfiguration/JoinConfiguration `localAPIEndpoint`, never in
//! ClusterConfiguration. Stacked etcd gets no `initial-cluster`: kubeadm sets it per join.

use super::{Component, HEADER, RenderedFile};
use crate::spec::{Cluster, EtcdManagement, Host, KubeadmApi};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const DIR: &str = "/etc/kubernetes/hakube";
pub const AUDIT_POLICY: &str = "/etc/kubernetes/audit-policy.yaml";
/// Filled in by `hakube apply` at join time in a 0600 temporary file, never stored.
pub const TOKEN_PLACEHOLDER: &str = "${HAKUBE_BOOTSTRAP_TOKEN}";
pub const CA_HASH_PLACEHOLDER: &str = "${HAKUBE_CA_CERT_HASH}";
pub const CERT_KEY_PLACEHOLDER: &str = "${HAKUBE_CERTIFICATE_KEY}";

fn args(api: KubeadmApi, m: &BTreeMap<String, String>) -> Value {
    match api {
        KubeadmApi::V1Beta4 => Value::Array(
            m.iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect(),
        ),
        KubeadmApi::V1Beta3 => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
        }
    }
}

fn node_registration(c: &Cluster, h: &Host) -> Value {
    let api = c.kubernetes.kubeadm_api;
    let mut kubelet = BTreeMap::new();
    kubelet.insert("node-ip".to_string(), h.address.to_string());
    let mut nr = json!({
        "name": h.name,
        "criSocket": c.kubernetes.cri_socket,
        "kubeletExtraArgs": args(api, &kubelet),
    });
    if h.roles.control_plane && h.roles.worker {
        // A control plane that also runs workloads keeps no taint.
        nr["taints"] = json!([]);
    }
    nr
}

fn endpoint(c: &Cluster, h: &Host) -> Value {
    json!({"advertiseAddress": h.address.to_string(), "bindPort": c.kubernetes.api_server_port})
}

pub fn cluster_configuration(c: &Cluster) -> Value {
    let k = &c.kubernetes;
    let api = k.kubeadm_api;
    let mut api_server = Map::new();
    api_server.insert("certSANs".into(), json!(k.cert_sans));
    // Serve on with /readyz failing after SIGTERM until every HAProxy rated it DOWN, so that a
    // restart (upgrade, certificate renewal) resets no connection HAProxy just handed it.
    let mut extra = k.api_server_extra_args.clone();
    let delay = c.lb.health_check.shutdown_delay();
    if !delay.is_zero() {
        extra
            .entry("shutdown-delay-duration".into())
            .or_insert_with(|| format!("{}ms", delay.as_millis()));
    }
    if !extra.is_empty() {
        api_server.insert("extraArgs".into(), args(api, &extra));
    }
    let mut volumes = Vec::new();
    if let Some(policy) = k.api_server_extra_args.get("audit-policy-file") {
        volumes.push(json!({"name": "audit-policy", "hostPath": policy, "mountPath": policy, "readOnly": true, "pathType": "File"}));
    }
    // `-` logs to standard output: nothing to mount.
    if let Some(log) = k.api_server_extra_args.get("audit-log-path")
        && log != "-"
        && let Some(dir) = std::path::Path::new(log).parent()
    {
        let dir = dir.display().to_string();
        volumes.push(json!({"name": "audit-log", "hostPath": dir, "mountPath": dir, "readOnly": false, "pathType": "DirectoryOrCreate"}));
    }
    if !volumes.is_empty() {
        api_server.insert("extraVolumes".into(), Value::Array(volumes));
    }
    let e = &c.etcd;
    let etcd = match e.management {
        EtcdManagement::Hakube => json!({"external": {
            "endpoints": c.etcd_client_urls(),
            "caFile": "/etc/etcd/pki/ca.crt",
            "certFile": "/etc/etcd/pki/apiserver-etcd-client.crt",
            "keyFile": "/etc/etcd/pki/apiserver-etcd-client.key",
        }}),
        EtcdManagement::Kubeadm => {
            // Only settings that are the same on every member; kubeadm owns the per-node ones.
            let mut m = BTreeMap::new();
            m.insert(
                "heartbeat-interval".to_string(),
                e.heartbeat_interval.as_millis().to_string(),
            );
            m.insert(
                "election-timeout".to_string(),
                e.election_timeout.as_millis().to_string(),
            );
            m.insert(
                "quota-backend-bytes".to_string(),
                e.quota_backend_bytes.to_string(),
            );
            json!({"local": {"dataDir": e.data_dir, "extraArgs": args(api, &m)}})
        }
    };
    json!({
        "apiVersion": api.as_str(),
        "kind": "ClusterConfiguration",
        "kubernetesVersion": format!("v{}", k.version),
        "clusterName": k.cluster_name,
        "controlPlaneEndpoint": c.control_plane_endpoint(),
        "networking": {
            "serviceSubnet": c.networks.services.to_string(),
            "podSubnet": c.networks.pods.to_string(),
            "dnsDomain": c.networks.dns_domain,
        },
        "apiServer": Value::Object(api_server),
        "etcd": etcd,
    })
}

fn yaml_docs(docs: &[Value]) -> anyhow::Result<String> {
    let mut s = format!("# {HEADER}\n");
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            s.push_str("---\n");
        }
        s.push_str(&serde_saphyr::to_string(d)?);
    }
    Ok(s)
}

fn f(h: &Host, name: &str, mode: u32, content: String) -> RenderedFile {
    RenderedFile {
        host: h.name.clone(),
        // A worker's only kubeadm file is its join config; the workers phase installs it.
        component: if h.roles.control_plane {
            Component::ControlPlane
        } else {
            Component::Worker
        },
        path: format!("{DIR}/{name}"),
        mode,
        content,
        secret: false,
        services: vec![],
        ..Default::default()
    }
}

/// The kubeadm files of one host.
pub fn render(c: &Cluster, h: &Host) -> anyhow::Result<Vec<RenderedFile>> {
    let api = c.kubernetes.kubeadm_api.as_str();
    let first = c.control_planes().next().map(|x| x.name.as_str());
    let mut out = Vec::new();
    if h.roles.control_plane {
        out.push(f(
            h,
            "cluster-configuration.yaml",
            0o600,
            yaml_docs(&[cluster_configuration(c)])?,
        ));
        if c.kubernetes
            .api_server_extra_args
            .contains_key("audit-policy-file")
            && c.kubernetes
                .api_server_extra_args
                .get("audit-policy-file")
                .map(String::as_str)
                == Some(AUDIT_POLICY)
        {
            out.push(RenderedFile {
                path: AUDIT_POLICY.into(),
                ..f(h, "", 0o600, AUDIT_POLICY_YAML.into())
            });
        }
    }
    if Some(h.name.as_str()) == first {
        let init = json!({
            "apiVersion": api,
            "kind": "InitConfiguration",
            "localAPIEndpoint": endpoint(c, h),
            "nodeRegistration": node_registration(c, h),
        });
        out.push(f(
            h,
            "kubeadm-init.yaml",
            0o600,
            yaml_docs(&[init, cluster_configuration(c)])?,
        ));
    } else {
        let mut join = json!({
            "apiVersion": api,
            "kind": "JoinConfiguration",
            "discovery": {"bootstrapToken": {
                "apiServerEndpoint": c.control_plane_endpoint(),
                "token": TOKEN_PLACEHOLDER,
                "caCertHashes": [CA_HASH_PLACEHOLDER],
            }},
            "nodeRegistration": node_registration(c, h),
        });
        if h.roles.control_plane {
            join["controlPlane"] =
                json!({"localAPIEndpoint": endpoint(c, h), "certificateKey": CERT_KEY_PLACEHOLDER});
        }
        out.push(f(h, "kubeadm-join.yaml", 0o600, yaml_docs(&[join])?));
    }
    Ok(out)
}

/// Metadata for everything, full bodies for nothing: enough to audit who did what without
/// writing secrets into the log.
const AUDIT_POLICY_YAML: &str =
    "# Rendered by hakube: the audit policy that audit-log-* arguments need.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
  - RequestReceived
rules:
  - level: None
    users: [\"system:kube-proxy\"]
    verbs: [\"watch\"]
  - level: None
    nonResourceURLs: [\"/healthz*\", \"/livez*\", \"/readyz*\", \"/version\"]
  - level: Metadata
    resources:
      - group: \"\"
        resources: [\"secrets\", \"configmaps\"]
  - level: Metadata
";
