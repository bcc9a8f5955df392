//! `lab up` and `lab down`.

use super::proc::{self, ProcRef};
use super::state::{self, LabPaths, LabState, Topology};
use super::{files, host, net, prereq, systemctl};
use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Hold the lab's lock (flock, released on exit even after SIGKILL).
pub fn lock(paths: &LabPaths) -> Result<Flock<fs::File>> {
    fs::create_dir_all(state::LAB_ROOT)
        .with_context(|| format!("cannot create {}", state::LAB_ROOT))?;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock_file())
        .with_context(|| format!("cannot open {}", paths.lock_file().display()))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((f, _)) => {
            eprintln!(
                "lab {}: waiting for another hakube lab command on this lab",
                paths.name
            );
            Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("cannot lock the lab: {e}"))
        }
    }
}

pub struct UpOptions {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub topology: Topology,
    pub keep_on_failure: bool,
    pub monitoring: bool,
    /// A non-root login user with passwordless sudo (`--user`).
    pub user: Option<String>,
}

/// Things named like this lab's, which exist now.
fn leftovers(name: &str) -> Vec<String> {
    let ns_prefix = format!("hakube-lab.{name}.");
    let link_prefix = format!("hkl{}", state::lab_id(name));
    let mut v: Vec<String> = net::netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&ns_prefix))
        .collect();
    v.extend(
        net::link_names()
            .into_iter()
            .filter(|n| n.starts_with(&link_prefix)),
    );
    v
}

pub fn up(o: UpOptions) -> Result<i32> {
    let res = up_inner(&o);
    let paths = LabPaths::new(&o.name);
    if res.is_err() && !paths.dir.exists() {
        let _ = fs::remove_file(paths.lock_file()); // refused before creating anything
    }
    res
}

fn up_inner(o: &UpOptions) -> Result<i32> {
    state::check_name(&o.name)?;
    let tools = prereq::check_all()?;
    let paths = LabPaths::new(&o.name);
    let _lock = lock(&paths)?;
    if paths.state_file().exists() || !leftovers(&o.name).is_empty() {
        bail!(
            "lab {:?} already exists (or an interrupted run left parts of it)\n  help: `hakube lab status --name {0}` shows it; `hakube lab down --name {0}` removes it",
            o.name
        );
    }
    let subnet = o.subnet.unwrap_or_else(|| state::default_subnet(&o.name));
    if subnet.trunc() != subnet {
        bail!(
            "the lab subnet {subnet} has host bits set\n  help: did you mean {}?",
            subnet.trunc()
        );
    }
    net::check_subnet_free(subnet, &o.name)?;
    check_other_labs(&o.name, subnet)?;
    let hosts = state::plan_hosts(&o.name, o.topology, subnet)?;
    let user = o.user.as_deref().map(super::user::plan).transpose()?;
    let hakube = std::env::current_exe()
        .and_then(fs::canonicalize)
        .context("cannot find the hakube binary itself")?;
    let mut st = LabState {
        name: o.name.clone(),
        id: state::lab_id(&o.name),
        subnet,
        bridge: format!("hkl{}b", state::lab_id(&o.name)),
        vip: state::nth(subnet, 100),
        phase: "creating".into(),
        hakube,
        etcd: Some(tools.etcd.display().to_string()),
        hosts,
        monitoring: None,
        user,
    };
    let started = Instant::now();
    fs::create_dir_all(&paths.dir)
        .with_context(|| format!("cannot create {}", paths.dir.display()))?;
    st.save(&paths)?;
    match build(&paths, &mut st, &tools, o.monitoring) {
        Ok(()) => {}
        Err(e) if o.keep_on_failure => {
            return Err(e.context(format!(
                "lab up failed; its parts were kept for inspection (--keep-on-failure); remove them with `hakube lab down --name {}`",
                o.name
            )));
        }
        Err(e) => {
            eprintln!("lab up failed; removing what it created");
            if let Err(d) = teardown(&paths, false) {
                eprintln!(
                    "cleanup also failed: {d:#}\n  help: run `hakube lab down --name {}`",
                    o.name
                );
            }
            return Err(e);
        }
    }
    let spec = paths.cluster_yaml();
    check_spec(&spec)?;
    if o.monitoring {
        match super::monitoring::start(&paths, &st) {
            Ok(m) => st.monitoring = Some(m),
            Err(e) if o.keep_on_failure => return Err(e),
            Err(e) => {
                eprintln!("lab up failed; removing what it created");
                let _ = teardown(&paths, false);
                return Err(e);
            }
        }
    }
    st.phase = "up".into();
    st.save(&paths)?;
    println!(
        "lab {} is up: {} hosts on {} (bridge {} holds {}), VIP {} in {:.1}s",
        st.name,
        st.hosts.len(),
        st.subnet,
        st.bridge,
        st.gateway(),
        st.vip,
        started.elapsed().as_secs_f64()
    );
    for h in &st.hosts {
        println!(
            "  {:<10} {:<15} {}",
            h.name,
            h.address.to_string(),
            h.roles.join(",")
        );
    }
    if let Some(m) = &st.monitoring {
        println!(
            "prometheus:   {} (exporter http://{}/metrics)",
            m.prometheus_url, m.exporter
        );
    }
    println!("cluster spec: {}", spec.display());
    println!("ssh config:   {}", paths.ssh_config().display());
    if let Some(u) = &st.user {
        println!(
            "login user:   {} (passwordless sudo; root cannot log in)",
            u.name
        );
    }
    println!(
        "try:          ssh -F {} {} hostname",
        paths.ssh_config().display(),
        st.hosts[0].name
    );
    Ok(0)
}

