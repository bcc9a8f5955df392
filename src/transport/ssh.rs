//! SSH through the system `ssh` (the `openssh` crate, one multiplexed master connection per
//! host), so that `~/.ssh/config`, ProxyJump, the agent and known_hosts work as the user expects.
//! Host keys are always checked strictly.

use super::{BoxFut, Output, Transport};
use crate::spec::Host;
use anyhow::{Result, anyhow};
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub struct Ssh {
    name: String,
    session: Session,
    sudo: bool,
}

fn expand(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(p)
}

/// Directory for control sockets: short, private (socket paths must stay under 108 bytes).
fn control_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("hakube-ssh-{}", nix::unistd::Uid::effective()));
    std::fs::create_dir_all(&d)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    Ok(d)
}

impl Ssh {
    pub async fn connect(h: &Host, base_dir: &Path, timeout: Duration) -> Result<Ssh> {
        let s = &h.ssh;
        let mut b = SessionBuilder::default();
        b.known_hosts_check(KnownHosts::Strict)
            .connect_timeout(timeout)
            .server_alive_interval(Duration::from_secs(5))
            .control_directory(control_dir()?)
            .user(s.user.clone())
            .port(s.port);
        if let Some(k) = &s.identity_file {
            b.keyfile(expand(k, base_dir));
        }
        if let Some(c) = &s.config_file {
            b.config_file(expand(c, base_dir));
        }
        if let Some(k) = &s.known_hosts_file {
            b.user_known_hosts_file(expand(k, base_dir));
        }
        if let Some(j) = &s.proxy_jump {
            b.jump_hosts(j.split(','));
        }
        // With an ssh_config, the host's name is the alias it defines; otherwise its address.
        let dest = if s.config_file.is_some() {
            h.name.clone()
        } else {
            h.address.to_string()
        };
        let session = match b.connect_mux(&dest).await {
            Ok(s) => s,
            Err(e) => {
                let why = diagnose(h, &dest, base_dir, timeout).await;
                return Err(explain(&h.name, &dest, e, why));
            }
        };
        Ok(Ssh {
            name: h.name.clone(),
            session,
            sudo: s.user != "root",
        })
    }
}

/// The crate reports only that the master connection failed; one plain `ssh` run with the same
/// settings tells why (host key, authentication, network).
async fn diagnose(h: &Host, dest: &str, base_dir: &Path, timeout: Duration) -> String {
    let s = &h.ssh;
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={}", timeout.as_secs().max(1)))
        .args(["-p", &s.port.to_string(), "-l", &s.user]);
    if let Some(c) = &s.config_file {
        cmd.arg("-F").arg(expand(c, base_dir));
    }
    if let Some(k) = &s.identity_file {
        cmd.arg("-i").arg(expand(k, base_dir));
    }
    if let Some(k) = &s.known_hosts_file {
        cmd.arg("-o").arg(format!(
            "UserKnownHostsFile={}",
            expand(k, base_dir).display()
        ));
    }
    if let Some(j) = &s.proxy_jump {
        cmd.args(["-J", j]);
    }
    cmd.arg(dest)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout + Duration::from_secs(2), cmd.output()).await {
        Ok(Ok(o)) => super::tail(&String::from_utf8_lossy(&o.stderr), 3),
        Ok(Err(e)) => format!("cannot run ssh: {e}"),
        Err(_) => "ssh: connection timed out".into(),
    }
}

/// Turn ssh failures into what the operator should do.
fn explain(host: &str, dest: &str, e: openssh::Error, why: String) -> anyhow::Error {
    let text = if why.trim().is_empty() {
        format!("{e:#}")
    } else {
        why
    };
    let low = text.to_lowercase();
    let hint = if low.contains("host key verification failed")
        || low.contains("remote host identification has changed")
    {
        "the host key is unknown or has CHANGED. If the host was reinstalled, check the new key out of band, then \
         `ssh-keygen -R <host>` and connect once with ssh to record it. hakube never accepts keys on its own"
    } else if low.contains("permission denied") {
        "authentication failed: check spec.ssh.user / identityFile, or that your agent holds the key"
    } else if low.contains("timed out")
        || low.contains("no route")
        || low.contains("unreachable")
        || low.contains("refused")
    {
        "the host is unreachable: check the address, that sshd runs, and the firewall"
    } else {
        "check that `ssh` to this host works by hand"
    };
    anyhow!(
        "{host}: cannot connect over SSH to {dest}: {}\n  help: {hint}",
        text.trim()
    )
}

impl Transport for Ssh {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec<'a>(&'a self, script: &'a str, stdin: Option<&'a [u8]>) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move {
            let mut cmd = self.command(script);
            cmd.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .await
                .map_err(|e| anyhow!("{}: ssh: {e}", self.name))?;
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin().take()) {
                pipe.write_all(data).await?;
                pipe.shutdown().await?;
                drop(pipe);
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| anyhow!("{}: ssh: {e}", self.name))?;
            Ok(Output::from(out))
        })
    }

    fn exec_stream<'a>(
        &'a self,
        script: &'a str,
        input: super::Input<'a>,
    ) -> BoxFut<'a, Result<Output>> {
        Box::pin(async move {
            let mut cmd = self.command(script);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .await
                .map_err(|e| anyhow!("{}: ssh: {e}", self.name))?;
            let pipe = child
                .stdin()
                .take()
                .ok_or_else(|| anyhow!("{}: ssh: no stdin", self.name))?;
            let wait = async {
                child
                    .wait_with_output()
                    .await
                    .map(Output::from)
                    .map_err(|e| anyhow!("{}: ssh: {e}", self.name))
            };
            super::feed_and_wait(input, pipe, wait).await
        })
    }
}

impl Ssh {
    /// `sh -c script` as root (through `sudo -n` for other users).
    fn command(&self, script: &str) -> openssh::OwningCommand<&Session> {
        if self.sudo {
            let mut c = self.session.command("sudo");
            c.args(["-n", "sh", "-c", script]);
            c
        } else {
            let mut c = self.session.command("sh");
            c.args(["-c", script]);
            c
        }
    }
}
