//! `hakube drill` on a real lab (root only): every scenario once with short holds, asserting on
//! what was measured; a quorum-breaking drill refused without touching anything; the SSH path
//! refused without --yes and working with it; and Ctrl-C in the middle of a fault restoring it.

mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn status_code(lab: &Lab) -> (i32, Value) {
    let o = lab.hakube(&["status", "-o", "json"]);
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
    )
}

fn await_healthy(lab: &Lab, what: &str) -> Value {
    eventually(what, Duration::from_secs(60), || {
        let (code, s) = status_code(lab);
        if code == 0 {
            Ok(s)
        } else {
            Err(format!("exit {code}: {:?}", s["verdicts"]))
        }
    })
}

/// Run a drill with `-o json`; (exit code, JSON, stderr).
fn drill(lab: &Lab, reports: &std::path::Path, args: &[&str]) -> (i32, Value, String) {
    let o = Command::new(HAKUBE)
        .arg("drill")
        .args(args)
        .arg("-f")
        .arg(lab.spec())
        .args(["-o", "json", "--report-dir"])
        .arg(reports)
        .stdin(Stdio::null())
        .output()
        .expect("run hakube drill");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        o.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn is_active(lab: &Lab, host: &str, svc: &str) -> bool {
    lab.exec(host, &format!("systemctl is-active {svc}"))
        .status
        .success()
}

fn changes<'a>(sc: &'a Value, what: &str) -> Vec<&'a Value> {
    sc["changes"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["what"] == what).collect())
        .unwrap_or_default()
}

