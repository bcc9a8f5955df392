//! Scheduled backups on the control planes (`spec.backup.schedule`): the script, the oneshot
//! service and the timer are synced like any file, then the timer is enabled and started (or
//! restarted when it changed). When the schedule leaves the spec, the timer is stopped and its
//! files removed; snapshots already taken stay where they are.

use crate::apply::ops::{Op, Systemctl};
use crate::apply::report::Kind;
use crate::apply::{Ctx, Phase};
use crate::render::Component;
use crate::render::backup::{SCRIPT_PATH, SERVICE_PATH, TIMER, TIMER_PATH};
use crate::spec::{Cluster, EtcdManagement, Host};
use crate::transport::BoxFut;
use anyhow::{Context, Result};

pub struct Backups;

impl Phase for Backups {
    fn name(&self) -> &'static str {
        "backups"
    }
    fn describe(&self) -> &'static str {
        "scheduled etcd snapshots on the control planes (spec.backup.schedule): script, oneshot service and timer"
    }
    fn applies(&self, c: &Cluster) -> bool {
        c.etcd.management == EtcdManagement::Hakube
    }
    fn run<'a>(&'a self, ctx: &'a Ctx) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let names = ctx.c.control_planes().map(|h| h.name.clone()).collect();
            ctx.each(names, |name| {
                Box::pin(async move {
                    let h = ctx.c.host(&name).context("spec host")?;
                    ensure(ctx, h).await
                })
            })
            .await
        })
    }
}

/// What the host ran when apply started (from its facts: the phases before this one do not
/// touch the timer).
struct Live {
    active: bool,
    enabled: bool,
    installed: bool,
}

fn live(ctx: &Ctx, h: &Host) -> Result<Live> {
    let f = ctx.facts(&h.name)?;
    Ok(Live {
        active: f.active(TIMER),
        enabled: f.enabled(TIMER),
        installed: f.backup_timer,
    })
}

pub(crate) async fn ensure(ctx: &Ctx, h: &Host) -> Result<()> {
    let name = &h.name;
    let now = live(ctx, h)?;
    if ctx.c.backup.schedule.is_none() {
        if now.installed {
            ctx.run(
                name,
                Op::script_with_display(
                    format!(
                        "systemctl disable --now {TIMER} >/dev/null 2>&1; rm -f {TIMER_PATH} {SERVICE_PATH} {SCRIPT_PATH}; systemctl daemon-reload"
                    ),
                    format!(
                        "systemctl disable --now {TIMER}; rm {TIMER_PATH} {SERVICE_PATH} {SCRIPT_PATH} (spec.backup.schedule is gone; snapshots taken stay)"
                    ),
                ),
            )
            .await?;
        }
        return Ok(());
    }
    let changed = ctx.sync(name, Component::Backup).await?;
    let reload = ctx.take(name, "daemon-reload");
    let timer_changed = ctx.take(name, TIMER);
    if reload {
        ctx.run(name, Systemctl::DaemonReload).await?;
    }
    if !now.active || !now.enabled {
        ctx.run(name, Systemctl::EnableStart(TIMER)).await?;
    } else if timer_changed {
        // A new OnCalendar= takes effect when the timer starts again.
        ctx.run(name, Systemctl::Restart(TIMER)).await?;
    } else if changed.is_empty() {
        ctx.log(Kind::Ok, name, &format!("{TIMER} active"));
    }
    Ok(())
}
