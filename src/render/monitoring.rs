//! Monitoring: Prometheus alert rules (plain and as a PrometheusRule), scrape configs for
//! HAProxy's built-in exporter, etcd and `hakube exporter`; for prometheus-operator the etcd
//! ServiceMonitor and ScrapeConfigs for HAProxy and the exporter; the exporter's systemd unit.

use super::{CLUSTER_DIR, HEADER, RenderedFile};
use crate::observe::API_BACKEND;
use crate::spec::{Cluster, EtcdManagement};
use serde_json::{Value, json};
use std::time::Duration;

pub const DIR: &str = "/monitoring";
pub const RULES_FILE: &str = "hakube-alerts.rules.yml";

fn rule(
    alert: &str,
    expr: &str,
    for_: &str,
    severity: &str,
    summary: &str,
    description: &str,
) -> Value {
    json!({
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    })
}

/// A Prometheus duration of `n` scrape intervals: the alerts a drill checks wait a number of
/// scrapes, so a 1 s lab interval makes them fire within a drill's hold and 15 s keeps the
/// production values (5m, 1m, 30s).
fn scrapes(n: u32, every: Duration) -> (String, String) {
    let s = every.as_secs().max(1) * u64::from(n);
    let unit = |v: u64, one: &str| format!("{v} {one}{}", if v == 1 { "" } else { "s" });
    if s % 60 == 0 {
        (format!("{}m", s / 60), unit(s / 60, "minute"))
    } else {
        (format!("{s}s"), unit(s, "second"))
    }
}

/// The alert rule groups for rules evaluated every `every`. `hakube_*` metrics come from
/// `hakube exporter` (or once from `hakube status --prometheus`).
pub fn rule_groups(every: Duration) -> Value {
    let (member_down, member_down_words) = scrapes(20, every);
    let (lb_down, _) = scrapes(4, every);
    let (quick, _) = scrapes(2, every);
    let (moved_window, _) = scrapes(20, every);
    json!([
        {"name": "etcd", "rules": [
            rule("EtcdMemberDown", "up{job=\"etcd\"} == 0", &member_down, "critical",
                "etcd member is down",
                &format!("etcd member {{{{ $labels.instance }}}} is down for more than {member_down_words}.")),
            rule("EtcdHighCommitDurations",
                "histogram_quantile(0.99, sum(rate(etcd_disk_backend_commit_duration_seconds_bucket{job=\"etcd\"}[5m])) by (instance, le)) > 0.25",
                "10m", "warning", "etcd high commit durations",
                "etcd commit durations are high on {{ $labels.instance }} (p99 {{ $value | printf \"%.2f\" }}s); check disk latency."),
            rule("EtcdNoLeader", "etcd_server_has_leader{job=\"etcd\"} == 0", "1m", "critical",
                "etcd member has no leader",
                "etcd member {{ $labels.instance }} has had no leader for 1 minute: it cannot serve writes."),
            rule("EtcdInsufficientMembers",
                "sum by (job) (up{job=\"etcd\"} == bool 1) < ((count by (job) (up{job=\"etcd\"}) + 1) / 2)",
                "1m", "critical", "etcd has lost quorum",
                "Fewer than a majority of etcd members are up: the cluster cannot accept writes."),
            rule("EtcdHighNumberOfLeaderChanges",
                "increase(etcd_server_leader_changes_seen_total{job=\"etcd\"}[15m]) >= 4",
                "5m", "warning", "etcd leader changes too often",
                "etcd member {{ $labels.instance }} saw {{ $value }} leader changes in 15 minutes; check the network and disk between members."),
            rule("EtcdDatabaseQuotaLowSpace",
                "(last_over_time(etcd_mvcc_db_total_size_in_bytes{job=\"etcd\"}[5m]) / last_over_time(etcd_server_quota_backend_bytes{job=\"etcd\"}[5m])) * 100 > 80",
                "10m", "warning", "etcd database is near its quota",
                "etcd member {{ $labels.instance }} uses {{ $value }}% of its quota; at 100% it raises NOSPACE and refuses writes. Compact and defragment."),
        ]},
        {"name": "haproxy", "rules": [
            rule("HAProxyDown", "up{job=\"haproxy\"} == 0", &lb_down, "critical",
                "HAProxy is down", "HAProxy on {{ $labels.instance }} does not answer its metrics endpoint."),
            rule("HAProxyAPIServerDown",
                &format!("haproxy_server_status{{proxy=\"{API_BACKEND}\",state=\"DOWN\"}} == 1"),
                &lb_down, "warning", "an API server is out of rotation",
                "HAProxy on {{ $labels.instance }} marks API server {{ $labels.server }} DOWN (GET /readyz fails)."),
            rule("HAProxyAPIBackendDown",
                &format!("haproxy_backend_active_servers{{proxy=\"{API_BACKEND}\"}} == 0"),
                &quick, "critical", "no API server is in rotation",
                "HAProxy on {{ $labels.instance }} has no ready API server: the API is down through the VIP."),
        ]},
        {"name": "hakube", "rules": [
            rule("HakubeVIPSplitBrain", "hakube_vip_holders > 1", "10s", "critical",
                "the API VIP is on more than one load balancer",
                "{{ $value }} load balancers hold the VIP of cluster {{ $labels.cluster }} (split brain); check VRRP traffic between them."),
            // Holders count only LBs that answered over SSH: with some unknown, "0 holders" is
            // missing only when the VIP does not answer either.
            rule("HakubeVIPMissing",
                "hakube_vip_holders == 0 and on (cluster) (hakube_vip_holders_unknown == 0 or on (cluster) hakube_vip_answering == 0)",
                &quick, "critical",
                "no load balancer holds the API VIP",
                "No load balancer holds the VIP of cluster {{ $labels.cluster }}; check keepalived on the load balancers."),
            rule("HakubeVIPHolderUnknown", "hakube_vip_holders_unknown > 0", "5m", "warning",
                "load balancers cannot be asked whether they hold the VIP",
                "{{ $value }} load balancers of cluster {{ $labels.cluster }} did not answer over SSH; VIP split brain or loss there goes unseen. Check SSH from the exporter's host."),
            rule("HakubeVIPMoved", &format!("changes(hakube_vip_holder[{moved_window}]) > 0"), "0s", "warning",
                "the API VIP moved",
                "The VIP of cluster {{ $labels.cluster }} moved to or from {{ $labels.lb }}; check why the previous holder failed."),
            rule("HakubeCertificateExpirySoon", "hakube_certificate_expiry_seconds < 30 * 86400", "1h", "warning",
                "a certificate expires within 30 days",
                "{{ $labels.certificate }} on {{ $labels.host }} expires in less than 30 days; run `kubeadm certs renew` or `hakube apply`."),
            rule("HakubeCertificateExpiryCritical", "hakube_certificate_expiry_seconds < 7 * 86400", "10m", "critical",
                "a certificate expires within 7 days",
                "{{ $labels.certificate }} on {{ $labels.host }} expires in less than 7 days."),
        ]},
    ])
}

