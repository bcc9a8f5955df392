//! The verbs that act on units: start, stop, restart, reload, enable and disable, and the ones
//! that report (status, show, is-enabled, cat, list-units).

use super::exec::{build_env, open_log, service_command};
use super::state::*;
use crate::lab::proc::ProcRef;
use crate::lab::unit::{self, Unit};
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Exit codes as systemctl uses them (LSB).
pub(super) const EXIT_INACTIVE: i32 = 3;
pub(super) const EXIT_NO_UNIT: i32 = 5;

pub(super) fn not_found(verb: &str, u: &str) -> i32 {
    eprintln!("Failed to {verb} {u}: Unit {u} not found.");
    EXIT_NO_UNIT
}

pub(super) fn start(ctx: &Ctx, u: &str, no_block: bool) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        return Ok(not_found("start", u));
    };
    if let Some(t) = &unit.timer
        && ctx.load(&t.unit)?.is_none()
    {
        eprintln!(
            "Failed to start {u}: the unit it starts, {}, is not found.\n  help: create {} or set Unit= in {}",
            t.unit,
            t.unit,
            unit.files[0].display()
        );
        return Ok(EXIT_NO_UNIT);
    }
    let lock = ctx.lock(u)?;
    let cur = effective(ctx, u);
    if cur.supervisor.is_some_and(|s| s.alive())
        || (cur.state == ActiveState::Active && cur.supervisor.is_none())
    {
        return Ok(0); // already running (or a oneshot that remains active)
    }
    let log = open_log(ctx, u)?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("systemctl")
        .args(["__supervise", u])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid(2) only; the supervisor must outlive this command and any ssh session.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the service supervisor")?;
    let Some(out) = child.stdout.take() else {
        bail!("the supervisor has no output pipe")
    };
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(l)) if l == "spawned" => {}
        Some(Ok(l)) => {
            eprintln!("Failed to start {u}: {}", l.trim_start_matches("failed: "));
            return Ok(1);
        }
        _ => {
            eprintln!(
                "Failed to start {u}: the supervisor exited; see {}",
                ctx.log_path(u).display()
            );
            return Ok(1);
        }
    }
    drop(lock);
    if no_block {
        return Ok(0);
    }
    match lines.next() {
        Some(Ok(l)) if l == "ready" => Ok(0),
        Some(Ok(l)) => {
            let l = l.trim_start_matches("failed: ");
            let (result, detail) = l.split_once(": ").unwrap_or(("", l));
            let see = format!(
                "See \"systemctl status {u}\" and {} for details.",
                ctx.log_path(u).display()
            );
            match job_failed_because(UnitResult::parse(result)) {
                None => eprintln!("Job for {u} canceled ({detail})."),
                Some(why) => eprintln!("Job for {u} failed because {why} ({detail}).\n{see}"),
            }
            Ok(1)
        }
        _ => {
            eprintln!(
                "Job for {u} failed: the supervisor exited.\nSee \"systemctl status {u}\" for details."
            );
            Ok(1)
        }
    }
}

/// Why a start job failed, in systemctl's words for the service's result (None: canceled).
pub(super) fn job_failed_because(result: Option<UnitResult>) -> Option<&'static str> {
    Some(match result {
        Some(UnitResult::Success) => return None,
        Some(UnitResult::ExitCode) => "the control process exited with error code",
        Some(UnitResult::Signal) => "a fatal signal was delivered to the control process",
        Some(UnitResult::Timeout) => "a timeout was exceeded",
        Some(UnitResult::StartLimitHit) => "start of the service was attempted too often",
        Some(UnitResult::Resources) => "of unavailable resources or another system error",
        Some(UnitResult::Protocol) => {
            "the service did not take the steps required by its unit configuration"
        }
        None => "the service failed",
    })
}

pub(super) fn stop(ctx: &Ctx, u: &str) -> Result<i32> {
    let unit = ctx.load(u).ok().flatten();
    let Some(st) = read_state(ctx, u) else {
        return Ok(if unit.is_some() {
            0
        } else {
            eprintln!("Failed to stop {u}: Unit {u} not loaded.");
            EXIT_NO_UNIT
        });
    };
    let timeout = unit
        .as_ref()
        .map(|x| x.timeout_stop)
        .unwrap_or(Duration::from_secs(10));
    let _lock = ctx.lock(u)?;
    if let Some(sup) = st.supervisor.filter(ProcRef::alive) {
        sup.signal(Signal::SIGTERM);
        if !crate::lab::proc::wait_gone(&[sup], timeout + Duration::from_secs(5)) {
            sup.signal(Signal::SIGKILL);
        }
    }
    // No supervisor (any more): stop an orphaned main process ourselves.
    let mut st = read_state(ctx, u).unwrap_or_default();
    if let Some(main) = st.main.filter(ProcRef::alive) {
        main.signal_group(Signal::SIGTERM);
        main.signal(Signal::SIGTERM);
        if !crate::lab::proc::wait_gone(&[main], timeout) {
            main.signal_group(Signal::SIGKILL);
            main.signal(Signal::SIGKILL);
        }
    }
    if st.state != ActiveState::Inactive && st.state != ActiveState::Failed {
        st.state = ActiveState::Inactive;
        st.sub = SubState::Dead;
        st.main = None;
        st.supervisor = None;
        st.since = now_secs();
        write_state(ctx, u, &st)?;
    }
    Ok(0)
}

