//! The `hakube` command line: a thin layer over the library.

use clap::{Parser, Subcommand};
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

use hakube::output::Output;

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
enum CertsCommand {
    /// List every certificate in the operator state and every one the API servers and etcd
    /// serve, with its expiry; a renewed certificate that is not served yet is a finding. With
    /// `bootstrap: kubeadm`, also kubeadm's certificates on each control plane (`kubeadm certs
    /// check-expiration -o json` over SSH, which covers the client certificates of admin.conf,
    /// super-admin.conf, controller-manager.conf and scheduler.conf) and the client certificate
    /// of the admin kubeconfig next to the spec.
    ///
    /// Exit status: 0 fine, 1 one inside --within or not served yet, 2 one expired.
    Check {
        #[command(flatten)]
        spec: SpecArgs,
        /// Warn about certificates that expire within this time.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
        within: std::time::Duration,
    },
    /// Issue new leaf certificates (those expiring within --within, or --all) from the same CAs
    /// and roll them out with apply: etcd members restart one at a time (their API server
    /// drained first, leadership moved away), then the API servers, each behind a health gate.
    /// The old certificates are kept in .hakube/<cluster>/pki/retired/. CAs are not renewed.
    ///
    /// With `bootstrap: kubeadm`, then one control plane at a time (never all at once):
    /// `kubeadm certs renew all`, the static pods restarted by moving their manifests out of
    /// /etc/kubernetes/manifests until the kubelet has stopped them and back, gated on /readyz
    /// and HAProxy rating it UP; on the first control plane the admin kubeconfig next to the
    /// spec is refreshed. A control plane with nothing expiring within --within is skipped.
    Renew {
        #[command(flatten)]
        spec: SpecArgs,
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION", conflicts_with = "all")]
        within: std::time::Duration,
        /// Every leaf certificate, whatever its expiry.
        #[arg(long)]
        all: bool,
        /// Show what would be issued and restarted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
        /// Replace the CAs the live cluster uses with the ones in this spec's state folder. Every
        /// certificate is issued again and etcd and the API servers restart with them, with
        /// downtime. Without it, apply refuses a cluster whose CAs are not this state's.
        #[arg(long)]
        replace_ca: bool,
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
    /// Serve the status metrics on HTTP `/metrics` for Prometheus, probing at scrape time
    /// (read-only: needs the operator state that `apply` made next to the spec).
    Exporter {
        #[command(flatten)]
        spec: SpecArgs,
        /// Address and port to serve on [default: the spec's monitoring.exporter, 127.0.0.1:9468].
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Scrapes within this long of a probe get its result instead of probing again.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        max_age: std::time::Duration,
        /// A probe that takes longer is abandoned; the scrape says so (probe_success 0).
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        timeout: std::time::Duration,
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
    Backup(hakube::backup::cli::BackupArgs),
    Upgrade(hakube::upgrade::cli::UpgradeArgs),
    Restore(hakube::backup::cli::RestoreArgs),
    /// Certificates: every one hakube issued and what the live endpoints serve, with expiry;
    /// renewal one host at a time behind health gates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print a shell completion script: `hakube completions bash > /etc/bash_completion.d/hakube`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (hakube.1 and one per command) into a folder: `hakube man --out DIR`.
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `hakube … | head`: once the reader of stdout (or stderr) is gone, end quietly, killed by
/// SIGPIPE as other command-line tools are, instead of panicking in `println!` (Rust ignores
/// SIGPIPE). Not plain SIG_DFL: that would also kill hakube when a child it writes to (ssh)
/// exits early, where the EPIPE is an error to report.
fn end_quietly_when_stdout_is_gone() {
    use nix::libc;
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    extern "C" fn on_sigpipe(_: libc::c_int) {
        let mut fds = [1, 2].map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        });
        // SAFETY: poll(2), signal(2) and raise(3) are async-signal-safe; `fds` is a valid array.
        unsafe {
            if libc::poll(fds.as_mut_ptr(), 2, 0) > 0
                && fds
                    .iter()
                    .any(|f| f.revents & (libc::POLLERR | libc::POLLHUP) != 0)
            {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE); // delivered when this handler returns
            }
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_sigpipe),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only makes async-signal-safe calls.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &action) };
}

