//! The command line as a user meets it: exit codes, JSON, messages, files written.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

const SEED: &str = include_str!("../examples/seed.yaml");

fn hakube() -> Command {
    Command::cargo_bin("hakube").expect("binary built")
}

fn spec_in(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("cluster.yaml");
    std::fs::write(&p, text).expect("write spec");
    p
}

#[test]
fn plan_on_the_seed_is_clean() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("VIP 10.1.1.100:6443"))
        .stdout(predicate::str::contains("etcd (3 members, quorum 2)"))
        .stdout(predicate::str::contains("Single points of failure: none."));
}

#[test]
fn plan_exit_codes_follow_severity() {
    let dir = tempfile::tempdir().expect("tmp");
    // Warnings only: one LB.
    let one_lb = SEED
        .replace(
            "    - { name: lb2,     address: 10.1.1.12,  roles: [loadbalancer] }\n",
            "",
        )
        .replace("{ lb1: 110, lb2: 100 }", "{ lb1: 110 }");
    let f = spec_in(dir.path(), &one_lb);
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("single load balancer (lb1)"))
        .stdout(predicate::str::contains(
            "load balancer lb1 (holds the only copy of the VIP)",
        ));
    // Errors: exit 2, with file:line:column and a fix.
    let bad = SEED.replace("routerId: 51", "routerId: 300");
    let f = spec_in(dir.path(), &bad);
    hakube()
        .args(["plan", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cluster.yaml:31:17: spec.loadBalancer.vrrp.routerId: VRRP router id 300 is outside 1-255"))
        .stderr(predicate::str::contains("help:"));
}

#[test]
fn plan_json_has_the_same_facts() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    let out = hakube()
        .args(["plan", "-o", "json", "-f"])
        .arg(&f)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON on stdout");
    assert_eq!(v["valid"], true);
    assert_eq!(v["plan"]["endpoint"], "10.1.1.100:6443");
    let layers = v["plan"]["layers"].as_array().expect("layers");
    let layer = |prefix: &str| {
        layers
            .iter()
            .find(|l| l["name"].as_str().unwrap_or_default().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} layer"))
    };
    let etcd = layer("etcd");
    assert_eq!(etcd["survives"], 1);
    assert_eq!(etcd["failover_ms"], serde_json::json!([1000, 2000]));
    // Host loss: 3 x 200ms + (256-100)/256 x 200ms = 721ms; no API server behind the holder:
    // up to one more track-script interval (1s).
    assert_eq!(layer("VIP")["failover_ms"], serde_json::json!([721, 1721]));
    // HAProxy dead on the holder: FAULT and a priority-0 advert, so only the backup's skew
    // (156/256 x 200ms = 121ms), after up to one track-script interval.
    assert_eq!(
        layer("HAProxy")["failover_ms"],
        serde_json::json!([121, 1121])
    );
    // A silent API server: 2 checks that fail to connect within min(1s, inter 400ms), 200ms
    // apart (fastinter), after up to one interval: 1000-1400ms.
    let api = layer("API servers");
    assert_eq!(api["failover_ms"], serde_json::json!([0, 1400]));
    assert!(
        api["how"]
            .as_str()
            .unwrap_or_default()
            .contains("= 1.0s-1.4s"),
        "{}",
        api["how"]
    );
}

#[test]
fn missing_spec_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tmp");
    hakube()
        .current_dir(dir.path())
        .arg("plan")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read the cluster spec cluster.yaml",
        ))
        .stderr(predicate::str::contains("hakube lab up"));
}

#[test]
fn render_writes_every_host_and_keeps_the_password_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    let out = dir.path().join("out");
    hakube()
        .args(["render", "-f"])
        .arg(&f)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("rendered 49 files for 8 hosts"));
    for h in [
        "lb1", "lb2", "master1", "master2", "master3", "worker1", "worker2", "worker3", "_cluster",
    ] {
        assert!(out.join(h).is_dir(), "{h} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let pw = dir
        .path()
        .join(".hakube/ha-cluster/secrets/haproxy-stats.password");
    assert_eq!(
        std::fs::metadata(&pw)
            .expect("password file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let password = std::fs::read_to_string(&pw)
        .expect("read")
        .trim()
        .to_string();
    assert!(password.len() >= 24);
    let env = std::fs::read_to_string(out.join("lb1/etc/haproxy/hakube.env")).expect("env");
    assert!(env.contains(&password));
    let cfg = std::fs::read_to_string(out.join("lb1/etc/haproxy/haproxy.cfg")).expect("cfg");
    assert!(!cfg.contains(&password));
    // Same spec, same bytes: a second render changes nothing.
    hakube()
        .args(["render", "-f"])
        .arg(&f)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("(0 changed)"));
}

#[test]
fn render_refuses_an_invalid_spec() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(
        dir.path(),
        &SEED.replace("vip: 10.1.1.100", "vip: 10.1.1.101"),
    );
    let out = dir.path().join("out");
    hakube()
        .args(["render", "-f"])
        .arg(&f)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nothing rendered"));
    assert!(!out.exists());
}

#[test]
fn help_covers_every_command() {
    for cmd in [
        vec!["--help"],
        vec!["plan", "--help"],
        vec!["render", "--help"],
        vec!["lab", "--help"],
    ] {
        hakube()
            .args(&cmd)
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage:"));
    }
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    // clap_complete's fish script lists flags but not a positional's values.
    for (shell, values) in [("bash", true), ("zsh", true), ("fish", false)] {
        let out = hakube().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("replace-ca"), "{shell}");
        assert_eq!(script.contains("etcd-leader-loss"), values, "{shell}");
    }
    let dir = tempfile::tempdir().expect("tmp");
    hakube()
        .args(["man", "--out"])
        .arg(dir.path())
        .assert()
        .code(0);
    let page = std::fs::read_to_string(dir.path().join("hakube-apply.1")).expect("apply's page");
    assert!(page.contains("replace\\-ca"), "{page}");
    assert!(dir.path().join("hakube-drill.1").exists());
}

#[test]
fn status_without_operator_state_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = spec_in(dir.path(), SEED);
    hakube()
        .args(["status", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no operator state"))
        .stderr(predicate::str::contains("run `hakube apply"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("cluster.yaml")]);
}
