//! One etcd member at a time: health, drained restarts, learner joins and promotion.

use super::control_plane::{start_lab_apiserver, stop_lab_apiserver};
use crate::apply::Ctx;
use crate::apply::ops::{ETCD, LAB_APISERVER, Op, Systemctl};
use crate::apply::report::Kind;
use crate::etcd::{Member, Tls};
use crate::observe::haproxy::ServerState;
use crate::spec::{Bootstrap, Host, url};
use crate::transport::quote;
use anyhow::{Context, Result, bail};
use etcd_client::MemberAddOptions;
use std::collections::BTreeSet;
use std::time::Duration;

/// Where a joining member finds `initial-cluster-state=existing`; the unit reads it after
/// etcd.env, and it is removed once the member has its data.
pub const JOIN_ENV: &str = "/etc/etcd/etcd-join.env";

/// Restart one member (new settings or certificates) so that no client notices: the lab API
/// server on the host, which talks only to this member, stops first (it drains: in-flight
/// requests finish, HAProxy sends new connections to the others); leadership moves to another
/// member; etcd restarts; the API server comes back behind its /readyz gate and stays until
/// every HAProxy rates it UP again.
pub async fn restart_member(ctx: &Ctx, h: &Host, tls: &Tls) -> Result<()> {
    let name = &h.name;
    let api = ctx.c.kubernetes.bootstrap == Bootstrap::Lab && ctx.active(name, LAB_APISERVER);
    if api {
        stop_lab_apiserver(ctx, name).await?;
    }
    move_leader_off(ctx, h, tls).await?;
    ctx.run(name, Systemctl::Restart(ETCD)).await?;
    wait_all_healthy(ctx, tls).await?;
    if api {
        ctx.take(name, LAB_APISERVER);
        start_lab_apiserver(ctx, h).await?;
    }
    Ok(())
}

