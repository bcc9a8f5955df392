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
        let session = b
            .connect_mux(&dest)
            .await
            .map_err(|e| explain(&h.name, &dest, e))?;
        Ok(Ssh {
            name: h.name.clone(),
            session,
            sudo: s.user != "root",
        })
    }
}

/// Turn ssh failures into what the operator should do.
fn explain(host: &str, dest: &str, e: openssh::Error) -> anyhow::Error {
    let text = format!("{e:#}");
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
            let mut cmd = if self.sudo {
                let mut c = self.session.command("sudo");
                c.args(["-n", "sh", "-c", script]);
                c
            } else {
                let mut c = self.session.command("sh");
                c.args(["-c", script]);
                c
            };
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
            Ok(Output {
                status: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            })
        })
    }
}
