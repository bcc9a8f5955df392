//! Scheduled backups on the control planes (`spec.backup.schedule`): the script, the oneshot
//! service and the timer are synced like any file, then the timer is enabled and started (or
//! restarted when it changed). When the schedule leaves the spec, the timer is stopped and its
//! files removed; snapshots already taken stay where they are.

use super::Ctx;
use crate::render::backup::{SCRIPT_PATH, SERVICE_PATH, TIMER, TIMER_PATH};
use crate::spec::Host;
use crate::transport;
use anyhow::{Context, Result};
use std::time::Duration;

/// Every control plane, in parallel.
pub(crate) async fn ensure_all(ctx: &Ctx) -> Result<()> {
    let names = ctx.c.control_planes().map(|h| h.name.clone()).collect();
    ctx.each(names, |name| {
        Box::pin(async move {
            let h = ctx.c.host(&name).context("spec host")?;
            ensure(ctx, h).await
        })
    })
    .await
}

/// What the host runs now (read-only, so dry-run asks too).
struct Live {
    active: bool,
    enabled: bool,
    installed: bool,
}

async fn live(ctx: &Ctx, h: &Host) -> Result<Live> {
    let t = ctx.host(&h.name)?;
    let script = format!(
        "echo \"active $(systemctl is-active {TIMER} 2>/dev/null)\"; \
         echo \"enabled $(systemctl is-enabled {TIMER} 2>/dev/null)\"; \
         [ -e {TIMER_PATH} ] && echo installed; true"
    );
    let out = transport::run(
        t,
        &script,
        &format!("systemctl is-active {TIMER}"),
        Duration::from_secs(20),
    )
    .await?
    .stdout_str();
    let has = |l: &str| out.lines().any(|x| x.trim() == l);
    Ok(Live {
        active: has("active active"),
        enabled: has("enabled enabled"),
        installed: has("installed"),
    })
}

pub(crate) async fn ensure(ctx: &Ctx, h: &Host) -> Result<()> {
    let name = &h.name;
    let now = live(ctx, h).await?;
    if ctx.c.backup.schedule.is_none() {
        if now.installed {
            ctx.cmd(
                name,
                &format!(
                    "systemctl disable --now {TIMER} >/dev/null 2>&1; rm -f {TIMER_PATH} {SERVICE_PATH} {SCRIPT_PATH}; systemctl daemon-reload"
                ),
                &format!(
                    "systemctl disable --now {TIMER}; rm {TIMER_PATH} {SERVICE_PATH} {SCRIPT_PATH} (spec.backup.schedule is gone; snapshots taken stay)"
                ),
            )
            .await?;
        }
        return Ok(());
    }
    let changed = ctx
        .sync(name, |f| {
            f.path == SCRIPT_PATH || f.path == SERVICE_PATH || f.path == TIMER_PATH
        })
        .await?;
    let reload = ctx.take(name, "daemon-reload");
    let timer_changed = ctx.take(name, TIMER);
    if reload {
        ctx.cmd(name, "systemctl daemon-reload", "systemctl daemon-reload")
            .await?;
    }
    if !now.active || !now.enabled {
        ctx.cmd(
            name,
            &format!("systemctl enable {TIMER} >/dev/null 2>&1 && systemctl start {TIMER}"),
            &format!("systemctl enable --now {TIMER}"),
        )
        .await?;
    } else if timer_changed {
        // A new OnCalendar= takes effect when the timer starts again.
        ctx.cmd(
            name,
            &format!("systemctl restart {TIMER}"),
            &format!("systemctl restart {TIMER}"),
        )
        .await?;
    } else if changed.is_empty() {
        ctx.log("ok", name, &format!("{TIMER} active"));
    }
    Ok(())
}
