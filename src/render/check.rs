//! Checks rendered files with the real tools: `haproxy -c`, `keepalived --config-test`,
//! `promtool check`. Used by `hakube render --check` and by the tests.

use super::{CLUSTER_DIR, HAPROXY_ENV, RenderedFile, monitoring};
use serde::Serialize;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub host: String,
    pub file: String,
    pub tool: String,
    pub ok: bool,
    /// What the tool printed (trimmed).
    pub output: String,
}

/// A shell command that runs keepalived's config test on `conf`.
///
/// keepalived 2.2.7 (Debian 12) kills itself with SIGTERM during `--config-test` when a
/// `track_script` is configured (fixed upstream in 2.2.8); an ignored SIGTERM survives exec, so
/// the test then runs to completion and reports real errors.
pub fn keepalived_test_command(conf: &str) -> String {
    format!("trap '' TERM; exec keepalived --config-test -f {conf}")
}

/// Shell command to check an HAProxy config with the credentials of its environment file.
pub fn haproxy_test_command(cfg: &str, env_file: &str) -> String {
    format!("set -a; . {env_file}; set +a; exec haproxy -c -f {cfg}")
}

fn run(mut cmd: Command) -> (bool, String) {
    match cmd.output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), s.trim().to_string())
        }
        Err(e) => (false, format!("cannot run: {e}")),
    }
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Check every file under `out` (as written by [`super::write_tree`]) that a tool can check.
/// Tools that are not installed are reported as failures with an install hint.
pub fn check_tree(files: &[RenderedFile], out: &Path) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    for f in files {
        let local = out.join(&f.host).join(f.path.trim_start_matches('/'));
        let mut push = |tool: &str, (ok, output): (bool, String)| {
            results.push(CheckResult {
                host: f.host.clone(),
                file: f.path.clone(),
                tool: tool.into(),
                ok,
                output,
            })
        };
        match f.path.as_str() {
            "/etc/haproxy/haproxy.cfg" => {
                let env = out.join(&f.host).join(HAPROXY_ENV.trim_start_matches('/'));
                let (ok, output) = run(sh(&haproxy_test_command(&q(&local), &q(&env))));
                // A warning is a defect in what we render, so it fails the check too.
                let clean = !output.contains("[WARNING]") && !output.contains("[ALERT]");
                push("haproxy -c", (ok && clean, output));
            }
            "/etc/keepalived/keepalived.conf" => {
                // The track script is checked at its real path (owner, mode, every parent
                // directory), so check inside a private mount namespace where the rendered
                // /etc/keepalived is bind-mounted over the real one.
                let dir = local.parent().map(|p| p.to_path_buf()).unwrap_or_default();
                let inner = format!(
                    "mkdir -p /etc/keepalived && mount --bind {} /etc/keepalived && {}",
                    q(&dir),
                    keepalived_test_command("/etc/keepalived/keepalived.conf")
                );
                let r = if is_root() {
                    let mut c = Command::new("unshare");
                    c.args(["--mount", "--propagation", "private", "sh", "-c", &inner]);
                    run(c)
                } else {
                    (
                        false,
                        "needs root for a private mount namespace (run as root)".into(),
                    )
                };
                push("keepalived --config-test", (r.0 && r.1.is_empty(), r.1));
            }
            p if f.host == CLUSTER_DIR && p.ends_with(monitoring::RULES_FILE) => {
                let mut c = Command::new("promtool");
                c.args(["check", "rules"]).arg(&local);
                push("promtool check rules", run(c));
            }
            p if f.host == CLUSTER_DIR && p.ends_with("/prometheus.yml") => {
                let mut c = Command::new("promtool");
                // Syntax only: the TLS files it names live on the Prometheus server.
                c.args(["check", "config", "--syntax-only"]).arg(&local);
                push("promtool check config", run(c));
            }
            _ => {}
        }
    }
    results
}
