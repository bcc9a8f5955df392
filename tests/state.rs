//! Operator state on a real lab (root only): a spec copied away from its `.hakube` folder is
//! never used to change the cluster, reading commands create nothing, and a copy that brings
//! the folder along works.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hakube(spec: &Path, args: &[&str]) -> Output {
    Command::new(HAKUBE)
        .args(args)
        .arg("-f")
        .arg(spec)
        .output()
        .expect("run hakube")
}

/// Every file below `dir`, relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn sha(lab: &Lab, host: &str, path: &str) -> String {
    String::from_utf8_lossy(&lab.exec(host, &format!("sha256sum {path}")).stdout).to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
}

#[test]
fn a_spec_without_its_state_never_touches_the_cluster() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tstate", "10.140.0");
    lab.apply();
    let ca_before = sha(&lab, "master1", "/etc/etcd/pki/ca.crt");
    let api_ca_before = sha(&lab, "master2", "/etc/hakube/lab-apiserver/ca.crt");
    assert!(ca_before.contains("ca.crt"), "{ca_before}");

    // The spec alone, somewhere else.
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("cluster.yaml");
    std::fs::copy(lab.spec(), &copy).expect("copy the spec");

    // Reading commands refuse clearly and create nothing.
    for cmd in ["status", "doctor"] {
        let o = hakube(&copy, &[cmd]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o));
        assert!(
            text(&o).contains("no operator state"),
            "{cmd}: {}",
            text(&o)
        );
        assert_eq!(
            tree(tmp.path()),
            vec![PathBuf::from("cluster.yaml")],
            "{cmd}"
        );
    }

    // A dry-run refuses, names the state folder the cluster was built from, and writes nothing.
    let o = hakube(&copy, &["apply", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("built with other CAs"), "{t}");
    assert!(t.contains(&lab.state().display().to_string()), "{t}");
    assert!(t.contains("--replace-ca"), "{t}");
    assert_eq!(tree(tmp.path()), vec![PathBuf::from("cluster.yaml")]);

    // A real apply refuses the same way and changes nothing on the hosts.
    let o = hakube(&copy, &["apply"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("built with other CAs"), "{}", text(&o));
    assert_eq!(sha(&lab, "master1", "/etc/etcd/pki/ca.crt"), ca_before);
    assert_eq!(
        sha(&lab, "master2", "/etc/hakube/lab-apiserver/ca.crt"),
        api_ca_before
    );
    let names: Vec<String> = tree(tmp.path())
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".crt") || n.ends_with(".key")),
        "a refused apply keeps no CA: {names:?}"
    );

    // The spec with its state folder works from anywhere: only the marker that says where the
    // cluster is managed from changes, then nothing.
    let moved = tempfile::tempdir().expect("tempdir");
    let spec2 = moved.path().join("cluster.yaml");
    std::fs::copy(lab.spec(), &spec2).expect("copy the spec");
    copy_dir(&lab.dir().join(".hakube"), moved.path());
    let o = hakube(&spec2, &["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = hakube(&spec2, &["apply"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = hakube(&spec2, &["apply", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let summary = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a summary");
    assert_eq!(summary["summary"]["changed"], 0, "{summary}");
    assert_eq!(sha(&lab, "master1", "/etc/etcd/pki/ca.crt"), ca_before);
}
