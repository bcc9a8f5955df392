//! The live probes behind `status` and `doctor`. Each has a short timeout and reports its own
//! failure instead of failing the whole status.

use super::{ApiProbe, PROBE_TIMEOUT, Unobserved};
use crate::spec::{Cluster, Host, url};
use crate::transport::{self, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::observe::haproxy::{Server as HaproxyServer, StatsFailure};

#[derive(Debug, Clone, Serialize)]
pub struct LbProbe {
    pub host: String,
    pub servers: Vec<HaproxyServer>,
    pub error: Option<StatsError>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EtcdMember {
    pub name: String,
    pub endpoint: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub leader: u64,
    pub is_leader: bool,
    pub raft_term: u64,
    pub raft_index: u64,
    pub db_size: u64,
    pub version: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cert {
    pub name: String,
    pub host: String,
    pub not_after: String,
    pub seconds_left: i64,
    pub days_left: i64,
}

/// Why an LB's stats page could not be read, and what its HAProxy process was doing then.
#[derive(Debug, Clone, Serialize)]
pub struct StatsError {
    pub kind: StatsFailure,
    pub message: String,
    /// HAProxy's service and processes, as seen over SSH at the same time.
    pub process: Option<ProcessState>,
    /// Why the process could not be seen, when SSH failed.
    pub ssh: Option<Unobserved>,
}

/// A failure known only by its message.
impl From<&str> for StatsError {
    fn from(message: &str) -> StatsError {
        StatsError {
            kind: StatsFailure::Other,
            message: message.into(),
            process: None,
            ssh: None,
        }
    }
}

impl std::fmt::Display for StatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A service's state from `systemctl` and its processes' states from /proc.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProcessState {
    /// `systemctl is-active`: active, inactive, failed, activating, reloading, ...
    pub active: String,
    /// (pid, state letter from /proc/PID/stat: R, S, D, T, Z, ...) of the main process and
    /// its children.
    pub procs: Vec<(u32, char)>,
}

impl ProcessState {
    /// systemd counts the service as running.
    pub fn running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading")
    }
    /// Processes stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
    pub fn stopped(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, st)| matches!(st, 'T' | 't'))
            .map(|(p, _)| *p)
            .collect()
    }
    pub fn describe(&self) -> String {
        let procs = self
            .procs
            .iter()
            .map(|(p, st)| format!("{p} {st}"))
            .collect::<Vec<_>>()
            .join(", ");
        if procs.is_empty() {
            format!("systemctl: {}", self.active)
        } else {
            format!("systemctl: {}; processes (pid state): {procs}", self.active)
        }
    }
}

/// A service's state and its processes': one script fragment for any unit, on systemd hosts
/// and on the lab's systemctl alike. Lines: `NAME.active STATE`, `NAME.proc PID STATE`.
pub fn service_script(unit: &str) -> String {
    format!(
        "echo \"{unit}.active $(systemctl is-active {unit} 2>/dev/null)\"; \
         pid=$(systemctl show -p MainPID --value {unit} 2>/dev/null); \
         if [ -n \"$pid\" ] && [ \"$pid\" != 0 ]; then \
         for p in $pid $(cat /proc/$pid/task/*/children 2>/dev/null); do \
         st=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f1); \
         [ -n \"$st\" ] && echo \"{unit}.proc $p $st\"; done; fi\n"
    )
}

/// Read what [`service_script`] printed for `unit`.
pub fn parse_service(text: &str, unit: &str) -> Option<ProcessState> {
    let mut st: Option<ProcessState> = None;
    for l in text.lines() {
        if let Some(a) = l.strip_prefix(&format!("{unit}.active ")) {
            st.get_or_insert_with(Default::default).active = a.trim().to_string();
        } else if let Some(p) = l.strip_prefix(&format!("{unit}.proc "))
            && let Some((pid, state)) = p.trim().split_once(' ')
            && let (Ok(pid), Some(state)) = (pid.parse(), state.chars().next())
        {
            st.get_or_insert_with(Default::default)
                .procs
                .push((pid, state));
        }
    }
    st
}

