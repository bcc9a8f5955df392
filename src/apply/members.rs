//! etcd membership against the spec: which members to start, add, replace or promote, and when
//! to refuse. A pure function of the spec, the hosts' facts and the live member list, so that
//! every case is unit-tested without a cluster.
//!
//! A member is replaced (removed, added back as a learner with a clean data dir, started with
//! `initial-cluster-state=existing`, promoted once it caught up) when its host lost its data,
//! when its address changed in the spec, or when a new host takes the place of a member that is
//! not in the spec and does not answer. Nothing is changed while the cluster lacks quorum: apply
//! cannot rebuild lost data, a restore can.

use crate::etcd::Member;
use std::collections::BTreeSet;

/// What apply sees of one control plane.
#[derive(Debug, Clone)]
pub struct Seat {
    pub name: String,
    pub peer_url: String,
    /// etcd's service is active on the host.
    pub running: bool,
    /// The data dir holds a member directory.
    pub has_data: bool,
    /// The host answered over SSH (facts were gathered).
    pub reachable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A member with its data whose etcd is not running.
    Start { host: String },
    /// A member that is a learner (an interrupted replacement): promote it once it caught up.
    Promote { host: String, id: u64 },
    /// A host that is not a member yet.
    Add { host: String, peer_url: String },
    /// Remove `stale` (its data is gone, its address changed, or it left the spec and is down),
    /// then add `host` as a learner with a clean data dir.
    Replace {
        host: String,
        peer_url: String,
        stale: u64,
        stale_name: String,
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Fewer voting members answer than a quorum: no membership change can be made.
    QuorumLost {
        voters: usize,
        healthy: Vec<String>,
        down: Vec<String>,
    },
    /// A replacement would leave fewer healthy voters than the new quorum.
    WouldLoseQuorum { host: String, why: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::QuorumLost {
                voters,
                healthy,
                down,
            } => write!(
                f,
                "etcd has lost quorum: {} of {voters} voting members answer (needs {}); down: {}. \
                 apply cannot rebuild lost data.\n  help: if the members are only stopped or cut \
                 off, start them or heal the network and run apply again; if their data is gone, \
                 restore the last backup: `hakube backup list -f SPEC`, then \
                 `hakube restore BACKUP -f SPEC --yes`",
                healthy.len(),
                quorum(*voters),
                if down.is_empty() {
                    "none".to_string()
                } else {
                    down.join(", ")
                }
            ),
            Refusal::WouldLoseQuorum { host, why } => write!(
                f,
                "{host}: replacing its etcd member would leave too few healthy members: {why}\n  \
                 help: bring the other members back first (`hakube doctor` names them)"
            ),
        }
    }
}

