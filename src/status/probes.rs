//! The live probes behind `status` and `doctor`. Each has a short timeout and reports its own
//! failure instead of failing the whole status.

use super::{ApiProbe, PROBE_TIMEOUT};
use crate::spec::{Cluster, url};
use crate::transport::{self, Transport};
use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Serialize)]
pub struct HaproxyServer {
    pub server: String,
    pub status: String,
    pub check: String,
    pub last_change_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LbProbe {
    pub host: String,
    pub servers: Vec<HaproxyServer>,
    pub error: Option<String>,
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

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {} ms", d.as_millis()))?
}

/// Which load balancers carry the VIP (over SSH), and whether anything answers on it.
pub async fn vip(c: &Cluster) -> (Vec<String>, Vec<String>, bool) {
    let vip = c.lb.vip.to_string();
    let checks = futures::future::join_all(c.load_balancers().map(|h| {
        let vip = vip.clone();
        async move {
            let r = with_timeout(Duration::from_millis(2500), async {
                let t =
                    transport::ssh::Ssh::connect(h, &c.base_dir, Duration::from_secs(2)).await?;
                let o = transport::run(
                    &t,
                    "ip -o addr show",
                    "ip -o addr show",
                    Duration::from_secs(2),
                )
                .await?;
                Ok(o.stdout_str()
                    .split_whitespace()
                    .any(|w| w.split('/').next() == Some(vip.as_str())))
            })
            .await;
            (h.name.clone(), r)
        }
    }));
    let answers = async {
        let addr = SocketAddr::new(c.lb.vip, c.lb.api_port);
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        )
    };
    let (results, answers) = tokio::join!(checks, answers);
    let mut holders = Vec::new();
    let mut unknown = Vec::new();
    for (h, r) in results {
        match r {
            Ok(true) => holders.push(h),
            Ok(false) => {}
            Err(_) => unknown.push(h),
        }
    }
    (holders, unknown, answers)
}

async fn http_get(
    addr: SocketAddr,
    path: &str,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// Undo HTTP/1.1 chunked transfer encoding (HAProxy's stats page uses it even for HTTP/1.0).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Parse HAProxy's stats CSV: the servers of backend `k8s-api`.
pub fn parse_stats_csv(csv: &str) -> Vec<HaproxyServer> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return vec![];
    };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let idx = |n: &str| cols.iter().position(|c| *c == n);
    let (Some(px), Some(sv), Some(st), Some(lc), Some(ck)) = (
        idx("pxname"),
        idx("svname"),
        idx("status"),
        idx("lastchg"),
        idx("check_status"),
    ) else {
        return vec![];
    };
    lines
        .map(|l| l.split(',').collect::<Vec<&str>>())
        .filter(|f| {
            f.get(px) == Some(&"k8s-api")
                && !matches!(f.get(sv), Some(&"FRONTEND") | Some(&"BACKEND") | None)
        })
        .map(|f| HaproxyServer {
            server: f.get(sv).unwrap_or(&"").to_string(),
            status: f.get(st).unwrap_or(&"").to_string(),
            check: f.get(ck).unwrap_or(&"").to_string(),
            last_change_s: f.get(lc).and_then(|x| x.parse().ok()).unwrap_or(0),
        })
        .collect()
}

