//! The phases of apply, in order: prepare, PKI, etcd, load balancers, control plane, workers,
//! verify.

use super::files::{LAB_APISERVER_BIN, LAB_APISERVER_UNIT, LAB_PKI};
use super::members::{self, Seat, Step};
use super::{Ctx, Phase};
use crate::render::check::{haproxy_test_command, keepalived_test_command};
use crate::render::kubeadm;
use crate::spec::{Bootstrap, Cluster, EtcdManagement, Host, url};
use crate::transport::{self, BoxFut, quote};
use anyhow::{Context, Result, anyhow, bail};
use etcd_client::MemberAddOptions;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn names<'a>(it: impl Iterator<Item = &'a Host>) -> Vec<String> {
    it.map(|h| h.name.clone()).collect()
}

/// Poll `check` until it succeeds or `limit` passes; the last error explains a timeout.
pub(crate) async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not reached within {}s", limit.as_secs())));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------

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
            Box::pin(async move {
                let h = ctx.c.host(&name).context("host")?;
                let f = ctx.facts.get(&name).context("facts")?;
                let mut pkgs: Vec<String> = Vec::new();
                if h.roles.loadbalancer {
                    let pins = &ctx.c.lb.packages;
                    for b in ["haproxy", "keepalived", "curl"] {
                        if !f.binaries.contains_key(b) && !pins.contains_key(b) {
                            pkgs.push(b.into());
                        }
                    }
                    pkgs.extend(crate::install::package_pins(pins, |p| {
                        f.versions.get(&format!("pkg-{p}")).cloned()
                    }));
                }
                let kubeadm_host = ctx.c.kubernetes.bootstrap == Bootstrap::Kubeadm
                    && (h.roles.control_plane || h.roles.worker);
                if kubeadm_host && !f.binaries.contains_key("kubeadm") {
                    // Pinned: an unpinned install or `yum update` would pick whatever is newest.
                    let v = &ctx.c.kubernetes.version;
                    for p in ["kubelet", "kubeadm", "kubectl"] {
                        pkgs.push(format!("{p}={}.{}.{}-*", v.major, v.minor, v.patch));
                    }
                }
                if !pkgs.is_empty() {
                    let list = pkgs.join(" ");
                    let hold = if kubeadm_host {
                        " && apt-mark hold kubelet kubeadm kubectl"
                    } else {
                        ""
                    };
                    ctx.cmd(
                        &name,
                        &format!("DEBIAN_FRONTEND=noninteractive apt-get install -y {list}{hold}"),
                        &format!("apt-get install -y {list}{hold}"),
                    )
                    .await?;
                }
                let changed = ctx
                    .sync(&name, |f| {
                        f.path.starts_with("/etc/sysctl.d/")
                            || f.path.starts_with("/etc/modules-load.d/")
                    })
                    .await?;
                for f in &changed {
                    if f.path.starts_with("/etc/modules-load.d/") {
                        let mods: Vec<&str> = f
                            .content
                            .lines()
                            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                            .collect();
                        ctx.cmd(
                            &name,
                            &format!("modprobe -a {}", mods.join(" ")),
                            &format!("modprobe -a {}", mods.join(" ")),
                        )
                        .await?;
                    }
                }
                for f in changed
                    .iter()
                    .filter(|f| f.path.starts_with("/etc/sysctl.d/"))
                {
                    ctx.cmd(
                        &name,
                        &format!("sysctl -q -p {}", quote(&f.path)),
                        &format!("sysctl -p {}", f.path),
                    )
                    .await?;
                }
                if kubeadm_host && f.swap_on {
                    ctx.cmd(
                        &name,
                        "swapoff -a && sed -i.hakube-prev '/\\sswap\\s/ s/^[^#]/#&/' /etc/fstab",
                        "swapoff -a (and comment swap out of /etc/fstab)",
                    )
                    .await?;
                }
                Ok(())
            })
        }))
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Pki;

fn is_pki(f: &crate::render::RenderedFile) -> bool {
    f.path.starts_with("/etc/etcd/pki/")
        || f.path.starts_with(LAB_PKI)
        || f.path == crate::state::MARKER_PATH
}

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
                ctx.sync(&name, is_pki).await?;
                Ok(())
            })
        }))
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Etcd;

