//! What can go wrong when hakube runs something on a host, as values callers match on.
//!
//! The only place that reads tool output to classify a failure is here ([`ConnectCause::classify`]
//! for ssh's own messages, [`sudo_refusal`] for sudo's); everything else matches variants.

use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// A failure to run something on a host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command ran and exited non-zero.
    #[error("{host}: `{command}` exited with {code}{}", stderr_block(.stderr))]
    Exit {
        host: String,
        command: String,
        code: i32,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The command did not finish in time.
    #[error("{host}: `{command}` timed out after {}s", .after.as_secs_f64())]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },
    /// No SSH connection could be made.
    #[error("{}", .0)]
    Connect(Box<ConnectError>),
    /// `sudo -n` would not run the command (a password is required, or the user may not).
    #[error(
        "{host}: sudo refused to run `{command}` as root: {detail}\n  help: give {user} passwordless sudo (NOPASSWD) for sh, or connect as root (spec.ssh.user)"
    )]
    SudoRefused {
        host: String,
        user: String,
        command: String,
        detail: String,
    },
    /// The connection broke, or the session could not be opened on it; the command may not
    /// have run. A new connection may help.
    #[error("{host}: the SSH session failed while running `{command}`: {detail}")]
    Session {
        host: String,
        command: String,
        detail: String,
    },
    /// The data fed to the command's stdin could not be read or written.
    #[error("{host}: feeding the stdin of `{command}` failed: {source}")]
    Input {
        host: String,
        command: String,
        source: std::io::Error,
    },
    /// The command could not be started on this machine (the local transport).
    #[error("{host}: cannot start `{command}`: {source}")]
    Spawn {
        host: String,
        command: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Name the command in the error with its display text instead of the script.
    pub fn for_command(mut self, display: &str) -> Error {
        match &mut self {
            Error::Exit { command, .. }
            | Error::Timeout { command, .. }
            | Error::SudoRefused { command, .. }
            | Error::Session { command, .. }
            | Error::Spawn { command, .. }
            | Error::Input { command, .. } => *command = display.to_string(),
            Error::Connect(_) => {}
        }
        self
    }

    /// The exit code, when the command ran and failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::Exit { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection itself failed (the command may not have run), so that a new
    /// connection is worth a try.
    pub fn is_session(&self) -> bool {
        matches!(self, Error::Session { .. })
    }

    /// Why the host could not be reached, when that is the failure.
    pub fn connect_cause(&self) -> Option<ConnectCause> {
        match self {
            Error::Connect(c) => Some(c.cause),
            _ => None,
        }
    }

    /// Find a transport error inside an `anyhow` chain.
    pub fn find(e: &anyhow::Error) -> Option<&Error> {
        e.chain().find_map(|x| x.downcast_ref::<Error>())
    }
}

/// The SSH connection could not be made: the cause, what ssh said, and how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectError {
    pub host: String,
    /// What ssh was asked to connect to (the address, or the ssh_config alias).
    pub dest: String,
    pub cause: ConnectCause,
    /// ssh's own words, trimmed.
    pub detail: String,
    /// Where the host key is checked, and under which name, for the host-key fix.
    pub known_hosts: KnownHostsEntry,
    pub port: u16,
    /// Which hop failed, when the host is behind `spec.ssh.proxyJump`.
    #[serde(flatten)]
    pub hop: super::jump::Failed,
}

/// The known_hosts file and the name a host's key is recorded under.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KnownHostsEntry {
    pub file: Option<PathBuf>,
    /// `host` for port 22, `[host]:port` otherwise (or the HostKeyAlias).
    pub name: String,
    /// The address ssh connects to, after ssh_config (for ssh-keyscan).
    pub address: String,
}

