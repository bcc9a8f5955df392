//! `hakube upgrade`: the command line.

use super::{Options, run};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

use crate::output::Output;

#[derive(Debug, clap::Args)]
#[command(
    about = "Upgrade to the versions the spec names, one host at a time behind health gates",
    long_about = "Reads what runs (each etcd member's version, each API server's /version, \
kubelets), plans the steps to the spec's spec.etcd.version, spec.kubernetes.version and \
spec.loadBalancer.packages, prints the plan and runs it. Unsupported steps are refused, with the \
path to take: Kubernetes goes one minor at a time, a kubelet is never newer than the API server \
nor more than 3 minors older, etcd takes patch steps within a minor and a new minor only from \
the newest patch of the one before.\n\nBefore the first step the cluster must be healthy and a \
verified backup younger than --backup-max-age must exist (otherwise one is taken). etcd: one \
member at a time, the leader last: the link /opt/hakube/etcd/current is switched, the member \
restarts drained (its API server stopped first, leadership moved away), then it must be healthy \
and report the new version. Load balancers: one at a time, the VIP holder last, the VIP moved \
away first. bootstrap: lab: the lab API servers restart one at a time with the new version. \
bootstrap: kubeadm: drain, `kubeadm upgrade apply` on the first control plane (`upgrade node` \
on the others), pinned packages, kubelet restart, uncordon, /readyz; workers in batches of \
--max-unavailable.\n\nEach finished step is recorded in .hakube/<cluster>/upgrade-progress.json; \
after an interruption, run it again to go on. Exit status: 0 done, 2 refused or failed. See \
docs/upgrade.md."
)]
pub struct UpgradeArgs {
    /// The cluster spec.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Print the plan and every command it would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the drill's client probe (new and kept-alive connections, writes) through the VIP
    /// throughout, and report failed requests, the longest gap and lost writes.
    #[arg(long)]
    pub probe: bool,
    /// Restart every load balancer's HAProxy and keepalived, one at a time, even when no pinned
    /// package changes.
    #[arg(long)]
    pub restart_lbs: bool,
    /// Workers upgraded at once (kubeadm).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub max_unavailable: u16,
    /// A verified backup younger than this is enough; otherwise one is taken first.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub backup_max_age: Duration,
    /// Output format (json: one event per line, then the report).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run_upgrade(a: UpgradeArgs) -> Result<i32> {
    let Some(c) = crate::output::load_spec(&a.file, "nothing was upgraded")? else {
        return Ok(2);
    };
    let json = a.output == Output::Json;
    let o = Options {
        spec_file: a.file.clone(),
        dry_run: a.dry_run,
        probe: a.probe,
        json,
        restart_lbs: a.restart_lbs,
        max_unavailable: a.max_unavailable as usize,
        backup_max_age: a.backup_max_age,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(run(c, o));
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"event": "report", "report": r}))?
        );
    } else {
        print!("{}", r.text());
    }
    Ok(if r.error.is_some() { 2 } else { 0 })
}