/// When `h` leads etcd, hand leadership to another member first: a planned restart then
/// costs no election.
pub async fn move_leader_off(ctx: &Ctx, h: &Host, tls: &Tls) -> Result<()> {
    let ep = url("https", h.address, ctx.c.etcd.client_port);
    ctx.act(
        &h.name,
        "etcd move-leader to another member, if this one leads",
        || async {
            let mut cl = crate::etcd::connect(&[ep], tls, Duration::from_secs(3)).await?;
            let st = cl.status().await.context("etcd status")?;
            let me = st.header().map(|x| x.member_id()).unwrap_or_default();
            if st.leader() != me {
                return Ok(());
            }
            let members = crate::etcd::members(&mut cl).await?;
            let Some(to) = members.iter().find(|m| m.id != me && !m.is_learner) else {
                return Ok(());
            };
            ctx.log(
                Kind::Command,
                &h.name,
                &format!("etcd move-leader {:x} ({})", to.id, to.name),
            );
            cl.move_leader(to.id)
                .await
                .with_context(|| format!("etcd move-leader to {}", to.name))?;
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// Wait until every HAProxy rates `server` UP (checks rise a few intervals after /readyz).
pub async fn haproxy_rates_up(ctx: &Ctx, server: &str) -> Result<()> {
    if !ctx.c.lb.stats.enabled {
        return Ok(());
    }
    let pw = ctx.state.stats_password();
    ctx.wait(
        server,
        "every HAProxy to rate it UP",
        "every HAProxy rates it UP",
        Duration::from_secs(30),
        || {
            let pw = pw.clone();
            async move {
                let lbs = crate::status::probes::haproxy(&ctx.c, pw.as_deref()).await;
                let not: Vec<String> = lbs
                    .iter()
                    .filter(|lb| {
                        !lb.servers
                            .iter()
                            .any(|s| s.server == server && s.status == ServerState::Up)
                    })
                    .map(|lb| lb.host.clone())
                    .collect();
                if not.is_empty() {
                    Ok(())
                } else {
                    bail!("not UP on {}", not.join(", "))
                }
            }
        },
    )
    .await
}

/// The members that serve a linearizable read now, by id (through their client URLs).
pub async fn member_health(members: &[Member], tls: &Tls) -> BTreeSet<u64> {
    let checks = members.iter().map(|m| async move {
        for ep in &m.client_urls {
            if crate::etcd::healthy(ep, tls, Duration::from_secs(2))
                .await
                .is_ok()
            {
                return Some(m.id);
            }
        }
        None
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A client on the members that answer now: etcd's client balances requests over its
/// endpoints and does not retry another one when a member is down.
async fn connect_healthy(ctx: &Ctx, tls: &Tls) -> Result<etcd_client::Client> {
    let checks = ctx.c.etcd_client_urls().into_iter().map(|ep| async move {
        crate::etcd::healthy(&ep, tls, Duration::from_secs(2))
            .await
            .ok()
            .map(|()| ep)
    });
    let up: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if up.is_empty() {
        bail!("no etcd member answers a linearizable read");
    }
    crate::etcd::connect(&up, tls, Duration::from_secs(5)).await
}

pub async fn current_members(ctx: &Ctx, tls: &Tls) -> Result<Vec<Member>> {
    let mut cl = connect_healthy(ctx, tls).await?;
    crate::etcd::members(&mut cl).await
}

/// The `ETCD_INITIAL_CLUSTER` a member joining at `peer` starts with: every other member as it
/// is now, and itself.
pub fn join_env(members: &[Member], name: &str, peer: &str) -> String {
    let mut list: Vec<String> = members
        .iter()
        .filter(|m| !m.name.is_empty() && !m.peer_urls.iter().any(|p| p == peer))
        .map(|m| format!("{}={}", m.name, m.peer_urls.join(",")))
        .collect();
    list.push(format!("{name}={peer}"));
    format!(
        "# Written by hakube when this member joined a running cluster; etcd.service reads it\n\
         # after etcd.env, and etcd uses it only while the data dir is empty.\n\
         ETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_CLUSTER_STATE=existing\n",
        list.join(",")
    )
}

/// Bring `h` into the cluster as a learner with a clean data dir, started with state
/// `existing`, then promote it once it caught up. With `replacing`, that member is removed
/// first (its seat is the one `h` takes).
pub async fn join(
    ctx: &Ctx,
    h: &Host,
    peer: &str,
    tls: &Tls,
    replacing: Option<u64>,
) -> Result<()> {
    if let Some(id) = replacing {
        ctx.act(&h.name, &format!("etcd member remove {id:x}"), || async {
            let mut cl = connect_healthy(ctx, tls).await?;
            cl.member_remove(id)
                .await
                .with_context(|| format!("etcd member remove {id:x}"))?;
            Ok(())
        })
        .await?;
    }
    // Whatever is in the data dir belongs to an earlier membership (etcd would exit with "member
    // removed", or bootstrap a cluster of its own): keep it aside, never delete it. The member
    // folder is renamed inside the data dir, which may be a mount point of its own.
    let dd = &ctx.c.etcd.data_dir;
    ctx.run(
        &h.name,
        Op::script_with_display(
            format!(
                "systemctl stop etcd 2>/dev/null; mkdir -p -m 700 {q} || exit 1; \
                 if [ -e {m} ]; then mv {m} {m}.hakube-stale-$(date +%s) || exit 1; fi",
                q = quote(dd),
                m = quote(&format!("{dd}/member")),
            ),
            format!("stop etcd; move {dd}/member aside if present (kept, not deleted)"),
        ),
    )
    .await?;
    let added = ctx
        .act(
            &h.name,
            &format!("etcd member add {} --learner --peer-urls={peer}", h.name),
            || async {
                let mut cl = connect_healthy(ctx, tls).await?;
                let r = cl
                    .member_add([peer], Some(MemberAddOptions::new().with_is_learner()))
                    .await
                    .with_context(|| format!("etcd member add {} --learner", h.name))?;
                // The list in the answer: a member list asked next may reach a member that has
                // not applied the change yet.
                Ok(crate::etcd::to_members(r.member_list()))
            },
        )
        .await?;
    // In dry-run the member list is today's: the join env shown is the one apply would write.
    let members = match added {
        Some(m) => m,
        None => current_members(ctx, tls).await.unwrap_or_default(),
    };
    ctx.write(
        &h.name,
        JOIN_ENV,
        join_env(&members, &h.name, peer).as_bytes(),
        0o640,
    )
    .await?;
    ctx.run(
        &h.name,
        Op::script_with_display(
            "systemctl daemon-reload; systemctl enable etcd >/dev/null 2>&1; systemctl restart etcd",
            "systemctl enable --now etcd (as a learner, state existing)",
        ),
    )
    .await?;
    match members
        .iter()
        .find(|m| m.peer_urls.iter().any(|p| p == peer))
    {
        Some(m) => promote(ctx, &h.name, m.id, tls).await?,
        // Only a dry-run gets here without an error: the member is not added yet.
        None => {
            ctx.act::<(), _, _>(
                &h.name,
                "etcd member promote, once the learner caught up",
                || async { bail!("{}: etcd member add did not list the new member", h.name) },
            )
            .await?;
        }
    }
    wait_all_healthy(ctx, tls).await?;
    // The member has its data now; a stale `existing` must not outlive it.
    ctx.run(
        &h.name,
        Op::script_with_display(format!("rm -f {JOIN_ENV}"), format!("remove {JOIN_ENV}")),
    )
    .await?;
    Ok(())
}

/// Promote a learner once it caught up with the leader (etcd refuses until then).
pub async fn promote(ctx: &Ctx, host: &str, id: u64, tls: &Tls) -> Result<()> {
    ctx.wait(
        host,
        &format!("learner {id:x} to catch up, to promote it (etcd member promote)"),
        &format!("etcd member {id:x} promoted"),
        Duration::from_secs(120),
        || async move {
            let mut cl = connect_healthy(ctx, tls).await?;
            cl.member_promote(id)
                .await
                .with_context(|| format!("etcd member promote {id:x}"))?;
            Ok(())
        },
    )
    .await
}

pub async fn all_healthy(ctx: &Ctx, tls: &Tls) -> Result<()> {
    let checks = ctx.c.control_planes().map(|h| async move {
        let ep = url("https", h.address, ctx.c.etcd.client_port);
        crate::etcd::healthy(&ep, tls, Duration::from_secs(2))
            .await
            .err()
            .map(|e| format!("{}: {e:#}", h.name))
    });
    let bad: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        bail!("{}", bad.join("; "))
    }
}

pub async fn wait_all_healthy(ctx: &Ctx, tls: &Tls) -> Result<()> {
    ctx.wait(
        "",
        "every etcd member to serve a linearizable read",
        "etcd: all members healthy",
        Duration::from_secs(90),
        || all_healthy(ctx, tls),
    )
    .await
}
