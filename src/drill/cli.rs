//! `hakube drill ...`: the command line of the drills.

use super::fault::Via;
use super::scenario::Scenario;
use super::{Drill, Options, Outcome, ScenarioReport, report, stamp};
use anyhow::{Result, bail};
use clap::builder::PossibleValuesParser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use crate::output::Output;

/// `all`, or one scenario by name.
fn scenarios() -> PossibleValuesParser {
    use clap::ValueEnum;
    PossibleValuesParser::new(
        std::iter::once(clap::builder::PossibleValue::new("all")).chain(
            Scenario::value_variants()
                .iter()
                .filter_map(|s| s.to_possible_value()),
        ),
    )
}

#[derive(Debug, clap::Args)]
#[command(
    about = "Failure drills: break one thing on purpose, measure what clients saw, restore it, prove nothing was lost",
    long_about = "Runs the runbook's failure scenarios against a live cluster. Each drill checks that the \
cluster is healthy and that the fault cannot break quorum, probes the API through the VIP every \
50 ms (new connections and a kept-alive one; writes with unique keys on a lab), injects the \
fault, holds it for --duration, restores it (also on Ctrl-C or any error), waits for `status` to \
be healthy, and reads every acknowledged write back from etcd.\n\nScenarios: lb-failover (stop \
haproxy on the VIP holder), lb-host-loss (partition the VIP holder), apiserver-down (stop one API \
server), control-plane-partition, etcd-member-down (a follower), etcd-leader-loss, worker-loss, \
or all; soak injects nothing and fails on any failed request (to prove quiet, or to measure an \
operation run meanwhile); `soak --load` adds CPU, disk and network jitter load and also fails on \
any VIP move, etcd leader change or HAProxy backend change.\n\nOn a lab (a spec in /var/lib/hakube-lab/<lab>/) faults use `hakube lab fault`. \
Elsewhere they go over SSH and need --yes.\n\nExit status: 0 every drill passed, 1 a drill \
failed (no recovery or lost writes), 2 error, 3 refused, 130 interrupted. See docs/drills.md."
)]
pub struct DrillArgs {
    /// The scenario to run, or `all`.
    #[arg(value_parser = scenarios(), value_name = "SCENARIO")]
    pub scenario: String,
    /// The cluster spec.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The host to break (default: the VIP holder, the etcd leader, a follower, the first
    /// worker, as the scenario needs).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// How long the fault is held.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Go ahead on real hosts (hakube names the hosts it will touch and refuses without it).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Go ahead although the cluster is unhealthy or the fault would break quorum or take the
    /// last load balancer or API server.
    #[arg(long)]
    pub force: bool,
    /// Where the timeline, chart and request log go [default: ./drill-reports/<timestamp>].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// How long after the restore the cluster may take to be healthy again.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub recovery_timeout: Duration,
    /// A probe request that takes longer has failed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,
    /// How faults are injected: the lab's primitives when the spec belongs to a lab (auto), or
    /// SSH as on real hosts (ssh; needs --yes, also on a lab).
    #[arg(long, value_enum, default_value_t = Via::Auto)]
    pub via: Via,
    /// soak only: load the VIP holder and the etcd leader (busy loops at twice the core count,
    /// fsync'd writes next to etcd's data, 50 ms ± 20 ms jitter where netem exists), and fail on
    /// any VIP move, etcd leader change or HAProxy backend change as well as failed requests.
    #[arg(long)]
    pub load: bool,
}

/// Exit status for a set of results.
pub fn exit_code(rs: &[ScenarioReport]) -> i32 {
    let has = |o: Outcome| rs.iter().any(|r| r.outcome == o);
    if has(Outcome::Interrupted) {
        130
    } else if has(Outcome::Error) {
        2
    } else if has(Outcome::Failed) {
        1
    } else if has(Outcome::Refused) {
        3
    } else {
        0
    }
}

pub fn run(a: DrillArgs) -> Result<i32> {
    let Some(c) = crate::output::load_spec(&a.file, "no drill was run")? else {
        return Ok(2);
    };
    let scenarios: Vec<Scenario> = match a.scenario.as_str() {
        "all" => Scenario::ALL.to_vec(),
        s => vec![Scenario::parse(s).ok_or_else(|| anyhow::anyhow!("unknown scenario {s}"))?],
    };
    if a.load && scenarios != [Scenario::Soak] {
        bail!("--load is for `soak`: the other scenarios measure one fault at a time");
    }
    if a.host.is_some() && scenarios.len() > 1 {
        bail!("--host picks the target of one scenario; it cannot be used with `all`");
    }
    let report_dir = a
        .report_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("drill-reports").join(stamp(SystemTime::now())));
    let opts = Options {
        duration: a.duration,
        host: a.host.clone(),
        force: a.force,
        yes: a.yes,
        via: a.via,
        recovery_timeout: a.recovery_timeout,
        request_timeout: a.request_timeout,
        load: a.load,
        ..Options::default()
    };
    let json = a.output == Output::Json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Take SIGINT and SIGTERM before anything is broken: from now on they only ask the
        // drill to restore and stop.
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                tx.send_modify(|n| *n += 1);
                eprintln!("drill: interrupt received ({})", *tx.borrow());
            }
        });
        let start = Instant::now();
        let log: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |m: &str| {
            eprintln!("{:>7.2}s {m}", start.elapsed().as_secs_f64());
        });
        let access = crate::transport::tunnel::setup(&c).await;
        let drill = Drill::new(c.clone(), &a.file, opts, rx, log)?;
        eprintln!(
            "hakube drill on {} ({}), probes {}, faults via {}",
            c.name,
            drill
                .lab
                .as_ref()
                .map(|l| format!("lab {l}"))
                .unwrap_or_else(|| "real hosts".into()),
            crate::transport::tunnel::describe(access),
            drill.via()
        );
        let mut reports: Vec<ScenarioReport> = Vec::new();
        for (i, sc) in scenarios.into_iter().enumerate() {
            // After a scenario, give the cluster a moment to settle before the next one refuses.
            let settle = if i == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(30)
            };
            let mut r = drill.run(sc, settle).await;
            if r.metrics.is_some()
                && let Err(e) = report::write_files(&report_dir, &mut r)
            {
                r.warnings
                    .push(format!("the report files were not written: {e:#}"));
            }
            if !json {
                println!("{}", report::scenario_text(&r));
            }
            let stop = r.outcome == Outcome::Interrupted;
            reports.push(r);
            if stop {
                break;
            }
        }
        let wrote = reports.iter().any(|r| !r.files.is_empty());
        if wrote {
            let summary = report::summary_text(&reports);
            let _ = std::fs::write(report_dir.join("summary.txt"), &summary);
            let _ = std::fs::write(
                report_dir.join("summary.json"),
                serde_json::to_string_pretty(&reports)?,
            );
        }
        let code = exit_code(&reports);
        if json {
            let v = serde_json::json!({
                "cluster": c.name,
                "lab": drill.lab,
                "via": drill.via(),
                "report_dir": wrote.then(|| report_dir.display().to_string()),
                "exit_code": code,
                "scenarios": reports,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            if reports.len() > 1 {
                print!("{}", report::summary_text(&reports));
            }
            if wrote {
                println!(
                    "report: {} (per scenario: timeline, SVG chart, every request as JSON)",
                    report_dir.display()
                );
            }
        }
        anyhow::Ok(code)
    })
}
