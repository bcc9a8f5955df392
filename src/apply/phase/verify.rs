//! The last phase: wait until `status` would call the cluster healthy.

use crate::apply::report::Kind;
use crate::apply::{Ctx, Phase};
use crate::spec::Cluster;
use crate::transport::BoxFut;
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

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
            // A run that changed nothing caused no VIP move or reload to wait out: the first
            // healthy sample is the answer.
            let settle = if ctx.acted() { SETTLE } else { Duration::ZERO };
            ctx.act(
                "",
                &format!(
                    "wait up to {}s until status's VIP, HAProxy, API and etcd verdicts are healthy",
                    limit.as_secs()
                ),
                || converge(ctx, limit, settle),
            )
            .await?;
            Ok(())
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

/// After a change, healthy in every poll for this long counts as converged: VRRP may still hand
/// the VIP over (a preempting master whose track scripts just passed), which one sample would
/// miss.
const SETTLE: Duration = Duration::from_secs(1);

/// Poll the same probes and verdicts `status` uses, over apply's open connections, until the
/// layers that converge have been healthy for [`SETTLE`]. Reports what it still waits for
/// whenever that changes.
async fn converge(ctx: &Ctx, limit: Duration, settle: Duration) -> Result<()> {
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
            if since.elapsed() >= settle {
                for v in &s.verdicts {
                    ctx.log(Kind::Ok, "", &format!("{}: {}", v.layer, v.reason));
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
                Kind::Wait,
                "",
                &format!("{:.1}s: waiting for {now}", waited.as_secs_f64()),
            );
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
