//! Accepted specs render what they say (issue #10, items 2 and 3).
//!
//! - Every string field of the spec, set to a generated value biased toward the characters
//!   config grammars treat specially: validation refuses it at that field's path, or every reader
//!   of the rendered files reads the value back exactly. The readers are models of each grammar
//!   (taken from the tools' parsers) and, in the root-only test, the real tools: sh and systemd's
//!   environment-file parser, `keepalived --config-test` in a network namespace where only the
//!   rendered interface and script user exist, `systemd-analyze verify`, and `haproxy -c`.
//! - Generated cluster shapes (host counts per role, priorities, ports, timings, VRRP version and
//!   advert): every spec that validation accepts passes `render --check`'s real tools.

use hakube::render::{self, RenderedFile, Secrets, check};
use hakube::spec::{self, Severity, model};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const SEED: &str = include_str!("../examples/seed.yaml");
const PASSWORD: &str = "tool-check-pw";
/// What a model reader returns where the tool would not read the text literally.
const MANGLED: &str = "\u{1}(read differently)\u{1}";

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn fill_ssh(s: &mut model::Ssh) {
    let model::Ssh {
        user,
        port,
        identity_file,
        proxy_jump,
        config_file,
        known_hosts_file,
    } = s;
    *user = Some("root".into());
    *port = Some(22);
    *identity_file = Some("~/.ssh/id_ed25519".into());
    *proxy_jump = Some("bastion".into());
    *config_file = Some("ssh_config".into());
    *known_hosts_file = Some("known_hosts".into());
}

