//! `hakube-lab-apiserver`: the lab's stand-in for kube-apiserver. It is NOT kube-apiserver: it
//! serves just enough over HTTPS for the HA layers to be exercised for real: `/livez`,
//! `/readyz` (200 only when the local etcd member serves a linearizable read), `/version`, and
//! a small key/value API stored in etcd, so drills can write through the VIP and later prove
//! that nothing acknowledged was lost.

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What /version reports as the platform, so nobody mistakes this for Kubernetes.
pub const PLATFORM: &str = "hakube-lab-apiserver (stand-in, not kube-apiserver)";
/// How long a shutdown waits for requests in flight (the systemctl shim kills after 10 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted request body (etcd's default request limit is 1.5 MiB).
const MAX_BODY: usize = 1 << 20;
const KV_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hakube-lab-apiserver",
    version,
    about = "The hakube lab's stand-in for kube-apiserver (it is NOT kube-apiserver)",
    long_about = "hakube-lab-apiserver is the only API server of a `hakube lab` cluster \
(spec.kubernetes.bootstrap: lab). It is a stand-in for kube-apiserver, not kube-apiserver: it \
serves, over HTTPS, /livez, /readyz (200 only when its local etcd member can serve a \
linearizable read within --readyz-timeout), /version, and a key/value API backed by etcd:\n\n  \
PUT /kv/KEY (body = value; returns after etcd acknowledged the write)\n  GET /kv/KEY\n  \
DELETE /kv/KEY\n  GET /kv?prefix=P (JSON list)\n\nIt lets load balancer health checks, \
failover and etcd quorum be tested for real without a Kubernetes control plane."
)]
pub struct Args {
    /// Address and port to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Server certificate (PEM; SANs should include the host address and the VIP).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Server key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// etcd client URLs, comma-separated. The first one is the local member: /readyz asks it only.
    #[arg(long, value_delimiter = ',', required = true, value_name = "URL,...")]
    pub etcd_endpoints: Vec<String>,
    /// CA that signed etcd's server certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// How long /readyz waits for the linearizable read (kube-apiserver's
    /// --etcd-readycheck-timeout is 2s too).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub readyz_timeout: Duration,
    /// After SIGTERM, keep serving this long with /readyz failing before closing the listener,
    /// so that load balancers mark it DOWN first (kube-apiserver's --shutdown-delay-duration).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_delay: Duration,
    /// etcd key prefix of the key/value API.
    #[arg(long, default_value = "/hakube-lab/kv/", value_name = "PREFIX")]
    pub kv_prefix: String,
    /// The Kubernetes version this stand-in reports in /version (spec.kubernetes.version), with
    /// `-hakube-lab` appended, so that upgrades have a version to roll and check.
    #[arg(long, value_name = "vX.Y.Z")]
    pub kubernetes_version: Option<String>,
}

/// Run the server until SIGTERM or SIGINT. Returns the process exit code.
pub fn run(args: Args) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hakube-lab-apiserver: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hakube-lab-apiserver: error: {e:#}");
            1
        }
    }
}

