//! What the cluster did during a drill, polled every ~200 ms in the background: which load
//! balancer holds the VIP (`ip -o addr`, over SSH; on a lab in the host's network namespace),
//! which etcd member leads (the etcd API), and how each load balancer's HAProxy rates each API
//! server (its stats CSV). The parsing is [`crate::observe`]'s; only changes are kept.

use crate::observe::etcd::{MemberStatus, leader_by_vote};
use crate::observe::haproxy::{self, ServerState};
use crate::observe::iface;
use crate::observe::vip::{self, Holder, Holders};
use crate::spec::{Cluster, Host, url};
use crate::transport::{self, Transport, ssh::Ssh};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
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

/// The etcd leader as the members report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// No member answered.
    Unknown,
    /// The members that answered know no leader (an election is under way).
    None,
    /// A member, by name (or by hex id when no member answered under that id).
    Member(String),
}

impl std::fmt::Display for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leader::Unknown => f.write_str("unknown"),
            Leader::None => f.write_str("none"),
            Leader::Member(m) => f.write_str(m),
        }
    }
}

impl Serialize for Leader {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How one HAProxy rates one API server, as the watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rating {
    State(ServerState),
    /// The stats page did not answer (HAProxy or its host is gone).
    NoAnswer,
}

impl Rating {
    fn state(&self) -> Option<&ServerState> {
        match self {
            Rating::State(s) => Some(s),
            Rating::NoAnswer => None,
        }
    }
    /// DOWN, plainly or on the way back up.
    pub fn is_down(&self) -> bool {
        self.state().is_some_and(ServerState::is_down)
    }
    /// Taken out: DOWN or in maintenance.
    pub fn is_out(&self) -> bool {
        self.state().is_some_and(ServerState::is_out)
    }
    /// Plainly UP (not half way, as `UP 1/2`).
    pub fn is_up(&self) -> bool {
        self.state() == Some(&ServerState::Up)
    }
}

impl std::fmt::Display for Rating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rating::State(s) => s.fmt(f),
            Rating::NoAnswer => f.write_str("no answer"),
        }
    }
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Vip {
        from: Holders,
        to: Holders,
    },
    Leader {
        from: Leader,
        to: Leader,
    },
    /// How HAProxy on `lb` rates API server `server`.
    Backend {
        server: String,
        lb: String,
        from: Rating,
        to: Rating,
    },
}

/// One observed change, in ms on the drill's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub t_ms: f64,
    pub event: Event,
}

impl Change {
    pub fn what(&self) -> What {
        match self.event {
            Event::Vip { .. } => What::Vip,
            Event::Leader { .. } => What::Leader,
            Event::Backend { .. } => What::Backend,
        }
    }
    /// `vip`, `etcd`, or `SERVER@LB` for a backend.
    pub fn subject(&self) -> String {
        match &self.event {
            Event::Vip { .. } => "vip".into(),
            Event::Leader { .. } => "etcd".into(),
            Event::Backend { server, lb, .. } => format!("{server}@{lb}"),
        }
    }
    /// The state before and after, as text.
    pub fn from_to(&self) -> (String, String) {
        match &self.event {
            Event::Vip { from, to } => (from.to_string(), to.to_string()),
            Event::Leader { from, to } => (from.to_string(), to.to_string()),
            Event::Backend { from, to, .. } => (from.to_string(), to.to_string()),
        }
    }
}

/// `{t_ms, what, subject, from, to}`, the shape reports have always had.
impl Serialize for Change {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (from, to) = self.from_to();
        let mut st = s.serialize_struct("Change", 5)?;
        st.serialize_field("t_ms", &self.t_ms)?;
        st.serialize_field("what", &self.what())?;
        st.serialize_field("subject", &self.subject())?;
        st.serialize_field("from", &from)?;
        st.serialize_field("to", &to)?;
        st.end()
    }
}

