//! The client probe: requests through the VIP at a fixed rate, on two streams at once (a new
//! TCP + TLS connection per request, and one kept-alive connection), with TLS verified against
//! the cluster CA. With the lab API server it writes unique keys and reads them back, and keeps
//! every acknowledged write so the drill can prove none was lost.

use super::metrics::{Kind, Sample, Stream};
use anyhow::{Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The lab API server's key/value API: writes and reads.
    Kv,
    /// kube-apiserver: read-only `GET /readyz` and `GET /version`.
    ReadOnly,
}

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    pub mode: Mode,
    /// Key prefix of this drill's writes (below the API's own prefix).
    pub prefix: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A write and what the client was told.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Write {
    pub key: String,
    pub value: String,
    pub stream: Stream,
    pub start_ms: f64,
    /// 2xx: the API said it was stored.
    pub acknowledged: bool,
}

#[derive(Default)]
struct Shared {
    samples: Vec<Sample>,
    writes: Vec<Write>,
    /// The last acknowledged write of each stream, read back by the next read.
    last_ack: [Option<(String, String)>; 2],
    /// Start time of every request sent, answered or not.
    issued: Vec<(Stream, f64)>,
    /// Set to have the keep-alive stream open a new connection before its next request.
    reconnect: bool,
    /// What the certificate of the kept-alive connection's server names.
    keepalive_peer: Vec<String>,
}

/// A running probe; [`Prober::stop`] ends it and returns what it recorded.
pub struct Prober {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Arc<Mutex<Shared>>,
}

pub struct Recorded {
    pub samples: Vec<Sample>,
    pub writes: Vec<Write>,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn index(s: Stream) -> usize {
    match s {
        Stream::Fresh => 0,
        Stream::KeepAlive => 1,
    }
}

impl Prober {
    pub fn start(target: Target, t0: Instant) -> Prober {
        let (stop, rx) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut tasks = JoinSet::new();
        tasks.spawn(fresh_stream(target.clone(), t0, shared.clone(), rx.clone()));
        tasks.spawn(keepalive_stream(target, t0, shared.clone(), rx));
        Prober {
            stop,
            tasks,
            shared,
        }
    }

    /// Have the keep-alive stream close its connection (quietly, between two requests) and open
    /// a new one, which HAProxy may put on another API server.
    pub fn reconnect_keepalive(&self) {
        let mut sh = lock(&self.shared);
        sh.reconnect = true;
        sh.keepalive_peer.clear();
    }

    /// The names (DNS and IP) in the certificate of the API server behind the kept-alive
    /// connection (empty before it connects).
    pub fn keepalive_peer(&self) -> Vec<String> {
        lock(&self.shared).keepalive_peer.clone()
    }

    /// Successes so far (to check that the probe works before breaking anything).
    pub fn successes(&self) -> usize {
        lock(&self.shared).samples.iter().filter(|s| s.ok).count()
    }

    /// The most recent failure, for messages.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared)
            .samples
            .iter()
            .rev()
            .find(|s| !s.ok)
            .map(|s| {
                s.error
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {}", s.status.unwrap_or(0)))
            })
    }

    /// Whether every request each stream started in `[from_ms, to_ms]` has been answered
    /// successfully (and each stream started at least one).
    pub fn clients_ok(&self, from_ms: f64, to_ms: f64) -> bool {
        let sh = lock(&self.shared);
        let answered: std::collections::HashSet<(Stream, u64)> = sh
            .samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| (s.stream, s.start_ms.to_bits()))
            .collect();
        Stream::ALL.iter().all(|st| {
            let mine: Vec<f64> = sh
                .issued
                .iter()
                .filter(|(s, t)| s == st && *t >= from_ms && *t <= to_ms)
                .map(|(_, t)| *t)
                .collect();
            !mine.is_empty() && mine.iter().all(|t| answered.contains(&(*st, t.to_bits())))
        })
    }

    pub async fn stop(mut self) -> Recorded {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let mut sh = lock(&self.shared);
        let mut samples = std::mem::take(&mut sh.samples);
        samples.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        Recorded {
            samples,
            writes: std::mem::take(&mut sh.writes),
        }
    }
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

/// What the next request of a stream is.
#[derive(Clone)]
struct Planned {
    kind: Kind,
    method: hyper::Method,
    path: String,
    body: Bytes,
    /// For reads: the value that must come back. For writes: the key and value.
    expect: Option<(String, String)>,
}

