//! The API servers: `kubeadm init`, upload-certs, then control-plane joins one at a time behind
//! a /readyz gate; or, with `bootstrap: lab`, the lab API server (a stand-in, named as such).

use super::names;
use crate::apply::files::LAB_APISERVER_UNIT;
use crate::apply::ops::{LAB_APISERVER, Op, Systemctl};
use crate::apply::report::Kind;
use crate::apply::{Ctx, Phase};
use crate::render::{Component, kubeadm};
use crate::spec::node_os::{CNI_MANIFEST, CniName, CniSource};
use crate::spec::{Bootstrap, Host};
use crate::transport::{self, BoxFut, quote};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct ControlPlane;

impl Phase for ControlPlane {
    fn name(&self) -> &'static str {
        "control-plane"
    }
    fn describe(&self) -> &'static str {
        "API servers: kubeadm init, upload-certs, then joins one at a time (or the lab API server)"
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            match ctx.c.kubernetes.bootstrap {
                Bootstrap::Lab => lab(ctx).await,
                Bootstrap::Kubeadm => kubeadm_control_plane(ctx).await,
            }
        })
    }
}

async fn lab(ctx: &Ctx) -> Result<()> {
    ctx.log(
        Kind::Info,
        "",
        "bootstrap: lab — deploying hakube-lab-apiserver, a STAND-IN for kube-apiserver",
    );
    let ca = crate::probe::client_config(ctx.state.cluster_ca.cert_pem())?;
    // Files on every control plane at once (a no-op run only compares checksums); restarts
    // below stay one at a time.
    ctx.each(names(ctx.c.control_planes()), |name| {
        Box::pin(async move {
            let changed = ctx.sync(&name, Component::ControlPlane).await?;
            if changed.iter().any(|f| f.path == LAB_APISERVER_UNIT) {
                ctx.run(&name, Systemctl::DaemonReload).await?;
            }
            Ok(())
        })
    })
    .await?;
    undrain_leftovers(ctx).await?;
    for h in ctx.c.control_planes() {
        let name = &h.name;
        let pending = ctx.take(name, LAB_APISERVER);
        if !ctx.active(name, LAB_APISERVER) {
            ctx.run(name, Systemctl::EnableStart(LAB_APISERVER)).await?;
            // Health gate before the next one, so that at most one API server is ever down.
            readyz_gate(ctx, &ca, h).await?;
        } else if pending {
            stop_lab_apiserver(ctx, name).await?;
            start_lab_apiserver(ctx, h).await?;
        }
    }
    Ok(())
}

/// HAProxy's state for an API server, set through its runtime API on every load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// No new connections; sessions open go on (a DOWN from failing checks would cut them).
    Drain,
    /// Back in rotation.
    Ready,
}

/// Set `server`'s state in every HAProxy through the runtime API socket (curl speaks to it
/// over the Unix socket; it is on every load balancer already). A planned stop drains first,
/// so that no new connection is in flight when the checks mark it DOWN: HAProxy's
/// `on-marked-down shutdown-sessions` would cut it. Best effort: an LB that cannot be told
/// is named, and the stop goes on (its checks still take the server out).
pub async fn haproxy_rotation(ctx: &Ctx, server: &str, to: Rotation) -> Result<()> {
    let state = match to {
        Rotation::Drain => "drain",
        Rotation::Ready => "ready",
    };
    let cmd = format!(
        "set server {}/{} state {state}",
        crate::observe::API_BACKEND,
        server
    );
    // HAProxy answers nothing on success, and the reason otherwise.
    let script = format!(
        "out=$(printf '%s\n' {q} | curl -s --max-time 3 --unix-socket /run/haproxy/admin.sock telnet://localhost) || exit 1; \
         [ -z \"$(printf '%s' \"$out\" | tr -d '[:space:]')\" ] || {{ echo \"$out\" >&2; exit 1; }}",
        q = crate::transport::quote(&cmd)
    );
    let lbs: Vec<String> = ctx.c.load_balancers().map(|h| h.name.clone()).collect();
    for lb in lbs {
        if let Err(e) = ctx
            .run(
                &lb,
                Op::script_with_display(script.clone(), format!("haproxy runtime API: {cmd}")),
            )
            .await
        {
            ctx.log(
                Kind::Warn,
                &lb,
                &format!("could not {cmd} ({e:#}); its health checks will take it out instead"),
            );
        }
    }
    Ok(())
}