#[derive(Default)]
struct State {
    /// How many LBs and members there are: labels wait until each has answered once.
    lbs: usize,
    members_expected: usize,
    /// Per LB: holds the VIP? (None: could not ask.)
    vip: BTreeMap<String, Option<bool>>,
    vip_label: Option<Holders>,
    initial_vip: Option<Holders>,
    /// LBs that could not be asked, with their last known answer.
    stale: BTreeMap<String, bool>,
    /// Per member: (its id, the leader id it reports).
    members: BTreeMap<String, Option<(u64, u64)>>,
    /// Member id -> name, learned from the members' own answers.
    names: BTreeMap<u64, String>,
    leader_label: Option<Leader>,
    initial_leader: Option<Leader>,
    /// (server, lb) -> rating.
    backends: BTreeMap<(String, String), Rating>,
    changes: Vec<Change>,
}

impl State {
    /// `holds`: whether the LB carries the VIP; None when it could not be asked (then its last
    /// known answer stands, marked unconfirmed when that was "holds").
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
        if self.vip.len() < self.lbs {
            return;
        }
        let label = Holders(
            self.vip
                .iter()
                .filter_map(|(n, h)| match h {
                    Some(true) => Some(Holder {
                        lb: n.clone(),
                        unconfirmed: false,
                    }),
                    None if self.stale.get(n) == Some(&true) => Some(Holder {
                        lb: n.clone(),
                        unconfirmed: true,
                    }),
                    _ => None,
                })
                .collect(),
        );
        match self.vip_label.replace(label.clone()) {
            None => self.initial_vip = Some(label),
            Some(from) if from != label => self.changes.push(Change {
                t_ms,
                event: Event::Vip { from, to: label },
            }),
            Some(_) => {}
        }
    }

    fn update_member(&mut self, t_ms: f64, name: &str, st: Option<(u64, u64)>) {
        self.members.insert(name.to_string(), st);
        if let Some((id, _)) = st {
            self.names.insert(id, name.to_string());
        }
        if self.members.len() < self.members_expected {
            return;
        }
        let label = match leader_by_vote(self.members.values().flatten().copied()) {
            None => Leader::Unknown,
            Some(0) => Leader::None,
            Some(id) => Leader::Member(
                self.names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("{id:x}")),
            ),
        };
        match self.leader_label.replace(label.clone()) {
            None => self.initial_leader = Some(label),
            Some(from) if from != label => self.changes.push(Change {
                t_ms,
                event: Event::Leader { from, to: label },
            }),
            Some(_) => {}
        }
    }

    fn update_backend(&mut self, t_ms: f64, server: &str, lb: &str, to: Rating) {
        let key = (server.to_string(), lb.to_string());
        if let Some(from) = self.backends.insert(key, to.clone())
            && from != to
        {
            self.changes.push(Change {
                t_ms,
                event: Event::Backend {
                    server: server.into(),
                    lb: lb.into(),
                    from,
                    to,
                },
            });
        }
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
    pub initial_vip: Option<Holders>,
    pub initial_leader: Option<Leader>,
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
            st.lbs = lbs.len();
            st.members_expected = cps.len();
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
                tasks.spawn(stats_loop(
                    h.name.clone(),
                    SocketAddr::new(h.address, c.lb.stats.port),
                    (c.lb.stats.user.clone(), pw.trim().to_string()),
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
            .filter(|(_, r)| !r.is_up())
            .map(|((server, lb), r)| format!("{server}@{lb} {r}"))
            .collect()
    }

    pub async fn stop(mut self) -> Watched {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let st = lock(&self.state);
        Watched {
            initial_vip: st.initial_vip.clone(),
            initial_leader: st.initial_leader.clone(),
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
                    .args(["-n", ns])
                    .args(iface::SCRIPT.split(' ').skip(1))
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
                iface::SCRIPT,
                iface::SCRIPT,
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
            .map(|text| vip::holds(&text, &vip));
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
                Ok(Ok(s)) => s.header().map(|_| {
                    let m = MemberStatus::from_response(&s);
                    (m.member_id, m.leader)
                }),
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

async fn stats_loop(
    lb: String,
    addr: SocketAddr,
    (user, password): (String, String),
    t0: Instant,
    state: Arc<Mutex<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = interval();
    let mut unreachable = BTreeSet::new();
    while next(&mut tick, &mut stop).await {
        let r = haproxy::fetch(addr, &user, &password, Duration::from_millis(700)).await;
        let t = ms_since(t0);
        let mut st = lock(&state);
        match r {
            Ok(servers) => {
                unreachable.clear();
                for sv in servers {
                    st.update_backend(t, &sv.server, &lb, Rating::State(sv.status));
                }
            }
            // HAProxy itself is gone: every backend of this LB is unknown.
            Err(_) => {
                let servers: Vec<String> = st
                    .backends
                    .keys()
                    .filter(|(_, l)| *l == lb)
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in servers {
                    if unreachable.insert(s.clone()) {
                        st.update_backend(t, &s, &lb, Rating::NoAnswer);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(st: &State) -> Vec<(f64, String, String)> {
        st.changes
            .iter()
            .map(|c| {
                let (from, to) = c.from_to();
                (c.t_ms, from, to)
            })
            .collect()
    }

    #[test]
    fn only_real_changes_are_kept_and_the_first_value_is_the_initial_state() {
        let mut st = State {
            lbs: 2,
            ..State::default()
        };
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
        assert_eq!(
            st.initial_vip.as_ref().map(|v| v.to_string()),
            Some("lb1".into())
        );
        let c = texts(&st);
        let c: Vec<(f64, &str, &str)> = c
            .iter()
            .map(|(t, f, to)| (*t, f.as_str(), to.as_str()))
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
        assert!(
            st.changes
                .iter()
                .all(|c| c.what() == What::Vip && c.subject() == "vip")
        );
    }

    #[test]
    fn the_leader_is_what_most_members_report() {
        let mut st = State {
            members_expected: 3,
            ..State::default()
        };
        st.update_member(0.0, "m1", Some((1, 1)));
        st.update_member(0.0, "m2", Some((2, 1)));
        st.update_member(0.0, "m3", Some((3, 1)));
        st.update_member(100.0, "m1", None);
        st.update_member(100.0, "m2", Some((2, 0)));
        st.update_member(150.0, "m3", Some((3, 0)));
        st.update_member(300.0, "m2", Some((2, 3)));
        st.update_member(300.0, "m3", Some((3, 3)));
        assert_eq!(st.initial_leader, Some(Leader::Member("m1".into())));
        let c: Vec<(String, String)> = texts(&st).into_iter().map(|(_, f, t)| (f, t)).collect();
        assert_eq!(
            c,
            [("m1".into(), "none".into()), ("none".into(), "m3".into())]
        );
    }

    #[test]
    fn haproxy_csv() {
        let csv = "# pxname,svname,scur,status\nk8s-api,FRONTEND,3,OPEN\nk8s-api,master1,1,UP\nk8s-api,master2,0,DOWN 1/2\nk8s-api,BACKEND,1,UP\nstats,FRONTEND,,OPEN\n";
        let got: Vec<(String, String)> = haproxy::parse_csv(csv)
            .into_iter()
            .map(|s| (s.server, s.status.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("master1".to_string(), "UP".to_string()),
                ("master2".to_string(), "DOWN 1/2".to_string())
            ]
        );
    }

    #[test]
    fn backend_changes_serialize_as_reports_always_had_them() {
        let mut st = State::default();
        st.update_backend(0.0, "master1", "lb1", Rating::State(ServerState::Up));
        st.update_backend(5.0, "master1", "lb1", Rating::State(ServerState::Up));
        st.update_backend(10.0, "master1", "lb1", Rating::NoAnswer);
        assert_eq!(st.changes.len(), 1);
        assert_eq!(
            serde_json::to_value(&st.changes[0]).expect("json"),
            serde_json::json!({"t_ms": 10.0, "what": "backend", "subject": "master1@lb1", "from": "UP", "to": "no answer"})
        );
    }
}
