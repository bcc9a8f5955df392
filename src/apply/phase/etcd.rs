//! etcd on every control plane: its config and unit, forming the cluster, membership to the
//! spec one change at a time, and rolling restarts for new settings.

use super::etcd_member::{
    all_healthy, current_members, join, member_health, promote, restart_member, wait_all_healthy,
};
use super::names;
use crate::apply::members::{self, Seat, Step};
use crate::apply::ops::{ETCD, ETCD_TLS, Systemctl};
use crate::apply::report::Kind;
use crate::apply::{Ctx, Phase};
use crate::render::Component;
use crate::spec::{Cluster, EtcdManagement, Host, url};
use crate::transport::BoxFut;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct Etcd;

impl Phase for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn describe(&self) -> &'static str {
        "etcd config and unit on every control plane; form the cluster or add members one at a time"
    }
    fn applies(&self, c: &Cluster) -> bool {
        c.etcd.management == EtcdManagement::Hakube
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: &Ctx) -> Result<()> {
    // A pinned etcd: its versioned folder and link first (refused on a version change).
    crate::install::etcd::ensure(ctx).await?;
    let cps: Vec<&Host> = ctx.c.control_planes().collect();
    ctx.each(names(cps.iter().copied()), move |name| {
        Box::pin(async move {
            let changed = ctx.sync(&name, Component::Etcd).await?;
            if changed.iter().any(|f| f.path.ends_with(".service")) {
                ctx.run(&name, Systemctl::DaemonReload).await?;
            }
            Ok(())
        })
    })
    .await?;
    let tls = ctx.state.operator_etcd_tls()?;
    let active: Vec<&Host> = cps
        .iter()
        .copied()
        .filter(|h| ctx.active(&h.name, ETCD))
        .collect();
    let endpoints: Vec<String> = active
        .iter()
        .map(|h| url("https", h.address, ctx.c.etcd.client_port))
        .collect();
    let members = if endpoints.is_empty() {
        None
    } else {
        match crate::etcd::connect(&endpoints, &tls, Duration::from_secs(3)).await {
            Ok(mut cl) => crate::etcd::members(&mut cl).await.ok(),
            Err(_) => None,
        }
    };
    let Some(members) = members else {
        return form(ctx, &cps, &active, &tls).await;
    };
    // An existing cluster: membership to the spec, one change at a time.
    let seats: Vec<Seat> = cps
        .iter()
        .map(|h| Seat {
            name: h.name.clone(),
            peer_url: url("https", h.address, ctx.c.etcd.peer_port),
            running: active.iter().any(|a| a.name == h.name),
            has_data: ctx.facts.get(&h.name).is_some_and(|f| f.etcd_data),
            reachable: ctx.facts.contains_key(&h.name),
        })
        .collect();
    let healthy = member_health(&members, &tls).await;
    let steps = members::plan(&seats, &members, &healthy).map_err(|r| anyhow!("{r}"))?;
    for step in steps {
        match step {
            Step::Start { host } => {
                ctx.take(&host, ETCD);
                ctx.run(&host, Systemctl::EnableStart(ETCD)).await?;
                wait_all_healthy(ctx, &tls).await?;
            }
            Step::Promote { host, id } => {
                promote(ctx, &host, id, &tls).await?;
                wait_all_healthy(ctx, &tls).await?;
            }
            Step::Add { host, peer_url } => {
                ctx.take(&host, ETCD);
                let h = ctx.c.host(&host).context("spec host")?;
                join(ctx, h, &peer_url, &tls, None).await?;
            }
            Step::Replace {
                host,
                peer_url,
                stale,
                stale_name,
                why,
            } => {
                ctx.take(&host, ETCD);
                let name = if stale_name.is_empty() {
                    format!("{stale:x}")
                } else {
                    format!("{stale_name} ({stale:x})")
                };
                ctx.log(
                    Kind::Info,
                    &host,
                    &format!("replacing etcd member {name}: {why}"),
                );
                let h = ctx.c.host(&host).context("spec host")?;
                join(ctx, h, &peer_url, &tls, Some(stale)).await?;
            }
        }
    }
    // Changed settings: a rolling restart, only while every member is healthy (checked in
    // dry-run too, so that it says apply would refuse).
    let mut reload = Vec::new();
    for h in &cps {
        let running = active.iter().any(|a| a.name == h.name);
        let restart = ctx.take(&h.name, ETCD);
        let new_certs = ctx.take(&h.name, ETCD_TLS);
        if !running {
            continue;
        }
        if !restart {
            if new_certs {
                reload.push(*h);
            }
            continue;
        }
        if let Err(e) = all_healthy(ctx, &tls).await
            && !ctx.opts.force
        {
            bail!(
                "{}: etcd needs a restart for new settings, but the cluster is not fully healthy, so a restart could lose quorum: {e:#}\n  help: fix the unhealthy member first, or pass --force",
                h.name
            );
        }
        restart_member(ctx, h, &tls).await?;
    }
    // New serving certificates only: no restart, so no leadership move and no write in flight
    // failed by it. A member that still serves the old ones restarts as for new settings.
    for h in reload {
        if let Err(e) = serves_new_certs(ctx, h, &tls).await {
            ctx.log(
                Kind::Warn,
                &h.name,
                &format!("etcd did not load its new certificates on a new connection ({e:#}); restarting it"),
            );
            all_healthy(ctx, &tls).await.with_context(|| {
                format!("{}: etcd needs a restart for its new certificates, but the cluster is not fully healthy\n  help: fix the unhealthy member first", h.name)
            })?;
            restart_member(ctx, h, &tls).await?;
        }
    }
    let spec_names: BTreeSet<&str> = cps.iter().map(|h| h.name.as_str()).collect();
    let peers: BTreeSet<&str> = seats.iter().map(|s| s.peer_url.as_str()).collect();
    let members = current_members(ctx, &tls).await.unwrap_or(members);
    for m in &members {
        if !m.name.is_empty()
            && !spec_names.contains(m.name.as_str())
            && !m.peer_urls.iter().any(|p| peers.contains(p.as_str()))
        {
            ctx.log(Kind::Warn, "", &format!("etcd member {} ({:x}) is not in the spec and still answers; hakube leaves it alone (see `hakube doctor`)", m.name, m.id));
        }
    }
    ctx.state.record_etcd_formed()
}