/// A second lab must not share a subnet with one that is still being created (its bridge, and
/// so its route, may not exist yet).
fn check_other_labs(name: &str, subnet: Ipv4Net) -> Result<()> {
    let Ok(dir) = fs::read_dir(state::LAB_ROOT) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let other = e.file_name().to_string_lossy().to_string();
        if other == name || !e.path().is_dir() {
            continue;
        }
        if let Ok(Some(st)) = LabState::load(&LabPaths::new(&other))
            && (st.subnet.contains(&subnet.network()) || subnet.contains(&st.subnet.network()))
        {
            bail!(
                "the subnet {subnet} overlaps lab {other:?} ({})\n  help: pass another range with --subnet",
                st.subnet
            );
        }
    }
    Ok(())
}

fn build(
    paths: &LabPaths,
    st: &mut LabState,
    tools: &prereq::Tools,
    monitoring: bool,
) -> Result<()> {
    prereq::ensure_script_user()?;
    prereq::warn_bridge_firewall();
    // From here on, the hakube binary is the one hosts can see too.
    st.hakube = host::write_bin_dir(paths, &st.hakube)?;
    st.save(paths)?;
    let pubkey = files::client_key(paths)?;
    net::create_bridge(st)?;
    for i in 0..st.hosts.len() {
        let h = st.hosts[i].clone();
        host::prepare_fs(paths, &h, &pubkey, st.user.as_ref())?;
        net::create_netns(&h)?;
        st.hosts[i].netns_inode = proc::ns_file_inode(&Path::new("/run/netns").join(&h.netns));
        st.save(paths)?;
        net::wire_host(st, &h)?;
        let holder = host::spawn_holder(paths, st, &h)?;
        st.hosts[i].holder = Some(holder);
        st.hosts[i].mnt_inode = proc::ns_inode(holder.pid, "mnt");
        st.save(paths)?;
        let sshd = host::spawn_sshd(paths, &h, &holder, &tools.sshd)?;
        st.hosts[i].sshd = Some(sshd);
        st.save(paths)?;
    }
    host::wait_ssh(paths, &st.hosts, Duration::from_secs(10))?;
    files::write_known_hosts(paths, st)?;
    files::write_ssh_config(paths, st)?;
    let mut spec = files::cluster_yaml(paths, st);
    if monitoring {
        spec.push_str(&super::monitoring::spec_lines(paths, st));
    }
    fs::write(paths.cluster_yaml(), spec)
        .with_context(|| format!("cannot write {}", paths.cluster_yaml().display()))?;
    Ok(())
}

/// The written spec must load; errors are printed (a lab with an unusual shape, such as two
/// control planes, is still brought up: it is the spec that says what is wrong with it).
fn check_spec(path: &Path) -> Result<()> {
    let loaded = crate::spec::load_file(path)?;
    if loaded.diagnostics.has_errors() || loaded.cluster.is_none() {
        eprintln!(
            "lab: note: {} does not validate for this topology:",
            path.display()
        );
        for d in &loaded.diagnostics.items {
            eprintln!("{d}");
        }
    }
    Ok(())
}

