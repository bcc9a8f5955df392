//! kubeadm's side of `hakube certs` (`spec.kubernetes.bootstrap: kubeadm`): the certificates
//! kubeadm keeps on each control plane, the client certificates in kubeconfigs, and renewal one
//! control plane at a time.
//!
//! The expiry comes from `kubeadm certs check-expiration -o json`, which prints a
//! `CertificateExpirationInfo` of `output.kubeadm.k8s.io/v1alpha3`: kubernetes/kubernetes,
//! `cmd/kubeadm/app/apis/output/v1alpha3/types.go` (the type), filled by
//! `fetchCertificateExpirationInfo` in `cmd/kubeadm/app/cmd/certs.go`. A missing certificate
//! there has only `name` and `missing: true` (its `expirationDate` is null), and
//! `residualTime` is in seconds, negative once expired. The kubeconfigs' client certificates
//! (admin, super-admin, controller-manager, scheduler `.conf`) are among its entries.
//!
//! kubeadm cannot run here: this path is proven by dry-run and by tests through the fake
//! transport, never against a real kubeadm.

use super::{Finding, Severity};
use crate::apply::Ctx;
use crate::apply::ops::Op;
use crate::apply::report::Kind;
use crate::spec::{Cluster, EtcdManagement, Host};
use crate::transport::{self, Transport, quote};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const CHECK_EXPIRATION: &str = "kubeadm certs check-expiration -o json";
pub const RENEW_ALL: &str = "kubeadm certs renew all";
const MANIFESTS: &str = "/etc/kubernetes/manifests";
/// The static pods kubeadm's certificates are served by, etcd last (kubeadm's etcd only).
const STATIC_PODS: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
];
/// Where the manifests wait while the kubelet stops their pods: outside the folder it watches.
pub const MOVED: &str = "/etc/kubernetes/hakube/manifests-moved";
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One certificate found outside the operator state: in kubeadm's report on a control plane,
/// or in a kubeconfig.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OnHost {
    /// The control plane, or `operator` for a file next to the spec.
    pub host: String,
    /// `admin.conf`, `apiserver`, `ca`, or `<file> user <name>` for a kubeconfig.
    pub name: String,
    pub is_ca: bool,
    /// RFC 3339; `None` when missing.
    pub not_after: Option<String>,
    /// `None` when missing.
    pub seconds_left: Option<i64>,
    /// Signed by a CA whose key kubeadm does not have: kubeadm cannot renew it.
    pub externally_managed: bool,
    pub missing: bool,
}

/// `output.kubeadm.k8s.io/v1alpha3` `CertificateExpirationInfo` (Go's nil slices are `null`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpirationInfo {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    api_version: String,
    certificates: Option<Vec<Entry>>,
    certificate_authorities: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    name: String,
    expiration_date: Option<String>,
    #[serde(default)]
    residual_time: i64,
    #[serde(default)]
    externally_managed: bool,
    #[serde(default)]
    missing: bool,
}

const KIND: &str = "CertificateExpirationInfo";
const API_VERSION: &str = "output.kubeadm.k8s.io/v1alpha3";

/// kubeadm's answer on `host`, as [`OnHost`] entries (certificates, then CAs).
pub fn parse_expiration(host: &str, stdout: &str) -> Result<Vec<OnHost>> {
    let bad = |why: String| {
        anyhow!(
            "{host}: `{CHECK_EXPIRATION}` printed {why}\n  help: hakube reads kind {KIND} of \
             {API_VERSION}; run the command on {host} by hand to see what this kubeadm prints"
        )
    };
    // Anything before the object (a notice kubeadm printed) is not part of it.
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .ok_or_else(|| bad(format!("no JSON object: {:?}", first_chars(stdout))))?;
    let info: ExpirationInfo = serde_json::from_str(json)
        .map_err(|e| bad(format!("something hakube cannot read: {e}")))?;
    if info.kind != KIND || info.api_version != API_VERSION {
        return Err(bad(format!(
            "kind {:?} of {:?}",
            info.kind, info.api_version
        )));
    }
    let entry = |e: Entry, is_ca: bool| OnHost {
        host: host.to_string(),
        name: e.name,
        is_ca,
        not_after: e.expiration_date.filter(|_| !e.missing),
        seconds_left: (!e.missing).then_some(e.residual_time),
        externally_managed: e.externally_managed,
        missing: e.missing,
    };
    let mut out: Vec<OnHost> = info
        .certificates
        .unwrap_or_default()
        .into_iter()
        .map(|e| entry(e, false))
        .collect();
    out.extend(
        info.certificate_authorities
            .unwrap_or_default()
            .into_iter()
            .map(|e| entry(e, true)),
    );
    Ok(out)
}

