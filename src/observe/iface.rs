//! Addresses and interfaces, from `ip -o addr show` (one line per address).

use std::net::IpAddr;

/// The command whose output [`parse`] reads.
pub const SCRIPT: &str = "ip -o addr show";

/// One address line of `ip -o addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// The interface, without a `@peer` suffix.
    pub iface: String,
    pub ip: IpAddr,
    pub prefix: Option<u8>,
}

impl Addr {
    /// `ADDRESS/PREFIX`, as `ip` prints it.
    pub fn cidr(&self) -> String {
        match self.prefix {
            Some(p) => format!("{}/{p}", self.ip),
            None => self.ip.to_string(),
        }
    }
}

/// Every address in `ip -o addr show`'s output: `N: IFACE inet|inet6 ADDRESS/PREFIX ...`.
/// Lines of any other shape (other commands' output in the same script) are skipped.
pub fn parse(text: &str) -> Vec<Addr> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Addr> {
    let mut w = line.split_whitespace();
    let index = w.next()?.strip_suffix(':')?;
    index.parse::<u32>().ok()?;
    let iface = w.next()?;
    if !matches!(w.next()?, "inet" | "inet6") {
        return None;
    }
    let cidr = w.next()?;
    let (ip, prefix) = match cidr.split_once('/') {
        Some((ip, p)) => (ip, Some(p.parse().ok()?)),
        None => (cidr, None),
    };
    Some(Addr {
        iface: iface.split('@').next().unwrap_or(iface).to_string(),
        ip: ip.parse().ok()?,
        prefix,
    })
}

/// The interface that carries `ip`, if any.
pub fn interface_of(addrs: &[Addr], ip: IpAddr) -> Option<&str> {
    addrs.iter().find(|a| a.ip == ip).map(|a| a.iface.as_str())
}

/// Whether `ip -o addr show`'s output carries `ip` (a spec address, such as the VIP) on any
/// interface. A spec address that is not an IP address is on no interface.
pub fn carries(text: &str, ip: &str) -> bool {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    parse(text).iter().any(|a| a.ip == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER1: &str = include_str!("testdata/ip-addr-master1.txt");

    #[test]
    fn real_output_gives_every_address_with_its_interface() {
        let a = parse(MASTER1);
        let got: Vec<(&str, String)> = a.iter().map(|a| (a.iface.as_str(), a.cidr())).collect();
        assert_eq!(
            got,
            [
                ("lo", "127.0.0.1/8".to_string()),
                ("lo", "::1/128".to_string()),
                ("eth0", "10.160.0.101/24".to_string()),
                ("eth0", "fe80::844c:caff:fe84:9268/64".to_string()),
            ]
        );
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(interface_of(&a, ip("10.160.0.101")), Some("eth0"));
        assert_eq!(interface_of(&a, ip("10.160.0.102")), None);
    }

    #[test]
    fn other_lines_and_peer_suffixes() {
        let text = "hostname=master1\n7: eth1@if12    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth1\\       valid_lft forever\nnot: an address line\n";
        let a = parse(text);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].iface.as_str(), a[0].cidr()),
            ("eth1", "10.0.0.5/24".into())
        );
        // The broadcast address is not an address of the host.
        assert!(!carries(text, "10.0.0.255"));
        assert!(carries(text, "10.0.0.5"));
        assert!(!carries(text, "not-an-ip"));
    }
}
