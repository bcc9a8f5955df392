//! Where hakube's own probes connect: the endpoint resolver shared by etcd, the API server and
//! VIP probes, HAProxy's stats page and the drill's client probe.
//!
//! With `spec.access: direct` an address is connected to as it is. With `ssh` (hosts behind a
//! bastion), each address goes through a local forward on an SSH master connection: a host's
//! own address through that host, the VIP through a load balancer. TLS still checks the real
//! address: callers name it, only the TCP connection goes to the forward. `auto` picks one once
//! per process ([`setup`]).
//!
//! The resolver is process-wide, so that every code path uses it without threading a handle
//! through; it is set up once by each command (apply, status, doctor, drill).

use super::ssh::Ssh;
use crate::spec::{Access, Cluster, Host};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long `auto` waits for a control plane's port to answer from here.
pub const AUTO_PROBE: Duration = Duration::from_secs(2);
/// SSH connect timeout for the tunnels' own connections.
const CONNECT: Duration = Duration::from_secs(10);
/// A host whose SSH connection failed is not tried again for this long (each probe would
/// otherwise wait for the connect timeout).
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// How an address was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What to connect to.
    pub local: SocketAddr,
    /// The host whose SSH connection carried it; `None` for direct.
    pub via: Option<String>,
}

#[derive(Default)]
struct HostTunnel {
    ssh: Option<Arc<Ssh>>,
    forwards: HashMap<SocketAddr, SocketAddr>,
    failed: Option<(Instant, String)>,
}

struct Tunnels {
    hosts: Vec<Host>,
    base_dir: std::path::PathBuf,
    vip: std::net::IpAddr,
    lbs: Vec<String>,
    per_host: Mutex<HashMap<String, Arc<tokio::sync::Mutex<HostTunnel>>>>,
    /// The last route each address took, for status.
    used: Mutex<BTreeMap<SocketAddr, String>>,
}

static ACTIVE: RwLock<Option<Arc<Tunnels>>> = RwLock::new(None);
static MODE: RwLock<Option<Access>> = RwLock::new(None);

/// The access this process uses: `Direct` or `Ssh` once [`setup`] ran, `Direct` before.
pub fn mode() -> Access {
    MODE.read()
        .map(|m| m.unwrap_or(Access::Direct))
        .unwrap_or(Access::Direct)
}

/// Decide the access for `c` (probing once for `auto`) and set up the resolver. Returns the
/// access chosen: `Direct` or `Ssh`.
pub async fn setup(c: &Cluster) -> Access {
    // Once per process: `status --watch` and doctor (which gathers status) call it again.
    if let Ok(m) = MODE.read()
        && let Some(a) = *m
    {
        return a;
    }
    let chosen = match c.access {
        Access::Auto => {
            if reachable_directly(c).await {
                Access::Direct
            } else {
                Access::Ssh
            }
        }
        a => a,
    };
    let tunnels = (chosen == Access::Ssh).then(|| {
        Arc::new(Tunnels {
            hosts: c.hosts.clone(),
            base_dir: c.base_dir.clone(),
            vip: c.lb.vip,
            lbs: c.load_balancers().map(|h| h.name.clone()).collect(),
            per_host: Mutex::default(),
            used: Mutex::default(),
        })
    });
    if let Ok(mut a) = ACTIVE.write() {
        *a = tunnels;
    }
    if let Ok(mut m) = MODE.write() {
        *m = Some(chosen);
    }
    if chosen == Access::Ssh {
        warm_up(c).await;
    }
    chosen
}

/// Open the SSH connections and forwards of every endpoint hakube probes, in parallel, so that
/// the probes' own short timeouts measure the service, not an SSH login through the bastion.
/// Failures are left to the probes, which report them.
async fn warm_up(c: &Cluster) {
    let mut addrs = vec![SocketAddr::new(c.lb.vip, c.lb.api_port)];
    for h in c.control_planes() {
        addrs.push(SocketAddr::new(h.address, c.etcd.client_port));
        addrs.push(SocketAddr::new(h.address, c.kubernetes.api_server_port));
    }
    if c.lb.stats.enabled {
        addrs.extend(
            c.load_balancers()
                .map(|h| SocketAddr::new(h.address, c.lb.stats.port)),
        );
    }
    let all = futures::future::join_all(addrs.into_iter().map(route));
    let _ = tokio::time::timeout(CONNECT + Duration::from_secs(5), all).await;
}

/// Whether a control plane's etcd client or API port answers from here: a connection, or a
/// refusal (nothing listens yet, but the path is open). Only timeouts and unreachable
/// networks mean a firewall or a bastion is in the way.
pub async fn reachable_directly(c: &Cluster) -> bool {
    let mut addrs = Vec::new();
    for h in c.control_planes() {
        addrs.push(SocketAddr::new(h.address, c.etcd.client_port));
        addrs.push(SocketAddr::new(h.address, c.kubernetes.api_server_port));
    }
    let tries = addrs.into_iter().map(|a| async move {
        match tokio::time::timeout(AUTO_PROBE, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Err(_) => false,
        }
    });
    futures::future::join_all(tries)
        .await
        .into_iter()
        .any(|x| x)
}

/// The access in words, for messages: `direct` or `through SSH`.
pub fn describe(a: Access) -> &'static str {
    match a {
        Access::Ssh => "through SSH (spec.access)",
        _ => "direct",
    }
}

fn active() -> Option<Arc<Tunnels>> {
    ACTIVE.read().ok().and_then(|a| a.clone())
}