/// The seed with every optional field set, so that every string field is a leaf to mutate. The
/// patterns name every field: a new field does not compile here until it is given a value.
fn full_document() -> model::Document {
    let mut doc: model::Document = serde_saphyr::from_str(SEED).expect("seed parses");
    let model::Document {
        api_version: _,
        kind: _,
        metadata: model::Metadata { name: _ },
        spec,
    } = &mut doc;
    let model::Spec {
        ssh,
        access: _,
        hosts,
        networks,
        load_balancer,
        etcd,
        kubernetes,
        pki,
        backup,
        monitoring,
    } = spec;
    let model::Pki {
        certificate_validity,
    } = pki;
    *certificate_validity = Some("365d".into());
    let model::Monitoring {
        labels,
        namespace,
        exporter,
        etcd_cert_dir,
        scrape_interval,
        prometheus_url,
    } = monitoring;
    labels.insert("release".into(), "kube-prometheus-stack".into());
    *namespace = Some("monitoring".into());
    *exporter = Some("127.0.0.1:9468".into());
    *etcd_cert_dir = Some("/etc/prometheus/secrets/etcd-certs".into());
    *scrape_interval = Some("15s".into());
    *prometheus_url = Some("http://127.0.0.1:9090".into());
    fill_ssh(ssh);
    for h in hosts {
        let model::Host {
            name: _,
            address: _,
            roles: _,
            interface,
            ssh,
        } = h;
        *interface = Some("eth0".into());
        fill_ssh(ssh);
    }
    let model::Networks {
        management: _,
        pods,
        services,
        storage,
        dns_domain,
    } = networks;
    assert!(pods.is_some() && services.is_some() && storage.is_some() && dns_domain.is_some());
    let model::LoadBalancer {
        vip: _,
        api_port,
        vrrp,
        health_check,
        stats,
        metrics,
        ingress,
        // Package pins go to apt, not into a rendered file: left out (validated in validate.rs).
        packages: _,
    } = load_balancer;
    *api_port = Some(6443);
    // VRRPv2, so that authPass is rendered.
    let model::Vrrp {
        router_id,
        version,
        advert_interval,
        auth_pass,
        priorities,
        script_user,
        track_port,
        preempt,
    } = vrrp;
    *router_id = Some(51);
    *version = Some(2);
    *advert_interval = Some("1s".into());
    *auth_pass = Some("s3cret".into());
    assert_eq!(priorities.len(), 2);
    *script_user = Some("keepalived_script".into());
    *track_port = Some(8406);
    *preempt = Some(true);
    let model::HealthCheck {
        kind,
        interval,
        fall,
        rise,
        timeout,
        connect_timeout,
    } = health_check;
    *kind = Some("https".into());
    *interval = Some("400ms".into());
    *fall = Some(2);
    *rise = Some(2);
    *timeout = Some("2s".into());
    *connect_timeout = Some("1s".into());
    let model::Stats {
        enabled,
        port,
        user,
        password_file,
    } = stats;
    *enabled = Some(true);
    *port = Some(9000);
    *user = Some("admin".into());
    *password_file = Some("stats.password".into());
    let model::Metrics { enabled, port } = metrics;
    *enabled = Some(true);
    *port = Some(8405);
    let Some(model::Ingress {
        http_port,
        https_port,
        http_node_port,
        https_node_port,
    }) = ingress
    else {
        panic!("the seed has ingress")
    };
    assert!(http_port.is_some() && https_port.is_some());
    assert!(http_node_port.is_some() && https_node_port.is_some());
    let model::Etcd {
        management,
        heartbeat_interval,
        election_timeout,
        quota_backend_bytes,
        data_dir,
        binary,
        client_port,
        peer_port,
        // A pinned install excludes `binary`, which the full document sets.
        version: _,
        source: _,
    } = etcd;
    assert!(management.is_some() && heartbeat_interval.is_some());
    assert!(election_timeout.is_some() && quota_backend_bytes.is_some());
    *data_dir = Some("/var/lib/etcd".into());
    *binary = Some("/usr/local/bin/etcd".into());
    *client_port = Some(2379);
    *peer_port = Some(2380);
    let model::Kubernetes {
        version,
        bootstrap,
        cluster_name,
        api_server_port,
        cert_sans,
        api_server_extra_args,
        cri_socket,
        packages,
        container_runtime,
        cni,
    } = kubernetes;
    assert!(version.is_some() && bootstrap.is_some() && cluster_name.is_some());
    *api_server_port = Some(6443);
    assert!(!cert_sans.is_empty() && !api_server_extra_args.is_empty());
    *cri_socket = Some("unix:///var/run/containerd/containerd.sock".into());
    let model::KubePackages {
        repository,
        key_fingerprint,
    } = packages;
    *repository = Some("https://pkgs.k8s.io/core:/stable:/v1.37/deb/".into());
    *key_fingerprint = Some("DE15B14486CD377B9E876E1A234654DA9A296436".into());
    let model::ContainerRuntime { sandbox_image } = container_runtime;
    *sandbox_image = Some("registry.k8s.io/pause:3.10.1".into());
    *cni = Some(model::Cni {
        name: Some("calico".into()),
        version: Some("v3.28.0".into()),
        manifest: Some(
            "https://raw.githubusercontent.com/projectcalico/calico/v3.28.0/manifests/calico.yaml"
                .into(),
        ),
        sha256: Some("0".repeat(64)),
    });
    let model::Backup {
        dir,
        max_age,
        retention,
        schedule,
    } = backup.get_or_insert_with(Default::default);
    *dir = Some("backups".into());
    *max_age = Some("25h".into());
    let model::Retention {
        keep_last,
        daily,
        weekly,
    } = retention;
    *keep_last = Some(7);
    *daily = Some(7);
    *weekly = Some(4);
    let model::Schedule {
        on_calendar,
        keep,
        host_dir,
        randomized_delay,
    } = schedule.get_or_insert_with(Default::default);
    *on_calendar = Some("daily".into());
    *keep = Some(3);
    *host_dir = Some("/var/lib/hakube/backups".into());
    *randomized_delay = Some("30m".into());
    doc
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A string in the document: a value, or the key of a map entry.
#[derive(Debug, Clone)]
struct Leaf {
    at: Vec<Seg>,
    is_key: bool,
}

fn spec_path(at: &[Seg]) -> String {
    let mut p = String::new();
    for s in at {
        match s {
            Seg::Key(k) if p.is_empty() => p.push_str(k),
            Seg::Key(k) => {
                p.push('.');
                p.push_str(k);
            }
            Seg::Index(i) => p.push_str(&format!("[{i}]")),
        }
    }
    p
}

/// The path with indices and map keys blanked, to look up how the field is read.
fn pattern(at: &[Seg]) -> String {
    let mut out = Vec::new();
    for (i, s) in at.iter().enumerate() {
        let parent = spec_path(&at[..i]);
        out.push(match s {
            Seg::Index(_) => Seg::Index(0),
            Seg::Key(_) if is_map(&parent) => Seg::Key("*".into()),
            k => k.clone(),
        });
    }
    spec_path(&out).replace("[0]", "[]")
}

fn is_map(path: &str) -> bool {
    path == "spec.loadBalancer.vrrp.priorities"
        || path == "spec.kubernetes.apiServerExtraArgs"
        || path == "spec.monitoring.labels"
}

fn leaves(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Leaf>) {
    match v {
        Value::String(_) => out.push(Leaf {
            at: at.clone(),
            is_key: false,
        }),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(Seg::Index(i));
                leaves(x, at, out);
                at.pop();
            }
        }
        Value::Object(m) => {
            let map = is_map(&spec_path(at));
            for (k, x) in m {
                at.push(Seg::Key(k.clone()));
                if map {
                    out.push(Leaf {
                        at: at.clone(),
                        is_key: true,
                    });
                }
                leaves(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, at: &[Seg]) -> &'a mut Value {
    at.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

/// Set the leaf to `value`; returns the spec path a refusal must name.
fn mutate(doc: &mut Value, leaf: &Leaf, value: &str) -> String {
    if let (true, Some((Seg::Key(last), parent_at))) = (leaf.is_key, leaf.at.split_last()) {
        let parent = get_mut(doc, parent_at).as_object_mut().expect("a map");
        let x = parent.remove(last).expect("the key");
        parent.insert(value.to_string(), x);
        let mut at = parent_at.to_vec();
        at.push(Seg::Key(value.into()));
        return spec_path(&at);
    }
    let slot = get_mut(doc, &leaf.at);
    let old = slot.as_str().unwrap_or_default().to_string();
    *slot = Value::String(value.into());
    // A load balancer's priority follows its new name.
    if pattern(&leaf.at) == "spec.hosts[].name"
        && let Some(m) = doc["spec"]["loadBalancer"]["vrrp"]["priorities"].as_object_mut()
        && let Some(p) = m.remove(&old)
    {
        m.insert(value.to_string(), p);
    }
    spec_path(&leaf.at)
}

// ---------------------------------------------------------------------------------------------
// Models of the readers, from their parsers (haproxy src/tools.c parse_line, keepalived
// lib/parser.c decomment + alloc_strvec, systemd's env-file parser, POSIX sh assignments).

fn haproxy_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut in_word) = (Vec::new(), String::new(), false);
    let (mut dq, mut sq) = (false, false);
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' if !sq => {
                if let Some(n) = it.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' if !sq => {
                dq = !dq;
                in_word = true;
            }
            '\'' if !dq => {
                sq = !sq;
                in_word = true;
            }
            '#' if !dq && !sq => break,
            '$' if !sq && it.peek() == Some(&'{') => {
                for n in it.by_ref() {
                    if n == '}' {
                        break;
                    }
                }
                cur.push_str(MANGLED);
                in_word = true;
            }
            c if c.is_ascii_whitespace() && !dq && !sq => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn keepalived_words(line: &str) -> Vec<String> {
    // decomment(): `!` and `#` outside quotes cut the line.
    let mut kept = String::new();
    let mut quote = false;
    for c in line.trim_start_matches([' ', '\t']).chars() {
        if c == '"' {
            quote = !quote;
        }
        if !quote && (c == '!' || c == '#') {
            break;
        }
        kept.push(c);
    }
    // alloc_strvec_r(): whitespace separates, a "quoted string" is one word. Escapes, single
    // quotes, parameters and braces change what keepalived sees; mark words holding them.
    let mut words = Vec::new();
    let mut rest = kept.as_str();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let (word, tail) = if let Some(r) = rest.strip_prefix('"') {
            match r.find('"') {
                Some(e) => (MANGLED.to_string() + &r[..e], &r[e + 1..]),
                None => (MANGLED.to_string(), ""),
            }
        } else {
            let e = rest
                .find(|c: char| c.is_ascii_whitespace() || c == '"')
                .unwrap_or(rest.len());
            (rest[..e].to_string(), &rest[e..])
        };
        let odd = word.contains(['\\', '\'', '$', '{', '}']) && word != "{" && word != "}";
        words.push(if odd { MANGLED.to_string() } else { word });
        rest = tail;
    }
    words
}

/// `KEY=value` as systemd's EnvironmentFile= reads it.
fn env_systemd(content: &str, key: &str) -> Option<String> {
    content.lines().find_map(|l| {
        let l = l.trim_start_matches([' ', '\t']);
        if l.starts_with(['#', ';']) {
            return None;
        }
        let (k, v) = l.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim_matches([' ', '\t', '\r']);
        if v.contains(['"', '\'', '\\']) || v.chars().any(char::is_control) {
            return Some(MANGLED.into());
        }
        Some(v.to_string())
    })
}

/// `KEY=value` as sh reads it when the file is sourced: literal only if the word has no
/// quoting, expansion, operator or blank.
fn env_sh(content: &str, key: &str) -> Option<String> {
    let v = content
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))?;
    let special = |c: char| {
        c.is_ascii_whitespace()
            || "\"'\\$`;&|<>()".contains(c)
            || (c.is_control() && c != '\n')
            || !c.is_ascii() && c.is_whitespace()
    };
    if v.chars().any(special) || v.starts_with('~') || v.contains(":~") {
        return Some(MANGLED.into());
    }
    Some(v.to_string())
}

