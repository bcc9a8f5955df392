//! The write check: every write the probe saw acknowledged must be in etcd (or, without etcd
//! access, listed through the API) with the value it wrote.

use super::*;

impl Drill {
    /// Read the drill's keys back, straight from etcd when hakube manages it, else through the
    /// API; then delete them.
    pub(super) async fn check_writes(
        &self,
        writes: &[prober::Write],
        prefix: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> WriteCheck {
        let mut w = WriteCheck {
            acknowledged: writes.iter().filter(|w| w.acknowledged).count(),
            failed: writes.iter().filter(|w| !w.acknowledged).count(),
            ..Default::default()
        };
        if self.mode() == Mode::ReadOnly {
            w.method = "none (read-only probe)".into();
            return w;
        }
        let stored = match self.read_etcd(prefix).await {
            Ok(m) => {
                w.method = "etcd".into();
                Ok(m)
            }
            Err(e) => {
                w.method = "api".into();
                self.read_api(prefix, tls)
                    .await
                    .map_err(|e2| format!("etcd: {e:#}; API: {e2:#}"))
            }
        };
        let stored = match stored {
            Ok(m) => m,
            Err(e) => {
                w.error = Some(e);
                return w;
            }
        };
        for x in writes {
            let there = stored.get(&x.key) == Some(&x.value);
            match (x.acknowledged, there) {
                (true, true) => w.verified += 1,
                (true, false) => w.lost.push(x.key.clone()),
                (false, true) => w.failed_but_stored += 1,
                (false, false) => {}
            }
        }
        if w.method == "etcd" {
            let _ = self.delete_etcd(prefix).await;
        }
        w
    }

    async fn etcd_client(&self) -> Result<etcd_client::Client> {
        let tls = self
            .etcd_tls
            .as_ref()
            .context("etcd is not managed by hakube")?;
        crate::etcd::connect(&self.c.etcd_client_urls(), tls, Duration::from_secs(3)).await
    }

    async fn read_etcd(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, String>> {
        let mut cl = self.etcd_client().await?;
        let full = format!("{LAB_KV_PREFIX}{prefix}");
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            cl.get(full, Some(etcd_client::GetOptions::new().with_prefix())),
        )
        .await
        .context("etcd read timed out")??;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                (
                    k.strip_prefix(LAB_KV_PREFIX).unwrap_or(&k).to_string(),
                    String::from_utf8_lossy(kv.value()).to_string(),
                )
            })
            .collect())
    }

    async fn delete_etcd(&self, prefix: &str) -> Result<()> {
        let mut cl = self.etcd_client().await?;
        tokio::time::timeout(
            Duration::from_secs(5),
            cl.delete(
                format!("{LAB_KV_PREFIX}{prefix}"),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        )
        .await
        .context("etcd delete timed out")??;
        Ok(())
    }

    async fn read_api(
        &self,
        prefix: &str,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let addr = SocketAddr::new(self.c.lb.vip, self.c.lb.api_port);
        let target = prober::Target {
            addr,
            tls: tls.clone(),
            mode: Mode::Kv,
            prefix: prefix.to_string(),
            interval: self.opts.interval,
            timeout: Duration::from_secs(10),
        };
        let (code, body) = prober::get(&target, &format!("/kv?prefix={prefix}"))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        if code != 200 {
            bail!("listing through the VIP answered {code}");
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["key"].as_str().unwrap_or("").to_string(),
                    i["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect())
    }
}