const JOIN_ENV: &str = "/etc/etcd/etcd-join.env";

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
        Box::pin(async move {
            crate::install::etcd::ensure(ctx).await?;
            let cps: Vec<&Host> = ctx.c.control_planes().collect();
            ctx.each(names(cps.iter().copied()), move |name| {
                Box::pin(async move {
                    let changed = ctx
                        .sync(&name, |f| {
                            f.path == "/etc/etcd/etcd.env"
                                || f.path == "/etc/systemd/system/etcd.service"
                        })
                        .await?;
                    if changed.iter().any(|f| f.path.ends_with(".service")) {
                        ctx.cmd(&name, "systemctl daemon-reload", "systemctl daemon-reload")
                            .await?;
                    }
                    Ok(())
                })
            })
            .await?;
            let tls = ctx.state.operator_etcd_tls()?;
            let timeout = Duration::from_secs(3);
            let active: Vec<&Host> = cps
                .iter()
                .copied()
                .filter(|h| ctx.facts.get(&h.name).is_some_and(|f| f.active("etcd")))
                .collect();
            let endpoints: Vec<String> = active
                .iter()
                .map(|h| url("https", h.address, ctx.c.etcd.client_port))
                .collect();
            let members = if endpoints.is_empty() {
                None
            } else {
                match crate::etcd::connect(&endpoints, &tls, timeout).await {
                    Ok(mut cl) => crate::etcd::members(&mut cl).await.ok(),
                    Err(_) => None,
                }
            };
            let Some(members) = members else {
                // No running member answers. Once the cluster was formed, members without data
                // must not start beside members with data: with state `new` they would bootstrap
                // an empty cluster of their own. Only a restore brings the data back. When every
                // member is empty (new hardware for a restore, say) there is nothing to split.
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
                    ctx.log("warn", "", "etcd was formed before, but every member's data dir is empty: forming a new, empty cluster; if it held data, restore it now (`hakube restore BACKUP -f SPEC --yes`)");
                }
                // Form the cluster (or restart a stopped one). Every member must start at once,
                // since each waits for a quorum of its peers.
                let to_start: Vec<String> = cps
                    .iter()
                    .filter(|h| !active.iter().any(|a| a.name == h.name))
                    .map(|h| h.name.clone())
                    .collect();
                if !active.is_empty() {
                    ctx.log("warn", "", "etcd runs on some control planes but no member answers; starting the rest so a quorum can form");
                }
                ctx.each(to_start, move |name| {
                    Box::pin(async move {
                        ctx.cmd(
                            &name,
                            "systemctl enable etcd >/dev/null 2>&1; systemctl start etcd",
                            "systemctl enable --now etcd",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .await?;
                wait_all_healthy(ctx, &tls).await?;
                return ctx.state.record_etcd_formed();
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
                        ctx.take(&host, "etcd");
                        ctx.cmd(
                            &host,
                            "systemctl enable etcd >/dev/null 2>&1; systemctl start etcd",
                            "systemctl enable --now etcd",
                        )
                        .await?;
                        wait_all_healthy(ctx, &tls).await?;
                    }
                    Step::Promote { host, id } => {
                        promote(ctx, &host, id, &tls).await?;
                        wait_all_healthy(ctx, &tls).await?;
                    }
                    Step::Add { host, peer_url } => {
                        ctx.take(&host, "etcd");
                        join(
                            ctx,
                            ctx.c.host(&host).context("spec host")?,
                            &peer_url,
                            &tls,
                            None,
                        )
                        .await?;
                    }
                    Step::Replace {
                        host,
                        peer_url,
                        stale,
                        stale_name,
                        why,
                    } => {
                        ctx.take(&host, "etcd");
                        let name = if stale_name.is_empty() {
                            format!("{stale:x}")
                        } else {
                            format!("{stale_name} ({stale:x})")
                        };
                        ctx.log(
                            "info",
                            &host,
                            &format!("replacing etcd member {name}: {why}"),
                        );
                        let h = ctx.c.host(&host).context("spec host")?;
                        join(ctx, h, &peer_url, &tls, Some(stale)).await?;
                    }
                }
            }
            // Changed settings: a rolling restart, only while every member is healthy.
            for h in &cps {
                let running = active.iter().any(|a| a.name == h.name);
                if !running || !ctx.take(&h.name, "etcd") {
                    continue;
                }
                if !ctx.opts.dry_run
                    && let Err(e) = all_healthy(ctx, &tls).await
                    && !ctx.opts.force
                {
                    bail!(
                        "{}: etcd needs a restart for new settings, but the cluster is not fully healthy, so a restart could lose quorum: {e:#}\n  help: fix the unhealthy member first, or pass --force",
                        h.name
                    );
                }
                restart_member(ctx, h, &tls).await?;
            }
            let spec_names: BTreeSet<&str> = cps.iter().map(|h| h.name.as_str()).collect();
            let peers: BTreeSet<&str> = seats.iter().map(|s| s.peer_url.as_str()).collect();
            let members = current_members(ctx, &tls).await.unwrap_or(members);
            for m in &members {
                if !m.name.is_empty()
                    && !spec_names.contains(m.name.as_str())
                    && !m.peer_urls.iter().any(|p| peers.contains(p.as_str()))
                {
                    ctx.log("warn", "", &format!("etcd member {} ({:x}) is not in the spec and still answers; hakube leaves it alone (see `hakube doctor`)", m.name, m.id));
                }
            }
            ctx.state.record_etcd_formed()
        })
    }
}

