//! `hakube doctor`: the status probes plus checks over SSH, run through a table of rules. Each
//! finding has a severity, the evidence, the likely cause and the exact fix.

use super::{LbState, ProcessState, StatsFailure, Status, Unobserved, lb_state, probes};
use crate::spec::{Cluster, EtcdManagement, Host, url};
use crate::state::State;
use crate::transport::ConnectCause;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub evidence: String,
    pub cause: String,
    pub fix: String,
}

/// Everything the rules look at.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub status: Option<Status>,
    /// keepalived's state per LB (MASTER, BACKUP, FAULT), from its data dump.
    pub keepalived: BTreeMap<String, String>,
    /// Clock offset per host against this machine, in ms.
    pub clocks: BTreeMap<String, i64>,
    /// Live etcd membership (names), when it could be read.
    pub members: Option<Vec<String>>,
    /// Files on LBs that differ from what `render` produces: (host, path).
    pub drift: Vec<(String, String)>,
    /// Hosts that could not be asked over SSH, and why.
    pub unreachable: Vec<Unobserved>,
    /// What each control plane shows about its etcd over SSH.
    pub etcd_hosts: BTreeMap<String, EtcdHost>,
}

/// etcd's service, the disk errors in its log, and the free space where its data lives.
#[derive(Debug, Clone, Default)]
pub struct EtcdHost {
    pub service: Option<ProcessState>,
    /// Log lines that say the disk is full (ENOSPC), newest last.
    pub enospc: Vec<String>,
    pub disk: Option<DiskFree>,
}

/// One line of `df -Pk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFree {
    pub filesystem: String,
    pub size_kib: u64,
    pub avail_kib: u64,
    pub mount: String,
}

impl DiskFree {
    pub fn parse(line: &str) -> Option<DiskFree> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            return None;
        }
        Some(DiskFree {
            filesystem: f[0].into(),
            size_kib: f[1].parse().ok()?,
            avail_kib: f[3].parse().ok()?,
            mount: f[5..].join(" "),
        })
    }
    pub fn describe(&self) -> String {
        format!(
            "{} free of {} on {} ({})",
            human(self.avail_kib),
            human(self.size_kib),
            self.mount,
            self.filesystem
        )
    }
}

fn human(kib: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = kib as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{kib} KiB")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The SSH checks doctor runs on a control plane for its etcd: the service, the log lines that
/// say the disk is full (`systemctl status` shows the journal on systemd hosts and the service
/// log on lab hosts; `journalctl` is asked too where systemd runs), and `df` of the data dir
/// (or of its nearest existing parent).
pub fn etcd_script(data_dir: &str) -> String {
    let q = crate::transport::quote(data_dir);
    format!(
        "{}{{ systemctl status etcd --no-pager -l -n 300 2>/dev/null; \
         if [ \"$(cat /proc/1/comm 2>/dev/null)\" = systemd ]; then journalctl -u etcd -n 300 --no-pager -o cat 2>/dev/null; fi; }} \
         | grep -i -e 'no space left on device' -e ENOSPC | tail -n 2 | sed 's/^/etcd.enospc /'\n\
         d={q}; while [ ! -e \"$d\" ] && [ \"$d\" != / ]; do d=$(dirname \"$d\"); done; \
         df -Pk \"$d\" 2>/dev/null | tail -n 1 | sed 's/^/etcd.df /'\n",
        probes::service_script("etcd")
    )
}

/// A log line, short: etcd logs JSON with a stack trace, of which the message and the error
/// are what an operator needs. Prefixes (journal timestamps) are kept.
fn log_line(line: &str) -> String {
    let line = line.trim();
    if let Some(i) = line.find('{')
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[i..])
        && let Some(msg) = v.get("msg").and_then(|m| m.as_str())
    {
        let err = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
        let level = v.get("level").and_then(|e| e.as_str()).unwrap_or("");
        return format!("{}{level} {msg}: {err}", &line[..i])
            .trim()
            .to_string();
    }
    line.chars().take(240).collect()
}

pub fn parse_etcd_host(text: &str) -> EtcdHost {
    EtcdHost {
        service: probes::parse_service(text, "etcd"),
        enospc: text
            .lines()
            .filter_map(|l| l.strip_prefix("etcd.enospc "))
            .map(log_line)
            .collect(),
        disk: text
            .lines()
            .find_map(|l| l.strip_prefix("etcd.df "))
            .and_then(DiskFree::parse),
    }
}

type Rule = fn(&Cluster, &Evidence) -> Vec<Finding>;

/// The rules, in the order they are reported.
pub const RULES: &[(&str, Rule)] = &[
    ("split-brain", split_brain),
    ("vip-missing", vip_missing),
    ("vip-holder-unknown", vip_holder_unknown),
    ("keepalived-fault", keepalived_fault),
    ("haproxy-backends", haproxy_backends),
    ("etcd-member-unreachable", etcd_unreachable),
    ("etcd-quorum-at-risk", etcd_quorum_at_risk),
    ("etcd-alarm", etcd_alarm),
    ("etcd-db-size", etcd_db_size),
    ("etcd-raft-lag", etcd_raft_lag),
    ("clock-skew", clock_skew),
    ("certificate-expiry", cert_expiry),
    ("etcd-membership", membership),
    ("lb-config-drift", drift),
    ("host-unreachable", host_unreachable),
    ("ssh-sudo", ssh_sudo),
    ("ssh-host-key", ssh_host_key),
    ("ssh-auth", ssh_auth),
    ("backup-age", super::backups::doctor_age),
    ("backup-schedule", super::backups::doctor_schedule),
];

fn f(
    rule: &'static str,
    severity: Severity,
    evidence: String,
    cause: &str,
    fix: String,
) -> Finding {
    Finding {
        rule,
        severity,
        evidence,
        cause: cause.into(),
        fix,
    }
}