/// Stop the lab API server on `host` so that no client notices: every HAProxy drains it first
/// (no new connections), then it stops (requests in flight finish, /readyz fails during its
/// shutdown delay).
pub async fn stop_lab_apiserver(ctx: &Ctx, host: &str) -> Result<()> {
    // Recorded first: a run killed before `ready` is undone by the next one.
    if !ctx.dry_run() {
        let dir = drained_dir(ctx);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(host), b"")
            .with_context(|| format!("writing {}", dir.join(host).display()))?;
    }
    haproxy_rotation(ctx, host, Rotation::Drain).await?;
    ctx.run(
        host,
        Op::script_with_display(
            "systemctl stop hakube-lab-apiserver",
            "systemctl stop hakube-lab-apiserver (drains; HAProxy sends new connections elsewhere)",
        ),
    )
    .await?;
    Ok(())
}

/// Start it again behind its gates: `/readyz`, then every HAProxy rating it UP, so that the
/// next restart never leaves HAProxy with one server fewer than it believes.
pub async fn start_lab_apiserver(ctx: &Ctx, h: &Host) -> Result<()> {
    ctx.run(&h.name, Systemctl::Start(LAB_APISERVER)).await?;
    let ca = crate::probe::client_config(ctx.state.cluster_ca.cert_pem())?;
    readyz_gate(ctx, &ca, h).await?;
    haproxy_rotation(ctx, &h.name, Rotation::Ready).await?;
    let _ = std::fs::remove_file(drained_dir(ctx).join(&h.name));
    super::etcd_member::haproxy_rates_up(ctx, &h.name).await
}

/// API servers hakube drained (in the operator state, one empty file each) and has not set
/// ready again yet.
fn drained_dir(ctx: &Ctx) -> std::path::PathBuf {
    ctx.state.dir().join("drained")
}

/// Put back in rotation the API servers an interrupted run left drained; whether there were any.
pub async fn undrain_leftovers(ctx: &Ctx) -> Result<bool> {
    let Ok(rd) = std::fs::read_dir(drained_dir(ctx)) else {
        return Ok(false);
    };
    let hosts: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| ctx.c.control_planes().any(|h| &h.name == n))
        .collect();
    for host in &hosts {
        ctx.log(
            Kind::Warn,
            host,
            "left drained in HAProxy by an interrupted run; putting it back in rotation",
        );
        haproxy_rotation(ctx, host, Rotation::Ready).await?;
        if !ctx.dry_run() {
            let _ = std::fs::remove_file(drained_dir(ctx).join(host));
        }
    }
    Ok(!hosts.is_empty())
}

/// Wait until the API server on `h` answers `/readyz` with 200.
pub async fn readyz_gate(ctx: &Ctx, ca: &Arc<rustls::ClientConfig>, h: &Host) -> Result<()> {
    readyz_gate_within(ctx, ca, h, Duration::from_secs(60)).await
}

/// [`readyz_gate`] with its own bound (a kubelet restarting a static pod takes longer).
pub async fn readyz_gate_within(
    ctx: &Ctx,
    ca: &Arc<rustls::ClientConfig>,
    h: &Host,
    limit: Duration,
) -> Result<()> {
    let addr = SocketAddr::new(h.address, ctx.c.kubernetes.api_server_port);
    ctx.wait(
        &h.name,
        &format!("https://{addr}/readyz = 200"),
        &format!("https://{addr}/readyz is 200"),
        limit,
        || async {
            let r = crate::probe::get(ca, addr, "/readyz", Duration::from_secs(2)).await?;
            if r.status == 200 {
                Ok(())
            } else {
                bail!("/readyz answered {}: {}", r.status, r.body.trim())
            }
        },
    )
    .await
}