/// What one SSH round trip to a load balancer shows: whether it holds the VIP, and HAProxy.
#[derive(Debug, Clone, Default)]
pub struct LbView {
    pub holds_vip: bool,
    pub haproxy: Option<ProcessState>,
}

fn lb_script() -> String {
    format!(
        "{} 2>/dev/null\n{}true\n",
        crate::observe::iface::SCRIPT,
        service_script("haproxy")
    )
}

pub fn parse_lb_view(text: &str, vip: &str) -> LbView {
    LbView {
        holds_vip: crate::observe::vip::holds(text, vip),
        haproxy: parse_service(text, "haproxy"),
    }
}

/// Where probes get their SSH connections from: fresh ones (`status`, `doctor`), or the open
/// ones of a running `apply`.
#[derive(Clone, Copy)]
pub enum Conns<'a> {
    Fresh,
    Open(&'a BTreeMap<String, Arc<dyn Transport>>),
}

/// SSH connect timeout for probes.
pub const SSH_CONNECT: Duration = Duration::from_secs(2);
/// A probe's command over an open connection: generous, since a busy host is slow to fork a
/// session but is not down (CI, two labs on 2 cores: `date` took over 5 s once).
pub const SSH_COMMAND: Duration = Duration::from_secs(10);

/// Run `script` on `h` over SSH, with a connection from `conns`.
pub async fn ssh_run(
    c: &Cluster,
    h: &Host,
    conns: Conns<'_>,
    script: &str,
    display: &str,
) -> Result<String, Unobserved> {
    let fail = |e: transport::Error| Unobserved::from_transport(&h.name, &e);
    match conns {
        Conns::Open(m) => {
            let t = m.get(&h.name).ok_or_else(|| Unobserved {
                host: h.name.clone(),
                cause: None,
                why: "no connection to it".into(),
                help: String::new(),
                sudo_refused: None,
            })?;
            transport::run(t.as_ref(), script, display, SSH_COMMAND)
                .await
                .map(|o| o.stdout_str())
                .map_err(fail)
        }
        Conns::Fresh => {
            let t = transport::ssh::Ssh::connect(h, &c.base_dir, SSH_CONNECT)
                .await
                .map_err(fail)?;
            transport::run(&t, script, display, SSH_COMMAND)
                .await
                .map(|o| o.stdout_str())
                .map_err(fail)
        }
    }
}

/// Each load balancer's view over SSH (VIP, HAProxy's process), or why it could not be asked.
pub async fn lb_views(c: &Cluster, conns: Conns<'_>) -> Vec<(String, Result<LbView, Unobserved>)> {
    let vip = c.lb.vip.to_string();
    let script = lb_script();
    futures::future::join_all(c.load_balancers().map(|h| {
        let (vip, script) = (&vip, &script);
        async move {
            let r = ssh_run(
                c,
                h,
                conns,
                script,
                "ip -o addr show; systemctl is-active haproxy",
            )
            .await
            .map(|text| parse_lb_view(&text, vip));
            (h.name.clone(), r)
        }
    }))
    .await
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {} ms", d.as_millis()))?
}

