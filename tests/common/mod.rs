//! Shared helpers for the lab tests: a lab that is always taken down, and the real tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const HAKUBE: &str = env!("CARGO_BIN_EXE_hakube");

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lab that is taken down when the test ends, however it ends.
pub struct Lab {
    pub name: String,
    /// The first three octets of the lab's /24, for example "10.92.0".
    pub net: String,
}

impl Lab {
    pub fn up(name: &str, net: &str) -> Lab {
        Lab::up_with(name, net, &[])
    }
    /// `lab up` with more flags (`--monitoring`).
    pub fn up_with(name: &str, net: &str, extra: &[&str]) -> Lab {
        let _ = Command::new(HAKUBE)
            .args(["lab", "down", "--name", name])
            .output();
        let out = Command::new(HAKUBE)
            .args([
                "lab",
                "up",
                "--name",
                name,
                "--subnet",
                &format!("{net}.0/24"),
            ])
            .args(extra)
            .output()
            .expect("run lab up");
        assert!(out.status.success(), "lab up failed: {}", text(&out));
        Lab {
            name: name.into(),
            net: net.into(),
        }
    }
    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/hakube-lab").join(&self.name)
    }
    pub fn spec(&self) -> PathBuf {
        self.dir().join("cluster.yaml")
    }
    pub fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }
    pub fn exec(&self, host: &str, cmd: &str) -> Output {
        Command::new(HAKUBE)
            .args([
                "lab", "exec", "--name", &self.name, host, "--", "sh", "-c", cmd,
            ])
            .output()
            .expect("lab exec")
    }
    pub fn fault(&self, args: &[&str]) {
        let out = Command::new(HAKUBE)
            .args(["lab", "fault"])
            .args(args)
            .args(["--name", &self.name])
            .output()
            .expect("lab fault");
        assert!(out.status.success(), "lab fault {args:?}: {}", text(&out));
    }
    pub fn state(&self) -> PathBuf {
        self.dir().join(".hakube").join(&self.name)
    }
    pub fn cluster_ca(&self) -> PathBuf {
        self.state().join("pki/cluster/ca.crt")
    }
    /// The real etcdctl, with hakube's operator certificate.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let p = self.state().join("pki/etcd");
        let eps = format!(
            "https://{}:2379,https://{}:2379,https://{}:2379",
            self.ip(101),
            self.ip(102),
            self.ip(103)
        );
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={eps}"))
            .arg(format!("--cacert={}", p.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                p.join("hakube-operator.crt").display()
            ))
            .arg(format!("--key={}", p.join("hakube-operator.key").display()))
            .args(["--dial-timeout=2s", "--command-timeout=3s"])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }
    /// HAProxy's own view of the API backends on `lb`, from its stats CSV.
    pub fn haproxy_stats(&self, lb: u8) -> String {
        let pw = std::fs::read_to_string(self.state().join("secrets/haproxy-stats.password"))
            .unwrap_or_default();
        let o = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                "-u",
                &format!("admin:{}", pw.trim()),
                &format!("http://{}:9000/stats;csv", self.ip(lb)),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).to_string()
    }
    pub fn hakube(&self, args: &[&str]) -> Output {
        Command::new(HAKUBE)
            .args(args)
            .arg("-f")
            .arg(self.spec())
            .output()
            .expect("hakube")
    }
    pub fn apply(&self) {
        let out = Command::new(HAKUBE)
            .arg("apply")
            .arg("-f")
            .arg(self.spec())
            .output()
            .expect("apply");
        assert!(out.status.success(), "apply failed:\n{}", text(&out));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(HAKUBE)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// Poll `f` until it returns Some or `limit` passes.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("{what}: not within {}s; last: {last}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A drill running in the background (for example `drill soak`, the client probe with no
/// fault, while a test runs an operation), with its stderr collected.
pub struct Background {
    child: std::process::Child,
    reader: std::thread::JoinHandle<String>,
    injected: std::sync::mpsc::Receiver<()>,
}

impl Background {
    /// `hakube drill ARGS -o json -f SPEC --report-dir DIR`.
    pub fn drill(lab: &Lab, args: &[&str], reports: &Path) -> Background {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new(HAKUBE)
            .arg("drill")
            .args(args)
            .args(["-o", "json", "-f"])
            .arg(lab.spec())
            .arg("--report-dir")
            .arg(reports)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the drill");
        let (tx, injected) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("injecting") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Background {
            child,
            reader,
            injected,
        }
    }

    /// Wait until the probe runs and the fault (none for a soak) is in; a drill that ends
    /// first (refused, say) fails the test with what it printed.
    pub fn await_injected(self, limit: Duration) -> Background {
        match self.injected.recv_timeout(limit) {
            Ok(()) => self,
            Err(e) => {
                let (code, v, log) = self.finish();
                panic!("the drill did not inject ({e}): exit {code}\n{v}\n{log}");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the drill to end: (exit code, JSON report, stderr).
    pub fn finish(self) -> (i32, serde_json::Value, String) {
        let out = self.child.wait_with_output().expect("the drill ends");
        let log = self.reader.join().unwrap_or_default();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            log,
        )
    }
}

/// `status -o json`: (exit code, JSON).
pub fn status_json(lab: &Lab) -> (i32, serde_json::Value) {
    let o = lab.hakube(&["status", "-o", "json"]);
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
    )
}

/// (health, reason) of one layer in a status JSON.
pub fn verdict(s: &serde_json::Value, layer: &str) -> (String, String) {
    s["verdicts"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["layer"] == layer))
        .map(|x| {
            (
                x["health"].as_str().unwrap_or("").to_string(),
                x["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

/// `doctor -o json`'s findings: (rule, severity, evidence).
pub fn findings(lab: &Lab) -> Vec<(String, String, String)> {
    let o = lab.hakube(&["doctor", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    v["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["rule"].as_str().unwrap_or("").into(),
                        f["severity"].as_str().unwrap_or("").into(),
                        f["evidence"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
