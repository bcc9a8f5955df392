//! HTTPS probes of API servers, verified against the cluster CA.

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub latency_ms: f64,
}

pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("reading the CA certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `GET path` over TLS; the certificate must name `addr`'s IP.
pub async fn get(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response> {
    let start = Instant::now();
    let fut = async {
        let tcp = crate::transport::tunnel::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let connector = tokio_rustls::TlsConnector::from(cfg.clone());
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {addr}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: hakube\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // Some servers close without close_notify; what was read is still the answer.
        let _ = tls.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("{addr}: no HTTP status in the answer"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok::<_, anyhow::Error>(Response {
            status,
            body,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("{addr}{path}: timed out after {}ms", timeout.as_millis()))?
}