fn first_chars(s: &str) -> String {
    s.trim().chars().take(80).collect()
}

/// Run `kubeadm certs check-expiration -o json` on a control plane (read-only).
pub async fn expiration(t: &dyn Transport) -> Result<Vec<OnHost>> {
    let o = transport::run(t, CHECK_EXPIRATION, CHECK_EXPIRATION, READ_TIMEOUT).await?;
    parse_expiration(t.host(), &String::from_utf8_lossy(&o.stdout))
}

/// The client certificates of a kubeconfig file (`client-certificate-data`, or a
/// `client-certificate` path relative to the file).
pub fn kubeconfig_certs(path: &Path, host: &str) -> Result<Vec<OnHost>> {
    #[derive(Deserialize)]
    struct Kubeconfig {
        #[serde(default)]
        users: Vec<Named>,
    }
    #[derive(Deserialize)]
    struct Named {
        name: String,
        user: User,
    }
    #[derive(Deserialize)]
    struct User {
        #[serde(rename = "client-certificate-data")]
        data: Option<String>,
        #[serde(rename = "client-certificate")]
        file: Option<String>,
    }
    use base64::Engine;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let k: Kubeconfig = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow!("{}: not a kubeconfig hakube can read: {e}", path.display()))?;
    let now = super::now_unix();
    let mut out = vec![];
    for u in k.users {
        let pem = match (u.user.data, u.user.file) {
            (Some(d), _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map_err(|e| {
                        anyhow!(
                            "{}: user {}: client-certificate-data is not base64: {e}",
                            path.display(),
                            u.name
                        )
                    })?;
                String::from_utf8_lossy(&raw).to_string()
            }
            (None, Some(f)) => {
                let p = path.parent().unwrap_or(Path::new(".")).join(f);
                std::fs::read_to_string(&p).with_context(|| {
                    format!(
                        "{}: user {}: reading {}",
                        path.display(),
                        u.name,
                        p.display()
                    )
                })?
            }
            // A token or exec user has no certificate to expire.
            (None, None) => continue,
        };
        let (not_after, unix, is_ca) =
            super::expiry(&pem).with_context(|| format!("{}: user {}", path.display(), u.name))?;
        out.push(OnHost {
            host: host.to_string(),
            name: format!("{} user {}", path.display(), u.name),
            is_ca,
            not_after: Some(not_after),
            seconds_left: Some(unix - now),
            externally_managed: false,
            missing: false,
        });
    }
    Ok(out)
}

/// The findings about certificates kubeadm reported and kubeconfigs hold.
pub fn findings(certs: &[OnHost], within: Duration) -> Vec<Finding> {
    let within = within.as_secs() as i64;
    let mut out = vec![];
    for c in certs {
        let kubeconfig = c.host == "operator";
        if c.missing {
            // kubeadm writes super-admin.conf only where `kubeadm init` ran.
            if c.name == "super-admin.conf" {
                continue;
            }
            let fix = if c.is_ca {
                format!("restore {} from a backup of /etc/kubernetes/pki", c.name)
            } else if let Some(k) = c.name.strip_suffix(".conf") {
                format!("on {}: kubeadm init phase kubeconfig {k}", c.host)
            } else {
                format!("on {}: kubeadm init phase certs {}", c.host, c.name)
            };
            out.push(Finding {
                severity: Severity::Warning,
                what: format!("{} on {}: kubeadm reports it missing", c.name, c.host),
                fix,
            });
            continue;
        }
        let Some(left) = c.seconds_left else { continue };
        if left > within {
            continue;
        }
        let fix = if c.is_ca {
            "kubeadm does not renew CAs: plan a CA rotation (kubeadm's manual certificate rotation)"
                .to_string()
        } else if c.externally_managed {
            format!(
                "signed by an external CA kubeadm has no key for: issue {} again with that CA on {}",
                c.name, c.host
            )
        } else if kubeconfig {
            "hakube certs renew -f SPEC (refreshes it from the first control plane's admin.conf)"
                .to_string()
        } else {
            "hakube certs renew -f SPEC (kubeadm certs renew all, one control plane at a time)"
                .to_string()
        };
        let at = c.not_after.as_deref().unwrap_or("?");
        let (severity, what) = if left <= 0 {
            (
                Severity::Critical,
                format!("{} on {} expired on {at}", c.name, c.host),
            )
        } else {
            (
                Severity::Warning,
                format!(
                    "{} on {} expires on {at} ({})",
                    c.name,
                    c.host,
                    super::left_words(left)
                ),
            )
        };
        out.push(Finding {
            severity,
            what,
            fix,
        });
    }
    out
}

