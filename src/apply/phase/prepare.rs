//! Packages, kernel modules, sysctl and swap: what a host needs before any component.

use super::names;
use crate::apply::ops::{Apt, CONTAINERD, KUBELET, Op, Systemctl};
use crate::apply::{Ctx, Phase};
use crate::render::Component;
use crate::spec::node_os::KEYRING;
use crate::spec::{Bootstrap, Cluster, Host};
use crate::transport::BoxFut;
use anyhow::Result;

pub struct Prepare;

impl Phase for Prepare {
    fn name(&self) -> &'static str {
        "prepare"
    }
    fn describe(&self) -> &'static str {
        "packages, sysctl, kernel modules and swap"
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(ctx.each(names(ctx.c.hosts.iter()), move |name| {
            Box::pin(host(ctx, name))
        }))
    }
}

/// Whether `h` runs kubeadm's kubelet.
pub fn kubeadm_host(c: &Cluster, h: &Host) -> bool {
    c.kubernetes.bootstrap == Bootstrap::Kubeadm && (h.roles.control_plane || h.roles.worker)
}

/// Tools `h` lacks that hakube itself uses there (HAProxy and keepalived on a load balancer;
/// on a kubeadm host, curl and gpg for the repository key and the /readyz gates).
/// Pinned HAProxy and keepalived versions (`spec.loadBalancer.packages`) are installed as
/// `NAME=VERSION` wherever `installed` (dpkg's version) differs.
pub fn base_packages(
    c: &Cluster,
    h: &Host,
    has: impl Fn(&str) -> bool,
    installed: impl Fn(&str) -> Option<String>,
) -> Option<Apt> {
    let mut want: Vec<&str> = Vec::new();
    let pins = &c.lb.packages;
    if h.roles.loadbalancer {
        want.extend(
            ["haproxy", "keepalived", "curl"]
                .into_iter()
                .filter(|p| !pins.contains_key(*p)),
        );
    }
    if kubeadm_host(c, h) {
        want.extend(["curl", "gpg"]);
    }
    let mut packages: Vec<String> = Vec::new();
    for p in want {
        if !has(p) && !packages.iter().any(|x| x == p) {
            packages.push(p.into());
        }
    }
    if packages.iter().any(|p| p == "curl" || p == "gpg") && kubeadm_host(c, h) {
        packages.push("ca-certificates".into());
    }
    if h.roles.loadbalancer {
        packages.extend(crate::install::package_pins(pins, installed));
    }
    (!packages.is_empty()).then(|| Apt::install(packages))
}

/// kubeadm, kubelet and kubectl, pinned to the spec's version (an unpinned install or `yum
/// update` would pick whatever is newest) and held against `apt-get upgrade`.
pub fn kube_packages(c: &Cluster) -> Apt {
    let v = &c.kubernetes.version;
    let names = ["kubelet", "kubeadm", "kubectl"];
    Apt::Install {
        packages: names
            .iter()
            .map(|p| format!("{p}={}.{}.{}-*", v.major, v.minor, v.patch))
            .collect(),
        hold: names.map(String::from).to_vec(),
    }
}

async fn host(ctx: &Ctx, name: String) -> Result<()> {
    let h = ctx
        .c
        .host(&name)
        .ok_or_else(|| anyhow::anyhow!("{name}: not in the spec"))?;
    let f = ctx.facts(&name)?;
    let has = |b: &str| f.binaries.contains_key(b);
    let installed = |p: &str| f.versions.get(&format!("pkg-{p}")).cloned();
    if let Some(apt) = base_packages(&ctx.c, h, has, installed) {
        ctx.run(&name, apt).await?;
    }
    if kubeadm_host(&ctx.c, h) {
        kubernetes(ctx, &name).await?;
    }
    let changed = ctx.sync(&name, Component::Host).await?;
    for f in changed
        .iter()
        .filter(|f| f.path.starts_with("/etc/modules-load.d/"))
    {
        let mods: Vec<String> = f
            .content
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect();
        ctx.run(&name, Op::Modprobe(mods)).await?;
    }
    for f in changed
        .iter()
        .filter(|f| f.path.starts_with("/etc/sysctl.d/"))
    {
        ctx.run(&name, Op::SysctlLoad(f.path.clone())).await?;
    }
    if kubeadm_host(&ctx.c, h) && f.swap_on {
        ctx.run(&name, Op::SwapOff).await?;
    }
    Ok(())
}

/// A bare host's way to kubeadm, in the order the official guide takes: the Kubernetes apt
/// repository (its key checked against the pinned fingerprint), containerd with its config, the
/// pinned packages, and the kubelet enabled.
async fn kubernetes(ctx: &Ctx, name: &str) -> Result<()> {
    let f = ctx.facts(name)?;
    let os = &ctx.c.node_os;
    let need_packages = !f.binaries.contains_key("kubeadm");
    let list = ctx.sync(name, Component::Packages).await?;
    if need_packages || !list.is_empty() {
        ctx.run(
            name,
            Apt::Key {
                url: format!("{}Release.key", os.repository),
                fingerprint: os.key_fingerprint.clone(),
                keyring: KEYRING.into(),
            },
        )
        .await?;
        ctx.run(name, Apt::Update).await?;
    }
    if !f.binaries.contains_key("containerd") {
        ctx.run(name, Apt::install(vec!["containerd".into()]))
            .await?;
    }
    let runtime = ctx.sync(name, Component::Runtime).await?;
    let restart = runtime
        .iter()
        .any(|f| f.services.iter().any(|s| s == CONTAINERD));
    if !f.active(CONTAINERD) {
        ctx.run(name, Systemctl::EnableStart(CONTAINERD)).await?;
    } else if restart {
        ctx.run(name, Systemctl::Restart(CONTAINERD)).await?;
    }
    if need_packages {
        ctx.run(name, kube_packages(&ctx.c)).await?;
    }
    if !f.enabled(KUBELET) {
        ctx.run(name, Systemctl::Enable(KUBELET)).await?;
    }
    Ok(())
}
