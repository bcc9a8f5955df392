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
//! A `.timer` unit's supervisor waits for its next elapse and starts its service (timer.rs).
//!
//! `HAKUBE_SYSTEMCTL_ROOT` moves every path below another folder (for tests).

mod timer;

use super::proc::ProcRef;
use super::unit::{self, Restart, ServiceType, Unit};
use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that moves all paths below another root (tests).
pub const ROOT_ENV: &str = "HAKUBE_SYSTEMCTL_ROOT";
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit codes as systemctl uses them (LSB).
const EXIT_INACTIVE: i32 = 3;
const EXIT_NO_UNIT: i32 = 5;

/// The folder tree a systemctl works on: `/` on a lab host.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub root: PathBuf,
}

impl Ctx {
    pub fn from_env() -> Ctx {
        Ctx {
            root: std::env::var_os(ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }
    pub fn new(root: &Path) -> Ctx {
        Ctx {
            root: root.to_path_buf(),
        }
    }
    fn run_dir(&self) -> PathBuf {
        self.root.join("run/hakube-systemd")
    }
    fn state_path(&self, unit: &str) -> PathBuf {
        self.run_dir().join(format!("{unit}.json"))
    }
    pub fn log_path(&self, unit: &str) -> PathBuf {
        self.run_dir().join(format!("{unit}.log"))
    }
    fn notify_path(&self, unit: &str) -> PathBuf {
        self.run_dir().join(format!("{unit}.notify"))
    }
    fn wants(&self, target: &str, unit: &str) -> PathBuf {
        self.root
            .join("etc/systemd/system")
            .join(format!("{target}.wants"))
            .join(unit)
    }
    fn ensure_run_dir(&self) -> Result<()> {
        let d = self.run_dir();
        fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }
    fn lock(&self, unit: &str) -> Result<Flock<File>> {
        self.ensure_run_dir()?;
        let p = self.run_dir().join(format!("{unit}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", p.display()))
    }
    fn load(&self, name: &str) -> Result<Option<Unit>> {
        unit::load(&self.root, name)
    }
}

/// What the supervisor records about a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SvcState {
    /// active, activating, deactivating, reloading, inactive or failed.
    pub state: String,
    /// running, start-pre, auto-restart, exited, stop-sigterm, dead, failed.
    pub sub: String,
    pub supervisor: Option<ProcRef>,
    pub main: Option<ProcRef>,
    /// Unix seconds of the last state change.
    pub since: u64,
    pub n_restarts: u32,
    /// success, exit-code, signal, timeout, start-limit-hit, resources.
    pub result: String,
    pub last_exit: Option<String>,
    pub status_text: Option<String>,
    /// Timers: Unix seconds of the next elapse, while waiting for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_elapse: Option<u64>,
    /// Timers: Unix seconds of the last trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_state(ctx: &Ctx, unit: &str) -> Option<SvcState> {
    serde_json::from_str(&fs::read_to_string(ctx.state_path(unit)).ok()?).ok()
}

fn write_state(ctx: &Ctx, unit: &str, st: &SvcState) -> Result<()> {
    ctx.ensure_run_dir()?;
    let p = ctx.state_path(unit);
    let tmp = p.with_extension(format!("json.{}", std::process::id()));
    fs::write(&tmp, serde_json::to_vec_pretty(st)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

/// The state as it really is: a recorded state whose supervisor died is not believed.
pub fn effective(ctx: &Ctx, unit: &str) -> SvcState {
    let Some(mut st) = read_state(ctx, unit) else {
        return SvcState {
            state: "inactive".into(),
            sub: "dead".into(),
            ..Default::default()
        };
    };
    let sup_alive = st.supervisor.is_some_and(|s| s.alive());
    if !sup_alive {
        let remains = st.state == "active" && st.main.is_none() && st.supervisor.is_none();
        if st.main.is_some_and(|m| m.alive()) {
            // The supervisor was killed but the service runs on, unsupervised.
            st.state = "active".into();
            st.sub = "running".into();
        } else if !remains && st.state != "inactive" && st.state != "failed" {
            st.state = "failed".into();
            st.sub = "failed".into();
            st.result = "resources".into();
        }
    }
    st
}

/// Active state for a unit, seen from outside the host (`root` is the host's private tree):
/// `not-installed` when there is neither a unit file nor a record.
pub fn active_state(root: &Path, unit: &str) -> String {
    let ctx = Ctx::new(root);
    let name = unit::normalize(unit).unwrap_or_else(|_| unit.to_string());
    let has_file = unit::UNIT_DIRS
        .iter()
        .take(2)
        .any(|d| root.join(d).join(&name).is_file());
    if !has_file && read_state(&ctx, &name).is_none() {
        return "not-installed".into();
    }
    effective(&ctx, &name).state
}

/// The live main process of a unit, seen from outside the host.
pub fn main_process(root: &Path, unit: &str) -> Option<ProcRef> {
    let name = unit::normalize(unit).ok()?;
    read_state(&Ctx::new(root), &name)?
        .main
        .filter(ProcRef::alive)
}

/// Every live supervisor recorded below `root` (for `lab down`).
pub fn recorded_supervisors(root: &Path) -> Vec<ProcRef> {
    let ctx = Ctx::new(root);
    let Ok(rd) = fs::read_dir(ctx.run_dir()) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let unit = name.strip_suffix(".json")?;
            read_state(&ctx, unit)?.supervisor.filter(ProcRef::alive)
        })
        .collect()
}

/// Command-line options systemctl users commonly pass.
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
            Some(u) => supervise(&ctx, u),
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
            if is_active(&effective(ctx, u)) {
                restart(ctx, u, o.no_block)
            } else {
                Ok(0)
            }
        }),
        "reload" => each(&|u| reload(ctx, u)),
        "reload-or-restart" | "force-reload" => each(&|u| {
            let has_reload = ctx.load(u)?.is_some_and(|x| !x.exec_reload.is_empty());
            if is_active(&effective(ctx, u)) && has_reload {
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
                any |= is_active(&st);
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
                any |= st.state == "failed";
                if !o.quiet {
                    println!("{}", st.state);
                }
            }
            Ok(if any { 0 } else { 1 })
        }
        "is-enabled" => each(&|u| is_enabled(ctx, u, o.quiet)),
        "status" => each(&|u| status(ctx, u, o.lines)),
        "show" => each(&|u| show(ctx, u, &o)),
        "cat" => each(&|u| cat(ctx, u)),
        "kill" => each(&|u| kill_unit(ctx, u, &o)),
        "reset-failed" => {
            for u in units()? {
                let _l = ctx.lock(&u)?;
                if let Some(mut st) = read_state(ctx, &u).filter(|s| s.state == "failed") {
                    st.state = "inactive".into();
                    st.sub = "dead".into();
                    st.result = "success".into();
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

fn is_active(st: &SvcState) -> bool {
    st.state == "active" || st.state == "reloading"
}

fn not_found(verb: &str, u: &str) -> i32 {
    eprintln!("Failed to {verb} {u}: Unit {u} not found.");
    EXIT_NO_UNIT
}

fn start(ctx: &Ctx, u: &str, no_block: bool) -> Result<i32> {
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
        || (cur.state == "active" && cur.supervisor.is_none())
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
            match job_failed_because(result) {
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
fn job_failed_because(result: &str) -> Option<&'static str> {
    Some(match result {
        "success" => return None,
        "exit-code" => "the control process exited with error code",
        "signal" => "a fatal signal was delivered to the control process",
        "timeout" => "a timeout was exceeded",
        "start-limit-hit" => "start of the service was attempted too often",
        "resources" => "of unavailable resources or another system error",
        "protocol" => "the service did not take the steps required by its unit configuration",
        _ => "the service failed",
    })
}

fn stop(ctx: &Ctx, u: &str) -> Result<i32> {
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
        if !super::proc::wait_gone(&[sup], timeout + Duration::from_secs(5)) {
            sup.signal(Signal::SIGKILL);
        }
    }
    // No supervisor (any more): stop an orphaned main process ourselves.
    let mut st = read_state(ctx, u).unwrap_or_default();
    if let Some(main) = st.main.filter(ProcRef::alive) {
        main.signal_group(Signal::SIGTERM);
        main.signal(Signal::SIGTERM);
        if !super::proc::wait_gone(&[main], timeout) {
            main.signal_group(Signal::SIGKILL);
            main.signal(Signal::SIGKILL);
        }
    }
    if st.state != "inactive" && st.state != "failed" {
        st.state = "inactive".into();
        st.sub = "dead".into();
        st.main = None;
        st.supervisor = None;
        st.since = now_secs();
        write_state(ctx, u, &st)?;
    }
    Ok(0)
}

fn restart(ctx: &Ctx, u: &str, no_block: bool) -> Result<i32> {
    if ctx.load(u)?.is_none() {
        return Ok(not_found("restart", u));
    }
    stop(ctx, u)?;
    start(ctx, u, no_block)
}

fn reload(ctx: &Ctx, u: &str) -> Result<i32> {
    let Some(unit) = ctx.load(u)? else {
        return Ok(not_found("reload", u));
    };
    if unit.exec_reload.is_empty() {
        eprintln!("Failed to reload {u}: Job type reload is not applicable for unit {u}.");
        return Ok(1);
    }
    let st = effective(ctx, u);
    if !is_active(&st) {
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
                super::proc::exit_code(status),
                ctx.log_path(u).display()
            );
            return Ok(1);
        }
    }
    Ok(0)
}

fn targets(unit: &Unit) -> Vec<String> {
    unit.wanted_by.clone()
}

fn enable(ctx: &Ctx, u: &str, quiet: bool) -> Result<i32> {
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

fn disable(ctx: &Ctx, u: &str, quiet: bool) -> Result<i32> {
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

fn enabled_state(ctx: &Ctx, unit: &Unit) -> &'static str {
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

fn is_enabled(ctx: &Ctx, u: &str, quiet: bool) -> Result<i32> {
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

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `Thu 2026-11-26 09:00:00 UTC`, as systemd writes time stamps.
pub fn format_day_time(secs: u64) -> String {
    // 1970-01-01 was a Thursday.
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{} {}",
        DAYS[(secs / 86_400 % 7) as usize],
        format_time(secs)
    )
}

/// `2026-11-26 09:00:00 UTC`, without a time zone database.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn status(ctx: &Ctx, u: &str, lines: usize) -> Result<i32> {
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
    let dot = if is_active(&st) {
        "●"
    } else if st.state == "failed" {
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
    let result = if st.state == "failed" {
        format!(" (Result: {})", st.result)
    } else {
        String::new()
    };
    println!("     Active: {} ({}){result}{since}", st.state, st.sub);
    if let Some(t) = unit.as_ref().and_then(|x| x.timer.as_ref()) {
        for l in timer::status_lines(&st, t) {
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
    Ok(if is_active(&st) { 0 } else { EXIT_INACTIVE })
}

fn show(ctx: &Ctx, u: &str, o: &Opts) -> Result<i32> {
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
        ("ActiveState", st.state.clone()),
        ("SubState", st.sub.clone()),
        (
            "Result",
            if st.result.is_empty() {
                "success".into()
            } else {
                st.result.clone()
            },
        ),
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
        props.extend(timer::show_props(&st, t));
    }
    if !o.props.is_empty() {
        props.retain(|(k, _)| o.props.iter().any(|p| p == k));
    }
    for (k, v) in props {
        if o.value {
            println!("{v}");
        } else {
            println!("{k}={v}");
        }
    }
    Ok(0)
}

fn cat(ctx: &Ctx, u: &str) -> Result<i32> {
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

fn kill_unit(ctx: &Ctx, u: &str, o: &Opts) -> Result<i32> {
    let sig_name = o.signal.clone().unwrap_or_else(|| "SIGTERM".into());
    let sig = parse_signal(&sig_name)?;
    let st = effective(ctx, u);
    let Some(main) = st.main.filter(ProcRef::alive) else {
        eprintln!("Failed to kill unit {u}: no process to kill");
        return Ok(1);
    };
    if o.kill_whom.as_deref() == Some("main") {
        main.signal(sig);
    } else {
        main.signal_group(sig);
    }
    Ok(0)
}

fn parse_signal(s: &str) -> Result<Signal> {
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

fn list_units(ctx: &Ctx) -> Result<i32> {
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

fn open_log(ctx: &Ctx, u: &str) -> Result<File> {
    ctx.ensure_run_dir()?;
    let p = ctx.log_path(u);
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .with_context(|| format!("cannot open {}", p.display()))
}

/// The service environment: a fixed PATH, then Environment=, then EnvironmentFile= (which
/// overrides, as in systemd).
fn build_env(unit: &Unit) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), SERVICE_PATH.to_string());
    env.insert(
        "INVOCATION_ID".to_string(),
        hex::encode(rand::random::<[u8; 16]>()),
    );
    if let Some(u) = &unit.user
        && let Ok(Some(pw)) = nix::unistd::User::from_name(u)
    {
        env.insert("HOME".into(), pw.dir.display().to_string());
        env.insert("USER".into(), pw.name.clone());
        env.insert("LOGNAME".into(), pw.name.clone());
        env.insert("SHELL".into(), pw.shell.display().to_string());
    }
    for (k, v) in &unit.environment {
        env.insert(k.clone(), v.clone());
    }
    for (path, optional) in &unit.environment_files {
        match unit::read_env_file(Path::new(path)) {
            Ok(vars) => env.extend(vars),
            Err(_) if *optional => {}
            Err(e) => bail!("EnvironmentFile={path} cannot be read: {e}"),
        }
    }
    Ok(env)
}

/// A command for the service: clean environment, output to the unit's log, its own process
/// group (so stop can signal everything it forked), User=/Group=/WorkingDirectory= honoured.
fn service_command(
    unit: &Unit,
    argv: &[String],
    env: &BTreeMap<String, String>,
    log: File,
) -> Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .current_dir(unit.working_directory.as_deref().unwrap_or("/"));
    // The supervisor blocks SIGTERM and SIGCHLD (it takes them with sigwait); a signal mask is
    // inherited across exec, so give the service an empty one or it would ignore `stop`.
    // SAFETY: pthread_sigmask(3) only.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::empty().thread_set_mask()?;
            Ok(())
        });
    }
    if let Some(u) = &unit.user {
        let pw = nix::unistd::User::from_name(u)
            .ok()
            .flatten()
            .with_context(|| format!("User={u} does not exist on this host"))?;
        cmd.uid(pw.uid.as_raw()).gid(pw.gid.as_raw());
    }
    if let Some(g) = &unit.group {
        let gr = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .with_context(|| format!("Group={g} does not exist on this host"))?;
        cmd.gid(gr.gid.as_raw());
    }
    Ok(cmd)
}

// ---------------------------------------------------------------------------------------------
// The supervisor.

enum Ev {
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
}

fn supervise(ctx: &Ctx, u: &str) -> i32 {
    let me = ProcRef::of(std::process::id() as i32);
    let fail_early = |msg: String| {
        println!("failed: {msg}");
        eprintln!("{} hakube-systemd: {u}: {msg}", format_time(now_secs()));
        let st = SvcState {
            state: "failed".into(),
            sub: "failed".into(),
            since: now_secs(),
            result: "resources".into(),
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
        return timer::supervise(ctx, &unit, t, rx, log, me);
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
            state: "activating".into(),
            sub: "start-pre".into(),
            supervisor: me,
            since: now_secs(),
            result: "success".into(),
            ..Default::default()
        },
        rx,
        log,
        report: true,
        stop: false,
        ready: false,
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
fn signal_channel() -> Result<(Sender<Ev>, Receiver<Ev>)> {
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
fn report_to_starter(msg: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

/// Done reporting: let go of the pipe, so the starter (and its ssh session) can end.
fn detach_from_starter() {
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
        let mut l = &self.log;
        let _ = writeln!(
            l,
            "{} hakube-systemd: {}: {msg}",
            format_time(now_secs()),
            self.unit.name
        );
    }

    fn set(&mut self, state: &str, sub: &str) {
        self.st.state = state.into();
        self.st.sub = sub.into();
        self.st.since = now_secs();
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
                                if self.st.state == "reloading" {
                                    self.set("active", "running");
                                }
                            }
                            Some(("RELOADING", "1")) => self.set("reloading", "reload"),
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
                self.st.result = "start-limit-hit".into();
                self.set("failed", "failed");
                self.report_failure("start request repeated too quickly");
                return 1;
            }
            // What fails the start job, if it is still waiting; reported once the state is
            // recorded, so that `systemctl start` returns to a state that says so.
            let failure = match self.start_once() {
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
                        "success".into()
                    } else if starting && self.is_clean(&ws) {
                        "protocol".into()
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
                            self.set("inactive", "dead");
                        } else {
                            self.set("failed", "failed");
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
                    if self.st.result == "success" {
                        self.st.result = "exit-code".into();
                    }
                    self.st.main = None;
                    let again = match self.unit.restart {
                        Restart::Always | Restart::OnFailure => true,
                        Restart::OnAbnormal => self.st.result == "timeout",
                        Restart::No => false,
                    };
                    if !again {
                        self.set("failed", "failed");
                        self.report_failure(&msg);
                        return 1;
                    }
                    msg
                }
            };
            self.st.n_restarts += 1;
            self.set("activating", "auto-restart");
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
        self.st.main = None;
        self.st.supervisor = None;
        self.st.result = "success".into();
        self.set("inactive", "dead");
        self.log("stopped");
        self.report_failure("stopped before it was ready");
        0
    }

    /// One activation: ExecStartPre, ExecStart, readiness, then wait for the main process.
    /// Returns its exit status, or None when the service ended for good (oneshot, stop).
    fn start_once(&mut self) -> Result<Option<WaitStatus>> {
        let env = build_env(&self.unit)?;
        self.set("activating", "start-pre");
        for line in self.unit.exec_start_pre.clone() {
            if !self.run_control(&line, &env, self.unit.timeout_start)? {
                if self.stop {
                    self.finish_stopped();
                    return Ok(None);
                }
                self.st.result = "exit-code".into();
                bail!("ExecStartPre={} failed", line.raw);
            }
        }
        if self.unit.kind == ServiceType::Oneshot {
            self.set("activating", "start");
            for line in self.unit.exec_start.clone() {
                if !self.run_control(&line, &env, self.unit.timeout_start)? {
                    self.st.result = "exit-code".into();
                    bail!("ExecStart={} failed", line.raw);
                }
            }
            self.st.supervisor = None;
            if self.unit.remain_after_exit {
                self.set("active", "exited");
            } else {
                self.set("inactive", "dead");
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
                self.set("activating", "start");
                match self.wait(Some(main.pid), Some(deadline), true) {
                    Outcome::Ready => {}
                    Outcome::Exited(ws) => return Ok(Some(ws)),
                    Outcome::Stop => return Ok(self.stop_main(main)),
                    Outcome::Timeout => {
                        self.kill_group(main.pid, Duration::from_secs(1));
                        self.st.result = "timeout".into();
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
        self.set("active", "running");
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

    /// Stop requested: ExecStop, SIGTERM to the group, TimeoutStopSec=, SIGKILL.
    fn stop_main(&mut self, main: ProcRef) -> Option<WaitStatus> {
        self.set("deactivating", "stop-sigterm");
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

fn result_of(ws: &WaitStatus) -> String {
    match ws {
        WaitStatus::Signaled(..) => "signal".into(),
        _ => "exit-code".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }
}