/// Backups: no verified backup for `spec.backup.maxAge` (25 h by default), from any source, or
/// no backup metric at all for as long. `hakube_backup_*` come from `hakube status --prometheus`.
pub fn backup_rules(max_age: std::time::Duration) -> Value {
    let s = max_age.as_secs();
    let h = if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else {
        humantime::format_duration(max_age).to_string()
    };
    json!({"name": "hakube-backup", "rules": [
        rule("HakubeBackupTooOld",
            &format!("time() - max by (cluster) (hakube_backup_last_verified_timestamp_seconds) > {s}"),
            "10m", "warning", "no verified backup for too long",
            &format!("The newest verified backup of cluster {{{{ $labels.cluster }}}} is {{{{ $value | humanizeDuration }}}} old (more than {h}); run `hakube backup` and check the scheduled backups with `hakube doctor`.")),
        rule("HakubeBackupMissing",
            "absent(hakube_backup_last_verified_timestamp_seconds)",
            &format!("{s}s"), "warning", "no verified backup is known",
            &format!("No source has reported a verified backup for {h}: none was taken, or `hakube status --prometheus` is not collected; run `hakube backup`.")),
    ]})
}

fn yaml(v: &Value) -> anyhow::Result<String> {
    Ok(format!("# {HEADER}\n{}", serde_saphyr::to_string(v)?))
}

fn f(name: &str, content: String) -> RenderedFile {
    RenderedFile {
        host: CLUSTER_DIR.into(),
        path: format!("{DIR}/{name}"),
        mode: 0o644,
        content,
        secret: false,
        services: vec![],
        ..Default::default()
    }
}

/// Labels on the prometheus-operator objects: the spec's, for selector-based installs.
fn metadata(c: &Cluster, name: &str) -> Value {
    let mut m = json!({"name": name, "namespace": c.monitoring.namespace});
    if !c.monitoring.labels.is_empty() {
        m["labels"] = json!(c.monitoring.labels);
    }
    m
}

