//! `hakube apply` end to end on a real lab (root only): real sshd, etcd, haproxy, keepalived and
//! the lab API server, checked with the real etcdctl and curl.

mod common;
use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn apply(spec: &std::path::Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let out = Command::new(HAKUBE)
        .arg("apply")
        .arg("-f")
        .arg(spec)
        .args(["-o", "json"])
        .args(extra)
        .output()
        .expect("run apply");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let summary = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .map(|v| v["summary"].clone())
        .unwrap_or(serde_json::Value::Null);
    (out, summary)
}

fn changed_per_host(s: &serde_json::Value) -> Vec<(String, u64)> {
    s["hosts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(h, v)| (h.clone(), v["changed"].as_u64().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

fn etcdctl_health(lab: &Lab) -> Output {
    lab.etcdctl(&["endpoint", "health", "--cluster"])
}

fn vip_holders(lab: &Lab, vip: &str) -> Vec<String> {
    ["lb1", "lb2"]
        .iter()
        .filter(|h| {
            String::from_utf8_lossy(&lab.exec(h, "ip -o addr show").stdout)
                .contains(&format!(" {vip}/"))
        })
        .map(|h| h.to_string())
        .collect()
}

/// What `/readyz` on `addr`:6443 answers, over TLS verified against the cluster CA (curl's
/// error when it cannot ask).
fn readyz(lab: &Lab, addr: &str) -> String {
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(lab.cluster_ca())
        .arg(format!("https://{addr}:6443/readyz"))
        .output()
        .expect("curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&curl.stdout).trim(),
        String::from_utf8_lossy(&curl.stderr).trim()
    )
}

fn file_hash(lab: &Lab, host: &str, path: &str) -> String {
    String::from_utf8_lossy(&lab.exec(host, &format!("sha256sum {path}")).stdout).to_string()
}

#[test]
fn apply_converges_is_idempotent_and_dry_run_changes_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tapply", "10.92.0");
    let spec = lab.spec();

    // Cold apply.
    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "apply failed:\n{}", text(&out));
    assert!(s["error"].is_null(), "{s}");
    assert!(
        s["changed"].as_u64().unwrap_or(0) > 20,
        "a cold apply writes many files: {s}"
    );

    // The API answers through the VIP, over TLS verified against the cluster CA.
    assert_eq!(readyz(&lab, "10.92.0.100"), "ok");
    // Three healthy members, according to the real etcdctl.
    let h = etcdctl_health(&lab);
    let ht = text(&h);
    assert!(h.status.success(), "{ht}");
    assert_eq!(ht.matches("is healthy").count(), 3, "{ht}");
    // Exactly one LB holds the VIP.
    assert_eq!(vip_holders(&lab, "10.92.0.100").len(), 1);

    // A second apply changes nothing.
    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        s["changed"],
        0,
        "second apply changed something: {:?}",
        changed_per_host(&s)
    );

    // A one-field change touches only what it should: haproxy.cfg on both LBs. (`rise`: the
    // check interval and `fall` also set the API servers' shutdown delay, so they roll those.)
    let original = std::fs::read_to_string(&spec).expect("spec");
    assert!(original.contains("      type: https\n"));
    let edited = original.replace("      type: https\n", "      type: https\n      rise: 3\n");
    std::fs::write(&spec, &edited).expect("write spec");

    // Dry-run first: reports the two changes, changes nothing.
    let before = file_hash(&lab, "lb1", "/etc/haproxy/haproxy.cfg");
    let (out, s) = apply(&spec, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s["dry_run"], true);
    assert_eq!(
        changed_per_host(&s),
        vec![("lb1".into(), 1), ("lb2".into(), 1)]
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" fall 2 rise 3 on-marked-down"),
        "dry-run shows the diff"
    );
    assert_eq!(
        file_hash(&lab, "lb1", "/etc/haproxy/haproxy.cfg"),
        before,
        "dry-run must not change files"
    );

    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        changed_per_host(&s),
        vec![("lb1".into(), 1), ("lb2".into(), 1)]
    );
    assert_ne!(file_hash(&lab, "lb1", "/etc/haproxy/haproxy.cfg"), before);
    let cfg = String::from_utf8_lossy(&lab.exec("lb2", "cat /etc/haproxy/haproxy.cfg").stdout)
        .to_string();
    assert!(cfg.contains(" rise 3 "));
    // The reload kept the API up through the VIP.
    assert_eq!(readyz(&lab, "10.92.0.100"), "ok");

    // The kubeadm path, reviewed by dry-run on the same hosts: the full sequence, in order.
    let kspec = lab.dir().join("kubeadm.yaml");
    std::fs::write(
        &kspec,
        edited.replace("bootstrap: lab", "bootstrap: kubeadm"),
    )
    .expect("write");
    let out = Command::new(HAKUBE)
        .arg("apply")
        .arg("-f")
        .arg(&kspec)
        .arg("--dry-run")
        .output()
        .expect("apply");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let pos = |needle: &str| {
        t.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{t}"))
    };
    let a = pos("apt-get install -y kubelet=1.37.0-* kubeadm=1.37.0-* kubectl=1.37.0-*");
    let b = pos("master1: would run: kubeadm init --config");
    let c = pos("master1: would run: kubeadm init phase upload-certs");
    let d = pos("master2: would run: kubeadm join");
    let e = pos("master2: would wait for its API server /readyz");
    let f = pos("master3: would run: kubeadm join");
    let g = pos("worker1: would run: kubeadm join");
    assert!(
        a < b && b < c && c < d && d < e && e < f && f < g,
        "out of order:\n{t}"
    );
    assert!(
        !t.contains("HAKUBE_BOOTSTRAP_TOKEN}|"),
        "no secret substitution is shown"
    );
    assert_eq!(
        file_hash(&lab, "lb1", "/etc/haproxy/haproxy.cfg"),
        file_hash(&lab, "lb1", "/etc/haproxy/haproxy.cfg")
    );
    let ls = lab.exec("master1", "ls /etc/kubernetes/hakube 2>/dev/null | wc -l");
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).trim(),
        "0",
        "dry-run wrote kubeadm files"
    );
}