struct App {
    kv: Client,
    local: Client,
    readyz_timeout: Duration,
    prefix: String,
    version: serde_json::Value,
    /// SIGTERM came: /readyz fails while the shutdown delay runs.
    shutting_down: std::sync::atomic::AtomicBool,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// TLS server config with the ring provider passed explicitly (no process-wide default).
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert, "server certificate")?)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} is not a PEM certificate", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key_der = PrivateKeyDer::from_pem_slice(&read(key, "server key")?)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .with_context(|| {
            format!(
                "{} and {} do not form a usable key pair",
                cert.display(),
                key.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn etcd_options(a: &Args) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if a.etcd_endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &a.etcd_cafile {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "etcd CA")?));
        }
        if let (Some(c), Some(k)) = (&a.etcd_certfile, &a.etcd_keyfile) {
            tls = tls.identity(Identity::from_pem(
                read(c, "etcd client certificate")?,
                read(k, "etcd client key")?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

async fn serve(a: Args) -> Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&a.cert, &a.key)?));
    let opts = etcd_options(&a)?;
    // Connecting is lazy: the server starts (not ready) even while etcd is down.
    let kv = Client::connect(&a.etcd_endpoints, Some(opts.clone()))
        .await
        .with_context(|| format!("cannot set up the etcd client for {:?}", a.etcd_endpoints))?;
    let local = Client::connect(&a.etcd_endpoints[..1], Some(opts))
        .await
        .context("cannot set up the etcd client")?;
    let app = Arc::new(App {
        kv,
        local,
        readyz_timeout: a.readyz_timeout,
        version: version(a.kubernetes_version.as_deref()),
        prefix: a.kv_prefix.clone(),
        shutting_down: false.into(),
    });
    let listener = TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    eprintln!(
        "hakube-lab-apiserver {} (a stand-in for kube-apiserver, not kube-apiserver) serving https://{} with etcd {}",
        env!("CARGO_PKG_VERSION"),
        a.listen,
        a.etcd_endpoints.join(",")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let delay_over = async {
            match stop_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv(), if stop_at.is_none() => {
                stop_at = Some(shutting_down(&app, a.shutdown_delay));
            }
            _ = tokio::signal::ctrl_c(), if stop_at.is_none() => {
                stop_at = Some(shutting_down(&app, a.shutdown_delay));
            }
            _ = delay_over => break,
            acc = listener.accept() => {
                let (tcp, _) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("hakube-lab-apiserver: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let svc = service_fn(move |req| handle(app.clone(), req));
                    let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(tls), svc);
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    // Drain like kube-apiserver does on SIGTERM: stop accepting (HAProxy redispatches refused
    // connections), finish the requests in flight, and close kept-alive connections between
    // requests, so no acknowledged or in-flight request is cut off.
    drop(listener);
    eprintln!(
        "hakube-lab-apiserver: shutting down, draining {} connection(s)",
        graceful.count()
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "hakube-lab-apiserver: connections still open after {}s, closing them",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    Ok(())
}

/// SIGTERM: /readyz fails from now on; the listener closes once `delay` is over.
fn shutting_down(app: &App, delay: Duration) -> tokio::time::Instant {
    app.shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "hakube-lab-apiserver: SIGTERM: /readyz fails now; still serving for {}ms so that load balancers mark this server DOWN first",
        delay.as_millis()
    );
    tokio::time::Instant::now() + delay
}

type Resp = Response<Full<Bytes>>;

fn respond(code: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(code: StatusCode, body: impl Into<String>) -> Resp {
    respond(code, "text/plain; charset=utf-8", body.into())
}

fn json(code: StatusCode, v: serde_json::Value) -> Resp {
    respond(code, "application/json", v.to_string())
}

fn err(code: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json(code, serde_json::json!({ "error": msg.to_string() }))
}

/// The /version document.
pub fn version(kubernetes: Option<&str>) -> serde_json::Value {
    let parsed = kubernetes.and_then(|k| semver::Version::parse(k.trim_start_matches('v')).ok());
    let (major, minor, git) = match parsed {
        Some(v) => (
            v.major.to_string(),
            v.minor.to_string(),
            format!("v{v}-hakube-lab"),
        ),
        None => (
            "0".into(),
            "1".into(),
            format!("v{}-hakube-lab", env!("CARGO_PKG_VERSION")),
        ),
    };
    serde_json::json!({
        "major": major,
        "minor": minor,
        "gitVersion": git,
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": PLATFORM,
    })
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let resp = match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/livez" | "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(&app).await,
        (&Method::GET, "/version") => json(StatusCode::OK, app.version.clone()),
        (&Method::GET, "/") => json(
            StatusCode::OK,
            serde_json::json!({
                "server": PLATFORM,
                "paths": ["/livez", "/readyz", "/version", "/kv/KEY", "/kv?prefix=P"],
            }),
        ),
        (&Method::GET, "/kv" | "/kv/") => list(&app, &query).await,
        (m, p) if p.starts_with("/kv/") => {
            let key = percent_decode(&p["/kv/".len()..]);
            match *m {
                Method::PUT | Method::POST => put(&app, &key, req).await,
                Method::GET => get(&app, &key).await,
                Method::DELETE => delete(&app, &key).await,
                _ => err(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or DELETE"),
            }
        }
        (_, "/livez" | "/healthz" | "/readyz" | "/version" | "/kv") => {
            err(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => err(
            StatusCode::NOT_FOUND,
            format!("no such path {path}; this is {PLATFORM}"),
        ),
    };
    Ok(resp)
}

async fn readyz(app: &App) -> Resp {
    if app.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        return err(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let mut c = app.local.clone();
    // A linearizable read (the default) needs the member to reach the leader and a quorum.
    match tokio::time::timeout(app.readyz_timeout, c.get("/hakube-lab/readyz", None)).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ok"),
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[-]etcd failed: {e}\nreadyz check failed\n"),
        ),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "[-]etcd failed: no linearizable read within {:?} (no quorum, or the member is unreachable)\nreadyz check failed\n",
                app.readyz_timeout
            ),
        ),
    }
}

fn check_key(key: &str) -> Option<Resp> {
    if key.is_empty() || key.len() > 1024 {
        return Some(err(
            StatusCode::BAD_REQUEST,
            "the key must be 1 to 1024 bytes",
        ));
    }
    None
}

/// etcd errors that say the request had no effect, so that it is safe to send again: the same
/// list as the etcd retry of OpenShift's kube-apiserver (`etcd3retry`, retried writes).
/// Upstream kube-apiserver returns them to its clients as a 500 instead.
const NO_EFFECT: [&str; 3] = [
    "etcdserver: leader changed",
    "etcdserver: no leader",
    "raft proposal dropped",
];

fn no_effect(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => NO_EFFECT.iter().any(|m| s.message().ends_with(m)),
        _ => false,
    }
}

/// Run one etcd request, again after 0.3, 0.6, 1.2 and 2.4 s while etcd says it had no effect
/// (a leadership move drops the proposals in flight), all within [`KV_TIMEOUT`].
async fn with_retry<T, F, Fut>(mut op: F) -> Result<T, Resp>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + KV_TIMEOUT;
    let mut pause = Duration::from_millis(300);
    loop {
        match tokio::time::timeout_at(deadline, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if no_effect(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                return Err(unavailable(format!(
                    "etcd did not answer within {KV_TIMEOUT:?}"
                )));
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Resp {
    err(StatusCode::SERVICE_UNAVAILABLE, format!("etcd: {e}"))
}

async fn put(app: &App, key: &str, req: Request<Incoming>) -> Resp {
    if let Some(r) = check_key(key) {
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
            );
        }
    };
    let full = format!("{}{key}", app.prefix);
    let body = body.to_vec();
    match with_retry(|| {
        let mut c = app.kv.clone();
        let (full, body) = (full.clone(), body.clone());
        async move { c.put(full, body, None).await }
    })
    .await
    {
        Ok(r) => {
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            json(
                StatusCode::OK,
                serde_json::json!({ "key": key, "revision": rev }),
            )
        }
        Err(r) => r,
    }
}

async fn get(app: &App, key: &str) -> Resp {
    if let Some(r) = check_key(key) {
        return r;
    }
    let full = format!("{}{key}", app.prefix);
    match with_retry(|| {
        let mut c = app.kv.clone();
        let full = full.clone();
        async move { c.get(full, None).await }
    })
    .await
    {
        Ok(r) => match r.kvs().first() {
            Some(kv) => respond(
                StatusCode::OK,
                "application/octet-stream",
                kv.value().to_vec(),
            ),
            None => err(StatusCode::NOT_FOUND, format!("no key {key}")),
        },
        Err(r) => r,
    }
}

async fn delete(app: &App, key: &str) -> Resp {
    if let Some(r) = check_key(key) {
        return r;
    }
    let full = format!("{}{key}", app.prefix);
    match with_retry(|| {
        let mut c = app.kv.clone();
        let full = full.clone();
        async move { c.delete(full, None).await }
    })
    .await
    {
        Ok(r) => json(
            StatusCode::OK,
            serde_json::json!({ "deleted": r.deleted() }),
        ),
        Err(r) => r,
    }
}

/// Keys per page of a list; halved while a page is larger than the gRPC client takes (4 MiB by
/// default: one value can be up to MAX_BODY, so a single key always fits).
const LIST_PAGE: i64 = 1000;

/// The end of the range of keys that start with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// The page was larger than the client decodes (tonic's "decoded message length too large").
fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("message length too large"))
}

