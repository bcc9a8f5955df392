//! The drill's reports: a table per scenario, a summary table, a text timeline and the files
//! written to the report folder (timeline, SVG chart, JSON with every request).

use super::metrics::{Stream, failure_runs};
use super::watch::What;
use super::{Outcome, ScenarioReport};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// `1.23 s`
pub fn secs(ms: f64) -> String {
    format!("{:.2} s", ms / 1000.0)
}

/// `+1.234 s` (relative to the injection)
pub fn offset(ms: f64) -> String {
    format!("{:+.3} s", ms / 1000.0)
}

fn opt(v: Option<f64>) -> String {
    v.map(offset).unwrap_or_else(|| "—".into())
}

fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t
}

pub fn outcome_mark(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed => "✓ passed",
        Outcome::Skipped => "- skipped",
        Outcome::Refused => "✗ refused",
        Outcome::Failed => "✗ FAILED",
        Outcome::Interrupted => "! interrupted",
        Outcome::Error => "✗ error",
    }
}

/// What the watcher saw first, or `?`.
fn known<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "?".into(), T::to_string)
}

/// `+1.234 s lb1 → lb2` for each change of one kind.
fn transitions(r: &ScenarioReport, what: What) -> Vec<String> {
    r.changes
        .iter()
        .filter(|c| c.what() == what)
        .map(|c| {
            let (from, to) = c.from_to();
            format!("{} {from} → {to}", offset(c.t_ms))
        })
        .collect()
}

