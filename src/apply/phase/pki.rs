//! Certificates from the operator's CAs to the control planes.

use super::names;
use crate::apply::{Ctx, Phase};
use crate::render::Component;
use crate::spec::{Bootstrap, Cluster, EtcdManagement};
use crate::transport::BoxFut;
use anyhow::Result;

pub struct Pki;

impl Phase for Pki {
    fn name(&self) -> &'static str {
        "pki"
    }
    fn describe(&self) -> &'static str {
        "certificates from the local CAs (kept 0600 in .hakube/<cluster>/pki) to the control planes"
    }
    fn applies(&self, c: &Cluster) -> bool {
        c.etcd.management == EtcdManagement::Hakube || c.kubernetes.bootstrap == Bootstrap::Lab
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(ctx.each(names(ctx.c.control_planes()), move |name| {
            Box::pin(async move {
                ctx.sync(&name, Component::Pki).await?;
                Ok(())
            })
        }))
    }
}