pub(super) fn restart(ctx: &Ctx, u: &str, no_block: bool) -> Result<i32> {
    if ctx.load(u)?.is_none() {
        return Ok(not_found("restart", u));
    }
    stop(ctx, u)?;
    start(ctx, u, no_block)
}

pub(super) fn reload(ctx: &Ctx, u: &str) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        return Ok(not_found("reload", u));
    };
    if unit.exec_reload.is_empty() {
        eprintln!("Failed to reload {u}: Job type reload is not applicable for unit {u}.");
        return Ok(1);
    }
    let st = effective(ctx, u);
    if !st.is_active() {
        eprintln!("Unit {u} cannot be reloaded because it is inactive.");
        return Ok(1);
    }
    let mut env = build_env(&unit)?;
    if let Some(m) = st.main {
        env.insert("MAINPID".into(), m.pid.to_string());
    }
    for line in &unit.exec_reload {
        let argv = unit::expand(&line.raw, &env, u)?;
        let mut cmd = service_command(&unit, &argv, &env, open_log(ctx, u)?)?;
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", argv[0]))?;
        if !status.success() && !line.ignore_failure {
            eprintln!(
                "Job for {u} failed because the control process exited with error code ({}).\nSee {} for details.",
                crate::lab::proc::exit_code(status),
                ctx.log_path(u).display()
            );
            return Ok(1);
        }
    }
    Ok(0)
}

pub(super) fn targets(unit: &Unit) -> Vec<String> {
    unit.wanted_by.clone()
}

pub(super) fn enable(ctx: &Ctx, u: &str, quiet: bool) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        eprintln!("Failed to enable unit: Unit file {u} does not exist.");
        return Ok(1);
    };
    if targets(&unit).is_empty() {
        eprintln!(
            "The unit files have no installation config (WantedBy=), so {u} cannot be enabled."
        );
        return Ok(0);
    }
    let file = &unit.files[0];
    // The link points at the path as the host sees it.
    let target_path = Path::new("/").join(file.strip_prefix(&ctx.root).unwrap_or(file));
    for t in targets(&unit) {
        let link = ctx.wants(&t, u);
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir)?;
        }
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(&target_path, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        if !quiet {
            eprintln!(
                "Created symlink {} → {}.",
                link.display(),
                target_path.display()
            );
        }
    }
    Ok(0)
}

pub(super) fn disable(ctx: &Ctx, u: &str, quiet: bool) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        eprintln!("Failed to disable unit: Unit file {u} does not exist.");
        return Ok(1);
    };
    for t in targets(&unit) {
        let link = ctx.wants(&t, u);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
            if !quiet {
                eprintln!("Removed {}.", link.display());
            }
        }
    }
    Ok(0)
}

pub(super) fn enabled_state(ctx: &Ctx, unit: &Unit) -> &'static str {
    let ts = targets(unit);
    if ts.is_empty() {
        "static"
    } else if ts
        .iter()
        .any(|t| fs::symlink_metadata(ctx.wants(t, &unit.name)).is_ok())
    {
        "enabled"
    } else {
        "disabled"
    }
}

pub(super) fn is_enabled(ctx: &Ctx, u: &str, quiet: bool) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        eprintln!("Failed to get unit file state for {u}: No such file or directory");
        return Ok(1);
    };
    let s = enabled_state(ctx, &unit);
    if !quiet {
        println!("{s}");
    }
    Ok(if s == "disabled" { 1 } else { 0 })
}

