//! `hakube status`: every HA layer, live, in one screen. Probes run in parallel, each with a
//! short timeout, so one dead host never stalls the rest.

pub mod backups;
pub mod doctor;
pub mod probes;

use crate::spec::{Cluster, EtcdManagement};
use crate::state::State;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use probes::{
    Cert, Conns, EtcdMember, HaproxyServer, LbProbe, ProcessState, StatsError, StatsFailure,
};

/// Per-probe timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// A layer's verdict. `Unknown` is a layer hakube could not check (it says what and why): not
/// healthy, but not known to be broken either. The order is how the overall verdict is the
/// worst of the layers: a known degradation outranks not knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unknown,
    Degraded,
    Down,
}

impl Health {
    /// 0 healthy, 1 degraded or unknown, 2 down.
    pub fn exit_code(self) -> i32 {
        match self {
            Health::Healthy => 0,
            Health::Unknown | Health::Degraded => 1,
            Health::Down => 2,
        }
    }

    /// The `hakube_layer_health` value: 0 healthy, 1 degraded, 2 down, 3 unknown.
    pub fn metric(self) -> i32 {
        match self {
            Health::Unknown => 3,
            h => h.exit_code(),
        }
    }
}

/// A host that could not be asked, and why, in the terms of [`crate::transport::Error`].
#[derive(Debug, Clone, Serialize)]
pub struct Unobserved {
    pub host: String,
    /// The SSH failure's cause, when the connection was what failed.
    pub cause: Option<crate::transport::ConnectCause>,
    /// What went wrong, short.
    pub why: String,
    /// How to fix it.
    pub help: String,
    /// sudo's words when it refused to run the command (the SSH user lacks passwordless sudo).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sudo_refused: Option<String>,
}

impl Unobserved {
    pub fn from_transport(host: &str, e: &crate::transport::Error) -> Unobserved {
        use crate::transport::Error;
        match e {
            Error::Connect(ce) => Unobserved {
                host: host.into(),
                cause: Some(ce.cause),
                why: format!("{} ({})", ce.cause.summary(), ce.detail),
                help: ce.help(),
                sudo_refused: None,
            },
            Error::SudoRefused { user, detail, .. } => Unobserved {
                host: host.into(),
                cause: None,
                why: format!("sudo refused: {detail}"),
                help: format!("give {user} passwordless sudo (NOPASSWD), or connect as root"),
                sudo_refused: Some(detail.clone()),
            },
            other => Unobserved {
                host: host.into(),
                cause: None,
                why: other.to_string(),
                help: String::new(),
                sudo_refused: None,
            },
        }
    }

