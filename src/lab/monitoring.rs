//! `lab up --monitoring`: the real Prometheus and `hakube exporter`, on the operator's side
//! (the root namespace, listening on the bridge address), with the rendered `prometheus.yml`
//! and alert rules. Both are recorded by PID and stopped by `lab down`.

use super::proc::ProcRef;
use super::state::{LabPaths, LabState};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PROMETHEUS_PORT: u16 = 9090;
pub const EXPORTER_PORT: u16 = 9468;
/// Prometheus's scrape and rule interval in the lab: short, so drills see alerts fire.
pub const SCRAPE_INTERVAL: &str = "1s";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringState {
    pub prometheus_url: String,
    pub exporter: String,
    pub prometheus: Option<ProcRef>,
    pub exporter_pid: Option<ProcRef>,
}

impl MonitoringState {
    pub fn procs(&self) -> Vec<ProcRef> {
        self.prometheus
            .into_iter()
            .chain(self.exporter_pid)
            .collect()
    }
}

pub fn dir(paths: &LabPaths) -> PathBuf {
    paths.dir.join("monitoring")
}

/// The `spec.monitoring` lines of the lab's cluster.yaml.
pub fn spec_lines(paths: &LabPaths, st: &LabState) -> String {
    let gw = st.gateway();
    format!(
        "\x20 monitoring:\n\
         \x20   exporter: {gw}:{EXPORTER_PORT}\n\
         \x20   etcdCertDir: {certs}\n\
         \x20   scrapeInterval: {SCRAPE_INTERVAL}\n\
         \x20   prometheusUrl: http://{gw}:{PROMETHEUS_PORT}\n",
        certs = dir(paths).join("etcd-certs").display(),
    )
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<ProcRef> {
    let out = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: only setsid runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let pid = i32::try_from(child.id()).context("a PID out of range")?;
    ProcRef::of(pid).with_context(|| {
        format!(
            "{:?} exited at once; see {}",
            cmd.get_program(),
            log.display()
        )
    })
}

/// Render the spec's monitoring files, link the operator's etcd client certificate (made by
/// `hakube apply`) where the scrape config expects it, and start the exporter and Prometheus.
pub fn start(paths: &LabPaths, st: &LabState) -> Result<MonitoringState> {
    let prometheus = which("prometheus").context(
        "lab up --monitoring needs the real prometheus binary\n  help: apt-get install prometheus (scripts/setup.sh does)",
    )?;
    let loaded = crate::spec::load_file(&paths.cluster_yaml())?;
    let c = loaded
        .cluster
        .context("the lab's cluster.yaml does not validate; see `hakube validate`")?;
    let d = dir(paths);
    let certs = d.join("etcd-certs");
    fs::create_dir_all(&certs).with_context(|| format!("cannot create {}", certs.display()))?;
    // The operator state `hakube apply` would make (the same CAs apply then uses), so that
    // Prometheus finds the etcd client certificate when it loads its config.
    crate::state::State::open_or_init(&c)?.operator_etcd_tls()?;
    let state = crate::state::State::dir_of(&c);
    for (link, target) in [
        ("ca.crt", state.join("pki/etcd").join(crate::pki::CA_CERT)),
        ("client.crt", state.join("pki/etcd/hakube-operator.crt")),
        ("client.key", state.join("pki/etcd/hakube-operator.key")),
    ] {
        let l = certs.join(link);
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink(&target, &l)
            .with_context(|| format!("cannot link {} to {}", l.display(), target.display()))?;
    }
    for f in crate::render::monitoring::render(&c)? {
        if f.host == crate::render::CLUSTER_DIR
            && let Some(name) = f.path.strip_prefix("/monitoring/")
            && [
                "prometheus.yml",
                crate::render::monitoring::RULES_FILE,
                crate::render::monitoring::DASHBOARD_FILE,
            ]
            .contains(&name)
        {
            fs::write(d.join(name), &f.content)
                .with_context(|| format!("cannot write {}", d.join(name).display()))?;
        }
    }
    let gw = st.gateway();
    let exporter = format!("{gw}:{EXPORTER_PORT}");
    let url = format!("http://{gw}:{PROMETHEUS_PORT}");
    let exporter_pid = spawn(
        Command::new(&st.hakube)
            .arg("exporter")
            .arg("-f")
            .arg(paths.cluster_yaml())
            .args(["--listen", &exporter]),
        &d.join("exporter.log"),
    )?;
    let mut m = MonitoringState {
        prometheus_url: url.clone(),
        exporter,
        prometheus: None,
        exporter_pid: Some(exporter_pid),
    };
    let prom = spawn(
        Command::new(prometheus)
            .current_dir(&d)
            .arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address={gw}:{PROMETHEUS_PORT}")),
        &d.join("prometheus.log"),
    );
    match prom {
        Ok(p) => m.prometheus = Some(p),
        Err(e) => {
            stop(&m);
            return Err(e);
        }
    }
    if let Err(e) = wait_ready(&url, Duration::from_secs(30)) {
        stop(&m);
        return Err(e.context(format!(
            "Prometheus did not become ready; see {}",
            d.join("prometheus.log").display()
        )));
    }
    Ok(m)
}

pub fn stop(m: &MonitoringState) {
    for p in m.procs() {
        p.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// A blocking GET of `url` (Prometheus on the lab bridge); the body on 200.
pub fn http_get(url: &str, timeout: Duration) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(get(url, timeout))
}

/// GET over plain HTTP/1.1 with hyper: Prometheus's API on the lab bridge or loopback.
pub async fn get(url: &str, timeout: Duration) -> Result<String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().context("URL without a host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let fut = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(uri.clone())
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).to_string()))
    };
    let (status, body) = tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("GET {url}: no answer within {timeout:?}"))?
        .with_context(|| format!("GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    Ok(body)
}

fn wait_ready(url: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match http_get(&format!("{url}/-/ready"), Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