/// Restart one member (new settings or certificates) so that no client notices: the lab API
/// server on the host, which talks only to this member, stops first (it drains: in-flight
/// requests finish, HAProxy sends new connections to the others); leadership moves to another
/// member; etcd restarts; the API server comes back behind its /readyz gate and stays until
/// every HAProxy rates it UP again.
pub(crate) async fn restart_member(ctx: &Ctx, h: &Host, tls: &crate::etcd::Tls) -> Result<()> {
    let name = &h.name;
    let api = ctx.c.kubernetes.bootstrap == Bootstrap::Lab
        && ctx
            .facts
            .get(name)
            .is_some_and(|f| f.active("hakube-lab-apiserver"));
    if api {
        ctx.cmd(
            name,
            "systemctl stop hakube-lab-apiserver",
            "systemctl stop hakube-lab-apiserver (drains; HAProxy sends new connections elsewhere)",
        )
        .await?;
    }
    move_leader_off(ctx, h, tls).await?;
    ctx.cmd(name, "systemctl restart etcd", "systemctl restart etcd")
        .await?;
    wait_all_healthy(ctx, tls).await?;
    if api {
        ctx.take(name, "hakube-lab-apiserver");
        ctx.cmd(
            name,
            "systemctl start hakube-lab-apiserver",
            "systemctl start hakube-lab-apiserver",
        )
        .await?;
        let ca = crate::probe::client_config(ctx.state.cluster_ca.cert_pem())?;
        readyz_gate(ctx, &ca, h).await?;
        haproxy_rates_up(ctx, name).await?;
    }
    Ok(())
}

/// When `h` leads etcd, hand leadership to another member first: a planned restart then
/// costs no election.
pub(crate) async fn move_leader_off(ctx: &Ctx, h: &Host, tls: &crate::etcd::Tls) -> Result<()> {
    if ctx.opts.dry_run {
        ctx.log(
            "command",
            &h.name,
            "would move etcd leadership to another member if this one leads",
        );
        return Ok(());
    }
    let ep = url("https", h.address, ctx.c.etcd.client_port);
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
        "command",
        &h.name,
        &format!("etcd move-leader {:x} ({})", to.id, to.name),
    );
    cl.move_leader(to.id)
        .await
        .with_context(|| format!("etcd move-leader to {}", to.name))?;
    Ok(())
}

