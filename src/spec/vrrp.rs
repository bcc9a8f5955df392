//! VRRP priorities and the track-script weight, kept within what keepalived accepts.

use super::diag::Diagnostics;
use std::collections::BTreeMap;

/// keepalived refuses a track-script weight outside -253..=253.
pub const MAX_WEIGHT: i32 = 253;
/// keepalived never lowers an effective priority below 1 (`vrrp_set_effective_priority`).
pub const PRIORITY_FLOOR: i64 = 1;
/// 255 is the address owner's.
pub const MAX_PRIORITY: i64 = 254;

/// Default priorities in host order: 254, 244, 234, ... for up to 25 load balancers, else
/// spread evenly over 254..=2 (distinct for up to 253 load balancers). High, because a backup
/// waits (256 - priority)/256 x advert after the master resigns: 9 ms at 244 against 121 ms at
/// the runbook's 100, and a client SYN sent into that gap waits for TCP's 1 s retransmission.
pub fn default_priorities(n: usize) -> Vec<u8> {
    let lowest = (PRIORITY_FLOOR + 1) as usize;
    if n <= 25 {
        return (0..n)
            .map(|i| (MAX_PRIORITY as usize - 10 * i) as u8)
            .collect();
    }
    let step = ((MAX_PRIORITY as usize - lowest) / (n - 1)).max(1);
    (0..n)
        .map(|i| (MAX_PRIORITY as usize).saturating_sub(i * step).max(lowest) as u8)
        .collect()
}

/// The weight of the API-server track script: an LB whose HAProxy rates no API server UP must
/// drop below every healthy peer.
///
/// A failing LB with priority p gets max(1, p - w). Every priority is at least 2 when there
/// are several LBs (see [`check_floor`]), so the spread is at most 252 and w = spread + 1
/// already drops the highest LB below the lowest (p_max - w = p_min - 1, or the floor 1 <
/// p_min). We keep a margin of 10 (so the seed's 110/100 gives -20) but never exceed 253, which
/// is still at least spread + 1.
pub fn track_weight<'a>(priorities: impl IntoIterator<Item = &'a u8>) -> i32 {
    let (mut lo, mut hi) = (i32::MAX, 0);
    for p in priorities {
        lo = lo.min(*p as i32);
        hi = hi.max(*p as i32);
    }
    let spread = (hi - lo.min(hi)).max(0);
    -(spread + 10).min(MAX_WEIGHT)
}

/// With more than one LB, a priority at the floor cannot be undercut: a failing LB drops to 1
/// as well, the tie goes to the higher address, and the VIP may stay on the broken LB.
pub fn check_floor(priorities: &BTreeMap<String, i64>, lbs: usize, d: &mut Diagnostics) {
    if lbs < 2 {
        return;
    }
    for (name, p) in priorities {
        if *p == PRIORITY_FLOOR {
            d.error(
                format!("spec.loadBalancer.vrrp.priorities.{name}"),
                format!("priority {p} is keepalived's floor: an LB whose API path fails drops to 1 as well, and the tie goes to the higher address, so the VIP could stay on the broken LB"),
                format!("use {}-{MAX_PRIORITY}", PRIORITY_FLOOR + 1),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_distinct_and_above_the_floor() {
        assert_eq!(default_priorities(3), vec![254, 244, 234]);
        for n in 1..=253 {
            let p = default_priorities(n);
            let mut q = p.clone();
            q.sort();
            q.dedup();
            assert_eq!(q.len(), n, "{n}: {p:?}");
            assert!(p.iter().all(|x| (2..=254).contains(x)), "{n}: {p:?}");
        }
    }

    /// Every accepted priority set: the weight is in keepalived's range and drops any failing
    /// LB below every other LB, including the floor.
    #[test]
    fn the_weight_is_in_range_and_undercuts_every_peer() {
        for lo in 2u8..=254 {
            for hi in [lo, lo.saturating_add(1).min(254), 254] {
                let w = track_weight(&[lo, hi]);
                assert!((-MAX_WEIGHT..=MAX_WEIGHT).contains(&w), "{lo} {hi}: {w}");
                let failing = (hi as i32 + w).max(PRIORITY_FLOOR as i32);
                assert!(
                    failing < lo as i32,
                    "{lo} {hi}: weight {w} leaves {failing}"
                );
            }
        }
        assert_eq!(track_weight(&[110, 100]), -20);
        assert_eq!(track_weight(&[]), -10);
    }
}
