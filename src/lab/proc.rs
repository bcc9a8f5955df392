//! Processes by PID, never by name: a PID is only trusted together with its start time
//! (field 22 of /proc/PID/stat), so a recycled PID is never signalled by mistake.

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// A process identified by PID and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    pub start: u64,
}

impl ProcRef {
    /// The live process `pid`, if it exists and is not a zombie.
    pub fn of(pid: i32) -> Option<ProcRef> {
        start_time(pid).map(|start| ProcRef { pid, start })
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// Send `sig` if this is still the same process. Returns whether it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        self.alive() && kill(Pid::from_raw(self.pid), sig).is_ok()
    }

    /// Send `sig` to the process group this process leads (if it is still the same process).
    pub fn signal_group(&self, sig: Signal) -> bool {
        self.alive() && kill(Pid::from_raw(-self.pid), sig).is_ok()
    }
}

/// Start time of a live, non-zombie process.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Poll until none of `procs` is alive, or `timeout` passes. Returns true when all are gone.
pub fn wait_gone(procs: &[ProcRef], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if procs.iter().all(|p| !p.alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The inode of namespace `kind` ("net", "mnt", "uts") of a process.
pub fn ns_inode(pid: i32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix(&format!("{kind}:["))?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inode of a namespace file such as /run/netns/NAME.
pub fn ns_file_inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Every live process whose network namespace is one of `netns` or whose mount namespace is
/// one of `mntns`: that is how stray processes of a lab (ssh sessions, `lab exec` leftovers,
/// processes of a crashed `lab up`) are found without looking at names.
pub fn procs_in_namespaces(netns: &HashSet<u64>, mntns: &HashSet<u64>) -> Vec<ProcRef> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            ns_inode(pid, "net").is_some_and(|i| netns.contains(&i))
                || ns_inode(pid, "mnt").is_some_and(|i| mntns.contains(&i))
        })
        .filter_map(ProcRef::of)
        .collect()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The network, UTS and mount namespaces of a lab host, opened from its holder process.
pub struct HostNs {
    net: File,
    uts: File,
    mnt: File,
}

impl HostNs {
    /// Open the namespaces of `holder`, checking that it is still the recorded process.
    pub fn open(holder: &ProcRef) -> Result<HostNs> {
        let open = |kind: &str| {
            File::open(format!("/proc/{}/ns/{kind}", holder.pid)).with_context(|| {
                format!(
                    "cannot open the {kind} namespace of the host's holder process {}",
                    holder.pid
                )
            })
        };
        let ns = HostNs {
            net: open("net")?,
            uts: open("uts")?,
            mnt: open("mnt")?,
        };
        anyhow::ensure!(
            holder.alive(),
            "the host's holder process {} is gone\n  help: the lab is broken; run `hakube lab down` and `hakube lab up` again",
            holder.pid
        );
        Ok(ns)
    }

    /// Make `cmd` start inside the host: its network, UTS and mount namespaces. Like
    /// `nsenter -t PID -n -u -m`, but without an extra process. The working directory becomes
    /// the host's `/`.
    pub fn enter(self, cmd: &mut Command) {
        let HostNs { net, uts, mnt } = self;
        // SAFETY: only setns(2) calls on already-open descriptors run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                setns(&net, CloneFlags::CLONE_NEWNET)?;
                setns(&uts, CloneFlags::CLONE_NEWUTS)?;
                // Last: joining a mount namespace also moves the root and working directory.
                setns(&mnt, CloneFlags::CLONE_NEWNS)?;
                Ok(())
            });
        }
    }
}

/// Exit code of a finished child the way a shell reports it (128+N for signal N).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_fake_start_time_is_not() {
        let me = ProcRef::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let fake = ProcRef {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!fake.alive());
        assert!(!fake.signal(Signal::SIGTERM));
    }

    #[test]
    fn reaped_child_is_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let r = ProcRef::of(child.id() as i32);
        child.wait().unwrap();
        if let Some(r) = r {
            assert!(!r.alive());
        }
        assert!(ns_inode(std::process::id() as i32, "net").is_some());
    }
}