impl KnownHostsEntry {
    fn address(&self) -> &str {
        if self.address.is_empty() {
            &self.name
        } else {
            &self.address
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::jump::Failed;
        let hop = match &self.hop {
            Failed::Target => String::new(),
            Failed::Jump(j) => format!("the jump host {j} (spec.ssh.proxyJump) failed: "),
            Failed::JumpToTarget(j) => format!("the jump host {j} cannot reach it: "),
        };
        write!(
            f,
            "{}: cannot connect over SSH to {}: {hop}{} ({})\n  help: {}",
            self.host,
            self.dest,
            self.cause.summary(),
            self.detail,
            self.help()
        )
    }
}

impl ConnectError {
    /// What the operator should do, for this cause.
    pub fn help(&self) -> String {
        match &self.hop {
            super::jump::Failed::Target => self.cause_help(),
            super::jump::Failed::Jump(j) => format!(
                "logging into the jump host {j} failed, not {}: hakube logs into it with spec.ssh's user, \
                 identityFile and knownHostsFile (a user@ in proxyJump wins). {}",
                self.host,
                self.cause_help()
            ),
            super::jump::Failed::JumpToTarget(j) => format!(
                "{j} let hakube in, but its connection on to {} port {} failed: check that sshd runs on {} \
                 and that the network between {j} and it lets SSH through",
                self.dest, self.port, self.host
            ),
        }
    }

    /// The fix for the cause, on the hop that failed.
    fn cause_help(&self) -> String {
        let kh = self
            .known_hosts
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts".into());
        let name = &self.known_hosts.name;
        let port = self.port;
        match self.cause {
            ConnectCause::HostKeyChanged => format!(
                "the host key is not the one recorded in {kh}. Unless the host was reinstalled, someone may be \
                 intercepting the connection: do not go on. If it was reinstalled, read the new key's fingerprint \
                 on its console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), remove the stale entry with \
                 `ssh-keygen -R '{name}' -f {kh}`, then fetch the key (ssh-keyscan -p {port} {addr} > new.key), \
                 compare `ssh-keygen -lf new.key` with that fingerprint and append new.key to {kh} \
                 (spec.ssh.knownHostsFile chooses the file). hakube never accepts a key on its own",
                addr = self.known_hosts.address()
            ),
            ConnectCause::HostKeyUnknown => format!(
                "{kh} has no key for '{name}', and keys are checked strictly. Read the host's key fingerprint on \
                 its console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), fetch the key \
                 (ssh-keyscan -p {port} {addr} > new.key), compare `ssh-keygen -lf new.key` with it and append \
                 new.key to {kh}, or point spec.ssh.knownHostsFile at a file that holds the verified keys",
                addr = self.known_hosts.address()
            ),
            ConnectCause::AuthFailed => "authentication failed: check spec.ssh.user and identityFile, or that your agent holds the key and the host's authorized_keys has it".into(),
            ConnectCause::Refused => format!(
                "the host answers but nothing accepts connections on port {port}: is sshd running (check on the console), and is spec.ssh.port right?"
            ),
            ConnectCause::NoRoute => "the host is unreachable (no route): check its address, that it is up, and the network path to it".into(),
            ConnectCause::TimedOut => "the host is unreachable: no answer before the connect timeout (host down, partitioned, or a firewall drops SSH)".into(),
            ConnectCause::UnknownName => "the name does not resolve: check the host's address, or its entry in spec.ssh.configFile".into(),
            ConnectCause::Other => format!(
                "check that `ssh -p {port} {}` works by hand with the same settings",
                self.dest
            ),
        }
    }
}

/// Why an SSH connection failed, from ssh's own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectCause {
    /// The host presented a different key than the recorded one.
    HostKeyChanged,
    /// No key is recorded for the host, and checking is strict.
    HostKeyUnknown,
    AuthFailed,
    /// Something answered, but refused the TCP connection.
    Refused,
    /// No route to the host, or the network is unreachable.
    NoRoute,
    /// No answer within the connect timeout.
    TimedOut,
    UnknownName,
    Other,
}

impl ConnectCause {
    /// Classify ssh's stderr (or the master's log).
    pub fn classify(text: &str) -> ConnectCause {
        let low = text.to_lowercase();
        let has = |s: &str| low.contains(s);
        if has("remote host identification has changed")
            || (has("host key for") && has("has changed"))
            || (has("offending") && has("key in"))
        {
            ConnectCause::HostKeyChanged
        } else if has("host key verification failed") || (has("no ") && has("host key is known")) {
            ConnectCause::HostKeyUnknown
        } else if has("permission denied") || has("too many authentication failures") {
            ConnectCause::AuthFailed
        } else if has("connection refused") {
            ConnectCause::Refused
        } else if has("no route to host")
            || has("network is unreachable")
            || has("host is unreachable")
        {
            ConnectCause::NoRoute
        } else if has("timed out") || has("timeout") {
            ConnectCause::TimedOut
        } else if has("could not resolve hostname") || has("name or service not known") {
            ConnectCause::UnknownName
        } else {
            ConnectCause::Other
        }
    }