/// Whether anything accepts connections on the VIP's API port.
pub async fn vip_answers(c: &Cluster) -> bool {
    let addr = SocketAddr::new(c.lb.vip, c.lb.api_port);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, crate::transport::tunnel::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Each LB's view of the API backends, from its stats page (CSV).
pub async fn haproxy(c: &Cluster, password: Option<&str>) -> Vec<LbProbe> {
    futures::future::join_all(c.load_balancers().map(|h| async move {
        let r = stats(c, h, password).await;
        match r {
            Ok(servers) => LbProbe {
                host: h.name.clone(),
                servers,
                error: None,
            },
            Err((kind, message)) => LbProbe {
                host: h.name.clone(),
                servers: vec![],
                error: Some(StatsError {
                    kind,
                    message,
                    process: None,
                    ssh: None,
                }),
            },
        }
    }))
    .await
}

async fn stats(
    c: &Cluster,
    h: &Host,
    password: Option<&str>,
) -> Result<Vec<HaproxyServer>, (StatsFailure, String)> {
    if !c.lb.stats.enabled {
        return Err((
            StatsFailure::NotConfigured,
            "the stats page is disabled (spec.loadBalancer.stats.enabled)".into(),
        ));
    }
    let Some(pw) = password else {
        return Err((
            StatsFailure::NotConfigured,
            format!(
                "no stats password file at {}",
                c.lb.stats.password_file.display()
            ),
        ));
    };
    let addr = SocketAddr::new(h.address, c.lb.stats.port);
    crate::observe::haproxy::fetch(addr, &c.lb.stats.user, pw, PROBE_TIMEOUT).await
}

/// /readyz and /livez through the VIP and on every control plane.
pub async fn api(c: &Cluster, ca: Option<&str>) -> Vec<ApiProbe> {
    let mut targets = vec![("VIP".to_string(), SocketAddr::new(c.lb.vip, c.lb.api_port))];
    targets.extend(c.control_planes().map(|h| {
        (
            h.name.clone(),
            SocketAddr::new(h.address, c.kubernetes.api_server_port),
        )
    }));
    let cfg = ca.map(crate::probe::client_config);
    futures::future::join_all(targets.into_iter().map(|(target, addr)| {
        let cfg = &cfg;
        async move {
            let mut p = ApiProbe {
                target,
                address: addr.to_string(),
                readyz: None,
                livez: None,
                latency_ms: None,
                error: None,
            };
            match cfg {
                Some(Ok(cfg)) => {
                    let (r, l) = tokio::join!(
                        crate::probe::get(cfg, addr, "/readyz", PROBE_TIMEOUT),
                        crate::probe::get(cfg, addr, "/livez", PROBE_TIMEOUT)
                    );
                    match r {
                        Ok(r) => {
                            p.readyz = Some(r.status);
                            p.latency_ms = Some(r.latency_ms);
                        }
                        Err(e) => p.error = Some(format!("{e:#}")),
                    }
                    p.livez = l.ok().map(|r| r.status);
                }
                Some(Err(e)) => p.error = Some(format!("bad CA: {e:#}")),
                None => p.error = Some("no cluster CA known to verify against".into()),
            }
            p
        }
    }))
    .await
}

/// Every member's own status, asked one endpoint at a time, and the alarms.
pub async fn etcd(c: &Cluster, tls: &crate::etcd::Tls) -> (Vec<EtcdMember>, Vec<String>) {
    let members = futures::future::join_all(c.control_planes().map(|h| async move {
        let endpoint = url("https", h.address, c.etcd.client_port);
        let mut m = EtcdMember {
            name: h.name.clone(),
            endpoint: endpoint.clone(),
            ..Default::default()
        };
        match crate::observe::etcd::status(&endpoint, tls, PROBE_TIMEOUT).await {
            Ok(st) => {
                m.is_leader = st.is_leader();
                m.member_id = st.member_id;
                m.cluster_id = st.cluster_id;
                m.raft_term = st.raft_term;
                m.leader = st.leader;
                m.raft_index = st.raft_index;
                m.db_size = st.db_size;
                m.version = st.version;
            }
            Err(e) => m.error = Some(short_error(&e)),
        }
        m
    }))
    .await;
    let mut alarms = Vec::new();
    if let Some(up) = members.iter().find(|m| m.error.is_none()) {
        let r = with_timeout(PROBE_TIMEOUT, async {
            let mut cl =
                crate::etcd::connect(std::slice::from_ref(&up.endpoint), tls, PROBE_TIMEOUT)
                    .await?;
            Ok(cl
                .alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None,
                )
                .await?)
        })
        .await;
        if let Ok(r) = r {
            for a in r.alarms() {
                let who = members
                    .iter()
                    .find(|m| m.member_id == a.member_id())
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| format!("{:x}", a.member_id()));
                alarms.push(format!("{:?} on {who}", a.alarm()));
            }
        }
    }
    (members, alarms)
}

