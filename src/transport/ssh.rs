//! SSH through the system `ssh` (the `openssh` crate, one multiplexed master connection per
//! host), so that `~/.ssh/config`, ProxyJump, the agent and known_hosts work as the user expects.
//! Host keys are always checked strictly.
//!
//! Nothing outlives hakube for long: each master exits [`PERSIST`] after its last client, and
//! hakube holds one idle client connection to it (the keeper) for as long as the session is
//! open. When hakube dies, even by `kill -9`, the kernel closes the keeper and the master goes
//! away on its own. Each process keeps its sockets in a folder of its own; the next run removes
//! the folders of processes that are gone.

use super::error::{ConnectCause, ConnectError, Error, KnownHostsEntry, Result, sudo_refusal};
use super::{BoxFut, Output, Transport};
use crate::spec::Host;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// How long a master stays up after its last client (the keeper included) is gone.
pub const PERSIST: Duration = Duration::from_secs(5);

pub struct Ssh {
    name: String,
    user: String,
    session: Option<Session>,
    /// An idle client connection to the master's socket: while it is open, ControlPersist's
    /// idle timer never starts.
    _keeper: Option<UnixStream>,
    sudo: bool,
}

use super::jump::expand;

/// The folder every hakube process of this user keeps its control sockets under: short, since
/// socket paths must stay under 108 bytes.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join(format!("hakube-ssh-{}", nix::unistd::Uid::effective()))
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which tells
/// a live process from a later one that reuses its PID.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process's own socket folder name: `PID-STARTTIME`.
fn own_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid).unwrap_or(0))
    })
}

/// Whether a socket folder named `PID-STARTTIME` belongs to a process that is gone.
pub fn owner_gone(name: &str) -> Option<bool> {
    let (pid, start) = name.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    let start: u64 = start.parse().ok()?;
    Some(start_time(pid) != Some(start))
}

/// Remove what earlier runs left: the socket folders of processes that are gone (their masters
/// exit by themselves within [`PERSIST`]), and sockets of older hakube versions whose master
/// is dead. Returns the folders removed.
pub fn sweep_stale(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return vec![];
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let stale = match owner_gone(&name) {
            Some(gone) => gone,
            // The layout before per-process folders: one folder per master.
            None if name.starts_with(".ssh-connection") => legacy_stale(&path),
            None => false,
        };
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// A master folder from an older version: stale when its socket refuses connections (the
/// master is dead), or when it never got a socket and is older than any connect can take.
fn legacy_stale(dir: &Path) -> bool {
    let sock = dir.join("master");
    if sock.exists() {
        return matches!(UnixStream::connect(&sock), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
    }
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > Duration::from_secs(600))
}

/// Sessions of this process being set up or open; the process's folder goes with the last.
static LIVE: Mutex<usize> = Mutex::new(0);
static SWEPT: std::sync::Once = std::sync::Once::new();

/// Count a session in and return this process's socket folder, created private.
fn enter() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let base = base_dir();
    SWEPT.call_once(|| {
        sweep_stale(&base);
    });
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(&base)?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
    let own = base.join(own_name());
    std::fs::create_dir_all(&own)?;
    *live += 1;
    Ok(own)
}

/// Count a session out; the last one removes the process's (by then empty) folder.
fn leave() {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    *live = live.saturating_sub(1);
    if *live == 0 {
        // Empty but for the generated jump configs.
        let _ = std::fs::remove_dir_all(base_dir().join(own_name()));
    }
}

impl Ssh {
    pub async fn connect(h: &Host, base_dir: &Path, timeout: Duration) -> Result<Ssh> {
        let s = &h.ssh;
        // With an ssh_config, the host's name is the alias it defines; otherwise its address.
        let dest = if s.config_file.is_some() {
            h.name.clone()
        } else {
            h.address.to_string()
        };
        let dir = enter().map_err(|e| {
            Error::Connect(Box::new(ConnectError {
                host: h.name.clone(),
                dest: dest.clone(),
                cause: ConnectCause::Other,
                detail: format!("cannot create the control socket folder: {e}"),
                known_hosts: KnownHostsEntry::default(),
                port: s.port,
                hop: super::jump::Failed::Target,
            }))
        })?;
        let r = Self::open(h, base_dir, timeout, &dest, &dir).await;
        if r.is_err() {
            leave();
        }
        r
    }

