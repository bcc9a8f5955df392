//! The supervisor (`systemctl __supervise UNIT`): runs one service in its own session, follows
//! its readiness and exit, restarts it as `Restart=` says, and stops it when signalled.

use super::exec::{build_env, log_line, open_log, service_command};
use super::state::*;
use crate::lab::proc::ProcRef;
use crate::lab::unit::{self, Restart, ServiceType, Unit};
use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

pub(super) enum Ev {
    Signal(Signal),
    Notify(String),
}

enum Outcome {
    Exited(WaitStatus),
    Ready,
    Stop,
    Timeout,
}

struct Sup {
    ctx: Ctx,
    unit: Unit,
    st: SvcState,
    rx: Receiver<Ev>,
    log: File,
    /// Whether the `systemctl start` that spawned us still waits for our report.
    report: bool,
    stop: bool,
    ready: bool,
    /// Exit statuses reaped while waiting for something else.
    exited: HashMap<i32, WaitStatus>,
    /// ExecStopPost= ran for this activation.
    post_ran: bool,
}

pub(super) fn supervise(ctx: &Ctx, u: &str) -> i32 {
    let me = ProcRef::of(std::process::id() as i32);
    let fail_early = |msg: String| {
        println!("failed: {msg}");
        eprintln!("{} hakube-systemd: {u}: {msg}", format_time(now_secs()));
        let st = SvcState {
            state: ActiveState::Failed,
            sub: SubState::Failed,
            since: now_secs(),
            result: UnitResult::Resources,
            ..Default::default()
        };
        let _ = write_state(ctx, u, &st);
        1
    };
    let unit = match ctx.load(u) {
        Ok(Some(x)) => x,
        Ok(None) => return fail_early(format!("unit {u} not found")),
        Err(e) => return fail_early(format!("{e:#}")),
    };
    // Orphans of the service (daemonized children) are re-parented to us, so we can reap them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let (tx, rx) = match signal_channel() {
        Ok(c) => c,
        Err(e) => return fail_early(format!("{e:#}")),
    };
    let log = match open_log(ctx, u) {
        Ok(l) => l,
        Err(e) => return fail_early(format!("{e:#}")),
    };
    if let Some(t) = &unit.timer {
        return super::timer::supervise(ctx, &unit, t, rx, log, me);
    }
    if unit.kind == ServiceType::Notify
        && let Err(e) = notify_socket(ctx, u, tx)
    {
        return fail_early(format!("cannot create the notify socket: {e:#}"));
    }
    let mut sup = Sup {
        ctx: ctx.clone(),
        unit,
        st: SvcState {
            state: ActiveState::Activating,
            sub: SubState::StartPre,
            supervisor: me,
            since: now_secs(),
            result: UnitResult::Success,
            ..Default::default()
        },
        rx,
        log,
        report: true,
        stop: false,
        ready: false,
        post_ran: false,
        exited: HashMap::new(),
    };
    sup.save();
    report_to_starter("spawned");
    let code = sup.run();
    let _ = fs::remove_file(ctx.notify_path(u));
    code
}

/// Signals are taken synchronously by one thread and sent on the channel; services get an empty
/// mask again (`service_command`).
pub(super) fn signal_channel() -> Result<(Sender<Ev>, Receiver<Ev>)> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set.thread_block().context("cannot block signals")?;
    let (tx, rx) = channel();
    let sig_tx = tx.clone();
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if sig_tx.send(Ev::Signal(sig)).is_err() {
                break;
            }
        }
    });
    Ok((tx, rx))
}

