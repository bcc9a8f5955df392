//! What a drill concludes: the outcome, the report, and the verdict, a pure function of what
//! the run observed.

use super::fault::{Action, Kind};
use super::metrics::{Metrics, Sample};
use super::scenario::Scenario;
use super::watch::{Change, Leader, Rating};
use crate::observe::vip::Holders;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Recovered, nothing lost.
    Passed,
    /// Not applicable to this cluster.
    Skipped,
    /// Not started: unsafe, unhealthy, or (on real hosts) no --yes. Nothing was touched.
    Refused,
    /// Ran, but the cluster did not recover in time, writes were lost, or the restore failed.
    Failed,
    /// Stopped by Ctrl-C (what was broken was restored).
    Interrupted,
    /// The drill itself could not run.
    Error,
}

/// The fate of the probe's writes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteCheck {
    /// `etcd` (read straight from etcd), `api` (listed through the VIP) or `none`.
    pub method: String,
    pub acknowledged: usize,
    pub verified: usize,
    /// Acknowledged writes that are missing or hold another value.
    pub lost: Vec<String>,
    /// Writes the client saw fail (or time out) that were stored anyway.
    pub failed_but_stored: usize,
    pub failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One scenario's result. Times are in ms relative to the injection.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub cluster: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub via: Kind,
    pub target: Option<String>,
    pub chosen_as: Option<String>,
    /// The API server that served the probe's kept-alive connection before the fault (the
    /// address its certificate names).
    pub kept_alive_on: Option<String>,
    pub faults: Vec<Action>,
    pub hold_ms: u64,
    /// Wall-clock time of the injection (UTC).
    pub injected_at: Option<String>,
    pub injected_after_ms: Option<f64>,
    /// When the cluster reacted: the VIP moved, etcd elected a leader, or HAProxy marked an API
    /// server DOWN (the earliest).
    pub detected_after_ms: Option<f64>,
    pub detected_by: Option<String>,
    pub restored_after_ms: Option<f64>,
    /// `status` healthy again (and the VIP back on its first holder).
    pub recovered_after_ms: Option<f64>,
    pub vip_moved_after_ms: Option<f64>,
    pub initial_vip: Option<Holders>,
    pub initial_leader: Option<Leader>,
    pub metrics: Option<Metrics>,
    pub changes: Vec<Change>,
    pub writes: Option<WriteCheck>,
    pub probe_start_ms: f64,
    pub probe_end_ms: f64,
    pub files: Vec<String>,
    /// Expected alerts, read from Prometheus during the drill (with monitoring).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<super::alerts::AlertTiming>,
    /// For a soak: what moved although nothing was broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disturbances: Option<Disturbances>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// What a soak must not see: the HA layers reacting although nothing was broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disturbances {
    /// The set of LBs holding the VIP changed (an LB that could not be asked is no change).
    pub vip_moves: usize,
    /// etcd's leader changed or went missing (a member that could not be asked is no change).
    pub leader_changes: usize,
    /// HAProxy changed its rating of an API server (a stats page that did not answer is none).
    pub backend_changes: usize,
}

impl Disturbances {
    pub fn count(changes: &[Change]) -> Disturbances {
        use super::watch::Event;
        let mut d = Disturbances::default();
        for c in changes {
            match &c.event {
                Event::Vip { from, to } if from.names() != to.names() => d.vip_moves += 1,
                Event::Leader { from, to }
                    if *from != Leader::Unknown && *to != Leader::Unknown =>
                {
                    d.leader_changes += 1
                }
                Event::Backend {
                    from: Rating::State(_),
                    to: Rating::State(_),
                    ..
                } => d.backend_changes += 1,
                _ => {}
            }
        }
        d
    }

    pub fn total(&self) -> usize {
        self.vip_moves + self.leader_changes + self.backend_changes
    }
}

