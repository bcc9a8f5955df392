//! Validation at scale. The test asserts correctness only; `bash bench/validate.sh` runs the
//! ignored one, which prints how long each size takes, so that growth can be compared.

use hakube::spec::{self, Severity};
use std::path::Path;
use std::time::Instant;

const HEAD: &str = "apiVersion: hakube.io/v1alpha1
kind: Cluster
metadata: {name: big}
spec:
  networks: {management: 172.16.0.0/12}
  loadBalancer: {vip: 172.16.0.100}
  hosts:
    - {name: lb1, address: 172.16.0.11, roles: [loadbalancer]}
    - {name: lb2, address: 172.16.0.12, roles: [loadbalancer]}
    - {name: cp1, address: 172.16.0.101, roles: [control-plane]}
    - {name: cp2, address: 172.16.0.102, roles: [control-plane]}
    - {name: cp3, address: 172.16.0.103, roles: [control-plane]}
";

/// A valid spec with `n` entries in one list or map: `hosts`, `sans` or `args`.
fn spec_with(kind: &str, n: usize) -> String {
    let mut s = String::from(HEAD);
    match kind {
        "hosts" => {
            for i in 0..n {
                s.push_str(&format!(
                    "    - {{name: w{i}, address: 172.{}.{}.{}, roles: [worker]}}\n",
                    17 + i / 65536,
                    (i / 256) % 256,
                    i % 256
                ));
            }
        }
        "sans" => {
            s.push_str("  kubernetes:\n    certSANs:\n");
            for i in 0..n {
                s.push_str(&format!("      - san{i}.example.com\n"));
            }
        }
        _ => {
            s.push_str("  kubernetes:\n    apiServerExtraArgs:\n");
            for i in 0..n {
                s.push_str(&format!("      flag-{i}: \"{i}\"\n"));
            }
        }
    }
    s
}

fn load(src: &str) -> spec::Loaded {
    spec::load_str(src, "cluster.yaml", Path::new("/nonexistent"))
}

#[test]
fn large_specs_validate_and_duplicates_are_still_found() {
    let n = 20_000;
    let l = load(&spec_with("hosts", n));
    let c = l.cluster.as_ref().expect("valid");
    assert_eq!(c.workers().count(), n);
    // The last worker duplicates the first one's name and address: both found, by index.
    let src = spec_with("hosts", n).replace(
        &format!(
            "name: w{}, address: 172.17.{}.{}",
            n - 1,
            (n - 1) / 256 % 256,
            (n - 1) % 256
        ),
        "name: w0, address: 172.17.0.0",
    );
    let l = load(&src);
    let msgs: Vec<String> = l
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{} {}", d.path, d.message))
        .collect();
    assert_eq!(
        msgs,
        [
            format!(
                "spec.hosts[{}].name duplicate host name \"w0\" (also spec.hosts[5])",
                n + 4
            ),
            format!(
                "spec.hosts[{}].address duplicate address 172.17.0.0 (also spec.hosts[5], w0)",
                n + 4
            )
        ]
    );
    let l = load(&spec_with("args", n));
    assert_eq!(
        l.cluster
            .expect("valid")
            .kubernetes
            .api_server_extra_args
            .len(),
        n
    );
}

/// CPU time of this thread (user + system, in clock ticks of 10 ms), which a busy machine
/// inflates less than wall time; 0 where /proc is missing.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd, utime 14th.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// `cargo test --test validate_scale -- --ignored --nocapture`: the time of each size. With
/// `HAKUBE_BENCH_DIR` set, the 100 000-entry specs are also written there for the CLI timing.
#[test]
#[ignore = "a benchmark: run by bench/validate.sh"]
fn bench_validation_time() {
    let out = std::env::var_os("HAKUBE_BENCH_DIR").map(std::path::PathBuf::from);
    for kind in ["hosts", "sans", "args"] {
        for n in [10_000, 100_000] {
            let src = spec_with(kind, n);
            if let Some(dir) = &out
                && n == 100_000
            {
                std::fs::write(dir.join(format!("{kind}.yaml")), &src).expect("write the spec");
            }
            let (t, cpu) = (Instant::now(), thread_cpu_seconds());
            let l = load(&src);
            let (took, cpu) = (t.elapsed(), thread_cpu_seconds() - cpu);
            assert!(l.cluster.is_some(), "{kind} {n}: not valid");
            println!(
                "validate {kind:<5} {n:>7} entries ({:>5.1} MB): wall {:>7.3} s, cpu {cpu:>6.2} s",
                src.len() as f64 / 1e6,
                took.as_secs_f64()
            );
        }
    }
}