/// Each LB's view of the API backends, from its stats page (CSV).
pub async fn haproxy(c: &Cluster, password: Option<&str>) -> Vec<LbProbe> {
    futures::future::join_all(c.load_balancers().map(|h| async move {
        let r = async {
            if !c.lb.stats.enabled {
                anyhow::bail!("the stats page is disabled (spec.loadBalancer.stats.enabled)");
            }
            let pw = password.ok_or_else(|| {
                anyhow::anyhow!(
                    "no stats password file at {}",
                    c.lb.stats.password_file.display()
                )
            })?;
            let addr = SocketAddr::new(h.address, c.lb.stats.port);
            let (code, body) = with_timeout(
                PROBE_TIMEOUT,
                http_get(addr, "/stats;csv", Some((&c.lb.stats.user, pw))),
            )
            .await?;
            if code != 200 {
                anyhow::bail!("stats page answered {code}");
            }
            Ok(parse_stats_csv(&body))
        }
        .await;
        match r {
            Ok(servers) => LbProbe {
                host: h.name.clone(),
                servers,
                error: None,
            },
            Err(e) => LbProbe {
                host: h.name.clone(),
                servers: vec![],
                error: Some(format!("{e:#}")),
            },
        }
    }))
    .await
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
        let r = with_timeout(PROBE_TIMEOUT, async {
            let mut cl =
                crate::etcd::connect(std::slice::from_ref(&endpoint), tls, PROBE_TIMEOUT).await?;
            let st = cl.status().await?;
            Ok(st)
        })
        .await;
        match r {
            Ok(st) => {
                if let Some(hd) = st.header() {
                    m.member_id = hd.member_id();
                    m.cluster_id = hd.cluster_id();
                    m.raft_term = hd.raft_term();
                }
                m.leader = st.leader();
                m.is_leader = m.leader != 0 && m.leader == m.member_id;
                m.raft_index = st.raft_index();
                m.db_size = st.db_size() as u64;
                m.version = st.version().to_string();
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

fn tls_config(
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

/// The certificate a live endpoint serves: its expiry.
async fn served_cert(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> anyhow::Result<(String, i64)> {
    with_timeout(PROBE_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow::anyhow!("no certificate"))?
            .clone();
        let (_, x) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| anyhow::anyhow!("bad certificate: {e}"))?;
        let na = x.validity().not_after;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Ok((na.to_string(), na.timestamp() - now))
    })
    .await
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

/// Run a read-only command on every host in `names` (doctor's SSH checks). Each result carries
/// the host's clock offset, from a `date` round trip timed on its own. Unreachable hosts come
/// back as errors.
pub async fn on_hosts(
    c: &Cluster,
    names: &[String],
    script: &str,
) -> Vec<(String, anyhow::Result<(String, i64)>)> {
    futures::future::join_all(names.iter().map(|n| async move {
        let r = async {
            let h = c.host(n).ok_or_else(|| anyhow::anyhow!("no host {n}"))?;
            let t = with_timeout(
                Duration::from_millis(2500),
                transport::ssh::Ssh::connect(h, &c.base_dir, Duration::from_secs(2)),
            )
            .await?;
            let t0 = now_ms();
            let d = transport::run(
                &t as &dyn Transport,
                "date +%s%3N",
                "date",
                Duration::from_secs(3),
            )
            .await?;
            let t1 = now_ms();
            let remote: i64 = d.stdout_str().trim().parse().unwrap_or((t0 + t1) / 2);
            let off = remote - (t0 + t1) / 2;
            // What the round trip cannot tell apart goes to the host's benefit.
            let off = if off.abs() > (t1 - t0) / 2 {
                off - off.signum() * ((t1 - t0) / 2)
            } else {
                0
            };
            let o = transport::run(&t as &dyn Transport, script, script, Duration::from_secs(3))
                .await?;
            Ok((o.stdout_str(), off))
        }
        .await;
        (n.clone(), r)
    }))
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
    let names: Vec<String> = c.control_planes().map(|h| h.name.clone()).take(1).collect();
    let script =
        "kubectl --kubeconfig=/etc/kubernetes/admin.conf get nodes --no-headers 2>/dev/null";
    let (_, r) = on_hosts(c, &names, script).await.into_iter().next()?;
    let (text, _) = r.ok()?;
    let nodes = parse_nodes(&text);
    if nodes.is_empty() { None } else { Some(nodes) }
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

    #[test]
    fn chunked_stats_csv_is_parsed() {
        let csv = "# pxname,svname,status,lastchg,check_status\nk8s-api,FRONTEND,OPEN,,\nk8s-api,master1,UP,116,L7OK\nk8s-api,master2,DOWN,3,L7STS\nk8s-api,BACKEND,UP,116,\n";
        let body = format!("{:X}\r\n{}\r\n0\r\n\r\n", csv.len(), csv);
        let servers = parse_stats_csv(&dechunk(&body));
        assert_eq!(servers.len(), 2);
        assert_eq!(
            (
                servers[1].server.as_str(),
                servers[1].status.as_str(),
                servers[1].last_change_s
            ),
            ("master2", "DOWN", 3)
        );
        assert_eq!(servers[0].check, "L7OK");
    }
}