/// The program of `ExecStart=` as systemd reads it.
fn exec_start(unit: &str) -> Option<String> {
    let rest = unit.lines().find_map(|l| l.strip_prefix("ExecStart="))?;
    let word = rest.split_ascii_whitespace().next()?;
    if word.contains(['"', '\'', '\\', '%', '$', ';'])
        || word.starts_with(['-', '@', ':', '+', '!'])
    {
        return Some(MANGLED.into());
    }
    Some(word.to_string())
}

/// A `KEY=value` setting of a unit as systemd reads it: surrounding blanks trimmed; quotes,
/// escapes, specifiers and variables would not be read literally.
fn unit_value(unit: &str, key: &str) -> Option<String> {
    let v = unit
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))?
        .trim_matches([' ', '\t']);
    if v.contains(['"', '\'', '\\', '%', '$']) || v.chars().any(char::is_control) {
        return Some(MANGLED.into());
    }
    Some(v.to_string())
}

/// Split `stats auth "${HAKUBE_STATS_USER}:${HAKUBE_STATS_PASSWORD}"` as HAProxy does.
fn stats_auth(env: &str) -> Option<(String, String)> {
    let u = env_systemd(env, "HAKUBE_STATS_USER")?;
    let p = env_systemd(env, "HAKUBE_STATS_PASSWORD")?;
    let both = format!("{u}:{p}");
    let (u, p) = both.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The kubeadm-join.yaml that `apply` feeds kubeadm: placeholders filled with sed.
fn filled_join(text: &str) -> String {
    text.lines()
        .map(|l| {
            let mut l = l.to_string();
            for p in [
                "${HAKUBE_CERTIFICATE_KEY}",
                "${HAKUBE_BOOTSTRAP_TOKEN}",
                "${HAKUBE_CA_CERT_HASH}",
            ] {
                l = l.replacen(p, "secret", 1);
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn file<'a>(files: &'a [RenderedFile], host: &str, path: &str) -> Option<&'a RenderedFile> {
    files.iter().find(|f| f.host == host && f.path == path)
}

fn lines_starting<'a>(text: &'a str, word: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines()
        .filter(move |l| l.split_whitespace().next() == Some(word))
}

fn kubeadm_field(files: &[RenderedFile], get: impl Fn(&Value) -> Option<Value>) -> Vec<Value> {
    files
        .iter()
        .filter(|f| f.path.starts_with("/etc/kubernetes/hakube/"))
        .flat_map(|f| {
            let text = if f.path.ends_with("kubeadm-join.yaml") {
                filled_join(&f.content)
            } else {
                f.content.clone()
            };
            yaml_docs(&text)
        })
        .filter_map(|d| get(&d))
        .collect()
}

/// How a field reaches the rendered files.
enum Reach {
    /// Parsed into a typed value first; the rendered text is made from that value.
    Parsed,
    /// Used on the operator's machine only (ssh arguments, the password file's path, keys that
    /// select hosts).
    Unrendered,
    /// Rendered as written: what each reader reads, as (where, value read).
    Verbatim(Vec<(String, String)>),
}

fn str_of(v: Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

/// What the readers of the rendered files read for the field at `pat`.
fn read_back(pat: &str, doc: &Value, at: &[Seg], files: &[RenderedFile]) -> Reach {
    let lbs: Vec<String> = files
        .iter()
        .filter(|f| f.path == "/etc/keepalived/keepalived.conf")
        .map(|f| f.host.clone())
        .collect();
    let keepalived = |word: &str, pos: usize| -> Vec<(String, String)> {
        lbs.iter()
            .filter_map(|h| file(files, h, "/etc/keepalived/keepalived.conf"))
            .flat_map(|f| {
                lines_starting(&f.content, word).map(move |l| {
                    let w = keepalived_words(l);
                    (
                        format!("{}:keepalived.conf {word}", f.host),
                        w.get(pos).cloned().unwrap_or_default(),
                    )
                })
            })
            .collect()
    };
    let env = |path: &str, key: &str| -> Vec<(String, String)> {
        files
            .iter()
            .filter(|f| f.path == path)
            .flat_map(|f| {
                [
                    (
                        format!("{}:{path} (systemd)", f.host),
                        env_systemd(&f.content, key).unwrap_or_default(),
                    ),
                    (
                        format!("{}:{path} (sh)", f.host),
                        env_sh(&f.content, key).unwrap_or_default(),
                    ),
                ]
            })
            .collect()
    };
    let yaml = |what: &str, get: &dyn Fn(&Value) -> Option<Value>| -> Vec<(String, String)> {
        kubeadm_field(files, get)
            .into_iter()
            .map(|v| (format!("kubeadm {what}"), str_of(v)))
            .collect()
    };
    let host_index = || match at.get(2) {
        Some(Seg::Index(i)) => *i,
        _ => unreachable!("a host field"),
    };
    let got = match pat {
        "apiVersion" | "kind" | "spec.hosts[].address" | "spec.hosts[].roles[]" => {
            return Reach::Parsed;
        }
        p if p.starts_with("spec.networks.") && p != "spec.networks.dnsDomain" => {
            return Reach::Parsed;
        }
        "spec.loadBalancer.vip"
        | "spec.loadBalancer.vrrp.advertInterval"
        | "spec.loadBalancer.healthCheck.type"
        | "spec.loadBalancer.healthCheck.interval"
        | "spec.loadBalancer.healthCheck.timeout"
        | "spec.loadBalancer.healthCheck.connectTimeout"
        | "spec.etcd.management"
        | "spec.etcd.heartbeatInterval"
        | "spec.etcd.electionTimeout"
        | "spec.etcd.quotaBackendBytes"
        | "spec.kubernetes.version"
        | "spec.kubernetes.bootstrap"
        | "spec.pki.certificateValidity"
        | "spec.kubernetes.packages.keyFingerprint"
        | "spec.kubernetes.cni.name"
        | "spec.kubernetes.cni.sha256"
        | "spec.backup.maxAge"
        | "spec.backup.schedule.randomizedDelay"
        | "spec.monitoring.exporter"
        | "spec.monitoring.etcdCertDir"
        | "spec.monitoring.scrapeInterval" => return Reach::Parsed,
        "spec.monitoring.prometheusUrl" | "spec.access" => return Reach::Unrendered,
        "spec.monitoring.namespace" | "spec.monitoring.labels.*" => {
            let label = match (pat, at.last()) {
                ("spec.monitoring.labels.*", Some(Seg::Key(k))) => Some(k.clone()),
                _ => None,
            };
            files
                .iter()
                .filter(|f| f.path == "/monitoring/prometheusrule.yaml")
                .flat_map(|f| yaml_docs(&f.content))
                .map(|d| {
                    let v = match &label {
                        Some(k) => d["metadata"]["labels"][k.as_str()].clone(),
                        None => d["metadata"]["namespace"].clone(),
                    };
                    ("prometheusrule.yaml metadata".to_string(), str_of(v))
                })
                .collect()
        }
        // Used by apply's own scripts, shell-quoted, or only shown: never in a rendered file.
        "spec.kubernetes.cni.manifest" | "spec.kubernetes.cni.version" => {
            return Reach::Unrendered;
        }
        "spec.backup.dir" => return Reach::Unrendered,
        "spec.backup.schedule.onCalendar" => files
            .iter()
            .filter(|f| f.path == "/etc/systemd/system/hakube-backup.timer")
            .map(|f| {
                (
                    format!("{}:hakube-backup.timer OnCalendar", f.host),
                    unit_value(&f.content, "OnCalendar").unwrap_or_default(),
                )
            })
            .collect(),
        "spec.backup.schedule.hostDir" => files
            .iter()
            .filter(|f| f.path == "/var/lib/hakube/bin/etcd-backup.sh")
            .map(|f| {
                (
                    format!("{}:etcd-backup.sh BACKUP_DIR (sh)", f.host),
                    env_sh(&f.content, "BACKUP_DIR").unwrap_or_default(),
                )
            })
            .collect(),
        p if p.starts_with("spec.ssh.") || p.starts_with("spec.hosts[].ssh.") => {
            return Reach::Unrendered;
        }
        "spec.loadBalancer.stats.passwordFile" | "spec.loadBalancer.vrrp.priorities.*" => {
            return Reach::Unrendered;
        }
        "metadata.name" => files
            .iter()
            .filter(|f| f.path == "/etc/etcd/etcd.env")
            .map(|f| {
                let token =
                    env_systemd(&f.content, "ETCD_INITIAL_CLUSTER_TOKEN").unwrap_or_default();
                (
                    format!("{}:etcd.env token", f.host),
                    token.strip_suffix("-etcd").unwrap_or(&token).to_string(),
                )
            })
            .collect(),
        "spec.hosts[].name" => {
            let i = host_index();
            let h = &doc["spec"]["hosts"][i];
            let name = h["name"].as_str().unwrap_or_default().to_string();
            let roles: Vec<&str> = h["roles"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut got = vec![(
                "a rendered host".to_string(),
                files
                    .iter()
                    .find(|f| f.host == name)
                    .map(|f| f.host.clone())
                    .unwrap_or_default(),
            )];
            if roles.contains(&"control-plane") {
                got.extend(
                    env("/etc/etcd/etcd.env", "ETCD_NAME")
                        .into_iter()
                        .filter(|(w, _)| w.starts_with(&format!("{name}:"))),
                );
            }
            if roles.contains(&"loadbalancer") {
                got.extend(
                    keepalived("router_id", 1)
                        .into_iter()
                        .filter(|(w, _)| w.starts_with(&format!("{name}:"))),
                );
            }
            if roles.contains(&"control-plane") || roles.contains(&"worker") {
                for lb in &lbs {
                    let cfg = file(files, lb, "/etc/haproxy/haproxy.cfg").expect("haproxy.cfg");
                    let servers: Vec<String> = lines_starting(&cfg.content, "server")
                        .filter_map(|l| haproxy_words(l).get(1).cloned())
                        .collect();
                    let found = servers.iter().find(|s| **s == name).cloned();
                    got.push((
                        format!("{lb}:haproxy.cfg server"),
                        found.unwrap_or_default(),
                    ));
                }
                let own: Vec<RenderedFile> =
                    files.iter().filter(|f| f.host == name).cloned().collect();
                got.extend(
                    kubeadm_field(&own, |d| {
                        d.get("nodeRegistration").map(|n| n["name"].clone())
                    })
                    .into_iter()
                    .map(|v| (format!("{name}: kubeadm nodeRegistration.name"), str_of(v))),
                );
            }
            got
        }
        "spec.hosts[].interface" => {
            let i = host_index();
            let name = doc["spec"]["hosts"][i]["name"].as_str().unwrap_or_default();
            if !lbs.iter().any(|h| h == name) {
                return Reach::Unrendered;
            }
            keepalived("interface", 1)
                .into_iter()
                .chain(
                    lbs.iter()
                        .filter_map(|h| file(files, h, "/etc/keepalived/keepalived.conf"))
                        .flat_map(|f| {
                            f.content.lines().filter_map(move |l| {
                                let w = keepalived_words(l);
                                let d = w.iter().position(|x| x == "dev")?;
                                Some((
                                    format!("{}:keepalived.conf dev", f.host),
                                    w.get(d + 1).cloned().unwrap_or_default(),
                                ))
                            })
                        }),
                )
                .filter(|(w, _)| w.starts_with(&format!("{name}:")))
                .collect()
        }
        "spec.networks.dnsDomain" => {
            yaml("dnsDomain", &|d| d["networking"].get("dnsDomain").cloned())
        }
        "spec.loadBalancer.vrrp.authPass" => keepalived("auth_pass", 1),
        "spec.loadBalancer.vrrp.scriptUser" => keepalived("script_user", 1),
        "spec.loadBalancer.stats.user" => {
            let mut got = env("/etc/haproxy/hakube.env", "HAKUBE_STATS_USER");
            for f in files.iter().filter(|f| f.path == "/etc/haproxy/hakube.env") {
                let (u, _) = stats_auth(&f.content).unwrap_or_default();
                got.push((format!("{}: stats auth user", f.host), u));
            }
            got
        }
        "spec.etcd.dataDir" => env("/etc/etcd/etcd.env", "ETCD_DATA_DIR"),
        "spec.etcd.binary" => files
            .iter()
            .filter(|f| f.path == "/etc/systemd/system/etcd.service")
            .map(|f| {
                (
                    format!("{}:etcd.service ExecStart", f.host),
                    exec_start(&f.content).unwrap_or_default(),
                )
            })
            .collect(),
        "spec.kubernetes.clusterName" => yaml("clusterName", &|d| d.get("clusterName").cloned()),
        "spec.kubernetes.certSANs[]" => {
            let want = doc["spec"]["kubernetes"]["certSANs"][match at.get(3) {
                Some(Seg::Index(i)) => *i,
                _ => 0,
            }]
            .clone();
            yaml("certSANs", &|d| {
                let sans = d["apiServer"]["certSANs"].as_array()?;
                Some(
                    sans.iter()
                        .find(|s| **s == want)
                        .cloned()
                        .unwrap_or(Value::Null),
                )
            })
        }
        "spec.kubernetes.apiServerExtraArgs.*" => {
            let Some(Seg::Key(key)) = at.last() else {
                unreachable!()
            };
            yaml("extraArgs", &|d| {
                let list = d["apiServer"]["extraArgs"].as_array()?;
                let hit = list.iter().find(|a| a["name"] == key.as_str())?;
                // What the API server gets: --NAME=VALUE, split at the first '='.
                let flag = format!(
                    "--{}={}",
                    str_of(hit["name"].clone()),
                    str_of(hit["value"].clone())
                );
                let (n, v) = flag.trim_start_matches("--").split_once('=')?;
                Some(Value::String(if n == key {
                    v.to_string()
                } else {
                    MANGLED.into()
                }))
            })
        }
        "spec.kubernetes.criSocket" => yaml("criSocket", &|d| {
            d.get("nodeRegistration").map(|n| n["criSocket"].clone())
        }),
        "spec.kubernetes.packages.repository" => files
            .iter()
            .filter(|f| f.path == "/etc/apt/sources.list.d/hakube-kubernetes.list")
            .flat_map(|f| {
                // apt's one-line format: deb [options] URI SUITE; the options hold no spaces.
                lines_starting(&f.content, "deb").map(move |l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    (
                        format!("{}: sources.list URI", f.host),
                        w.get(2).map(|s| s.to_string()).unwrap_or_default(),
                    )
                })
            })
            .collect(),
        "spec.kubernetes.containerRuntime.sandboxImage" => files
            .iter()
            .filter(|f| f.path == "/etc/containerd/config.toml")
            .flat_map(|f| {
                lines_starting(&f.content, "sandbox_image").map(move |l| {
                    let v = l.split_once('=').map(|(_, v)| v.trim()).unwrap_or_default();
                    (
                        format!("{}: containerd sandbox_image", f.host),
                        v.trim_matches('"').to_string(),
                    )
                })
            })
            .collect(),
        other => panic!("no reader for {other}: say how this field reaches the rendered files"),
    };
    Reach::Verbatim(got)
}

/// The value each reader should see, for a key leaf its value's reading is compared.
fn expected(doc: &Value, leaf: &Leaf, value: &str, path_after: &[Seg]) -> String {
    if leaf.is_key {
        // A key is checked through its entry's value: the entry must be found under the new key.
        return str_of(get_mut(&mut doc.clone(), path_after).clone());
    }
    value.to_string()
}

fn load_value(v: &Value) -> spec::Loaded {
    let doc: model::Document = serde_json::from_value(v.clone()).expect("still a document");
    let yaml = serde_saphyr::to_string(&doc).expect("serialises");
    let back: model::Document = serde_saphyr::from_str(&yaml)
        .unwrap_or_else(|e| panic!("the test's YAML does not round-trip: {e}\n{yaml}"));
    assert_eq!(
        serde_json::to_value(&back).expect("json"),
        *v,
        "the test's YAML does not round-trip:\n{yaml}"
    );
    spec::load_str(&yaml, "cluster.yaml", Path::new("/nonexistent"))
}

struct Case {
    path: String,
    pattern: String,
    value: String,
    /// The field's readers and what they read; None when the spec was refused at the field.
    read: Option<Reach>,
    files: Vec<RenderedFile>,
    doc: Value,
}

/// Set one leaf, validate, and if accepted render and read the value back from every reader.
fn run_case(leaf_index: usize, value: &str) -> Case {
    let (base, all) = base();
    let leaf = &all[leaf_index % all.len()];
    let mut doc = base.clone();
    let path = mutate(&mut doc, leaf, value);
    let pat = pattern(&leaf.at);
    let l = load_value(&doc);
    let Some(c) = l.cluster else {
        let errors: Vec<_> = l
            .diagnostics
            .items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        let at_field = errors.iter().find(|d| d.path == path);
        assert!(
            at_field.is_some(),
            "{pat} = {value:?} was refused, but not at {path}: {:#?}",
            errors
        );
        let d = at_field.expect("checked");
        assert!(
            d.location.is_some(),
            "the refusal of {path} has no line:column: {d}"
        );
        return Case {
            path,
            pattern: pat,
            value: value.into(),
            read: None,
            files: vec![],
            doc,
        };
    };
    let files = render::render(
        &c,
        &Secrets {
            stats_password: PASSWORD.into(),
        },
    )
    .unwrap_or_else(|e| panic!("{pat} = {value:?} was accepted but does not render: {e:#}"));
    let mut at_after = leaf.at.clone();
    if leaf.is_key {
        *at_after.last_mut().expect("key") = Seg::Key(value.into());
    }
    let read = read_back(&pat, &doc, &at_after, &files);
    if let Reach::Verbatim(got) = &read {
        let want = expected(&doc, leaf, value, &at_after);
        assert!(
            !got.is_empty(),
            "{pat}: no reader found the field in the rendered files"
        );
        for (w, v) in got {
            assert_eq!(
                v, &want,
                "{pat} = {value:?} was accepted, but {w} reads {v:?}"
            );
        }
    }
    Case {
        path,
        pattern: pat,
        value: value.into(),
        read: Some(read),
        files,
        doc,
    }
}

/// The full document as JSON and its leaves, built once.
fn base() -> &'static (Value, Vec<Leaf>) {
    static BASE: std::sync::OnceLock<(Value, Vec<Leaf>)> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let base = serde_json::to_value(full_document()).expect("json");
        let mut all = Vec::new();
        leaves(&base, &mut Vec::new(), &mut all);
        (base, all)
    })
}

