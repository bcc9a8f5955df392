//! The lab's `systemctl` shim on its own, below a temporary root (HAKUBE_SYSTEMCTL_ROOT):
//! no namespaces and no root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Shim {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
}

impl Shim {
    fn new() -> Shim {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/systemd/system")).expect("unit dir");
        let bin = dir.path().join("systemctl");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hakube"), &bin).expect("link");
        Shim {
            _dir: dir,
            root,
            bin,
        }
    }

    fn unit(&self, name: &str, text: &str) {
        std::fs::write(self.root.join("etc/systemd/system").join(name), text).expect("write unit");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("HAKUBE_SYSTEMCTL_ROOT", &self.root)
            .output()
            .expect("run systemctl")
    }

    fn main_pid(&self, unit: &str) -> i32 {
        String::from_utf8_lossy(&self.run(&["show", "-p", "MainPID", "--value", unit]).stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // Stop whatever a failed test left running.
        if let Ok(rd) = std::fs::read_dir(self.root.join("run/hakube-systemd")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if let Some(u) = n.strip_suffix(".json") {
                    self.run(&["stop", u]);
                }
            }
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gone(pid: i32) -> bool {
    hakube::lab::proc::start_time(pid).is_none()
}

#[test]
fn restart_always_brings_a_killed_service_back_and_stop_ends_it() {
    let s = Shim::new();
    s.unit(
        "sleeper.service",
        "[Unit]\nDescription=sleeps\n[Service]\nEnvironment=\"SECS=1000\"\nExecStart=/bin/sleep $SECS\nRestart=always\nRestartSec=50ms\n[Install]\nWantedBy=multi-user.target\n",
    );
    assert_eq!(s.run(&["is-active", "sleeper"]).status.code(), Some(3));
    assert!(s.run(&["start", "sleeper"]).status.success());
    assert_eq!(s.run(&["is-active", "sleeper"]).status.code(), Some(0));
    let first = s.main_pid("sleeper");
    assert!(first > 0);
    let cmdline = std::fs::read(format!("/proc/{first}/cmdline")).expect("cmdline");
    assert_eq!(
        cmdline, b"/bin/sleep\x001000\x00",
        "Environment= expanded into argv"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    wait_until("a new main process", Duration::from_secs(5), || {
        let p = s.main_pid("sleeper");
        p != 0 && p != first
    });
    let second = s.main_pid("sleeper");
    let out = s.run(&["status", "sleeper"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Restarts: 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // SIGTERM must reach the service: stop is quick, not TimeoutStopSec= (10 s) and SIGKILL.
    let t = Instant::now();
    assert!(s.run(&["stop", "sleeper"]).status.success());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    let out = s.run(&["is-active", "sleeper"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inactive");
    wait_until(
        "the stopped process is gone",
        Duration::from_secs(2),
        || gone(second),
    );
    // The supervisor does not bring it back.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.main_pid("sleeper"), 0);

    assert!(s.run(&["enable", "sleeper"]).status.success());
    assert_eq!(
        String::from_utf8_lossy(&s.run(&["is-enabled", "sleeper"]).stdout).trim(),
        "enabled"
    );
    // The link points at the unit as the host sees it.
    let link = std::fs::read_link(
        s.root
            .join("etc/systemd/system/multi-user.target.wants/sleeper.service"),
    );
    assert_eq!(
        link.expect("wants link"),
        Path::new("/etc/systemd/system/sleeper.service")
    );
    assert!(s.run(&["disable", "sleeper"]).status.success());
    assert_eq!(s.run(&["is-enabled", "sleeper"]).status.code(), Some(1));
}

#[test]
fn failing_start_pre_fails_the_start_and_on_failure_gives_up_after_the_limit() {
    let s = Shim::new();
    s.unit(
        "pre.service",
        "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sleep 100\n",
    );
    let out = s.run(&["start", "pre"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&s.run(&["is-active", "pre"]).stdout).trim(),
        "failed"
    );
    assert_eq!(s.run(&["is-failed", "pre"]).status.code(), Some(0));

    // Ignored failure ('-') and a drop-in that replaces ExecStart.
    s.unit(
        "pre.service",
        "[Service]\nExecStartPre=-/bin/false\nExecStart=/bin/false\n",
    );
    std::fs::create_dir_all(s.root.join("etc/systemd/system/pre.service.d")).expect("dropin dir");
    std::fs::write(
        s.root
            .join("etc/systemd/system/pre.service.d/override.conf"),
        "[Service]\nExecStart=\nExecStart=/bin/sleep 100\n",
    )
    .expect("dropin");
    assert!(s.run(&["start", "pre"]).status.success());
    assert_eq!(s.run(&["is-active", "pre"]).status.code(), Some(0));
    assert!(s.run(&["stop", "pre"]).status.success());

    s.unit(
        "crash.service",
        "[Service]\nExecStart=/bin/sh -c 'exit 3'\nRestart=on-failure\nRestartSec=10ms\n",
    );
    s.run(&["start", "crash"]);
    wait_until("start limit hit", Duration::from_secs(10), || {
        String::from_utf8_lossy(&s.run(&["show", "-p", "Result", "--value", "crash"]).stdout).trim()
            == "start-limit-hit"
    });
    assert_eq!(
        String::from_utf8_lossy(&s.run(&["is-active", "crash"]).stdout).trim(),
        "failed"
    );
}

#[test]
fn unknown_units_and_oneshot() {
    let s = Shim::new();
    assert_eq!(s.run(&["start", "nope"]).status.code(), Some(5));
    assert_eq!(s.run(&["status", "nope"]).status.code(), Some(4));
    assert_eq!(s.run(&["is-active", "nope"]).status.code(), Some(3));
    let marker = s.root.join("ran");
    s.unit(
        "once.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/touch {}\n",
            marker.display()
        ),
    );
    assert!(s.run(&["start", "once"]).status.success());
    assert!(Path::new(&marker).exists());
    assert_eq!(s.run(&["is-active", "once"]).status.code(), Some(0));
    assert!(s.run(&["daemon-reload"]).status.success());
}

/// `systemctl start UNIT` must fail within `bound` (else the test fails, after stopping the
/// unit), saying "Job for UNIT.service failed because WHY", as systemd's systemctl does.
fn start_fails_within(s: &Shim, unit: &str, bound: Duration, why: &str) {
    let mut child = Command::new(&s.bin)
        .args(["start", unit])
        .env("HAKUBE_SYSTEMCTL_ROOT", &s.root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run systemctl start");
    let deadline = Instant::now() + bound;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            s.run(&["stop", unit]);
            panic!("`systemctl start {unit}` did not return within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!("Job for {unit}.service failed because {why}");
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}

fn prop(s: &Shim, unit: &str, p: &str) -> String {
    String::from_utf8_lossy(&s.run(&["show", "-p", p, "--value", unit]).stdout)
        .trim()
        .to_string()
}

#[test]
fn start_of_a_crash_looping_notify_service_fails_and_restart_goes_on() {
    let s = Shim::new();
    // Exits before READY=1; RestartSec= and the limit keep the start limit far away, so only
    // the failed start job can end `start`.
    s.unit(
        "crashy.service",
        "[Unit]\nStartLimitBurst=1000\n[Service]\nType=notify\nExecStart=/bin/sh -c 'echo starting; exit 1'\nRestart=always\nRestartSec=1s\n",
    );
    start_fails_within(
        &s,
        "crashy",
        Duration::from_secs(30),
        "the control process exited with error code",
    );
    assert_eq!(prop(&s, "crashy", "Result"), "exit-code");
    // Restart= goes on trying, as in systemd: the unit is activating (auto-restart) again.
    wait_until("a second restart", Duration::from_secs(10), || {
        prop(&s, "crashy", "NRestarts")
            .parse::<u32>()
            .is_ok_and(|n| n >= 2)
    });
    assert_eq!(prop(&s, "crashy", "ActiveState"), "activating");
    assert!(s.run(&["stop", "crashy"]).status.success());
    assert_eq!(prop(&s, "crashy", "ActiveState"), "inactive");

    // Exit status 0 before READY=1 is a failed start too (no restart: Restart=no).
    s.unit(
        "quitter.service",
        "[Service]\nType=notify\nExecStart=/bin/true\n",
    );
    start_fails_within(
        &s,
        "quitter",
        Duration::from_secs(30),
        "the service did not take the steps required by its unit configuration",
    );
    assert_eq!(prop(&s, "quitter", "ActiveState"), "failed");
    assert_eq!(prop(&s, "quitter", "Result"), "protocol");
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn lines_in(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
}

#[test]
fn timer_with_on_active_sec_fires_its_oneshot_service() {
    let s = Shim::new();
    let marker = s.root.join("backups");
    s.unit(
        "backup.service",
        &format!(
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo ran >> {}'\n",
            marker.display()
        ),
    );
    s.unit(
        "backup.timer",
        "[Unit]\nDescription=backs up\n[Timer]\nOnActiveSec=1s\nAccuracySec=1s\n[Install]\nWantedBy=timers.target\n",
    );
    let out = s.run(&["enable", "--now", "backup.timer"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::symlink_metadata(
            s.root
                .join("etc/systemd/system/timers.target.wants/backup.timer")
        )
        .is_ok()
    );
    let out = s.run(&["is-active", "backup.timer"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = s.run(&["list-timers"]);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{listing}");
    for want in ["NEXT", "LEFT", "LAST", "UNIT", "ACTIVATES", "backup.timer"] {
        assert!(listing.contains(want), "want {want:?} in:\n{listing}");
    }
    assert!(
        listing
            .lines()
            .any(|l| l.contains("backup.timer") && l.ends_with("backup.service")),
        "{listing}"
    );

    wait_until("the timer ran the service", Duration::from_secs(30), || {
        lines_in(&marker) == 1
    });
    // OnActiveSec= is spent: the timer stays active (elapsed) and records its trigger.
    wait_until("the timer elapsed", Duration::from_secs(10), || {
        prop(&s, "backup.timer", "SubState") == "elapsed"
    });
    assert_eq!(prop(&s, "backup.timer", "ActiveState"), "active");
    assert!(prop(&s, "backup.timer", "LastTriggerUSec").ends_with(" UTC"));
    assert_eq!(prop(&s, "backup.service", "Result"), "success");
    let out = s.run(&["list-timers"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("- ") && l.contains(" UTC ") && l.contains("backup.timer")),
        "{}",
        text(&out)
    );
    assert!(s.run(&["stop", "backup.timer"]).status.success());
    assert_eq!(s.run(&["is-active", "backup.timer"]).status.code(), Some(3));

    // OnUnitActiveSec= repeats from each trigger until the timer is stopped.
    s.unit(
        "backup.timer",
        "[Timer]\nOnActiveSec=1s\nOnUnitActiveSec=1s\nUnit=backup.service\n",
    );
    assert!(s.run(&["start", "backup.timer"]).status.success());
    wait_until("two more runs", Duration::from_secs(30), || {
        lines_in(&marker) >= 3
    });
    assert_eq!(prop(&s, "backup.timer", "SubState"), "waiting");
    assert!(s.run(&["stop", "backup.timer"]).status.success());
    assert_eq!(prop(&s, "backup.timer", "ActiveState"), "inactive");
}

#[test]
fn persistent_calendar_timer_catches_up_a_missed_elapse() {
    let s = Shim::new();
    let marker = s.root.join("ran");
    s.unit(
        "daily.service",
        &format!(
            "[Service]\nType=oneshot\nExecStart=/bin/touch {}\n",
            marker.display()
        ),
    );
    s.unit(
        "daily.timer",
        "[Timer]\nOnCalendar=*-*-* 02:00:00 UTC\nPersistent=true\nRandomizedDelaySec=0\n",
    );
    // Last triggered two days ago: at least one 02:00 was missed, so it fires at once.
    let stamps = s.root.join("var/lib/hakube/systemd-timers");
    std::fs::create_dir_all(&stamps).expect("stamp dir");
    let stamp = std::fs::File::create(stamps.join("stamp-daily.timer")).expect("stamp");
    stamp
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 86_400))
        .expect("stamp time");
    assert!(s.run(&["start", "daily.timer"]).status.success());
    wait_until("the missed run", Duration::from_secs(30), || {
        marker.exists()
    });
    // Then it waits for the next 02:00 UTC, less than a day ahead.
    wait_until("the next elapse", Duration::from_secs(10), || {
        prop(&s, "daily.timer", "NextElapseUSecRealtime").ends_with(" 02:00:00 UTC")
    });
    let out = s.run(&["status", "daily.timer"]);
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{status}");
    assert!(status.contains("Active: active (waiting)"), "{status}");
    assert!(status.contains("Triggers: ● daily.service"), "{status}");
    assert!(s.run(&["stop", "daily.timer"]).status.success());
}

#[test]
fn bad_timers_are_refused_with_the_reason() {
    let s = Shim::new();
    s.unit(
        "job.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    );
    s.unit("job.timer", "[Timer]\nOnCalendar=every full moon\n");
    let out = s.run(&["start", "job.timer"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out);
    assert!(
        err.contains("OnCalendar=every full moon") && err.contains("is not a calendar expression"),
        "{err}"
    );
    assert_eq!(s.run(&["is-active", "job.timer"]).status.code(), Some(3));

    s.unit("job.timer", "[Timer]\nOnActiveSec=1h\nWakeSystem=yes\n");
    let err = text(&s.run(&["start", "job.timer"]));
    assert!(
        err.contains("WakeSystem= is not supported in [Timer]"),
        "{err}"
    );

    s.unit(
        "job.timer",
        "[Unit]\nDescription=no time\n[Timer]\nPersistent=yes\n",
    );
    let err = text(&s.run(&["start", "job.timer"]));
    assert!(err.contains("lacks a time to elapse at"), "{err}");

    s.unit("orphan.timer", "[Timer]\nOnActiveSec=1h\n");
    let out = s.run(&["start", "orphan.timer"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("orphan.service, is not found"));
}

/// ExecStopPost= runs however the main process ended (kill -9 here, then a stop), and
/// ExecStartPost= once it runs again: what keepalived's HAProxy track file relies on.
#[test]
fn stop_post_runs_after_a_kill_and_a_stop_and_start_post_after_each_start() {
    let s = Shim::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("exited");
    let f = f.display();
    s.unit(
        "svc.service",
        &format!(
            "[Service]\nExecStart=/bin/sleep 1000\nExecStartPost=/bin/sh -c 'echo 0 > {f}'\nExecStopPost=/bin/sh -c 'echo 1 > {f}'\nRestart=always\nRestartSec=300ms\n"
        ),
    );
    let read = || std::fs::read_to_string(dir.path().join("exited")).unwrap_or_default();
    assert!(s.run(&["start", "svc"]).status.success());
    wait_until("ExecStartPost wrote 0", Duration::from_secs(5), || {
        read().trim() == "0"
    });
    let first = s.main_pid("svc");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    wait_until(
        "ExecStopPost wrote 1 after kill -9",
        Duration::from_secs(5),
        || read().trim() == "1",
    );
    wait_until(
        "restarted, ExecStartPost wrote 0",
        Duration::from_secs(5),
        || {
            let p = s.main_pid("svc");
            p != 0 && p != first && read().trim() == "0"
        },
    );
    assert!(s.run(&["stop", "svc"]).status.success());
    assert_eq!(read().trim(), "1", "written before stop returned");
}