/// What a node needs to join: a bootstrap token, the CA's public key hash, and for a control
/// plane the key that decrypts the uploaded certificates. Never logged.
pub struct JoinSecrets {
    pub certificate_key: Option<String>,
    pub token: String,
    pub ca_cert_hash: String,
}

/// Prints a fresh token and the CA hash, one per line (kubeadm prints no hash of its own).
const TOKEN_AND_HASH: &str = "tok=$(kubeadm token create --ttl 1h) && \
     hash=$(openssl x509 -pubkey -in /etc/kubernetes/pki/ca.crt | openssl rsa -pubin -outform der 2>/dev/null | openssl dgst -sha256 -hex | sed 's/^.* //') && \
     printf '%s\\nsha256:%s\\n' \"$tok\" \"$hash\"";

impl JoinSecrets {
    /// The script that prints them, on the first control plane; with `certificate_key`, it
    /// uploads the certificates under a fresh key first (the key expires after 2 h, tokens after
    /// their TTL, so each run makes its own).
    pub fn op(certificate_key: bool) -> Op {
        if certificate_key {
            Op::script_with_display(
                format!(
                    "key=$(kubeadm certs certificate-key) && kubeadm init phase upload-certs --upload-certs --certificate-key \"$key\" >/dev/null && \
                     printf '%s\\n' \"$key\" && {TOKEN_AND_HASH}"
                ),
                "kubeadm init phase upload-certs --upload-certs --certificate-key <fresh key, not shown> + kubeadm token create --ttl 1h (token not shown)",
            )
        } else {
            Op::script_with_display(
                TOKEN_AND_HASH,
                "kubeadm token create --ttl 1h (token not shown) and read the CA cert hash",
            )
        }
    }

    pub fn parse(host: &str, text: &str, certificate_key: bool) -> Result<JoinSecrets> {
        let v: Vec<&str> = text.lines().map(str::trim).collect();
        let want = if certificate_key { 3 } else { 2 };
        let ok = v.len() == want
            && v.iter().all(|s| !s.is_empty())
            && v[want - 1].starts_with("sha256:");
        if !ok {
            bail!(
                "{host}: could not read the join secrets from kubeadm (expected {want} lines: {}the token and sha256:<CA hash>)",
                if certificate_key {
                    "the certificate key, "
                } else {
                    ""
                }
            );
        }
        let (certificate_key, rest) = if certificate_key {
            (Some(v[0].to_string()), &v[1..])
        } else {
            (None, &v[..])
        };
        Ok(JoinSecrets {
            certificate_key,
            token: rest[0].to_string(),
            ca_cert_hash: rest[1].to_string(),
        })
    }

    /// `kubeadm join` with the secrets filled into a 0600 temporary file that is removed after.
    pub fn join(secrets: Option<&JoinSecrets>) -> Op {
        let dir = kubeadm::DIR;
        let script = match secrets {
            Some(s) => format!(
                "set -e; t=$(mktemp); trap 'rm -f \"$t\"' EXIT; chmod 600 \"$t\"; \
                 sed -e 's|{key_ph}|{key}|' -e 's|{tok_ph}|{tok}|' -e 's|{hash_ph}|{hash}|' {dir}/kubeadm-join.yaml > \"$t\"; \
                 kubeadm join --config \"$t\"",
                key_ph = sed_pattern(kubeadm::CERT_KEY_PLACEHOLDER),
                tok_ph = sed_pattern(kubeadm::TOKEN_PLACEHOLDER),
                hash_ph = sed_pattern(kubeadm::CA_HASH_PLACEHOLDER),
                key = s.certificate_key.as_deref().unwrap_or(""),
                tok = s.token,
                hash = s.ca_cert_hash,
            ),
            // Dry-run: the op is only shown.
            None => String::new(),
        };
        Op::script_with_display(
            script,
            format!(
                "kubeadm join --config {dir}/kubeadm-join.yaml (secrets filled in a 0600 temp file)"
            ),
        )
    }
}

