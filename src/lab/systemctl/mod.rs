//! The lab's `systemctl`: lab hosts have no systemd, so the hakube binary, invoked as
//! `systemctl`, reads unit files and supervises services by PID.
//!
//! `start` spawns a detached supervisor (`systemctl __supervise UNIT`, its own session) that runs
//! ExecStartPre and ExecStart, waits for `READY=1` on `$NOTIFY_SOCKET` for `Type=notify`, and
//! restarts the service as `Restart=` says. Everything it knows is in
//! `/run/hakube-systemd/UNIT.json` (private per host, as /run is), service output goes to
//! `/run/hakube-systemd/UNIT.log`, and enablement is the usual
//! `/etc/systemd/system/TARGET.wants/UNIT` link. `stop` signals the supervisor, which sends
//! SIGTERM to the service's process group, waits `TimeoutStopSec=` (10 s by default here) and
//! then sends SIGKILL.
//!
//! A `.timer` unit's supervisor waits for its next elapse and starts its service.
//!
//! This file is the command line; `state` is what is recorded and where, `verbs` the commands
//! that act and report, `exec` how service commands run, `supervisor` the service supervisor
//! and `timer` the timer supervisor and `list-timers`.
//!
//! `HAKUBE_SYSTEMCTL_ROOT` moves every path below another folder (for tests).

mod exec;
mod state;
mod supervisor;
mod timer;
mod verbs;

pub use state::{
    ActiveState, Ctx, ROOT_ENV, SubState, SvcState, UnitResult, active_state, effective,
    format_day_time, format_time, main_process, recorded_supervisors,
};

use super::unit;
use anyhow::{Context, Result, bail};
use state::*;
use verbs::*;

#[derive(Debug, Default)]
struct Opts {
    quiet: bool,
    no_block: bool,
    now: bool,
    all: bool,
    value: bool,
    props: Vec<String>,
    lines: usize,
    signal: Option<String>,
    kill_whom: Option<String>,
}

const HELP: &str = "systemctl (hakube lab): a stand-in for systemd's systemctl on hakube lab hosts, which have no systemd.

Usage: systemctl [OPTIONS] COMMAND [UNIT...]

Commands:
  start, stop, restart, reload, try-restart, reload-or-restart UNIT...
  enable [--now], disable [--now] UNIT...
  is-active, is-enabled, is-failed UNIT...   (exit 0 yes, 3 (is-active) or 1 no)
  status UNIT...                             (exit 0 active, 3 not active, 4 no such unit)
  show [-p PROP[,PROP]] [--value] UNIT, cat UNIT, kill [-s SIGNAL] UNIT
  list-units, list-timers [--all], daemon-reload, reset-failed [UNIT...]