/// The leaf's own text: its value, or its key.
fn own_text(leaf: &Leaf) -> String {
    match (leaf.is_key, leaf.at.last()) {
        (true, Some(Seg::Key(k))) => k.clone(),
        _ => get_mut(&mut base().0.clone(), &leaf.at)
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The leaves that reach a rendered file verbatim.
fn verbatim_leaves() -> &'static [usize] {
    static V: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let all = &base().1;
        (0..all.len())
            .filter(|j| {
                matches!(
                    run_case(*j, &own_text(&all[*j])).read,
                    Some(Reach::Verbatim(_))
                )
            })
            .collect()
    })
}

/// Strings biased toward what config grammars treat specially, often around a valid value.
fn hostile() -> impl Strategy<Value = String> {
    let special = prop::sample::select(
        "#!;:\"'\\$%{}~`()&|<>*?[]@=/ .,-_+^\t\n\r\u{0}\u{7f}\u{a0}\u{2028}\u{feff}é"
            .chars()
            .collect::<Vec<_>>(),
    );
    let piece = prop::collection::vec(
        prop_oneof![
            3 => special.prop_map(String::from),
            3 => "[a-z0-9]{1,3}",
            1 => any::<char>().prop_map(String::from),
            1 => prop::sample::select(vec!["${HAKUBE_BOOTSTRAP_TOKEN}", "%h", "${X}", "\\\n", "unix:///", "/var/lib/", "--"]).prop_map(String::from),
        ],
        0..5,
    )
    .prop_map(|v| v.concat());
    (0u8..3, piece, "[a-z0-9]{0,4}").prop_map(|(mode, p, s)| match mode {
        0 => p,
        1 => format!("{s}{p}"),
        _ => format!("{p}{s}"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, .. ProptestConfig::default() })]

    /// Refused at the field, or read back unchanged by a model of every reader (no tools).
    #[test]
    fn every_string_field_is_refused_or_read_back_unchanged(
        i in 0usize..1000,
        value in hostile(),
        keep_prefix in any::<bool>(),
    ) {
        let all = &base().1;
        let leaf = &all[i % all.len()];
        // Half the cases keep the field's own value in front, so that accepted values are common.
        let v = if keep_prefix && !leaf.is_key {
            format!("{}{value}", own_text(leaf))
        } else {
            value
        };
        run_case(i % all.len(), &v);
    }
}