    /// A few words for tables and findings.
    pub fn summary(self) -> &'static str {
        match self {
            ConnectCause::HostKeyChanged => "host key CHANGED",
            ConnectCause::HostKeyUnknown => "host key unknown",
            ConnectCause::AuthFailed => "authentication failed",
            ConnectCause::Refused => "connection refused",
            ConnectCause::NoRoute => "unreachable (no route)",
            ConnectCause::TimedOut => "unreachable (connection timed out)",
            ConnectCause::UnknownName => "name does not resolve",
            ConnectCause::Other => "ssh failed",
        }
    }

    /// Whether the cause says the host (or the path to it) is down, rather than that hakube
    /// was not let in.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            ConnectCause::Refused | ConnectCause::NoRoute | ConnectCause::TimedOut
        )
    }

    /// Whether the host's key is the problem.
    pub fn is_host_key(self) -> bool {
        matches!(
            self,
            ConnectCause::HostKeyChanged | ConnectCause::HostKeyUnknown
        )
    }
}

/// sudo's refusal, from the stderr of `sudo -n` when it exits 1 without running anything.
pub fn sudo_refusal(code: i32, stderr: &str) -> Option<String> {
    if code != 1 {
        return None;
    }
    let line = stderr.lines().find(|l| l.starts_with("sudo: "))?;
    let low = line.to_lowercase();
    let refused = low.contains("a password is required")
        || low.contains("a terminal is required")
        || low.contains("not in the sudoers file")
        || low.contains("is not allowed to execute")
        || low.contains("may not run sudo");
    refused.then(|| line.trim_start_matches("sudo: ").trim().to_string())
}

/// Every host whose sudo refused, grouped by user and by sudo's words, one line per group, and
/// the fix: `(user, detail, host)` each. `None` when there are none.
pub fn sudo_groups(mut refused: Vec<(String, String, String)>) -> Option<(Vec<String>, String)> {
    if refused.is_empty() {
        return None;
    }
    refused.sort();
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    for (user, detail, host) in refused {
        match groups.last_mut() {
            Some((u, d, hs)) if *u == user && *d == detail => hs.push(host),
            _ => groups.push((user, detail, vec![host])),
        }
    }
    let lines = groups
        .iter()
        .map(|(u, d, hs)| {
            format!(
                "spec.ssh.user {u} needs passwordless sudo on {} (`sudo -n sh -c true` failed: {d})",
                hs.join(", ")
            )
        })
        .collect();
    let mut users: Vec<&str> = groups.iter().map(|(u, _, _)| u.as_str()).collect();
    users.dedup();
    let first = users[0];
    let help = format!(
        "hakube runs every command as root through `sudo -n sh -c`: give {} a NOPASSWD rule on those hosts, for example `echo '{first} ALL=(ALL:ALL) NOPASSWD: ALL' | sudo tee /etc/sudoers.d/{first}; sudo chmod 0440 /etc/sudoers.d/{first}` (check it with `sudo visudo -c`), or connect as root (spec.ssh.user: root)",
        users.join(", ")
    );
    Some((lines, help))
}

