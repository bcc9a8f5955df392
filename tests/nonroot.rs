//! hakube as a non-root SSH user on a real lab (root only): `lab up --user ops` gives every host
//! the user with passwordless sudo and refuses root; apply, a second apply, status and a drill
//! pass as that user. Once sudo asks for a password, apply is refused up front for all hosts in
//! one message, changes nothing and prints no summary table; status and doctor do not look
//! healthy.

mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const HOSTS: &str = "lb1, lb2, master1, master2, master3, worker1, worker2";

fn apply_json(lab: &Lab) -> (Output, Vec<Value>) {
    let out = lab.hakube(&["apply", "-o", "json"]);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    (out, lines)
}

fn summary(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|v| v["event"] == "summary")
        .map(|v| v["summary"].clone())
        .unwrap_or(Value::Null)
}

/// `ssh -F ssh_config HOST CMD` as the lab's ssh_config says (or as `user`).
fn ssh(lab: &Lab, user: Option<&str>, host: &str, cmd: &str) -> Output {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(lab.dir().join("ssh_config"));
    if let Some(u) = user {
        c.args(["-l", u]);
    }
    c.args([host, cmd])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

#[test]
fn a_non_root_user_with_sudo_runs_everything_and_without_it_is_refused_up_front() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up_with("hnr1", "10.189.0", &["--user", "ops"]);
    let spec_text = std::fs::read_to_string(lab.spec()).expect("spec");
    assert!(spec_text.contains("\n    user: ops\n"), "{spec_text}");

    // The user exists on the hosts only; root cannot log in.
    let o = ssh(&lab, None, "master1", "id -un; sudo -n id -u");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ops\n0\n",
        "{}",
        text(&o)
    );
    assert!(o.stderr.is_empty(), "sudo is quiet on a host: {}", text(&o));
    let o = ssh(&lab, Some("root"), "lb1", "true");
    assert!(!o.status.success(), "root logged in: {}", text(&o));
    let o = Command::new("getent")
        .args(["passwd", "ops"])
        .output()
        .expect("getent");
    assert!(
        !o.status.success(),
        "this machine got a user ops: {}",
        text(&o)
    );

    // Apply as ops, twice: the second changes nothing.
    let (out, lines) = apply_json(&lab);
    let s = summary(&lines);
    assert!(out.status.success(), "apply failed:\n{}", text(&out));
    assert!(s["changed"].as_u64().unwrap_or(0) > 20, "{s}");
    let (out, lines) = apply_json(&lab);
    let s = summary(&lines);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s["changed"], 0, "second apply changed something: {s}");
    // It was ops that logged in (sshd's own log on the host).
    let log =
        std::fs::read_to_string(lab.dir().join("hosts/master2/fs/run/sshd.log")).expect("sshd log");
    assert!(log.contains("Accepted publickey for ops"), "{log}");
    assert!(!log.contains("Accepted publickey for root"), "{log}");

    // status is healthy, and a drill passes.
    eventually("status exits 0", Duration::from_secs(90), || {
        let o = lab.hakube(&["status", "-o", "json"]);
        match o.status.code() {
            Some(0) => Ok(()),
            c => Err(format!("exit {c:?}: {}", text(&o))),
        }
    });
    let reports = tempfile::tempdir().expect("tempdir");
    let o = Command::new(HAKUBE)
        .args(["drill", "lb-failover", "--duration", "3s", "-o", "json"])
        .args(["--recovery-timeout", "90s", "--report-dir"])
        .arg(reports.path())
        .arg("-f")
        .arg(lab.spec())
        .stdin(Stdio::null())
        .output()
        .expect("drill");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_eq!(o.status.code(), Some(0), "drill: {}", text(&o));
    let sc = &v["scenarios"][0];
    assert_eq!(sc["outcome"], "passed", "{}", text(&o));
    assert_eq!(sc["writes"]["lost"], serde_json::json!([]), "{sc}");

    // sudo now asks ops for a password (which it has none of).
    let o = Command::new(HAKUBE)
        .args(["lab", "sudo", "password", "--name", &lab.name])
        .output()
        .expect("lab sudo");
    assert!(o.status.success(), "{}", text(&o));
    let o = ssh(&lab, None, "lb1", "sudo -n true");
    assert!(!o.status.success(), "sudo still needs no password");

    // Something for apply to change, so "nothing was changed" is checked on a real change.
    let before = lab.exec("lb1", "sha256sum /etc/haproxy/haproxy.cfg");
    assert!(spec_text.contains("      type: https\n"));
    std::fs::write(
        lab.spec(),
        spec_text.replace("      type: https\n", "      type: tcp\n"),
    )
    .expect("edit spec");

    let want = format!(
        "spec.ssh.user ops needs passwordless sudo on {HOSTS} (`sudo -n sh -c true` failed: a password is required); nothing was changed\n  help: "
    );
    let o = lab.hakube(&["apply"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr.contains(&format!("error: {want}")), "{stderr}");
    assert_eq!(
        stderr.matches("needs passwordless sudo").count(),
        1,
        "one message for all hosts: {stderr}"
    );
    assert!(
        !stderr.contains("gather facts"),
        "refused before facts: {stderr}"
    );
    // Not a phase ran, and no table or count follows.
    assert!(
        !stdout.contains('[') && !stdout.contains('┌') && !stdout.contains("phases:"),
        "{stdout}"
    );
    assert!(!stdout.contains("changed"), "{stdout}");

    let (o, lines) = apply_json(&lab);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(lines.len(), 1, "only the summary: {lines:?}");
    let s = summary(&lines);
    assert!(s["error"].as_str().unwrap_or("").starts_with(&want), "{s}");
    assert_eq!(s["changed"], 0, "{s}");
    assert_eq!(s["hosts"], serde_json::json!({}), "{s}");
    let after = lab.exec("lb1", "sha256sum /etc/haproxy/haproxy.cfg");
    assert_eq!(after.stdout, before.stdout, "haproxy.cfg changed");

    // status and doctor do not look healthy, and doctor says why once.
    let o = lab.hakube(&["status"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("sudo refused: a password is required"),
        "{}",
        text(&o)
    );
    let o = lab.hakube(&["doctor", "-o", "json"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let d: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let sudo: Vec<&Value> = d["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["rule"] == "ssh-sudo")
        .collect();
    assert_eq!(sudo.len(), 1, "{d}");
    assert!(
        sudo[0]["evidence"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("on {HOSTS} (")),
        "{d}"
    );
    assert!(
        d["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|f| f["rule"] != "host-unreachable"),
        "{d}"
    );
}