/// Wait until every HAProxy rates `server` UP (checks rise a few intervals after /readyz).
pub(crate) async fn haproxy_rates_up(ctx: &Ctx, server: &str) -> Result<()> {
    if ctx.opts.dry_run || !ctx.c.lb.stats.enabled {
        return Ok(());
    }
    let pw = ctx.state.stats_password();
    wait_for(
        &format!("every HAProxy rates {server} UP"),
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
                            .any(|s| s.server == server && s.status == "UP")
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
    .await?;
    ctx.log("ok", server, "every HAProxy rates it UP");
    Ok(())
}

/// The members that serve a linearizable read now, by id (through their client URLs).
async fn member_health(members: &[crate::etcd::Member], tls: &crate::etcd::Tls) -> BTreeSet<u64> {
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
async fn connect_healthy(ctx: &Ctx, tls: &crate::etcd::Tls) -> Result<etcd_client::Client> {
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

async fn current_members(ctx: &Ctx, tls: &crate::etcd::Tls) -> Result<Vec<crate::etcd::Member>> {
    let mut cl = connect_healthy(ctx, tls).await?;
    crate::etcd::members(&mut cl).await
}

/// Bring `h` into the cluster as a learner with a clean data dir, started with state
/// `existing`, then promote it once it caught up. With `replacing`, that member is removed
/// first (its seat is the one `h` takes).
async fn join(
    ctx: &Ctx,
    h: &Host,
    peer: &str,
    tls: &crate::etcd::Tls,
    replacing: Option<u64>,
) -> Result<()> {
    if let Some(id) = replacing {
        if ctx.opts.dry_run {
            ctx.log(
                "command",
                &h.name,
                &format!("would run: etcd member remove {id:x}"),
            );
        } else {
            let mut cl = connect_healthy(ctx, tls).await?;
            ctx.log("command", &h.name, &format!("etcd member remove {id:x}"));
            cl.member_remove(id)
                .await
                .with_context(|| format!("etcd member remove {id:x}"))?;
        }
    }
    // Whatever is in the data dir belongs to an earlier membership (etcd would exit with "member
    // removed", or bootstrap a cluster of its own): keep it aside, never delete it. The member
    // folder is renamed inside the data dir, which may be a mount point of its own.
    let dd = &ctx.c.etcd.data_dir;
    ctx.cmd(
        &h.name,
        &format!(
            "systemctl stop etcd 2>/dev/null; mkdir -p -m 700 {q} || exit 1; \
             if [ -e {m} ]; then mv {m} {m}.hakube-stale-$(date +%s) || exit 1; fi",
            q = quote(dd),
            m = quote(&format!("{dd}/member")),
        ),
        &format!("stop etcd; move {dd}/member aside if present (kept, not deleted)"),
    )
    .await?;
    let members = if ctx.opts.dry_run {
        ctx.log(
            "command",
            &h.name,
            &format!(
                "would run: etcd member add {} --learner --peer-urls={peer}",
                h.name
            ),
        );
        current_members(ctx, tls).await.unwrap_or_default()
    } else {
        let mut cl = connect_healthy(ctx, tls).await?;
        ctx.log(
            "command",
            &h.name,
            &format!("etcd member add {} --learner --peer-urls={peer}", h.name),
        );
        cl.member_add([peer], Some(MemberAddOptions::new().with_is_learner()))
            .await
            .with_context(|| format!("etcd member add {} --learner", h.name))?;
        crate::etcd::members(&mut cl).await?
    };
    let mut list: Vec<String> = members
        .iter()
        .filter(|m| !m.name.is_empty() && !m.peer_urls.iter().any(|p| p == peer))
        .map(|m| format!("{}={}", m.name, m.peer_urls.join(",")))
        .collect();
    list.push(format!("{}={peer}", h.name));
    let env = format!(
        "# Written by hakube when this member joined a running cluster; etcd.service reads it\n\
         # after etcd.env, and etcd uses it only while the data dir is empty.\n\
         ETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_CLUSTER_STATE=existing\n",
        list.join(",")
    );
    if ctx.opts.dry_run {
        ctx.log(
            "change",
            &h.name,
            &format!("would write {JOIN_ENV}: ETCD_INITIAL_CLUSTER_STATE=existing"),
        );
    } else {
        transport::write_file(ctx.host(&h.name)?, JOIN_ENV, env.as_bytes(), 0o640).await?;
    }
    ctx.cmd(
        &h.name,
        "systemctl daemon-reload; systemctl enable etcd >/dev/null 2>&1; systemctl restart etcd",
        "systemctl enable --now etcd (as a learner, state existing)",
    )
    .await?;
    let id = members
        .iter()
        .find(|m| m.peer_urls.iter().any(|p| p == peer))
        .map(|m| m.id);
    match id {
        Some(id) => promote(ctx, &h.name, id, tls).await?,
        None if ctx.opts.dry_run => ctx.log(
            "wait",
            &h.name,
            "would wait until the learner caught up, then etcd member promote",
        ),
        None => bail!("{}: etcd member add did not list the new member", h.name),
    }
    wait_all_healthy(ctx, tls).await?;
    // The member has its data now; a stale `existing` must not outlive it.
    ctx.cmd(
        &h.name,
        &format!("rm -f {JOIN_ENV}"),
        &format!("remove {JOIN_ENV}"),
    )
    .await?;
    Ok(())
}

/// Promote a learner once it caught up with the leader (etcd refuses until then).
async fn promote(ctx: &Ctx, host: &str, id: u64, tls: &crate::etcd::Tls) -> Result<()> {
    if ctx.opts.dry_run {
        ctx.log(
            "wait",
            host,
            &format!("would wait until learner {id:x} caught up, then etcd member promote"),
        );
        return Ok(());
    }
    ctx.log(
        "wait",
        host,
        &format!("waiting until learner {id:x} caught up, to promote it"),
    );
    wait_for(
        &format!("{host}: etcd member promote {id:x}"),
        Duration::from_secs(120),
        || async move {
            let mut cl = connect_healthy(ctx, tls).await?;
            cl.member_promote(id)
                .await
                .with_context(|| format!("etcd member promote {id:x}"))?;
            Ok(())
        },
    )
    .await?;
    ctx.log("ok", host, &format!("etcd member {id:x} promoted"));
    Ok(())
}

pub(crate) async fn all_healthy(ctx: &Ctx, tls: &crate::etcd::Tls) -> Result<()> {
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

pub(crate) async fn wait_all_healthy(ctx: &Ctx, tls: &crate::etcd::Tls) -> Result<()> {
    if ctx.opts.dry_run {
        ctx.log(
            "wait",
            "",
            "would wait until every etcd member serves a linearizable read",
        );
        return Ok(());
    }
    ctx.log(
        "wait",
        "",
        "waiting until every etcd member serves a linearizable read",
    );
    wait_for("every etcd member healthy", Duration::from_secs(90), || {
        all_healthy(ctx, tls)
    })
    .await?;
    ctx.log("ok", "", "etcd: all members healthy");
    Ok(())
}

// ---------------------------------------------------------------------------------------------

pub struct LoadBalancers;

fn is_lb_file(f: &crate::render::RenderedFile) -> bool {
    f.path.starts_with("/etc/haproxy/")
        || f.path.starts_with("/etc/keepalived/")
        || f.path.starts_with("/etc/systemd/system/haproxy.service.d/")
}

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
            for h in ctx.c.load_balancers() {
                lb_host(ctx, h).await?;
            }
            if ctx.opts.dry_run {
                ctx.log(
                    "wait",
                    "",
                    &format!(
                        "would wait until exactly one load balancer holds {}",
                        ctx.c.lb.vip
                    ),
                );
                return Ok(());
            }
            let vip = ctx.c.lb.vip.to_string();
            wait_for(
                "exactly one VIP holder",
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
            .await?;
            let holders = vip_holders(ctx, &vip).await?;
            ctx.log("ok", "", &format!("VIP {vip} is on {}", holders.join(", ")));
            Ok(())
        })
    }
}

/// The load balancers whose interfaces carry `vip`.
pub async fn vip_holders(ctx: &Ctx, vip: &str) -> Result<Vec<String>> {
    let asks = ctx.c.load_balancers().map(|h| async move {
        let o = transport::run(
            ctx.host(&h.name)?,
            "ip -o addr show",
            "ip -o addr show",
            Duration::from_secs(5),
        )
        .await?;
        let holds = o
            .stdout_str()
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(vip));
        anyhow::Ok(holds.then(|| h.name.clone()))
    });
    let mut out = Vec::new();
    for r in futures::future::join_all(asks).await {
        out.extend(r?);
    }
    Ok(out)
}