    async fn open(
        h: &Host,
        base_dir: &Path,
        timeout: Duration,
        dest: &str,
        dir: &Path,
    ) -> Result<Ssh> {
        let s = &h.ssh;
        let mut b = SessionBuilder::default();
        let persist = std::num::NonZeroUsize::new(PERSIST.as_secs() as usize)
            .map(ControlPersist::IdleFor)
            .unwrap_or(ControlPersist::ClosedAfterInitialConnection);
        b.known_hosts_check(KnownHosts::Strict)
            .server_alive_interval(Duration::from_secs(5))
            .control_directory(dir)
            .control_persist(persist)
            .user(s.user.clone())
            .port(s.port);
        if let Some(k) = &s.identity_file {
            b.keyfile(expand(k, base_dir));
        }
        // Behind a jump host, a generated config (which includes the user's) gives the jump
        // hop the spec's settings (see `jump`). The jump host itself (a cluster host can be the bastion) is reached directly: ssh
        // refuses a jump through the destination ("jumphost loop").
        let is_jump = s.proxy_jump.as_deref().is_some_and(|j| {
            super::jump::hops(j).first().is_some_and(|f| {
                f.host == h.name || f.host == dest || f.host == h.address.to_string()
            })
        });
        let s = &if is_jump {
            crate::spec::SshSettings {
                proxy_jump: None,
                ..s.clone()
            }
        } else {
            s.clone()
        };
        let jump_path = super::jump::path(s, base_dir, timeout, dir);
        let jump_config = match super::jump::config(s, base_dir, timeout, &jump_path, dir) {
            Some(text) => {
                super::jump::write(&jump_path, &text).map_err(|e| {
                    Error::Connect(Box::new(ConnectError {
                        host: h.name.clone(),
                        dest: dest.to_string(),
                        cause: ConnectCause::Other,
                        detail: format!(
                            "cannot write the jump host's ssh_config {}: {e}",
                            jump_path.display()
                        ),
                        known_hosts: KnownHostsEntry::default(),
                        port: s.port,
                        hop: super::jump::Failed::Target,
                    }))
                })?;
                Some(jump_path)
            }
            None => s.config_file.as_ref().map(|c| expand(c, base_dir)),
        };
        if let Some(c) = &jump_config {
            b.config_file(c);
        }
        if let Some(k) = &s.known_hosts_file {
            b.user_known_hosts_file(expand(k, base_dir));
        }
        let hops = s
            .proxy_jump
            .as_deref()
            .map(super::jump::hops)
            .unwrap_or_default();
        let jump_log = super::jump::log_file(dir, dest);
        let _ = std::fs::remove_file(&jump_log);
        // Each hop logs in within `timeout` (the jump hop's own ConnectTimeout); the target's
        // banner comes after all of them.
        b.connect_timeout(timeout * (hops.len() as u32 + 1));
        // The master's own log says why it failed: no second `ssh` run to find out.
        let session = match b.connect_mux(dest).await {
            Ok(s) => s,
            Err(e) => {
                // The jump hop's own words are in its log, the master's only say it closed.
                let master = error_text(&e);
                let log = std::fs::read_to_string(&jump_log).unwrap_or_default();
                // Only the first hop is told apart: later hops' words reach us the same way.
                let first = hops.first();
                let hop =
                    super::jump::Failed::classify(&log, &master, first.map(|j| j.host.as_str()));
                let text = format!("{log}\n{master}");
                let text = super::jump::Failed::strip(&text);
                let cause = ConnectCause::classify(&text);
                let (key_dest, port, config) = match (&hop, first) {
                    (super::jump::Failed::Jump(_), Some(j)) => (
                        j.host.as_str(),
                        j.port.unwrap_or(22),
                        jump_config.as_deref(),
                    ),
                    _ => (dest, s.port, jump_config.as_deref()),
                };
                let known_hosts = if cause.is_host_key() {
                    known_hosts_entry(h, key_dest, port, config, base_dir).await
                } else {
                    KnownHostsEntry::default()
                };
                return Err(Error::Connect(Box::new(ConnectError {
                    host: h.name.clone(),
                    dest: dest.to_string(),
                    cause,
                    detail: detail(&text),
                    known_hosts,
                    port,
                    hop,
                })));
            }
        };
        let keeper = UnixStream::connect(session.control_socket()).map_err(|e| Error::Session {
            host: h.name.clone(),
            command: "ssh (control socket)".into(),
            detail: format!("the master connection went away at once: {e}"),
        })?;
        Ok(Ssh {
            name: h.name.clone(),
            user: s.user.clone(),
            session: Some(session),
            _keeper: Some(keeper),
            sudo: s.user != "root",
        })
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        // The session first: it asks the master to exit and removes its folder.
        drop(self.session.take());
        drop(self._keeper.take());
        leave();
    }
}