/// A line for the `systemctl start` that spawned this supervisor (on its stdout pipe).
pub(super) fn report_to_starter(msg: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

/// Done reporting: let go of the pipe, so the starter (and its ssh session) can end.
pub(super) fn detach_from_starter() {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn notify_socket(ctx: &Ctx, u: &str, tx: Sender<Ev>) -> Result<()> {
    ctx.ensure_run_dir()?;
    let p = ctx.notify_path(u);
    let _ = fs::remove_file(&p);
    let sock = UnixDatagram::bind(&p).with_context(|| format!("cannot bind {}", p.display()))?;
    // Services that drop privileges (User=) must still be able to notify.
    fs::set_permissions(&p, fs::Permissions::from_mode(0o777))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(Ev::Notify(String::from_utf8_lossy(&buf[..n]).to_string()))
                .is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

impl Sup {
    fn save(&self) {
        if let Err(e) = write_state(&self.ctx, &self.unit.name, &self.st) {
            self.log(&format!("cannot record state: {e:#}"));
        }
    }

    fn log(&self, msg: &str) {
        log_line(&self.log, &self.unit.name, msg);
    }

    fn set(&mut self, state: ActiveState, sub: SubState) {
        self.st.enter(state, sub);
        self.save();
    }

    /// Tell `systemctl start` how the start went (once), then detach from its pipe.
    fn report(&mut self, msg: &str) {
        if std::mem::take(&mut self.report) {
            report_to_starter(msg);
            detach_from_starter();
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if let Some(pid) = ws.pid() {
                        self.exited.insert(pid.as_raw(), ws);
                    }
                }
            }
        }
    }

    /// Wait for `pid` to exit (or readiness, a stop request, or the deadline).
    fn wait(&mut self, pid: Option<i32>, deadline: Option<Instant>, want_ready: bool) -> Outcome {
        loop {
            self.reap();
            if let Some(p) = pid
                && let Some(ws) = self.exited.remove(&p)
            {
                return Outcome::Exited(ws);
            }
            if self.stop {
                return Outcome::Stop;
            }
            if want_ready && self.ready {
                return Outcome::Ready;
            }
            let ev = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Outcome::Timeout;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(ev) => ev,
                        Err(RecvTimeoutError::Timeout) => return Outcome::Timeout,
                        Err(RecvTimeoutError::Disconnected) => return Outcome::Stop,
                    }
                }
                None => match self.rx.recv() {
                    Ok(ev) => ev,
                    Err(_) => return Outcome::Stop,
                },
            };
            match ev {
                Ev::Signal(Signal::SIGTERM) | Ev::Signal(Signal::SIGINT) => self.stop = true,
                Ev::Signal(_) => {}
                Ev::Notify(msg) => {
                    for line in msg.lines() {
                        match line.split_once('=') {
                            Some(("READY", "1")) => {
                                self.ready = true;
                                if self.st.state == ActiveState::Reloading {
                                    self.set(ActiveState::Active, SubState::Running);
                                }
                            }
                            Some(("RELOADING", "1")) => {
                                self.set(ActiveState::Reloading, SubState::Reload)
                            }
                            Some(("STATUS", s)) => {
                                self.st.status_text = Some(s.to_string());
                                self.save();
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    fn spawn(&mut self, argv: &[String], env: &BTreeMap<String, String>) -> Result<ProcRef> {
        let log = self.log.try_clone()?;
        let mut cmd = service_command(&self.unit, argv, env, log)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot execute {}", argv[0]))?;
        let pid = child.id() as i32;
        // Never wait through `child`: all reaping goes through waitpid(-1) in `reap`.
        drop(child);
        Ok(ProcRef::of(pid).unwrap_or(ProcRef { pid, start: 0 }))
    }

    /// Run a control command (ExecStartPre and friends) to its end.
    fn run_control(
        &mut self,
        line: &unit::ExecLine,
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<bool> {
        let argv = unit::expand(&line.raw, env, &self.unit.name)?;
        let p = self.spawn(&argv, env)?;
        match self.wait(Some(p.pid), Some(Instant::now() + timeout), false) {
            Outcome::Exited(ws) => {
                let ok = matches!(ws, WaitStatus::Exited(_, 0));
                if !ok {
                    self.log(&format!("{} failed: {}", argv[0], describe(&ws)));
                }
                Ok(ok || line.ignore_failure)
            }
            _ => {
                p.signal_group(Signal::SIGKILL);
                self.log(&format!(
                    "{} did not finish in time (or a stop was requested)",
                    argv[0]
                ));
                Ok(line.ignore_failure && !self.stop)
            }
        }
    }

    /// Terminate what is left of a process group: SIGTERM, a grace period, SIGKILL.
    fn kill_group(&mut self, pgid: i32, grace: Duration) {
        let group = Pid::from_raw(-pgid);
        if nix::sys::signal::kill(group, Signal::SIGTERM).is_err() {
            return; // nothing left
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            self.reap();
            if nix::sys::signal::kill(group, None).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(group, Signal::SIGKILL);
        self.reap();
    }

    fn run(&mut self) -> i32 {
        let mut starts: VecDeque<Instant> = VecDeque::new();
        loop {
            starts.push_back(Instant::now());
            while starts
                .front()
                .is_some_and(|t| t.elapsed() > self.unit.start_limit_interval)
            {
                starts.pop_front();
            }
            if starts.len() as u32 > self.unit.start_limit_burst {
                self.log("start request repeated too quickly; giving up (StartLimitBurst=)");
                self.st.result = UnitResult::StartLimitHit;
                self.set(ActiveState::Failed, SubState::Failed);
                self.report_failure("start request repeated too quickly");
                return 1;
            }
            // What fails the start job, if it is still waiting; reported once the state is
            // recorded, so that `systemctl start` returns to a state that says so.
            let ended = self.start_once();
            // A oneshot that stays active (RemainAfterExit=) has not stopped.
            if !(matches!(ended, Ok(None)) && self.st.state == ActiveState::Active) {
                self.stop_post();
            }
            let failure = match ended {
                Ok(Some(ws)) => {
                    if self.stop {
                        return self.finish_stopped();
                    }
                    // A start job still waiting means the main process died before it was
                    // ready: that fails the job (exit status 0 included: no READY=1 came),
                    // whatever Restart= does next, as in systemd.
                    let starting = self.report;
                    let clean = self.is_clean(&ws) && !starting;
                    self.st.last_exit = Some(describe(&ws));
                    self.st.main = None;
                    self.st.result = if clean {
                        UnitResult::Success
                    } else if starting && self.is_clean(&ws) {
                        UnitResult::Protocol
                    } else {
                        result_of(&ws)
                    };
                    self.log(&format!("main process exited, {}", describe(&ws)));
                    let failure = format!(
                        "the main process exited before it was ready ({})",
                        describe(&ws)
                    );
                    let again = match self.unit.restart {
                        Restart::Always => true,
                        Restart::OnFailure => !clean,
                        Restart::OnAbnormal => matches!(ws, WaitStatus::Signaled(..)) && !clean,
                        Restart::No => false,
                    };
                    if !again {
                        if clean {
                            self.set(ActiveState::Inactive, SubState::Dead);
                        } else {
                            self.set(ActiveState::Failed, SubState::Failed);
                        }
                        self.report_failure(&failure);
                        return 0;
                    }
                    failure
                }
                Ok(None) => return 0, // oneshot done, or stopped
                Err(e) => {
                    let msg = format!("{e:#}");
                    self.log(&msg);
                    if self.stop {
                        return self.finish_stopped();
                    }
                    if self.st.result == UnitResult::Success {
                        self.st.result = UnitResult::ExitCode;
                    }
                    self.st.main = None;
                    let again = match self.unit.restart {
                        Restart::Always | Restart::OnFailure => true,
                        Restart::OnAbnormal => self.st.result == UnitResult::Timeout,
                        Restart::No => false,
                    };
                    if !again {
                        self.set(ActiveState::Failed, SubState::Failed);
                        self.report_failure(&msg);
                        return 1;
                    }
                    msg
                }
            };
            self.st.n_restarts += 1;
            self.set(ActiveState::Activating, SubState::AutoRestart);
            self.report_failure(&failure);
            self.log(&format!(
                "scheduling restart in {:?} (Restart=)",
                self.unit.restart_sec
            ));
            if let Outcome::Stop =
                self.wait(None, Some(Instant::now() + self.unit.restart_sec), false)
            {
                return self.finish_stopped();
            }
        }
    }

    /// Fail the pending start job (if any) with the recorded result and `detail`.
    fn report_failure(&mut self, detail: &str) {
        let msg = format!("failed: {}: {detail}", self.st.result);
        self.report(&msg);
    }

    fn is_clean(&self, ws: &WaitStatus) -> bool {
        match ws {
            WaitStatus::Exited(_, code) => {
                *code == 0 || self.unit.success_exit_status.contains(code)
            }
            WaitStatus::Signaled(_, s, _) => {
                matches!(
                    s,
                    Signal::SIGHUP | Signal::SIGINT | Signal::SIGTERM | Signal::SIGPIPE
                )
            }
            _ => false,
        }
    }

    fn finish_stopped(&mut self) -> i32 {
        // Like systemd, `stop` returns only after ExecStopPost= ran.
        self.stop_post();
        self.st.main = None;
        self.st.supervisor = None;
        self.st.result = UnitResult::Success;
        self.set(ActiveState::Inactive, SubState::Dead);
        self.log("stopped");
        self.report_failure("stopped before it was ready");
        0
    }

    /// One activation: ExecStartPre, ExecStart, readiness, then wait for the main process.
    /// Returns its exit status, or None when the service ended for good (oneshot, stop).
    fn start_once(&mut self) -> Result<Option<WaitStatus>> {
        let env = build_env(&self.unit)?;
        self.post_ran = false;
        self.set(ActiveState::Activating, SubState::StartPre);
        for line in self.unit.exec_start_pre.clone() {
            if !self.run_control(&line, &env, self.unit.timeout_start)? {
                if self.stop {
                    self.finish_stopped();
                    return Ok(None);
                }
                self.st.result = UnitResult::ExitCode;
                bail!("ExecStartPre={} failed", line.raw);
            }
        }
        if self.unit.kind == ServiceType::Oneshot {
            self.set(ActiveState::Activating, SubState::Start);
            for line in self.unit.exec_start.clone() {
                if !self.run_control(&line, &env, self.unit.timeout_start)? {
                    self.st.result = UnitResult::ExitCode;
                    bail!("ExecStart={} failed", line.raw);
                }
            }
            self.st.supervisor = None;
            if self.unit.remain_after_exit {
                self.set(ActiveState::Active, SubState::Exited);
            } else {
                self.set(ActiveState::Inactive, SubState::Dead);
            }
            self.report("ready");
            return Ok(None);
        }
        let mut env = env;
        if self.unit.kind == ServiceType::Notify {
            env.insert(
                "NOTIFY_SOCKET".into(),
                self.ctx.notify_path(&self.unit.name).display().to_string(),
            );
        }
        let argv = unit::expand(&self.unit.exec_start[0].raw, &env, &self.unit.name)?;
        self.ready = false;
        let mut main = self.spawn(&argv, &env)?;
        self.st.main = Some(main);
        self.log(&format!("started {} (pid {})", argv[0], main.pid));
        let deadline = Instant::now() + self.unit.timeout_start;
        match self.unit.kind {
            ServiceType::Notify => {
                self.set(ActiveState::Activating, SubState::Start);
                match self.wait(Some(main.pid), Some(deadline), true) {
                    Outcome::Ready => {}
                    Outcome::Exited(ws) => return Ok(Some(ws)),
                    Outcome::Stop => return Ok(self.stop_main(main)),
                    Outcome::Timeout => {
                        self.kill_group(main.pid, Duration::from_secs(1));
                        self.st.result = UnitResult::Timeout;
                        bail!(
                            "no READY=1 within TimeoutStartSec={:?}",
                            self.unit.timeout_start
                        );
                    }
                }
            }
            ServiceType::Forking => {
                let first = main;
                match self.wait(Some(first.pid), Some(deadline), false) {
                    Outcome::Exited(WaitStatus::Exited(_, 0)) => {}
                    Outcome::Exited(ws) => {
                        self.st.result = result_of(&ws);
                        bail!("the forking ExecStart failed: {}", describe(&ws));
                    }
                    Outcome::Stop => return Ok(self.stop_main(first)),
                    _ => {
                        self.kill_group(first.pid, Duration::from_secs(1));
                        bail!("the forking ExecStart did not return within TimeoutStartSec=");
                    }
                }
                let Some(pid_file) = self.unit.pid_file.clone() else {
                    bail!(
                        "Type=forking needs PIDFile= in the lab (it cannot guess the main process)"
                    );
                };
                let pid = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .with_context(|| format!("PIDFile={pid_file} holds no PID"))?;
                main = ProcRef::of(pid)
                    .with_context(|| format!("the PID {pid} in {pid_file} is not running"))?;
                self.st.main = Some(main);
            }
            _ => {}
        }
        self.set(ActiveState::Active, SubState::Running);
        self.report("ready");
        for line in self.unit.exec_start_post.clone() {
            let mut e = env.clone();
            e.insert("MAINPID".into(), main.pid.to_string());
            if !self.run_control(&line, &e, self.unit.timeout_start)? {
                self.log("ExecStartPost failed");
            }
        }
        match self.wait(Some(main.pid), None, false) {
            Outcome::Exited(ws) => {
                // Whatever the main process left behind in its group goes too.
                self.kill_group(main.pid, Duration::from_secs(1));
                Ok(Some(ws))
            }
            _ => Ok(self.stop_main(main)),
        }
    }

    /// ExecStopPost=, as systemd runs it once the main process is gone, whatever ended it (once
    /// per activation).
    fn stop_post(&mut self) {
        if std::mem::replace(&mut self.post_ran, true) {
            return;
        }
        let env = build_env(&self.unit).unwrap_or_default();
        // A stop already requested must not cut these short (`wait` reports it otherwise).
        let stopping = std::mem::replace(&mut self.stop, false);
        for line in self.unit.exec_stop_post.clone() {
            if !self
                .run_control(&line, &env, self.unit.timeout_stop)
                .unwrap_or(false)
            {
                self.log(&format!("ExecStopPost={} failed", line.raw));
            }
        }
        self.stop = stopping;
    }

    /// Stop requested: ExecStop, SIGTERM to the group, TimeoutStopSec=, SIGKILL.
    fn stop_main(&mut self, main: ProcRef) -> Option<WaitStatus> {
        self.set(ActiveState::Deactivating, SubState::StopSigterm);
        let mut env = build_env(&self.unit).unwrap_or_default();
        env.insert("MAINPID".into(), main.pid.to_string());
        for line in self.unit.exec_stop.clone() {
            let _ = self.run_control(&line, &env, self.unit.timeout_stop);
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(-main.pid), Signal::SIGTERM);
        let _ = nix::sys::signal::kill(Pid::from_raw(main.pid), Signal::SIGTERM);
        let deadline = Instant::now() + self.unit.timeout_stop;
        self.stop = false; // let `wait` report the exit instead of the (already known) stop
        let exited = matches!(
            self.wait(Some(main.pid), Some(deadline), false),
            Outcome::Exited(_)
        );
        self.stop = true;
        if !exited {
            self.log(&format!(
                "did not stop within TimeoutStopSec={:?}; sending SIGKILL",
                self.unit.timeout_stop
            ));
            let _ = nix::sys::signal::kill(Pid::from_raw(-main.pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(main.pid), Signal::SIGKILL);
            self.stop = false;
            let _ = self.wait(
                Some(main.pid),
                Some(Instant::now() + Duration::from_secs(5)),
                false,
            );
            self.stop = true;
        }
        self.kill_group(main.pid, Duration::from_millis(500));
        self.finish_stopped();
        None
    }
}

fn describe(ws: &WaitStatus) -> String {
    match ws {
        WaitStatus::Exited(p, c) => format!("{p} code=exited, status={c}"),
        WaitStatus::Signaled(p, s, _) => format!(
            "{p} code=killed, signal={}",
            s.as_str().trim_start_matches("SIG")
        ),
        other => format!("{other:?}"),
    }
}

fn result_of(ws: &WaitStatus) -> UnitResult {
    match ws {
        WaitStatus::Signaled(..) => UnitResult::Signal,
        _ => UnitResult::ExitCode,
    }
}