/// Votes needed among `n` voting members.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The steps that bring membership to the spec, in order, one change at a time.
/// `healthy` holds the ids of members that serve a linearizable read right now.
pub fn plan(
    seats: &[Seat],
    members: &[Member],
    healthy: &BTreeSet<u64>,
) -> Result<Vec<Step>, Refusal> {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let healthy_voters: Vec<&Member> = voters
        .iter()
        .copied()
        .filter(|m| healthy.contains(&m.id))
        .collect();
    if healthy_voters.len() < quorum(voters.len()) {
        return Err(Refusal::QuorumLost {
            voters: voters.len(),
            healthy: healthy_voters.iter().map(|m| label(m)).collect(),
            down: voters
                .iter()
                .filter(|m| !healthy.contains(&m.id))
                .map(|m| label(m))
                .collect(),
        });
    }
    let in_spec = |m: &Member| {
        seats
            .iter()
            .any(|s| s.name == m.name || m.peer_urls.contains(&s.peer_url))
    };
    // Members that left the spec and do not answer: each may give its seat to a new host.
    let mut orphans: Vec<&Member> = members
        .iter()
        .filter(|m| !in_spec(m) && !healthy.contains(&m.id))
        .collect();
    // Voting members and healthy ones as the steps change them.
    let mut n_voters = voters.len();
    let mut n_healthy = healthy_voters.len();
    let mut steps = vec![];
    for s in seats {
        let found = members
            .iter()
            .find(|m| m.name == s.name)
            .or_else(|| members.iter().find(|m| m.peer_urls.contains(&s.peer_url)));
        let stale = match found {
            Some(m) if m.peer_urls != [s.peer_url.clone()] && !m.peer_urls.is_empty() => Some((
                m,
                format!(
                    "its address changed: the member has {}, the spec says {}",
                    m.peer_urls.join(","),
                    s.peer_url
                ),
            )),
            Some(m) if s.reachable && !s.has_data && !s.running => Some((
                m,
                "its data dir is empty (data lost, or the host was reinstalled)".to_string(),
            )),
            Some(m) if m.is_learner => {
                steps.push(Step::Promote {
                    host: s.name.clone(),
                    id: m.id,
                });
                None
            }
            Some(_) if s.reachable && !s.running => {
                steps.push(Step::Start {
                    host: s.name.clone(),
                });
                None
            }
            Some(_) => None,
            None => match orphans.pop() {
                Some(o) => Some((
                    o,
                    format!(
                        "{} is not in the spec and does not answer; {} takes its place",
                        label(o),
                        s.name
                    ),
                )),
                None => {
                    steps.push(Step::Add {
                        host: s.name.clone(),
                        peer_url: s.peer_url.clone(),
                    });
                    n_voters += 1;
                    None
                }
            },
        };
        let Some((m, why)) = stale else { continue };
        if !s.reachable {
            // Nothing can be started there; leave the member as it is.
            continue;
        }
        // The replacement removes a voter; the rest must still make the new quorum.
        let was_healthy = healthy.contains(&m.id);
        let after_healthy = n_healthy - usize::from(was_healthy && !m.is_learner);
        let after_voters = n_voters - usize::from(!m.is_learner);
        if after_healthy < quorum(after_voters.max(1)) {
            return Err(Refusal::WouldLoseQuorum {
                host: s.name.clone(),
                why: format!(
                    "{after_healthy} healthy of {after_voters} voting members once {} is removed",
                    label(m)
                ),
            });
        }
        n_healthy = after_healthy;
        n_voters = after_voters;
        steps.push(Step::Replace {
            host: s.name.clone(),
            peer_url: s.peer_url.clone(),
            stale: m.id,
            stale_name: m.name.clone(),
            why,
        });
        // A replacement ends with a promoted, healthy voter.
        n_voters += 1;
        n_healthy += 1;
    }
    Ok(steps)
}

