//! The jump hop (`spec.ssh.proxyJump`) with the spec's own SSH settings.
//!
//! `ssh -J` logs into the jump host with nothing of the command line: not `-l`, `-i`,
//! `UserKnownHostsFile` nor `StrictHostKeyChecking`. It does pass `-F`, so hakube writes a
//! private ssh_config with a `Host` block for each jump host that carries the spec's user,
//! identity, known_hosts and strict checking, followed by the user's own `configFile` (or the
//! usual `~/.ssh/config` and `/etc/ssh/ssh_config`), and connects with `-F` that file.

use crate::spec::SshSettings;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One hop of `proxyJump` (`[ssh://][user@]host[:port]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Hop {
    pub fn parse(s: &str) -> Hop {
        let s = s.trim();
        let s = s.strip_prefix("ssh://").unwrap_or(s);
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) => (Some(u.to_string()), r),
            None => (None, s),
        };
        // `[v6]:port`, `[v6]`, `host:port`, or a bare IPv6 address (more than one colon).
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            match r.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
                None => (r, None),
            }
        } else if rest.matches(':').count() == 1 {
            let (h, p) = rest.split_once(':').unwrap_or((rest, ""));
            (h, p.parse().ok())
        } else {
            (rest, None)
        };
        Hop {
            user,
            host: host.to_string(),
            port,
        }
    }

    /// The hop as `-J` takes it.
    pub fn spec(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        match self.port {
            Some(p) => format!("{user}{host}:{p}"),
            None => format!("{user}{host}"),
        }
    }
}

/// The hops of `proxyJump`, first to last.
pub fn hops(proxy_jump: &str) -> Vec<Hop> {
    proxy_jump
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Hop::parse)
        .collect()
}

/// `~/` from $HOME; other relative paths from the spec's folder.
pub(super) fn expand(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(p)
}

/// ssh_config quoting: paths may hold spaces.
fn q(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// Single-quote for the `sh -c` that runs a ProxyCommand; `%` is ssh's token escape.
fn shq(s: &str) -> String {
    crate::transport::quote(s).replace('%', "%%")
}

/// The ssh_config for hosts behind `s.proxy_jump`, or `None` without a jump host. `file` is
/// where it will be written (the jump hop reads it too), `log` the folder for the jump hop's
/// own log (`jump-TARGET.log`), which is what says why it failed. ssh takes the first value it
/// reads for an option, so the spec's settings come before the included config; a `user@` in
/// `proxyJump` still wins (ssh passes it as `-l`).
pub fn config(
    s: &SshSettings,
    base_dir: &Path,
    connect_timeout: Duration,
    file: &Path,
    log: &Path,
) -> Option<String> {
    let hops = hops(s.proxy_jump.as_deref()?);
    let (last, before) = hops.split_last()?;
    let mut names: Vec<&str> = hops.iter().map(|h| h.host.as_str()).collect();
    names.sort();
    names.dedup();
    let mut out = String::from(
        "# Written by hakube: the jump hop (spec.ssh.proxyJump) logs in with spec.ssh's user,\n\
         # identity, known_hosts and strict host key checking. Regenerated on every connect.\n",
    );
    out.push_str(&format!("Host {}\n", names.join(" ")));
    out.push_str(&format!("    User {}\n", s.user));
    if let Some(k) = &s.identity_file {
        out.push_str(&format!("    IdentityFile {}\n", q(&expand(k, base_dir))));
    }
    if let Some(k) = &s.known_hosts_file {
        out.push_str(&format!(
            "    UserKnownHostsFile {}\n",
            q(&expand(k, base_dir))
        ));
    }
    out.push_str("    StrictHostKeyChecking yes\n    BatchMode yes\n");
    out.push_str(&format!(
        "    ConnectTimeout {}\n    ServerAliveInterval 5\n",
        connect_timeout.as_secs().max(1)
    ));
    // Everything else goes through the last hop (and the earlier ones as its own -J).
    let mut proxy = format!(
        "ssh -F {} -E {}",
        shq(&file.display().to_string()),
        shq(&log.join("jump-").display().to_string()).replace("jump-'", "jump-%n.log'")
    );
    if !before.is_empty() {
        let earlier: Vec<String> = before.iter().map(|h| h.spec()).collect();
        proxy.push_str(&format!(" -J {}", shq(&earlier.join(","))));
    }
    if let Some(u) = &last.user {
        proxy.push_str(&format!(" -l {}", shq(u)));
    }
    if let Some(p) = last.port {
        proxy.push_str(&format!(" -p {p}"));
    }
    proxy.push_str(&format!(" -W '[%h]:%p' {}", shq(&last.host)));
    let not: Vec<String> = names.iter().map(|n| format!("!{n}")).collect();
    out.push_str(&format!(
        "Host * {}\n    ProxyCommand {proxy}\n",
        not.join(" ")
    ));
    out.push_str("Host *\n");
    match &s.config_file {
        Some(c) => out.push_str(&format!("    Include {}\n", q(&expand(c, base_dir)))),
        // What ssh reads when no -F is given.
        None => out.push_str("    Include ~/.ssh/config\n    Include /etc/ssh/ssh_config\n"),
    }
    Some(out)
}

/// Where the config for these settings goes in `dir`: named by its content, so that sessions
/// with the same settings share one file and a changed spec gets a new one.
pub fn path(s: &SshSettings, base_dir: &Path, timeout: Duration, dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config(s, base_dir, timeout, Path::new("-"), dir).hash(&mut h);
    dir.join(format!("jump-{:016x}.conf", h.finish()))
}

/// Write `text` (0600) to `path` unless it is there.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// The jump hop's log for a connection to `dest`.
pub fn log_file(dir: &Path, dest: &str) -> PathBuf {
    dir.join(format!("jump-{dest}.log"))
}

/// Which hop of a jumped connection failed, from the master's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "hop", content = "jump")]
pub enum Failed {
    /// The target itself (or no jump host).
    Target,
    /// Logging into the jump host.
    Jump(String),
    /// The jump host is in, but its connection on to the target failed.
    JumpToTarget(String),
}

impl Failed {
    /// From the jump hop's own log (`jump_log`) and the master's (`master`). `ssh -W` on the
    /// jump host says "stdio forwarding failed" when it cannot reach the target; anything else
    /// the jump hop says is its own failure. When it said nothing, the outer ssh seeing its
    /// proxy close before the banner ("Connection closed by UNKNOWN port 65535") still means
    /// the jump hop ended; a timeout during the banner may be either hop, so it is the target's.
    pub fn classify(jump_log: &str, master: &str, jump: Option<&str>) -> Failed {
        let Some(j) = jump else {
            return Failed::Target;
        };
        let j = j.to_string();
        let both = format!("{jump_log}\n{master}");
        if both.contains("stdio forwarding failed") || both.contains("open failed: connect failed")
        {
            Failed::JumpToTarget(j)
        } else if !jump_log.trim().is_empty() {
            Failed::Jump(j)
        } else if master.contains("during banner exchange") {
            Failed::Target
        } else if master.contains("UNKNOWN port 65535")
            || master.contains("kex_exchange_identification: Connection closed")
        {
            Failed::Jump(j)
        } else {
            Failed::Target
        }
    }

    /// The master's log without the lines that only say the proxy went away.
    pub fn strip(text: &str) -> String {
        text.lines()
            .filter(|l| {
                !l.contains("kex_exchange_identification")
                    && !l.contains("UNKNOWN port 65535")
                    && !l.contains("stdio forwarding failed")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(jump: &str) -> SshSettings {
        SshSettings {
            user: "ops".into(),
            port: 2222,
            identity_file: Some("keys/id_ed25519".into()),
            proxy_jump: Some(jump.into()),
            config_file: None,
            known_hosts_file: Some("/etc/hakube/known hosts".into()),
        }
    }

    #[test]
    fn hops_parse_user_host_and_port() {
        assert_eq!(
            hops("admin@bastion:2200,10.0.0.5,[fd00::1]:22,ssh://j2"),
            vec![
                Hop {
                    user: Some("admin".into()),
                    host: "bastion".into(),
                    port: Some(2200)
                },
                Hop {
                    user: None,
                    host: "10.0.0.5".into(),
                    port: None
                },
                Hop {
                    user: None,
                    host: "fd00::1".into(),
                    port: Some(22)
                },
                Hop {
                    user: None,
                    host: "j2".into(),
                    port: None
                },
            ]
        );
        assert_eq!(Hop::parse("fd00::7").host, "fd00::7");
    }

    #[test]
    fn the_jump_block_carries_the_spec_settings_before_the_usual_configs() {
        let c = config(
            &settings("bastion,admin@10.0.0.5:2200"),
            Path::new("/srv/spec"),
            Duration::from_secs(10),
            Path::new("/run/h/jump-1.conf"),
            Path::new("/run/h"),
        )
        .expect("a jump host gives a config");
        let want = "Host 10.0.0.5 bastion\n    User ops\n    IdentityFile \"/srv/spec/keys/id_ed25519\"\n    UserKnownHostsFile \"/etc/hakube/known hosts\"\n    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n    ServerAliveInterval 5\nHost * !10.0.0.5 !bastion\n    ProxyCommand ssh -F '/run/h/jump-1.conf' -E '/run/h/jump-%n.log' -J 'bastion' -l 'admin' -p 2200 -W '[%h]:%p' '10.0.0.5'\nHost *\n    Include ~/.ssh/config\n    Include /etc/ssh/ssh_config\n";
        assert!(c.ends_with(want), "{c}");
        // The spec's port is the targets'; the jump's comes from proxyJump or ssh_config.
        assert!(!c.contains("    Port"), "{c}");
    }

    #[test]
    fn a_user_config_file_is_included_and_no_jump_means_no_config() {
        let mut s = settings("bastion");
        s.config_file = Some("ssh_config".into());
        s.identity_file = None;
        s.known_hosts_file = None;
        let (f, d) = (Path::new("/run/h/j.conf"), Path::new("/run/h"));
        let c = config(&s, Path::new("/srv/spec"), Duration::from_secs(5), f, d).expect("config");
        assert!(
            c.contains("Host *\n    Include \"/srv/spec/ssh_config\"\n"),
            "{c}"
        );
        assert!(
            !c.contains("IdentityFile") && !c.contains("UserKnownHostsFile"),
            "{c}"
        );
        assert!(!c.contains("~/.ssh/config") && !c.contains(" -J "), "{c}");
        s.proxy_jump = None;
        assert_eq!(
            config(&s, Path::new("/"), Duration::from_secs(5), f, d),
            None
        );
    }

    #[test]
    fn the_file_is_private_and_named_by_its_settings() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let t = Duration::from_secs(5);
        let a = path(&settings("b1"), Path::new("/"), t, d.path());
        assert_eq!(path(&settings("b1"), Path::new("/"), t, d.path()), a);
        assert_ne!(path(&settings("b2"), Path::new("/"), t, d.path()), a);
        write(&a, "Host a\n").expect("write");
        write(&a, "Host b\n").expect("write");
        assert_eq!(std::fs::read_to_string(&a).expect("read"), "Host a\n");
        let mode = std::fs::metadata(&a).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_failed_hop_is_told_from_ssh_words() {
        // Captured from OpenSSH 9.2 with -J on the lab.
        let jump_key = "No ED25519 host key is known for 10.210.0.11 and you have requested strict checking.\nHost key verification failed.\nkex_exchange_identification: Connection closed by remote host\nConnection closed by UNKNOWN port 65535\n";
        let target_key = "No ED25519 host key is known for 10.210.0.101 and you have requested strict checking.\nHost key verification failed.\n";
        let onward = "channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed\nkex_exchange_identification: Connection closed by remote host\nConnection closed by UNKNOWN port 65535\n";
        let b = Some("lb1");
        // Before the jump hop had its own log, all of it reached the master's.
        assert_eq!(
            Failed::classify("", jump_key, b),
            Failed::Jump("lb1".into())
        );
        assert_eq!(Failed::classify("", target_key, b), Failed::Target);
        assert_eq!(
            Failed::classify("", onward, b),
            Failed::JumpToTarget("lb1".into())
        );
        assert_eq!(Failed::classify("", jump_key, None), Failed::Target);
        // The jump hop's log, apart from the master's.
        let (log, master) = jump_key.split_at(jump_key.find("kex_").expect("kex line"));
        assert_eq!(Failed::classify(log, master, b), Failed::Jump("lb1".into()));
        let (log, master) = onward.split_at(onward.find("kex_").expect("kex line"));
        assert_eq!(
            Failed::classify(log, master, b),
            Failed::JumpToTarget("lb1".into())
        );
        // Out of time: the jump hop silent is not blamed; a jump hop out of time is.
        let slow = "Connection timed out during banner exchange\nConnection to UNKNOWN port 65535 timed out\n";
        assert_eq!(Failed::classify("", slow, b), Failed::Target);
        assert_eq!(
            Failed::classify("Connection timed out during banner exchange\n", slow, b),
            Failed::Jump("lb1".into())
        );
        assert_eq!(
            Failed::strip(onward),
            "channel 0: open failed: connect failed: Connection refused"
        );
    }
}