/// What `certs check` adds for a kubeadm cluster: kubeadm's report from every control plane
/// (connected over SSH, all at once: reading changes nothing) and the operator's admin
/// kubeconfig. A host that cannot be read is a finding, not the end of the check.
pub async fn check(c: &Cluster) -> (Vec<OnHost>, Vec<OnHost>, Vec<Finding>) {
    let timeout = crate::apply::Options::default().connect_timeout;
    check_with(c, |h| async move {
        let t = transport::ssh::Ssh::connect(h, &c.base_dir, timeout).await?;
        Ok(Arc::new(t) as Arc<dyn Transport>)
    })
    .await
}

/// [`check`] over the connections `connect` makes.
pub(crate) async fn check_with<'a, F, Fut>(
    c: &'a Cluster,
    connect: F,
) -> (Vec<OnHost>, Vec<OnHost>, Vec<Finding>)
where
    F: Fn(&'a Host) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Transport>>> + 'a,
{
    let reads = c.control_planes().map(|h| {
        let conn = connect(h);
        async move {
            let r = match conn.await {
                Ok(t) => expiration(t.as_ref()).await,
                Err(e) => Err(e),
            };
            (h.name.as_str(), r)
        }
    });
    let mut kubeadm = vec![];
    let mut problems = vec![];
    for (host, r) in futures::future::join_all(reads).await {
        match r {
            Ok(v) => kubeadm.extend(v),
            Err(e) => problems.push(unreadable(host, &e)),
        }
    }
    let mut kubeconfigs = vec![];
    let admin = crate::apply::phase::control_plane::admin_kubeconfig_path(c);
    if admin.exists() {
        match kubeconfig_certs(&admin, "operator") {
            Ok(v) => kubeconfigs = v,
            Err(e) => problems.push(Finding {
                severity: Severity::Warning,
                what: format!("{e:#}"),
                fix: "hakube apply -f SPEC writes it again from the first control plane".into(),
            }),
        }
    }
    (kubeadm, kubeconfigs, problems)
}

fn unreadable(host: &str, e: &anyhow::Error) -> Finding {
    Finding {
        severity: Severity::Warning,
        what: format!("kubeadm's certificates on {host} could not be read: {e:#}"),
        fix: format!(
            "check that {host} is reachable over SSH and that `{CHECK_EXPIRATION}` works there"
        ),
    }
}

/// The static pods that serve kubeadm's certificates on a control plane (etcd's only when
/// kubeadm runs it).
pub fn static_pods(c: &Cluster) -> Vec<&'static str> {
    let mut v = vec![
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ];
    if c.etcd.management == EtcdManagement::Kubeadm {
        v.push("etcd");
    }
    v
}

/// Move the static pods' manifests out of the folder the kubelet watches (it stops them).
pub fn move_out(pods: &[&str]) -> Op {
    move_manifests(pods, MANIFESTS, MOVED, "stops")
}

/// Put them back (the kubelet starts them with the renewed certificates).
pub fn move_back(pods: &[&str]) -> Op {
    move_manifests(pods, MOVED, MANIFESTS, "starts")
}