fn main() -> ExitCode {
    // On lab hosts the same binary stands in for systemctl (hosts there have no systemd).
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let systemctl = Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "systemctl");
    // The lab's service supervisor reports to a `systemctl start` that may be gone: it stays.
    if !(systemctl
        && std::env::args_os()
            .nth(1)
            .is_some_and(|a| a == "__supervise"))
    {
        end_quietly_when_stdout_is_gone();
    }
    if systemctl {
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
            replace_ca,
        } => cmd_apply(
            &spec,
            apply::Options {
                dry_run,
                concurrency,
                force,
                replace_ca,
                ..Default::default()
            },
        ),
        Command::Status {
            spec,
            watch,
            interval,
            prometheus,
        } => cmd_status(&spec, watch, interval, prometheus),
        Command::Doctor { spec } => cmd_doctor(&spec),
        Command::Exporter {
            spec,
            listen,
            max_age,
            timeout,
        } => cmd_exporter(&spec, listen, max_age, timeout),
        Command::Lab(a) => lab::cli::run(a),
        Command::Drill(a) => hakube::drill::cli::run(a),
        Command::Backup(a) => hakube::backup::cli::run_backup(a),
        Command::Upgrade(a) => hakube::upgrade::cli::run_upgrade(a),
        Command::Restore(a) => hakube::backup::cli::run_restore(a),
        Command::Certs { command } => cmd_certs(command),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "hakube", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out)?;
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(cmd, &out)?;
            println!("man pages written to {}", out.display());
            Ok(0)
        }
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
                "ports": loaded.cluster.as_ref().map(|c| c.port_plans()),
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

fn cmd_apply(a: &SpecArgs, opts: apply::Options) -> anyhow::Result<i32> {
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
    let dry_run = opts.dry_run;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(apply::run(cluster, opts, hakube::output::events(json)));
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

fn cmd_exporter(
    spec: &SpecArgs,
    listen: Option<std::net::SocketAddr>,
    max_age: std::time::Duration,
    timeout: std::time::Duration,
) -> anyhow::Result<i32> {
    let Some((cluster, rt)) = live_cluster(spec)? else {
        return Ok(2);
    };
    let listen = listen.unwrap_or(cluster.monitoring.exporter);
    if let Err(e) = hakube::state::State::open(&cluster) {
        eprintln!(
            "hakube exporter: warning: {e:#}\n  (serving anyway; metrics follow once the state exists)"
        );
    }
    let exp = hakube::exporter::Exporter::new(cluster, max_age, timeout);
    rt.block_on(hakube::exporter::serve(exp, listen))?;
    Ok(0)
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

fn cmd_certs(command: CertsCommand) -> anyhow::Result<i32> {
    match command {
        CertsCommand::Check { spec, within } => {
            let Some((cluster, rt)) = live_cluster(&spec)? else {
                return Ok(2);
            };
            let r = rt.block_on(hakube::certs::check(&cluster, within))?;
            if spec.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", hakube::certs::render_text(&r));
            }
            Ok(r.exit_code())
        }
        CertsCommand::Renew {
            spec,
            within,
            all,
            dry_run,
        } => {
            let loaded = load(&spec)?;
            let Some(cluster) = loaded.cluster else {
                print_diagnostics(&loaded.diagnostics);
                return Ok(2);
            };
            let state = hakube::state::State::open(&cluster)?;
            let due = hakube::certs::due(&hakube::certs::kept(&state)?, (!all).then_some(within));
            let kubeadm = cluster.kubernetes.bootstrap == spec::Bootstrap::Kubeadm;
            if due.is_empty() {
                eprintln!(
                    "no leaf certificate in the operator state expires within {}; nothing to \
                     renew there (--all renews every one)",
                    humantime::format_duration(within)
                );
            } else {
                eprintln!(
                    "renewing {} certificate(s): {}",
                    due.len(),
                    due.iter().cloned().collect::<Vec<_>>().join(", ")
                );
                let code = cmd_apply(
                    &spec,
                    apply::Options {
                        dry_run,
                        renew: due,
                        ..Default::default()
                    },
                )?;
                if code != 0 {
                    return Ok(code);
                }
            }
            if !kubeadm {
                return Ok(0);
            }
            eprintln!(
                "kubeadm's certificates: `kubeadm certs renew all` on {}, one control plane at a time",
                if all {
                    "every control plane".to_string()
                } else {
                    format!(
                        "each control plane with one expiring within {}",
                        humantime::format_duration(within)
                    )
                }
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let json = spec.output == Output::Json;
            match rt.block_on(hakube::certs::kubeadm::renew_cluster(
                cluster,
                (!all).then_some(within),
                dry_run,
                hakube::output::events(json),
            )) {
                Ok(()) if dry_run => {
                    eprintln!("dry run: nothing was changed");
                    Ok(0)
                }
                Ok(()) => Ok(0),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(2)
                }
            }
        }
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
