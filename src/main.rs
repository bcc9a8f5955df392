//! The `hakube` command line: a thin layer over the library.

use clap::{Parser, Subcommand, ValueEnum};
use hakube::{apply, lab, plan, render, spec, status};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hakube",
    version,
    about = "Build and operate highly-available on-premises Kubernetes control planes",
    long_about = "hakube reads one declarative cluster.yaml (two or more HAProxy/keepalived load \
balancers sharing a VIP, stacked-etcd control planes, workers), checks it, explains its failure \
tolerance, and renders every config file each host needs.\n\nStart with `hakube plan -f \
examples/seed.yaml`, or bring up a local lab with `hakube lab up`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct SpecArgs {
    /// The cluster spec.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "cluster.yaml",
        value_name = "FILE"
    )]
    file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the spec and show the topology, the failure tolerance of every layer, its
    /// worst-case failover times, and every single point of failure.
    ///
    /// Exit status: 0 clean, 1 warnings only, 2 errors.
    Plan(SpecArgs),
    /// Render every config file, one folder per host (plus `_cluster/` for cluster-wide files).
    ///
    /// Refuses (exit 2) when the spec has errors. Same spec, same bytes.
    Render {
        #[command(flatten)]
        spec: SpecArgs,
        /// Where to write; created if missing. Files hakube did not write are left alone.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Also check the files with the real tools, if installed locally: `haproxy -c`,
        /// `keepalived --config-test` (needs root) and `promtool check`. Exit 2 if any fails.
        #[arg(long)]
        check: bool,
    },
    /// Converge every host to the spec over SSH: prepare, PKI, etcd, load balancers, control
    /// plane, workers, verify. Idempotent: a second run reports 0 changed.
    ///
    /// With --dry-run, prints for each host the unified diff of every file and every command it
    /// would run, and changes nothing. Exit status: 0 done, 2 failed.
    Apply {
        #[command(flatten)]
        spec: SpecArgs,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Hosts worked on at once.
        #[arg(long, default_value_t = 30, value_name = "N")]
        concurrency: usize,
        /// Go on where hakube would refuse to risk quorum (for example restarting etcd while a
        /// member is unhealthy).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (apply never prompts when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Every HA layer, live: VIP holder, HAProxy backends, API servers (/readyz, /livez), etcd
    /// (members, leader, raft, DB size, alarms) and certificate expiry, with a verdict each.
    ///
    /// Exit status: 0 healthy, 1 degraded, 2 down.
    Status {
        #[command(flatten)]
        spec: SpecArgs,
        /// Redraw every --interval until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        interval: std::time::Duration,
        /// Print the facts as Prometheus metrics (text format), for the rendered alert rules.
        #[arg(long, conflicts_with = "output")]
        prometheus: bool,
    },
    /// Diagnose: the status probes plus SSH checks, through rules (split brain, VIP, keepalived
    /// FAULT, backends, etcd quorum/alarms/lag/membership, clock skew, certificates, config
    /// drift). Each finding has evidence, the likely cause and the fix.
    ///
    /// Exit status: 0 no findings, 1 warnings, 2 critical.
    Doctor {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// A local lab: real haproxy, keepalived, etcd and sshd in Linux namespaces (needs root).
    Lab(lab::cli::LabArgs),
    Drill(hakube::drill::cli::DrillArgs),
}

fn main() -> ExitCode {
    // On lab hosts the same binary stands in for systemctl (hosts there have no systemd).
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "systemctl")
    {
        return ExitCode::from(lab::cli::systemctl_main() as u8);
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    ExitCode::from(code as u8)
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Plan(a) => cmd_plan(&a),
        Command::Render { spec, out, check } => cmd_render(&spec, &out, check),
        Command::Apply {
            spec,
            dry_run,
            concurrency,
            force,
            yes: _,
        } => cmd_apply(&spec, dry_run, concurrency, force),
        Command::Status {
            spec,
            watch,
            interval,
            prometheus,
        } => cmd_status(&spec, watch, interval, prometheus),
        Command::Doctor { spec } => cmd_doctor(&spec),
        Command::Lab(a) => lab::cli::run(a),
        Command::Drill(a) => hakube::drill::cli::run(a),
    }
}