fn move_manifests(pods: &[&str], from: &str, to: &str, kubelet: &str) -> Op {
    let files: Vec<String> = pods.iter().map(|p| format!("{from}/{p}.yaml")).collect();
    Op::script_with_display(
        format!(
            "set -e; install -d -m 0700 {t}; mv -f {} {t}/",
            files.iter().map(|f| quote(f)).collect::<Vec<_>>().join(" "),
            t = quote(to)
        ),
        format!(
            "mv {} {to}/ (the kubelet {kubelet} {})",
            files.join(" "),
            pods.join(", ")
        ),
    )
}

/// `crictl ps` of the running containers of `pods`, one id a line.
fn crictl_ps(pods: &[&str]) -> String {
    format!(
        "crictl ps -q --name {}",
        quote(&format!("^({})$", pods.join("|")))
    )
}

/// The CA that signs what the API servers serve (copied from upgrade's `api_ca`).
fn api_ca(ctx: &Ctx) -> Result<Arc<rustls::ClientConfig>> {
    let pem = ctx
        .state
        .api_ca_pem()
        .unwrap_or_else(|| ctx.state.cluster_ca.cert_pem().to_string());
    crate::probe::client_config(&pem)
}

/// How long the kubelet may take to stop or start the static pods (it looks at its manifest
/// folder every 20 s by default, then the API server needs its own start-up).
const KUBELET_LIMIT: Duration = Duration::from_secs(180);

/// The certificates that make `kubeadm certs renew all` due on a host: leaves kubeadm can renew
/// that expires within `within`.
fn due(certs: &[OnHost], within: Duration) -> Vec<String> {
    certs
        .iter()
        .filter(|c| !c.is_ca && !c.missing && !c.externally_managed)
        .filter(|c| c.seconds_left.is_some_and(|s| s <= within.as_secs() as i64))
        .map(|c| c.name.clone())
        .collect()
}

/// `kubeadm certs renew all` on every control plane, one at a time, each behind health gates;
/// `within: None` renews on every control plane (`--all`). Stops at the first failure: the
/// control planes after it are not touched.
pub async fn renew(ctx: &Ctx, within: Option<Duration>) -> Result<()> {
    ctx.set_phase("certs");
    let cps: Vec<Host> = ctx.c.control_planes().cloned().collect();
    for (n, h) in cps.iter().enumerate() {
        if let Err(e) = control_plane(ctx, h, n == 0, within).await {
            let rest: Vec<&str> = cps[n + 1..].iter().map(|h| h.name.as_str()).collect();
            let untouched = if rest.is_empty() {
                String::new()
            } else {
                format!("; {} not touched", rest.join(", "))
            };
            return Err(e.context(format!(
                "renewing kubeadm's certificates on {} stopped{untouched}",
                h.name
            )));
        }
    }
    Ok(())
}

/// `certs renew` for a kubeadm cluster: connect as apply does, hold the state's lock (not in
/// dry-run), and [`renew`].
pub async fn renew_cluster(
    c: Cluster,
    within: Option<Duration>,
    dry_run: bool,
    reporter: Arc<dyn crate::apply::report::Reporter>,
) -> Result<()> {
    let _lock = if dry_run {
        None
    } else {
        Some(crate::state::State::lock(&c)?)
    };
    let opts = crate::apply::Options {
        dry_run,
        ..Default::default()
    };
    let ctx = crate::apply::context(c, opts, reporter).await?;
    renew(&ctx, within).await
}

/// One control plane: renew, restart the static pods by their manifests, gate on `/readyz`
/// and HAProxy, and (on the first) refresh the operator's admin kubeconfig.
async fn control_plane(ctx: &Ctx, h: &Host, first: bool, within: Option<Duration>) -> Result<()> {
    let host = h.name.as_str();
    let t = ctx.host(host)?;
    // An interrupted run may have left manifests out (their pods stopped): put them back first,
    // whether or not anything is due now.
    let left = leftovers(t).await?;
    if !left.is_empty() {
        ctx.log(
            Kind::Warn,
            host,
            &format!(
                "{} left in {MOVED} by an interrupted run; moving them back",
                left.join(", ")
            ),
        );
        back_and_gated(ctx, t, h, &left).await?;
    }
    if let Some(w) = within {
        // Read-only, so it runs in dry-run too: it decides what the plan is.
        let due = due(&expiration(t).await?, w);
        if due.is_empty() {
            ctx.log(
                Kind::Ok,
                host,
                &format!(
                    "no certificate kubeadm renews expires within {}",
                    humantime::format_duration(w)
                ),
            );
            return Ok(());
        }
        ctx.log(Kind::Info, host, &format!("due: {}", due.join(", ")));
    }
    if ctx.c.etcd.management == EtcdManagement::Kubeadm {
        quorum_gate(ctx, h).await?;
    }
    ctx.run(host, Op::script_with_display(RENEW_ALL, RENEW_ALL))
        .await?;
    let pods = static_pods(&ctx.c);
    ctx.run(host, move_out(&pods)).await?;
    containers(ctx, t, &pods, false).await?;
    back_and_gated(ctx, t, h, &pods).await?;
    if first {
        crate::apply::phase::control_plane::admin_kubeconfig(ctx, h).await?;
    }
    Ok(())
}

