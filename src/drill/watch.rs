//! What the cluster did during a drill, polled every ~200 ms in the background: which load
//! balancer holds the VIP (`ip -o addr`, over SSH; on a lab in the host's network namespace),
//! which etcd member leads (the etcd API), and
//! how each load balancer's HAProxy rates each API server (its stats CSV). Only changes are kept.

use crate::spec::{Cluster, Host, url};
use crate::transport::{self, Transport, ssh::Ssh};
use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    Vip,
    Leader,
    Backend,
}

/// One observed change, in ms on the drill's clock.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub t_ms: f64,
    pub what: What,
    /// `vip`, `etcd`, or `SERVER@LB` for a backend.
    pub subject: String,
    pub from: String,
    pub to: String,
}

#[derive(Default)]
struct State {
    /// Per LB: holds the VIP? (None: could not ask.)
    vip: BTreeMap<String, Option<bool>>,
    vip_label: Option<String>,
    /// LBs that could not be asked, with their last known answer.
    stale: BTreeMap<String, bool>,
    /// Per member: (its id, the leader id it reports).
    members: BTreeMap<String, Option<(u64, u64)>>,
    /// Member id -> name, learned from the members' own answers.
    names: BTreeMap<u64, String>,
    leader_label: Option<String>,
    backends: BTreeMap<String, String>,
    initial: BTreeMap<String, String>,
    changes: Vec<Change>,
}

impl State {
    fn note(&mut self, t_ms: f64, what: What, subject: &str, label: String, prev: Option<String>) {
        match prev {
            None => {
                self.initial.insert(subject.to_string(), label);
            }
            Some(p) if p != label => self.changes.push(Change {
                t_ms,
                what,
                subject: subject.to_string(),
                from: p,
                to: label,
            }),
            Some(_) => {}
        }
    }

    /// `holds`: whether the LB carries the VIP; None when it could not be asked (then its last
    /// known answer stands, marked with `?` when that was "holds").
    fn update_vip(&mut self, t_ms: f64, lb: &str, holds: Option<bool>) {
        let last = self.vip.get(lb).copied().flatten();
        self.vip.insert(lb.to_string(), holds);
        if holds.is_none() {
            if !self.stale.contains_key(lb) {
                self.stale.insert(lb.to_string(), last.unwrap_or(false));
            }
        } else {
            self.stale.remove(lb);
        }
        if self.vip.len() < self.vip_expected() {
            return;
        }
        let holders: Vec<String> = self
            .vip
            .iter()
            .filter_map(|(n, h)| match h {
                Some(true) => Some(n.clone()),
                None if self.stale.get(n) == Some(&true) => Some(format!("{n}?")),
                _ => None,
            })
            .collect();
        let label = if holders.is_empty() {
            "none".to_string()
        } else {
            holders.join("+")
        };
        let prev = self.vip_label.replace(label.clone());
        self.note(t_ms, What::Vip, "vip", label, prev);
    }

    fn vip_expected(&self) -> usize {
        self.initial
            .get("#lbs")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn update_member(&mut self, t_ms: f64, name: &str, st: Option<(u64, u64)>) {
        self.members.insert(name.to_string(), st);
        if let Some((id, _)) = st {
            self.names.insert(id, name.to_string());
        }
        let expected: usize = self
            .initial
            .get("#members")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if self.members.len() < expected {
            return;
        }
        // The leader most answering members agree on; on a tie, a leader over none.
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, leader) in self.members.values().flatten() {
            *votes.entry(*leader).or_default() += 1;
        }
        let best = votes
            .iter()
            .max_by_key(|(id, n)| (**n, **id != 0))
            .map(|(id, _)| *id);
        let label = match best {
            None => "unknown".to_string(),
            Some(0) => "none".to_string(),
            Some(id) => self
                .names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("{id:x}")),
        };
        let prev = self.leader_label.replace(label.clone());
        self.note(t_ms, What::Leader, "etcd", label, prev);
    }

    fn update_backend(&mut self, t_ms: f64, subject: &str, status: String) {
        let prev = self.backends.insert(subject.to_string(), status.clone());
        self.note(t_ms, What::Backend, subject, status, prev);
    }
}

pub struct Watcher {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    state: Arc<Mutex<State>>,
}