impl std::fmt::Display for Disturbances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} VIP move(s), {} etcd leader change(s), {} HAProxy backend change(s)",
            self.vip_moves, self.leader_changes, self.backend_changes
        )
    }
}

impl ScenarioReport {
    pub(super) fn new(sc: Scenario, cluster: &str, via: Kind) -> ScenarioReport {
        ScenarioReport {
            scenario: sc,
            cluster: cluster.to_string(),
            outcome: Outcome::Error,
            message: None,
            warnings: vec![],
            via,
            target: None,
            chosen_as: None,
            kept_alive_on: None,
            faults: vec![],
            hold_ms: 0,
            injected_at: None,
            injected_after_ms: None,
            detected_after_ms: None,
            detected_by: None,
            restored_after_ms: None,
            recovered_after_ms: None,
            vip_moved_after_ms: None,
            initial_vip: None,
            initial_leader: None,
            metrics: None,
            changes: vec![],
            writes: None,
            probe_start_ms: 0.0,
            probe_end_ms: 0.0,
            files: vec![],
            alerts: vec![],
            disturbances: None,
            samples: vec![],
        }
    }

    pub(super) fn end(mut self, o: Outcome, msg: impl Into<String>) -> ScenarioReport {
        self.outcome = o;
        self.message = Some(msg.into());
        self
    }

    /// What was broken, in words.
    pub fn fault_text(&self) -> String {
        super::describe(&self.faults)
    }

    pub fn lost_writes(&self) -> usize {
        self.writes.as_ref().map(|w| w.lost.len()).unwrap_or(0)
    }
}

/// What the run observed once the probe stopped: the inputs of the verdict.
pub struct Ending<'a> {
    pub scenario: Scenario,
    pub inject_failure: Option<String>,
    pub restore_failure: Option<String>,
    pub recovered: bool,
    pub recovery_timeout: Duration,
    /// Why the cluster was not healthy at the last look (when it did not recover).
    pub last_status: String,
    pub writes: Option<&'a WriteCheck>,
    pub failed_requests: usize,
    pub requests: usize,
    pub interrupted: bool,
    /// A soak under load: any disturbance fails it.
    pub must_be_quiet: Option<Disturbances>,
}