fn split_brain(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    let mut out = Vec::new();
    if s.vip_holders.len() > 1 {
        out.push(f(
            "split-brain",
            Severity::Critical,
            format!("the VIP {} is configured on {}", s.vip, s.vip_holders.join(" and ")),
            "the load balancers do not hear each other's VRRP adverts (firewalled protocol 112, a partition, or mismatched virtual_router_id/unicast peers)",
            format!(
                "check VRRP between the LBs (tcpdump -ni any proto 112 on {}); once they hear each other the lower priority gives the VIP up. Restart keepalived on the one that should be BACKUP if it persists",
                s.vip_holders.join(", ")
            ),
        ));
    }
    let up: Vec<&probes::EtcdMember> = s.etcd.iter().filter(|m| m.error.is_none()).collect();
    let leaders: std::collections::BTreeSet<u64> =
        up.iter().map(|m| m.leader).filter(|l| *l != 0).collect();
    let clusters: std::collections::BTreeSet<u64> = up.iter().map(|m| m.cluster_id).collect();
    if clusters.len() > 1 {
        out.push(f(
            "split-brain",
            Severity::Critical,
            format!("etcd members report different cluster ids: {}", up.iter().map(|m| format!("{}={:x}", m.name, m.cluster_id)).collect::<Vec<_>>().join(", ")),
            "a member was bootstrapped as a new cluster (initial-cluster-state=new on a replacement, or a restored snapshot on one member only)",
            "stop the odd member, remove it (etcdctl member remove), clear its data dir and add it back with initial-cluster-state=existing (`hakube apply` does this)".into(),
        ));
    } else if leaders.len() > 1 {
        out.push(f(
            "split-brain",
            Severity::Critical,
            format!("etcd members see different leaders: {}", up.iter().map(|m| format!("{}→{:x}", m.name, m.leader)).collect::<Vec<_>>().join(", ")),
            "a network partition between members, or a member stuck on an old term",
            "check connectivity between the control planes on the peer port; a stuck member recovers after a restart".into(),
        ));
    }
    out
}

/// Whether the VIP answers even though hakube cannot see who holds it.
fn vip_answers(s: &Status) -> bool {
    s.vip_answers
        || s.api
            .iter()
            .any(|a| a.target == "VIP" && a.readyz == Some(200))
}

