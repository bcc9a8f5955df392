//! What each etcd member says about itself (the Maintenance/Status call), and which leader
//! the members agree on.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One member's own status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The leader this member follows; 0 while it knows none.
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub db_size: u64,
    pub version: String,
}

impl MemberStatus {
    pub fn from_response(r: &etcd_client::StatusResponse) -> MemberStatus {
        let (member_id, cluster_id, raft_term) = r
            .header()
            .map(|h| (h.member_id(), h.cluster_id(), h.raft_term()))
            .unwrap_or_default();
        MemberStatus {
            member_id,
            cluster_id,
            leader: r.leader(),
            raft_term,
            raft_index: r.raft_index(),
            db_size: u64::try_from(r.db_size()).unwrap_or(0),
            version: r.version().to_string(),
        }
    }

    /// This member leads.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }
}

/// `etcdctl endpoint status -w json`: the same Status answer, as etcdctl prints it (for
/// tests on captured output, and for reading what an operator pasted).
pub fn parse_etcdctl_status(json: &str) -> anyhow::Result<Vec<(String, MemberStatus)>> {
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(rename = "Endpoint")]
        endpoint: String,
        #[serde(rename = "Status")]
        status: Status,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        header: Header,
        #[serde(default)]
        version: String,
        #[serde(default)]
        db_size: u64,
        #[serde(default)]
        leader: u64,
        #[serde(default)]
        raft_index: u64,
    }
    #[derive(Deserialize)]
    struct Header {
        #[serde(default)]
        cluster_id: u64,
        #[serde(default)]
        member_id: u64,
        #[serde(default)]
        raft_term: u64,
    }
    let eps: Vec<Endpoint> =
        serde_json::from_str(json).context("reading `etcdctl endpoint status -w json`")?;
    Ok(eps
        .into_iter()
        .map(|e| {
            let s = e.status;
            (
                e.endpoint,
                MemberStatus {
                    member_id: s.header.member_id,
                    cluster_id: s.header.cluster_id,
                    leader: s.leader,
                    raft_term: s.header.raft_term,
                    raft_index: s.raft_index,
                    db_size: s.db_size,
                    version: s.version,
                },
            )
        })
        .collect())
}

/// One member's status, through its own endpoint only.
pub async fn status(
    endpoint: &str,
    tls: &crate::etcd::Tls,
    timeout: Duration,
) -> anyhow::Result<MemberStatus> {
    tokio::time::timeout(timeout, async {
        let mut cl = crate::etcd::connect(&[endpoint.to_string()], tls, timeout).await?;
        let st = cl.status().await?;
        anyhow::Ok(MemberStatus::from_response(&st))
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {} ms", timeout.as_millis()))?
}

/// The leader most answering members report, from each member's (own id, leader id); on a
/// tie, a leader over none. `None` when no member answered, `Some(0)` for "no leader".
pub fn leader_by_vote(reports: impl IntoIterator<Item = (u64, u64)>) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, leader) in reports {
        *votes.entry(leader).or_default() += 1;
    }
    votes
        .iter()
        .max_by_key(|(id, n)| (**n, **id != 0))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    // etcd 3.5.1 on a lab (captured with etcdctl; see testdata/).
    const HEALTHY: &str = include_str!("testdata/etcdctl-endpoint-status.json");
    const LEADER_STOPPED: &str =
        include_str!("testdata/etcdctl-endpoint-status-leader-stopped.json");

    #[test]
    fn three_members_agree_on_one_leader() {
        let st = parse_etcdctl_status(HEALTHY).expect("parses");
        assert_eq!(st.len(), 3);
        let (ep, m1) = &st[0];
        assert_eq!(ep, "https://10.160.0.101:2379");
        assert_eq!(m1.member_id, 12304866372359372343);
        assert_eq!(m1.cluster_id, 11559466197543271285);
        assert_eq!((m1.raft_term, m1.raft_index, m1.db_size), (2, 12, 20480));
        assert_eq!(m1.version, "3.5.1");
        let leaders: Vec<bool> = st.iter().map(|(_, m)| m.is_leader()).collect();
        assert_eq!(leaders, [false, false, true]);
        let vote = leader_by_vote(st.iter().map(|(_, m)| (m.member_id, m.leader)));
        assert_eq!(vote, Some(st[2].1.member_id));
    }

    #[test]
    fn after_the_leader_stopped_the_others_elected_a_new_one() {
        let before = parse_etcdctl_status(HEALTHY).expect("parses");
        let st = parse_etcdctl_status(LEADER_STOPPED).expect("parses");
        assert_eq!(st.len(), 2, "the stopped member does not answer");
        assert!(st[0].1.is_leader());
        assert_eq!(st[0].1.raft_term, before[0].1.raft_term + 1);
        let vote = leader_by_vote(st.iter().map(|(_, m)| (m.member_id, m.leader)));
        assert_eq!(vote, Some(before[0].1.member_id));
    }

    #[test]
    fn votes() {
        assert_eq!(leader_by_vote([]), None);
        assert_eq!(leader_by_vote([(1, 0), (2, 0)]), Some(0));
        // A tie between "none" and a leader goes to the leader.
        assert_eq!(leader_by_vote([(1, 0), (2, 3)]), Some(3));
        assert_eq!(leader_by_vote([(1, 3), (2, 3), (3, 1)]), Some(3));
        assert!(parse_etcdctl_status("not json").is_err());
    }
}