/// Passed when the cluster recovered and every acknowledged write is there (and, for a soak,
/// no request failed); otherwise failed with every reason; interrupted wins over both.
pub fn verdict(e: &Ending) -> (Outcome, Option<String>) {
    let mut problems: Vec<String> = Vec::new();
    problems.extend(e.inject_failure.clone());
    problems.extend(e.restore_failure.clone());
    if !e.recovered {
        problems.push(format!(
            "not recovered within {} s of the restore: {}",
            e.recovery_timeout.as_secs(),
            e.last_status
        ));
    }
    if let Some(w) = e.writes {
        if !w.lost.is_empty() {
            problems.push(format!(
                "{} acknowledged write(s) lost: {}",
                w.lost.len(),
                w.lost
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(err) = &w.error {
            problems.push(format!("the writes could not be checked: {err}"));
        }
    }
    if e.scenario.is_soak() && e.failed_requests > 0 {
        problems.push(format!(
            "{} of {} requests failed with no fault injected",
            e.failed_requests, e.requests
        ));
    }
    if let Some(d) = e.must_be_quiet.filter(|d| d.total() > 0) {
        problems.push(format!("under load with no fault injected: {d}"));
    }
    if e.interrupted {
        let msg = if problems.is_empty() {
            "interrupted; the fault was restored and the cluster recovered".to_string()
        } else {
            format!(
                "interrupted; the fault was restored; {}",
                problems.join("; ")
            )
        };
        return (Outcome::Interrupted, Some(msg));
    }
    if problems.is_empty() {
        (Outcome::Passed, None)
    } else {
        (Outcome::Failed, Some(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(writes: Option<&WriteCheck>) -> Ending<'_> {
        Ending {
            scenario: Scenario::EtcdMemberDown,
            inject_failure: None,
            restore_failure: None,
            recovered: true,
            recovery_timeout: Duration::from_secs(60),
            last_status: String::new(),
            writes,
            failed_requests: 3,
            requests: 100,
            interrupted: false,
            must_be_quiet: None,
        }
    }

    #[test]
    fn a_recovered_drill_with_every_write_passes_despite_failed_requests() {
        let w = WriteCheck::default();
        assert_eq!(verdict(&ending(Some(&w))), (Outcome::Passed, None));
    }

    #[test]
    fn every_reason_is_named() {
        let w = WriteCheck {
            lost: vec!["k1".into(), "k2".into()],
            ..Default::default()
        };
        let e = Ending {
            recovered: false,
            last_status: "etcd degraded".into(),
            restore_failure: Some("start etcd on m2: exit 1".into()),
            ..ending(Some(&w))
        };
        let (o, m) = verdict(&e);
        assert_eq!(o, Outcome::Failed);
        let m = m.unwrap_or_default();
        for needle in [
            "start etcd on m2",
            "not recovered within 60 s of the restore: etcd degraded",
            "2 acknowledged write(s) lost: k1, k2",
        ] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
    }

    #[test]
    fn a_soak_fails_on_any_failed_request() {
        let w = WriteCheck::default();
        let e = Ending {
            scenario: Scenario::Soak,
            ..ending(Some(&w))
        };
        let (o, m) = verdict(&e);
        assert_eq!(o, Outcome::Failed);
        assert!(m.unwrap_or_default().contains("3 of 100 requests failed"));
        let quiet = Ending {
            failed_requests: 0,
            ..e
        };
        assert_eq!(verdict(&quiet).0, Outcome::Passed);
    }

    #[test]
    fn a_soak_under_load_fails_on_any_disturbance_but_not_on_unknowns() {
        use crate::drill::watch::Event;
        use crate::observe::haproxy::ServerState;
        let at = |event| Change { t_ms: 1.0, event };
        let m = |n: &str| Leader::Member(n.into());
        let changes = vec![
            at(Event::Leader {
                from: m("m1"),
                to: Leader::Unknown,
            }),
            at(Event::Leader {
                from: Leader::Unknown,
                to: m("m1"),
            }),
            at(Event::Backend {
                server: "m1".into(),
                lb: "lb1".into(),
                from: Rating::State(ServerState::Up),
                to: Rating::NoAnswer,
            }),
        ];
        assert_eq!(Disturbances::count(&changes), Disturbances::default());
        let moved = [
            changes.clone(),
            vec![
                at(Event::Leader {
                    from: m("m1"),
                    to: m("m2"),
                }),
                at(Event::Backend {
                    server: "m1".into(),
                    lb: "lb1".into(),
                    from: Rating::State(ServerState::Up),
                    to: Rating::State(ServerState::Down),
                }),
            ],
        ]
        .concat();
        let d = Disturbances::count(&moved);
        assert_eq!(
            (d.leader_changes, d.backend_changes, d.vip_moves),
            (1, 1, 0)
        );
        let w = WriteCheck::default();
        let e = Ending {
            scenario: Scenario::Soak,
            failed_requests: 0,
            must_be_quiet: Some(d),
            ..ending(Some(&w))
        };
        let (o, msg) = verdict(&e);
        assert_eq!(o, Outcome::Failed);
        assert!(
            msg.unwrap_or_default()
                .contains("1 etcd leader change(s), 1 HAProxy backend change(s)")
        );
    }

    #[test]
    fn an_interrupted_drill_says_so_and_keeps_its_problems() {
        let w = WriteCheck {
            error: Some("etcd unreachable".into()),
            ..Default::default()
        };
        let e = Ending {
            interrupted: true,
            ..ending(Some(&w))
        };
        let (o, m) = verdict(&e);
        assert_eq!(o, Outcome::Interrupted);
        assert!(
            m.unwrap_or_default()
                .contains("the writes could not be checked")
        );
    }
}