/// What an `openssh` error says: its innermost source holds the master's log; the outer
/// layers only say that connecting failed.
fn error_text(e: &openssh::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text = s.to_string();
        src = s.source();
    }
    text
}

/// ssh's last meaningful lines, without the banner of a changed-key warning.
fn detail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@'))
        .collect();
    lines[lines.len().saturating_sub(2)..].join(" ")
}

/// The known_hosts file and entry name ssh checks for this host, as `ssh -G` resolves them
/// (ssh_config, port, HostKeyAlias). Local only, and only on the host-key error path.
async fn known_hosts_entry(
    h: &Host,
    dest: &str,
    port: u16,
    config: Option<&Path>,
    base_dir: &Path,
) -> KnownHostsEntry {
    let s = &h.ssh;
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-G").args(["-p", &port.to_string()]);
    if let Some(c) = config {
        cmd.arg("-F").arg(c);
    }
    if let Some(k) = &s.known_hosts_file {
        cmd.arg("-o").arg(format!(
            "UserKnownHostsFile={}",
            expand(k, base_dir).display()
        ));
    }
    cmd.arg(dest).stdin(std::process::Stdio::null());
    let text = match tokio::time::timeout(Duration::from_secs(5), cmd.output()).await {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).to_string(),
        _ => String::new(),
    };
    parse_ssh_g(&text, dest, port)
}

/// Read `ssh -G` output: the first user known_hosts file, and the name the key is kept under.
pub fn parse_ssh_g(text: &str, dest: &str, port: u16) -> KnownHostsEntry {
    let get = |k: &str| {
        text.lines().find_map(|l| {
            let (key, v) = l.split_once(' ')?;
            (key == k).then(|| v.trim().to_string())
        })
    };
    let address = get("hostname").unwrap_or_else(|| dest.to_string());
    let host = get("hostkeyalias").unwrap_or_else(|| address.clone());
    let port = get("port").and_then(|p| p.parse().ok()).unwrap_or(port);
    let file = get("userknownhostsfile")
        .and_then(|v| v.split_whitespace().next().map(String::from))
        .map(|f| match f.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(rest))
                .unwrap_or_else(|| PathBuf::from(&f)),
            None => PathBuf::from(f),
        });
    KnownHostsEntry {
        file,
        address,
        name: if port == 22 {
            host
        } else {
            format!("[{host}]:{port}")
        },
    }
}

impl Ssh {
    /// A local forward on this host's master: a free port on 127.0.0.1 that reaches `target`
    /// as this host sees it (`ssh -O forward -L`).
    pub async fn forward(&self, target: SocketAddr) -> Result<SocketAddr> {
        let session = self.session("ssh -O forward")?;
        let mut last = String::new();
        // The port is free when picked; another process may take it before the master binds
        // it, so a few tries.
        for _ in 0..5 {
            let local = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::Session {
                    host: self.name.clone(),
                    command: format!("ssh -O forward -L 127.0.0.1:0:{target}"),
                    detail: format!("no free local port: {e}"),
                })?;
            match session
                .request_port_forward(openssh::ForwardType::Local, local, target)
                .await
            {
                Ok(()) => return Ok(local),
                Err(e) => last = error_text(&e),
            }
        }
        Err(Error::Session {
            host: self.name.clone(),
            command: format!("ssh -O forward -L 127.0.0.1:PORT:{target}"),
            detail: last,
        })
    }

    /// Whether the master connection is still up.
    pub async fn alive(&self) -> bool {
        match &self.session {
            Some(s) => s.check().await.is_ok(),
            None => false,
        }
    }
}

impl Ssh {
    fn session(&self, script: &str) -> Result<&Session> {
        self.session.as_ref().ok_or_else(|| Error::Session {
            host: self.name.clone(),
            command: first_line(script),
            detail: "the session is closed".into(),
        })
    }
}

fn first_line(script: &str) -> String {
    let l = script.lines().next().unwrap_or("").trim();
    if l.chars().count() > 60 {
        format!("{}…", l.chars().take(60).collect::<String>())
    } else {
        l.to_string()
    }
}

