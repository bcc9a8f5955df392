//! Which load balancers hold the VIP, from each one's `ip -o addr show`.

use super::iface;
use crate::transport::{self, Transport};
use serde::{Serialize, Serializer};
use std::collections::BTreeSet;
use std::time::Duration;

/// Whether one LB's `ip -o addr show` output carries the VIP.
pub fn holds(ip_addr_output: &str, vip: &str) -> bool {
    iface::carries(ip_addr_output, vip)
}

/// The LBs (in the order given) whose interfaces carry `vip`, asked over their open
/// connections in parallel. Any LB that cannot be asked fails the whole answer: callers that
/// decide on it (apply) must not guess.
pub async fn holders(lbs: &[(&str, &dyn Transport)], vip: &str) -> anyhow::Result<Vec<String>> {
    let asks = lbs.iter().map(|(name, t)| async move {
        let o = transport::run(*t, iface::SCRIPT, iface::SCRIPT, Duration::from_secs(5)).await?;
        anyhow::Ok(holds(&o.stdout_str(), vip).then(|| name.to_string()))
    });
    let mut out = Vec::new();
    for r in futures::future::join_all(asks).await {
        out.extend(r?);
    }
    Ok(out)
}

/// One LB in a [`Holders`] label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub lb: String,
    /// It could not be asked; the last time it could, it held the VIP (`lb1?`).
    pub unconfirmed: bool,
}

/// Who holds the VIP as a watcher sees it over time: `none`, `lb1`, `lb1+lb2` (split brain),
/// `lb1?+lb2` (lb1 could not be asked and held it when last asked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders(pub Vec<Holder>);

impl Holders {
    /// The LBs named, asked or not.
    pub fn names(&self) -> BTreeSet<&str> {
        self.0.iter().map(|h| h.lb.as_str()).collect()
    }

    /// Some LB not in `before` confirmed that it holds the VIP.
    pub fn gained_from(&self, before: &Holders) -> bool {
        let was = before.names();
        self.0
            .iter()
            .any(|h| !h.unconfirmed && !was.contains(h.lb.as_str()))
    }
}

impl std::fmt::Display for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|h| format!("{}{}", h.lb, if h.unconfirmed { "?" } else { "" }))
            .collect();
        f.write_str(&parts.join("+"))
    }
}

/// As the label reads (`lb1?+lb2`), which is what reports have always carried.
impl Serialize for Holders {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{BoxFut, Output};

    const HOLDING: &str = include_str!("testdata/ip-addr-lb-holding-vip.txt");
    const NOT_HOLDING: &str = include_str!("testdata/ip-addr-lb-not-holding-vip.txt");

    #[test]
    fn the_holder_carries_the_vip_as_a_secondary_address() {
        assert!(holds(HOLDING, "10.160.0.100"));
        assert!(!holds(NOT_HOLDING, "10.160.0.100"));
        // Its own address is not the VIP, and a prefix of the VIP is not the VIP.
        assert!(holds(NOT_HOLDING, "10.160.0.12"));
        assert!(!holds(HOLDING, "10.160.0.10"));
        assert!(!holds(HOLDING, "10.160.0.1000"));
    }

    struct Fake(&'static str, Option<&'static str>);
    impl Transport for Fake {
        fn host(&self) -> &str {
            self.0
        }
        fn exec<'a>(
            &'a self,
            script: &'a str,
            _: Option<&'a [u8]>,
        ) -> BoxFut<'a, transport::Result<Output>> {
            assert_eq!(script, "ip -o addr show");
            Box::pin(async move {
                Ok(match self.1 {
                    Some(out) => Output {
                        status: 0,
                        stdout: out.as_bytes().to_vec(),
                        stderr: String::new(),
                    },
                    None => Output {
                        status: 1,
                        stdout: vec![],
                        stderr: "ip: command not found".into(),
                    },
                })
            })
        }
    }

    #[tokio::test]
    async fn holders_asks_every_lb_and_fails_when_one_cannot_tell() {
        let (lb1, lb2) = (Fake("lb1", Some(HOLDING)), Fake("lb2", Some(NOT_HOLDING)));
        let lbs: [(&str, &dyn Transport); 2] = [("lb1", &lb1), ("lb2", &lb2)];
        let got = holders(&lbs, "10.160.0.100").await.expect("asked");
        assert_eq!(got, ["lb1"]);
        let both: [(&str, &dyn Transport); 2] = [("lb2", &lb1), ("lb1", &lb1)];
        assert_eq!(
            holders(&both, "10.160.0.100").await.expect("asked"),
            ["lb2", "lb1"]
        );
        let broken = Fake("lb2", None);
        let lbs: [(&str, &dyn Transport); 2] = [("lb1", &lb1), ("lb2", &broken)];
        assert!(holders(&lbs, "10.160.0.100").await.is_err());
    }

    #[test]
    fn labels() {
        let h = |lb: &str, unconfirmed| Holder {
            lb: lb.into(),
            unconfirmed,
        };
        let none = Holders::default();
        let lb1 = Holders(vec![h("lb1", false)]);
        let lb1q_lb2 = Holders(vec![h("lb1", true), h("lb2", false)]);
        assert_eq!(none.to_string(), "none");
        assert_eq!(lb1q_lb2.to_string(), "lb1?+lb2");
        assert_eq!(
            serde_json::to_value(&lb1q_lb2).expect("json"),
            serde_json::json!("lb1?+lb2")
        );
        assert!(lb1q_lb2.gained_from(&lb1));
        assert!(!lb1.gained_from(&lb1q_lb2));
        assert!(!Holders(vec![h("lb2", true)]).gained_from(&lb1));
        assert!(lb1.gained_from(&none));
    }
}