Options: -q/--quiet, --no-block, --now, -a/--all, -p/--property, --value, -n/--lines N, -s/--signal.
Units (.service and .timer) are read from /etc/systemd/system, /run/systemd/system,
/lib/systemd/system (+ UNIT.d/*.conf).
Service state and output: /run/hakube-systemd/UNIT.json and UNIT.log.";

/// Entry point when the binary runs as `systemctl`.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ctx = Ctx::from_env();
    if args.first().map(String::as_str) == Some("__supervise") {
        return match args.get(1) {
            Some(u) => supervisor::supervise(&ctx, u),
            None => 2,
        };
    }
    match dispatch(&ctx, &args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("systemctl: {e:#}");
            1
        }
    }
}

fn dispatch(ctx: &Ctx, args: &[String]) -> Result<i32> {
    let mut o = Opts {
        lines: 10,
        ..Default::default()
    };
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("option {name} needs a value"),
            }
        };
        match flag {
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(0);
            }
            "--version" => {
                println!(
                    "hakube lab systemctl {} (not systemd)",
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(0);
            }
            "-q" | "--quiet" => o.quiet = true,
            "--no-block" => o.no_block = true,
            "--now" => o.now = true,
            "-a" | "--all" => o.all = true,
            "--value" => o.value = true,
            "-p" | "--property" => o.props.extend(value(flag)?.split(',').map(str::to_string)),
            "-n" | "--lines" => o.lines = value(flag)?.parse().context("--lines needs a number")?,
            "-s" | "--signal" => o.signal = Some(value(flag)?),
            "--kill-whom" | "--kill-who" => o.kill_whom = Some(value(flag)?),
            "--no-pager" | "-l" | "--full" | "--system" | "--no-legend" | "--no-ask-password" => {}
            "--type" | "-t" | "--state" => {
                value(flag)?;
            }
            f if f.starts_with('-') && f.len() > 1 => {
                bail!("unknown option {f}; see systemctl --help")
            }
            _ => words.push(a.clone()),
        }
    }
    let Some((verb, rest)) = words.split_first() else {
        println!("{HELP}");
        return Ok(1);
    };
    let units = || -> Result<Vec<String>> {
        if rest.is_empty() {
            bail!("{verb} needs at least one unit name");
        }
        rest.iter().map(|u| unit::normalize(u)).collect()
    };
    let each = |f: &dyn Fn(&str) -> Result<i32>| -> Result<i32> {
        let mut code = 0;
        for u in units()? {
            let c = f(&u)?;
            if code == 0 {
                code = c;
            }
        }
        Ok(code)
    };
    match verb.as_str() {
        "start" => each(&|u| start(ctx, u, o.no_block)),
        "stop" => each(&|u| stop(ctx, u)),
        "restart" => each(&|u| restart(ctx, u, o.no_block)),
        "try-restart" | "condrestart" => each(&|u| {
            if effective(ctx, u).is_active() {
                restart(ctx, u, o.no_block)
            } else {
                Ok(0)
            }
        }),
        "reload" => each(&|u| reload(ctx, u)),
        "reload-or-restart" | "force-reload" => each(&|u| {
            let has_reload = ctx.load(u)?.is_some_and(|x| !x.exec_reload.is_empty());
            if effective(ctx, u).is_active() && has_reload {
                reload(ctx, u)
            } else {
                restart(ctx, u, o.no_block)
            }
        }),
        "enable" => each(&|u| {
            let c = enable(ctx, u, o.quiet)?;
            if c == 0 && o.now {
                start(ctx, u, o.no_block)
            } else {
                Ok(c)
            }
        }),
        "disable" => each(&|u| {
            let c = disable(ctx, u, o.quiet)?;
            if c == 0 && o.now { stop(ctx, u) } else { Ok(c) }
        }),
        "is-active" => {
            let mut any = false;
            for u in units()? {
                let st = effective(ctx, &u);
                any |= st.is_active();
                if !o.quiet {
                    println!("{}", st.state);
                }
            }
            Ok(if any { 0 } else { EXIT_INACTIVE })
        }
        "is-failed" => {
            let mut any = false;
            for u in units()? {
                let st = effective(ctx, &u);
                any |= st.state == ActiveState::Failed;
                if !o.quiet {
                    println!("{}", st.state);
                }
            }
            Ok(if any { 0 } else { 1 })
        }
        "is-enabled" => each(&|u| is_enabled(ctx, u, o.quiet)),
        "status" => each(&|u| status(ctx, u, o.lines)),
        "show" => each(&|u| show(ctx, u, &o.props, o.value)),
        "cat" => each(&|u| cat(ctx, u)),
        "kill" => each(&|u| {
            let main_only = o.kill_whom.as_deref() == Some("main");
            kill_unit(ctx, u, o.signal.as_deref(), main_only)
        }),
        "reset-failed" => {
            for u in units()? {
                let _l = ctx.lock(&u)?;
                if let Some(mut st) = read_state(ctx, &u).filter(|s| s.state == ActiveState::Failed)
                {
                    st.state = ActiveState::Inactive;
                    st.sub = SubState::Dead;
                    st.result = UnitResult::Success;
                    write_state(ctx, &u, &st)?;
                }
            }
            Ok(0)
        }
        "daemon-reload" | "daemon-reexec" => Ok(0), // unit files are read on every command
        "list-units" => list_units(ctx),
        "list-timers" => timer::list_timers(ctx, o.all),
        other => bail!("unknown command {other:?}; see systemctl --help"),
    }
}