#[test]
fn every_string_field_has_a_reader() {
    // Each leaf with its own value must be accepted and read back (the table covers it).
    let all = &base().1;
    let n = all.len();
    let mut verbatim = Vec::new();
    for (i, leaf) in all.iter().enumerate() {
        let c = run_case(i, &own_text(leaf));
        assert!(
            c.read.is_some(),
            "{} with its own value was refused",
            c.path
        );
        if matches!(c.read, Some(Reach::Verbatim(_))) {
            verbatim.push(c.pattern);
        }
    }
    assert!(n > 40, "{n} leaves");
    for p in [
        "metadata.name",
        "spec.hosts[].name",
        "spec.hosts[].interface",
        "spec.loadBalancer.vrrp.authPass",
        "spec.loadBalancer.vrrp.scriptUser",
        "spec.loadBalancer.stats.user",
        "spec.etcd.dataDir",
        "spec.etcd.binary",
        "spec.kubernetes.clusterName",
        "spec.kubernetes.certSANs[]",
        "spec.kubernetes.apiServerExtraArgs.*",
        "spec.kubernetes.criSocket",
        "spec.networks.dnsDomain",
    ] {
        assert!(
            verbatim.iter().any(|v| v == p),
            "{p} is not read back: {verbatim:?}"
        );
    }
}

