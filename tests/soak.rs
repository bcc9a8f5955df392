//! `drill soak --load` on a real lab (root): a minute of CPU load (twice the core count) on the
//! VIP holder and the etcd leader, fsync'd writes next to etcd's data, and jitter where netem
//! exists, with the client probe running and nothing broken. hakube's defaults must not react:
//! no VIP move, no etcd leader change, no HAProxy backend change, no failed request.

mod common;
use common::*;

#[test]
fn a_loaded_healthy_cluster_sees_no_false_failover() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let lab = Lab::up("tsoak", "10.179.0");
    lab.apply();
    let reports = tempfile::tempdir().expect("tempdir");
    let (code, v, log) = Background::drill(
        &lab,
        &["soak", "--load", "--duration", "60s"],
        reports.path(),
    )
    .finish();
    let sc = &v["scenarios"][0];
    assert_eq!(sc["scenario"], "soak", "exit {code}: {v}\n{log}");
    let loads: Vec<String> = sc["faults"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| format!("{}:{}", f["host"], f["load"]))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(loads.len(), 5, "CPU x2, disk, jitter x2: {loads:?}\n{log}");
    let m = &sc["metrics"];
    let d = &sc["disturbances"];
    eprintln!(
        "soak under load: {} requests, {} failed, longest gap {} ms; {d}; warnings {}",
        m["requests"], m["failed"], m["downtime_ms"], sc["warnings"]
    );
    assert!(
        m["ok"].as_u64().unwrap_or(0) > 300,
        "the probe ran: {m}\n{log}"
    );
    assert_eq!(d["vipMoves"], 0, "{d}\n{log}");
    assert_eq!(d["leaderChanges"], 0, "{d}\n{log}");
    assert_eq!(d["backendChanges"], 0, "{d}\n{log}");
    assert_eq!(m["failed"], 0, "{m}\n{log}");
    assert_eq!(sc["writes"]["lost"], serde_json::json!([]), "{log}");
    assert_eq!(sc["outcome"], "passed", "{}\n{log}", sc["message"]);
    assert_eq!(code, 0, "{log}");

    // The loads are gone: no busy loop, fsync writer or netem left on any host.
    for host in ["lb1", "lb2", "master1", "master2", "master3"] {
        let o = lab.exec(
            host,
            "ls /run/hakube-drill/*.pgid 2>/dev/null; tc qdisc show 2>/dev/null | grep netem; ls /var/lib/.hakube-soak-fsync 2>/dev/null; true",
        );
        assert_eq!(text(&o).trim(), "", "{host} kept a load");
    }
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let e = e.ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(": hakube-soak;")
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect();
    assert!(
        left.is_empty(),
        "load processes outlived the soak: {left:?}"
    );
}
