//! `hakube lab ...`: the command line of the lab.

use super::lifecycle::{self, UpOptions};
use super::proc::{self, HostNs};
use super::state::{HostState, LabPaths, LabState, Topology};
use super::{host, net, prereq, systemctl, unit};
use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

/// Services `lab status` reports on every host.
const SERVICES: [&str; 4] = ["haproxy", "keepalived", "etcd", "hakube-lab-apiserver"];

#[derive(Debug, Args)]
#[command(
    about = "A local lab: real haproxy, keepalived, etcd and sshd in Linux namespaces (needs root)",
    long_about = "Turns this Linux machine into a set of hosts that behave like separate servers: each \
host is its own network, mount and UTS namespace with its own hostname, address, private /etc \
folders and sshd, wired to a per-lab bridge. `lab up` also writes a cluster.yaml and an \
ssh_config for the lab. Hosts have no systemd; a small `systemctl` (this binary) manages their \
services. See docs/lab.md."
)]
pub struct LabArgs {
    /// The lab to act on. Several labs can exist side by side.
    #[arg(
        long,
        global = true,
        default_value = "default",
        env = "HAKUBE_LAB",
        value_name = "NAME"
    )]
    pub name: String,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create the lab's hosts: namespaces, bridge, private folders, sshd; write cluster.yaml
    /// and ssh_config.
    ///
    /// The default shape is the runbook's: lb1, lb2, master1-master3, worker1, worker2. The
    /// lab `default` uses 10.77.0.0/24; other names get 10.77.N.0/24 (N from the name) unless
    /// --subnet says otherwise. A subnet that overlaps an existing route is refused.
    Up(UpArgs),
    /// Remove everything of the lab: processes, namespaces, links, bridge, state. Safe to run
    /// twice, and after an interrupted `lab up`.
    Down,
    /// List the hosts, their addresses, whether sshd answers, and their services.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run a command on a host (inside its namespaces, with the lab's PATH) and return its exit
    /// code. Works even when the host is partitioned: it is the console, not the network.
    Exec {
        /// Host name, for example master1.
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Inject faults for drills: kill or stop services, partition or slow down hosts.
    #[command(subcommand)]
    Fault(FaultCommand),
    /// Switch the sudo rule of the lab's user (`lab up --user`).
    ///
    /// On every host, or on the hosts named: `nopasswd` (as `lab up` sets it) or `password`
    /// (sudo then asks for a password the user does not have, so `sudo -n` refuses: how hakube
    /// meets a user without passwordless sudo).
    Sudo {
        /// `nopasswd` or `password`.
        #[arg(value_enum)]
        rule: SudoRule,
        /// Hosts to change (default: all).
        hosts: Vec<String>,
    },
    /// Internal: the process that holds a host's namespaces.
    #[command(name = "__hold", hide = true)]
    Hold { host: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SudoRule {
    Nopasswd,
    Password,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The lab's IPv4 subnet (a /24 or larger). The bridge gets .1, the VIP is .100.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<Ipv4Net>,
    /// Number of load balancers (lb1, lb2, ...; addresses .11 and up).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub lbs: u32,
    /// Number of control planes (master1, ...; addresses .101 and up).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub control_planes: u32,
    /// Number of workers (worker1, ...; addresses .201 and up).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: u32,
    /// Keep what was created when `up` fails, for inspection (remove it with `lab down`).
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Also run the real Prometheus (with the rendered prometheus.yml and alert rules, 1 s
    /// scrapes) and `hakube exporter` on the bridge address; etcd targets answer once
    /// `hakube apply` made the operator's client certificate.
    #[arg(long)]
    pub monitoring: bool,
    /// Log in as this non-root user instead of root: every host gets the user (in its own
    /// copies of /etc/passwd, /etc/group, /etc/shadow and /home, so this machine is not
    /// changed) with passwordless sudo, sshd refuses root, and cluster.yaml and ssh_config say
    /// `user: NAME`. Needs sudo installed (scripts/setup.sh).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct HostService {
    /// Host name, for example master1.
    pub host: String,
    /// Service name, for example etcd or haproxy.service.
    pub service: String,
}

#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// SIGKILL the service's main process; its Restart= policy decides what happens next.
    Kill(HostService),
    /// `systemctl stop SERVICE` on the host.
    Stop(HostService),
    /// `systemctl start SERVICE` on the host.
    Start(HostService),
    /// Drop all of the host's traffic (nftables inside its namespace; loopback still works).
    /// The link stays up, so established TCP connections stall instead of resetting.
    Partition {
        /// Host name, for example master1.
        host: String,
    },
    /// Undo `partition` and `delay` on the host.
    Heal {
        /// Host name, for example master1.
        host: String,
    },
    /// Delay every packet the host sends by MS milliseconds (0 removes it). Needs the kernel's
    /// netem queueing discipline (sch_netem).
    Delay {
        /// Host name, for example master1.
        host: String,
        /// Milliseconds.
        ms: u32,
    },
}

pub fn run(args: LabArgs) -> anyhow::Result<i32> {
    let name = args.name;
    match args.command {
        LabCommand::Hold { .. } => host::hold(),
        LabCommand::Up(u) => lifecycle::up(UpOptions {
            name,
            subnet: u.subnet,
            topology: Topology {
                lbs: u.lbs,
                control_planes: u.control_planes,
                workers: u.workers,
            },
            keep_on_failure: u.keep_on_failure,
            monitoring: u.monitoring,
            user: u.user,
        }),
        LabCommand::Down => lifecycle::down(&name),
        LabCommand::Status { output } => status(&name, output),
        LabCommand::Exec { host, command } => exec(&name, &host, &command),
        LabCommand::Fault(f) => fault(&name, f),
        LabCommand::Sudo { rule, hosts } => sudo(&name, rule, &hosts),
    }
}

fn sudo(name: &str, rule: SudoRule, hosts: &[String]) -> Result<i32> {
    let (paths, st) = open(name)?;
    let Some(user) = &st.user else {
        anyhow::bail!(
            "lab {name} logs in as root: it has no user whose sudo could change\n  help: create it with `hakube lab up --name {name} --user NAME`"
        );
    };
    let nopasswd = rule == SudoRule::Nopasswd;
    let targets: Vec<&HostState> = if hosts.is_empty() {
        st.hosts.iter().collect()
    } else {
        hosts.iter().map(|h| st.host(h)).collect::<Result<_>>()?
    };
    for h in &targets {
        super::user::write_sudoers(&paths.host_fs(&h.name), user, nopasswd)?;
    }
    let names: Vec<&str> = targets.iter().map(|h| h.name.as_str()).collect();
    println!(
        "{}: sudo for {} {} on {}",
        st.name,
        user.name,
        if nopasswd {
            "needs no password"
        } else {
            "asks for a password"
        },
        names.join(", ")
    );
    Ok(0)
}

/// Entry point when the binary is invoked as `systemctl` on a lab host.
pub fn systemctl_main() -> i32 {
    systemctl::main()
}

fn open(name: &str) -> Result<(LabPaths, LabState)> {
    super::state::check_name(name)?;
    prereq::check_root()?;
    let paths = LabPaths::new(name);
    let st = LabState::require(&paths)?;
    Ok((paths, st))
}

/// A command that will run inside the host's namespaces with the lab's PATH.
fn host_command(paths: &LabPaths, h: &HostState, argv: &[String]) -> Result<Command> {
    let holder = h.holder.with_context(|| {
        format!("host {} has no holder process recorded (did `lab up` finish?)\n  help: run `hakube lab down` and `hakube lab up`", h.name)
    })?;
    let ns = HostNs::open(&holder)?;
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env("PATH", paths.host_path_env())
        .env("HOSTNAME", &h.name)
        .current_dir("/");
    ns.enter(&mut c);
    Ok(c)
}

fn exec(name: &str, host_name: &str, argv: &[String]) -> Result<i32> {
    let (paths, st) = open(name)?;
    let h = st.host(host_name)?;
    let mut c = host_command(&paths, h, argv)?;
    match c.status() {
        Ok(s) => Ok(proc::exit_code(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("lab exec: {}: command not found on {host_name}", argv[0]);
            Ok(127)
        }
        Err(e) => Err(e).with_context(|| format!("cannot run {} on {host_name}", argv[0])),
    }
}

fn systemctl_on(paths: &LabPaths, h: &HostState, verb: &str, service: &str) -> Result<i32> {
    let shim = paths.bin_dir().join("systemctl").display().to_string();
    let argv = [shim, verb.to_string(), service.to_string()];
    let status = host_command(paths, h, &argv)?
        .status()
        .context("cannot run systemctl on the host")?;
    Ok(proc::exit_code(status))
}

fn fault(name: &str, f: FaultCommand) -> Result<i32> {
    let (paths, st) = open(name)?;
    match f {
        FaultCommand::Kill(HostService { host, service }) => {
            let h = st.host(&host)?;
            let u = unit::normalize(&service)?;
            let main = systemctl::main_process(&paths.host_fs(&h.name), &u)
                .with_context(|| format!("{u} has no running main process on {host}"))?;
            main.signal(Signal::SIGKILL);
            println!(
                "killed {u} on {host} (main PID {}) with SIGKILL; its Restart= policy applies",
                main.pid
            );
            Ok(0)
        }
        FaultCommand::Stop(HostService { host, service }) => {
            systemctl_on(&paths, st.host(&host)?, "stop", &service)
        }
        FaultCommand::Start(HostService { host, service }) => {
            systemctl_on(&paths, st.host(&host)?, "start", &service)
        }
        FaultCommand::Partition { host } => {
            net::partition(st.host(&host)?)?;
            println!(
                "{host} is partitioned: all its traffic is dropped (heal with `hakube lab fault heal {host}`)"
            );
            Ok(0)
        }
        FaultCommand::Heal { host } => {
            let h = st.host(&host)?;
            net::heal(h);
            net::delay(h, 0)?;
            println!("{host} is healed");
            Ok(0)
        }
        FaultCommand::Delay { host, ms } => {
            net::delay(st.host(&host)?, ms)?;
            println!("{host}: every packet it sends is delayed by {ms} ms");
            Ok(0)
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HostReport {
    name: String,
    address: String,
    roles: Vec<String>,
    netns: String,
    holder_pid: Option<i32>,
    sshd_pid: Option<i32>,
    alive: bool,
    reachable: bool,
    partitioned: bool,
    has_vip: bool,
    services: std::collections::BTreeMap<String, String>,
}

fn has_addr(h: &HostState, addr: std::net::Ipv4Addr) -> bool {
    let Ok(out) = Command::new("ip")
        .args(["-n", &h.netns, "-j", "addr", "show", "dev", "eth0"])
        .output()
    else {
        return false;
    };
    let needle = format!("\"local\":\"{addr}\"");
    String::from_utf8_lossy(&out.stdout).contains(&needle)
}

fn status(name: &str, output: Output) -> Result<i32> {
    let (paths, st) = open(name)?;
    let reports: Vec<HostReport> = std::thread::scope(|s| {
        let handles: Vec<_> = st
            .hosts
            .iter()
            .map(|h| {
                let paths = &paths;
                let vip = st.vip;
                s.spawn(move || {
                    let root = paths.host_fs(&h.name);
                    HostReport {
                        name: h.name.clone(),
                        address: h.address.to_string(),
                        roles: h.roles.clone(),
                        netns: h.netns.clone(),
                        holder_pid: h.holder.map(|p| p.pid),
                        sshd_pid: h.sshd.map(|p| p.pid),
                        alive: h.holder.is_some_and(|p| p.alive()),
                        reachable: host::reachable(h, Duration::from_millis(300)),
                        partitioned: net::is_partitioned(h),
                        has_vip: h.is_lb() && has_addr(h, vip),
                        services: SERVICES
                            .iter()
                            .map(|s| (s.to_string(), systemctl::active_state(&root, s)))
                            .collect(),
                    }
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    if output == Output::Json {
        let v = serde_json::json!({
            "name": st.name,
            "phase": st.phase,
            "subnet": st.subnet.to_string(),
            "bridge": st.bridge,
            "gateway": st.gateway().to_string(),
            "vip": st.vip.to_string(),
            "vipHolders": reports.iter().filter(|r| r.has_vip).map(|r| r.name.clone()).collect::<Vec<_>>(),
            "stateDir": paths.dir.display().to_string(),
            "clusterYaml": paths.cluster_yaml().display().to_string(),
            "sshConfig": paths.ssh_config().display().to_string(),
            "etcd": st.etcd,
            "monitoring": st.monitoring,
            "user": st.login(),
            "hosts": reports,
        });
        print_out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(0);
    }
    let mut out = String::new();
    let holders: Vec<&str> = reports
        .iter()
        .filter(|r| r.has_vip)
        .map(|r| r.name.as_str())
        .collect();
    let _ = writeln!(
        out,
        "lab {} ({}): subnet {}, bridge {} ({}), VIP {} on {}",
        st.name,
        st.phase,
        st.subnet,
        st.bridge,
        st.gateway(),
        st.vip,
        if holders.is_empty() {
            "no host".to_string()
        } else {
            holders.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "{:<10} {:<15} {:<14} {:<12} {:<10} {:<10} {:<10} {:<10}",
        "HOST", "ADDRESS", "ROLES", "SSH", "HAPROXY", "KEEPALIVED", "ETCD", "APISERVER"
    );
    for r in &reports {
        let ssh = if !r.alive {
            "host-down"
        } else if r.partitioned {
            "partitioned"
        } else if r.reachable {
            "ok"
        } else {
            "unreachable"
        };
        let svc = |s: &str| match r.services.get(s).map(String::as_str) {
            Some("not-installed") | None => "-".to_string(),
            Some(x) => x.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<15} {:<14} {:<12} {:<10} {:<10} {:<10} {:<10}",
            r.name,
            r.address,
            r.roles.join(","),
            ssh,
            svc("haproxy"),
            svc("keepalived"),
            svc("etcd"),
            svc("hakube-lab-apiserver")
        );
    }
    if let Some(m) = &st.monitoring {
        let up = |p: Option<super::proc::ProcRef>| {
            if p.is_some_and(|p| p.alive()) {
                "running"
            } else {
                "not running"
            }
        };
        let _ = writeln!(
            out,
            "prometheus:   {} ({}), exporter http://{}/metrics ({})",
            m.prometheus_url,
            up(m.prometheus),
            m.exporter,
            up(m.exporter_pid)
        );
    }
    let _ = writeln!(
        out,
        "cluster spec: {}\nssh config:   {}",
        paths.cluster_yaml().display(),
        paths.ssh_config().display()
    );
    print_out(&out);
    Ok(0)
}

/// Print without panicking when stdout is a closed pipe (`hakube lab status | head`).
fn print_out(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(s.as_bytes());
}