fn vip_missing(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    // Merely unobservable is not missing: that is vip-holder-unknown.
    if !s.vip_holders.is_empty() || (!s.vip_unknown.is_empty() && vip_answers(s)) {
        return vec![];
    }
    let evidence = if s.vip_unknown.is_empty() {
        format!("no load balancer has {} on an interface", s.vip)
    } else {
        format!(
            "nothing answers on {}, and no reachable load balancer has it; cannot ask: {}",
            s.vip,
            s.vip_unknown
                .iter()
                .map(Unobserved::short)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    vec![f(
        "vip-missing",
        Severity::Critical,
        evidence,
        "keepalived is stopped or in FAULT on every load balancer, or every LB's track script fails (no API server ready)",
        "systemctl status keepalived on the LBs; journalctl -u keepalived; check that /readyz answers on the control planes".into(),
    )]
}

fn vip_holder_unknown(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    if !s.vip_holders.is_empty() || s.vip_unknown.is_empty() || !vip_answers(s) {
        return vec![];
    }
    vec![f(
        "vip-holder-unknown",
        Severity::Warning,
        format!(
            "{} answers, but no load balancer could be asked whether it holds it: {}",
            s.vip,
            s.vip_unknown
                .iter()
                .map(|u| format!("{}: {}", u.host, u.why))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        "SSH to the load balancers fails; the VIP itself works, so some LB holds it, but split brain and failover readiness cannot be checked",
        "fix SSH to each load balancer (see the ssh findings), then run doctor again".into(),
    )]
}

fn keepalived_fault(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    e.keepalived
        .iter()
        .filter(|(_, st)| st.contains("FAULT") || st.contains("not running"))
        .map(|(h, st)| {
            f(
                "keepalived-fault",
                Severity::Warning,
                format!("keepalived on {h}: {st}"),
                "HAProxy is not running or does not answer on this LB (its track script fails), the VRRP interface is down, the config is invalid, or keepalived is not running: this LB cannot take over the VIP",
                format!("on {h}: systemctl status haproxy; keepalived --config-test; ip link; systemctl restart keepalived"),
            )
        })
        .collect()
}

/// A server that went down more often than this since its HAProxy started, and changed state
/// within [`FLAP_WINDOW_S`], is flapping. Rising after a (re)start or reload is no transition.
pub const FLAP_TRANSITIONS: u64 = 2;
pub const FLAP_WINDOW_S: u64 = 30;

fn haproxy_backends(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    let mut out = Vec::new();
    for l in &s.lbs {
        if let Some(err) = &l.error {
            let h = &l.host;
            let evidence = format!("HAProxy on {h} does not answer its stats page: {err}");
            let (evidence, cause, fix) = match lb_state(l) {
                LbState::Serving => continue,
                LbState::Dead(why) => (
                    format!("{evidence}; {why}"),
                    "haproxy is stopped or crashed on this load balancer",
                    format!("on {h}: systemctl status haproxy; journalctl -u haproxy; haproxy -c -f /etc/haproxy/haproxy.cfg; systemctl start haproxy"),
                ),
                LbState::Hung(why) => {
                    let pids = err
                        .process
                        .as_ref()
                        .map(|p| p.stopped())
                        .unwrap_or_default();
                    let cont = if pids.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "if it was stopped by hand: kill -CONT {}; otherwise ",
                            pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
                        )
                    };
                    (
                        format!("{evidence}; {why}"),
                        "haproxy is hung: its process is alive but does not serve (stopped by a signal, or stuck)",
                        format!("on {h}: {cont}systemctl restart haproxy; then journalctl -u haproxy for why it stalled"),
                    )
                }
                LbState::Unreachable(why) => (
                    format!("{evidence}; {why}"),
                    "the load balancer itself does not answer: down or partitioned",
                    format!("check {h}'s power and network"),
                ),
                LbState::Unknown(why) if err.kind == StatsFailure::NotConfigured => (
                    format!("HAProxy on {h} cannot be checked: {why}"),
                    "HAProxy could not be checked",
                    "enable the stats page (spec.loadBalancer.stats), and keep its password file next to the spec".into(),
                ),
                LbState::Unknown(why) => (
                    format!("{evidence}; {why}"),
                    "HAProxy could not be checked",
                    format!("fix SSH to {h} (see its ssh finding), then run doctor again"),
                ),
            };
            out.push(f(
                "haproxy-backends",
                Severity::Warning,
                evidence,
                cause,
                fix,
            ));
            continue;
        }
        for sv in &l.servers {
            if !sv.status.is_up() {
                out.push(f(
                    "haproxy-backends",
                    Severity::Warning,
                    format!("{} marks API server {} {} (check: {}) for {}s", l.host, sv.server, sv.status, sv.check, sv.last_change_s),
                    "the API server fails GET /readyz: stopped, not ready (its etcd unavailable), or unreachable",
                    format!("on {}: systemctl status kube-apiserver (or hakube-lab-apiserver); curl -k https://<its address>:6443/readyz?verbose", sv.server),
                ));
            } else if sv.last_change_s < FLAP_WINDOW_S && sv.transitions >= FLAP_TRANSITIONS {
                out.push(f(
                    "haproxy-backends",
                    Severity::Warning,
                    format!(
                        "{} saw API server {} go down {} times since HAProxy started, the last change {}s ago",
                        l.host, sv.server, sv.transitions, sv.last_change_s
                    ),
                    "the server is flapping: its /readyz fails now and then (overload, a slow etcd, or the network)",
                    format!("watch `hakube status --watch`; if {} keeps flapping, check its load and its etcd", sv.server),
                ));
            }
        }
    }
    out
}

fn etcd_unreachable(c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    s.etcd
        .iter()
        .filter_map(|m| {
            let err = m.error.as_ref()?;
            let h = &m.name;
            let evidence = format!("etcd member {h} at {} does not answer: {err}", m.endpoint);
            let generic = |cause: &str, fix: String| {
                f("etcd-member-unreachable", Severity::Warning, evidence.clone(), cause, fix)
            };
            if let Some(u) = e.unreachable.iter().find(|u| &u.host == h) {
                let cause = if u.cause.is_some_and(ConnectCause::is_network) {
                    "the host is down or partitioned (it does not answer over SSH either)"
                } else {
                    "etcd is stopped, or the host is partitioned; SSH to it fails, so hakube cannot tell which"
                };
                return Some(f(
                    "etcd-member-unreachable",
                    Severity::Warning,
                    format!("{evidence}; SSH: {}", u.why),
                    cause,
                    format!("check {h}'s power and network; {}", if u.help.is_empty() { "fix SSH to it" } else { &u.help }),
                ));
            }
            let Some(eh) = e.etcd_hosts.get(h) else {
                return Some(generic(
                    "etcd is stopped on that control plane, or the host is partitioned",
                    format!("on {h}: systemctl status etcd; journalctl -u etcd; check the network to it"),
                ));
            };
            let svc = eh.service.clone().unwrap_or_default();
            let disk = eh
                .disk
                .as_ref()
                .map(|d| format!("; {}: {}", c.etcd.data_dir, d.describe()))
                .unwrap_or_default();
            if let Some(line) = eh.enospc.last() {
                let mount = eh.disk.as_ref().map(|d| d.mount.as_str()).unwrap_or(c.etcd.data_dir.as_str());
                return Some(f(
                    "etcd-member-unreachable",
                    Severity::Critical,
                    format!("{evidence}; etcd is {} and its log says: {line}{disk}", svc.active),
                    "etcd crashed on a full disk: the filesystem that holds its data dir has no space left (ENOSPC)",
                    format!(
                        "on {h}: free space on {mount} (df -h {dd}; du -xsh {mount}/* | sort -h), or grow it; then systemctl restart etcd. If the member's data is damaged, remove the member (etcdctl member remove) and run `hakube apply` to add it back",
                        dd = c.etcd.data_dir
                    ),
                ));
            }
            if !svc.running() {
                return Some(f(
                    "etcd-member-unreachable",
                    Severity::Warning,
                    format!("{evidence}; etcd is {}{disk}", svc.active),
                    "etcd is stopped or crashed on that control plane",
                    format!("on {h}: systemctl status etcd; journalctl -u etcd -n 50 for why; systemctl start etcd"),
                ));
            }
            let stopped = svc.stopped();
            Some(f(
                "etcd-member-unreachable",
                Severity::Warning,
                format!("{evidence}; etcd runs ({}){disk}", svc.describe()),
                if stopped.is_empty() {
                    "etcd runs but does not answer on its client port: stuck, overloaded, or the port is filtered"
                } else {
                    "etcd runs but is stopped by a signal (SIGSTOP): hung"
                },
                format!("on {h}: systemctl restart etcd; check its log (journalctl -u etcd) and the firewall on port {}", c.etcd.client_port),
            ))
        })
        .collect()
}

fn etcd_quorum_at_risk(c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    let n = c.control_planes().count();
    let up = s.etcd.iter().filter(|m| m.error.is_none()).count();
    let quorum = n / 2 + 1;
    if up < quorum {
        vec![f(
            "etcd-quorum-at-risk",
            Severity::Critical,
            format!("{up} of {n} etcd members answer; quorum needs {quorum}: the cluster cannot write"),
            "too many members are down or partitioned",
            "bring members back first (systemctl start etcd); only if they are lost for good, restore from a snapshot".into(),
        )]
    } else if up == quorum && up < n {
        vec![f(
            "etcd-quorum-at-risk",
            Severity::Critical,
            format!("{up} of {n} etcd members answer: one more loss breaks quorum"),
            "a member is down",
            "restore the down member before any maintenance; do not drain or restart another control plane".into(),
        )]
    } else {
        vec![]
    }
}

fn etcd_alarm(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    s.etcd_alarms
        .iter()
        .map(|a| {
            let nospace = a.to_lowercase().contains("nospace");
            f(
                "etcd-alarm",
                Severity::Critical,
                format!("etcd alarm {a}"),
                if nospace { "the database reached its quota: etcd now allows only reads and deletes" } else { "etcd raised an alarm" },
                if nospace {
                    "compact (etcdctl compact $(etcdctl endpoint status -w json | jq .[0].Status.header.revision)), defragment one member at a time (etcdctl defrag --endpoints=<one>), then etcdctl alarm disarm; raise spec.etcd.quotaBackendBytes if the data is legitimate".into()
                } else {
                    "etcdctl alarm list; fix the cause, then etcdctl alarm disarm".into()
                },
            )
        })
        .collect()
}

fn etcd_db_size(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    if s.etcd_quota_bytes == 0 {
        return vec![];
    }
    s.etcd
        .iter()
        .filter(|m| m.error.is_none() && m.db_size * 100 / s.etcd_quota_bytes >= 80)
        .map(|m| {
            f(
                "etcd-db-size",
                Severity::Warning,
                format!("etcd on {} uses {} of {} bytes ({}%)", m.name, m.db_size, s.etcd_quota_bytes, m.db_size * 100 / s.etcd_quota_bytes),
                "history not compacted, or fragmentation after large deletes",
                "compact, then defragment one member at a time; or raise spec.etcd.quotaBackendBytes (at most 8GiB)".into(),
            )
        })
        .collect()
}

/// Raft entries a member may trail the best one by before it is reported.
pub const RAFT_LAG_LIMIT: u64 = 1000;

fn etcd_raft_lag(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    let best = s
        .etcd
        .iter()
        .filter(|m| m.error.is_none())
        .map(|m| m.raft_index)
        .max()
        .unwrap_or(0);
    s.etcd
        .iter()
        .filter(|m| m.error.is_none() && best.saturating_sub(m.raft_index) > RAFT_LAG_LIMIT)
        .map(|m| {
            f(
                "etcd-raft-lag",
                Severity::Warning,
                format!("etcd on {} is {} raft entries behind ({} vs {best})", m.name, best - m.raft_index, m.raft_index),
                "a slow disk or network on that member, or it is catching up after a restart",
                format!("check disk latency on {} (etcd_disk_wal_fsync_duration_seconds) and the network to the leader", m.name),
            )
        })
        .collect()
}

fn clock_skew(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let (Some(min), Some(max)) = (e.clocks.values().min(), e.clocks.values().max()) else {
        return vec![];
    };
    if max - min <= 500 {
        return vec![];
    }
    let list = e
        .clocks
        .iter()
        .map(|(h, o)| format!("{h} {o:+} ms"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![f(
        "clock-skew",
        Severity::Warning,
        format!("clocks differ by {} ms between hosts: {list}", max - min),
        "NTP is not running or not synchronised on some hosts",
        "enable systemd-timesyncd or chrony on every host and check `timedatectl`".into(),
    )]
}

fn cert_expiry(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(s) = &e.status else { return vec![] };
    s.certs
        .iter()
        .filter(|c| c.days_left < 30)
        .map(|c| {
            let expired = c.seconds_left < 0;
            f(
                "certificate-expiry",
                if expired || c.days_left < 7 { Severity::Critical } else { Severity::Warning },
                format!(
                    "the {} certificate on {} {} ({})",
                    c.name,
                    c.host,
                    if expired { "has EXPIRED".to_string() } else { format!("expires in {} days", c.days_left) },
                    c.not_after
                ),
                "certificates were not renewed (kubeadm leaves last one year)",
                if c.name.starts_with("etcd-") || c.name == "apiserver" {
                    "hakube certs renew -f SPEC (issues new ones and rolls them one host at a time)".into()
                } else {
                    format!("on {}: kubeadm certs renew all, then restart the control-plane static pods", c.host)
                },
            )
        })
        .collect()
}

fn membership(c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let Some(members) = &e.members else {
        return vec![];
    };
    let mut out = Vec::new();
    for h in c.control_planes() {
        if !members.iter().any(|m| m == &h.name) {
            out.push(f(
                "etcd-membership",
                Severity::Warning,
                format!(
                    "control plane {} is in the spec but not an etcd member",
                    h.name
                ),
                "it was removed, or never joined",
                "run `hakube apply`: it adds the member with initial-cluster-state=existing".into(),
            ));
        }
    }
    for m in members {
        if !c.control_planes().any(|h| &h.name == m) {
            out.push(f(
                "etcd-membership",
                Severity::Critical,
                format!("etcd member {m:?} is not in the spec (orphaned)"),
                "a control plane was replaced or removed without `etcdctl member remove`; it counts toward quorum while it cannot vote",
                format!("if {m} is gone for good: etcdctl member remove <its id> (find it with etcdctl member list)"),
            ));
        }
    }
    out
}

fn drift(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    e.drift
        .iter()
        .map(|(h, p)| {
            f(
                "lb-config-drift",
                Severity::Warning,
                format!("{p} on {h} differs from what `hakube render` produces"),
                "edited by hand, or the spec changed since the last apply",
                "hakube apply --dry-run to see the difference; hakube apply to converge".into(),
            )
        })
        .collect()
}

/// SSH failures of one kind, each as a finding whose cause and fix come from the transport's
/// classification.
fn ssh_findings(
    e: &Evidence,
    rule: &'static str,
    pick: impl Fn(Option<ConnectCause>) -> Option<(Severity, &'static str)>,
) -> Vec<Finding> {
    e.unreachable
        .iter()
        .filter(|u| u.sudo_refused.is_none())
        .filter_map(|u| {
            let (sev, cause) = pick(u.cause)?;
            Some(f(
                rule,
                sev,
                format!("{} cannot be asked over SSH: {}", u.host, u.why),
                cause,
                if u.help.is_empty() {
                    format!("check that `ssh` to {} works by hand", u.host)
                } else {
                    u.help.clone()
                },
            ))
        })
        .collect()
}

fn host_unreachable(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    ssh_findings(e, "host-unreachable", |c| match c {
        Some(c) if c.is_network() => Some((Severity::Warning, "the host is down or partitioned")),
        Some(ConnectCause::UnknownName) => {
            Some((Severity::Warning, "the host's name does not resolve"))
        }
        Some(ConnectCause::Other) | None => Some((Severity::Warning, "SSH to the host fails")),
        _ => None,
    })
}

/// Hosts where the SSH user could log in but sudo refused: one finding for all of them.
fn ssh_sudo(c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let refused = e
        .unreachable
        .iter()
        .filter_map(|u| {
            let user = c.host(&u.host).map_or("?", |h| h.ssh.user.as_str());
            Some((user.to_string(), u.sudo_refused.clone()?, u.host.clone()))
        })
        .collect();
    let Some((lines, help)) = crate::transport::error::sudo_groups(refused) else {
        return vec![];
    };
    vec![f(
        "ssh-sudo",
        Severity::Warning,
        lines.join("; "),
        "the SSH user is not root and sudo asks it for a password (or does not let it run sh), so hakube can read nothing on those hosts",
        help,
    )]
}

fn ssh_host_key(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    ssh_findings(e, "ssh-host-key", |c| match c {
        Some(ConnectCause::HostKeyChanged) => Some((
            Severity::Critical,
            "the host presents a different key than the one recorded: it was reinstalled, or someone is intercepting the connection",
        )),
        Some(ConnectCause::HostKeyUnknown) => Some((
            Severity::Warning,
            "no key is recorded for the host, and hakube checks keys strictly",
        )),
        _ => None,
    })
}

fn ssh_auth(_c: &Cluster, e: &Evidence) -> Vec<Finding> {
    ssh_findings(e, "ssh-auth", |c| match c {
        Some(ConnectCause::AuthFailed) => {
            Some((Severity::Warning, "the host refuses hakube's key or user"))
        }
        _ => None,
    })
}

/// Run every rule.
pub fn diagnose(c: &Cluster, e: &Evidence) -> Vec<Finding> {
    let mut out: Vec<Finding> = RULES.iter().flat_map(|(_, r)| r(c, e)).collect();
    out.sort_by_key(|x| std::cmp::Reverse(x.severity));
    out
}

/// Gather the evidence: the status probes plus SSH checks on every host.
pub async fn gather(c: &Cluster) -> anyhow::Result<Evidence> {
    crate::transport::tunnel::setup(c).await;
    let names: Vec<String> = c.hosts.iter().map(|h| h.name.clone()).collect();
    let common = "if [ -f /run/keepalived.pid ] && kill -USR1 \"$(cat /run/keepalived.pid)\" 2>/dev/null; then sleep 0.3; \
        grep -m1 'State = ' /tmp/keepalived.data 2>/dev/null || echo 'State = unknown'; else echo 'State = not running'; fi; \
        for p in /etc/haproxy/haproxy.cfg /etc/keepalived/keepalived.conf /etc/keepalived/check_apiserver.sh /etc/keepalived/check_haproxy.sh; do \
        [ -f $p ] && echo \"sum $p $(sha256sum < $p | cut -d' ' -f1)\"; done; \
        ip -o addr show 2>/dev/null; true\n";
    let etcd = etcd_script(&c.etcd.data_dir);
    let script = |h: &Host| {
        if h.roles.control_plane && c.etcd.management == EtcdManagement::Hakube {
            format!("{common}{etcd}true\n")
        } else {
            common.to_string()
        }
    };
    // At the same time, so that a host that does not answer costs one connect timeout.
    let (status, results) = tokio::join!(super::gather(c), probes::on_hosts(c, &names, script));
    let status = status?;
    let mut e = Evidence {
        status: Some(status),
        ..Default::default()
    };
    let mut answers = Vec::new();
    // Render with the interfaces the hosts really use, as apply does.
    let mut wanted_cluster = c.clone();
    for (host, r) in results {
        let (text, offset) = match r {
            Ok(x) => x,
            Err(u) => {
                e.unreachable.push(u);
                continue;
            }
        };
        e.clocks.insert(host.clone(), offset);
        if c.host(&host).is_some_and(|h| h.roles.control_plane) {
            e.etcd_hosts.insert(host.clone(), parse_etcd_host(&text));
        }
        if let Some(h) = wanted_cluster.hosts.iter_mut().find(|h| h.name == host)
            && h.interface.is_none()
        {
            let addrs = crate::observe::iface::parse(&text);
            h.interface =
                crate::observe::iface::interface_of(&addrs, h.address).map(str::to_string);
        }
        answers.push((host, text));
    }
    let wanted: BTreeMap<(String, String), String> = match State::open(&wanted_cluster)
        .and_then(|st| st.secrets())
        .and_then(|s| crate::render::render(&wanted_cluster, &s))
    {
        Ok(files) => files
            .into_iter()
            .map(|f| ((f.host.clone(), f.path.clone()), f.sha256()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    for (host, text) in answers {
        let is_lb = c.host(&host).is_some_and(|h| h.roles.loadbalancer);
        for l in text.lines() {
            if let Some(st) = l.trim().strip_prefix("State = ") {
                if is_lb {
                    e.keepalived.insert(host.clone(), st.to_string());
                }
            } else if let Some(rest) = l.strip_prefix("sum ")
                && let Some((path, sum)) = rest.split_once(' ')
                && let Some(want) = wanted.get(&(host.clone(), path.to_string()))
                && want != sum.trim()
            {
                e.drift.push((host.clone(), path.to_string()));
            }
        }
    }
    // Live membership.
    let tls = State::open(c)?.operator_etcd_tls()?;
    let endpoints: Vec<String> = c
        .control_planes()
        .map(|h| url("https", h.address, c.etcd.client_port))
        .collect();
    if let Ok(Ok(mut cl)) = tokio::time::timeout(
        super::PROBE_TIMEOUT,
        crate::etcd::connect(&endpoints, &tls, super::PROBE_TIMEOUT),
    )
    .await
        && let Ok(Ok(ms)) =
            tokio::time::timeout(super::PROBE_TIMEOUT, crate::etcd::members(&mut cl)).await
    {
        e.members = Some(
            ms.into_iter()
                .map(|m| {
                    if m.name.is_empty() {
                        format!("(unstarted {:x})", m.id)
                    } else {
                        m.name
                    }
                })
                .collect(),
        );
    }
    Ok(e)
}

pub fn render_text(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "✓ no findings: every rule passed\n".into();
    }
    let mut o = String::new();
    for x in findings {
        let m = match x.severity {
            Severity::Critical => "✗ critical",
            Severity::Warning => "! warning",
        };
        o.push_str(&format!(
            "{m} [{}] {}\n    likely cause: {}\n    fix: {}\n\n",
            x.rule, x.evidence, x.cause, x.fix
        ));
    }
    o
}

pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|x| x.severity).max() {
        None => 0,
        Some(Severity::Warning) => 1,
        Some(Severity::Critical) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        ApiProbe, Cert, EtcdMember, HaproxyServer, Health, LbProbe, StatsError, StatsFailure,
    };
    use crate::transport::ConnectCause;

    const SEED: &str = include_str!("../../examples/seed.yaml");

    fn cluster() -> Cluster {
        crate::spec::load_str(SEED, "seed.yaml", std::path::Path::new("/nonexistent"))
            .cluster
            .expect("seed is valid")
    }

    fn member(name: &str, id: u64, leader: u64, index: u64) -> EtcdMember {
        EtcdMember {
            name: name.into(),
            endpoint: format!("https://{name}:2379"),
            member_id: id,
            cluster_id: 7,
            leader,
            is_leader: id == leader,
            raft_term: 2,
            raft_index: index,
            db_size: 1 << 20,
            version: "3.5.1".into(),
            error: None,
        }
    }

    /// A healthy cluster's evidence; each case breaks one thing.
    fn healthy() -> Evidence {
        let servers = |lag: u64| {
            ["master1", "master2", "master3"]
                .iter()
                .map(|s| HaproxyServer {
                    server: s.to_string(),
                    status: "UP".into(),
                    check: "L7OK".into(),
                    last_change_s: lag,
                    transitions: 0,
                })
                .collect::<Vec<_>>()
        };
        let status = Status {
            cluster: "ha-cluster".into(),
            vip: "10.1.1.100:6443".into(),
            vip_holders: vec!["lb1".into()],
            vip_unknown: vec![],
            vip_answers: true,
            lbs: vec![
                LbProbe {
                    host: "lb1".into(),
                    servers: servers(600),
                    error: None,
                },
                LbProbe {
                    host: "lb2".into(),
                    servers: servers(600),
                    error: None,
                },
            ],
            api: vec![ApiProbe {
                target: "VIP".into(),
                address: "10.1.1.100:6443".into(),
                readyz: Some(200),
                livez: Some(200),
                latency_ms: Some(1.0),
                error: None,
            }],
            etcd: vec![
                member("master1", 1, 1, 100),
                member("master2", 2, 1, 100),
                member("master3", 3, 1, 99),
            ],
            etcd_quota_bytes: 2 << 30,
            etcd_alarms: vec![],
            certs: vec![Cert {
                name: "etcd-server".into(),
                host: "master1".into(),
                not_after: "x".into(),
                seconds_left: 300 * 86400,
                days_left: 300,
            }],
            nodes: None,
            backups: None,
            verdicts: vec![],
            reached: Default::default(),
            overall: Health::Healthy,
            took_ms: 1,
            prometheus: None,
        };
        Evidence {
            status: Some(status),
            keepalived: [
                ("lb1".to_string(), "MASTER".to_string()),
                ("lb2".to_string(), "BACKUP".to_string()),
            ]
            .into(),
            clocks: [("lb1".to_string(), 3), ("master1".to_string(), -20)].into(),
            members: Some(vec!["master1".into(), "master2".into(), "master3".into()]),
            drift: vec![],
            unreachable: vec![],
            etcd_hosts: ["master1", "master2", "master3"]
                .iter()
                .enumerate()
                .map(|(i, h)| (h.to_string(), etcd_host(100 + i as u32, 'S')))
                .collect(),
        }
    }

    /// etcd running on a control plane with room on its disk.
    fn etcd_host(pid: u32, state: char) -> EtcdHost {
        EtcdHost {
            service: Some(ProcessState {
                active: "active".into(),
                procs: vec![(pid, state)],
            }),
            enospc: vec![],
            disk: DiskFree::parse("/dev/sda1 41152736 9046544 30006616 24% /"),
        }
    }

    fn st(e: &mut Evidence) -> &mut Status {
        e.status.as_mut().expect("status")
    }

    type Break = fn(&mut Evidence);

    /// (what breaks, the rule that must fire, its severity)
    /// Backups expected, the operator's newest `age_s` old, master1's last scheduled run failed
    /// when `failed`.
    fn backups(age_s: u64, failed: bool) -> Option<crate::status::backups::Backups> {
        use crate::status::backups::{Backups, HostBackup};
        let now = 2_000_000_000;
        Some(Backups {
            expected: true,
            max_age_s: 25 * 3600,
            now_unix: now,
            operator_dir: "/srv/backups".into(),
            operator: Some(crate::backup::LastVerified {
                cluster: "ha-cluster".into(),
                file: "ha-cluster-x.tar".into(),
                created_at: "x".into(),
                created_unix: now - age_s,
                verified_at: "x".into(),
                verified_unix: now - age_s,
                revision: 5,
                keys: 3,
            }),
            hosts: vec![HostBackup {
                host: "master1".into(),
                stamp: None,
                timer: Some("active".into()),
                service_state: Some(if failed { "failed" } else { "inactive" }.into()),
                service_result: Some(if failed { "exit-code" } else { "success" }.into()),
                error: None,
            }],
        })
    }

    const CASES: &[(&str, Break, &str, Severity)] = &[
        (
            "no verified backup for 26h",
            |e| st(e).backups = backups(26 * 3600, false),
            "backup-age",
            Severity::Warning,
        ),
        (
            "the scheduled backup failed on master1",
            |e| st(e).backups = backups(3600, true),
            "backup-schedule",
            Severity::Warning,
        ),
        (
            "VIP on both LBs",
            |e| st(e).vip_holders.push("lb2".into()),
            "split-brain",
            Severity::Critical,
        ),
        (
            "etcd leaders differ",
            |e| st(e).etcd[2].leader = 3,
            "split-brain",
            Severity::Critical,
        ),
        (
            "etcd cluster ids differ",
            |e| st(e).etcd[1].cluster_id = 9,
            "split-brain",
            Severity::Critical,
        ),
        (
            "VIP on no LB",
            |e| st(e).vip_holders.clear(),
            "vip-missing",
            Severity::Critical,
        ),
        (
            "keepalived FAULT",
            |e| {
                e.keepalived.insert("lb2".into(), "FAULT".into());
            },
            "keepalived-fault",
            Severity::Warning,
        ),
        (
            "backend down",
            |e| st(e).lbs[0].servers[1].status = "DOWN".into(),
            "haproxy-backends",
            Severity::Warning,
        ),
        (
            "backend flapping",
            |e| {
                // Flapping is repeated transitions, not a recent change alone.
                st(e).lbs[1].servers[0].last_change_s = 4;
                st(e).lbs[1].servers[0].transitions = 3;
            },
            "haproxy-backends",
            Severity::Warning,
        ),
        (
            "haproxy dead",
            |e| st(e).lbs[1].error = Some("connection refused".into()),
            "haproxy-backends",
            Severity::Warning,
        ),
        (
            "member down",
            |e| st(e).etcd[2].error = Some("timed out".into()),
            "etcd-member-unreachable",
            Severity::Warning,
        ),
        (
            "one more loss breaks quorum",
            |e| st(e).etcd[2].error = Some("timed out".into()),
            "etcd-quorum-at-risk",
            Severity::Critical,
        ),
        (
            "quorum lost",
            |e| {
                st(e).etcd[1].error = Some("x".into());
                st(e).etcd[2].error = Some("x".into());
            },
            "etcd-quorum-at-risk",
            Severity::Critical,
        ),
        (
            "NOSPACE",
            |e| st(e).etcd_alarms.push("Nospace on master1".into()),
            "etcd-alarm",
            Severity::Critical,
        ),
        (
            "DB over 80%",
            |e| st(e).etcd[0].db_size = (2u64 << 30) * 85 / 100,
            "etcd-db-size",
            Severity::Warning,
        ),
        (
            "raft lag",
            |e| st(e).etcd[0].raft_index = 5000,
            "etcd-raft-lag",
            Severity::Warning,
        ),
        (
            "clock skew",
            |e| {
                e.clocks.insert("worker1".into(), 900);
            },
            "clock-skew",
            Severity::Warning,
        ),
        (
            "cert soon",
            |e| st(e).certs[0].days_left = 20,
            "certificate-expiry",
            Severity::Warning,
        ),
        (
            "cert expired",
            |e| {
                st(e).certs[0].days_left = -2;
                st(e).certs[0].seconds_left = -100000;
            },
            "certificate-expiry",
            Severity::Critical,
        ),
        (
            "orphaned member",
            |e| {
                e.members
                    .as_mut()
                    .expect("members")
                    .push("old-master".into())
            },
            "etcd-membership",
            Severity::Critical,
        ),
        (
            "spec host not a member",
            |e| {
                e.members
                    .as_mut()
                    .expect("members")
                    .retain(|m| m != "master3");
            },
            "etcd-membership",
            Severity::Warning,
        ),
        (
            "drift",
            |e| {
                e.drift
                    .push(("lb1".into(), "/etc/haproxy/haproxy.cfg".into()))
            },
            "lb-config-drift",
            Severity::Warning,
        ),
        (
            "VIP answers but no LB can be asked",
            |e| {
                st(e).vip_holders.clear();
                st(e).vip_unknown = vec![
                    unobserved("lb1", ConnectCause::HostKeyChanged),
                    unobserved("lb2", ConnectCause::TimedOut),
                ];
            },
            "vip-holder-unknown",
            Severity::Warning,
        ),
        (
            "host partitioned",
            |e| {
                e.unreachable
                    .push(unobserved("worker1", ConnectCause::TimedOut))
            },
            "host-unreachable",
            Severity::Warning,
        ),
        (
            "sudo asks the SSH user for a password",
            |e| e.unreachable.extend(["lb1", "master1"].map(sudo_refused)),
            "ssh-sudo",
            Severity::Warning,
        ),
        (
            "host key changed",
            |e| {
                e.unreachable
                    .push(unobserved("worker2", ConnectCause::HostKeyChanged))
            },
            "ssh-host-key",
            Severity::Critical,
        ),
        (
            "key refused",
            |e| {
                e.unreachable
                    .push(unobserved("lb2", ConnectCause::AuthFailed))
            },
            "ssh-auth",
            Severity::Warning,
        ),
        (
            "etcd crashed on a full disk",
            |e| {
                st(e).etcd[2].error = Some("connection refused".into());
                e.etcd_hosts.insert("master3".into(), full_disk());
            },
            "etcd-member-unreachable",
            Severity::Critical,
        ),
        (
            "haproxy hung",
            |e| st(e).lbs[1].error = Some(hung()),
            "haproxy-backends",
            Severity::Warning,
        ),
    ];

    fn sudo_refused(host: &str) -> Unobserved {
        Unobserved {
            host: host.into(),
            cause: None,
            why: "sudo refused: a password is required".into(),
            help: "give ops passwordless sudo".into(),
            sudo_refused: Some("a password is required".into()),
        }
    }

    #[test]
    fn sudo_refusals_are_one_finding_not_one_per_host() {
        let c = cluster();
        let mut e = healthy();
        e.unreachable
            .extend(["lb1", "lb2", "master1"].map(sudo_refused));
        let found = diagnose(&c, &e);
        let sudo: Vec<_> = found.iter().filter(|f| f.rule == "ssh-sudo").collect();
        assert_eq!(sudo.len(), 1, "{found:?}");
        assert!(
            sudo[0]
                .evidence
                .contains("needs passwordless sudo on lb1, lb2, master1"),
            "{}",
            sudo[0].evidence
        );
        assert!(
            found.iter().all(|f| f.rule != "host-unreachable"),
            "{found:?}"
        );
    }

    fn unobserved(host: &str, cause: ConnectCause) -> Unobserved {
        Unobserved {
            host: host.into(),
            cause: Some(cause),
            why: format!("{} (ssh's words)", cause.summary()),
            help: format!("the fix for {}", cause.summary()),
            sudo_refused: None,
        }
    }

    /// What the lab's master3 showed after its etcd hit a full tmpfs (captured).
    fn full_disk() -> EtcdHost {
        parse_etcd_host(
            "etcd.active activating\n\
             etcd.enospc {\"level\":\"fatal\",\"ts\":\"2026-12-01T23:09:51.928Z\",\"caller\":\"backend/batch_tx.go:256\",\"msg\":\"failed to commit tx\",\"error\":\"write /var/lib/etcd/member/snap/db: no space left on device\",\"stacktrace\":\"go.etcd.io/etcd/server/v3/mvcc/backend.(*batchTx).commit\\n\\t/tmp/etcd-release-3.5.1/etcd/release/etcd/server/mvcc/backend/batch_tx.go:256\"}\n\
             etcd.df tmpfs               153600 153600         0     100% /var/lib/etcd\n",
        )
    }

    /// lb2's HAProxy after SIGSTOP of its master and worker (captured).
    fn hung() -> StatsError {
        StatsError {
            kind: StatsFailure::TimedOut,
            message: "timed out after 800 ms".into(),
            process: probes::parse_service(
                "haproxy.active active\nhaproxy.proc 29875 T\nhaproxy.proc 7832 T\n",
                "haproxy",
            ),
            ssh: None,
        }
    }

    fn find<'a>(f: &'a [Finding], rule: &str) -> Vec<&'a Finding> {
        f.iter().filter(|x| x.rule == rule).collect()
    }

    #[test]
    fn an_unobservable_vip_holder_is_not_a_missing_vip() {
        let c = cluster();
        let mut e = healthy();
        st(&mut e).vip_holders.clear();
        st(&mut e).vip_unknown = vec![
            unobserved("lb1", ConnectCause::HostKeyChanged),
            unobserved("lb2", ConnectCause::HostKeyChanged),
        ];
        let found = diagnose(&c, &e);
        assert!(find(&found, "vip-missing").is_empty(), "{found:#?}");
        let hit = find(&found, "vip-holder-unknown");
        assert!(
            hit[0].evidence.contains("lb1: host key CHANGED"),
            "{hit:#?}"
        );
        // status agrees: unknown, exit 1, not down.
        let v = crate::status::vip_verdict(e.status.as_ref().expect("status"));
        assert_eq!(v.health, Health::Unknown, "{v:?}");
        assert_eq!(v.health.exit_code(), 1);
        assert!(v.reason.contains("lb1 (host key CHANGED)"), "{v:?}");

        // When the VIP does not answer either, it is missing after all.
        let s = st(&mut e);
        s.vip_answers = false;
        s.api[0].readyz = None;
        let found = diagnose(&c, &e);
        assert_eq!(find(&found, "vip-missing").len(), 1, "{found:#?}");
        assert!(find(&found, "vip-holder-unknown").is_empty());
        let v = crate::status::vip_verdict(e.status.as_ref().expect("status"));
        assert_eq!(v.health, Health::Down);
    }

    #[test]
    fn a_changed_host_key_is_not_called_down_or_partitioned() {
        let mut e = healthy();
        e.unreachable
            .push(unobserved("master2", ConnectCause::HostKeyChanged));
        st(&mut e).etcd[1].error = Some("timed out".into());
        let found = diagnose(&cluster(), &e);
        assert!(find(&found, "host-unreachable").is_empty(), "{found:#?}");
        let key = find(&found, "ssh-host-key");
        assert_eq!(key.len(), 1);
        assert_eq!(key[0].fix, "the fix for host key CHANGED");
        let m = find(&found, "etcd-member-unreachable");
        assert!(!m[0].cause.contains("down or partitioned"), "{m:#?}");
    }

    #[test]
    fn etcd_on_a_full_disk_names_the_disk_and_its_free_space() {
        let mut e = healthy();
        st(&mut e).etcd[2].error = Some("connection refused".into());
        e.etcd_hosts.insert("master3".into(), full_disk());
        let found = diagnose(&cluster(), &e);
        let m = find(&found, "etcd-member-unreachable");
        assert_eq!(m.len(), 1);
        let m = m[0];
        assert!(
            m.evidence.contains(
                "fatal failed to commit tx: write /var/lib/etcd/member/snap/db: no space left on device"
            ),
            "{m:#?}"
        );
        assert!(
            m.evidence
                .contains("0 KiB free of 150.0 MiB on /var/lib/etcd (tmpfs)"),
            "{m:#?}"
        );
        assert!(m.cause.contains("full disk"), "{m:#?}");
        assert!(!m.cause.contains("stopped"), "{m:#?}");
        assert!(m.fix.contains("free space on /var/lib/etcd"), "{m:#?}");

        // Stopped without a disk error: named as stopped, with the state.
        let mut e = healthy();
        st(&mut e).etcd[2].error = Some("connection refused".into());
        e.etcd_hosts.get_mut("master3").expect("master3").service = Some(ProcessState {
            active: "inactive".into(),
            procs: vec![],
        });
        let found = diagnose(&cluster(), &e);
        let m = find(&found, "etcd-member-unreachable")[0];
        assert!(m.evidence.contains("etcd is inactive"), "{m:#?}");
        assert_eq!(m.severity, Severity::Warning);
    }

    #[test]
    fn a_hung_haproxy_is_told_from_a_dead_one() {
        let mut e = healthy();
        st(&mut e).lbs[1].error = Some(hung());
        let found = diagnose(&cluster(), &e);
        let h = find(&found, "haproxy-backends")[0];
        assert!(h.cause.contains("hung"), "{h:#?}");
        assert!(h.fix.contains("kill -CONT 29875 7832"), "{h:#?}");

        let mut dead = hung();
        dead.kind = StatsFailure::Refused;
        dead.message = "Connection refused (os error 111)".into();
        dead.process = probes::parse_service("haproxy.active inactive\n", "haproxy");
        st(&mut e).lbs[1].error = Some(dead);
        let found = diagnose(&cluster(), &e);
        let h = find(&found, "haproxy-backends")[0];
        assert!(h.cause.contains("stopped or crashed"), "{h:#?}");
        assert!(
            h.evidence.contains("not running (systemctl: inactive)"),
            "{h:#?}"
        );
    }

    #[test]
    fn rising_after_a_reload_is_not_flapping() {
        // Right after a reload: every server changed state seconds ago, none went down.
        let mut e = healthy();
        for l in &mut st(&mut e).lbs {
            for sv in &mut l.servers {
                sv.last_change_s = 3;
                sv.transitions = 0;
            }
        }
        assert!(diagnose(&cluster(), &e).is_empty());
        // A cold apply: each server went down once while its API server was not there yet.
        for l in &mut st(&mut e).lbs {
            for sv in &mut l.servers {
                sv.transitions = 1;
            }
        }
        assert!(diagnose(&cluster(), &e).is_empty());
    }

    #[test]
    fn a_healthy_cluster_has_no_findings() {
        let f = diagnose(&cluster(), &healthy());
        assert!(f.is_empty(), "{f:#?}");
        assert_eq!(exit_code(&f), 0);
    }

    #[test]
    fn each_rule_fires_on_its_fault() {
        let c = cluster();
        for (what, brk, rule, sev) in CASES {
            let mut e = healthy();
            brk(&mut e);
            let found = diagnose(&c, &e);
            let hit = found
                .iter()
                .find(|f| f.rule == *rule)
                .unwrap_or_else(|| panic!("{what}: rule {rule} did not fire; got {found:#?}"));
            assert_eq!(hit.severity, *sev, "{what}");
            assert!(
                !hit.evidence.is_empty() && !hit.cause.is_empty() && !hit.fix.is_empty(),
                "{what}: incomplete finding"
            );
            assert!(exit_code(&found) >= 1, "{what}");
        }
    }

    #[test]
    fn every_rule_has_a_case() {
        for (name, _) in RULES {
            assert!(
                CASES.iter().any(|(_, _, r, _)| r == name),
                "rule {name} has no test case"
            );
        }
    }
}
