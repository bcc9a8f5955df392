//! `hakube status`: every HA layer, live, in one screen. Probes run in parallel, each with a
//! short timeout, so one dead host never stalls the rest.

pub mod doctor;
pub mod probes;

use crate::spec::{Cluster, EtcdManagement};
use crate::state::State;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub use probes::{Cert, EtcdMember, HaproxyServer, LbProbe};

/// Per-probe timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Down,
}

impl Health {
    pub fn exit_code(self) -> i32 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Down => 2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub layer: String,
    pub health: Health,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiProbe {
    pub target: String,
    pub address: String,
    pub readyz: Option<u16>,
    pub livez: Option<u16>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cluster: String,
    pub vip: String,
    /// Load balancers whose interfaces carry the VIP (None where the host could not be asked).
    pub vip_holders: Vec<String>,
    pub vip_unknown: Vec<String>,
    pub vip_answers: bool,
    pub lbs: Vec<LbProbe>,
    pub api: Vec<ApiProbe>,
    pub etcd: Vec<EtcdMember>,
    pub etcd_quota_bytes: u64,
    pub etcd_alarms: Vec<String>,
    pub certs: Vec<Cert>,
    /// Kubernetes nodes and whether they are Ready (kubeadm clusters, when they can be read).
    pub nodes: Option<Vec<(String, bool)>>,
    pub verdicts: Vec<Verdict>,
    pub overall: Health,
    pub took_ms: u128,
}

/// Gather everything, in parallel.
pub async fn gather(c: &Cluster) -> anyhow::Result<Status> {
    let start = std::time::Instant::now();
    let state = State::open(c)?;
    let etcd_tls = state.operator_etcd_tls()?;
    let api_ca = state.api_ca_pem();
    let stats_pw = state.stats_password();
    let (vip, lbs, api, etcd, certs, nodes) = tokio::join!(
        probes::vip(c),
        probes::haproxy(c, stats_pw.as_deref()),
        probes::api(c, api_ca.as_deref()),
        probes::etcd(c, &etcd_tls),
        probes::certs(c, api_ca.as_deref(), &etcd_tls),
        probes::nodes(c),
    );
    let (vip_holders, vip_unknown, vip_answers) = vip;
    let (etcd, etcd_alarms) = etcd;
    let mut s = Status {
        cluster: c.name.clone(),
        vip: c.control_plane_endpoint(),
        vip_holders,
        vip_unknown,
        vip_answers,
        lbs,
        api,
        etcd,
        etcd_quota_bytes: c.etcd.quota_backend_bytes,
        etcd_alarms,
        certs,
        nodes,
        verdicts: vec![],
        overall: Health::Healthy,
        took_ms: 0,
    };
    s.verdicts = verdicts(c, &s);
    s.overall = s
        .verdicts
        .iter()
        .map(|v| v.health)
        .max()
        .unwrap_or(Health::Healthy);
    s.took_ms = start.elapsed().as_millis();
    Ok(s)
}

fn v(layer: &str, health: Health, reason: impl Into<String>) -> Verdict {
    Verdict {
        layer: layer.into(),
        health,
        reason: reason.into(),
    }
}

pub fn verdicts(c: &Cluster, s: &Status) -> Vec<Verdict> {
    let mut out = Vec::new();
    // VIP
    out.push(match (s.vip_holders.len(), s.vip_answers) {
        (1, true) => v(
            "vip",
            Health::Healthy,
            format!("on {}, answering", s.vip_holders[0]),
        ),
        (1, false) => v(
            "vip",
            Health::Down,
            format!("on {} but nothing answers on {}", s.vip_holders[0], s.vip),
        ),
        (0, _) if !s.vip_unknown.is_empty() => v(
            "vip",
            Health::Down,
            format!(
                "on no reachable LB ({} unreachable)",
                s.vip_unknown.join(", ")
            ),
        ),
        (0, _) => v("vip", Health::Down, "on no load balancer"),
        (n, _) => v(
            "vip",
            Health::Degraded,
            format!(
                "split brain: on {n} load balancers ({})",
                s.vip_holders.join(", ")
            ),
        ),
    });
    // HAProxy
    let up_lbs: Vec<&LbProbe> = s.lbs.iter().filter(|l| l.error.is_none()).collect();
    let down_servers: Vec<String> = up_lbs
        .iter()
        .flat_map(|l| {
            l.servers
                .iter()
                .filter(|sv| !sv.status.starts_with("UP"))
                .map(move |sv| format!("{}@{} {}", sv.server, l.host, sv.status))
        })
        .collect();
    out.push(if up_lbs.is_empty() {
        v(
            "haproxy",
            Health::Down,
            "no load balancer's HAProxy answers",
        )
    } else if up_lbs.len() < s.lbs.len() {
        let dead: Vec<&str> = s
            .lbs
            .iter()
            .filter(|l| l.error.is_some())
            .map(|l| l.host.as_str())
            .collect();
        v(
            "haproxy",
            Health::Degraded,
            format!("HAProxy down on {}", dead.join(", ")),
        )
    } else if !down_servers.is_empty() {
        v(
            "haproxy",
            Health::Degraded,
            format!("backends not UP: {}", down_servers.join(", ")),
        )
    } else {
        v(
            "haproxy",
            Health::Healthy,
            format!("{} LBs, every API backend UP", up_lbs.len()),
        )
    });
    // API servers
    let via_vip = s.api.iter().find(|a| a.target == "VIP");
    let bad: Vec<&str> = s
        .api
        .iter()
        .filter(|a| a.target != "VIP" && a.readyz != Some(200))
        .map(|a| a.target.as_str())
        .collect();
    out.push(match via_vip {
        Some(a) if a.readyz != Some(200) => v(
            "api",
            Health::Down,
            format!(
                "/readyz through the VIP fails: {}",
                a.error.clone().unwrap_or_else(|| format!("{:?}", a.readyz))
            ),
        ),
        None => v("api", Health::Down, "no API probe ran"),
        _ if !bad.is_empty() => v(
            "api",
            Health::Degraded,
            format!("not ready: {}", bad.join(", ")),
        ),
        _ => v(
            "api",
            Health::Healthy,
            format!("{} API servers ready, VIP ready", s.api.len() - 1),
        ),
    });
    // etcd
    if c.etcd.management == EtcdManagement::Hakube || !s.etcd.is_empty() {
        let n = c.control_planes().count();
        let up: Vec<&EtcdMember> = s.etcd.iter().filter(|m| m.error.is_none()).collect();
        let leaders: std::collections::BTreeSet<u64> =
            up.iter().map(|m| m.leader).filter(|l| *l != 0).collect();
        let clusters: std::collections::BTreeSet<u64> = up.iter().map(|m| m.cluster_id).collect();
        let quorum = n / 2 + 1;
        let near_quota: Vec<String> = up
            .iter()
            .filter(|m| s.etcd_quota_bytes > 0 && m.db_size * 100 / s.etcd_quota_bytes >= 80)
            .map(|m| format!("{} {}%", m.name, m.db_size * 100 / s.etcd_quota_bytes))
            .collect();
        out.push(if up.len() < quorum {
            v(
                "etcd",
                Health::Down,
                format!("{} of {n} members answer: quorum ({quorum}) lost", up.len()),
            )
        } else if clusters.len() > 1 {
            v(
                "etcd",
                Health::Degraded,
                format!("members disagree on the cluster id: {clusters:x?}"),
            )
        } else if leaders.len() > 1 {
            v(
                "etcd",
                Health::Degraded,
                format!("members disagree on the leader: {leaders:x?}"),
            )
        } else if leaders.is_empty() {
            v("etcd", Health::Down, "no leader")
        } else if !s.etcd_alarms.is_empty() {
            v(
                "etcd",
                Health::Degraded,
                format!("alarm: {}", s.etcd_alarms.join(", ")),
            )
        } else if up.len() < n {
            let down: Vec<&str> = s
                .etcd
                .iter()
                .filter(|m| m.error.is_some())
                .map(|m| m.name.as_str())
                .collect();
            let risk = if up.len() == quorum {
                "; one more loss breaks quorum"
            } else {
                ""
            };
            v(
                "etcd",
                Health::Degraded,
                format!(
                    "{} of {n} members answer (down: {}){risk}",
                    up.len(),
                    down.join(", ")
                ),
            )
        } else if !near_quota.is_empty() {
            v(
                "etcd",
                Health::Degraded,
                format!("database over 80% of quota: {}", near_quota.join(", ")),
            )
        } else {
            v("etcd", Health::Healthy, format!("{n} members, one leader"))
        });
    }
    // Nodes (kubeadm only)
    if let Some(nodes) = &s.nodes {
        let not_ready: Vec<&str> = nodes
            .iter()
            .filter(|(_, r)| !r)
            .map(|(n, _)| n.as_str())
            .collect();
        out.push(if not_ready.is_empty() {
            v(
                "nodes",
                Health::Healthy,
                format!("{} nodes Ready", nodes.len()),
            )
        } else {
            v(
                "nodes",
                Health::Degraded,
                format!("not Ready: {}", not_ready.join(", ")),
            )
        });
    }
    // Certificates
    let expired: Vec<String> = s
        .certs
        .iter()
        .filter(|c| c.days_left < 0)
        .map(|c| format!("{} on {}", c.name, c.host))
        .collect();
    let soon: Vec<String> = s
        .certs
        .iter()
        .filter(|c| (0..30).contains(&c.days_left))
        .map(|c| format!("{} on {} ({} days)", c.name, c.host, c.days_left))
        .collect();
    out.push(if !expired.is_empty() {
        v(
            "certificates",
            Health::Down,
            format!("expired: {}", expired.join(", ")),
        )
    } else if !soon.is_empty() {
        v(
            "certificates",
            Health::Degraded,
            format!("expiring within 30 days: {}", soon.join(", ")),
        )
    } else if s.certs.is_empty() {
        v(
            "certificates",
            Health::Degraded,
            "no certificate could be read",
        )
    } else {
        let min = s.certs.iter().map(|c| c.days_left).min().unwrap_or(0);
        v(
            "certificates",
            Health::Healthy,
            format!("{} read, the first expires in {min} days", s.certs.len()),
        )
    });
    out
}

fn mark(h: Health) -> &'static str {
    match h {
        Health::Healthy => "✓ healthy",
        Health::Degraded => "! degraded",
        Health::Down => "✗ down",
    }
}

