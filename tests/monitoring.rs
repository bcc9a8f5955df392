//! `lab up --monitoring` on a real lab (root only): the real Prometheus scrapes every HAProxy,
//! every etcd member and `hakube exporter`, all targets up; the etcd-member-down and
//! lb-failover drills see their expected alerts fire and resolve; `lab down` stops Prometheus
//! and the exporter by PID.

mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

fn get(url: &str) -> Result<Value, String> {
    let body = hakube::lab::monitoring::http_get(url, Duration::from_secs(5))
        .map_err(|e| format!("{e:#}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))
}

/// Percent-encoding for a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn drill(lab: &Lab, scenario: &str, reports: &std::path::Path) -> Value {
    // As tests/drill.rs: a drill refuses an unhealthy start, and SSH on 2 busy cores is slow.
    eventually("status healthy", Duration::from_secs(90), || {
        let o = lab.hakube(&["status", "-o", "json"]);
        match o.status.code() {
            Some(0) => Ok(()),
            c => Err(format!("exit {c:?}: {}", text(&o))),
        }
    });
    let o = Command::new(HAKUBE)
        .args(["drill", scenario, "-f"])
        .arg(lab.spec())
        .args(["-o", "json", "--report-dir"])
        .arg(reports)
        .stdin(Stdio::null())
        .output()
        .expect("run hakube drill");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_eq!(
        o.status.code(),
        Some(0),
        "drill {scenario} failed:\n{}\n{v:#}",
        String::from_utf8_lossy(&o.stderr)
    );
    v["scenarios"][0].clone()
}

/// Every expected alert of the drill fired, then resolved, after the injection.
fn fired_and_resolved(sc: &Value, want: &[&str]) {
    let alerts = sc["alerts"].as_array().cloned().unwrap_or_default();
    for name in want {
        let a = alerts
            .iter()
            .find(|a| a["alert"] == *name)
            .unwrap_or_else(|| panic!("{name} not in the drill's alerts: {alerts:?}"));
        let firing = a["firing_ms"].as_f64();
        let resolved = a["resolved_ms"].as_f64();
        assert!(
            firing.is_some_and(|t| t >= 0.0),
            "{name} did not fire after the injection: {a}"
        );
        assert!(
            resolved.zip(firing).is_some_and(|(r, f)| r > f),
            "{name} did not resolve after firing: {a}"
        );
    }
}

#[test]
fn prometheus_scrapes_every_target_and_drills_see_their_alerts() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lab = Lab::up_with("tmon2", "10.181.0", &["--monitoring"]);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir().join("state.json")).expect("lab state"),
    )
    .expect("state JSON");
    let url = state["monitoring"]["prometheusUrl"]
        .as_str()
        .expect("the lab records where Prometheus is")
        .to_string();
    let pids: Vec<i32> = ["prometheus", "exporterPid"]
        .iter()
        .map(|k| {
            state["monitoring"][k]["pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .expect("recorded PID")
        })
        .collect();
    lab.apply();

    // 2 HAProxies, 3 etcd members, 1 exporter: all up.
    eventually("every scrape target up", Duration::from_secs(90), || {
        let v = get(&format!("{url}/api/v1/targets"))?;
        let t = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let jobs = |j: &str| t.iter().filter(|x| x["labels"]["job"] == j).count();
        let down: Vec<String> = t
            .iter()
            .filter(|x| x["health"] != "up")
            .map(|x| format!("{} {}: {}", x["scrapeUrl"], x["health"], x["lastError"]))
            .collect();
        if (jobs("haproxy"), jobs("etcd"), jobs("hakube")) == (2, 3, 1) && down.is_empty() {
            Ok(())
        } else {
            Err(format!("{} targets, not up: {down:?}", t.len()))
        }
    });
    let status = lab.hakube(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("Prometheus at {url}")),
        "status shows where Prometheus is:\n{}",
        text(&status)
    );

    // Every query of the rendered Grafana dashboard returns data from the live Prometheus.
    let dashboard = lab.dir().join("monitoring").join("grafana-dashboard.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&dashboard).expect("dashboard"))
        .expect("dashboard JSON");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    for e in &exprs {
        eventually(&format!("data for {e}"), Duration::from_secs(60), || {
            let v = get(&format!("{url}/api/v1/query?query={}", encode(e)))?;
            let n = v["data"]["result"].as_array().map_or(0, Vec::len);
            if n > 0 { Ok(()) } else { Err(format!("{v}")) }
        });
    }

    let reports = tempfile::tempdir().expect("tempdir");
    let sc = drill(&lab, "etcd-member-down", reports.path());
    fired_and_resolved(&sc, &["EtcdMemberDown"]);
    let sc = drill(&lab, "lb-failover", reports.path());
    fired_and_resolved(&sc, &["HAProxyDown", "HakubeVIPMoved"]);

    drop(lab);
    // Killed by lab down: gone, or a zombie until its new parent reaps it.
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']));
        assert!(
            !running,
            "process {pid} (Prometheus or the exporter) outlived lab down: {state}"
        );
    }
}