async fn lb_host(ctx: &Ctx, h: &Host) -> Result<()> {
    let name = &h.name;
    let changed = ctx.sync(name, is_lb_file).await?;
    let f = ctx.facts.get(name).context("facts")?;
    let touched = |p: &str| changed.iter().any(|c| c.path.starts_with(p));
    if touched("/etc/systemd/system/haproxy.service.d/") {
        ctx.cmd(name, "systemctl daemon-reload", "systemctl daemon-reload")
            .await?;
    }
    let hap_changed = touched("/etc/haproxy/") || touched("/etc/systemd/system/haproxy.service.d/");
    if hap_changed || !f.active("haproxy") {
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
            ctx.cmd(
                name,
                "install -d -m 2775 -o haproxy -g haproxy /run/haproxy",
                "install -d /run/haproxy",
            )
            .await?;
        }
        validate(
            ctx,
            name,
            &haproxy_test_command("/etc/haproxy/haproxy.cfg", crate::render::HAPROXY_ENV),
            "haproxy -c",
            "/etc/haproxy/haproxy.cfg",
        )
        .await?;
        let (script, display) = if !f.active("haproxy") {
            (
                "systemctl enable haproxy >/dev/null 2>&1; systemctl start haproxy",
                "systemctl enable --now haproxy",
            )
        } else if touched(crate::render::HAPROXY_ENV)
            || touched("/etc/systemd/system/haproxy.service.d/")
        {
            // A new environment only reaches a fresh process.
            ("systemctl restart haproxy", "systemctl restart haproxy")
        } else {
            // Seamless: the new workers take over the listeners, old ones finish their sessions.
            ("systemctl reload haproxy", "systemctl reload haproxy")
        };
        ctx.cmd(name, script, display).await?;
    }
    let ka_changed = touched("/etc/keepalived/");
    if ka_changed || !f.active("keepalived") {
        validate(
            ctx,
            name,
            &keepalived_test_command("/etc/keepalived/keepalived.conf"),
            "keepalived --config-test",
            "/etc/keepalived/keepalived.conf",
        )
        .await?;
        let (script, display) = if f.active("keepalived") {
            ("systemctl reload keepalived", "systemctl reload keepalived")
        } else {
            (
                "systemctl enable keepalived >/dev/null 2>&1; systemctl start keepalived",
                "systemctl enable --now keepalived",
            )
        };
        ctx.cmd(name, script, display).await?;
    }
    Ok(())
}