impl Transport for Ssh {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec<'a>(&'a self, script: &'a str, stdin: Option<&'a [u8]>) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move {
            let broken = |e: &dyn std::fmt::Display| Error::Session {
                host: self.name.clone(),
                command: first_line(script),
                detail: e.to_string(),
            };
            let mut cmd = self.command(script)?;
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd.spawn().await.map_err(|e| broken(&e))?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin().take()) {
                pipe.write_all(data).await.map_err(|e| broken(&e))?;
                pipe.shutdown().await.map_err(|e| broken(&e))?;
                drop(pipe);
            }
            let out = child.wait_with_output().await.map_err(|e| broken(&e))?;
            let out = Output {
                status: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            };
            if self.sudo
                && let Some(detail) = sudo_refusal(out.status, &out.stderr)
            {
                return Err(Error::SudoRefused {
                    host: self.name.clone(),
                    user: self.user.clone(),
                    command: first_line(script),
                    detail,
                });
            }
            Ok(out)
        })
    }

    fn exec_stream<'a>(
        &'a self,
        script: &'a str,
        input: super::Input<'a>,
    ) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move {
            let broken = |e: &dyn std::fmt::Display| Error::Session {
                host: self.name.clone(),
                command: first_line(script),
                detail: e.to_string(),
            };
            let mut cmd = self.command(script)?;
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().await.map_err(|e| broken(&e))?;
            let pipe = child
                .stdin()
                .take()
                .ok_or_else(|| broken(&"ssh gave no stdin pipe"))?;
            let wait = async {
                child
                    .wait_with_output()
                    .await
                    .map(Output::from)
                    .map_err(|e| broken(&e))
            };
            super::feed_and_wait(&self.name, script, input, pipe, wait).await
        })
    }
}

impl Ssh {
    /// `sh -c script` as root (through `sudo -n` for other users).
    fn command(&self, script: &str) -> Result<openssh::OwningCommand<&Session>> {
        let session = self.session(script)?;
        Ok(if self.sudo {
            let mut c = session.command("sudo");
            c.args(["-n", "sh", "-c", script]);
            c
        } else {
            let mut c = session.command("sh");
            c.args(["-c", script]);
            c
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_g_gives_the_known_hosts_entry() {
        let g = "user root\nhostname 10.1.1.12\nport 22\nuserknownhostsfile /lab/ssh/known_hosts /lab/ssh/known_hosts2\n";
        let e = parse_ssh_g(g, "lb2", 22);
        assert_eq!(e.name, "10.1.1.12");
        assert_eq!(e.file, Some(PathBuf::from("/lab/ssh/known_hosts")));
        let e = parse_ssh_g(
            "hostname 10.1.1.12\nport 2222\nhostkeyalias lb2-key\n",
            "lb2",
            22,
        );
        assert_eq!(e.name, "[lb2-key]:2222");
        assert_eq!(parse_ssh_g("", "10.0.0.1", 22).name, "10.0.0.1");
    }

    #[test]
    fn the_changed_key_banner_is_left_out_of_the_detail() {
        let log = "@@@@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n@@@@@@@@@@\nOffending ED25519 key in /kh:7\nHost key for 10.1.1.12 has changed and you have requested strict checking.\nHost key verification failed.\n";
        assert_eq!(
            detail(log),
            "Host key for 10.1.1.12 has changed and you have requested strict checking. Host key verification failed."
        );
    }

    #[test]
    fn folders_of_gone_processes_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().expect("tempdir");
        let me = base.path().join(own_name());
        // PID 1 exists, but not with start time u64::MAX - 1.
        let gone = base.path().join(format!("1-{}", u64::MAX - 1));
        let other = base.path().join("not-ours");
        for d in [&me, &gone, &other] {
            std::fs::create_dir_all(d.join(".ssh-connectionX")).expect("mkdir");
        }
        // An old-layout folder whose master socket is dead.
        let legacy = base.path().join(".ssh-connectionOLD");
        std::fs::create_dir_all(&legacy).expect("mkdir");
        drop(std::os::unix::net::UnixListener::bind(legacy.join("master")).expect("bind"));
        let removed = sweep_stale(base.path());
        assert!(
            removed.contains(&gone) && removed.contains(&legacy),
            "{removed:?}"
        );
        assert!(me.exists() && other.exists());
        assert!(!gone.exists() && !legacy.exists());
    }
}