/// Load the spec and print its diagnostics (to stderr in JSON mode, so stdout stays parseable).
fn load(a: &SpecArgs) -> anyhow::Result<spec::Loaded> {
    let loaded = spec::load_file(&a.file)?;
    Ok(loaded)
}

fn print_diagnostics(diags: &spec::Diagnostics) {
    let color = std::io::stderr().is_terminal();
    for d in &diags.items {
        let text = d.to_string();
        if color {
            let code = match d.severity {
                spec::Severity::Error => "31",
                spec::Severity::Warning => "33",
                spec::Severity::Info => "36",
            };
            let (head, rest) = text.split_once('\n').unwrap_or((&text, ""));
            eprintln!("\x1b[1;{code}m{head}\x1b[0m\n{rest}");
        } else {
            eprintln!("{text}");
        }
    }
}

fn exit_code(diags: &spec::Diagnostics) -> i32 {
    if diags.has_errors() {
        2
    } else if diags.count(spec::Severity::Warning) > 0 {
        1
    } else {
        0
    }
}

fn summary_line(diags: &spec::Diagnostics) -> String {
    format!(
        "{} error(s), {} warning(s)",
        diags.count(spec::Severity::Error),
        diags.count(spec::Severity::Warning)
    )
}

fn cmd_plan(a: &SpecArgs) -> anyhow::Result<i32> {
    let loaded = load(a)?;
    let report = loaded.cluster.as_ref().map(plan::analyze);
    match a.output {
        Output::Json => {
            let v = serde_json::json!({
                "file": a.file.display().to_string(),
                "valid": !loaded.diagnostics.has_errors(),
                "diagnostics": loaded.diagnostics.items,
                "plan": report,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            print_diagnostics(&loaded.diagnostics);
            if let (Some(c), Some(r)) = (&loaded.cluster, &report) {
                print!("{}", plan::render_text(c, r));
            }
            eprintln!(
                "{}: {}",
                a.file.display(),
                summary_line(&loaded.diagnostics)
            );
        }
    }
    let mut code = exit_code(&loaded.diagnostics);
    if code == 0 && report.as_ref().is_some_and(|r| !r.spofs.is_empty()) {
        code = 1;
    }
    Ok(code)
}

fn cmd_render(a: &SpecArgs, out: &Path, check: bool) -> anyhow::Result<i32> {
    let loaded = load(a)?;
    if a.output == Output::Text {
        print_diagnostics(&loaded.diagnostics);
    }
    let Some(cluster) = loaded.cluster else {
        if a.output == Output::Json {
            let v = serde_json::json!({"rendered": false, "diagnostics": loaded.diagnostics.items});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            eprintln!(
                "{}: {}; nothing rendered",
                a.file.display(),
                summary_line(&loaded.diagnostics)
            );
        }
        return Ok(2);
    };
    let secrets = render::Secrets::load_or_create(&cluster)?;
    let files = render::render(&cluster, &secrets)?;
    let written = render::write_tree(&files, out)?;
    let checks = if check {
        render::check::check_tree(&files, out)
    } else {
        Vec::new()
    };
    let failed = checks.iter().filter(|r| !r.ok).count();
    match a.output {
        Output::Json => {
            let list: Vec<_> = files
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "host": f.host, "path": f.path, "mode": format!("{:04o}", f.mode),
                        "secret": f.secret, "sha256": f.sha256(),
                    })
                })
                .collect();
            let v = serde_json::json!({
                "rendered": true, "out": out.display().to_string(), "files": list,
                "changed": written, "diagnostics": loaded.diagnostics.items,
                "checks": checks,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            let hosts: std::collections::BTreeSet<&str> =
                files.iter().map(|f| f.host.as_str()).collect();
            println!(
                "rendered {} files for {} hosts into {} ({} changed)",
                files.len(),
                hosts.len().saturating_sub(1),
                out.display(),
                written
            );
            for r in &checks {
                let verdict = if r.ok { "ok  " } else { "FAIL" };
                println!("  {verdict} {:<26} {}:{}", r.tool, r.host, r.file);
                if !r.ok {
                    for line in r.output.lines().take(12) {
                        println!("         {line}");
                    }
                }
            }
            if check {
                println!("{} checks, {} failed", checks.len(), failed);
            }
        }
    }
    Ok(if failed > 0 { 2 } else { 0 })
}

