//! Workers: with kubeadm, each gets its join config and joins, in parallel, once the control
//! planes are up. The lab runs no kubelet.

use super::control_plane::{JoinSecrets, cri_gate};
use super::names;
use crate::apply::report::Kind;
use crate::apply::{Ctx, Phase};
use crate::render::Component;
use crate::spec::{Bootstrap, Host};
use crate::transport::BoxFut;
use anyhow::{Context, Result};

pub struct Workers;

impl Phase for Workers {
    fn name(&self) -> &'static str {
        "workers"
    }
    fn describe(&self) -> &'static str {
        "workers: their kubeadm join config, then kubeadm join in parallel (the lab runs no kubelet)"
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            match ctx.c.kubernetes.bootstrap {
                Bootstrap::Lab => {
                    let n = ctx.c.workers().count();
                    ctx.log(
                        Kind::Info,
                        "",
                        &format!("{n} worker(s): the lab runs no kubelet; nothing to do"),
                    );
                    Ok(())
                }
                Bootstrap::Kubeadm => kubeadm(ctx).await,
            }
        })
    }
}

async fn kubeadm(ctx: &Ctx) -> Result<()> {
    let workers: Vec<&Host> = ctx.c.workers().filter(|h| !h.roles.control_plane).collect();
    ctx.each(names(workers.iter().copied()), |name| {
        Box::pin(async move {
            ctx.sync(&name, Component::Worker).await?;
            Ok(())
        })
    })
    .await?;
    let joining: Vec<&Host> = workers
        .into_iter()
        .filter(|h| !ctx.facts.get(&h.name).is_some_and(|f| f.kubeadm_done))
        .collect();
    let Some(first) = ctx.c.control_planes().next() else {
        return Ok(());
    };
    if joining.is_empty() {
        return Ok(());
    }
    // A fresh token for this run (workers need no certificate key).
    let secrets = ctx
        .run(&first.name, JoinSecrets::op(false))
        .await?
        .map(|o| JoinSecrets::parse(&first.name, &o.stdout_str(), false))
        .transpose()?;
    let secrets = &secrets;
    ctx.each(names(joining.into_iter()), move |name| {
        Box::pin(async move {
            let h = ctx.c.host(&name).context("spec host")?;
            cri_gate(ctx, h).await?;
            ctx.run(&name, JoinSecrets::join(secrets.as_ref())).await?;
            Ok(())
        })
    })
    .await
}