#[test]
fn drills_measure_recover_refuse_and_restore_on_ctrl_c() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let started = Instant::now();
    let lab = Lab::up("tdrill", "10.98.0");
    lab.apply();
    await_healthy(&lab, "healthy after apply");
    let reports = tempfile::tempdir().expect("tempdir");

    // 1. Every scenario once, with short holds.
    let (code, v, err) = drill(
        &lab,
        reports.path(),
        &["all", "--duration", "2s", "--recovery-timeout", "90s"],
    );
    let scenarios = v["scenarios"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["scenario"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "lb-failover",
            "lb-host-loss",
            "apiserver-down",
            "control-plane-partition",
            "etcd-member-down",
            "etcd-leader-loss",
            "worker-loss"
        ],
        "{err}"
    );
    for sc in &scenarios {
        let name = sc["scenario"].as_str().unwrap_or("?");
        assert_eq!(sc["outcome"], "passed", "{name}: {}\n{err}", sc["message"]);
        assert!(
            sc["recovered_after_ms"].as_f64().is_some(),
            "{name} recovered"
        );
        let w = &sc["writes"];
        assert_eq!(w["method"], "etcd", "{name}: writes read back from etcd");
        assert!(
            w["acknowledged"].as_u64().unwrap_or(0) >= 10,
            "{name}: the probe wrote: {w}"
        );
        assert_eq!(w["lost"], serde_json::json!([]), "{name}: no lost writes");
        let m = &sc["metrics"];
        assert!(m["ok"].as_u64().unwrap_or(0) > 40, "{name}: probe ran: {m}");
        for f in sc["files"].as_array().into_iter().flatten() {
            let p = std::path::Path::new(f.as_str().unwrap_or(""));
            assert!(p.exists(), "{name}: report file {}", p.display());
        }
    }
    let by = |n: &str| scenarios.iter().find(|s| s["scenario"] == n).unwrap();
    // The VIP moved to the other LB when HAProxy stopped on its holder, and when it was cut off.
    for n in ["lb-failover", "lb-host-loss"] {
        let sc = by(n);
        let first = sc["initial_vip"].as_str().unwrap_or("?").to_string();
        assert!(
            sc["vip_moved_after_ms"].as_f64().is_some(),
            "{n}: the VIP moved: {:?}",
            changes(sc, "vip")
        );
        // Labels are holders joined by "+"; "lb1?" is an unreachable LB's last known state.
        assert!(
            changes(sc, "vip").iter().any(|c| {
                c["to"]
                    .as_str()
                    .unwrap_or("")
                    .split('+')
                    .any(|h| h.starts_with("lb") && !h.ends_with('?') && h != first)
            }),
            "{n}: the VIP went to another LB than {first}: {:?}",
            changes(sc, "vip")
        );
    }
    // A stopped API server is seen by HAProxy, and the leader loss by etcd.
    assert!(
        by("apiserver-down")["detected_by"]
            .as_str()
            .is_some_and(|d| d.contains("HAProxy marked")),
        "{}",
        by("apiserver-down")["detected_by"]
    );
    let leader = by("etcd-leader-loss");
    assert!(
        changes(leader, "leader")
            .iter()
            .any(|c| c["from"] == leader["target"] && c["to"] != "none"),
        "a new etcd leader: {:?}",
        changes(leader, "leader")
    );
    // The control-plane partition hit the API server behind the kept-alive connection (named
    // by its certificate), whose clients then waited for HAProxy to give up on it.
    let cp = by("control-plane-partition");
    assert!(cp["kept_alive_on"].is_string(), "{}", cp["kept_alive_on"]);
    if cp["kept_alive_on"] == cp["target"] {
        let gap = cp["metrics"]["streams"]["keep-alive"]["longest_gap_ms"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(gap > 500.0, "the kept-alive stream stalled: {gap} ms");
    }
    // Losing a worker does not touch the API.
    assert_eq!(by("worker-loss")["metrics"]["failed"], 0);
    assert_eq!(code, 0, "{err}");
    assert!(reports.path().join("summary.json").exists());
    await_healthy(&lab, "healthy after the drills");

    // 2. A drill that would break quorum is refused, and touches nothing.
    lab.fault(&["stop", "master3", "etcd"]);
    eventually(
        "master3's member seen down",
        Duration::from_secs(30),
        || {
            let (_, s) = status_code(&lab);
            let down = s["etcd"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == "master3" && !m["error"].is_null());
            if down {
                Ok(())
            } else {
                Err(format!("{:?}", s["etcd"]))
            }
        },
    );
    let (code, v, err) = drill(
        &lab,
        reports.path(),
        &["etcd-member-down", "--duration", "2s"],
    );
    let sc = &v["scenarios"][0];
    let msg = sc["message"].as_str().unwrap_or("");
    assert_eq!(code, 3, "refused: {msg}\n{err}");
    assert_eq!(sc["outcome"], "refused");
    assert!(
        msg.contains("break etcd quorum")
            && msg.contains("master3 already down")
            && msg.contains("--force"),
        "a clear message: {msg}"
    );
    assert!(sc["injected_at"].is_null(), "nothing was injected");
    for m in ["master1", "master2"] {
        assert!(is_active(&lab, m, "etcd"), "etcd on {m} was not touched");
    }
    lab.fault(&["start", "master3", "etcd"]);
    await_healthy(&lab, "healthy after master3 is back");

    // 3. The real-host path (SSH + nftables), on the lab's hosts: refused without --yes, naming
    //    the host; with --yes it partitions, restores and recovers.
    let (code, v, _) = drill(
        &lab,
        reports.path(),
        &[
            "control-plane-partition",
            "--via",
            "ssh",
            "--host",
            "master2",
        ],
    );
    let msg = v["scenarios"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(code, 3, "{msg}");
    assert!(
        msg.contains("touching master2") && msg.contains("--yes"),
        "{msg}"
    );
    let (code, v, err) = drill(
        &lab,
        reports.path(),
        &[
            "control-plane-partition",
            "--via",
            "ssh",
            "--yes",
            "--host",
            "master2",
            "--duration",
            "2s",
        ],
    );
    let sc = &v["scenarios"][0];
    assert_eq!(code, 0, "{}\n{err}", sc["message"]);
    assert_eq!(sc["via"], "ssh");
    assert!(
        sc["detected_by"]
            .as_str()
            .is_some_and(|d| d.contains("master2")),
        "HAProxy saw master2 go: {}",
        sc["detected_by"]
    );
    assert_eq!(sc["writes"]["lost"], serde_json::json!([]));
    let nft = lab.exec("master2", "nft list tables");
    assert!(
        !text(&nft).contains("hakube_drill"),
        "the partition rules are gone: {}",
        text(&nft)
    );

    // 4. Ctrl-C in the middle of a fault: the drill restores it before it exits.
    await_healthy(&lab, "healthy before Ctrl-C");
    let (_, s) = status_code(&lab);
    let holder = s["vip_holders"][0].as_str().unwrap_or("lb1").to_string();
    let drill = Background::drill(&lab, &["lb-failover", "--duration", "120s"], reports.path())
        .await_injected(Duration::from_secs(30));
    eventually(
        "haproxy stopped by the drill",
        Duration::from_secs(10),
        || {
            if is_active(&lab, &holder, "haproxy") {
                Err("still active".into())
            } else {
                Ok(())
            }
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(drill.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let (code, v, log) = drill.finish();
    assert_eq!(code, 130, "{log}");
    // Restored before it exited: no waiting, no manual step.
    assert!(
        is_active(&lab, &holder, "haproxy"),
        "haproxy on {holder} was restored:\n{log}"
    );
    assert_eq!(v["scenarios"][0]["outcome"], "interrupted", "{log}");
    assert!(v["scenarios"][0]["hold_ms"].as_u64().unwrap_or(u64::MAX) < 60_000);
    await_healthy(&lab, "healthy after Ctrl-C");
    eprintln!("drill test took {:.0} s", started.elapsed().as_secs_f64());
}