fn plan(t: &Target, shared: &Mutex<Shared>, stream: Stream, seq: u64, t0: Instant) -> Planned {
    let get = |kind, path: &str| Planned {
        kind,
        method: hyper::Method::GET,
        path: path.to_string(),
        body: Bytes::new(),
        expect: None,
    };
    match t.mode {
        Mode::ReadOnly if seq % 2 == 0 => get(Kind::Readyz, "/readyz"),
        Mode::ReadOnly => get(Kind::Version, "/version"),
        Mode::Kv if seq % 2 == 0 => {
            let key = format!("{}{}-{seq:06}", t.prefix, stream.name());
            let value = format!("{key} written {:.3}ms", ms_since(t0));
            Planned {
                kind: Kind::Write,
                method: hyper::Method::PUT,
                path: format!("/kv/{key}"),
                body: Bytes::from(value.clone()),
                expect: Some((key, value)),
            }
        }
        Mode::Kv => match lock(shared).last_ack[index(stream)].clone() {
            Some((key, value)) => Planned {
                kind: Kind::Read,
                path: format!("/kv/{key}"),
                expect: Some((key, value)),
                ..get(Kind::Read, "")
            },
            None => get(Kind::Version, "/version"),
        },
    }
}

fn request(t: &Target, p: &Planned, close: bool) -> Result<hyper::Request<Full<Bytes>>> {
    let mut b = hyper::Request::builder()
        .method(p.method.clone())
        .uri(&p.path)
        .header(hyper::header::HOST, t.addr.to_string())
        .header(hyper::header::USER_AGENT, "hakube-drill");
    if close {
        b = b.header(hyper::header::CONNECTION, "close");
    }
    Ok(b.body(Full::new(p.body.clone()))?)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// What a TLS peer's certificate names (subject alternative names: DNS names and IP
/// addresses, as text). Each API server's certificate names its own host, which tells which one
/// is behind the VIP on a connection (HAProxy passes TLS through).
fn peer_names(tls: &Tls) -> Vec<String> {
    let Some(der) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return vec![];
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    use x509_parser::extensions::GeneralName;
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Open a TCP + TLS connection to the target.
async fn open(t: &Target) -> Result<TokioIo<Tls>> {
    let tcp = crate::transport::tunnel::connect(t.addr)
        .await
        .map_err(|e| anyhow!("connect: {}", io_reason(&e)))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(t.tls.clone())
        .connect(ServerName::IpAddress(t.addr.ip().into()), tcp)
        .await
        .map_err(|e| anyhow!("TLS: {}", io_reason(&e)))?;
    Ok(TokioIo::new(tls))
}

/// One request on a connection of its own, which is driven in this task (so that dropping the
/// future, on a timeout, drops the connection too).
pub async fn one_shot<T>(io: T, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {}", hyper_reason(&e)))?;
    let mut conn = std::pin::pin!(conn);
    let mut answer = std::pin::pin!(exchange(&mut sender, req));
    let r = tokio::select! {
        biased;
        r = &mut answer => r,
        _ = &mut conn => answer.await,
    };
    r.map_err(|e| hyper_reason(&e))
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        UnexpectedEof => "connection closed".into(),
        BrokenPipe => "broken pipe".into(),
        _ => e.to_string().chars().take(100).collect(),
    }
}

fn hyper_reason(e: &hyper::Error) -> String {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return "connection closed before the answer".into();
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        src = s.source();
    }
    e.to_string().chars().take(100).collect()
}

/// Send on a ready connection and read the whole answer.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Bytes), hyper::Error> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Whether an error on a reused connection means the server closed it before answering (the
/// request can be sent again on a new one, as Go's net/http does).
fn closed_before_answer(e: &hyper::Error) -> bool {
    e.is_canceled()
        || e.is_closed()
        || e.is_incomplete_message()
        || matches!(
            hyper_reason(e).as_str(),
            "connection reset" | "broken pipe" | "connection closed"
        )
}

/// Judge an answer and record it (and the write, if it was one).
#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Mutex<Shared>,
    stream: Stream,
    p: &Planned,
    start_ms: f64,
    latency_ms: f64,
    answer: Result<(u16, Bytes), String>,
    retried: bool,
    new_connection: bool,
) {
    let (ok, status, error) = match &answer {
        Ok((code, body)) => match (p.kind, &p.expect) {
            (Kind::Read, Some((_, value))) if *code == 200 && body.as_ref() != value.as_bytes() => {
                (
                    false,
                    Some(*code),
                    Some("read a different value".to_string()),
                )
            }
            (Kind::Read, Some(_)) if *code == 404 => (
                false,
                Some(*code),
                Some("an acknowledged key is missing".to_string()),
            ),
            _ if (200..300).contains(code) => (true, Some(*code), None),
            _ => {
                let text = String::from_utf8_lossy(body);
                let why: String = text.trim().chars().take(80).collect();
                (false, Some(*code), Some(format!("HTTP {code}: {why}")))
            }
        },
        Err(e) => (false, None, Some(e.clone())),
    };
    let mut sh = lock(shared);
    if p.kind == Kind::Write
        && let Some((key, value)) = &p.expect
    {
        sh.writes.push(Write {
            key: key.clone(),
            value: value.clone(),
            stream,
            start_ms,
            acknowledged: ok,
        });
        if ok {
            sh.last_ack[index(stream)] = Some((key.clone(), value.clone()));
        }
    }
    sh.samples.push(Sample {
        stream,
        kind: p.kind,
        start_ms,
        latency_ms,
        ok,
        status,
        error,
        retried,
        new_connection,
    });
}