/// A prometheus-operator ScrapeConfig for targets outside Kubernetes; `jobName` keeps the
/// `job` label the rules match on.
fn scrape_config(c: &Cluster, job: &str, targets: &[String], every: &str) -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "ScrapeConfig",
        "metadata": metadata(c, &format!("{}-{job}", c.name)),
        "spec": {
            "jobName": job,
            "metricsPath": "/metrics",
            "scrapeInterval": every,
            "scrapeTimeout": every,
            "staticConfigs": [{"targets": targets, "labels": {"cluster": c.name}}],
        },
    })
}

fn interval(c: &Cluster) -> String {
    format!("{}s", c.monitoring.scrape_interval.as_secs().max(1))
}

/// The exporter's probes wait up to 2 s for SSH to a dead host and give up after 4 s
/// (`hakube exporter --timeout`): its scrapes get at least 5 s.
fn exporter_interval(c: &Cluster) -> String {
    format!("{}s", c.monitoring.scrape_interval.as_secs().max(5))
}

pub const EXPORTER_UNIT: &str = "hakube-exporter.service";
pub const DASHBOARD_FILE: &str = "grafana-dashboard.json";

/// The dashboard's panels: (title, unit, query, legend). Only metrics the lab's Prometheus
/// has (tests/monitoring.rs runs each query there).
pub const DASHBOARD_PANELS: &[(&str, &str, &str, &str)] = &[
    ("VIP holder", "none", "hakube_vip_holder", "{{lb}}"),
    (
        "VIP holders (confirmed / unknown)",
        "none",
        "label_replace(hakube_vip_holders, \"state\", \"confirmed\", \"\", \"\") or label_replace(hakube_vip_holders_unknown, \"state\", \"unknown\", \"\", \"\")",
        "{{state}}",
    ),
    (
        "API backends UP per HAProxy",
        "none",
        "haproxy_server_status{proxy=\"k8s-api\",state=\"UP\"}",
        "{{instance}} {{server}}",
    ),
    (
        "Layer health (0 ok, 1 degraded, 2 down, 3 unknown)",
        "none",
        "hakube_layer_health",
        "{{layer}}",
    ),
    (
        "etcd leader changes (1h)",
        "none",
        "increase(etcd_server_leader_changes_seen_total{job=\"etcd\"}[1h])",
        "{{instance}}",
    ),
    (
        "etcd leader",
        "none",
        "hakube_etcd_member_is_leader",
        "{{member}}",
    ),
    (
        "etcd DB size",
        "bytes",
        "etcd_mvcc_db_total_size_in_bytes{job=\"etcd\"}",
        "{{instance}}",
    ),
    (
        "Certificate expiry",
        "s",
        "hakube_certificate_expiry_seconds",
        "{{certificate}} {{host}}",
    ),
];

/// A Grafana dashboard for the HA layers, over a Prometheus data source chosen on import.
fn dashboard(c: &Cluster) -> Value {
    let panels: Vec<Value> = DASHBOARD_PANELS
        .iter()
        .enumerate()
        .map(|(i, (title, unit, expr, legend))| {
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{
                    "refId": "A",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "expr": expr,
                    "legendFormat": legend,
                }],
            })
        })
        .collect();
    json!({
        "title": format!("hakube HA layers: {}", c.name),
        "uid": format!("hakube-{}", c.name),
        "tags": ["hakube"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus",
        }]},
        "panels": panels,
    })
}

/// Where a binary of hakube is installed on the monitoring host.
const HAKUBE_BIN: &str = "/usr/local/bin/hakube";
/// Where the spec and its `.hakube` operator state live on the monitoring host.
const SPEC_ON_HOST: &str = "/etc/hakube/cluster.yaml";