pub fn tls_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(Arc::new(match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
        None => b.with_no_client_auth(),
    }))
}

/// The leaf certificate a live endpoint serves, as DER, from a new TLS handshake.
pub async fn served_der(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> anyhow::Result<Vec<u8>> {
    with_timeout(PROBE_TIMEOUT, async {
        let tcp = crate::transport::tunnel::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow::anyhow!("no certificate"))?
            .to_vec();
        Ok(der)
    })
    .await
}

/// The certificate a live endpoint serves: its expiry.
async fn served_cert(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> anyhow::Result<(String, i64)> {
    let der = served_der(cfg, addr).await?;
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("bad certificate: {e}"))?;
    let na = x.validity().not_after;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok((na.to_string(), na.timestamp() - now))
}

/// Expiry of the API server and etcd certificates, read over TLS from the live endpoints.
pub async fn certs(c: &Cluster, api_ca: Option<&str>, etcd: &crate::etcd::Tls) -> Vec<Cert> {
    let api_cfg = api_ca.and_then(|ca| tls_config(ca, None).ok());
    let etcd_cfg = tls_config(&etcd.ca_pem, Some((&etcd.cert_pem, &etcd.key_pem))).ok();
    let mut jobs = Vec::new();
    for h in c.control_planes() {
        if let Some(cfg) = &api_cfg {
            jobs.push((
                "apiserver",
                h.name.clone(),
                cfg.clone(),
                SocketAddr::new(h.address, c.kubernetes.api_server_port),
            ));
        }
        if let Some(cfg) = &etcd_cfg {
            jobs.push((
                "etcd-server",
                h.name.clone(),
                cfg.clone(),
                SocketAddr::new(h.address, c.etcd.client_port),
            ));
            // The peer port: an expired peer certificate splits the cluster at the next
            // reconnect, while every client still looks fine.
            jobs.push((
                "etcd-peer",
                h.name.clone(),
                cfg.clone(),
                SocketAddr::new(h.address, c.etcd.peer_port),
            ));
        }
    }
    futures::future::join_all(jobs.into_iter().map(|(name, host, cfg, addr)| async move {
        served_cert(&cfg, addr)
            .await
            .ok()
            .map(|(not_after, secs)| Cert {
                name: name.into(),
                host,
                not_after,
                seconds_left: secs,
                days_left: secs.div_euclid(86400),
            })
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// How many hosts [`on_hosts`] connects to at once (apply's default concurrency): a 100-host
/// cluster must not start 100 `ssh` masters together.
pub const HOSTS_AT_ONCE: usize = 30;

/// Run a read-only script on every host in `names` (doctor's SSH checks), the script chosen
/// per host, [`HOSTS_AT_ONCE`] hosts at a time, results in the order of `names`. Each result
/// carries the host's clock offset, from a `date` round trip timed on its own. Hosts that
/// cannot be asked come back with why.
pub async fn on_hosts(
    c: &Cluster,
    names: &[String],
    script: impl Fn(&Host) -> String,
) -> Vec<(String, Result<(String, i64), Unobserved>)> {
    use futures::stream::StreamExt;
    let script = &script;
    // Collected first: a lazy `map` closure here is not `Send` for every lifetime.
    let asks: Vec<_> = names
        .iter()
        .map(|n| async move {
            let r = async {
                let h = c.host(n).ok_or_else(|| Unobserved {
                    host: n.clone(),
                    cause: None,
                    why: "not in the spec".into(),
                    help: String::new(),
                    sudo_refused: None,
                })?;
                let fail = |e: transport::Error| Unobserved::from_transport(n, &e);
                let t = transport::ssh::Ssh::connect(h, &c.base_dir, SSH_CONNECT)
                    .await
                    .map_err(fail)?;
                let t0 = now_ms();
                let d = transport::run(&t, "date +%s%3N", "date", SSH_COMMAND)
                    .await
                    .map_err(fail)?;
                let t1 = now_ms();
                let remote: i64 = d.stdout_str().trim().parse().unwrap_or((t0 + t1) / 2);
                let off = remote - (t0 + t1) / 2;
                // What the round trip cannot tell apart goes to the host's benefit.
                let off = if off.abs() > (t1 - t0) / 2 {
                    off - off.signum() * ((t1 - t0) / 2)
                } else {
                    0
                };
                let o = transport::run(&t, &script(h), "doctor checks", SSH_COMMAND * 2)
                    .await
                    .map_err(fail)?;
                Ok((o.stdout_str(), off))
            }
            .await;
            (n.clone(), r)
        })
        .collect();
    futures::stream::iter(asks)
        .buffered(HOSTS_AT_ONCE)
        .collect()
        .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Node readiness with kubeadm, read with kubectl on the first control plane that answers.
/// `None` for the lab (no kubelet) or when no control plane can tell.
pub async fn nodes(c: &Cluster) -> Option<Vec<(String, bool)>> {
    if c.kubernetes.bootstrap != crate::spec::Bootstrap::Kubeadm {
        return None;
    }
    // Every control plane has admin.conf: the first that answers counts, so one control plane
    // down does not hide the nodes.
    let names: Vec<String> = c.control_planes().map(|h| h.name.clone()).collect();
    let script = |_: &Host| {
        "kubectl --kubeconfig=/etc/kubernetes/admin.conf get nodes --no-headers 2>/dev/null".into()
    };
    on_hosts(c, &names, script)
        .await
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .map(|(text, _)| parse_nodes(&text))
        .find(|n| !n.is_empty())
}

/// `kubectl get nodes --no-headers`: NAME STATUS ROLES AGE VERSION.
pub fn parse_nodes(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let status = it.next()?;
            Some((name.to_string(), status.split(',').any(|s| s == "Ready")))
        })
        .collect()
}

/// gRPC errors are long; keep what an operator needs.
pub fn short_error(e: &anyhow::Error) -> String {
    let t = format!("{e:#}");
    if t.contains("ConnectionRefused") || t.contains("Connection refused") {
        "connection refused".into()
    } else if t.contains("TimedOut") || t.contains("timed out") || t.contains("Elapsed") {
        "timed out".into()
    } else if t.contains("No route") || t.contains("unreachable") {
        "unreachable".into()
    } else {
        t.chars().take(160).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_nodes_are_parsed() {
        let out = "master1   Ready                      control-plane   3d    v1.37.0\nworker1   NotReady                   <none>          3d    v1.37.0\nworker2   Ready,SchedulingDisabled   <none>          3d    v1.37.0\n";
        assert_eq!(
            parse_nodes(out),
            vec![
                ("master1".into(), true),
                ("worker1".into(), false),
                ("worker2".into(), true)
            ]
        );
    }

    /// HAProxy 2.6's stats CSV on the lab, seconds after a cold apply (captured): each server
    /// went down once while its API server was not up yet (`chkdown` 1), then rose.
    const STATS_AFTER_COLD_APPLY: &str = concat!(
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n",
        "k8s-api,master1,0,0,0,1,,4,1631,4662,,0,,0,0,0,0,UP,1,1,0,1,1,6,7,,1,6,1,57,4,,2,0,,2,L7OK,200,7,,,,,,,,,,,0,0,,,,,3,,,0,0,0,26,,,,Layer7 check passed,,2,2,3,,,,,,tcp,,,,,,,,0,4,0,,,0,,0,0,0,41,0,0,0,0,1,1,,,,-,2,13,0,,,,,,,,,,,,,,,,,,,,,,\n",
        "k8s-api,master2,0,0,0,1,,3,407,1165,,0,,0,0,0,0,UP,1,1,0,1,1,5,8,,1,6,2,57,3,,2,0,,2,L7OK,200,12,,,,,,,,,,,0,0,,,,,3,,,0,0,0,13,,,,Layer7 check passed,,2,2,3,,,,,,tcp,,,,,,,,0,3,0,,,0,,0,0,0,29,0,0,0,0,1,1,,,,-,2,12,0,,,,,,,,,,,,,,,,,,,,,,\n",
        "k8s-api,BACKEND,0,0,0,3,400,10,2853,8152,0,0,,0,0,0,0,UP,2,3,0,,1,6,7,,1,6,0,,10,,1,0,,4,,,,,,,,,,,,,,0,0,0,0,0,0,3,,,0,0,0,23,,,,,,,,,,,,,,tcp,,,,,,,,0,10,0,,,,,0,0,0,41,0,,,,,3,0,0,0,-,6,36,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,99,99,4956,1008,0,0,\n",
    );

    fn parse_stats_csv(csv: &str) -> Vec<HaproxyServer> {
        crate::observe::haproxy::parse_csv(csv)
    }
    use crate::observe::haproxy::dechunk;

    #[test]
    fn real_stats_csv_gives_state_and_transitions() {
        let s = parse_stats_csv(STATS_AFTER_COLD_APPLY);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            (
                s[0].server.as_str(),
                s[0].status.to_string().as_str(),
                s[0].check.as_str()
            ),
            ("master1", "UP", "L7OK")
        );
        assert_eq!((s[0].last_change_s, s[0].transitions), (6, 1));
        assert_eq!((s[1].last_change_s, s[1].transitions), (5, 1));
    }

    #[test]
    fn lb_view_reads_the_vip_and_haproxys_processes() {
        // What lb_script printed on the lab's VIP holder (captured), then the process lines
        // it printed on lb2 with HAProxy's master and worker stopped by SIGSTOP.
        let text = include_str!("../observe/testdata/lb-view-holder.txt");
        let v = parse_lb_view(text, "10.160.0.100");
        assert!(v.holds_vip);
        let p = v.haproxy.expect("haproxy");
        assert!(p.running() && p.stopped().is_empty());
        assert_eq!(p.procs, vec![(22734, 'S'), (22736, 'S')]);
        let stopped = format!(
            "{}haproxy.active active\nhaproxy.proc 29875 T\nhaproxy.proc 7832 T\n",
            include_str!("../observe/testdata/ip-addr-lb-not-holding-vip.txt")
        );
        let v = parse_lb_view(&stopped, "10.160.0.100");
        assert!(!v.holds_vip);
        assert_eq!(v.haproxy.expect("haproxy").stopped(), vec![29875, 7832]);
        // A prefix of the VIP is not the VIP.
        assert!(!parse_lb_view(text, "10.160.0.10").holds_vip);
        let longer = "2: eth0    inet 10.160.0.1000/24 scope global eth0\n";
        assert!(!parse_lb_view(longer, "10.160.0.100").holds_vip);
        let dead = parse_service("haproxy.active failed\n", "haproxy").expect("state");
        assert!(!dead.running() && dead.procs.is_empty());
        assert_eq!(parse_service("", "haproxy"), None);
    }

    #[test]
    fn chunked_stats_csv_is_parsed() {
        let csv = "# pxname,svname,status,lastchg,check_status\nk8s-api,FRONTEND,OPEN,,\nk8s-api,master1,UP,116,L7OK\nk8s-api,master2,DOWN,3,L7STS\nk8s-api,BACKEND,UP,116,\n";
        let body = format!("{:X}\r\n{}\r\n0\r\n\r\n", csv.len(), csv);
        let servers = parse_stats_csv(&dechunk(&body));
        assert_eq!(servers.len(), 2);
        assert_eq!(
            (
                servers[1].server.as_str(),
                servers[1].status.to_string().as_str(),
                servers[1].last_change_s
            ),
            ("master2", "DOWN", 3)
        );
        assert_eq!(servers[0].check, "L7OK");
    }
}
