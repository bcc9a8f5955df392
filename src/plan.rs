//! Topology, failure tolerance, failover estimates and single points of failure.
//!
//! Failover times come from the configured timings with the upstream formulas:
//! keepalived master-down interval = 3 x advert + skew; HAProxy detection of a silent server =
//! up to inter, then fall x (check connect timeout + fastinter); etcd election = 1-2 x election
//! timeout.

use crate::render;
use crate::spec::{CheckKind, Cluster, Host};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Report {
    pub cluster: String,
    pub endpoint: String,
    pub kubernetes_version: String,
    pub kubeadm_api: String,
    pub bootstrap: String,
    pub layers: Vec<Layer>,
    /// Single points of failure.
    pub spofs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Layer {
    pub name: String,
    pub members: Vec<String>,
    /// How many member losses the layer survives.
    pub survives: usize,
    /// Best and worst case, in milliseconds, until clients are served again after a failure.
    pub failover_ms: (u64, u64),
    pub failover: String,
    pub how: String,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn fmt_ms(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else if v < 1000 {
        format!("{v}ms")
    } else {
        format!("{:.1}s", v as f64 / 1000.0)
    }
}

fn names(hosts: &[&Host]) -> Vec<String> {
    hosts.iter().map(|h| h.name.clone()).collect()
}

/// keepalived's skew time for a backup of priority `prio`: how long it waits after a
/// priority-0 advert (the master resigning) before it takes over.
pub fn skew_ms(version: u8, advert: Duration, prio: u8) -> u64 {
    let unit = if version == 3 { ms(advert) } else { 1000 };
    (256 - prio as u64) * unit / 256
}

/// keepalived's master-down interval for a backup of priority `prio`.
pub fn master_down_ms(version: u8, advert: Duration, prio: u8) -> u64 {
    3 * ms(advert) + skew_ms(version, advert, prio)
}

pub fn analyze(c: &Cluster) -> Report {
    let lbs: Vec<&Host> = c.load_balancers().collect();
    let cps: Vec<&Host> = c.control_planes().collect();
    let workers: Vec<&Host> = c.workers().collect();
    let v = &c.lb.vrrp;
    let hc = &c.lb.health_check;
    let mut layers = Vec::new();

    // The highest-priority backup takes over: after its master-down interval when the holder
    // goes silent, or after its skew time when the holder resigns (priority-0 advert).
    let mut prios: Vec<u8> = v.priorities.values().copied().collect();
    prios.sort_unstable_by(|a, b| b.cmp(a));
    let backup = prios.get(1).copied();
    let script_ms = render::TRACK_SCRIPT_FALL as u64 * render::TRACK_SCRIPT_INTERVAL_S * 1000;
    // A hung HAProxy: the next run of chk_haproxy, then its wait for an answer.
    let hung_ms = script_ms + render::HUNG_AFTER_MS;
    let skew_unit = if v.version == 3 { " x advert" } else { " s" };
    let (vip, hap) = match backup {
        Some(p) => {
            let down = master_down_ms(v.version, v.advert_interval, p);
            let skew = skew_ms(v.version, v.advert_interval, p);
            (
                (
                    (down, down + script_ms),
                    format!(
                        "host loss: 3 x advert {} + skew (256-{p})/256{skew_unit} = {}; no API server UP behind the holder's HAProxy: its track script fails (every {}s), it drops below the backup, then the same",
                        fmt_ms(ms(v.advert_interval)),
                        fmt_ms(down),
                        render::TRACK_SCRIPT_INTERVAL_S,
                    ),
                ),
                (
                    (skew, skew + hung_ms),
                    format!(
                        "HAProxy exited on the holder: systemd writes its track file, keepalived sees it at once (inotify), goes to FAULT and resigns with a priority-0 advert; the backup takes over after its skew (256-{p})/256{skew_unit} = {}; HAProxy hung: its track script fails first (every {}s, no answer within {})",
                        fmt_ms(skew),
                        render::TRACK_SCRIPT_INTERVAL_S,
                        fmt_ms(render::HUNG_AFTER_MS),
                    ),
                ),
            )
        }
        None => {
            let none = || {
                (
                    (0, 0),
                    "one load balancer: nothing takes the VIP over".to_string(),
                )
            };
            (none(), none())
        }
    };
    let range = |(a, b): (u64, u64)| {
        if backup.is_some() {
            format!("{}-{}", fmt_ms(a), fmt_ms(b))
        } else {
            "none".into()
        }
    };
    layers.push(Layer {
        name: format!(
            "VIP {} (keepalived VRRPv{}, vrid {})",
            c.lb.vip, v.version, v.router_id
        ),
        members: names(&lbs),
        survives: lbs.len().saturating_sub(1),
        failover_ms: vip.0,
        failover: range(vip.0),
        how: vip.1,
    });
    layers.push(Layer {
        name: format!("HAProxy :{}", c.lb.api_port),
        members: names(&lbs),
        survives: lbs.len().saturating_sub(1),
        failover_ms: hap.0,
        failover: range(hap.0),
        how: hap.1,
    });

    // API servers: a refused connection is retried at once (redispatch); a hung or partitioned
    // server is only taken out after its checks fail `fall` times.
    let etcd_survives = cps.len().saturating_sub(1) / 2;
    let (detect_best, detect_worst) = hc.silent_detect();
    let detect = ms(detect_worst);
    let check = match hc.kind {
        CheckKind::Https => "process stopped: 0 (refused connections are redispatched)",
        CheckKind::Tcp => "TCP check: an unready API server stays in rotation",
    };
    let api_best = 0;
    let api_how = format!(
        "{check}; host lost: fall {} checks time out after {} each (inter {}, fastinter {}) = {}-{}",
        hc.fall,
        fmt_ms(ms(hc.connect_timeout.min(hc.interval))),
        fmt_ms(ms(hc.interval)),
        fmt_ms(ms(match hc.kind {
            CheckKind::Https => hc.fastinter(),
            CheckKind::Tcp => hc.interval,
        })),
        fmt_ms(ms(detect_best)),
        fmt_ms(detect)
    );
    layers.push(Layer {
        name: format!("API servers :{}", c.kubernetes.api_server_port),
        members: names(&cps),
        survives: cps.len().saturating_sub(1).min(etcd_survives),
        failover_ms: (api_best, detect),
        failover: format!("{}-{}", fmt_ms(api_best), fmt_ms(detect)),
        how: api_how,
    });
    let el = ms(c.etcd.election_timeout);
    layers.push(Layer {
        name: format!("etcd ({} members, quorum {})", cps.len(), cps.len() / 2 + 1),
        members: names(&cps),
        survives: etcd_survives,
        failover_ms: (el, 2 * el),
        failover: format!("{}-{}", fmt_ms(el), fmt_ms(2 * el)),
        how: format!(
            "leader loss: 1-2 x election timeout {} (no writes meanwhile); follower loss: 0",
            fmt_ms(el)
        ),
    });
    layers.push(Layer {
        name: "workers".into(),
        members: names(&workers),
        survives: workers.len().saturating_sub(1),
        failover_ms: (0, 0),
        failover: "pods reschedule".into(),
        how: "capacity permitting; node-monitor grace period applies".into(),
    });

    let mut spofs = Vec::new();
    if lbs.len() == 1 {
        spofs.push(format!(
            "load balancer {} (holds the only copy of the VIP)",
            lbs[0].name
        ));
    }
    if cps.len() == 1 {
        spofs.push(format!(
            "control plane {} (the only API server and etcd member)",
            cps[0].name
        ));
    }
    if cps.len() == 2 {
        spofs.push("either control plane: 2 etcd members need both for quorum".into());
    }
    if workers.len() == 1 {
        spofs.push(format!(
            "worker {} (the only node for workloads)",
            workers[0].name
        ));
    }
    for h in &c.hosts {
        if h.roles.loadbalancer && h.roles.control_plane && lbs.len() <= 2 && cps.len() <= 3 {
            spofs.push(format!(
                "host {} carries both a load balancer and a control plane: losing it costs a VIP holder and an etcd member at once",
                h.name
            ));
        }
    }

    Report {
        cluster: c.name.clone(),
        endpoint: c.control_plane_endpoint(),
        kubernetes_version: format!("v{}", c.kubernetes.version),
        kubeadm_api: c.kubernetes.kubeadm_api.as_str().into(),
        bootstrap: format!("{:?}", c.kubernetes.bootstrap).to_lowercase(),
        layers,
        spofs,
    }
}

/// A row of boxes, centred in `width`, with a bus above connecting them to the row before.
fn draw_row(items: &[Vec<String>], width: usize, out: &mut Vec<String>, bus: bool) {
    if items.is_empty() {
        return;
    }
    let widths: Vec<usize> = items
        .iter()
        .map(|l| l.iter().map(|s| s.chars().count()).max().unwrap_or(0) + 4)
        .collect();
    let total: usize = widths.iter().sum::<usize>() + 3 * (widths.len() - 1);
    let pad = width.saturating_sub(total) / 2;
    let mut centers = Vec::new();
    let mut x = pad;
    for w in &widths {
        centers.push(x + w / 2);
        x += w + 3;
    }
    if bus {
        let mid = width / 2;
        let (lo, hi) = (centers[0].min(mid), centers[centers.len() - 1].max(mid));
        let mut line: Vec<char> = vec![' '; width.max(hi + 1)];
        for (i, ch) in line.iter_mut().enumerate().take(hi + 1).skip(lo) {
            *ch = if centers.contains(&i) && i == mid {
                '┼'
            } else if centers.contains(&i) {
                '┬'
            } else if i == mid {
                '┴'
            } else {
                '─'
            };
        }
        if lo == hi {
            line[mid] = '│';
        } else {
            line[lo] = if centers.contains(&lo) {
                '┌'
            } else {
                line[lo]
            };
            line[hi] = if centers.contains(&hi) {
                '┐'
            } else {
                line[hi]
            };
        }
        out.push(line.into_iter().collect::<String>().trim_end().to_string());
        let mut arrows: Vec<char> = vec![' '; width.max(hi + 1)];
        for c in &centers {
            arrows[*c] = '▼';
        }
        out.push(
            arrows
                .into_iter()
                .collect::<String>()
                .trim_end()
                .to_string(),
        );
    }
    let rows = items.iter().map(|l| l.len()).max().unwrap_or(0);
    let mut top = " ".repeat(pad);
    let mut bottom = " ".repeat(pad);
    for (i, w) in widths.iter().enumerate() {
        let sep = if i > 0 { "   " } else { "" };
        top.push_str(&format!("{sep}┌{}┐", "─".repeat(w - 2)));
        bottom.push_str(&format!("{sep}└{}┘", "─".repeat(w - 2)));
    }
    out.push(top);
    for r in 0..rows {
        let mut line = " ".repeat(pad);
        for (i, (l, w)) in items.iter().zip(&widths).enumerate() {
            let sep = if i > 0 { "   " } else { "" };
            let text = l.get(r).cloned().unwrap_or_default();
            let fill = w - 4 - text.chars().count();
            line.push_str(&format!("{sep}│ {text}{} │", " ".repeat(fill)));
        }
        out.push(line);
    }
    out.push(bottom);
}

/// The topology as a diagram, like the runbook's.
pub fn diagram(c: &Cluster) -> String {
    let width = 78;
    let mut out = Vec::new();
    let vip = vec![vec![
        format!("VIP {}", c.control_plane_endpoint()),
        format!(
            "keepalived VRRPv{} vrid {}",
            c.lb.vrrp.version, c.lb.vrrp.router_id
        ),
    ]];
    draw_row(&vip, width, &mut out, false);
    let lbs: Vec<Vec<String>> = c
        .load_balancers()
        .map(|h| {
            vec![
                format!("{} {}", h.name, h.address),
                format!(
                    "HAProxy prio {}",
                    c.lb.vrrp.priorities.get(&h.name).copied().unwrap_or(0)
                ),
            ]
        })
        .collect();
    draw_row(&lbs, width, &mut out, true);
    let cps: Vec<Vec<String>> = c
        .control_planes()
        .map(|h| {
            let mut v = vec![
                h.name.clone(),
                h.address.to_string(),
                "API server".into(),
                "etcd".into(),
            ];
            if h.roles.loadbalancer {
                v.push("(also LB)".into());
            }
            v
        })
        .collect();
    for chunk in cps.chunks(5) {
        draw_row(chunk, width, &mut out, true);
    }
    let workers: Vec<Vec<String>> = c
        .workers()
        .filter(|h| !h.roles.control_plane)
        .map(|h| vec![h.name.clone(), h.address.to_string()])
        .collect();
    for (i, chunk) in workers.chunks(5).enumerate() {
        draw_row(chunk, width, &mut out, i == 0);
    }
    out.join("\n") + "\n"
}

pub fn render_text(c: &Cluster, r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Cluster {} — endpoint {} — Kubernetes {} ({}, bootstrap {})\n\n",
        r.cluster, r.endpoint, r.kubernetes_version, r.kubeadm_api, r.bootstrap
    ));
    s.push_str(&diagram(c));
    s.push('\n');
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "layer",
        "members",
        "survives losing",
        "failover",
        "how it is computed",
    ]);
    for l in &r.layers {
        t.add_row(vec![
            l.name.clone(),
            if l.members.is_empty() {
                "-".into()
            } else {
                l.members.join(", ")
            },
            format!("{} of {}", l.survives, l.members.len()),
            l.failover.clone(),
            l.how.clone(),
        ]);
    }
    t.set_content_arrangement(ContentArrangement::Dynamic);
    t.set_width(120);
    s.push_str(&t.to_string());
    s.push('\n');
    if r.spofs.is_empty() {
        s.push_str("\nSingle points of failure: none.\n");
    } else {
        s.push_str("\nSingle points of failure:\n");
        for p in &r.spofs {
            s.push_str(&format!("  - {p}\n"));
        }
    }
    s
}