pub fn down(name: &str) -> Result<i32> {
    state::check_name(name)?;
    prereq::check_root()?;
    let paths = LabPaths::new(name);
    let lock = lock(&paths)?;
    let removed = teardown(&paths, true)?;
    let _ = fs::remove_file(paths.lock_file());
    drop(lock);
    if removed {
        println!("lab {name} is down");
    } else {
        println!("lab {name}: nothing to remove");
    }
    Ok(0)
}

/// Remove everything of a lab: processes (recorded, and any left in its namespaces), veths,
/// namespaces, the bridge and the state folder. Safe to run on a half-built lab and twice.
/// Returns whether there was anything to remove.
fn teardown(paths: &LabPaths, verbose: bool) -> Result<bool> {
    let name = paths.name.as_str();
    let st = match LabState::load(paths) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab {name}: {e:#}; cleaning up by name");
            None
        }
    };
    let id = state::lab_id(name);
    let ns_prefix = format!("hakube-lab.{name}.");
    let link_prefix = format!("hkl{id}");
    let mut netns: Vec<String> = net::netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&ns_prefix))
        .collect();
    let mut links: Vec<String> = net::link_names()
        .into_iter()
        .filter(|n| n.starts_with(&link_prefix))
        .collect();
    let mut net_inodes = HashSet::new();
    let mut mnt_inodes = HashSet::new();
    let mut recorded: Vec<ProcRef> = Vec::new();
    let mut supervisors: Vec<ProcRef> = Vec::new();
    if let Some(st) = &st {
        for h in &st.hosts {
            netns.push(h.netns.clone());
            links.push(h.veth.clone());
            net_inodes.extend(h.netns_inode);
            mnt_inodes.extend(h.mnt_inode);
            recorded.extend(h.holder);
            recorded.extend(h.sshd);
            supervisors.extend(systemctl::recorded_supervisors(&paths.host_fs(&h.name)));
        }
        links.push(st.bridge.clone());
        // Prometheus and the exporter run outside the namespaces: by recorded PID only.
        recorded.extend(st.monitoring.iter().flat_map(|m| m.procs()));
    }
    netns.sort();
    netns.dedup();
    links.sort();
    links.dedup();
    for n in &netns {
        net_inodes.extend(proc::ns_file_inode(&Path::new("/run/netns").join(n)));
    }
    let existed = paths.dir.exists()
        || netns
            .iter()
            .any(|n| Path::new("/run/netns").join(n).exists());

    // Supervisors first, so nothing gets restarted; then everything inside the lab.
    for p in &supervisors {
        p.signal(Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut victims = proc::procs_in_namespaces(&net_inodes, &mnt_inodes);
        victims.extend(recorded.iter().copied().filter(ProcRef::alive));
        if victims.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let pids: Vec<String> = victims.iter().map(|p| p.pid.to_string()).collect();
            bail!(
                "lab {name}: processes {} did not exit after SIGKILL",
                pids.join(", ")
            );
        }
        for p in &victims {
            p.signal(Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Deleting one end of a veth pair deletes both; then the namespaces, then the bridge.
    let existing_links: HashSet<String> = net::link_names().into_iter().collect();
    let bridge = format!("hkl{id}b");
    for l in links
        .iter()
        .filter(|l| **l != bridge && existing_links.contains(*l))
    {
        net::ip_quiet(&["link", "del", l]);
    }
    for n in &netns {
        if Path::new("/run/netns").join(n).exists() {
            if let Err(e) = net::ip(&["netns", "del", n]) {
                eprintln!("lab {name}: {e:#}");
            }
        }
    }
    if existing_links.contains(&bridge) {
        net::ip_quiet(&["link", "del", &bridge]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(name);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "lab {name}: these are still there after cleanup: {}\n  help: check `ip netns list` and `ip link`; run `hakube lab down --name {name}` again",
                left.join(", ")
            );
        }
        for l in left.iter().filter(|l| l.starts_with(&link_prefix)) {
            net::ip_quiet(&["link", "del", l]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    if paths.dir.exists() {
        unmount_below(&paths.dir);
        fs::remove_dir_all(&paths.dir)
            .with_context(|| format!("cannot remove {}", paths.dir.display()))?;
    }
    if verbose && existed {
        eprintln!(
            "lab {name}: removed {} namespace(s) and the lab folder {}",
            netns.len(),
            paths.dir.display()
        );
    }
    Ok(existed)
}

/// Never delete through a mount point: if anything is mounted below `dir` in this namespace
/// (it should not be; host mounts live in the hosts' own namespaces), detach it first.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}
