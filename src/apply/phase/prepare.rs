//! Packages, kernel modules, sysctl and swap: what a host needs before any component.

use super::names;
use crate::apply::ops::{Apt, Op};
use crate::apply::{Ctx, Phase};
use crate::render::Component;
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

/// The packages `h` lacks. Kubernetes packages are pinned to the spec's version: an unpinned
/// install or `yum update` would pick whatever is newest.
pub fn packages(c: &Cluster, h: &Host, has: impl Fn(&str) -> bool) -> Option<Apt> {
    let mut packages: Vec<String> = Vec::new();
    if h.roles.loadbalancer {
        packages.extend(
            ["haproxy", "keepalived", "curl"]
                .into_iter()
                .filter(|b| !has(b))
                .map(String::from),
        );
    }
    let kube = kubeadm_host(c, h);
    if kube && !has("kubeadm") {
        let v = &c.kubernetes.version;
        for p in ["kubelet", "kubeadm", "kubectl"] {
            packages.push(format!("{p}={}.{}.{}-*", v.major, v.minor, v.patch));
        }
    }
    if packages.is_empty() {
        return None;
    }
    let hold = if kube {
        ["kubelet", "kubeadm", "kubectl"].map(String::from).to_vec()
    } else {
        vec![]
    };
    Some(Apt::Install { packages, hold })
}

async fn host(ctx: &Ctx, name: String) -> Result<()> {
    let h = ctx
        .c
        .host(&name)
        .ok_or_else(|| anyhow::anyhow!("{name}: not in the spec"))?;
    let f = ctx.facts(&name)?;
    if let Some(apt) = packages(&ctx.c, h, |b| f.binaries.contains_key(b)) {
        ctx.run(&name, apt).await?;
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
