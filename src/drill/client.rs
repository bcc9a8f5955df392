//! The drill's client probe and write check, for operations that are not drills (`hakube
//! upgrade --probe`): start it, do the work, finish it and report like a soak.

use super::*;
use metrics::{Metrics, Stream};
use prober::Prober;
use serde::Serialize;

/// What clients saw while the operation ran.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientReport {
    pub duration_ms: f64,
    pub requests: usize,
    /// Failed requests on new connections (a fresh TCP + TLS connection each).
    pub failed_fresh: usize,
    /// Failed requests on the kept-alive connection.
    pub failed_keep_alive: usize,
    /// The longest time without a successful answer, on either stream.
    pub longest_gap_ms: f64,
    pub writes: WriteCheck,
    pub lost_writes: usize,
    /// Runs of failed requests: stream, first start and last end (ms since the probe
    /// started), count, error.
    pub failures: Vec<(Stream, f64, f64, usize, String)>,
    pub metrics: Metrics,
}

impl ClientReport {
    pub fn text(&self) -> String {
        format!(
            "clients: {} requests in {:.1}s; failed {} on new connections, {} on the kept-alive \
             one; longest gap {:.0} ms; writes: {} acknowledged, {} verified ({}), {} lost",
            self.requests,
            self.duration_ms / 1000.0,
            self.failed_fresh,
            self.failed_keep_alive,
            self.longest_gap_ms,
            self.writes.acknowledged,
            self.writes.verified,
            self.writes.method,
            self.lost_writes
        ) + &self
            .failures
            .iter()
            .map(|(s, from, to, n, why)| {
                format!(
                    "\n  {n} failed on {} from {:.1}s to {:.1}s: {why}",
                    s.name(),
                    from / 1000.0,
                    to / 1000.0
                )
            })
            .collect::<String>()
    }
}

/// A running probe through the VIP.
pub struct ClientProbe {
    drill: Drill,
    prober: Prober,
    t0: Instant,
    prefix: String,
    tls: Arc<rustls::ClientConfig>,
    _interrupts: tokio::sync::watch::Sender<u32>,
}

impl ClientProbe {
    /// Start probing and wait (up to `limit`) for its first success, so that a probe that
    /// cannot reach the API fails before anything is touched.
    pub async fn start(
        c: &Cluster,
        spec: &Path,
        what: &str,
        limit: Duration,
    ) -> Result<ClientProbe> {
        let (tx, rx) = tokio::sync::watch::channel(0u32);
        let opts = Options::default();
        let drill = Drill::new(c.clone(), spec, opts.clone(), rx, Arc::new(|_: &str| {}))?;
        let Some(tls) = drill.api_tls.clone() else {
            bail!(
                "--probe: {}",
                drill
                    .api_error
                    .clone()
                    .unwrap_or_else(|| "no API CA".into())
            );
        };
        let prefix = format!("{what}/{}/", drill.run_id);
        let t0 = Instant::now();
        let prober = Prober::start(
            prober::Target {
                addr: SocketAddr::new(c.lb.vip, c.lb.api_port),
                tls: tls.clone(),
                mode: drill.mode(),
                prefix: prefix.clone(),
                interval: opts.interval,
                timeout: opts.request_timeout,
            },
            t0,
        );
        let until = Instant::now() + limit;
        while prober.successes() == 0 {
            if Instant::now() > until {
                let why = prober.last_error().unwrap_or_else(|| "no answer".into());
                let _ = prober.stop().await;
                bail!(
                    "--probe: no answer through the VIP within {}s ({why}); nothing was touched",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ClientProbe {
            drill,
            prober,
            t0,
            prefix,
            tls,
            _interrupts: tx,
        })
    }

    /// Time since the probe started, ms (to place steps on its timeline).
    pub fn elapsed_ms(&self) -> f64 {
        ms_since(self.t0)
    }

    /// Stop, read every acknowledged write back (then delete them), and report.
    pub async fn finish(self) -> ClientReport {
        let end = ms_since(self.t0);
        let rec = self.prober.stop().await;
        let m = metrics::compute(&rec.samples, 0.0, end);
        let writes = self
            .drill
            .check_writes(&rec.writes, &self.prefix, &self.tls)
            .await;
        let failed = |s: Stream| m.streams.get(&s).map(|x| x.failed).unwrap_or(0);
        ClientReport {
            duration_ms: end,
            requests: m.requests,
            failed_fresh: failed(Stream::Fresh),
            failed_keep_alive: failed(Stream::KeepAlive),
            longest_gap_ms: m
                .streams
                .values()
                .map(|s| s.longest_gap_ms)
                .fold(0.0, f64::max),
            lost_writes: writes.lost.len(),
            failures: metrics::failure_runs(&rec.samples),
            writes,
            metrics: m,
        }
    }
}