fn table(header: Vec<&str>) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(header);
    t
}

/// The human view: one table per layer, each with a one-line verdict.
pub fn render_text(s: &Status) -> String {
    let mut o = String::new();
    let verdict = |layer: &str| {
        s.verdicts
            .iter()
            .find(|v| v.layer == layer)
            .map(|v| format!("{} — {}", mark(v.health), v.reason))
            .unwrap_or_default()
    };
    o.push_str(&format!(
        "cluster {} — {} — {} in {} ms\n\n",
        s.cluster,
        s.vip,
        mark(s.overall),
        s.took_ms
    ));
    o.push_str(&format!("VIP {}: {}\n\n", s.vip, verdict("vip")));

    o.push_str(&format!("HAProxy: {}\n", verdict("haproxy")));
    let mut t = table(vec!["lb", "server", "status", "check", "since change"]);
    for l in &s.lbs {
        if let Some(e) = &l.error {
            t.add_row(vec![
                l.host.clone(),
                "-".into(),
                "unreachable".into(),
                e.clone(),
                "-".into(),
            ]);
        }
        for sv in &l.servers {
            t.add_row(vec![
                l.host.clone(),
                sv.server.clone(),
                sv.status.clone(),
                sv.check.clone(),
                format!("{}s", sv.last_change_s),
            ]);
        }
    }
    o.push_str(&format!("{t}\n\n"));

    o.push_str(&format!("API servers: {}\n", verdict("api")));
    let mut t = table(vec!["target", "address", "/readyz", "/livez", "latency"]);
    for a in &s.api {
        let code = |c: Option<u16>| c.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let lat = a
            .latency_ms
            .map(|l| format!("{l:.1} ms"))
            .unwrap_or_else(|| a.error.clone().unwrap_or_default());
        t.add_row(vec![
            a.target.clone(),
            a.address.clone(),
            code(a.readyz),
            code(a.livez),
            lat,
        ]);
    }
    o.push_str(&format!("{t}\n\n"));

    if let Some(vd) = s.verdicts.iter().find(|v| v.layer == "etcd") {
        o.push_str(&format!("etcd: {} — {}\n", mark(vd.health), vd.reason));
        let mut t = table(vec![
            "member",
            "endpoint",
            "leader",
            "term",
            "index",
            "db / quota",
            "error",
        ]);
        for m in &s.etcd {
            let db = match (m.db_size * 100).checked_div(s.etcd_quota_bytes) {
                Some(pct) => format!("{} KiB / {pct}%", m.db_size / 1024),
                None => format!("{} KiB", m.db_size / 1024),
            };
            let leader = if m.error.is_some() {
                "-".into()
            } else if m.is_leader {
                "yes".into()
            } else {
                format!("{:x}", m.leader)
            };
            t.add_row(vec![
                m.name.clone(),
                m.endpoint.clone(),
                leader,
                m.raft_term.to_string(),
                m.raft_index.to_string(),
                db,
                m.error.clone().unwrap_or_default(),
            ]);
        }
        o.push_str(&format!("{t}\n"));
        if !s.etcd_alarms.is_empty() {
            o.push_str(&format!("alarms: {}\n", s.etcd_alarms.join(", ")));
        }
        o.push('\n');
    }

    if let Some(nodes) = &s.nodes {
        o.push_str(&format!("Nodes: {}\n", verdict("nodes")));
        for (n, r) in nodes {
            o.push_str(&format!(
                "  {n:<20} {}\n",
                if *r { "Ready" } else { "NotReady" }
            ));
        }
        o.push('\n');
    }
    o.push_str(&format!("Certificates: {}\n", verdict("certificates")));
    let mut t = table(vec!["certificate", "host", "days left", "not after"]);
    for c in &s.certs {
        t.add_row(vec![
            c.name.clone(),
            c.host.clone(),
            c.days_left.to_string(),
            c.not_after.clone(),
        ]);
    }
    o.push_str(&format!("{t}\n"));
    o
}