/// A placeholder as a sed pattern: `$` anchors in a basic regex, so it is escaped.
fn sed_pattern(s: &str) -> String {
    s.replace('$', "\\$")
}

async fn kubeadm_control_plane(ctx: &Ctx) -> Result<()> {
    let cps: Vec<&Host> = ctx.c.control_planes().collect();
    let Some(first) = cps.first() else {
        return Ok(());
    };
    for h in &cps {
        ctx.sync(&h.name, Component::ControlPlane).await?;
    }
    let done = |h: &Host| ctx.facts.get(&h.name).is_some_and(|f| f.kubeadm_done);
    let dir = kubeadm::DIR;
    if !done(first) {
        cri_gate(ctx, first).await?;
        let init = format!("kubeadm init --config {dir}/kubeadm-init.yaml");
        ctx.run(&first.name, Op::script_with_display(&init, &init))
            .await?;
    }
    cni(ctx, first).await?;
    admin_kubeconfig(ctx, first).await?;
    // Keep the cluster CA next to the spec, so that `status` can verify the API servers.
    ctx.act(
        &first.name,
        "copy /etc/kubernetes/pki/ca.crt next to the spec",
        || async {
            let t = ctx.host(&first.name)?;
            if let Some(ca) = transport::read_file(t, "/etc/kubernetes/pki/ca.crt").await? {
                ctx.state.save_kubeadm_ca(&String::from_utf8_lossy(&ca))?;
            }
            Ok(())
        },
    )
    .await?;
    let joining: Vec<&Host> = cps.iter().skip(1).copied().filter(|h| !done(h)).collect();
    if joining.is_empty() {
        return Ok(());
    }
    let secrets = ctx
        .run(&first.name, JoinSecrets::op(true))
        .await?
        .map(|o| JoinSecrets::parse(&first.name, &o.stdout_str(), true))
        .transpose()?;
    // One at a time, each behind a health gate: a stacked etcd member is added by each join,
    // and two half-joined members could cost the quorum.
    for h in joining {
        cri_gate(ctx, h).await?;
        ctx.run(&h.name, JoinSecrets::join(secrets.as_ref()))
            .await?;
        let addr = SocketAddr::new(h.address, ctx.c.kubernetes.api_server_port);
        ctx.wait(
            &h.name,
            "its API server /readyz (asked on the host) before the next join",
            &format!("https://{addr}/readyz is ok"),
            Duration::from_secs(300),
            || async {
                let o = transport::run(
                    ctx.host(&h.name)?,
                    &format!("curl -sfk https://{addr}/readyz"),
                    "curl /readyz",
                    Duration::from_secs(5),
                )
                .await?;
                if o.stdout_str().trim() == "ok" {
                    Ok(())
                } else {
                    bail!("not ready")
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// kubeadm's preflight fails without a running container runtime: wait for its socket (prepare
/// started containerd moments ago).
pub async fn cri_gate(ctx: &Ctx, h: &Host) -> Result<()> {
    let sock = ctx.c.kubernetes.cri_socket.trim_start_matches("unix://");
    let test = format!("test -S {}", quote(sock));
    ctx.wait(
        &h.name,
        &format!("the container runtime's socket {sock}"),
        &format!("{sock} is up"),
        Duration::from_secs(60),
        || async {
            transport::run(ctx.host(&h.name)?, &test, &test, Duration::from_secs(5)).await?;
            Ok(())
        },
    )
    .await
}

const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
const CNI_APPLIED: &str = "/etc/kubernetes/hakube/cni.applied";

/// The pod network, once: its manifest is checked against the spec's SHA-256 on the host (a
/// URL is downloaded there first), applied with the admin kubeconfig, and stamped so that a
/// converged run only reads the stamp.
async fn cni(ctx: &Ctx, first: &Host) -> Result<()> {
    let Some(cni) = &ctx.c.node_os.cni else {
        return Ok(());
    };
    let t = ctx.host(&first.name)?;
    let stamp = transport::read_file(t, CNI_APPLIED)
        .await?
        .unwrap_or_default();
    if String::from_utf8_lossy(&stamp).trim() == cni.sha256 {
        return Ok(());
    }
    let m = quote(CNI_MANIFEST);
    let check = format!(
        "echo {} | sha256sum -c --quiet",
        quote(&format!("{}  {CNI_MANIFEST}", cni.sha256))
    );
    let fetch = match &cni.source {
        CniSource::Url(u) => format!(
            "curl -fsSL --retry 3 {u} -o {m}.partial && mv -f {m}.partial {m} && ",
            u = quote(u)
        ),
        CniSource::File(_) => String::new(),
    };
    let cidr = ctx.c.networks.pods.to_string();
    let script = format!(
        "set -e; {fetch}{check} || {{ echo \"{CNI_MANIFEST} does not have the spec's sha256 {sha}\" >&2; exit 1; }}; \
         grep -qF {c} {m} || {{ echo \"{CNI_MANIFEST} does not set the pod network {cidr}\" >&2; exit 1; }}; \
         kubectl --kubeconfig {ADMIN_CONF} apply -f {m}; echo {sha} > {stamp}",
        sha = cni.sha256,
        c = quote(&cidr),
        stamp = quote(CNI_APPLIED),
    );
    let name = match cni.name {
        CniName::Calico => "calico",
        CniName::Cilium => "cilium",
        CniName::Flannel => "flannel",
    };
    ctx.run(
        &first.name,
        Op::script_with_display(
            script,
            format!(
                "{name} {} pod network: check {CNI_MANIFEST}'s sha256, kubectl apply -f it",
                cni.version
            ),
        ),
    )
    .await?;
    Ok(())
}

/// The admin kubeconfig next to the spec (0600), its server the VIP, so that the operator (and
/// `kubectl`) reach the cluster the way its clients do.
pub(crate) async fn admin_kubeconfig(ctx: &Ctx, first: &Host) -> Result<()> {
    let dest = admin_kubeconfig_path(&ctx.c);
    let server = format!("https://{}", ctx.c.control_plane_endpoint());
    ctx.act(
        &first.name,
        &format!(
            "copy {ADMIN_CONF} to {} (0600), server {server}",
            dest.display()
        ),
        || async {
            let t = ctx.host(&first.name)?;
            let Some(bytes) = transport::read_file(t, ADMIN_CONF).await? else {
                bail!("{}: {ADMIN_CONF} is missing after kubeadm init", first.name);
            };
            let text = with_server(&String::from_utf8_lossy(&bytes), &server);
            crate::pki::write_secret(&dest, &text)
        },
    )
    .await?;
    Ok(())
}

/// Where apply keeps the admin kubeconfig: next to the spec.
pub fn admin_kubeconfig_path(c: &crate::spec::Cluster) -> std::path::PathBuf {
    c.base_dir.join(format!("{}-admin.conf", c.name))
}

/// `kubeconfig` with every cluster's `server:` set to `server`.
fn with_server(kubeconfig: &str, server: &str) -> String {
    let mut out = String::new();
    for line in kubeconfig.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}server: {server}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_admin_kubeconfig_points_at_the_vip() {
        let k = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: X\n    server: https://10.1.1.101:6443\n  name: k\n";
        let out = super::with_server(k, "https://10.1.1.100:6443");
        assert!(
            out.contains("    server: https://10.1.1.100:6443\n"),
            "{out}"
        );
        assert!(!out.contains("10.1.1.101"));
        assert!(out.contains("certificate-authority-data: X"));
    }
}
