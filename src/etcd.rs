//! etcd over its gRPC API with client TLS: members, status, health, membership changes.

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use std::time::Duration;

#[derive(Clone)]
pub struct Tls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Client TLS with hakube's CA and a client certificate.
pub fn tls_options(tls: &Tls) -> TlsOptions {
    TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
}

/// A client for `endpoints`, through SSH forwards when `spec.access` says so
/// ([`crate::transport::tunnel`]).
pub async fn connect(endpoints: &[String], tls: &Tls, timeout: Duration) -> Result<Client> {
    let mut urls = Vec::with_capacity(endpoints.len());
    let mut names = Vec::new();
    for e in endpoints {
        let (u, name) = crate::transport::tunnel::url(e)
            .await
            .with_context(|| format!("cannot reach etcd at {e}"))?;
        urls.push(u);
        names.extend(name);
    }
    let mut tls_opts = tls_options(tls);
    // Through a forward, TLS still checks the member's own address. With several members one
    // name cannot fit all: the forwards are 127.0.0.1, which every etcd server certificate
    // names (hakube's and kubeadm's), and each forward ends at the member it is for.
    if let [name] = names.as_slice() {
        tls_opts = tls_opts.domain_name(name.clone());
    }
    let opts = ConnectOptions::new()
        .with_tls(tls_opts)
        .with_connect_timeout(timeout)
        .with_timeout(timeout);
    tokio::time::timeout(timeout, Client::connect(&urls, Some(opts)))
        .await
        .with_context(|| format!("connecting to etcd at {} timed out", endpoints.join(",")))?
        .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

pub async fn members(c: &mut Client) -> Result<Vec<Member>> {
    let r = c.member_list().await.context("etcd member list")?;
    Ok(to_members(r.members()))
}

/// The members of a member list (or of member add's answer).
pub fn to_members(list: &[etcd_client::Member]) -> Vec<Member> {
    list.iter()
        .map(|m| Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        })
        .collect()
}

/// A linearizable read through one endpoint: the member is part of a quorum right now.
pub async fn healthy(endpoint: &str, tls: &Tls, timeout: Duration) -> Result<()> {
    let mut c = connect(&[endpoint.to_string()], tls, timeout).await?;
    tokio::time::timeout(
        timeout,
        c.get("health", Some(GetOptions::new().with_count_only())),
    )
    .await
    .with_context(|| format!("{endpoint}: linearizable read timed out"))?
    .with_context(|| format!("{endpoint}: linearizable read failed"))?;
    Ok(())
}

/// Add a voting member; returns the member list after the change.
pub async fn member_add(c: &mut Client, peer_url: &str) -> Result<Vec<Member>> {
    c.member_add([peer_url], None)
        .await
        .with_context(|| format!("etcd member add {peer_url}"))?;
    members(c).await
}
