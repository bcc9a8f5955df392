//! The supervisor of a `.timer` unit: it waits for the next elapse and then starts the timer's
//! service (without waiting for it, as systemd queues a start job), until it is stopped or no
//! elapse is left.
//!
//! `OnBootSec=` counts from the machine's boot: lab hosts share its kernel. `OnUnitActiveSec=`
//! counts from the timer's last trigger. `Persistent=` keeps the last trigger as the mtime of
//! `/var/lib/hakube/systemd-timers/stamp-NAME` (private per host, unlike /var/lib/systemd).

use super::{Ctx, Ev, SvcState, now_secs, write_state};
use crate::lab::calendar::{self, unix_secs};
use crate::lab::proc::ProcRef;
use crate::lab::unit::{Timer, Unit};
use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime};

/// How often the wait re-reads the wall clock, so that clock changes are noticed.
const RECHECK: Duration = Duration::from_secs(30);

pub(super) fn stamp_path(ctx: &Ctx, timer: &str) -> PathBuf {
    ctx.root
        .join("var/lib/hakube/systemd-timers")
        .join(format!("stamp-{timer}"))
}

/// When the timer last triggered, by its stamp (only kept with `Persistent=`).
fn read_stamp(ctx: &Ctx, timer: &str) -> Option<SystemTime> {
    fs::metadata(stamp_path(ctx, timer)).ok()?.modified().ok()
}

fn write_stamp(ctx: &Ctx, timer: &str, at: SystemTime) -> Result<()> {
    let p = stamp_path(ctx, timer);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let f = File::create(&p).with_context(|| format!("cannot write {}", p.display()))?;
    f.set_modified(at)
        .with_context(|| format!("cannot set the time of {}", p.display()))
}

fn boot_time() -> Result<SystemTime> {
    let text = fs::read_to_string("/proc/uptime").context("cannot read /proc/uptime")?;
    let up: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("/proc/uptime holds {text:?}"))?;
    Ok(SystemTime::now() - Duration::from_secs_f64(up))
}

/// The next elapse: the earliest of every setting that has not elapsed yet. Relative settings
/// that elapsed before the last trigger are spent, as in systemd.
pub(super) fn next_elapse(
    t: &Timer,
    activated: SystemTime,
    last: Option<SystemTime>,
) -> Result<Option<SystemTime>> {
    let spent = |at: SystemTime| last.is_some_and(|l| at <= l);
    let mut next: Vec<SystemTime> = Vec::new();
    for d in &t.on_active {
        next.push(activated + *d);
    }
    if !t.on_boot.is_empty() {
        let boot = boot_time()?;
        next.extend(t.on_boot.iter().map(|d| boot + *d));
    }
    next.retain(|at| !spent(*at));
    if let Some(l) = last {
        next.extend(t.on_unit_active.iter().map(|d| l + *d));
    }
    let base = last.unwrap_or(activated);
    for expr in &t.on_calendar {
        next.extend(calendar::next_elapse(expr, base)?);
    }
    Ok(next.into_iter().min())
}

fn random_delay(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    max.mul_f64(rand::random::<f64>())
}

struct TimerSup<'a> {
    ctx: &'a Ctx,
    unit: &'a Unit,
    timer: &'a Timer,
    st: SvcState,
    log: File,
}

