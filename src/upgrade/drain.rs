//! Moving the VIP without resetting a connection in flight.
//!
//! When the VIP moves, packets of a connection opened on the old holder reach the new one,
//! which has no such socket and resets it. So before a planned move the holder drops new TCP
//! SYNs to the VIP's frontends (nftables, in its own table) for a short grace: connections in
//! flight finish, and a client whose SYN was dropped sends it again after 1 s (the kernel's
//! initial retransmission timeout), by then to the new holder. The client sees a slower
//! connect, not an error.
//!
//! The VIP is held in a set element with a timeout, so a hakube killed mid-step leaves at most
//! [`TTL`] of dropped SYNs behind, never a black hole.

use crate::apply::Ctx;
use crate::apply::report::Kind;
use crate::spec::Cluster;
use anyhow::Result;
use std::time::Duration;

/// How long a drain lasts if nobody lifts it.
pub const TTL: Duration = Duration::from_secs(15);
/// Time for requests in flight to finish before the VIP moves. An API request (not a watch)
/// takes milliseconds; long-lived ones reconnect anyway.
pub const GRACE: Duration = Duration::from_millis(500);

const TABLE: &str = "inet hakube_drain";

/// The VIP's TCP ports: the API and, with ingress, HTTP and HTTPS.
fn ports(c: &Cluster) -> Vec<u16> {
    let mut p = vec![c.lb.api_port];
    if let Some(i) = &c.lb.ingress {
        p.extend([i.http_port, i.https_port]);
    }
    p
}

/// The nftables script that starts a drain of `vip` on these ports.
pub fn start_script(c: &Cluster) -> String {
    let ports = ports(c)
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "command -v nft >/dev/null || {{ echo no-nft; exit 0; }}\n\
         nft delete table {TABLE} 2>/dev/null\n\
         nft -f - <<'EOF'\n\
         table {TABLE} {{\n\
         \tset vip {{ type ipv4_addr; flags timeout; }}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -10; policy accept;\n\
         \t\tip daddr @vip tcp dport {{ {ports} }} tcp flags & (syn | ack) == syn drop\n\
         \t}}\n\
         }}\n\
         add element {TABLE} vip {{ {vip} timeout {ttl}s }}\n\
         EOF\n",
        vip = c.lb.vip,
        ttl = TTL.as_secs(),
    )
}

/// Lifts a drain (nothing to do if there is none).
pub const STOP_SCRIPT: &str =
    "! command -v nft >/dev/null || nft delete table inet hakube_drain 2>/dev/null || true";

/// Drain new connections to the VIP on `host` and give those in flight [`GRACE`] to finish.
/// Without nftables on the host the move goes on undrained, with a warning.
pub async fn start(ctx: &Ctx, host: &str) -> Result<()> {
    let o = ctx
        .cmd(
            host,
            &start_script(&ctx.c),
            &format!(
                "nft: drop new connections to the VIP for at most {}s (drain before the VIP moves)",
                TTL.as_secs()
            ),
        )
        .await?;
    if o.is_some_and(|o| o.stdout_str().contains("no-nft")) {
        ctx.log(
            Kind::Warn,
            host,
            "nft not found: the VIP moves undrained, so connections in flight at the move are \
             reset (install nftables on the load balancers)",
        );
        return Ok(());
    }
    if !ctx.dry_run() {
        tokio::time::sleep(GRACE).await;
    }
    Ok(())
}

pub async fn stop(ctx: &Ctx, host: &str) -> Result<()> {
    ctx.cmd(host, STOP_SCRIPT, "nft: accept new connections again")
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_is_a_valid_nft_ruleset() {
        // `nft -c` checks without touching the kernel's rules; skipped where nft is absent.
        let y = "apiVersion: hakube.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  hosts:\n    - {name: lb1, address: 10.0.0.11, roles: [loadbalancer]}\n    - {name: lb2, address: 10.0.0.12, roles: [loadbalancer]}\n    - {name: m1, address: 10.0.0.101, roles: [control-plane]}\n  networks: {management: 10.0.0.0/24}\n  loadBalancer: {vip: 10.0.0.100}\n  kubernetes: {bootstrap: lab}\n";
        let c = crate::spec::load_str(y, "cluster.yaml", std::path::Path::new("/tmp"))
            .cluster
            .expect("valid spec");
        let s = start_script(&c);
        let body = s
            .split("<<'EOF'\n")
            .nth(1)
            .and_then(|b| b.split("EOF\n").next())
            .unwrap_or_default();
        assert!(body.contains(&format!("{} timeout 15s", c.lb.vip)), "{s}");
        assert!(body.contains("tcp dport { 6443"), "{s}");
        let Ok(nft) = which("nft") else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("drain.nft");
        std::fs::write(&f, body).expect("write");
        let o = std::process::Command::new(nft)
            .arg("-c")
            .arg("-f")
            .arg(&f)
            .output()
            .expect("nft");
        assert!(
            o.status.success(),
            "nft -c rejected the drain:\n{}\n{body}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn which(b: &str) -> std::result::Result<std::path::PathBuf, ()> {
        ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(b))
            .find(|p| p.exists())
            .ok_or(())
    }
}