fn cmd_apply(a: &SpecArgs, dry_run: bool, concurrency: usize, force: bool) -> anyhow::Result<i32> {
    let loaded = load(a)?;
    let json = a.output == Output::Json;
    if !json {
        print_diagnostics(&loaded.diagnostics);
    }
    let Some(cluster) = loaded.cluster else {
        eprintln!(
            "{}: {}; nothing applied",
            a.file.display(),
            summary_line(&loaded.diagnostics)
        );
        return Ok(2);
    };
    let opts = apply::Options {
        dry_run,
        concurrency,
        force,
        json,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(apply::run(cluster, opts));
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"event": "summary", "summary": summary}))?
        );
    } else {
        print_apply_table(&summary, dry_run);
        match &summary.error {
            Some(e) => eprintln!("error: {e}"),
            None if dry_run => println!(
                "dry run: {} change(s) would be made; nothing was changed",
                summary.changed
            ),
            None => println!("{} changed", summary.changed),
        }
    }
    Ok(if summary.error.is_some() { 2 } else { 0 })
}

/// Apply's per-host table and phase times (none when it stopped before reaching the hosts).
fn print_apply_table(summary: &apply::Summary, dry_run: bool) {
    if summary.hosts.is_empty() {
        return;
    }
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "host",
        if dry_run { "would change" } else { "changed" },
        "unchanged",
        "failed",
        "time",
    ]);
    for (h, s) in &summary.hosts {
        t.add_row(vec![
            h.clone(),
            s.changed.to_string(),
            s.unchanged.to_string(),
            s.failed.to_string(),
            format!("{:.1}s", s.ms as f64 / 1000.0),
        ]);
    }
    println!("{t}");
    let phases: Vec<String> = summary
        .phases
        .iter()
        .map(|(p, ms)| format!("{p} {:.1}s", *ms as f64 / 1000.0))
        .collect();
    println!("phases: {}", phases.join(", "));
}

/// A valid cluster and a runtime for commands that talk to it; `None` after printing why not.
fn live_cluster(a: &SpecArgs) -> anyhow::Result<Option<(spec::Cluster, tokio::runtime::Runtime)>> {
    let loaded = load(a)?;
    let Some(cluster) = loaded.cluster else {
        print_diagnostics(&loaded.diagnostics);
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(Some((cluster, rt)))
}

fn cmd_status(
    a: &SpecArgs,
    watch: bool,
    interval: std::time::Duration,
    prometheus: bool,
) -> anyhow::Result<i32> {
    let Some((cluster, rt)) = live_cluster(a)? else {
        return Ok(2);
    };
    loop {
        let s = rt.block_on(status::gather(&cluster))?;
        if prometheus {
            print!("{}", status::render_prometheus(&s));
        } else if a.output == Output::Json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", status::render_text(&s));
        }
        if !watch {
            return Ok(s.overall.exit_code());
        }
        std::thread::sleep(interval);
    }
}

fn cmd_doctor(a: &SpecArgs) -> anyhow::Result<i32> {
    let Some((cluster, rt)) = live_cluster(a)? else {
        return Ok(2);
    };
    let evidence = rt.block_on(status::doctor::gather(&cluster))?;
    let findings = status::doctor::diagnose(&cluster, &evidence);
    if a.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"findings": findings, "status": evidence.status})
            )?
        );
    } else {
        print!("{}", status::doctor::render_text(&findings));
    }
    Ok(status::doctor::exit_code(&findings))
}