    /// `host (why)`, for verdict lines.
    pub fn short(&self) -> String {
        match self.cause {
            Some(c) => format!("{} ({})", self.host, c.summary()),
            None => format!("{} ({})", self.host, self.why),
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
    /// Load balancers whose interfaces carry the VIP.
    pub vip_holders: Vec<String>,
    /// Load balancers that could not be asked, and why.
    pub vip_unknown: Vec<Unobserved>,
    pub vip_answers: bool,
    pub lbs: Vec<LbProbe>,
    pub api: Vec<ApiProbe>,
    pub etcd: Vec<EtcdMember>,
    pub etcd_quota_bytes: u64,
    pub etcd_alarms: Vec<String>,
    pub certs: Vec<Cert>,
    /// Kubernetes nodes and whether they are Ready (kubeadm clusters, when they can be read).
    pub nodes: Option<Vec<(String, bool)>>,
    /// The age of the last verified backup (operator and hosts); `status` only, not apply's.
    pub backups: Option<backups::Backups>,
    pub verdicts: Vec<Verdict>,
    /// How hakube reached each layer (`spec.access`): `direct`, or `via HOST, ...`.
    pub reached: BTreeMap<String, String>,
    pub overall: Health,
    pub took_ms: u128,
    /// The Prometheus that runs the rendered rules (`spec.monitoring.prometheusUrl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
}

impl Status {
    /// `layer: reason` for every layer that is not healthy.
    pub fn unhealthy(&self) -> Vec<String> {
        self.verdicts
            .iter()
            .filter(|v| v.health != Health::Healthy)
            .map(|v| format!("{}: {}", v.layer, v.reason))
            .collect()
    }
}

/// What status needs to read the cluster: client TLS for etcd, the CA the API servers'
/// certificates chain to, and the stats password.
pub struct Creds {
    pub etcd_tls: crate::etcd::Tls,
    pub api_ca: Option<String>,
    pub stats_pw: Option<String>,
}

impl Creds {
    /// From the operator state (status, doctor, and apply's verify alike).
    pub fn from_state(state: &State) -> anyhow::Result<Creds> {
        Ok(Creds {
            etcd_tls: state.operator_etcd_tls()?,
            api_ca: state.api_ca_pem(),
            stats_pw: state.stats_password(),
        })
    }
}

/// Gather everything, in parallel.
pub async fn gather(c: &Cluster) -> anyhow::Result<Status> {
    let creds = Creds::from_state(&State::open(c)?)?;
    crate::transport::tunnel::setup(c).await;
    Ok(observe(c, &creds, Conns::Fresh, Scope::Full).await)
}

/// How each probed layer was reached, after the probes ran.
fn reached(c: &Cluster) -> BTreeMap<String, String> {
    use crate::transport::tunnel;
    let at = |port: u16, hosts: &mut dyn Iterator<Item = &crate::spec::Host>| -> Vec<SocketAddr> {
        hosts.map(|h| SocketAddr::new(h.address, port)).collect()
    };
    let mut m = BTreeMap::new();
    m.insert(
        "vip".to_string(),
        tunnel::reached(&[SocketAddr::new(c.lb.vip, c.lb.api_port)]),
    );
    m.insert(
        "haproxy".into(),
        tunnel::reached(&at(c.lb.stats.port, &mut c.load_balancers())),
    );
    m.insert(
        "api".into(),
        tunnel::reached(&at(c.kubernetes.api_server_port, &mut c.control_planes())),
    );
    m.insert(
        "etcd".into(),
        tunnel::reached(&at(c.etcd.client_port, &mut c.control_planes())),
    );
    m
}

/// How much to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything `status` shows.
    Full,
    /// What converges after a change (VIP, HAProxy, API servers, and etcd when hakube runs
    /// it): `apply`'s verify polls this, so it skips certificates and nodes.
    Convergence,
}

/// Probe every layer in parallel and give each its verdict.
pub async fn observe(c: &Cluster, creds: &Creds, conns: Conns<'_>, scope: Scope) -> Status {
    let start = std::time::Instant::now();
    let full = scope == Scope::Full;
    let (views, answers, lbs, api, etcd, certs, nodes, backups) = tokio::join!(
        probes::lb_views(c, conns),
        probes::vip_answers(c),
        probes::haproxy(c, creds.stats_pw.as_deref()),
        probes::api(c, creds.api_ca.as_deref()),
        probes::etcd(c, &creds.etcd_tls),
        async {
            if full {
                probes::certs(c, creds.api_ca.as_deref(), &creds.etcd_tls).await
            } else {
                vec![]
            }
        },
        async { if full { probes::nodes(c).await } else { None } },
        async {
            if full {
                Some(backups::gather(c, conns).await)
            } else {
                None
            }
        },
    );
    let (etcd, etcd_alarms) = etcd;
    let mut s = Status {
        cluster: c.name.clone(),
        vip: c.control_plane_endpoint(),
        vip_holders: vec![],
        vip_unknown: vec![],
        vip_answers: answers,
        lbs,
        api,
        etcd,
        etcd_quota_bytes: c.etcd.quota_backend_bytes,
        etcd_alarms,
        certs,
        nodes,
        backups,
        verdicts: vec![],
        reached: reached(c),
        overall: Health::Healthy,
        took_ms: 0,
        prometheus: c.monitoring.prometheus_url.clone(),
    };
    merge_lb_views(&mut s, views);
    s.verdicts = verdicts(c, &s);
    s.verdicts
        .extend(s.backups.as_ref().and_then(backups::verdict));
    if !full {
        // etcd that kubeadm runs has kubeadm's own CA, which hakube's client cannot use.
        let etcd_ours = c.etcd.management == EtcdManagement::Hakube;
        s.verdicts.retain(|v| match v.layer.as_str() {
            "vip" | "haproxy" | "api" => true,
            "etcd" => etcd_ours,
            _ => false,
        });
    }
    s.overall = s
        .verdicts
        .iter()
        .map(|v| v.health)
        .max()
        .unwrap_or(Health::Healthy);
    s.took_ms = start.elapsed().as_millis();
    s
}

/// Put what SSH showed on each LB into the status: the VIP's holders, and HAProxy's process
/// next to a stats page that did not answer.
fn merge_lb_views(s: &mut Status, views: Vec<(String, Result<probes::LbView, Unobserved>)>) {
    for (host, view) in views {
        let stats_err = s
            .lbs
            .iter_mut()
            .find(|l| l.host == host)
            .and_then(|l| l.error.as_mut());
        match view {
            Ok(v) => {
                if v.holds_vip {
                    s.vip_holders.push(host.clone());
                }
                if let Some(e) = stats_err {
                    e.process = v.haproxy;
                }
            }
            Err(u) => {
                if let Some(e) = stats_err {
                    e.ssh = Some(u.clone());
                }
                s.vip_unknown.push(u);
            }
        }
    }
}

fn v(layer: &str, health: Health, reason: impl Into<String>) -> Verdict {
    Verdict {
        layer: layer.into(),
        health,
        reason: reason.into(),
    }
}

/// Where the VIP is. Not knowing where it is (no LB could be asked) while it answers is
/// `Unknown`, not `Down`.
pub fn vip_verdict(s: &Status) -> Verdict {
    let unknown = || {
        s.vip_unknown
            .iter()
            .map(Unobserved::short)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let via_vip_ready = s
        .api
        .iter()
        .any(|a| a.target == "VIP" && a.readyz == Some(200));
    let answering = s.vip_answers || via_vip_ready;
    match s.vip_holders.len() {
        1 if !answering => v(
            "vip",
            Health::Down,
            format!("on {} but nothing answers on {}", s.vip_holders[0], s.vip),
        ),
        1 if s.vip_unknown.is_empty() => v(
            "vip",
            Health::Healthy,
            format!("on {}, answering", s.vip_holders[0]),
        ),
        1 => v(
            "vip",
            Health::Healthy,
            format!(
                "on {}, answering; not checked: {}",
                s.vip_holders[0],
                unknown()
            ),
        ),
        0 if s.vip_unknown.is_empty() => v("vip", Health::Down, "on no load balancer"),
        0 if answering => v(
            "vip",
            Health::Unknown,
            format!(
                "answers on {}, but its holder is unknown: cannot ask {}",
                s.vip,
                unknown()
            ),
        ),
        0 => v(
            "vip",
            Health::Down,
            format!(
                "nothing answers on {}, and no reachable LB holds it (cannot ask {})",
                s.vip,
                unknown()
            ),
        ),
        n => v(
            "vip",
            Health::Degraded,
            format!(
                "split brain: on {n} load balancers ({})",
                s.vip_holders.join(", ")
            ),
        ),
    }
}

/// What an LB's HAProxy is doing, from its stats page and (when that fails) its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbState {
    /// The stats page answered.
    Serving,
    /// Not running.
    Dead(String),
    /// Running, but not answering: stopped by a signal, or stuck.
    Hung(String),
    /// Neither the stats page nor SSH answers: the LB host is down or cut off.
    Unreachable(String),
    /// Could not be checked (no stats page, or its process could not be seen).
    Unknown(String),
}

/// The reasons describe HAProxy's process or host; the stats page's own error is shown next
/// to them (status's table, doctor's evidence).
pub fn lb_state(l: &LbProbe) -> LbState {
    let Some(e) = &l.error else {
        return LbState::Serving;
    };
    if e.kind == StatsFailure::NotConfigured {
        return LbState::Unknown(e.message.clone());
    }
    match (&e.process, e.kind) {
        (Some(p), _) if !p.running() => LbState::Dead(format!("not running ({})", p.describe())),
        (Some(p), _) if !p.stopped().is_empty() => LbState::Hung(format!(
            "systemctl: {}, but its processes are stopped by a signal (pid state: {})",
            p.active,
            p.procs
                .iter()
                .map(|(pid, st)| format!("{pid} {st}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (Some(p), StatsFailure::TimedOut) => {
            LbState::Hung(format!("alive ({}) but not answering", p.describe()))
        }
        (Some(p), _) => LbState::Dead(format!(
            "alive ({}) but not serving its stats page",
            p.describe()
        )),
        // The host answers but nothing listens: HAProxy is not running.
        (None, StatsFailure::Refused) => LbState::Dead("nothing listens on its stats port".into()),
        (None, _) => match &e.ssh {
            Some(u) if u.cause.is_some_and(|c| c.is_network()) => {
                LbState::Unreachable(format!("its host does not answer SSH either: {}", u.why))
            }
            Some(u) => LbState::Unknown(format!("its process could not be checked: {}", u.why)),
            None => LbState::Dead("its service state could not be read".into()),
        },
    }
}

/// The HAProxy layer: every LB serving, every API backend UP in each.
pub fn haproxy_verdict(lbs: &[LbProbe]) -> Verdict {
    let states: Vec<(&str, LbState)> = lbs.iter().map(|l| (l.host.as_str(), lb_state(l))).collect();
    let serving = states
        .iter()
        .filter(|(_, st)| *st == LbState::Serving)
        .count();
    let not_serving: Vec<String> = states
        .iter()
        .filter_map(|(h, st)| match st {
            LbState::Serving | LbState::Unknown(_) => None,
            LbState::Dead(why) => Some(format!("HAProxy down on {h} ({why})")),
            LbState::Hung(why) => Some(format!("HAProxy hung on {h} ({why})")),
            LbState::Unreachable(why) => Some(format!("{h} unreachable ({why})")),
        })
        .collect();
    let unknown: Vec<String> = states
        .iter()
        .filter_map(|(h, st)| match st {
            LbState::Unknown(why) => Some(format!("{h}: {why}")),
            _ => None,
        })
        .collect();
    let down_servers: Vec<String> = lbs
        .iter()
        .filter(|l| l.error.is_none())
        .flat_map(|l| {
            l.servers
                .iter()
                .filter(|sv| !sv.status.is_up())
                .map(move |sv| format!("{}@{} {}", sv.server, l.host, sv.status))
        })
        .collect();
    if serving == 0 && !not_serving.is_empty() {
        let mut all = not_serving;
        all.extend(unknown);
        v(
            "haproxy",
            Health::Down,
            format!("no load balancer's HAProxy answers: {}", all.join("; ")),
        )
    } else if !not_serving.is_empty() {
        v("haproxy", Health::Degraded, not_serving.join("; "))
    } else if !down_servers.is_empty() {
        v(
            "haproxy",
            Health::Degraded,
            format!("backends not UP: {}", down_servers.join(", ")),
        )
    } else if !unknown.is_empty() {
        v(
            "haproxy",
            Health::Unknown,
            format!("not checked: {}", unknown.join("; ")),
        )
    } else {
        v(
            "haproxy",
            Health::Healthy,
            format!("{serving} LBs, every API backend UP"),
        )
    }
}

pub fn verdicts(c: &Cluster, s: &Status) -> Vec<Verdict> {
    let mut out = Vec::new();
    out.push(vip_verdict(s));
    out.push(haproxy_verdict(&s.lbs));
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
        Health::Unknown => "? unknown",
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
    if s.reached.values().any(|r| r != "direct") {
        let how = |k: &str| s.reached.get(k).map(String::as_str).unwrap_or("-");
        o.push_str(&format!(
            "reached through SSH (spec.access): VIP {}; HAProxy {}; API servers {}; etcd {}\n\n",
            how("vip"),
            how("haproxy"),
            how("api"),
            how("etcd")
        ));
    }
    o.push_str(&format!("VIP {}: {}\n\n", s.vip, verdict("vip")));

    o.push_str(&format!("HAProxy: {}\n", verdict("haproxy")));
    let mut t = table(vec!["lb", "server", "status", "check", "since change"]);
    for l in &s.lbs {
        if let Some(e) = &l.error {
            let what = match lb_state(l) {
                LbState::Serving => "-",
                LbState::Dead(_) => "down",
                LbState::Hung(_) => "hung",
                LbState::Unreachable(_) => "unreachable",
                LbState::Unknown(_) => "unknown",
            };
            t.add_row(vec![
                l.host.clone(),
                "-".into(),
                what.into(),
                e.message.clone(),
                "-".into(),
            ]);
        }
        for sv in &l.servers {
            t.add_row(vec![
                l.host.clone(),
                sv.server.clone(),
                sv.status.to_string(),
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
    if let Some(b) = &s.backups {
        o.push_str(&backups::render_text(b, &verdict("backup")));
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
    if let Some(p) = &s.prometheus {
        o.push_str(&format!(
            "Monitoring: Prometheus at {p} (alerts: {p}/alerts)\n"
        ));
    }
    o
}

/// Label pairs of one sample (`cluster` is added to each).
pub type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Registers the status's metrics: the one list behind `status --prometheus` and
/// `hakube exporter`, so the rendered alerts have a source.
pub fn register_metrics(s: &Status, reg: &mut prometheus_client::registry::Registry) {
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    let cl = s.cluster.clone();
    // prometheus-client adds the final period to each help text.
    let mut emit = |name: &str, help: &str, rows: Vec<(Labels, f64)>| {
        let fam = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (mut labels, value) in rows {
            labels.insert(0, ("cluster".into(), cl.clone()));
            fam.get_or_create(&labels).set(value);
        }
        reg.register(name, help, fam);
    };
    let unknown: Vec<&str> = s.vip_unknown.iter().map(|u| u.host.as_str()).collect();
    emit(
        "hakube_vip_holders",
        "Load balancers confirmed over SSH to hold the API VIP (1 is healthy; see hakube_vip_holders_unknown)",
        vec![(vec![], s.vip_holders.len() as f64)],
    );
    emit(
        "hakube_vip_holders_unknown",
        "Load balancers that could not be asked over SSH whether they hold the VIP",
        vec![(vec![], s.vip_unknown.len() as f64)],
    );
    emit(
        "hakube_vip_holder",
        "1 when the load balancer holds the VIP, 0 when it does not (absent when it could not be asked)",
        s.lbs
            .iter()
            .filter(|lb| !unknown.contains(&lb.host.as_str()))
            .map(|lb| {
                let holds = s.vip_holders.contains(&lb.host);
                (l(&[("lb", &lb.host)]), f64::from(u8::from(holds)))
            })
            .collect(),
    );
    emit(
        "hakube_vip_answering",
        "1 when the API answers through the VIP",
        vec![(vec![], f64::from(u8::from(s.vip_answers)))],
    );
    emit(
        "hakube_layer_health",
        "Health per layer: 0 healthy, 1 degraded, 2 down, 3 unknown (could not be checked)",
        s.verdicts
            .iter()
            .map(|v| (l(&[("layer", &v.layer)]), f64::from(v.health.metric())))
            .collect(),
    );
    emit(
        "hakube_haproxy_server_up",
        "1 when HAProxy on the LB has the API server UP",
        s.lbs
            .iter()
            .flat_map(|lb| {
                lb.servers.iter().map(move |sv| {
                    let up = sv.status.is_up();
                    (
                        l(&[("lb", &lb.host), ("server", &sv.server)]),
                        f64::from(u8::from(up)),
                    )
                })
            })
            .collect(),
    );
    emit(
        "hakube_apiserver_ready",
        "1 when /readyz answers 200",
        s.api
            .iter()
            .map(|a| {
                let ready = a.readyz == Some(200);
                (l(&[("target", &a.target)]), f64::from(u8::from(ready)))
            })
            .collect(),
    );
    emit(
        "hakube_etcd_member_up",
        "1 when the etcd member answers its status",
        s.etcd
            .iter()
            .map(|m| {
                let up = m.error.is_none();
                (l(&[("member", &m.name)]), f64::from(u8::from(up)))
            })
            .collect(),
    );
    emit(
        "hakube_etcd_member_is_leader",
        "1 on the etcd member that answers as the leader",
        s.etcd
            .iter()
            .filter(|m| m.error.is_none())
            .map(|m| (l(&[("member", &m.name)]), f64::from(u8::from(m.is_leader))))
            .collect(),
    );
    emit(
        "hakube_certificate_expiry_seconds",
        "Seconds until the certificate served on the endpoint expires",
        s.certs
            .iter()
            .map(|c| {
                (
                    l(&[("certificate", &c.name), ("host", &c.host)]),
                    c.seconds_left as f64,
                )
            })
            .collect(),
    );
    if let Some(b) = &s.backups {
        for (name, help, rows) in backups::metrics(b) {
            emit(name, help, rows);
        }
    }
}

/// The metrics in the OpenMetrics text format, once (`status --prometheus`).
pub fn render_prometheus(s: &Status) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    register_metrics(s, &mut reg);
    let mut o = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut o, &reg);
    o
}

/// For JSON consumers: the verdicts keyed by layer.
pub fn verdict_map(s: &Status) -> BTreeMap<String, Health> {
    s.verdicts
        .iter()
        .map(|v| (v.layer.clone(), v.health))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(host: &str, error: Option<StatsError>) -> LbProbe {
        LbProbe {
            host: host.into(),
            servers: vec![],
            error,
        }
    }

    fn failure(kind: StatsFailure, process: Option<&str>, ssh: Option<Unobserved>) -> StatsError {
        StatsError {
            kind,
            message: format!("{kind:?}"),
            process: process.and_then(|t| probes::parse_service(t, "haproxy")),
            ssh,
        }
    }

    fn unreachable(host: &str) -> Unobserved {
        Unobserved {
            host: host.into(),
            cause: Some(crate::transport::ConnectCause::TimedOut),
            why: "unreachable (connection timed out)".into(),
            help: String::new(),
            sudo_refused: None,
        }
    }

    #[test]
    fn unknown_is_worse_than_healthy_better_than_degraded_and_exits_1() {
        let worst = [Health::Healthy, Health::Unknown]
            .into_iter()
            .max()
            .expect("max");
        assert_eq!(worst, Health::Unknown);
        assert_eq!(
            [Health::Unknown, Health::Degraded].into_iter().max(),
            Some(Health::Degraded)
        );
        assert_eq!(Health::Unknown.exit_code(), 1);
        assert_eq!(Health::Unknown.metric(), 3);
        assert_eq!(Health::Down.exit_code(), 2);
    }

    #[test]
    fn hung_dead_unreachable_and_unchecked_haproxy_are_told_apart() {
        let cases = [
            (
                failure(
                    StatsFailure::TimedOut,
                    Some("haproxy.active active\nhaproxy.proc 7 T\n"),
                    None,
                ),
                "hung",
            ),
            (
                failure(
                    StatsFailure::TimedOut,
                    Some("haproxy.active active\nhaproxy.proc 7 S\n"),
                    None,
                ),
                "hung",
            ),
            (
                failure(
                    StatsFailure::Refused,
                    Some("haproxy.active inactive\n"),
                    None,
                ),
                "dead",
            ),
            (
                failure(StatsFailure::Refused, None, Some(unreachable("lb2"))),
                "dead",
            ),
            (
                failure(StatsFailure::TimedOut, None, Some(unreachable("lb2"))),
                "unreachable",
            ),
            (failure(StatsFailure::NotConfigured, None, None), "unknown"),
        ];
        for (err, want) in cases {
            let got = match lb_state(&lb("lb2", Some(err.clone()))) {
                LbState::Serving => "serving",
                LbState::Dead(_) => "dead",
                LbState::Hung(_) => "hung",
                LbState::Unreachable(_) => "unreachable",
                LbState::Unknown(_) => "unknown",
            };
            assert_eq!(got, want, "{err:?}");
        }
    }

    #[test]
    fn haproxy_verdicts_name_the_state() {
        let hung = failure(
            StatsFailure::TimedOut,
            Some("haproxy.active active\nhaproxy.proc 7 T\n"),
            None,
        );
        let v = haproxy_verdict(&[lb("lb1", None), lb("lb2", Some(hung))]);
        assert_eq!(v.health, Health::Degraded);
        assert!(v.reason.starts_with("HAProxy hung on lb2"), "{v:?}");

        let dead = failure(StatsFailure::Refused, Some("haproxy.active failed\n"), None);
        let v = haproxy_verdict(&[lb("lb1", None), lb("lb2", Some(dead.clone()))]);
        assert!(v.reason.starts_with("HAProxy down on lb2"), "{v:?}");
        let v = haproxy_verdict(&[lb("lb1", Some(dead.clone())), lb("lb2", Some(dead))]);
        assert_eq!(v.health, Health::Down);

        // A stats page hakube cannot read is not a dead HAProxy.
        let off = failure(StatsFailure::NotConfigured, None, None);
        let v = haproxy_verdict(&[lb("lb1", Some(off.clone())), lb("lb2", Some(off))]);
        assert_eq!(v.health, Health::Unknown, "{v:?}");
    }

    #[test]
    fn an_ssh_outage_is_exported_as_unknown_not_as_no_holder() {
        let s = Status {
            backups: None,
            cluster: "c".into(),
            vip: "10.0.0.100:6443".into(),
            vip_holders: vec![],
            vip_unknown: vec![unreachable("lb1"), unreachable("lb2")],
            vip_answers: true,
            lbs: vec![lb("lb1", None), lb("lb2", None)],
            api: vec![],
            etcd: vec![],
            etcd_quota_bytes: 0,
            etcd_alarms: vec![],
            certs: vec![],
            nodes: None,
            verdicts: vec![],
            reached: Default::default(),
            overall: Health::Unknown,
            took_ms: 0,
            prometheus: None,
        };
        let text = render_prometheus(&s);
        assert!(
            text.contains("hakube_vip_holders{cluster=\"c\"} 0.0"),
            "{text}"
        );
        assert!(
            text.contains("hakube_vip_holders_unknown{cluster=\"c\"} 2.0"),
            "{text}"
        );
        // Neither LB could be asked, so neither says "not holding".
        assert!(!text.contains("hakube_vip_holder{"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