/// Where to connect for `addr`, and which host carries it.
pub async fn route(addr: SocketAddr) -> std::io::Result<Route> {
    let Some(t) = active() else {
        return Ok(Route {
            local: addr,
            via: None,
        });
    };
    let candidates: Vec<String> = if addr.ip() == t.vip {
        t.lbs.clone()
    } else {
        match t.hosts.iter().find(|h| h.address == addr.ip()) {
            Some(h) => vec![h.name.clone()],
            // Not a cluster address: nothing to go through.
            None => {
                return Ok(Route {
                    local: addr,
                    via: None,
                });
            }
        }
    };
    let mut errors = Vec::new();
    for name in candidates {
        match t.forward(&name, addr).await {
            Ok(local) => {
                if let Ok(mut u) = t.used.lock() {
                    u.insert(addr, name.clone());
                }
                return Ok(Route {
                    local,
                    via: Some(name),
                });
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(std::io::Error::other(format!(
        "no SSH forward to {addr} (spec.access: ssh): {}",
        errors.join("; ")
    )))
}

/// Connect to `addr` as the access says.
pub async fn connect(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let r = route(addr).await?;
    tokio::net::TcpStream::connect(r.local).await
}

/// An `https://IP:PORT` URL as the access says, and the real address for TLS when it changed.
pub async fn url(u: &str) -> std::io::Result<(String, Option<String>)> {
    let Some((addr, rebuild)) = split_url(u) else {
        return Ok((u.to_string(), None));
    };
    let r = route(addr).await?;
    if r.local == addr {
        return Ok((u.to_string(), None));
    }
    Ok((rebuild(r.local), Some(addr.ip().to_string())))
}

/// The address of a `scheme://IP:PORT[/path]` URL, and how to build the URL for another one.
fn split_url(u: &str) -> Option<(SocketAddr, impl Fn(SocketAddr) -> String + '_)> {
    let (scheme, rest) = u.split_once("://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let addr = hostport.parse::<SocketAddr>().ok()?;
    Some((addr, move |a: SocketAddr| format!("{scheme}://{a}{path}")))
}

/// How `addrs` were reached, in words: `direct`, or `via lb1, lb2` (the hosts whose SSH
/// connections carried them; `via SSH (not reached)` when none got that far).
pub fn reached(addrs: &[SocketAddr]) -> String {
    if mode() != Access::Ssh {
        return "direct".into();
    }
    let used = used();
    let mut via: Vec<&str> = addrs
        .iter()
        .filter_map(|a| used.get(a).map(String::as_str))
        .collect();
    via.sort();
    via.dedup();
    if via.is_empty() {
        "via SSH (not reached)".into()
    } else {
        format!("via {}", via.join(", "))
    }
}

/// How each address was last reached: the host that carried it.
pub fn used() -> BTreeMap<SocketAddr, String> {
    active()
        .and_then(|t| t.used.lock().ok().map(|u| u.clone()))
        .unwrap_or_default()
}

impl Tunnels {
    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<HostTunnel>> {
        let mut m = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// A forward to `target` on `name`'s connection, opening (or reopening) it as needed.
    async fn forward(&self, name: &str, target: SocketAddr) -> Result<SocketAddr, String> {
        let slot = self.slot(name);
        let mut ht = slot.lock().await;
        // A master that went away (partition, reboot) takes its forwards with it.
        if let Some(s) = &ht.ssh
            && !s.alive().await
        {
            ht.ssh = None;
            ht.forwards.clear();
        }
        if let Some(local) = ht.forwards.get(&target) {
            return Ok(*local);
        }
        if ht.ssh.is_none() {
            if let Some((at, e)) = &ht.failed
                && at.elapsed() < RETRY_AFTER
            {
                return Err(e.clone());
            }
            let h = self
                .hosts
                .iter()
                .find(|h| h.name == name)
                .ok_or_else(|| format!("{name} is not in the spec"))?;
            match Ssh::connect(h, &self.base_dir, CONNECT).await {
                Ok(s) => {
                    ht.ssh = Some(Arc::new(s));
                    ht.failed = None;
                }
                Err(e) => {
                    let e = e.to_string();
                    let first = e.lines().next().unwrap_or_default().to_string();
                    ht.failed = Some((Instant::now(), first.clone()));
                    return Err(first);
                }
            }
        }
        let ssh = ht.ssh.clone().ok_or("no SSH connection")?;
        let local = ssh.forward(target).await.map_err(|e| e.to_string())?;
        ht.forwards.insert(target, local);
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_tunnels_an_address_is_its_own_route() {
        let a: SocketAddr = "10.9.0.1:2379".parse().expect("addr");
        let r = route(a).await.expect("route");
        assert_eq!(
            r,
            Route {
                local: a,
                via: None
            }
        );
        let (u, name) = url("https://10.9.0.1:2379").await.expect("url");
        assert_eq!((u.as_str(), name), ("https://10.9.0.1:2379", None));
    }

    #[test]
    fn urls_are_rebuilt_around_the_forward() {
        let local: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        let (a, f) = split_url("https://10.9.0.1:2379").expect("an address");
        assert_eq!(a, "10.9.0.1:2379".parse().expect("addr"));
        assert_eq!(f(local), "https://127.0.0.1:40001");
        let (a, f) = split_url("https://[fd00::1]:6443/readyz").expect("an address");
        assert_eq!(a, "[fd00::1]:6443".parse().expect("addr"));
        assert_eq!(f(local), "https://127.0.0.1:40001/readyz");
        // Names are not cluster addresses: left as they are.
        assert!(split_url("https://etcd.example:2379").is_none());
        assert!(split_url("10.9.0.1:2379").is_none());
    }

    #[test]
    fn direct_access_reaches_every_layer_directly() {
        let a: SocketAddr = "10.9.0.1:2379".parse().expect("addr");
        assert_eq!(reached(&[a]), "direct");
    }
}