/// Before `h`'s stacked etcd member stops: every other control plane's API server must be
/// ready (kubeadm points each at its own member), so that the remaining members keep quorum.
async fn quorum_gate(ctx: &Ctx, h: &Host) -> Result<()> {
    ctx.log(
        Kind::Info,
        &h.name,
        "etcd is kubeadm's (stacked): every other control plane must be ready before this \
         member stops",
    );
    let ca = api_ca(ctx)?;
    for o in ctx.c.control_planes().filter(|o| o.name != h.name) {
        crate::apply::phase::control_plane::readyz_gate_within(
            ctx,
            &ca,
            o,
            Duration::from_secs(30),
        )
        .await
        .with_context(|| {
            format!(
                "refused: stopping {}'s etcd member while {} is not ready could lose quorum; \
                 nothing on {} was changed",
                h.name, o.name, h.name
            )
        })?;
    }
    Ok(())
}

/// Move the manifests of `pods` back, then the gates: `/readyz` on that host, every HAProxy
/// rating it UP, and the containers running again.
async fn back_and_gated(ctx: &Ctx, t: &dyn Transport, h: &Host, pods: &[&str]) -> Result<()> {
    ctx.run(&h.name, move_back(pods)).await?;
    let ca = api_ca(ctx)?;
    crate::apply::phase::control_plane::readyz_gate_within(ctx, &ca, h, KUBELET_LIMIT).await?;
    crate::apply::phase::etcd_member::haproxy_rates_up(ctx, &h.name).await?;
    containers(ctx, t, pods, true).await
}

/// The listing of [`MOVED`] (read-only; nothing when it does not exist).
pub fn list_moved() -> String {
    format!("ls -1 {} 2>/dev/null || true", quote(MOVED))
}

/// The static pods whose manifests an interrupted run left in [`MOVED`].
async fn leftovers(t: &dyn Transport) -> Result<Vec<&'static str>> {
    let ls = list_moved();
    let o = transport::run(t, &ls, &ls, READ_TIMEOUT).await?;
    let text = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = text.lines().map(str::trim).collect();
    Ok(STATIC_PODS
        .into_iter()
        .filter(|p| names.contains(&format!("{p}.yaml").as_str()))
        .collect())
}

/// Wait until the kubelet has stopped every container of `pods` (`running: false`), or runs
/// one of each again, as `crictl ps` on the host sees them.
async fn containers(ctx: &Ctx, t: &dyn Transport, pods: &[&str], running: bool) -> Result<()> {
    let ps = crictl_ps(pods);
    let names = pods.join(", ");
    let (what, done) = if running {
        (format!("{names} running again"), format!("{names} running"))
    } else {
        (
            format!("the kubelet to stop {names}"),
            format!("{names} stopped"),
        )
    };
    ctx.wait(t.host(), &what, &done, KUBELET_LIMIT, || async {
        let o = transport::run(t, &ps, &ps, Duration::from_secs(10)).await?;
        let n = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        match (running, n) {
            (false, 0) => Ok(()),
            (false, n) => bail!("{n} container(s) still running ({ps})"),
            (true, n) if n >= pods.len() => Ok(()),
            (true, n) => bail!("{n} of {} running ({ps})", pods.len()),
        }
    })
    .await
}

#[cfg(test)]
mod tests;