/// Known hostile values, each refused at its field with the character named.
#[test]
fn hostile_values_are_refused_where_they_are_written() {
    let all = &base().1;
    let find = |p: &str| {
        all.iter()
            .position(|l| pattern(&l.at) == p && !l.is_key)
            .unwrap_or_else(|| panic!("{p}"))
    };
    for (p, v) in [
        ("spec.hosts[].interface", "eth0#1"),
        ("spec.hosts[].interface", "eth0 dev lo"),
        ("spec.loadBalancer.vrrp.authPass", "ab!cd"),
        ("spec.loadBalancer.vrrp.authPass", "a}b"),
        ("spec.loadBalancer.vrrp.scriptUser", "root\n}"),
        ("spec.loadBalancer.stats.user", "ad:min"),
        ("spec.loadBalancer.stats.user", "a b"),
        ("spec.loadBalancer.stats.user", "$(id)"),
        ("spec.etcd.dataDir", "/var/lib/etcd\nETCD_NAME=x"),
        ("spec.etcd.binary", "/usr/bin/etcd --data-dir /tmp"),
        ("spec.etcd.binary", "/opt/%h/etcd"),
        (
            "spec.kubernetes.criSocket",
            "unix:///${HAKUBE_BOOTSTRAP_TOKEN}",
        ),
        ("spec.kubernetes.clusterName", "a\nb"),
    ] {
        let c = run_case(find(p), v);
        assert!(c.read.is_none(), "{p} = {v:?} was accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// The real readers (root).

fn write_public(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    p
}

fn output(mut c: Command) -> (bool, String) {
    let o = c.output().expect("run");
    let mut s = String::from_utf8_lossy(&o.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// `KEY` as sh reads the file when it is sourced, run as nobody in case it holds a command.
fn real_sh(file: &Path, key: &str) -> Option<String> {
    let mut c = Command::new("env");
    c.args([
        "-i",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ])
    .args([
        "sh",
        "-c",
        "set -a; . \"$1\" >/dev/null 2>&1; printenv \"$2\"",
        "sh",
    ])
    .arg(file)
    .arg(key)
    .current_dir("/");
    let o = c.output().expect("sh");
    let s = String::from_utf8_lossy(&o.stdout);
    o.status
        .success()
        .then(|| s.strip_suffix('\n').unwrap_or(&s).to_string())
}

/// `KEY` as systemd's environment-file parser reads it (the environment.d generator uses it).
fn real_systemd(content: &str, key: &str) -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("environment.d")).expect("mkdir");
    std::fs::write(dir.path().join("environment.d/99-hakube.conf"), content).expect("write");
    let o = Command::new(
        "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator",
    )
    .env_clear()
    .env("XDG_CONFIG_HOME", dir.path())
    .output()
    .expect("the systemd environment.d generator runs");
    let out = String::from_utf8_lossy(&o.stdout);
    let v = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))?;
    // It prints values that need it double-quoted, with backslash escapes.
    Some(
        match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(q) => {
                let mut s = String::new();
                let mut it = q.chars();
                while let Some(c) = it.next() {
                    s.push(if c == '\\' {
                        it.next().unwrap_or('\\')
                    } else {
                        c
                    });
                }
                s
            }
            None => v.to_string(),
        },
    )
}

/// keepalived's config test in a fresh network and mount namespace where the only interface is
/// `ifc` and `user` exists: keepalived must find both, so it read both as written.
fn real_keepalived(conf_dir: &Path, ifc: &str, user: &str) -> (bool, String) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let script = "set -e\n\
        ip link add \"$1\" type bridge\n\
        cp /etc/passwd \"$3/passwd\"\n\
        printf '%s:x:64999:64999::/nonexistent:/usr/sbin/nologin\\n' \"$2\" >> \"$3/passwd\"\n\
        mount --bind \"$3/passwd\" /etc/passwd\n\
        mkdir -p /etc/keepalived\n\
        mount --bind \"$4\" /etc/keepalived\n\
        trap '' TERM\n\
        exec keepalived --config-test -f /etc/keepalived/keepalived.conf";
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--net",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(ifc)
    .arg(user)
    .arg(scratch.path())
    .arg(conf_dir);
    let (ok, out) = output(c);
    (ok && out.trim().is_empty(), out)
}

