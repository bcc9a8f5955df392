//! The lab, for real: namespaces, sshd, the systemctl shim, the lab API server with etcd,
//! partitions, and a clean `lab down`. Needs root (CI is root); each test has its own lab name
//! and subnet so they run in parallel, and a Drop guard tears its lab down.

use hakube::pki::{Ca, Usage};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const HAKUBE: &str = env!("CARGO_BIN_EXE_hakube");
const APISERVER: &str = env!("CARGO_BIN_EXE_hakube-lab-apiserver");

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (the lab creates namespaces, a bridge and mounts)");
            return;
        }
    };
}

/// Poll `f` until it is true; fail with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn hakube(args: &[&str]) -> Output {
    Command::new(HAKUBE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hakube")
}

/// A lab that is torn down when the test ends, pass or fail.
struct Lab {
    name: String,
    dir: PathBuf,
}

impl Lab {
    fn up(name: &str, subnet: &str, extra: &[&str]) -> Lab {
        // A leftover from an earlier, interrupted run must not fail this one.
        hakube(&["lab", "--name", name, "down"]);
        let mut args = vec!["lab", "--name", name, "up", "--subnet", subnet];
        args.extend_from_slice(extra);
        let out = hakube(&args);
        let lab = Lab {
            name: name.to_string(),
            dir: PathBuf::from(format!("/var/lib/hakube-lab/{name}")),
        };
        assert!(out.status.success(), "lab up failed: {}", text(&out));
        lab
    }

    fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    fn exec(&self, host: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["lab", "--name", &self.name, "exec", host, "--"];
        args.extend_from_slice(cmd);
        hakube(&args)
    }