pub fn render(c: &Cluster) -> anyhow::Result<Vec<RenderedFile>> {
    let mut groups = rule_groups(c.monitoring.scrape_interval);
    if let Some(g) = groups.as_array_mut() {
        g.push(backup_rules(c.backup.max_age));
    }
    let mut out = vec![f(RULES_FILE, yaml(&json!({"groups": groups}))?)];
    out.push(f(
        "prometheusrule.yaml",
        yaml(&json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata(c, &format!("{}-ha", c.name)),
            "spec": {"groups": groups},
        }))?,
    ));
    let port = |a: std::net::IpAddr, p: u16| format!("{}:{p}", super::bind_addr(a));
    let haproxy_targets: Vec<String> = if c.lb.metrics.enabled {
        c.load_balancers()
            .map(|h| port(h.address, c.lb.metrics.port))
            .collect()
    } else {
        vec![]
    };
    // etcd serves /metrics on its client port (TLS, client certificates); its plain metrics
    // port listens on loopback only.
    let etcd_targets: Vec<String> = c
        .control_planes()
        .map(|h| port(h.address, c.etcd.client_port))
        .collect();
    let exporter = vec![c.monitoring.exporter.to_string()];
    let certs = c.monitoring.etcd_cert_dir.trim_end_matches('/');
    let mut scrape = vec![json!({
        "job_name": "etcd",
        "scheme": "https",
        "tls_config": {
            "ca_file": format!("{certs}/ca.crt"),
            "cert_file": format!("{certs}/client.crt"),
            "key_file": format!("{certs}/client.key"),
        },
        "static_configs": [{"targets": etcd_targets, "labels": {"cluster": c.name}}],
    })];
    if !haproxy_targets.is_empty() {
        scrape.push(json!({
            "job_name": "haproxy",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": haproxy_targets, "labels": {"cluster": c.name}}],
        }));
    }
    scrape.push(json!({
        "job_name": "hakube",
        "scrape_interval": exporter_interval(c),
        "scrape_timeout": exporter_interval(c),
        "metrics_path": "/metrics",
        "static_configs": [{"targets": exporter, "labels": {"cluster": c.name}}],
    }));
    let every = interval(c);
    out.push(f(
        "prometheus.yml",
        yaml(&json!({
            "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
            "rule_files": [RULES_FILE],
            "scrape_configs": scrape,
        }))?,
    ));
    if !haproxy_targets.is_empty() {
        out.push(f(
            "scrapeconfig-haproxy.yaml",
            yaml(&scrape_config(c, "haproxy", &haproxy_targets, &every))?,
        ));
    }
    out.push(f(
        "scrapeconfig-hakube.yaml",
        yaml(&scrape_config(
            c,
            "hakube",
            &exporter,
            &exporter_interval(c),
        ))?,
    ));
    out.push(f(
        DASHBOARD_FILE,
        format!("{}\n", serde_json::to_string_pretty(&dashboard(c))?),
    ));
    out.push(f(
        EXPORTER_UNIT,
        format!(
            "# {HEADER}\n[Unit]\nDescription=hakube exporter: HA layer metrics of cluster {name} for Prometheus\n\
             After=network-online.target\nWants=network-online.target\n\n[Service]\n\
             ExecStart={HAKUBE_BIN} exporter --listen {listen} -f {SPEC_ON_HOST}\n\
             Restart=always\nRestartSec=2\nNoNewPrivileges=yes\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            name = c.name,
            listen = c.monitoring.exporter,
        ),
    ));
    if c.etcd.management == EtcdManagement::Hakube {
        // etcd runs outside Kubernetes: a selector-less Service and its endpoints give the
        // ServiceMonitor something to select.
        let addrs: Vec<String> = c.control_planes().map(|h| h.address.to_string()).collect();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "etcd", "namespace": "kube-system", "labels": {"component": "etcd"}},
            "spec": {"clusterIP": "None", "ports": [{"name": "http-metrics", "port": c.etcd.client_port, "targetPort": c.etcd.client_port}]},
        });
        let eps = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "etcd", "namespace": "kube-system",
                "labels": {"component": "etcd", "kubernetes.io/service-name": "etcd"}},
            "addressType": if c.lb.vip.is_ipv6() { "IPv6" } else { "IPv4" },
            "ports": [{"name": "http-metrics", "port": c.etcd.client_port}],
            "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
        });
        out.push(f(
            "etcd-endpoints.yaml",
            format!("{}---\n{}", yaml(&svc)?, serde_saphyr::to_string(&eps)?),
        ));
    }
    out.push(f(
        "servicemonitor-etcd.yaml",
        yaml(&json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": metadata(c, "etcd"),
            "spec": {
                // The endpoints above are an EndpointSlice; the default role reads core v1
                // Endpoints (deprecated since Kubernetes 1.33) and would find no targets.
                "serviceDiscoveryRole": "EndpointSlice",
                "namespaceSelector": {"matchNames": ["kube-system"]},
                "selector": {"matchLabels": {"component": "etcd"}},
                "endpoints": [{
                    "port": "http-metrics",
                    "interval": interval(c),
                    "scheme": "https",
                    "tlsConfig": {
                        "caFile": format!("{certs}/ca.crt"),
                        "certFile": format!("{certs}/client.crt"),
                        "keyFile": format!("{certs}/client.key"),
                        "insecureSkipVerify": false,
                    },
                }],
            },
        }))?,
    ));
    Ok(out)
}