/// [`sudo_groups`] as one error message; `outcome` ends the last problem line ("nothing was
/// changed").
pub fn sudo_refusals(refused: Vec<(String, String, String)>, outcome: &str) -> Option<String> {
    let (lines, help) = sudo_groups(refused)?;
    Some(format!("{}; {outcome}\n  help: {help}", lines.join("\n")))
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stderr_block(s: &str) -> String {
    if s.trim().is_empty() {
        return String::new();
    }
    let body = s
        .lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!("\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What OpenSSH 9 prints, captured from the lab.
    const CHANGED: &str = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
        @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
        @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
        IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
        Offending ED25519 key in /var/lib/hakube-lab/x/ssh/known_hosts:7\n\
        Host key for 10.91.0.202 has changed and you have requested strict checking.\n\
        Host key verification failed.";

    #[test]
    fn ssh_messages_are_classified() {
        let cases = [
            (CHANGED, ConnectCause::HostKeyChanged),
            (
                "No ED25519 host key is known for 10.0.0.5 and you have requested strict checking.\nHost key verification failed.",
                ConnectCause::HostKeyUnknown,
            ),
            (
                "root@10.0.0.5: Permission denied (publickey).",
                ConnectCause::AuthFailed,
            ),
            (
                "ssh: connect to host 10.0.0.5 port 22: Connection refused",
                ConnectCause::Refused,
            ),
            (
                "ssh: connect to host 10.0.0.5 port 22: No route to host",
                ConnectCause::NoRoute,
            ),
            (
                "ssh: connect to host 10.0.0.5 port 22: Network is unreachable",
                ConnectCause::NoRoute,
            ),
            (
                "ssh: connect to host 10.0.0.5 port 22: Connection timed out",
                ConnectCause::TimedOut,
            ),
            (
                "ssh: Could not resolve hostname nowhere: Name or service not known",
                ConnectCause::UnknownName,
            ),
            (
                "kex_exchange_identification: read: Connection reset by peer",
                ConnectCause::Other,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(ConnectCause::classify(text), want, "{text}");
        }
    }

    fn connect_error(cause: ConnectCause) -> ConnectError {
        ConnectError {
            host: "worker2".into(),
            dest: "10.91.0.202".into(),
            cause,
            detail: "Host key verification failed.".into(),
            known_hosts: KnownHostsEntry {
                file: Some("/lab/ssh/known_hosts".into()),
                name: "10.91.0.202".into(),
                address: "10.91.0.202".into(),
            },
            port: 22,
            hop: crate::transport::jump::Failed::Target,
        }
    }

    #[test]
    fn a_changed_key_gets_a_fix_that_works_under_strict_checking() {
        let e = Error::Connect(Box::new(connect_error(ConnectCause::HostKeyChanged)));
        let t = e.to_string();
        assert!(t.starts_with("worker2: cannot connect over SSH to 10.91.0.202: host key CHANGED"));
        assert!(
            t.contains("ssh-keygen -R '10.91.0.202' -f /lab/ssh/known_hosts"),
            "{t}"
        );
        assert!(t.contains("fingerprint"), "{t}");
        assert!(t.contains("ssh-keyscan -p 22 10.91.0.202"), "{t}");
        assert!(!t.contains("connect once"), "{t}");
        assert_eq!(e.connect_cause(), Some(ConnectCause::HostKeyChanged));
    }

    #[test]
    fn sudo_refusals_are_one_message_for_all_hosts() {
        assert_eq!(sudo_refusals(vec![], "x"), None);
        let r = |h: &str, d: &str| ("ops".to_string(), d.to_string(), h.to_string());
        let msg = sudo_refusals(
            vec![
                r("master1", "a password is required"),
                r("lb2", "a password is required"),
                r("lb1", "a password is required"),
                r("worker1", "ops is not in the sudoers file"),
            ],
            "nothing was changed",
        )
        .expect("refused");
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(
            lines[0],
            "spec.ssh.user ops needs passwordless sudo on lb1, lb2, master1 (`sudo -n sh -c true` failed: a password is required)"
        );
        assert!(
            lines[1].contains("on worker1 (")
                && lines[1].ends_with("sudoers file); nothing was changed")
        );
        assert!(
            lines[2].starts_with("  help: ")
                && lines[2].contains("ops ALL=(ALL:ALL) NOPASSWD: ALL")
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn sudo_refusals_are_told_from_failing_commands() {
        assert!(sudo_refusal(1, "sudo: a password is required\n").is_some());
        assert!(
            sudo_refusal(
                1,
                "sudo: a terminal is required to read the password; either use the -S option"
            )
            .is_some()
        );
        assert!(sudo_refusal(1, "grep: no match\n").is_none());
        assert!(sudo_refusal(2, "sudo: a password is required\n").is_none());
    }

    #[test]
    fn exit_errors_keep_the_command_and_stderr_tail() {
        let e = Error::Exit {
            host: "lb1".into(),
            command: "sh -c 'long script'".into(),
            code: 3,
            stderr: "boom".into(),
        }
        .for_command("haproxy -c");
        assert_eq!(e.exit_code(), Some(3));
        assert_eq!(e.to_string(), "lb1: `haproxy -c` exited with 3\n    | boom");
        let any: anyhow::Error = anyhow::Error::new(e).context("phase loadbalancers");
        assert_eq!(Error::find(&any).and_then(Error::exit_code), Some(3));
    }
}