    /// Run a shell snippet on a host, feeding `stdin`.
    fn sh(&self, host: &str, script: &str, stdin: &[u8]) -> Output {
        let mut child = Command::new(HAKUBE)
            .args([
                "lab", "--name", &self.name, "exec", host, "--", "sh", "-c", script,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lab exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        child.wait_with_output().expect("lab exec")
    }

    fn put_file(&self, host: &str, path: &str, content: &str) {
        let out = self.sh(
            host,
            &format!("mkdir -p \"$(dirname {path})\" && cat > {path}"),
            content.as_bytes(),
        );
        assert!(
            out.status.success(),
            "writing {path} on {host}: {}",
            text(&out)
        );
    }

    fn systemctl(&self, host: &str, args: &[&str]) -> Output {
        let mut cmd = vec!["systemctl"];
        cmd.extend_from_slice(args);
        self.exec(host, &cmd)
    }

    fn ssh(&self, host: &str, cmd: &str) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=3",
                host,
                cmd,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    fn state(&self) -> serde_json::Value {
        let s = std::fs::read_to_string(self.dir.join("state.json")).expect("state.json");
        serde_json::from_str(&s).expect("state.json is JSON")
    }

    fn status_json(&self) -> serde_json::Value {
        let out = hakube(&["lab", "--name", &self.name, "status", "-o", "json"]);
        assert!(out.status.success(), "lab status: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn main_pid(&self, host: &str, unit: &str) -> i32 {
        let out = self.systemctl(host, &["show", "-p", "MainPID", "--value", unit]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = hakube(&["lab", "--name", &self.name, "down"]);
        if !out.status.success() {
            eprintln!("lab down {} failed: {}", self.name, text(&out));
        }
    }
}

fn port_open(addr: &str, port: u16) -> bool {
    let sa: SocketAddr = format!("{addr}:{port}").parse().expect("address");
    TcpStream::connect_timeout(&sa, Duration::from_millis(300)).is_ok()
}

/// Live, non-zombie process with this PID and start time.
fn alive(pid: i64, start: u64) -> bool {
    hakube::lab::proc::ProcRef {
        pid: pid as i32,
        start,
    }
    .alive()
}

/// Every process recorded in a lab's state.json (holders and sshds).
fn recorded_procs(state: &serde_json::Value) -> Vec<(i64, u64)> {
    let mut v = Vec::new();
    for h in state["hosts"].as_array().into_iter().flatten() {
        for k in ["holder", "sshd"] {
            if let (Some(pid), Some(start)) = (h[k]["pid"].as_i64(), h[k]["start"].as_u64()) {
                v.push((pid, start));
            }
        }
    }
    v
}

/// Nothing of lab `name` is left: no netns, link, mount, process or state folder.
fn assert_nothing_left(name: &str, procs: &[(i64, u64)]) {
    let ns_prefix = format!("hakube-lab.{name}.");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout).to_string();
    assert!(
        !netns.contains(&ns_prefix),
        "namespaces left behind:\n{netns}"
    );
    let link_prefix = format!("hkl{}", hakube::lab::state::lab_id(name));
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(!links.contains(&link_prefix), "links left behind:\n{links}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let lab_dir = format!("/var/lib/hakube-lab/{name}/");
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(&ns_prefix) || l.contains(&lab_dir)),
        "mounts left behind:\n{mounts}"
    );
    for (pid, start) in procs {
        assert!(
            !alive(*pid, *start),
            "process {pid} of the lab is still running"
        );
    }
    assert!(!Path::new(&lab_dir).exists(), "{lab_dir} is still there");
}

#[test]
fn up_brings_seven_private_hosts_reachable_over_ssh() {
    require_root!();
    let lab = Lab::up("t-hosts", "10.78.1.0/24", &[]);
    let hosts = [
        "lb1", "lb2", "master1", "master2", "master3", "worker1", "worker2",
    ];
    for h in hosts {
        let out = lab.ssh(h, "hostname");
        assert!(out.status.success(), "ssh {h}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h);
    }
    // Host keys are checked: with an empty known_hosts the same connection is refused.
    let empty = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new("ssh")
        .arg("-F")
        .arg(lab.ssh_config())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", empty.path().display()))
        .args(["-o", "BatchMode=yes", "lb1", "true"])
        .output()
        .expect("ssh");
    assert!(
        !out.status.success(),
        "ssh accepted an unknown host key: {}",
        text(&out)
    );

    let out = lab.ssh(
        "lb1",
        "echo lb1-only > /etc/haproxy/private-marker && cat /etc/haproxy/private-marker",
    );
    assert!(out.status.success(), "{}", text(&out));
    for h in &hosts[1..] {
        let out = lab.ssh(h, "test -e /etc/haproxy/private-marker");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{h} sees lb1's /etc/haproxy: {}",
            text(&out)
        );
    }
    // The operator reaches hosts only through the lab bridge, and hosts have no default route.
    let out = lab.exec("master1", &["ip", "route", "show", "default"]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "host has a default route: {}",
        text(&out)
    );
    let out = lab.exec("lb1", &["sysctl", "-n", "net.ipv4.ip_nonlocal_bind"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        text(&out)
    );

    // The written spec validates and describes the lab.
    let loaded = hakube::spec::load_file(&lab.dir.join("cluster.yaml")).expect("load cluster.yaml");
    assert!(
        !loaded.diagnostics.has_errors(),
        "{:?}",
        loaded.diagnostics.items
    );
    let c = loaded.cluster.expect("valid cluster");
    assert_eq!(c.hosts.len(), 7);
    assert_eq!(c.lb.vip.to_string(), "10.78.1.100");
    assert_eq!(c.kubernetes.bootstrap, hakube::spec::Bootstrap::Lab);
    assert_eq!(c.networks.management.to_string(), "10.78.1.0/24");

    let st = lab.status_json();
    let hosts_json = st["hosts"].as_array().expect("hosts");
    assert_eq!(hosts_json.len(), 7);
    assert!(hosts_json.iter().all(|h| h["reachable"] == true), "{st:#}");
}

#[test]
fn systemctl_starts_stops_and_restarts_a_real_haproxy() {
    require_root!();
    let lab = Lab::up(
        "t-svc",
        "10.78.2.0/24",
        &["--lbs", "1", "--control-planes", "1", "--workers", "0"],
    );
    let cfg = "global\n    log stdout format raw local0\ndefaults\n    mode http\n    timeout connect 1s\n    \
               timeout client 5s\n    timeout server 5s\nfrontend fe\n    bind 10.78.2.11:8080\n    \
               http-request return status 200 content-type text/plain string lab-ok\n";
    lab.put_file("lb1", "/etc/haproxy/haproxy.cfg", cfg);
    // No unit in /etc/systemd/system: the shim falls back to Debian's own (Type=notify, -Ws).
    let out = lab.systemctl("lb1", &["is-active", "haproxy"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = lab.systemctl("lb1", &["start", "haproxy"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = lab.systemctl("lb1", &["is-active", "haproxy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(port_open("10.78.2.11", 8080), "haproxy does not listen");
    let first = lab.main_pid("lb1", "haproxy");
    assert!(first > 0);

    // Restart=always: a SIGKILLed haproxy comes back with a new main PID.
    let out = hakube(&["lab", "--name", "t-svc", "fault", "kill", "lb1", "haproxy"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        "haproxy restarted after fault kill",
        Duration::from_secs(10),
        || {
            let pid = lab.main_pid("lb1", "haproxy");
            pid != 0
                && pid != first
                && lab
                    .systemctl("lb1", &["is-active", "-q", "haproxy"])
                    .status
                    .success()
        },
    );
    wait_until("haproxy serves again", Duration::from_secs(5), || {
        port_open("10.78.2.11", 8080)
    });
    let out = lab.systemctl("lb1", &["show", "-p", "NRestarts", "--value", "haproxy"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    let out = lab.systemctl("lb1", &["reload", "haproxy"]);
    assert!(out.status.success(), "reload: {}", text(&out));

    let before = lab.main_pid("lb1", "haproxy");
    let out = lab.systemctl("lb1", &["restart", "haproxy"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = lab.main_pid("lb1", "haproxy");
    assert!(after != 0 && after != before, "restart kept PID {before}");

    let out = hakube(&["lab", "--name", "t-svc", "fault", "stop", "lb1", "haproxy"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = lab.systemctl("lb1", &["is-active", "haproxy"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inactive");
    assert!(
        !port_open("10.78.2.11", 8080),
        "haproxy still listens after stop"
    );
    assert!(!Path::new(&format!("/proc/{after}")).exists() || lab.main_pid("lb1", "haproxy") == 0);
    let out = lab.systemctl("lb1", &["status", "haproxy"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let out = lab.systemctl("lb1", &["enable", "haproxy"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = lab.systemctl("lb1", &["is-enabled", "haproxy"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "enabled");
    // Another host has its own /etc/systemd/system.
    let out = lab.systemctl("master1", &["is-enabled", "haproxy"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "disabled",
        "{}",
        text(&out)
    );

    let out = hakube(&["lab", "--name", "t-svc", "fault", "start", "lb1", "haproxy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(port_open("10.78.2.11", 8080));
    let out = lab.systemctl("lb1", &["start", "no-such-unit"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
}

/// `curl` against the lab API server: (HTTP code, body).
fn curl(ca: &Path, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "3", "--cacert"])
        .arg(ca)
        .args(["-X", method, "-w", "\n%{http_code}", url]);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.output().expect("run curl (apt-get install curl)");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn apiserver_readyz_follows_its_etcd() {
    require_root!();
    let lab = Lab::up(
        "t-api",
        "10.78.3.0/24",
        &["--lbs", "0", "--control-planes", "1", "--workers", "0"],
    );
    let addr = "10.78.3.101";
    let vip = "10.78.3.100";
    const TWO_DAYS: Duration = Duration::from_secs(2 * 86400);
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::load_or_create(pki.path(), "t-api-ca").expect("CA");
    let (server_crt, server_key) = ca
        .issue(
            "master1",
            &[addr.into(), "127.0.0.1".into(), "master1".into()],
            Usage::Server,
            TWO_DAYS,
        )
        .expect("etcd cert");
    let (client_crt, client_key) = ca
        .issue("apiserver-etcd-client", &[], Usage::Client, TWO_DAYS)
        .expect("client cert");
    let (api_crt, api_key) = ca
        .issue(
            "kube-apiserver",
            &[addr.into(), vip.into()],
            Usage::Server,
            TWO_DAYS,
        )
        .expect("api cert");
    for (path, content) in [
        ("/etc/etcd/pki/ca.crt", ca.cert_pem()),
        ("/etc/etcd/pki/server.crt", &server_crt),
        ("/etc/etcd/pki/server.key", &server_key),
        ("/etc/kubernetes/pki/etcd-client.crt", &client_crt),
        ("/etc/kubernetes/pki/etcd-client.key", &client_key),
        ("/etc/kubernetes/pki/apiserver.crt", &api_crt),
        ("/etc/kubernetes/pki/apiserver.key", &api_key),
    ] {
        lab.put_file("master1", path, content);
    }
    let etcd = lab.state()["etcd"]
        .as_str()
        .unwrap_or("/usr/local/bin/etcd")
        .to_string();
    lab.put_file(
        "master1",
        "/etc/etcd/etcd.env",
        &format!(
            "ETCD_NAME=master1\nETCD_DATA_DIR=/var/lib/etcd/default\n\
             ETCD_LISTEN_CLIENT_URLS=https://{addr}:2379\nETCD_ADVERTISE_CLIENT_URLS=https://{addr}:2379\n\
             ETCD_LISTEN_PEER_URLS=http://{addr}:2380\nETCD_INITIAL_ADVERTISE_PEER_URLS=http://{addr}:2380\n\
             ETCD_INITIAL_CLUSTER=master1=http://{addr}:2380\n\
             ETCD_CERT_FILE=/etc/etcd/pki/server.crt\nETCD_KEY_FILE=/etc/etcd/pki/server.key\n\
             ETCD_TRUSTED_CA_FILE=/etc/etcd/pki/ca.crt\nETCD_CLIENT_CERT_AUTH=true\n"
        ),
    );
    lab.put_file(
        "master1",
        "/etc/systemd/system/etcd.service",
        &format!(
            "[Unit]\nDescription=etcd (lab test)\n[Service]\nType=notify\nEnvironmentFile=/etc/etcd/etcd.env\n\
             ExecStart={etcd}\nRestart=on-failure\n[Install]\nWantedBy=multi-user.target\n"
        ),
    );
    // Hosts have a private /tmp, and the build may live there (CI clones anywhere): run the
    // binary from the lab's own folder, which every host sees.
    let apiserver = lab.dir.join("hakube-lab-apiserver");
    std::fs::copy(APISERVER, &apiserver).expect("copy the lab API server into the lab folder");
    let apiserver = apiserver.display();
    lab.put_file(
        "master1",
        "/etc/systemd/system/hakube-lab-apiserver.service",
        &format!(
            "[Unit]\nDescription=hakube lab API server\n[Service]\n\
             ExecStart={apiserver} --listen {addr}:6443 --cert /etc/kubernetes/pki/apiserver.crt \
             --key /etc/kubernetes/pki/apiserver.key --etcd-endpoints https://{addr}:2379 \
             --etcd-cafile /etc/etcd/pki/ca.crt --etcd-certfile /etc/kubernetes/pki/etcd-client.crt \
             --etcd-keyfile /etc/kubernetes/pki/etcd-client.key\nRestart=always\n"
        ),
    );
    let out = lab.systemctl("master1", &["start", "etcd"]);
    assert!(out.status.success(), "etcd start: {}", text(&out));
    let out = lab.systemctl("master1", &["start", "hakube-lab-apiserver"]);
    assert!(out.status.success(), "apiserver start: {}", text(&out));

    let ca_file = pki.path().join("ca.crt");
    let base = format!("https://{addr}:6443");
    let get = |path: &str| curl(&ca_file, "GET", &format!("{base}{path}"), None);
    wait_until(
        "/readyz returns 200 with etcd up",
        Duration::from_secs(20),
        || get("/readyz").0 == 200,
    );
    assert_eq!(get("/livez"), (200, "ok".into()));
    let (code, body) = get("/version");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("version JSON");
    assert_eq!(
        v["platform"],
        "hakube-lab-apiserver (stand-in, not kube-apiserver)"
    );
    assert!(v["gitVersion"].is_string());
    let (code, body) = curl(
        &ca_file,
        "PUT",
        &format!("{base}/kv/drill/1"),
        Some("acknowledged"),
    );
    assert_eq!(code, 200, "{body}");

    let out = lab.systemctl("master1", &["stop", "etcd"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        "/readyz fails with etcd stopped",
        Duration::from_secs(10),
        || {
            let (code, body) = get("/readyz");
            code == 500 && body.contains("etcd")
        },
    );
    assert_eq!(get("/livez").0, 200, "livez must not depend on etcd");

    let out = lab.systemctl("master1", &["start", "etcd"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        "/readyz recovers with etcd started",
        Duration::from_secs(20),
        || get("/readyz").0 == 200,
    );
    assert_eq!(get("/kv/drill/1"), (200, "acknowledged".into()));
    let (code, body) = get("/kv?prefix=drill/");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("list JSON");
    assert_eq!(list["count"], 1, "{list}");
}

#[test]
fn partitioned_host_is_unreachable_until_healed() {
    require_root!();
    let lab = Lab::up(
        "t-part",
        "10.78.4.0/24",
        &["--lbs", "0", "--control-planes", "1", "--workers", "2"],
    );
    let w1 = "10.78.4.201";
    // A connection opened before the partition must stall, not reset.
    let mut conn = TcpStream::connect((w1, 22)).expect("connect to worker1's sshd");
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut banner = [0u8; 64];
    let n = conn.read(&mut banner).expect("ssh banner");
    assert!(String::from_utf8_lossy(&banner[..n]).starts_with("SSH-"));

    let out = hakube(&["lab", "--name", "t-part", "fault", "partition", "worker1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!port_open(w1, 22), "worker1 still accepts connections");
    let out = lab.ssh("worker1", "true");
    assert!(!out.status.success(), "ssh reached a partitioned host");
    assert!(
        lab.ssh("worker2", "true").status.success(),
        "worker2 was cut off too"
    );
    let out = lab.exec("worker1", &["sh", "-c", "! ping -c1 -W1 10.78.4.202"]);
    assert!(
        out.status.success(),
        "worker1 still reaches worker2: {}",
        text(&out)
    );
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let _ = conn.write_all(b"SSH-2.0-test\r\n");
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        Ok(n) => panic!("the existing connection got {n} bytes through the partition"),
    }
    let st = lab.status_json();
    assert_eq!(st["hosts"][1]["partitioned"], true, "{st:#}");

    let out = hakube(&["lab", "--name", "t-part", "fault", "heal", "worker1"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        "worker1 reachable after heal",
        Duration::from_secs(5),
        || port_open(w1, 22),
    );
    let out = lab.ssh("worker1", "hostname");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn down_leaves_nothing_behind_and_is_idempotent() {
    require_root!();
    let lab = Lab::up(
        "t-down",
        "10.78.5.0/24",
        &["--lbs", "1", "--control-planes", "1", "--workers", "1"],
    );
    // A supervised service and an ssh session, so down has real processes to remove.
    lab.put_file(
        "worker1",
        "/etc/systemd/system/sleeper.service",
        "[Service]\nExecStart=/bin/sleep 1000\nRestart=always\n",
    );
    assert!(
        lab.systemctl("worker1", &["start", "sleeper"])
            .status
            .success()
    );
    let sleeper = lab.main_pid("worker1", "sleeper");
    let mut procs = recorded_procs(&lab.state());
    assert_eq!(procs.len(), 6, "3 holders and 3 sshds recorded");
    let start = hakube::lab::proc::ProcRef::of(sleeper)
        .expect("sleeper runs")
        .start;
    procs.push((sleeper as i64, start));

    let out = hakube(&["lab", "--name", "t-down", "down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_nothing_left("t-down", &procs);
    let out = hakube(&["lab", "--name", "t-down", "down"]);
    assert!(out.status.success(), "second down: {}", text(&out));
    drop(lab);
    assert_nothing_left("t-down", &procs);
}

#[test]
fn down_cleans_up_after_up_was_killed_midway() {
    require_root!();
    let name = "t-kill";
    hakube(&["lab", "--name", name, "down"]);
    // Many hosts, so `up` is still busy when it is killed.
    let mut up = Command::new(HAKUBE)
        .args([
            "lab",
            "--name",
            name,
            "up",
            "--subnet",
            "10.78.6.0/24",
            "--workers",
            "54",
            "--control-planes",
            "9",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lab up");
    let prefix = format!("hakube-lab.{name}.");
    wait_until("lab up created some hosts", Duration::from_secs(30), || {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns");
        String::from_utf8_lossy(&out.stdout)
            .matches(&prefix)
            .count()
            >= 3
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill lab up");
    let status = up.wait().expect("wait lab up");
    assert!(
        !status.success(),
        "lab up finished before it could be killed"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/var/lib/hakube-lab/{name}/state.json"))
            .expect("state recorded before creating"),
    )
    .expect("state JSON");
    assert_eq!(state["phase"], "creating");
    let procs = recorded_procs(&state);
    assert!(!procs.is_empty(), "no holder was recorded: {state:#}");

    let out = hakube(&["lab", "--name", name, "down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_nothing_left(name, &procs);
    let out = hakube(&["lab", "--name", name, "down"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn refuses_a_subnet_that_collides_with_a_route() {
    require_root!();
    let lab = Lab::up(
        "t-route",
        "10.78.7.0/24",
        &["--lbs", "1", "--control-planes", "0", "--workers", "0"],
    );
    let out = hakube(&[
        "lab",
        "--name",
        "t-route2",
        "up",
        "--subnet",
        "10.78.7.0/25",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collides with the route 10.78.7.0/24"),
        "{err}"
    );
    assert!(!Path::new("/var/lib/hakube-lab/t-route2").exists());
    drop(lab);
}

/// Processes a test started, killed by PID when it ends.
struct Killed(Vec<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// More than gRPC's 4 MiB message limit under one prefix, as many small keys (several pages) and
/// as a few values near the 1 MiB body limit (pages must shrink): `GET /kv?prefix=` lists them
/// all, in order. etcd and the lab API server run on loopback; no lab, no root.
#[test]
fn apiserver_lists_more_than_a_grpc_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer, api) = (free_port(), free_port(), free_port());
    let etcd = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args([
            &format!("--listen-client-urls=http://127.0.0.1:{client}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=t=http://127.0.0.1:{peer}"),
            "--unsafe-no-fsync",
            "--log-level=error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("run etcd (bash scripts/setup.sh installs it)");
    let mut procs = Killed(vec![etcd]);
    let ca = Ca::load_or_create(dir.path(), "t-list-ca").expect("CA");
    let (crt, key) = ca
        .issue(
            "apiserver",
            &["127.0.0.1".into()],
            Usage::Server,
            Duration::from_secs(2 * 86400),
        )
        .expect("server cert");
    std::fs::write(dir.path().join("api.crt"), crt).expect("write cert");
    std::fs::write(dir.path().join("api.key"), key).expect("write key");
    let apiserver = Command::new(APISERVER)
        .arg(format!("--listen=127.0.0.1:{api}"))
        .arg("--cert")
        .arg(dir.path().join("api.crt"))
        .arg("--key")
        .arg(dir.path().join("api.key"))
        .arg(format!("--etcd-endpoints=http://127.0.0.1:{client}"))
        .stdin(Stdio::null())
        .spawn()
        .expect("run the lab API server");
    procs.0.push(apiserver);

    let small: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("small/{i:05}"), format!("{i:05}").repeat(300)))
        .collect();
    let big: Vec<(String, String)> = (0..5)
        .map(|i| {
            (
                format!("big/{i}"),
                char::from(b'a' + i).to_string().repeat(1_000_000),
            )
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([format!("http://127.0.0.1:{client}")], None)
            .await
            .expect("etcd client");
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.status().await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for chunk in small.chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|(k, v)| {
                    etcd_client::TxnOp::put(format!("/hakube-lab/kv/{k}"), v.as_str(), None)
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("write the small keys");
        }
        for (k, v) in &big {
            c.put(format!("/hakube-lab/kv/{k}"), v.as_str(), None)
                .await
                .expect("write a big key");
        }
    });
    assert!(small.iter().map(|(_, v)| v.len()).sum::<usize>() > 4 << 20);

    let ca_file = dir.path().join("ca.crt");
    let list = |prefix: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "60", "--cacert"])
            .arg(&ca_file)
            .arg(format!("https://127.0.0.1:{api}/kv?prefix={prefix}"))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "GET /kv?prefix={prefix}: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("list JSON")
    };
    wait_until("the API server answers", Duration::from_secs(20), || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--cacert"])
            .arg(&ca_file)
            .arg(format!("https://127.0.0.1:{api}/readyz"))
            .status()
            .is_ok_and(|s| s.success())
    });
    for (prefix, want) in [("small/", &small), ("big/", &big)] {
        let got = list(prefix);
        assert_eq!(got["count"], want.len(), "count for {prefix}");
        let items = got["items"].as_array().expect("items");
        assert_eq!(items.len(), want.len());
        for (item, (k, v)) in items.iter().zip(want.iter()) {
            assert_eq!(item["key"], k.as_str());
            assert!(item["value"] == v.as_str(), "the value of {k} differs");
        }
    }
}