/// One request on a new connection.
async fn fresh_once(t: Target, p: Planned) -> Result<(u16, Bytes), String> {
    let work = async {
        let io = open(&t).await.map_err(|e| format!("{e:#}"))?;
        let req = request(&t, &p, true).map_err(|e| e.to_string())?;
        one_shot(io, req).await
    };
    match tokio::time::timeout(t.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} ms", t.timeout.as_millis())),
    }
}

async fn fresh_stream(
    t: Target,
    t0: Instant,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut inflight = JoinSet::new();
    let mut seq = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        while inflight.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let p = plan(&t, &shared, Stream::Fresh, seq, t0);
        seq += 1;
        let start = Instant::now();
        let start_ms = ms_since(t0);
        lock(&shared).issued.push((Stream::Fresh, start_ms));
        let (t, shared) = (t.clone(), shared.clone());
        inflight.spawn(async move {
            let r = fresh_once(t, p.clone()).await;
            let lat = start.elapsed().as_secs_f64() * 1000.0;
            record(&shared, Stream::Fresh, &p, start_ms, lat, r, false, true);
            drop(permit);
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// A kept-alive connection; its driver task ends when it is dropped.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    /// What the server's certificate names.
    peer_names: Vec<String>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn connect_kept(t: &Target) -> Result<Conn, String> {
    let io = open(t).await.map_err(|e| format!("{e:#}"))?;
    let names = peer_names(io.inner());
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {}", hyper_reason(&e)))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        sender,
        driver,
        peer_names: names,
    })
}

async fn keepalive_stream(
    t: Target,
    t0: Instant,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        let p = plan(&t, &shared, Stream::KeepAlive, seq, t0);
        seq += 1;
        let start = Instant::now();
        let start_ms = ms_since(t0);
        lock(&shared).issued.push((Stream::KeepAlive, start_ms));
        // A connection the server closed while idle is replaced before use, as HTTP clients do.
        if conn.as_ref().is_some_and(|c| c.sender.is_closed())
            || std::mem::take(&mut lock(&shared).reconnect)
        {
            conn = None;
        }
        let mut new_connection = false;
        let mut retried = false;
        let work = async {
            loop {
                if conn.is_none() {
                    let c = connect_kept(&t).await?;
                    lock(&shared).keepalive_peer = c.peer_names.clone();
                    conn = Some(c);
                    new_connection = true;
                }
                let c = conn.as_mut().expect("connection was just opened");
                let req = request(&t, &p, false).map_err(|e| e.to_string())?;
                match exchange(&mut c.sender, req).await {
                    Ok(a) => return Ok(a),
                    Err(e) => {
                        conn = None;
                        // Go sends again only requests it may replay: GETs, not the PUTs.
                        let replayable = p.method == hyper::Method::GET;
                        if replayable && !new_connection && !retried && closed_before_answer(&e) {
                            retried = true;
                            continue;
                        }
                        return Err(hyper_reason(&e));
                    }
                }
            }
        };
        let r = match tokio::time::timeout(t.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                conn = None;
                Err(format!("timed out after {} ms", t.timeout.as_millis()))
            }
        };
        if r.is_err() {
            conn = None;
        }
        let lat = start.elapsed().as_secs_f64() * 1000.0;
        record(
            &shared,
            Stream::KeepAlive,
            &p,
            start_ms,
            lat,
            r,
            retried,
            new_connection,
        );
    }
}

/// One `GET path` on a new connection (for listing the writes through the VIP).
pub async fn get(t: &Target, path: &str) -> Result<(u16, Bytes), String> {
    let p = Planned {
        kind: Kind::Version,
        method: hyper::Method::GET,
        path: path.to_string(),
        body: Bytes::new(),
        expect: None,
    };
    fresh_once(t.clone(), p).await
}