/// The scenario's table: what was done, when, and what clients saw.
pub fn scenario_text(r: &ScenarioReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} on {}: {}",
        r.scenario.name(),
        r.cluster,
        outcome_mark(r.outcome)
    );
    if let Some(m) = &r.message {
        let _ = writeln!(o, "  {}", m.replace('\n', "\n  "));
    }
    for w in &r.warnings {
        let _ = writeln!(o, "  warning: {w}");
    }
    let Some(m) = &r.metrics else {
        return o;
    };
    let mut t = table();
    let fault = r.fault_text();
    let target = format!(
        "{} ({})",
        r.target.clone().unwrap_or_default(),
        r.chosen_as.clone().unwrap_or_default()
    );
    let per_stream = |f: &dyn Fn(Stream) -> String| {
        Stream::ALL
            .iter()
            .filter(|s| m.streams.contains_key(s))
            .map(|s| format!("{} {}", s.name(), f(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("fault", format!("{fault}, held {}", secs(r.hold_ms as f64))),
        ("target", target),
        ("via", r.via.to_string()),
        (
            "injected at",
            format!(
                "{} (took {})",
                r.injected_at.clone().unwrap_or_default(),
                secs(r.injected_after_ms.unwrap_or(0.0))
            ),
        ),
        (
            "detected at",
            match (&r.detected_after_ms, &r.detected_by) {
                (Some(t), Some(by)) => format!("{}: {by}", offset(*t)),
                _ => "— (no VIP move, leader change or API server marked DOWN)".into(),
            },
        ),
        ("restored at", opt(r.restored_after_ms)),
        (
            "recovered at",
            match r.recovered_after_ms {
                Some(t) => format!("{} (status healthy, clients answered)", offset(t)),
                None => "— NOT RECOVERED".into(),
            },
        ),
        (
            "client-visible downtime",
            format!(
                "{} (longest gap without a successful request; {})",
                secs(m.downtime_ms),
                per_stream(&|s| secs(m.streams[&s].longest_gap_ms))
            ),
        ),
        (
            "first success after fault",
            format!(
                "{} ({})",
                opt(m.first_success_after_fault_ms),
                per_stream(&|s| opt(m.streams[&s].first_success_after_fault_ms))
            ),
        ),
        (
            "requests",
            format!(
                "{} ok, {} failed ({})",
                m.ok,
                m.failed,
                per_stream(&|s| {
                    let x = &m.streams[&s];
                    let extra = if s == Stream::KeepAlive {
                        format!(", {} connection(s), {} retried", x.connections, x.retried)
                    } else {
                        String::new()
                    };
                    format!("{}/{} failed{extra}", x.failed, x.requests)
                })
            ),
        ),
        (
            "latency",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                m.latency_p50_ms, m.latency_p99_ms, m.latency_max_ms
            ),
        ),
    ];
    let alert_rows: Vec<String> = r
        .alerts
        .iter()
        .map(|a| {
            format!(
                "{}: pending {}, firing {}, resolved {}{}",
                a.alert,
                opt(a.pending_ms),
                opt(a.firing_ms),
                opt(a.resolved_ms),
                if a.active_before {
                    " (already active before the fault)"
                } else {
                    ""
                }
            )
        })
        .collect();
    for a in &alert_rows {
        rows.push(("alert", a.clone()));
    }
    if let Some(d) = &r.disturbances {
        rows.push(("disturbances", d.to_string()));
    }
    let moves = transitions(r, What::Vip);
    rows.push((
        "VIP",
        format!(
            "on {} at the start{}{}",
            known(&r.initial_vip),
            r.vip_moved_after_ms
                .map(|t| format!("; moved after {}", secs(t)))
                .unwrap_or_default(),
            if moves.is_empty() {
                "; did not move".to_string()
            } else {
                format!("; {}", moves.join(", "))
            }
        ),
    ));
    let leaders = transitions(r, What::Leader);
    rows.push((
        "etcd leader",
        format!(
            "{} at the start; {}",
            known(&r.initial_leader),
            if leaders.is_empty() {
                "no change".to_string()
            } else {
                leaders.join(", ")
            }
        ),
    ));
    if let Some(w) = &r.writes {
        rows.push((
            "lost writes",
            if w.method.starts_with("none") {
                format!("n/a ({})", w.method)
            } else {
                format!(
                    "{} of {} acknowledged writes (read back from {}; {} failed for the client, {} of those stored anyway)",
                    w.lost.len(),
                    w.acknowledged,
                    w.method,
                    w.failed,
                    w.failed_but_stored
                )
            },
        ));
    }
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    let _ = writeln!(o, "{t}");
    o
}

/// One row per scenario.
pub fn summary_text(rs: &[ScenarioReport]) -> String {
    let mut t = table();
    t.set_header(vec![
        "scenario",
        "result",
        "target",
        "injected at",
        "detected",
        "restored",
        "recovered",
        "downtime",
        "failed requests",
        "lost writes",
    ]);
    for r in rs {
        let m = r.metrics.as_ref();
        t.add_row(vec![
            r.scenario.name().to_string(),
            outcome_mark(r.outcome).to_string(),
            r.target.clone().unwrap_or_else(|| "—".into()),
            r.injected_at
                .as_deref()
                .and_then(|s| s.split(' ').nth(1))
                .unwrap_or("—")
                .to_string(),
            opt(r.detected_after_ms),
            opt(r.restored_after_ms),
            opt(r.recovered_after_ms),
            m.map(|m| secs(m.downtime_ms)).unwrap_or_else(|| "—".into()),
            m.map(|m| format!("{} of {}", m.failed, m.requests))
                .unwrap_or_else(|| "—".into()),
            r.writes
                .as_ref()
                .filter(|w| !w.method.starts_with("none"))
                .map(|w| w.lost.len().to_string())
                .unwrap_or_else(|| "—".into()),
        ]);
    }
    format!("{t}\n")
}

/// The human timeline: every event in order, t = 0 at the injection.
pub fn timeline(r: &ScenarioReport) -> String {
    let mut ev: Vec<(f64, String)> = Vec::new();
    ev.push((
        r.probe_start_ms,
        "probe started: a request every 50 ms on a new connection and on a kept-alive one, through the VIP".into(),
    ));
    ev.push((
        r.probe_start_ms,
        format!(
            "VIP on {}; etcd leader {}",
            known(&r.initial_vip),
            known(&r.initial_leader)
        ),
    ));
    ev.push((0.0, format!("inject: {}", r.fault_text())));
    if let Some(t) = r.injected_after_ms {
        ev.push((t, "injected".into()));
    }
    for c in &r.changes {
        let (from, to) = c.from_to();
        let text = match c.what() {
            What::Vip => format!("VIP {from} → {to}"),
            What::Leader => format!("etcd leader {from} → {to}"),
            What::Backend => format!("HAProxy: {} {from} → {to}", c.subject()),
        };
        ev.push((c.t_ms, text));
    }
    for (stream, from, to, n, why) in failure_runs(&r.samples) {
        ev.push((
            from,
            format!(
                "{}: {n} request(s) failed until {}: {why}",
                stream.name(),
                offset(to)
            ),
        ));
    }
    for s in r.samples.iter().filter(|s| s.retried) {
        ev.push((
            s.start_ms,
            format!(
                "{}: the kept-alive connection closed before an answer; sent again on a new one ({})",
                s.stream.name(),
                if s.ok { "ok" } else { "failed" }
            ),
        ));
    }
    if let Some(t) = r.restored_after_ms {
        ev.push((t, "restored".into()));
    }
    if let Some(t) = r.recovered_after_ms {
        ev.push((
            t,
            "recovered: status healthy and every client request answered".into(),
        ));
    }
    ev.push((r.probe_end_ms, "probe stopped".into()));
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut o = format!(
        "hakube drill {} on {} — injected at {} (t = 0)\n",
        r.scenario.name(),
        r.cluster,
        r.injected_at.clone().unwrap_or_default()
    );
    for (t, text) in ev {
        let _ = writeln!(o, "  {:>10}  {text}", offset(t));
    }
    if let Some(m) = &r.message {
        let _ = writeln!(o, "result: {} — {m}", outcome_mark(r.outcome));
    } else {
        let _ = writeln!(o, "result: {}", outcome_mark(r.outcome));
    }
    o
}

/// Write the scenario's timeline, chart and JSON (with every request) into `dir`.
pub fn write_files(dir: &Path, r: &mut ScenarioReport) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = r.scenario.name();
    let files = [
        (format!("{name}.timeline.txt"), timeline(r)),
        (format!("{name}.svg"), super::svg::chart(r)),
    ];
    r.files.clear();
    for (f, body) in files {
        let p = dir.join(&f);
        std::fs::write(&p, body).with_context(|| format!("cannot write {}", p.display()))?;
        r.files.push(p.display().to_string());
    }
    let p = dir.join(format!("{name}.json"));
    r.files.push(p.display().to_string());
    let mut v = serde_json::to_value(&*r)?;
    v["samples"] = serde_json::to_value(&r.samples)?;
    std::fs::write(&p, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}
