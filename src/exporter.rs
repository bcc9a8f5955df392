//! `hakube exporter`: the status metrics over HTTP for Prometheus, probed at scrape time.
//!
//! Every scrape of `/metrics` runs the status probes, unless a probe younger than `max_age`
//! can be reused; concurrent scrapes wait for one probe and share its result. A probe that
//! takes longer than the timeout is abandoned: the scrape then carries only
//! `hakube_exporter_probe_success 0` and the duration, so Prometheus never waits on a dead host.

use crate::spec::Cluster;
use crate::state::State;
use crate::status::{self, Conns, Creds, Scope};
use anyhow::{Context, Result};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The OpenMetrics content type that prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct Exporter {
    cluster: Cluster,
    max_age: Duration,
    timeout: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    cache: Option<(Instant, Arc<String>)>,
    creds: Option<Creds>,
    /// Why the operator state could not be read, said once.
    told: Option<String>,
}

impl Exporter {
    /// Reads the operator state (never creates it) at the first scrape that finds it, so an
    /// exporter started before `hakube apply` begins working once apply made it.
    pub fn new(cluster: Cluster, max_age: Duration, timeout: Duration) -> Exporter {
        Exporter {
            cluster,
            max_age,
            timeout,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The exposition for one scrape.
    pub async fn metrics(&self) -> Arc<String> {
        // Holding the lock across the probe makes concurrent scrapes share it.
        let mut inner = self.inner.lock().await;
        if let Some((at, body)) = inner.cache.as_ref()
            && at.elapsed() < self.max_age
        {
            return body.clone();
        }
        let start = Instant::now();
        if inner.creds.is_none() {
            match State::open(&self.cluster).and_then(|s| Creds::from_state(&s)) {
                Ok(c) => inner.creds = Some(c),
                Err(e) => {
                    let why = format!("{e:#}");
                    if inner.told.as_deref() != Some(why.as_str()) {
                        eprintln!("hakube exporter: {why}");
                        inner.told = Some(why);
                    }
                }
            }
        }
        let observed = match &inner.creds {
            Some(creds) => {
                let probe = status::observe(&self.cluster, creds, Conns::Fresh, Scope::Full);
                tokio::time::timeout(self.timeout, probe).await.ok()
            }
            None => None,
        };
        let mut reg = Registry::default();
        if let Some(s) = &observed {
            status::register_metrics(s, &mut reg);
        }
        let gauge = |v: f64| {
            let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            g.set(v);
            g
        };
        reg.register(
            "hakube_exporter_probe_success",
            "1 when the probes finished within the exporter's timeout, 0 when they were abandoned or the operator state is missing",
            gauge(f64::from(u8::from(observed.is_some()))),
        );
        reg.register(
            "hakube_exporter_probe_duration_seconds",
            "How long the probes behind this scrape took",
            gauge(start.elapsed().as_secs_f64()),
        );
        let mut body = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut body, &reg);
        let body = Arc::new(body);
        inner.cache = Some((Instant::now(), body.clone()));
        body
    }
}

async fn handle(
    exp: Arc<Exporter>,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::Full<Bytes>>, std::convert::Infallible> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            CONTENT_TYPE,
            exp.metrics().await.as_bytes().to_vec(),
        ),
        (&hyper::Method::GET, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            b"hakube exporter: metrics at /metrics\n".to_vec(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"not found: try GET /metrics\n".to_vec(),
        ),
    };
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(r)
}

/// Serve `/metrics` on `listen` until SIGINT or SIGTERM.
pub async fn serve(exp: Exporter, listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen}: is another exporter running there? pick another --listen"
        )
    })?;
    let access = crate::transport::tunnel::setup(&exp.cluster).await;
    eprintln!(
        "hakube exporter: cluster {} metrics on http://{listen}/metrics, probes {}",
        exp.cluster.name,
        crate::transport::tunnel::describe(access)
    );
    let exp = Arc::new(exp);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                // A full accept queue or fd limit passes; keep serving.
                Err(e) => {
                    eprintln!("hakube exporter: accept on {listen}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let exp = exp.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(exp.clone(), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