pub(super) fn status(ctx: &Ctx, u: &str, lines: usize) -> Result<i32> {
    let unit = ctx.load(u);
    let st = effective(ctx, u);
    let unit = match unit {
        Ok(Some(x)) => Some(x),
        Ok(None) if read_state(ctx, u).is_none() => {
            eprintln!("Unit {u} could not be found.");
            return Ok(4);
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("{u}: {e:#}");
            None
        }
    };
    let dot = if st.is_active() {
        "●"
    } else if st.state == ActiveState::Failed {
        "×"
    } else {
        "○"
    };
    let desc = unit
        .as_ref()
        .map(|x| x.description.clone())
        .unwrap_or_default();
    println!(
        "{dot} {u}{}",
        if desc.is_empty() {
            String::new()
        } else {
            format!(" - {desc}")
        }
    );
    match &unit {
        Some(x) => {
            println!(
                "     Loaded: loaded ({}; {}; hakube lab systemctl)",
                x.files[0].display(),
                enabled_state(ctx, x)
            );
            for f in &x.files[1..] {
                println!("    Drop-In: {}", f.display());
            }
        }
        None => println!("     Loaded: not-found"),
    }
    let since = if st.since > 0 {
        let ago = now_secs().saturating_sub(st.since);
        format!(" since {}; {ago}s ago", format_time(st.since))
    } else {
        String::new()
    };
    let result = if st.state == ActiveState::Failed {
        format!(" (Result: {})", st.result)
    } else {
        String::new()
    };
    println!("     Active: {} ({}){result}{since}", st.state, st.sub);
    if let Some(t) = unit.as_ref().and_then(|x| x.timer.as_ref()) {
        for l in super::timer::status_lines(&st, t) {
            println!("{l}");
        }
    }
    if let Some(m) = st.main.filter(ProcRef::alive) {
        println!("   Main PID: {} ({})", m.pid, comm(m.pid));
    } else if let Some(e) = &st.last_exit {
        println!("   Main PID: {e}");
    }
    if let Some(s) = &st.status_text {
        println!("     Status: \"{s}\"");
    }
    if st.n_restarts > 0 {
        println!("   Restarts: {}", st.n_restarts);
    }
    if let Some(s) = st.supervisor.filter(ProcRef::alive) {
        println!(" Supervisor: {}", s.pid);
    }
    if lines > 0
        && let Ok(text) = fs::read_to_string(ctx.log_path(u))
    {
        let all: Vec<&str> = text.lines().collect();
        println!();
        for l in &all[all.len().saturating_sub(lines)..] {
            println!("{l}");
        }
    }
    Ok(if st.is_active() { 0 } else { EXIT_INACTIVE })
}

/// `show`: every property, or those in `only`; `value_only` prints values without names.
pub(super) fn show(ctx: &Ctx, u: &str, only: &[String], value_only: bool) -> Result<i32> {
    let unit = ctx.load(u).ok().flatten();
    let st = effective(ctx, u);
    let main = st.main.filter(ProcRef::alive).map(|m| m.pid).unwrap_or(0);
    let mut props: Vec<(&str, String)> = vec![
        ("Id", u.to_string()),
        (
            "Description",
            unit.as_ref()
                .map(|x| x.description.clone())
                .unwrap_or_default(),
        ),
        (
            "LoadState",
            if unit.is_some() {
                "loaded"
            } else {
                "not-found"
            }
            .to_string(),
        ),
        ("ActiveState", st.state.to_string()),
        ("SubState", st.sub.to_string()),
        ("Result", st.result.to_string()),
        ("MainPID", main.to_string()),
        ("ExecMainPID", main.to_string()),
        ("NRestarts", st.n_restarts.to_string()),
        (
            "UnitFileState",
            unit.as_ref()
                .map(|x| enabled_state(ctx, x))
                .unwrap_or("")
                .to_string(),
        ),
        (
            "FragmentPath",
            unit.as_ref()
                .map(|x| x.files[0].display().to_string())
                .unwrap_or_default(),
        ),
        ("StatusText", st.status_text.clone().unwrap_or_default()),
    ];
    if let Some(t) = unit.as_ref().and_then(|x| x.timer.as_ref()) {
        props.extend(super::timer::show_props(&st, t));
    }
    if !only.is_empty() {
        props.retain(|(k, _)| only.iter().any(|p| p == k));
    }
    for (k, v) in props {
        if value_only {
            println!("{v}");
        } else {
            println!("{k}={v}");
        }
    }
    Ok(0)
}

pub(super) fn cat(ctx: &Ctx, u: &str) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        eprintln!("No files found for {u}.");
        return Ok(1);
    };
    for f in &unit.files {
        println!("# {}", f.display());
        print!("{}", fs::read_to_string(f)?);
        println!();
    }
    Ok(0)
}

/// `kill`: `signal` (SIGTERM when None) to the main process's group, or to the main process only.
pub(super) fn kill_unit(ctx: &Ctx, u: &str, signal: Option<&str>, main_only: bool) -> Result<i32> {
    let sig_name = signal.unwrap_or("SIGTERM");
    let sig = parse_signal(sig_name)?;
    let st = effective(ctx, u);
    let Some(main) = st.main.filter(ProcRef::alive) else {
        eprintln!("Failed to kill unit {u}: no process to kill");
        return Ok(1);
    };
    if main_only {
        main.signal(sig);
    } else {
        main.signal_group(sig);
    }
    Ok(0)
}

pub(super) fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("unknown signal {s}"));
    }
    let full = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    full.parse::<Signal>()
        .with_context(|| format!("unknown signal {s}"))
}

pub(super) fn list_units(ctx: &Ctx) -> Result<i32> {
    let mut names: Vec<String> = fs::read_dir(ctx.run_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".json")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    println!("{:<40} {:<12} {:<12}", "UNIT", "ACTIVE", "SUB");
    for n in &names {
        let st = effective(ctx, n);
        println!("{n:<40} {:<12} {:<12}", st.state, st.sub);
    }
    Ok(0)
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
