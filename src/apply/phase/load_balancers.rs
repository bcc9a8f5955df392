//! HAProxy and keepalived, one load balancer at a time, each config validated on the host
//! before a reload; then exactly one VIP holder.

use crate::apply::ops::{HAPROXY, KEEPALIVED, Op, Systemctl};
use crate::apply::report::Kind;
use crate::apply::{Ctx, Phase};
use crate::render::check::{haproxy_test_command, keepalived_test_command};
use crate::render::{Component, HAPROXY_ENV};
use crate::spec::Host;
use crate::transport::{self, BoxFut, quote};
use anyhow::{Result, bail};
use std::time::Duration;

const HAPROXY_DROP_IN: &str = "/etc/systemd/system/haproxy.service.d/";

pub struct LoadBalancers;

impl Phase for LoadBalancers {
    fn name(&self) -> &'static str {
        "loadbalancers"
    }
    fn describe(&self) -> &'static str {
        "haproxy and keepalived, validated on the host before a reload; then exactly one VIP holder"
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            // One LB at a time, so that a bad config can never take both down.
            let mut acted = false;
            for h in ctx.c.load_balancers() {
                acted |= lb_host(ctx, h).await?;
            }
            let vip = ctx.c.lb.vip.to_string();
            // Nothing changed on the LBs and the facts (read moments ago) saw one holder: there
            // is no move to wait for. `verify` still checks the VIP answers.
            let held: Vec<&str> = ctx
                .c
                .load_balancers()
                .filter(|h| {
                    ctx.facts
                        .get(&h.name)
                        .is_some_and(|f| f.interface_of(&vip).is_some())
                })
                .map(|h| h.name.as_str())
                .collect();
            if !acted && held.len() == 1 {
                ctx.log(
                    Kind::Ok,
                    "",
                    &format!(
                        "VIP {vip} has one holder ({}), nothing changed on the load balancers",
                        held[0]
                    ),
                );
                return Ok(());
            }
            ctx.wait(
                "",
                &format!("exactly one load balancer to hold {vip}"),
                &format!("VIP {vip} has one holder"),
                Duration::from_secs(20),
                || async {
                    let holders = vip_holders(ctx, &vip).await?;
                    if holders.len() == 1 {
                        Ok(())
                    } else {
                        bail!("the VIP is on {holders:?}")
                    }
                },
            )
            .await
        })
    }
}

/// The load balancers whose interfaces carry `vip`, asked over apply's connections.
pub async fn vip_holders(ctx: &Ctx, vip: &str) -> Result<Vec<String>> {
    let lbs = ctx
        .c
        .load_balancers()
        .map(|h| Ok((h.name.as_str(), ctx.host(&h.name)?)))
        .collect::<Result<Vec<_>>>()?;
    crate::observe::vip::holders(&lbs, vip).await
}

/// Bring one load balancer to the spec; whether anything was (or in dry-run would be) done.
async fn lb_host(ctx: &Ctx, h: &Host) -> Result<bool> {
    let name = &h.name;
    let changed = ctx.sync(name, Component::LoadBalancer).await?;
    let touched = |p: &str| changed.iter().any(|c| c.path.starts_with(p));
    if touched(HAPROXY_DROP_IN) {
        ctx.run(name, Systemctl::DaemonReload).await?;
    }
    // The drop-in alone needs no restart: its ExecStartPost=/ExecStopPost= lines apply from the
    // next start or stop, and its EnvironmentFile= path never changes (the file's contents do,
    // and those restart it). A restart on the VIP holder refuses connections.
    let hap_changed = touched("/etc/haproxy/");
    let hap_active = ctx.active(name, HAPROXY);
    let ka_active = ctx.active(name, KEEPALIVED);
    let acted = !changed.is_empty() || !hap_active || !ka_active;
    if hap_changed || !hap_active {
        // The runtime API socket's folder; Debian makes it with tmpfiles.d at boot.
        let t = ctx.host(name)?;
        if transport::run(
            t,
            "test -d /run/haproxy",
            "test -d /run/haproxy",
            Duration::from_secs(10),
        )
        .await
        .is_err()
        {
            ctx.run(
                name,
                Op::script_with_display(
                    "install -d -m 2775 -o haproxy -g haproxy /run/haproxy",
                    "install -d /run/haproxy",
                ),
            )
            .await?;
        }
        validate(
            ctx,
            name,
            &haproxy_test_command("/etc/haproxy/haproxy.cfg", HAPROXY_ENV),
            "haproxy -c",
            "/etc/haproxy/haproxy.cfg",
        )
        .await?;
        let op = if !hap_active {
            Systemctl::EnableStart(HAPROXY)
        } else if touched(HAPROXY_ENV) {
            // A new environment only reaches a fresh process.
            Systemctl::Restart(HAPROXY)
        } else {
            // Seamless: the new workers take over the listeners, old ones finish their sessions.
            Systemctl::Reload(HAPROXY)
        };
        ctx.run(name, op).await?;
    }
    if touched("/etc/keepalived/") || !ka_active {
        validate(
            ctx,
            name,
            &keepalived_test_command("/etc/keepalived/keepalived.conf"),
            "keepalived --config-test",
            "/etc/keepalived/keepalived.conf",
        )
        .await?;
        let op = if ka_active {
            Systemctl::Reload(KEEPALIVED)
        } else {
            Systemctl::EnableStart(KEEPALIVED)
        };
        ctx.run(name, op).await?;
    }
    Ok(acted)
}

/// Validate a config on the host; on failure put the previous version back and stop.
async fn validate(ctx: &Ctx, host: &str, script: &str, tool: &str, path: &str) -> Result<()> {
    ctx.act(host, &format!("{tool} {path}"), || async {
        let t = ctx.host(host)?;
        let out = transport::run(t, &format!("{script} 2>&1"), tool, Duration::from_secs(30)).await;
        let text = out.as_ref().map(|o| o.stdout_str()).unwrap_or_default();
        let bad = out.is_err()
            || text.contains("[ALERT]")
            || (tool == "keepalived --config-test" && !text.trim().is_empty());
        if !bad {
            return Ok(());
        }
        let q = quote(path);
        let _ = transport::run(
            t,
            &format!("if [ -f {q}.hakube-prev ]; then mv -f {q}.hakube-prev {q}; fi"),
            "roll back",
            Duration::from_secs(10),
        )
        .await;
        let detail = match out {
            Err(e) => format!("{e:#}"),
            Ok(_) => transport::tail(&text, 12),
        };
        bail!(
            "{host}: {tool} rejected {path}; the previous version was restored and nothing was reloaded:\n{detail}"
        )
    })
    .await?;
    Ok(())
}