/// No running member answers: form the cluster, or start a stopped one.
async fn form(ctx: &Ctx, cps: &[&Host], active: &[&Host], tls: &crate::etcd::Tls) -> Result<()> {
    // Once the cluster was formed, members without data must not start beside members with
    // data: with state `new` they would bootstrap an empty cluster of their own. Only a restore
    // brings the data back. When every member is empty (new hardware for a restore, say) there
    // is nothing to split.
    let empty: Vec<&str> = cps
        .iter()
        .filter(|h| ctx.facts.get(&h.name).is_some_and(|f| !f.etcd_data))
        .map(|h| h.name.as_str())
        .collect();
    if ctx.state.etcd_formed() && !empty.is_empty() && empty.len() < cps.len() {
        bail!(
            "etcd was formed, but no member answers and {} ha{} no data: apply cannot \
             rebuild lost data, and starting empty members would create a new, empty \
             cluster beside the data.\n  help: if the members with data are only \
             stopped or cut off, start them or heal the network and run apply again; \
             otherwise restore the last backup: `hakube backup list -f SPEC`, then \
             `hakube restore BACKUP -f SPEC --yes`",
            empty.join(", "),
            if empty.len() == 1 { "s" } else { "ve" }
        );
    }
    if ctx.state.etcd_formed() && empty.len() == cps.len() {
        ctx.log(Kind::Warn, "", "etcd was formed before, but every member's data dir is empty: forming a new, empty cluster; if it held data, restore it now (`hakube restore BACKUP -f SPEC --yes`)");
    }
    // Every member must start at once, since each waits for a quorum of its peers.
    let to_start: Vec<String> = cps
        .iter()
        .filter(|h| !active.iter().any(|a| a.name == h.name))
        .map(|h| h.name.clone())
        .collect();
    if !active.is_empty() {
        ctx.log(Kind::Warn, "", "etcd runs on some control planes but no member answers; starting the rest so a quorum can form");
    }
    ctx.each(to_start, move |name| {
        Box::pin(async move {
            ctx.run(&name, Systemctl::EnableStart(ETCD)).await?;
            Ok(())
        })
    })
    .await?;
    wait_all_healthy(ctx, tls).await?;
    ctx.state.record_etcd_formed()
}

/// Wait until `h`'s etcd serves, on a new TLS handshake on its client and peer ports, the
/// certificates just written to it (etcd reads them again on every handshake).
async fn serves_new_certs(ctx: &Ctx, h: &Host, tls: &crate::etcd::Tls) -> Result<()> {
    use rustls_pki_types::pem::PemObject;
    let want = |path: &str| -> Result<Vec<u8>> {
        let f = ctx
            .files
            .iter()
            .find(|f| f.host == h.name && f.path == path)
            .with_context(|| format!("{path} is not among {}'s files", h.name))?;
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(f.content.as_bytes())
            .next()
            .with_context(|| format!("{path}: no certificate"))?
            .with_context(|| format!("{path}: not PEM"))?;
        Ok(der.to_vec())
    };
    let ports = [
        (
            "client",
            ctx.c.etcd.client_port,
            want("/etc/etcd/pki/server.crt")?,
        ),
        (
            "peer",
            ctx.c.etcd.peer_port,
            want("/etc/etcd/pki/peer.crt")?,
        ),
    ];
    let cfg = crate::status::probes::tls_config(&tls.ca_pem, Some((&tls.cert_pem, &tls.key_pem)))?;
    let ports = &ports;
    let cfg = &cfg;
    ctx.wait(
        &h.name,
        "etcd to serve its new certificates on its client and peer ports (no restart: etcd loads them on each new connection)",
        "etcd serves its new certificates (not restarted)",
        Duration::from_secs(10),
        || async move {
            for (which, port, der) in ports {
                let addr = std::net::SocketAddr::new(h.address, *port);
                let got = crate::status::probes::served_der(cfg, addr).await?;
                if &got != der {
                    bail!("the {which} port {addr} still serves the old certificate");
                }
            }
            Ok(())
        },
    )
    .await
}