/// The real readers agree with the spec, for every accepted case.
fn real_tools(case: &Case) {
    if case.read.is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    render::write_tree(&case.files, dir.path()).expect("write");
    let pub_dir = tempfile::tempdir().expect("tempdir");
    // Environment files: sh (first, as nobody, so that nothing in them runs as root) and systemd.
    for (path, keys) in [
        (
            "/etc/haproxy/hakube.env",
            &["HAKUBE_STATS_USER", "HAKUBE_STATS_PASSWORD"][..],
        ),
        (
            "/etc/etcd/etcd.env",
            &["ETCD_NAME", "ETCD_DATA_DIR", "ETCD_INITIAL_CLUSTER_TOKEN"][..],
        ),
    ] {
        for f in case.files.iter().filter(|f| f.path == path) {
            let p = write_public(pub_dir.path(), &format!("{}.env", f.host), &f.content);
            for key in keys {
                let model = env_systemd(&f.content, key);
                assert_eq!(
                    real_sh(&p, key),
                    model,
                    "{}: sh reads {key} differently ({} = {:?})",
                    f.host,
                    case.pattern,
                    case.value
                );
                assert_eq!(
                    real_systemd(&f.content, key),
                    model,
                    "{}: systemd reads {key} differently ({} = {:?})",
                    f.host,
                    case.pattern,
                    case.value
                );
            }
        }
    }
    // haproxy -c, which sources the environment file as check.rs does.
    let haproxy: Vec<RenderedFile> = case
        .files
        .iter()
        .filter(|f| f.path == "/etc/haproxy/haproxy.cfg")
        .cloned()
        .collect();
    for r in check::check_tree(&haproxy, dir.path()) {
        assert!(
            r.ok,
            "{} = {:?}: {} {}:\n{}",
            case.pattern, case.value, r.host, r.tool, r.output
        );
    }
    // keepalived, with the interface and script user as rendered.
    let hosts = case.doc["spec"]["hosts"].as_array().expect("hosts");
    let user = case.doc["spec"]["loadBalancer"]["vrrp"]["scriptUser"]
        .as_str()
        .unwrap_or("keepalived_script");
    for f in case
        .files
        .iter()
        .filter(|f| f.path == "/etc/keepalived/keepalived.conf")
    {
        let ifc = hosts
            .iter()
            .find(|h| h["name"] == f.host.as_str())
            .and_then(|h| h["interface"].as_str())
            .unwrap_or("eth0");
        let conf_dir = dir.path().join(&f.host).join("etc/keepalived");
        let (ok, out) = real_keepalived(&conf_dir, ifc, user);
        assert!(
            ok,
            "{} = {:?}: keepalived on {} (interface {ifc:?}, user {user:?}):\n{out}",
            case.pattern, case.value, f.host
        );
    }
    // etcd.service: systemd names the program it would run when it is missing.
    for f in case
        .files
        .iter()
        .filter(|f| f.path == "/etc/systemd/system/etcd.service")
    {
        let p = dir
            .path()
            .join(&f.host)
            .join("etc/systemd/system/etcd.service");
        let mut c = Command::new("systemd-analyze");
        c.arg("verify").arg(&p);
        let (_, out) = output(c);
        let binary = exec_start(&f.content).unwrap_or_default();
        for l in out.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                l.contains(&format!("Command {binary} is not executable")),
                "{} = {:?}: systemd-analyze verify on {}: {out}",
                case.pattern,
                case.value,
                f.host
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, .. ProptestConfig::default() })]

    /// Accepted values pass the real tools, which read them as the spec says.
    #[test]
    fn accepted_strings_pass_the_real_readers(
        i in 0usize..1000,
        value in hostile(),
    ) {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, keepalived)");
            return Ok(());
        }
        let all = &base().1;
        let verbatim = verbatim_leaves();
        // Only fields that reach a file verbatim, kept valid in front so most are accepted.
        let j = verbatim[i % verbatim.len()];
        let v = if all[j].is_key { value } else { format!("{}{value}", own_text(&all[j])) };
        real_tools(&run_case(j, &v));
    }

    /// The stats password comes from a file: refused with a message naming the file, or read
    /// back unchanged by HAProxy's environment file readers.
    #[test]
    fn the_stats_password_is_refused_or_read_back_unchanged(value in hostile()) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("stats.password");
        std::fs::write(&p, format!("{value}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        match render::read_or_create_secret(&p) {
            Err(e) => {
                let e = format!("{e:#}");
                prop_assert!(e.contains(&p.display().to_string()), "{e}");
            }
            Ok(pw) => {
                prop_assert_eq!(&pw, value.trim());
                let l = spec::load_str(SEED, "cluster.yaml", Path::new("/nonexistent"));
                let c = l.cluster.expect("seed");
                let files = render::render(&c, &Secrets { stats_password: pw.clone() }).expect("render");
                let env = &file(&files, "lb1", "/etc/haproxy/hakube.env").expect("env").content;
                prop_assert_eq!(env_systemd(env, "HAKUBE_STATS_PASSWORD"), Some(pw.clone()));
                prop_assert_eq!(env_sh(env, "HAKUBE_STATS_PASSWORD"), Some(pw.clone()));
                prop_assert_eq!(stats_auth(env).map(|x| x.1), Some(pw.clone()));
                if is_root() {
                    let pub_dir = tempfile::tempdir().expect("tempdir");
                    let f = write_public(pub_dir.path(), "hakube.env", env);
                    prop_assert_eq!(real_sh(&f, "HAKUBE_STATS_PASSWORD"), Some(pw.clone()));
                    prop_assert_eq!(real_systemd(env, "HAKUBE_STATS_PASSWORD"), Some(pw));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 3: every spec validation accepts passes `render --check`.

#[derive(Debug, Clone)]
struct Shape {
    lbs: usize,
    cps: usize,
    workers: usize,
    /// Load balancers on the control planes instead of hosts of their own.
    colocated: bool,
    cp_workers: bool,
    priorities: Option<Vec<i64>>,
    router_id: i64,
    version: u8,
    advert: &'static str,
    preempt: bool,
    ports: [Option<u16>; 8],
    stats: bool,
    metrics: bool,
    ingress: bool,
    https: bool,
    timings: [&'static str; 3],
    counts: [u32; 2],
    etcd: (&'static str, &'static str, &'static str),
    k8s: &'static str,
}

/// Mostly valid values, with about one dimension in ten out of range, so that both accepted and
/// refused specs are common.
fn shapes() -> impl Strategy<Value = Shape> {
    fn mostly<T: Clone + std::fmt::Debug + 'static>(good: Vec<T>, bad: Vec<T>) -> BoxedStrategy<T> {
        prop_oneof![9 => prop::sample::select(good), 1 => prop::sample::select(bad)].boxed()
    }
    let port = prop_oneof![
        4 => Just(None),
        1 => prop::sample::select(vec![0u16, 1, 80, 443, 2379, 6443, 8405, 8406, 8443, 9000, 10250, 30080, 32767, 65535]).prop_map(Some),
    ];
    // The extremes often, so that the widest spreads (the track weight's limit) come up.
    let prio = prop_oneof![
        4 => 2i64..=254,
        3 => prop::sample::select(vec![2i64, 3, 253, 254]),
        1 => prop::sample::select(vec![0i64, 1, 255]),
    ];
    let timer = || {
        mostly(
            vec!["1ms", "10ms", "100ms", "400ms", "1s", "2s", "10s", "24d"],
            vec!["25d", "1500us"],
        )
    };
    let count = || {
        mostly(
            vec![1u32, 2, 3, 10, 2147483647],
            vec![0, 2147483648, 4294967295],
        )
    };
    let vrrp = mostly(
        vec![
            (3u8, "10ms"),
            (3, "200ms"),
            (3, "1s"),
            (3, "40950ms"),
            (2, "1s"),
            (2, "3s"),
            (2, "255s"),
        ],
        vec![
            (3, "15ms"),
            (3, "41s"),
            (2, "1500ms"),
            (2, "256s"),
            (2, "200ms"),
        ],
    );
    let etcd = mostly(
        vec![
            ("10ms", "100ms"),
            ("100ms", "1000ms"),
            ("100ms", "49s"),
            ("5s", "49s"),
        ],
        vec![("1500us", "1000ms"), ("100ms", "50s"), ("5s", "1000ms")],
    );
    (
        (
            1usize..=4,
            prop::sample::select(vec![1usize, 3, 5]),
            0usize..=3,
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::option::of(prop::collection::vec(prio, 4)),
            mostly((1i64..=255).collect(), vec![0, 256]),
            vrrp,
            any::<bool>(),
        ),
        (
            prop::array::uniform8(port),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![4 => Just(true), 1 => Just(false)],
        ),
        (
            [timer(), timer(), timer()],
            [count(), count()],
            (prop::sample::select(vec!["hakube", "kubeadm"]), etcd),
        ),
        prop::sample::select(vec!["v1.30.2", "v1.37.0"]),
    )
        .prop_map(
            |(
                (lbs, cps, workers, colocated, cp_workers),
                (priorities, router_id, (version, advert), preempt),
                (ports, stats, metrics, ingress, https),
                (timings, counts, (em, (hb, el))),
                k8s,
            )| Shape {
                lbs,
                cps,
                workers,
                colocated,
                cp_workers,
                priorities,
                router_id,
                version,
                advert,
                preempt,
                ports,
                stats,
                metrics,
                ingress,
                https,
                timings,
                counts,
                etcd: (em, hb, el),
                k8s,
            },
        )
}

fn shape_yaml(s: &Shape) -> String {
    let mut hosts = Vec::new();
    let mut lb_names = Vec::new();
    for i in 0..s.cps {
        let mut roles = vec!["control-plane"];
        if s.cp_workers {
            roles.push("worker");
        }
        if s.colocated && i < s.lbs {
            roles.push("loadbalancer");
            lb_names.push(format!("master{i}"));
        }
        hosts.push(format!(
            "    - {{ name: master{i}, address: 10.1.1.{}, roles: [{}] }}",
            101 + i,
            roles.join(", ")
        ));
    }
    if !s.colocated {
        for i in 0..s.lbs {
            hosts.push(format!(
                "    - {{ name: lb{i}, address: 10.1.1.{}, roles: [loadbalancer] }}",
                11 + i
            ));
            lb_names.push(format!("lb{i}"));
        }
    }
    for i in 0..s.workers {
        hosts.push(format!(
            "    - {{ name: worker{i}, address: 10.1.1.{}, roles: [worker] }}",
            201 + i
        ));
    }
    let opt = |k: &str, p: Option<u16>| p.map(|p| format!("{k}: {p}")).unwrap_or_default();
    let prios = match &s.priorities {
        Some(p) => format!(
            "priorities: {{ {} }}",
            lb_names
                .iter()
                .zip(p.iter().cycle())
                .map(|(n, p)| format!("{n}: {p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    let [api, track, stats, metrics, http, https, api_server, client] = s.ports;
    let ingress = if s.ingress {
        format!(
            "    ingress: {{ {} }}\n",
            [opt("httpPort", http), opt("httpsPort", https)]
                .iter()
                .filter(|x| !x.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: hakube.io/v1alpha1
kind: Cluster
metadata:
  name: gen
spec:
  hosts:
{hosts}
  networks:
    management: 10.1.1.0/24
  loadBalancer:
    vip: 10.1.1.100
    {api}
    vrrp:
      routerId: {rid}
      version: {ver}
      advertInterval: {adv}
      preempt: {pre}
      {track}
      {prios}
    healthCheck:
      type: {kind}
      interval: {t0}
      timeout: {t1}
      connectTimeout: {t2}
      fall: {fall}
      rise: {rise}
    stats:
      enabled: {se}
      {sp}
    metrics:
      enabled: {me}
      {mp}
{ingress}  etcd:
    management: {em}
    heartbeatInterval: {hb}
    electionTimeout: {el}
    {client}
  kubernetes:
    version: {k8s}
    {aport}
",
        hosts = hosts.join("\n"),
        api = opt("apiPort", api),
        rid = s.router_id,
        ver = s.version,
        adv = s.advert,
        pre = s.preempt,
        track = opt("trackPort", track),
        kind = if s.https { "https" } else { "tcp" },
        t0 = s.timings[0],
        t1 = s.timings[1],
        t2 = s.timings[2],
        fall = s.counts[0],
        rise = s.counts[1],
        se = s.stats,
        sp = opt("port", stats),
        me = s.metrics,
        mp = opt("port", metrics),
        em = s.etcd.0,
        hb = s.etcd.1,
        el = s.etcd.2,
        client = opt("clientPort", client),
        k8s = s.k8s,
        aport = opt("apiServerPort", api_server),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 50, failure_persistence: None, .. ProptestConfig::default() })]

    /// Whatever validation accepts, haproxy, keepalived and promtool accept as rendered.
    #[test]
    fn every_accepted_shape_passes_render_check(shape in shapes()) {
        let src = shape_yaml(&shape);
        let l = spec::load_str(&src, "cluster.yaml", Path::new("/nonexistent"));
        let Some(c) = l.cluster else {
            prop_assert!(l.diagnostics.has_errors());
            return Ok(());
        };
        let files = render::render(&c, &Secrets { stats_password: PASSWORD.into() })
            .map_err(|e| TestCaseError::fail(format!("accepted but does not render: {e:#}\n{src}")))?;
        if !is_root() {
            return Ok(());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        render::write_tree(&files, dir.path()).expect("write");
        let results = check::check_tree(&files, dir.path());
        let lbs = c.load_balancers().count();
        let ran = |tool: &str| results.iter().filter(|r| r.tool == tool).count();
        prop_assert_eq!(ran("haproxy -c"), lbs);
        prop_assert_eq!(ran("keepalived --config-test"), lbs);
        for r in &results {
            prop_assert!(r.ok, "accepted, but {} fails on {} {}:\n{}\n--- spec:\n{}", r.tool, r.host, r.file, r.output, src);
        }
    }
}

#[test]
fn an_interface_found_on_the_host_is_checked_too() {
    // apply fills a missing interface from the host's facts, after validation.
    let mut c = spec::load_str(SEED, "cluster.yaml", Path::new("/nonexistent"))
        .cluster
        .expect("seed");
    c.hosts[0].interface = Some("eth0#x".into());
    let e = render::render(
        &c,
        &Secrets {
            stats_password: PASSWORD.into(),
        },
    )
    .expect_err("a '#' in the interface must not be rendered");
    let e = format!("{e:#}");
    assert!(
        e.contains("host lb1: interface \"eth0#x\"") && e.contains("comment"),
        "{e}"
    );
}

#[test]
fn audit_logs_to_stdout_mount_nothing() {
    let src = SEED.replace(
        "audit-log-path: /var/log/kubernetes/audit/audit.log",
        "audit-log-path: \"-\"",
    );
    assert_ne!(src, SEED);
    let c = spec::load_str(&src, "cluster.yaml", Path::new("/nonexistent"))
        .cluster
        .expect("- is standard output");
    let files = render::render(
        &c,
        &Secrets {
            stats_password: PASSWORD.into(),
        },
    )
    .expect("render");
    let vols = kubeadm_field(&files, |d| d["apiServer"].get("extraVolumes").cloned());
    assert!(!vols.is_empty());
    for v in vols {
        let names: Vec<&str> = v
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|x| x["name"].as_str())
            .collect();
        assert_eq!(names, ["audit-policy"], "only the policy is mounted");
    }
}