/// Validate a config on the host; on failure put the previous version back and stop.
async fn validate(ctx: &Ctx, host: &str, script: &str, tool: &str, path: &str) -> Result<()> {
    if ctx.opts.dry_run {
        ctx.log("command", host, &format!("would run: {tool} {path}"));
        return Ok(());
    }
    let t = ctx.host(host)?;
    let out = transport::run(t, &format!("{script} 2>&1"), tool, Duration::from_secs(30)).await;
    let text = out.as_ref().map(|o| o.stdout_str()).unwrap_or_default();
    let bad = out.is_err()
        || text.contains("[ALERT]")
        || (tool == "keepalived --config-test" && !text.trim().is_empty());
    if bad {
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
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

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
                Bootstrap::Lab => lab_control_plane(ctx).await,
                Bootstrap::Kubeadm => kubeadm_control_plane(ctx).await,
            }
        })
    }
}

async fn lab_control_plane(ctx: &Ctx) -> Result<()> {
    ctx.log(
        "info",
        "",
        "bootstrap: lab — deploying hakube-lab-apiserver, a STAND-IN for kube-apiserver",
    );
    let ca = crate::probe::client_config(ctx.state.cluster_ca.cert_pem())?;
    // Files on every control plane at once (a no-op run only compares checksums); restarts
    // below stay one at a time.
    ctx.each(names(ctx.c.control_planes()), |name| {
        Box::pin(async move {
            let changed = ctx
                .sync(&name, |f| {
                    f.path == LAB_APISERVER_BIN || f.path == LAB_APISERVER_UNIT
                })
                .await?;
            if changed.iter().any(|f| f.path == LAB_APISERVER_UNIT) {
                ctx.cmd(&name, "systemctl daemon-reload", "systemctl daemon-reload")
                    .await?;
            }
            Ok(())
        })
    })
    .await?;
    for h in ctx.c.control_planes() {
        let name = &h.name;
        let active = ctx
            .facts
            .get(name)
            .is_some_and(|f| f.active("hakube-lab-apiserver"));
        let pending = ctx.take(name, "hakube-lab-apiserver");
        if !active {
            ctx.cmd(name, "systemctl enable hakube-lab-apiserver >/dev/null 2>&1; systemctl start hakube-lab-apiserver", "systemctl enable --now hakube-lab-apiserver").await?;
        } else if pending {
            ctx.cmd(
                name,
                "systemctl restart hakube-lab-apiserver",
                "systemctl restart hakube-lab-apiserver",
            )
            .await?;
        } else {
            continue;
        }
        // Health gate before the next one, so that at most one API server is ever down.
        readyz_gate(ctx, &ca, h).await?;
    }
    Ok(())
}