#[test]
fn apply_recovers_after_kill_9() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tkill", "10.93.0");
    let spec = lab.spec();
    let mut child = Command::new(HAKUBE)
        .arg("apply")
        .arg("-f")
        .arg(&spec)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("apply");
    // Kill it once it has started changing hosts (when etcd is being formed).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = lab
            .exec("master1", "test -f /etc/etcd/etcd.env")
            .status
            .success();
        if started || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let masters = ssh_masters(&lab);
    assert!(
        !masters.is_empty(),
        "apply runs over SSH master connections"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    // Its SSH masters do not outlive it for long (ControlPersist after their last client).
    eventually(
        "the killed apply's ssh masters exit",
        Duration::from_secs(30),
        || {
            let left = ssh_masters(&lab);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    // No manual cleanup: the next apply completes.
    let (out, s) = apply(&spec, &[]);
    assert!(
        out.status.success(),
        "apply after kill -9 failed:\n{}",
        text(&out)
    );
    assert!(s["error"].is_null(), "{s}");
    let h = lab.etcdctl(&["endpoint", "health"]);
    assert_eq!(text(&h).matches("is healthy").count(), 3, "{}", text(&h));
    // ... and removed the killed run's socket folders.
    for (_, dir) in &masters {
        let owner = dir.parent().expect("per-process folder");
        assert!(!owner.exists(), "{} was left behind", owner.display());
    }
    let (_, s) = apply(&spec, &[]);
    assert_eq!(s["changed"], 0, "{:?}", changed_per_host(&s));
    eventually(
        "a finished apply leaves no master",
        Duration::from_secs(10),
        || match ssh_masters(&lab) {
            m if m.is_empty() => Ok(()),
            m => Err(format!("{m:?}")),
        },
    );
}

/// The ssh master processes (`ssh ... -M ... -F <this lab's ssh_config>`) and their socket
/// folders, read from /proc.
fn ssh_masters(lab: &Lab) -> Vec<(u32, std::path::PathBuf)> {
    let config = lab.dir().join("ssh_config").display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().map(String::as_str) != Some("ssh")
            || !args.iter().any(|a| a == "-M")
            || !args.contains(&config)
        {
            continue;
        }
        if let Some(i) = args.iter().position(|a| a == "-S")
            && let Some(sock) = args.get(i + 1)
            && let Some(dir) = std::path::Path::new(sock).parent()
        {
            out.push((pid, dir.to_path_buf()));
        }
    }
    out
}

#[test]
fn unreachable_host_and_wrong_host_key_are_reported_before_any_change() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tbadhost", "10.91.0");
    let spec = lab.spec();
    // A changed host key: replace worker2's known_hosts entry with another host's key.
    let kh = lab.dir().join("ssh/known_hosts");
    let known = std::fs::read_to_string(&kh).expect("known_hosts");
    let lb1_key = known
        .lines()
        .find(|l| l.contains("10.91.0.11"))
        .expect("lb1 key")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    let tampered: Vec<String> = known
        .lines()
        .map(|l| {
            if l.contains("10.91.0.202") {
                format!(
                    "{} {lb1_key}",
                    l.split_whitespace().next().unwrap_or_default()
                )
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&kh, tampered.join("\n") + "\n").expect("write known_hosts");
    // And an unreachable host.
    lab.fault(&["partition", "worker1"]);
    let started = Instant::now();
    let out = Command::new(HAKUBE)
        .arg("apply")
        .arg("-f")
        .arg(&spec)
        .output()
        .expect("apply");
    let took = started.elapsed();
    let t = text(&out);
    // Reported from the one failed attempt, within apply's 10 s connect timeout (a second ssh
    // run to diagnose it used to double that).
    assert!(took < Duration::from_secs(18), "took {took:?}:\n{t}");
    assert!(
        t.contains("ssh-keygen -R '10.91.0.202' -f") && !t.contains("connect once"),
        "the fix for a changed key works under strict checking:\n{t}"
    );
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("cannot reach 2 host(s); nothing was changed"),
        "{t}"
    );
    assert!(t.contains("worker2") && t.contains("host key"), "{t}");
    assert!(t.contains("worker1") && t.contains("unreachable"), "{t}");
    assert!(
        !lab.exec("master1", "test -f /etc/etcd/etcd.env")
            .status
            .success(),
        "nothing may change"
    );
    // With -o json, the same failure is the summary object on stdout.
    let (out, s) = apply(&spec, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = s["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("cannot reach 2 host(s)") && err.contains("worker1"),
        "summary: {s}\n{}",
        text(&out)
    );
    assert_eq!(s["changed"], 0, "{s}");
}

/// A converged apply trusts the lab API server binary's stamp instead of reading it, so the stamp
/// must never hide a change: a text file edited by hand and a binary swapped for one of the same
/// size and modification time (a running program cannot be written in place; the unit tests in
/// `transport` cover that case) are both found and rewritten by the next apply, and a missing
/// stamp is recorded again without rewriting the binary.
#[test]
fn hand_edits_are_rewritten_and_a_changed_binary_is_caught_despite_its_stamp() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("sc2", "10.201.0");
    let spec = lab.spec();
    let bin = "/var/lib/hakube/bin/hakube-lab-apiserver";
    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "cold apply failed:\n{}", text(&out));
    assert!(s["error"].is_null(), "{s}");
    let stamp = lab.exec("master1", &format!("cat {bin}.hakube-stamp"));
    let stamp = String::from_utf8_lossy(&stamp.stdout).to_string();
    assert!(
        file_hash(&lab, "master1", bin).starts_with(stamp.split(' ').next().unwrap_or("-")),
        "the stamp records the binary's sha256: {stamp:?}"
    );
    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s["changed"], 0, "{:?}", changed_per_host(&s));

    // By hand: a comment in haproxy.cfg on lb1, and one byte of master2's binary.
    let cfg = "/etc/haproxy/haproxy.cfg";
    let want_cfg = file_hash(&lab, "lb1", cfg);
    let want_bin = file_hash(&lab, "master2", bin);
    let o = lab.exec("lb1", &format!("echo '# edited by hand' >> {cfg}"));
    assert!(o.status.success(), "{}", text(&o));
    let o = lab.exec(
        "master2",
        &format!(
            "cp -p {bin} /tmp/bin.new && printf X | dd of=/tmp/bin.new bs=1 seek=4096 conv=notrunc \
             && touch -r {bin} /tmp/bin.new && mv -f /tmp/bin.new {bin}"
        ),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(file_hash(&lab, "master2", bin), want_bin, "the edit took");
    // And master3's stamp is gone.
    let o = lab.exec("master3", &format!("rm {bin}.hakube-stamp"));
    assert!(o.status.success(), "{}", text(&o));

    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        changed_per_host(&s),
        vec![("lb1".into(), 1), ("master2".into(), 1)],
        "{}",
        text(&out)
    );
    assert_eq!(file_hash(&lab, "lb1", cfg), want_cfg);
    assert_eq!(file_hash(&lab, "master2", bin), want_bin);
    let o = lab.exec("master3", &format!("test -s {bin}.hakube-stamp"));
    assert!(o.status.success(), "master3's stamp was recorded again");
    // The rewritten binary runs: the API answers on master2.
    assert_eq!(readyz(&lab, "10.201.0.102"), "ok");

    let (out, s) = apply(&spec, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(s["changed"], 0, "{:?}", changed_per_host(&s));
}