/// What the watcher saw: the state when it started, and every change after.
#[derive(Debug, Clone, Serialize)]
pub struct Watched {
    pub initial_vip: Option<String>,
    pub initial_leader: Option<String>,
    pub changes: Vec<Change>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

impl Watcher {
    pub fn start(
        c: &Cluster,
        t0: Instant,
        etcd_tls: Option<crate::etcd::Tls>,
        stats_password: Option<String>,
        netns: Option<&BTreeMap<String, String>>,
    ) -> Watcher {
        let (stop, rx) = watch::channel(false);
        let state = Arc::new(Mutex::new(State::default()));
        let lbs: Vec<Host> = c.load_balancers().cloned().collect();
        let cps: Vec<Host> = c.control_planes().cloned().collect();
        {
            let mut st = lock(&state);
            st.initial.insert("#lbs".into(), lbs.len().to_string());
            st.initial.insert("#members".into(), cps.len().to_string());
        }
        let mut tasks = JoinSet::new();
        for h in &lbs {
            let src = match netns.and_then(|m| m.get(&h.name)) {
                Some(ns) => VipSource::Netns(ns.clone()),
                None => VipSource::Ssh {
                    host: h.clone(),
                    base: c.base_dir.clone(),
                },
            };
            tasks.spawn(vip_loop(
                h.name.clone(),
                src,
                c.lb.vip.to_string(),
                t0,
                state.clone(),
                rx.clone(),
            ));
            if c.lb.stats.enabled
                && let Some(pw) = &stats_password
            {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    c.lb.stats.user,
                    pw.trim()
                ));
                tasks.spawn(stats_loop(
                    h.name.clone(),
                    SocketAddr::new(h.address, c.lb.stats.port),
                    auth,
                    t0,
                    state.clone(),
                    rx.clone(),
                ));
            }
        }
        if let Some(tls) = etcd_tls {
            for h in &cps {
                tasks.spawn(leader_loop(
                    h.name.clone(),
                    url("https", h.address, c.etcd.client_port),
                    tls.clone(),
                    t0,
                    state.clone(),
                    rx.clone(),
                ));
            }
        }
        Watcher { stop, tasks, state }
    }

    /// The LBs that hold the VIP right now, as far as the watcher knows.
    pub fn vip_holders(&self) -> Vec<String> {
        lock(&self.state)
            .vip
            .iter()
            .filter(|(_, h)| **h == Some(true))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// API servers some HAProxy does not rate plainly UP right now (`SERVER@LB STATE`).
    pub fn unsettled(&self) -> Vec<String> {
        lock(&self.state)
            .backends
            .iter()
            .filter(|(_, st)| st.as_str() != "UP")
            .map(|(k, st)| format!("{k} {st}"))
            .collect()
    }

    pub async fn stop(mut self) -> Watched {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let st = lock(&self.state);
        Watched {
            initial_vip: st.initial.get("vip").cloned(),
            initial_leader: st.initial.get("etcd").cloned(),
            changes: st.changes.clone(),
        }
    }
}

/// Sleep until the next poll, or return false when told to stop.
async fn next(tick: &mut tokio::time::Interval, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tick.tick() => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

fn interval() -> tokio::time::Interval {
    let mut t = tokio::time::interval(POLL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    t
}

/// Where the VIP watcher reads an LB's addresses.
#[derive(Clone)]
pub enum VipSource {
    /// `ip -o addr show` over SSH (real hosts).
    Ssh {
        host: Host,
        base: std::path::PathBuf,
    },
    /// `ip -n NETNS -o addr show` from this machine (a lab host: its network namespace, which
    /// answers even while the host is partitioned or busy).
    Netns(String),
}

async fn addresses(
    src: &VipSource,
    session: &mut Option<Ssh>,
    last_try: &mut Option<Instant>,
) -> Option<String> {
    match src {
        VipSource::Netns(ns) => {
            let out = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::process::Command::new("ip")
                    .args(["-n", ns, "-o", "addr", "show"])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .ok()?
            .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        }
        VipSource::Ssh { host, base } => {
            if session.is_none() && last_try.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                *last_try = Some(Instant::now());
                *session = tokio::time::timeout(
                    Duration::from_millis(1500),
                    Ssh::connect(host, base, Duration::from_secs(1)),
                )
                .await
                .ok()
                .and_then(Result::ok);
            }
            let s = session.as_ref()?;
            let r = transport::run(
                s as &dyn Transport,
                "ip -o addr show",
                "ip -o addr show",
                Duration::from_secs(1),
            )
            .await;
            if r.is_err() {
                *session = None;
            }
            r.ok().map(|o| o.stdout_str())
        }
    }
}

async fn vip_loop(
    name: String,
    src: VipSource,
    vip: String,
    t0: Instant,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = interval();
    let mut session: Option<Ssh> = None;
    let mut last_try: Option<Instant> = None;
    let mut misses = 0;
    while next(&mut tick, &mut stop).await {
        let holds = addresses(&src, &mut session, &mut last_try)
            .await
            .map(|text| {
                text.split_whitespace()
                    .any(|w| w.split('/').next() == Some(vip.as_str()))
            });
        // One slow answer is not a lost host: it takes two misses in a row.
        misses = if holds.is_none() { misses + 1 } else { 0 };
        if holds.is_none() && misses < 2 {
            continue;
        }
        lock(&state).update_vip(ms_since(t0), &name, holds);
    }
}

async fn leader_loop(
    name: String,
    endpoint: String,
    tls: crate::etcd::Tls,
    t0: Instant,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = interval();
    let mut client: Option<etcd_client::Client> = None;
    let mut last_try: Option<Instant> = None;
    while next(&mut tick, &mut stop).await {
        if client.is_none() && last_try.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            last_try = Some(Instant::now());
            client = crate::etcd::connect(
                std::slice::from_ref(&endpoint),
                &tls,
                Duration::from_millis(700),
            )
            .await
            .ok();
        }
        let st = match client.as_mut() {
            Some(cl) => match tokio::time::timeout(Duration::from_millis(500), cl.status()).await {
                Ok(Ok(s)) => s.header().map(|h| (h.member_id(), s.leader())),
                _ => None,
            },
            None => None,
        };
        if st.is_none() {
            client = None;
        }
        lock(&state).update_member(ms_since(t0), &name, st);
    }
}