/// Every key under `prefix`, in pages, all read at the revision of the first page so that the
/// list is one consistent snapshot however long it is.
async fn list_pages(app: &App, prefix: &[u8]) -> Result<(i64, Vec<etcd_client::KeyValue>), Resp> {
    let mut c = app.kv.clone();
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    let (mut rev, mut limit) = (0, LIST_PAGE);
    let mut all = Vec::new();
    loop {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_revision(rev);
        let mut r = match tokio::time::timeout(KV_TIMEOUT, c.get(from.clone(), Some(opts))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if too_large(&e) && limit > 1 => {
                limit /= 2;
                continue;
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable(format!("no answer within {KV_TIMEOUT:?}"))),
        };
        if rev == 0 {
            rev = r.header().map(|h| h.revision()).unwrap_or(0);
        }
        let more = r.more();
        let kvs = r.take_kvs();
        let Some(last) = kvs.last() else { break };
        // The next page starts right after the last key.
        from = last.key().to_vec();
        from.push(0);
        all.extend(kvs);
        if !more {
            break;
        }
    }
    Ok((rev, all))
}

async fn list(app: &App, query: &str) -> Resp {
    let prefix = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "prefix")
        .map(|(_, v)| percent_decode(&v.replace('+', " ")))
        .unwrap_or_default();
    let full = format!("{}{prefix}", app.prefix);
    let (rev, kvs) = match list_pages(app, full.as_bytes()).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let items: Vec<serde_json::Value> = kvs
        .iter()
        .map(|kv| {
            let k = String::from_utf8_lossy(kv.key());
            serde_json::json!({
                "key": k.strip_prefix(app.prefix.as_str()).unwrap_or(&k),
                "value": String::from_utf8_lossy(kv.value()),
                "modRevision": kv.mod_revision(),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "revision": rev, "count": items.len(), "items": items }),
    )
}

/// Decode `%XX` escapes; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable(msg))
    }

    /// Only what etcd says had no effect is sent again: a timed-out write may have been applied.
    #[tokio::test]
    async fn retries_only_what_had_no_effect() {
        assert!(no_effect(&grpc("etcdserver: leader changed")));
        assert!(no_effect(&grpc("etcdserver: no leader")));
        assert!(!no_effect(&grpc("etcdserver: request timed out")));
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = with_retry(|| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(grpc("etcdserver: leader changed"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(2));
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let r: Result<(), Resp> = with_retry(|| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err(grpc("etcdserver: request timed out")) }
        })
        .await;
        assert_eq!(
            r.err().map(|r| r.status()),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn prefix_range_end() {
        assert_eq!(prefix_end(b"/kv/a"), b"/kv/b");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b+c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn version_names_the_stand_in() {
        let v = version(None);
        assert_eq!(v["platform"], PLATFORM);
        assert!(v["gitVersion"].as_str().unwrap().contains("hakube-lab"));
        let v = version(Some("v1.36.2"));
        assert_eq!(v["gitVersion"], "v1.36.2-hakube-lab");
        assert_eq!(v["minor"], "36");
    }
}