fn label(m: &Member) -> String {
    if m.name.is_empty() {
        format!("{:x} (not started)", m.id)
    } else {
        format!("{} ({:x})", m.name, m.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(n: u8) -> Seat {
        Seat {
            name: format!("master{n}"),
            peer_url: format!("https://10.0.0.{n}:2380"),
            running: true,
            has_data: true,
            reachable: true,
        }
    }

    fn member(n: u8) -> Member {
        Member {
            id: u64::from(n) * 0x1111,
            name: format!("master{n}"),
            peer_urls: vec![format!("https://10.0.0.{n}:2380")],
            client_urls: vec![format!("https://10.0.0.{n}:2379")],
            is_learner: false,
        }
    }

    fn ids(ms: &[Member]) -> BTreeSet<u64> {
        ms.iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_converged_cluster_needs_nothing() {
        let ms = vec![member(1), member(2), member(3)];
        let seats = vec![seat(1), seat(2), seat(3)];
        assert_eq!(plan(&seats, &ms, &ids(&ms)), Ok(vec![]));
    }

    #[test]
    fn a_stopped_member_with_data_is_started() {
        let ms = vec![member(1), member(2), member(3)];
        let mut seats = vec![seat(1), seat(2), seat(3)];
        seats[1].running = false;
        let healthy = ids(&[member(1), member(3)]);
        assert_eq!(
            plan(&seats, &ms, &healthy),
            Ok(vec![Step::Start {
                host: "master2".into()
            }])
        );
    }

    #[test]
    fn a_member_that_lost_its_data_is_replaced() {
        let ms = vec![member(1), member(2), member(3)];
        let mut seats = vec![seat(1), seat(2), seat(3)];
        seats[1].running = false;
        seats[1].has_data = false;
        let healthy = ids(&[member(1), member(3)]);
        let steps = plan(&seats, &ms, &healthy).unwrap();
        assert!(
            matches!(&steps[..], [Step::Replace { host, stale, why, .. }]
                if host == "master2" && *stale == member(2).id && why.contains("data dir is empty")),
            "{steps:?}"
        );
    }

    #[test]
    fn a_moved_member_is_replaced_even_while_its_old_address_is_gone() {
        let ms = vec![member(1), member(2), member(3)];
        let mut seats = vec![seat(1), seat(2), seat(3)];
        seats[1].peer_url = "https://10.0.0.42:2380".into();
        seats[1].has_data = false;
        seats[1].running = false;
        let healthy = ids(&[member(1), member(3)]);
        let steps = plan(&seats, &ms, &healthy).unwrap();
        assert!(
            matches!(&steps[..], [Step::Replace { host, peer_url, why, .. }]
                if host == "master2" && peer_url.ends_with(".42:2380") && why.contains("address changed")),
            "{steps:?}"
        );
    }

    #[test]
    fn a_new_host_takes_the_seat_of_a_dead_member_that_left_the_spec() {
        let ms = vec![member(1), member(2), member(3)];
        let seats = vec![seat(1), seat(3), seat(4)];
        let healthy = ids(&[member(1), member(3)]);
        let steps = plan(&seats, &ms, &healthy).unwrap();
        assert!(
            matches!(&steps[..], [Step::Replace { host, stale, .. }]
                if host == "master4" && *stale == member(2).id),
            "{steps:?}"
        );
    }

    #[test]
    fn a_live_member_that_left_the_spec_is_left_alone_and_the_new_host_added() {
        let ms = vec![member(1), member(2), member(3)];
        let seats = vec![seat(1), seat(3), seat(4)];
        let steps = plan(&seats, &ms, &ids(&ms)).unwrap();
        assert_eq!(
            steps,
            vec![Step::Add {
                host: "master4".into(),
                peer_url: "https://10.0.0.4:2380".into()
            }]
        );
    }

    #[test]
    fn a_learner_is_promoted() {
        let mut ms = vec![member(1), member(2), member(3)];
        ms[2].is_learner = true;
        let seats = vec![seat(1), seat(2), seat(3)];
        assert_eq!(
            plan(&seats, &ms, &ids(&ms)),
            Ok(vec![Step::Promote {
                host: "master3".into(),
                id: member(3).id
            }])
        );
    }

    #[test]
    fn quorum_lost_is_refused_with_the_restore_command() {
        let ms = vec![member(1), member(2), member(3)];
        let mut seats = vec![seat(1), seat(2), seat(3)];
        for s in &mut seats[1..] {
            s.has_data = false;
            s.running = false;
        }
        let err = plan(&seats, &ms, &ids(&[member(1)])).unwrap_err();
        assert!(
            matches!(err, Refusal::QuorumLost { voters: 3, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("1 of 3"), "{text}");
        assert!(
            text.contains("hakube restore BACKUP -f SPEC --yes"),
            "{text}"
        );
    }

    #[test]
    fn a_replacement_that_would_break_quorum_is_refused() {
        // master3 is down and cut off; moving master2, which is healthy, would leave 1 of 2.
        let ms = vec![member(1), member(2), member(3)];
        let mut seats = vec![seat(1), seat(2), seat(3)];
        seats[1].peer_url = "https://10.0.0.22:2380".into();
        seats[2].reachable = false;
        let healthy = ids(&[member(1), member(2)]);
        let err = plan(&seats, &ms, &healthy).unwrap_err();
        assert!(
            matches!(&err, Refusal::WouldLoseQuorum { host, .. } if host == "master2"),
            "{err:?}"
        );
        assert!(err.to_string().contains("1 healthy of 2"), "{err}");
    }

    #[test]
    fn an_unreachable_host_is_not_touched() {
        let ms = vec![member(1), member(2), member(3)];
        let mut seats = vec![seat(1), seat(2), seat(3)];
        seats[1] = Seat {
            reachable: false,
            running: false,
            has_data: false,
            ..seat(2)
        };
        let healthy = ids(&[member(1), member(3)]);
        assert_eq!(plan(&seats, &ms, &healthy), Ok(vec![]));
    }
}