/// Wait until the API server on `h` answers `/readyz` with 200.
pub(crate) async fn readyz_gate(
    ctx: &Ctx,
    ca: &std::sync::Arc<rustls::ClientConfig>,
    h: &Host,
) -> Result<()> {
    let name = &h.name;
    let addr = SocketAddr::new(h.address, ctx.c.kubernetes.api_server_port);
    if ctx.opts.dry_run {
        ctx.log(
            "wait",
            name,
            &format!("would wait for https://{addr}/readyz = 200"),
        );
        return Ok(());
    }
    wait_for(
        &format!("{name}: /readyz"),
        Duration::from_secs(60),
        || async {
            let r = crate::probe::get(ca, addr, "/readyz", Duration::from_secs(2)).await?;
            if r.status == 200 {
                Ok(())
            } else {
                bail!("/readyz answered {}: {}", r.status, r.body.trim())
            }
        },
    )
    .await?;
    ctx.log("ok", name, &format!("https://{addr}/readyz is 200"));
    Ok(())
}

async fn kubeadm_control_plane(ctx: &Ctx) -> Result<()> {
    let cps: Vec<&Host> = ctx.c.control_planes().collect();
    let Some(first) = cps.first() else {
        return Ok(());
    };
    for h in &cps {
        ctx.sync(&h.name, |f| {
            f.path.starts_with(kubeadm::DIR) || f.path == kubeadm::AUDIT_POLICY
        })
        .await?;
    }
    let done = |h: &Host| ctx.facts.get(&h.name).is_some_and(|f| f.kubeadm_done);
    let dir = kubeadm::DIR;
    if !done(first) {
        ctx.cmd(
            &first.name,
            &format!("kubeadm init --config {dir}/kubeadm-init.yaml"),
            &format!("kubeadm init --config {dir}/kubeadm-init.yaml"),
        )
        .await?;
    }
    if !ctx.opts.dry_run {
        // Keep the cluster CA next to the spec, so that `status` can verify the API servers.
        if let Some(ca) =
            transport::read_file(ctx.host(&first.name)?, "/etc/kubernetes/pki/ca.crt").await?
        {
            ctx.state.save_kubeadm_ca(&String::from_utf8_lossy(&ca))?;
        }
    }
    let joining: Vec<&&Host> = cps.iter().skip(1).filter(|h| !done(h)).collect();
    let workers: Vec<&Host> = ctx
        .c
        .workers()
        .filter(|h| !h.roles.control_plane && !done(h))
        .collect();
    if joining.is_empty() && workers.is_empty() {
        return Ok(());
    }
    // Fresh secrets for this run: the certificate key expires after 2 h, tokens after their TTL.
    let secrets = if ctx.opts.dry_run {
        ctx.log("command", &first.name, "would run: kubeadm init phase upload-certs --upload-certs --certificate-key <fresh key, not shown>");
        ctx.log(
            "command",
            &first.name,
            "would run: kubeadm token create --ttl 1h (token not shown) and read the CA cert hash",
        );
        None
    } else {
        let o = ctx
            .cmd(
                &first.name,
                "key=$(kubeadm certs certificate-key) && kubeadm init phase upload-certs --upload-certs --certificate-key \"$key\" >/dev/null && \
                 tok=$(kubeadm token create --ttl 1h) && \
                 hash=$(openssl x509 -pubkey -in /etc/kubernetes/pki/ca.crt | openssl rsa -pubin -outform der 2>/dev/null | openssl dgst -sha256 -hex | sed 's/^.* //') && \
                 printf '%s\\n%s\\n%s\\n' \"$key\" \"$tok\" \"sha256:$hash\"",
                "kubeadm init phase upload-certs (fresh certificate key) + kubeadm token create --ttl 1h",
            )
            .await?
            .context("no output")?;
        let text = o.stdout_str();
        let v: Vec<String> = text.lines().map(String::from).collect();
        if v.len() != 3 {
            bail!(
                "{}: could not read the join secrets from kubeadm",
                first.name
            );
        }
        Some(v)
    };
    // Control planes one at a time, each behind a health gate: a stacked etcd member is added
    // by each join, and two half-joined members could cost the quorum.
    for h in joining {
        kubeadm_join(ctx, h, &secrets).await?;
        if ctx.opts.dry_run {
            ctx.log("wait", &h.name, "would wait for its API server /readyz and every etcd member healthy before the next join");
        } else {
            let addr = SocketAddr::new(h.address, ctx.c.kubernetes.api_server_port);
            wait_for(
                &format!("{}: /readyz", h.name),
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
    }
    // Workers in parallel.
    let worker_names = names(workers.into_iter());
    let secrets = &secrets;
    ctx.each(worker_names, move |n| {
        Box::pin(async move {
            let h = ctx.c.host(&n).context("host")?;
            kubeadm_join(ctx, h, secrets).await
        })
    })
    .await
}

/// `kubeadm join` with the secrets filled into a 0600 temporary file that is removed after.
async fn kubeadm_join(ctx: &Ctx, h: &Host, secrets: &Option<Vec<String>>) -> Result<()> {
    let dir = kubeadm::DIR;
    let script = match secrets {
        Some(v) => format!(
            "set -e; t=$(mktemp); trap 'rm -f \"$t\"' EXIT; chmod 600 \"$t\"; \
             sed -e 's|${{HAKUBE_CERTIFICATE_KEY}}|{}|' -e 's|${{HAKUBE_BOOTSTRAP_TOKEN}}|{}|' -e 's|${{HAKUBE_CA_CERT_HASH}}|{}|' {dir}/kubeadm-join.yaml > \"$t\"; \
             kubeadm join --config \"$t\"",
            v[0], v[1], v[2]
        ),
        None => String::new(),
    };
    ctx.cmd(
        &h.name,
        &script,
        &format!(
            "kubeadm join --config {dir}/kubeadm-join.yaml (secrets filled in a 0600 temp file)"
        ),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

pub struct Workers;

impl Phase for Workers {
    fn name(&self) -> &'static str {
        "workers"
    }
    fn describe(&self) -> &'static str {
        "workers (kubeadm joins run in the control-plane phase, in parallel after the control planes)"
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let n = ctx.c.workers().count();
            if ctx.c.kubernetes.bootstrap == Bootstrap::Lab {
                ctx.log(
                    "info",
                    "",
                    &format!("{n} worker(s): the lab runs no kubelet; nothing to do"),
                );
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Verify;

impl Phase for Verify {
    fn name(&self) -> &'static str {
        "verify"
    }
    fn describe(&self) -> &'static str {
        "wait until `status` would say healthy: one VIP holder that answers, every HAProxy rating every API server UP, /readyz through the VIP and on each control plane, every etcd member healthy"
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let limit = convergence_limit(&ctx.c);
            if ctx.opts.dry_run {
                ctx.log(
                    "wait",
                    "",
                    &format!(
                        "would wait up to {}s until status's VIP, HAProxy, API and etcd verdicts are healthy",
                        limit.as_secs()
                    ),
                );
                return Ok(());
            }
            converge(ctx, limit).await
        })
    }
}

/// How long verify waits: each HAProxy must see `rise` good checks in a row on every server
/// (after a reload it starts over), VRRP must settle and etcd elect; twice the slowest rise,
/// plus room for the rest.
pub fn convergence_limit(c: &Cluster) -> Duration {
    let hc = &c.lb.health_check;
    let rise = hc.interval + (hc.fastinter() + hc.timeout) * hc.rise;
    Duration::from_secs(30) + rise * 2
}

/// Healthy in every poll for this long counts as converged: VRRP may still hand the VIP over
/// (a preempting master whose track scripts just passed), which one sample would miss.
const SETTLE: Duration = Duration::from_secs(1);

/// Poll the same probes and verdicts `status` uses, over apply's open connections, until the
/// layers that converge have been healthy for [`SETTLE`]. Prints what it still waits for
/// whenever that changes.
async fn converge(ctx: &Ctx, limit: Duration) -> Result<()> {
    use crate::status::{self, Conns, Creds, Scope};
    let creds = Creds::from_state(&ctx.state)?;
    let start = Instant::now();
    let mut last = String::new();
    let mut healthy_since: Option<Instant> = None;
    loop {
        let s = status::observe(&ctx.c, &creds, Conns::Open(&ctx.hosts), Scope::Convergence).await;
        let pending = s.unhealthy();
        if pending.is_empty() {
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                for v in &s.verdicts {
                    ctx.log("ok", "", &format!("{}: {}", v.layer, v.reason));
                }
                return Ok(());
            }
        } else {
            healthy_since = None;
        }
        let now = pending.join("; ");
        let waited = start.elapsed();
        if waited >= limit && !pending.is_empty() {
            bail!(
                "the cluster did not converge within {}s: {now}\n  help: `hakube status` and `hakube doctor` show the details",
                limit.as_secs()
            );
        }
        if now != last && !pending.is_empty() {
            ctx.log(
                "wait",
                "",
                &format!("{:.1}s: waiting for {now}", waited.as_secs_f64()),
            );
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