/// `status` of every server of HAProxy's `k8s-api` backend, from the stats CSV.
pub fn backend_states(csv: &str) -> Vec<(String, String)> {
    let mut lines = csv.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches('#')
        .trim()
        .split(',')
        .collect();
    let col = |n: &str| head.iter().position(|h| *h == n);
    let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
        return vec![];
    };
    let mut out = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        if get(px) == "k8s-api" && !["FRONTEND", "BACKEND", ""].contains(&get(sv)) {
            out.push((get(sv).to_string(), get(st).to_string()));
        }
    }
    out
}

async fn stats_loop(
    lb: String,
    addr: SocketAddr,
    auth: String,
    t0: Instant,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = interval();
    let mut unreachable = BTreeSet::new();
    while next(&mut tick, &mut stop).await {
        let r = tokio::time::timeout(Duration::from_millis(700), async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let req = hyper::Request::get("/stats;csv")
                .header(hyper::header::HOST, addr.to_string())
                .header(hyper::header::AUTHORIZATION, format!("Basic {auth}"))
                .header(hyper::header::CONNECTION, "close")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            super::prober::one_shot(TokioIo::new(tcp), req).await
        })
        .await;
        let t = ms_since(t0);
        let mut st = lock(&state);
        match r {
            Ok(Ok((200, body))) => {
                unreachable.clear();
                for (server, status) in backend_states(&String::from_utf8_lossy(&body)) {
                    st.update_backend(t, &format!("{server}@{lb}"), status);
                }
            }
            // HAProxy itself is gone: every backend of this LB is unknown.
            _ => {
                let subjects: Vec<String> = st
                    .backends
                    .keys()
                    .filter(|k| k.ends_with(&format!("@{lb}")))
                    .cloned()
                    .collect();
                for s in subjects {
                    if unreachable.insert(s.clone()) {
                        st.update_backend(t, &s, "no answer".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_changes_are_kept_and_the_first_value_is_the_initial_state() {
        let mut st = State::default();
        st.initial.insert("#lbs".into(), "2".into());
        st.update_vip(0.0, "lb1", Some(true));
        assert!(st.vip_label.is_none(), "waits for every LB");
        st.update_vip(10.0, "lb2", Some(false));
        st.update_vip(200.0, "lb1", Some(true));
        st.update_vip(300.0, "lb1", Some(false));
        st.update_vip(400.0, "lb1", None);
        st.update_vip(600.0, "lb2", Some(true));
        // An unreachable holder keeps its last known state, marked "?".
        st.update_vip(700.0, "lb1", Some(true));
        st.update_vip(800.0, "lb1", None);
        st.update_vip(850.0, "lb1", None);
        st.update_vip(900.0, "lb2", Some(false));
        assert_eq!(st.initial["vip"], "lb1");
        let c: Vec<(f64, &str, &str)> = st
            .changes
            .iter()
            .map(|c| (c.t_ms, c.from.as_str(), c.to.as_str()))
            .collect();
        assert_eq!(
            c,
            [
                (300.0, "lb1", "none"),
                (600.0, "none", "lb2"),
                (700.0, "lb2", "lb1+lb2"),
                (800.0, "lb1+lb2", "lb1?+lb2"),
                (900.0, "lb1?+lb2", "lb1?")
            ]
        );
    }

    #[test]
    fn the_leader_is_what_most_members_report() {
        let mut st = State::default();
        st.initial.insert("#members".into(), "3".into());
        st.update_member(0.0, "m1", Some((1, 1)));
        st.update_member(0.0, "m2", Some((2, 1)));
        st.update_member(0.0, "m3", Some((3, 1)));
        st.update_member(100.0, "m1", None);
        st.update_member(100.0, "m2", Some((2, 0)));
        st.update_member(150.0, "m3", Some((3, 0)));
        st.update_member(300.0, "m2", Some((2, 3)));
        st.update_member(300.0, "m3", Some((3, 3)));
        assert_eq!(st.initial["etcd"], "m1");
        let c: Vec<(&str, &str)> = st
            .changes
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str()))
            .collect();
        assert_eq!(c, [("m1", "none"), ("none", "m3")]);
    }

    #[test]
    fn haproxy_csv() {
        let csv = "# pxname,svname,scur,status\nk8s-api,FRONTEND,3,OPEN\nk8s-api,master1,1,UP\nk8s-api,master2,0,DOWN 1/2\nk8s-api,BACKEND,1,UP\nstats,FRONTEND,,OPEN\n";
        assert_eq!(
            backend_states(csv),
            [
                ("master1".to_string(), "UP".to_string()),
                ("master2".to_string(), "DOWN 1/2".to_string())
            ]
        );
    }
}