/// Prometheus text format, so that the rendered alert rules have a source.
pub fn render_prometheus(s: &Status) -> String {
    let mut o = String::new();
    let cl = &s.cluster;
    let mut emit = |name: &str, help: &str, rows: Vec<(String, String)>| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in rows {
            o.push_str(&format!("{name}{{cluster=\"{cl}\"{labels}}} {value}\n"));
        }
    };
    emit(
        "hakube_vip_holders",
        "Load balancers that hold the API VIP (1 is healthy).",
        vec![(String::new(), s.vip_holders.len().to_string())],
    );
    emit(
        "hakube_vip_answering",
        "1 when the API answers through the VIP.",
        vec![(String::new(), (s.vip_answers as u8).to_string())],
    );
    emit(
        "hakube_layer_health",
        "Health per layer: 0 healthy, 1 degraded, 2 down.",
        s.verdicts
            .iter()
            .map(|v| {
                (
                    format!(",layer=\"{}\"", v.layer),
                    v.health.exit_code().to_string(),
                )
            })
            .collect(),
    );
    emit(
        "hakube_haproxy_server_up",
        "1 when HAProxy on the LB has the API server UP.",
        s.lbs
            .iter()
            .flat_map(|l| {
                l.servers.iter().map(move |sv| {
                    (
                        format!(",lb=\"{}\",server=\"{}\"", l.host, sv.server),
                        (sv.status.starts_with("UP") as u8).to_string(),
                    )
                })
            })
            .collect(),
    );
    emit(
        "hakube_apiserver_ready",
        "1 when /readyz answers 200.",
        s.api
            .iter()
            .map(|a| {
                (
                    format!(",target=\"{}\"", a.target),
                    ((a.readyz == Some(200)) as u8).to_string(),
                )
            })
            .collect(),
    );
    emit(
        "hakube_etcd_member_up",
        "1 when the etcd member answers its status.",
        s.etcd
            .iter()
            .map(|m| {
                (
                    format!(",member=\"{}\"", m.name),
                    (m.error.is_none() as u8).to_string(),
                )
            })
            .collect(),
    );
    emit(
        "hakube_certificate_expiry_seconds",
        "Seconds until the certificate served on the endpoint expires.",
        s.certs
            .iter()
            .map(|c| {
                (
                    format!(",certificate=\"{}\",host=\"{}\"", c.name, c.host),
                    c.seconds_left.to_string(),
                )
            })
            .collect(),
    );
    o
}

/// For JSON consumers: the verdicts keyed by layer.
pub fn verdict_map(s: &Status) -> BTreeMap<String, Health> {
    s.verdicts
        .iter()
        .map(|v| (v.layer.clone(), v.health))
        .collect()
}