impl TimerSup<'_> {
    fn log(&self, msg: &str) {
        let mut l = &self.log;
        let _ = writeln!(
            l,
            "{} hakube-systemd: {}: {msg}",
            super::format_time(now_secs()),
            self.unit.name
        );
    }

    fn save(&self) {
        if let Err(e) = write_state(self.ctx, &self.unit.name, &self.st) {
            self.log(&format!("cannot record state: {e:#}"));
        }
    }

    fn set(&mut self, state: &str, sub: &str) {
        self.st.state = state.into();
        self.st.sub = sub.into();
        self.st.since = now_secs();
        self.save();
    }

    /// Reap what we spawned (the service's supervisors, which outlive nothing of ours).
    fn reap(&self) {
        while let Ok(ws) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if ws == WaitStatus::StillAlive {
                break;
            }
        }
    }

    /// Wait until `at`; false when a stop was requested.
    fn wait_until(&self, at: SystemTime, rx: &Receiver<Ev>) -> bool {
        loop {
            self.reap();
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() {
                return true;
            }
            match rx.recv_timeout(left.min(RECHECK)) {
                Ok(Ev::Signal(Signal::SIGTERM | Signal::SIGINT))
                | Err(RecvTimeoutError::Disconnected) => return false,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn trigger(&mut self, at: SystemTime) {
        self.st.last_trigger = Some(unix_secs(at));
        self.save();
        if self.timer.persistent
            && let Err(e) = write_stamp(self.ctx, &self.unit.name, at)
        {
            self.log(&format!("{e:#}"));
        }
        self.log(&format!("triggering {}", self.timer.unit));
        match super::start(self.ctx, &self.timer.unit, true) {
            Ok(0) => {}
            Ok(code) => self.log(&format!(
                "starting {} failed (exit status {code})",
                self.timer.unit
            )),
            Err(e) => self.log(&format!("cannot start {}: {e:#}", self.timer.unit)),
        }
    }

    fn run(&mut self, rx: &Receiver<Ev>) -> i32 {
        let activated = SystemTime::now();
        let mut last = if self.timer.persistent {
            read_stamp(self.ctx, &self.unit.name)
        } else {
            None
        };
        loop {
            let next = match next_elapse(self.timer, activated, last) {
                Ok(n) => n,
                Err(e) => {
                    self.log(&format!("{e:#}"));
                    self.st.result = "resources".into();
                    self.st.supervisor = None;
                    self.st.next_elapse = None;
                    self.set("failed", "failed");
                    return 1;
                }
            };
            let Some(next) = next else {
                // RemainAfterElapse=yes, systemd's default: active (elapsed), nothing to wait for.
                self.st.supervisor = None;
                self.st.next_elapse = None;
                self.set("active", "elapsed");
                self.log("elapsed; no further elapse is due");
                return 0;
            };
            let at = next + random_delay(self.timer.randomized_delay);
            self.st.next_elapse = Some(unix_secs(at));
            self.set("active", "waiting");
            if !self.wait_until(at, rx) {
                self.st.supervisor = None;
                self.st.next_elapse = None;
                self.set("inactive", "dead");
                self.log("stopped");
                return 0;
            }
            let now = SystemTime::now();
            last = Some(now);
            self.trigger(now);
        }
    }
}

/// Run the timer `unit` until it is stopped; `report` tells `systemctl start` it is running.
pub(super) fn supervise(
    ctx: &Ctx,
    unit: &Unit,
    timer: &Timer,
    rx: Receiver<Ev>,
    log: File,
    me: Option<ProcRef>,
) -> i32 {
    let last_trigger = read_state_last_trigger(ctx, &unit.name);
    let mut sup = TimerSup {
        ctx,
        unit,
        timer,
        st: SvcState {
            state: "active".into(),
            sub: "waiting".into(),
            supervisor: me,
            since: now_secs(),
            result: "success".into(),
            last_trigger,
            ..Default::default()
        },
        log,
    };
    sup.save();
    super::report_to_starter("spawned");
    super::report_to_starter("ready");
    super::detach_from_starter();
    sup.log(&format!("started; it starts {}", timer.unit));
    sup.run(&rx)
}

/// The last trigger shown by `list-timers` survives a stop of the timer, as in systemd.
fn read_state_last_trigger(ctx: &Ctx, name: &str) -> Option<u64> {
    super::read_state(ctx, name)
        .and_then(|s| s.last_trigger)
        .or_else(|| read_stamp(ctx, name).map(unix_secs))
}

/// `22h left`, `1min 5s ago`: systemd's relative time stamps, to the second.
pub(super) fn relative(at: u64, now: u64) -> String {
    let (d, suffix) = if at >= now {
        (at - now, "left")
    } else {
        (now - at, "ago")
    };
    let (day, hour, min) = (86_400, 3_600, 60);
    match d {
        0 => "now".to_string(),
        d if d >= day => {
            let days = d / day;
            let unit = if days == 1 { "day" } else { "days" };
            format!("{days} {unit} {}h {suffix}", d % day / hour)
        }
        d if d >= 6 * hour => format!("{}h {suffix}", d / hour),
        d if d >= hour => format!("{}h {}min {suffix}", d / hour, d % hour / min),
        d if d >= 5 * min => format!("{}min {suffix}", d / min),
        d if d >= min => format!("{}min {}s {suffix}", d / min, d % min),
        d => format!("{d}s {suffix}"),
    }
}

/// `list-timers`: the active timers (every timer with `--all`), soonest first.
pub(super) fn list_timers(ctx: &Ctx, all: bool) -> Result<i32> {
    let mut names: Vec<String> = fs::read_dir(ctx.run_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.strip_suffix(".json")
                        .filter(|u| u.ends_with(".timer"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    if all {
        for d in crate::lab::unit::UNIT_DIRS {
            if let Ok(rd) = fs::read_dir(ctx.root.join(d)) {
                names.extend(
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .filter(|n| n.ends_with(".timer")),
                );
            }
        }
    }
    names.sort();
    names.dedup();
    let now = now_secs();
    let stamp = |s: Option<u64>| match s {
        Some(s) => (super::format_day_time(s), relative(s, now)),
        None => ("-".to_string(), "-".to_string()),
    };
    let mut rows: Vec<(Option<u64>, [String; 6])> = Vec::new();
    for n in &names {
        let st = super::effective(ctx, n);
        if !all && !super::is_active(&st) {
            continue;
        }
        let activates = ctx
            .load(n)
            .ok()
            .flatten()
            .and_then(|u| u.timer)
            .map(|t| t.unit)
            .unwrap_or_else(|| "-".to_string());
        let next = st.next_elapse.filter(|_| st.sub == "waiting");
        let (next_s, left) = stamp(next);
        let (last_s, passed) = stamp(st.last_trigger);
        rows.push((next, [next_s, left, last_s, passed, n.clone(), activates]));
    }
    rows.sort_by_key(|(next, r)| (next.is_none(), *next, r[4].clone()));
    let header = ["NEXT", "LEFT", "LAST", "PASSED", "UNIT", "ACTIVATES"].map(str::to_string);
    let mut width = header.clone().map(|h| h.len());
    for (_, r) in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            if i + 1 == cols.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$} "));
            }
        }
        s
    };
    println!("{}", line(&header));
    for (_, r) in &rows {
        println!("{}", line(r));
    }
    println!();
    println!(
        "{} timer{} listed.",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    if !all {
        println!("Pass --all to see loaded but inactive timers, too.");
    }
    Ok(0)
}

/// For `status`: the `Trigger:` and `Triggers:` lines.
pub(super) fn status_lines(st: &SvcState, timer: &Timer) -> Vec<String> {
    let mut out = Vec::new();
    match st.next_elapse.filter(|_| st.sub == "waiting") {
        Some(n) => out.push(format!(
            "    Trigger: {}; {}",
            super::format_day_time(n),
            relative(n, now_secs())
        )),
        None => out.push("    Trigger: n/a".to_string()),
    }
    out.push(format!("   Triggers: ● {}", timer.unit));
    out
}

/// For `show`: a timer's own properties.
pub(super) fn show_props(st: &SvcState, timer: &Timer) -> Vec<(&'static str, String)> {
    let time = |s: Option<u64>| s.map(super::format_day_time).unwrap_or_default();
    vec![
        ("Unit", timer.unit.clone()),
        (
            "NextElapseUSecRealtime",
            time(st.next_elapse.filter(|_| st.sub == "waiting")),
        ),
        ("LastTriggerUSec", time(st.last_trigger)),
        (
            "Persistent",
            if timer.persistent { "yes" } else { "no" }.into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::calendar::from_unix_secs;

    #[test]
    fn relative_times_read_like_systemd() {
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(105, 100), "5s left");
        assert_eq!(relative(100, 165), "1min 5s ago");
        assert_eq!(relative(100 + 22 * 3600 + 59, 100), "22h left");
        assert_eq!(relative(100 + 3600 + 120, 100), "1h 2min left");
        assert_eq!(relative(100 + 86_400 + 7200, 100), "1 day 2h left");
    }

    #[test]
    fn relative_settings_are_spent_once_triggered() {
        let t = Timer {
            on_active: vec![Duration::from_secs(5)],
            on_unit_active: vec![Duration::from_secs(60)],
            ..Default::default()
        };
        let start = from_unix_secs(1_000);
        // Never triggered: OnActiveSec= counts from activation; OnUnitActiveSec= has no base.
        assert_eq!(
            next_elapse(&t, start, None).unwrap(),
            Some(from_unix_secs(1_005))
        );
        // Triggered at 1005: OnActiveSec= is spent, OnUnitActiveSec= counts from the trigger.
        assert_eq!(
            next_elapse(&t, start, Some(from_unix_secs(1_005))).unwrap(),
            Some(from_unix_secs(1_065))
        );
        let once = Timer {
            on_active: vec![Duration::from_secs(5)],
            ..Default::default()
        };
        assert_eq!(
            next_elapse(&once, start, Some(from_unix_secs(1_005))).unwrap(),
            None
        );
    }
}
